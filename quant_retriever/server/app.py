"""The HTTP API of ``quant-retriever serve``: one process owns the store (and its device), many
clients share it (:class:`~quant_retriever.server.client.RemoteStore`).

=======================  ==========================================================
endpoint                  what it does
=======================  ==========================================================
``GET /healthz``          liveness: ``{"status": "ok"}`` (no key needed)
``GET /readyz``           readiness: the store is open (no key needed)
``GET /info``             count, settings (codec, dim, ...), memory, model, precision
``POST /documents``       upsert: ``ids``, ``texts``, ``metadatas``, and ``vectors``
                          or none (the server embeds the texts)
``POST /documents/get``   by ``ids``, or by ``where`` with ``limit``/``offset``
``POST /documents/count`` how many (matching ``where``)
``POST /documents/delete`` by ``ids``, or by ``where``
``POST /documents/metadata`` replace the metadata of ``ids``
``POST /documents/vectors`` the stored vectors of ``ids``
``POST /documents/clear``  delete every document
``POST /search``          dense, keyword or hybrid; by ``vectors`` or ``texts``
``POST /compact``         drop dead rows now
``GET|PUT /meta/{name}``  the store's small JSON records (``get_info``/``set_info``)
=======================  ==========================================================

Filters travel as :mod:`~quant_retriever.server.wire` describes. Every bad request gets a 4xx
with ``{"error": "..."}`` saying what was expected (413 for a body over the limit, 401 without
the key); the store refuses a bad write before changing anything. Searches run in parallel on
the server's threads; writes (and embedding) are serialised. Nothing in a request names a file.
"""

# no "from __future__ import annotations": FastAPI reads the request models, local classes, at runtime
import hmac
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from quant_retriever.server.wire import filter_from_json, record_to_json

__all__ = ["Error", "Limits", "create_app"]

log = logging.getLogger("quant_retriever.server")


@dataclass(frozen=True)
class Limits:
    """Bounds on one request: body bytes, documents or queries a batch (and records a page),
    ``k``, the rescore multiplier, hits a search returns."""

    max_body: int = 64 << 20
    max_batch: int = 4096
    max_k: int = 10_000
    max_multiplier: int = 100
    max_hits: int = 100_000  # queries x k of one search


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    """Every error's body: what was wrong and what was expected (``detail``: per field, for 422)."""

    error: str
    detail: list[dict[str, Any]] | None = None


_ERRORS = {
    status: {"model": Error, "description": what}
    for status, what in (
        (400, "a value the store refuses (the message says what was expected)"),
        (401, "no valid API key"),
        (403, "the store is read-only"),
        (413, "the body is over the limit"),
        (422, "the body does not match the schema"),
    )
}


def create_app(store, encoder=None, *, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The app over an open ``store`` (closed when the app shuts down); ``encoder`` embeds
    texts sent without vectors (``None``: such requests get a 400); ``api_key``: required on
    every endpoint but the health checks."""
    limits = limits or Limits()
    batch = limits.max_batch
    write_lock, embed_lock = threading.Lock(), threading.Lock()
    model = getattr(encoder, "model_name", None)
    precision = getattr(encoder, "precision", None)

    class Upsert(_Strict):
        ids: list[str] = Field(max_length=batch)
        texts: list[str] = Field(max_length=batch)
        metadatas: list[dict[str, Any] | None] | None = Field(None, max_length=batch)
        vectors: list[list[float]] | None = Field(None, max_length=batch)

    class Get(_Strict):
        ids: list[str] | None = Field(None, max_length=batch)
        where: dict[str, Any] | None = None
        limit: int | None = Field(None, ge=0, le=batch)
        offset: int = Field(0, ge=0)

    class Where(_Strict):
        where: dict[str, Any] | None = None

    class Delete(_Strict):
        ids: list[str] | None = Field(None, max_length=batch)
        where: dict[str, Any] | None = None

    class Metadata(_Strict):
        ids: list[str] = Field(max_length=batch)
        metadatas: list[dict[str, Any] | None] = Field(max_length=batch)

    class Ids(_Strict):
        ids: list[str] = Field(max_length=batch)

    class Search(_Strict):
        mode: Literal["dense", "keyword", "hybrid"] = "dense"
        vectors: list[list[float]] | None = Field(None, max_length=batch)
        texts: list[str] | None = Field(None, max_length=batch)
        k: int = Field(4, ge=0, le=limits.max_k)
        rescore_multiplier: int = Field(4, ge=1, le=limits.max_multiplier)
        where: dict[str, Any] | None = None
        ids: list[str] | None = Field(None, max_length=limits.max_k * limits.max_multiplier)
        dense_top_k: int | None = Field(None, ge=0, le=limits.max_k * limits.max_multiplier)
        sparse_top_k: int | None = Field(None, ge=0, le=limits.max_k * limits.max_multiplier)
        fusion: Literal["rrf", "relative"] = "rrf"
        rrf_k: float = Field(60.0, gt=0, le=1e6)
        weights: tuple[float, float] | None = None
        alpha: float | None = Field(None, ge=0, le=1)

    def where_of(spec):
        return None if spec is None else filter_from_json(spec)

    def embed(texts: list[str]) -> np.ndarray:
        if encoder is None:
            raise ValueError("this server has no embedding model: send vectors with the texts.")
        with embed_lock:
            return np.asarray(encoder.encode(texts), dtype=np.float32)

    def writable():
        if store.read_only:
            raise HTTPException(403, "this server's store is read-only (started with --read-only).")
        return write_lock

    def hits(rows) -> JSONResponse:
        return _ok({"results": [[{**record_to_json(r), "score": float(s)} for r, s in row] for row in rows]})

    app = FastAPI(
        title="quant-retriever",
        summary="Quantized vector store: dense, keyword and hybrid search over one shared store.",
        lifespan=_lifespan(store),
        responses=_ERRORS,
    )
    _install_guards(app, api_key, limits)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return _ok({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        return _ok({"status": "ready", "count": len(store)})

    @app.get("/info")
    def info() -> JSONResponse:
        return _ok(
            {
                "count": len(store),
                "settings": store.settings,
                "memory": asdict(store.memory()),
                "model": model,
                "precision": precision,
                "read_only": store.read_only,
                "limits": asdict(limits),
            }
        )

    @app.post("/documents")
    def upsert(body: Upsert) -> JSONResponse:
        vectors = body.vectors
        if vectors is None:
            vectors = embed(body.texts) if body.texts else np.zeros((0, store.dim or 1), dtype=np.float32)
        with writable():
            return _ok({"ids": store.upsert(body.ids, vectors, body.texts, body.metadatas)})

    @app.post("/documents/get")
    def get(body: Get) -> JSONResponse:
        if body.ids is not None:
            if body.where is not None or body.limit is not None or body.offset:
                raise ValueError("get takes ids, or where/limit/offset; not both.")
            records = store.get(body.ids)
        else:  # a page at most max_batch long (RemoteStore pages through longer reads)
            limit = batch if body.limit is None else body.limit
            records = store.get(where=where_of(body.where), limit=limit, offset=body.offset)
        return _ok({"records": [record_to_json(r) for r in records]})

    @app.post("/documents/count")
    def count(body: Where) -> JSONResponse:
        return _ok({"count": store.count(where_of(body.where))})

    @app.post("/documents/delete")
    def delete(body: Delete) -> JSONResponse:
        if (body.ids is None) == (body.where is None):
            raise ValueError("delete takes ids or where (exactly one).")
        with writable():
            if body.ids is not None:
                return _ok({"deleted": store.delete(body.ids)})
            return _ok({"deleted_count": store.delete_where(where_of(body.where))})

    @app.post("/documents/metadata")
    def update_metadata(body: Metadata) -> JSONResponse:
        with writable():
            return _ok({"ids": store.update_metadata(body.ids, body.metadatas)})

    @app.post("/documents/vectors")
    def vectors(body: Ids) -> JSONResponse:
        records = store.get(body.ids)
        if len(records) != len(dict.fromkeys(body.ids)):
            missing = sorted(set(body.ids) - {r.id for r in records})
            raise ValueError(f"no documents with ids {missing[:10]}.")
        return _ok({"ids": [r.id for r in records], "vectors": store.vectors(records).tolist()})

    @app.post("/documents/clear")
    def clear() -> JSONResponse:
        with writable():
            store.clear()
        return _ok({"count": 0})

    @app.post("/search")
    def search(body: Search) -> JSONResponse:
        where, texts = where_of(body.where), body.texts
        queries = len(body.vectors if body.vectors is not None else texts or [])
        if queries * body.k > limits.max_hits:
            raise ValueError(
                f"a search returns at most {limits.max_hits} hits (queries x k); got {queries} x {body.k}."
            )
        if body.mode == "keyword":
            if texts is None:
                raise ValueError("keyword search takes texts.")
            return hits(store.keyword_search(texts, k=body.k, where=where, ids=body.ids))
        vectors = body.vectors
        if vectors is None:
            if texts is None:
                raise ValueError(f"{body.mode} search takes vectors or texts.")
            vectors = embed(texts)
        if body.mode == "dense":
            return hits(store.search(vectors, body.k, body.rescore_multiplier, where=where, ids=body.ids))
        if texts is None:
            raise ValueError("hybrid search takes texts (and vectors, or the server embeds the texts).")
        options = body.model_dump(include={"dense_top_k", "sparse_top_k", "fusion", "rrf_k", "weights", "alpha"})
        return hits(
            store.hybrid_search(vectors, texts, body.k, body.rescore_multiplier, where=where, ids=body.ids, **options)
        )

    @app.post("/compact")
    def compact() -> JSONResponse:
        with writable():
            store.compact()
        return _ok({"count": len(store)})

    @app.get("/meta/{name}")
    def get_meta(name: str) -> JSONResponse:
        return _ok({"name": name, "value": store.get_info(name)})

    class Meta(_Strict):
        value: Any

    @app.put("/meta/{name}")
    def set_meta(name: str, body: Meta) -> JSONResponse:
        with writable():
            store.set_info(name, body.value)
        return _ok({"name": name, "value": body.value})

    return app


def _lifespan(store):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            store.close()
            log.info("quant-retriever serve: store closed")

    return lifespan


def _ok(content: dict) -> JSONResponse:
    """A response as it is (FastAPI neither re-validates nor re-encodes a Response)."""
    return JSONResponse(content)


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class _Guard:
    """The API key and the body limit, as plain ASGI (no per-request task of its own): a
    request without the key gets a 401; a body over the limit a 413, by its declared length,
    or (chunked) counted as it arrives, then replayed to the app."""

    def __init__(self, app, expected: bytes | None, open_paths: set[str], max_body: int):
        self.app, self.expected, self.open_paths, self.max_body = app, expected, open_paths, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.expected is not None and scope["path"] not in self.open_paths:
            given = headers.get("api-key") or ""
            bearer = headers.get("authorization", "")
            if not given and bearer[:7].lower() == "bearer ":
                given = bearer[7:]
            if not hmac.compare_digest(given.encode("latin-1"), self.expected):
                message = "a valid API key is required (header 'api-key: KEY' or 'Authorization: Bearer KEY')."
                return await _error(401, message)(scope, receive, send)
        too_large = _error(413, f"request bodies are limited to {self.max_body} bytes.")
        size = headers.get("content-length")
        if size is not None:  # the server holds a client to the length it declares
            if not size.isdigit() or int(size) > self.max_body:
                return await too_large(scope, receive, send)
        elif scope["method"] in ("POST", "PUT", "PATCH"):  # chunked: counted as it arrives
            chunks, total, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return await self.app(scope, receive, send)  # the client left
                chunks.append(message.get("body", b""))
                total += len(chunks[-1])
                if total > self.max_body:
                    return await too_large(scope, receive, send)
                more = message.get("more_body", False)
            body = b"".join(chunks)

            async def replay():
                nonlocal body
                if body is None:
                    return await receive()
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


def _install_guards(app: FastAPI, api_key: str | None, limits: Limits) -> None:
    """The API key, the body limit and the JSON errors."""
    expected = None if api_key is None else api_key.encode()
    open_paths = {"/healthz", "/readyz"}

    app.add_middleware(_Guard, expected=expected, open_paths=open_paths, max_body=limits.max_body)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        details = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        return _error(422, f"invalid request at {'.'.join(first['loc'][1:]) or 'body'}: {first['msg']}", detail=details)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def bad_value(request, exc):
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.exception("quant-retriever serve: unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details.")
