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
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from quant_retriever.server.wire import filter_from_json, record_to_json

__all__ = ["Error", "Limits", "create_app"]

log = logging.getLogger("quant_retriever.server")


@dataclass(frozen=True)
class Limits:
    """Bounds on one request: body bytes, documents or queries a batch, ``k``, ids a search."""

    max_body: int = 64 << 20
    max_batch: int = 4096
    max_k: int = 10_000
    max_multiplier: int = 100


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

    def hits(rows) -> dict:
        return {"results": [[{**record_to_json(r), "score": float(s)} for r, s in row] for row in rows]}

    app = FastAPI(
        title="quant-retriever",
        summary="Quantized vector store: dense, keyword and hybrid search over one shared store.",
        lifespan=_lifespan(store),
        responses=_ERRORS,
    )
    _install_guards(app, api_key, limits)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready", "count": len(store)}

    @app.get("/info")
    def info() -> dict:
        return {
            "count": len(store),
            "settings": store.settings,
            "memory": asdict(store.memory()),
            "model": model,
            "precision": precision,
            "read_only": store.read_only,
            "limits": asdict(limits),
        }

    @app.post("/documents")
    def upsert(body: Upsert) -> dict:
        vectors = body.vectors
        if vectors is None:
            vectors = embed(body.texts) if body.texts else np.zeros((0, store.dim or 1), dtype=np.float32)
        with writable():
            return {"ids": store.upsert(body.ids, vectors, body.texts, body.metadatas)}

    @app.post("/documents/get")
    def get(body: Get) -> dict:
        if body.ids is not None:
            if body.where is not None or body.limit is not None or body.offset:
                raise ValueError("get takes ids, or where/limit/offset; not both.")
            records = store.get(body.ids)
        else:
            records = store.get(where=where_of(body.where), limit=body.limit, offset=body.offset)
        return {"records": [record_to_json(r) for r in records]}

    @app.post("/documents/count")
    def count(body: Where) -> dict:
        return {"count": store.count(where_of(body.where))}

    @app.post("/documents/delete")
    def delete(body: Delete) -> dict:
        if (body.ids is None) == (body.where is None):
            raise ValueError("delete takes ids or where (exactly one).")
        with writable():
            if body.ids is not None:
                return {"deleted": store.delete(body.ids)}
            return {"deleted_count": store.delete_where(where_of(body.where))}

    @app.post("/documents/metadata")
    def update_metadata(body: Metadata) -> dict:
        with writable():
            return {"ids": store.update_metadata(body.ids, body.metadatas)}

    @app.post("/documents/vectors")
    def vectors(body: Ids) -> dict:
        records = store.get(body.ids)
        if len(records) != len(dict.fromkeys(body.ids)):
            missing = sorted(set(body.ids) - {r.id for r in records})
            raise ValueError(f"no documents with ids {missing[:10]}.")
        return {"ids": [r.id for r in records], "vectors": store.vectors(records).tolist()}

    @app.post("/documents/clear")
    def clear() -> dict:
        with writable():
            store.clear()
        return {"count": 0}

    @app.post("/search")
    def search(body: Search) -> dict:
        where, texts = where_of(body.where), body.texts
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
    def compact() -> dict:
        with writable():
            if hasattr(store, "compact"):
                store.compact()
        return {"count": len(store)}

    @app.get("/meta/{name}")
    def get_meta(name: str) -> dict:
        return {"name": name, "value": store.get_info(name)}

    class Meta(_Strict):
        value: Any

    @app.put("/meta/{name}")
    def set_meta(name: str, body: Meta) -> dict:
        with writable():
            store.set_info(name, body.value)
        return {"name": name, "value": body.value}

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


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _install_guards(app: FastAPI, api_key: str | None, limits: Limits) -> None:
    """The API key, the body limit and the JSON errors."""
    expected = None if api_key is None else api_key.encode()
    open_paths = {"/healthz", "/readyz"}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if expected is not None and request.url.path not in open_paths:
            given = request.headers.get("api-key") or ""
            bearer = request.headers.get("authorization", "")
            if not given and bearer[:7].lower() == "bearer ":
                given = bearer[7:]
            if not hmac.compare_digest(given.encode(), expected):
                return _error(
                    401, "a valid API key is required (header 'api-key: KEY' or 'Authorization: Bearer KEY')."
                )
        too_large = _error(413, f"request bodies are limited to {limits.max_body} bytes.")
        size = request.headers.get("content-length")
        if size is not None:  # the server holds a client to the length it declares
            if not size.isdigit() or int(size) > limits.max_body:
                return too_large
        elif request.method in ("POST", "PUT", "PATCH"):  # chunked: counted as it arrives
            chunks, total = [], 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > limits.max_body:
                    return too_large
                chunks.append(chunk)
            request._body = b"".join(chunks)  # replayed to the endpoint (starlette's cached request)
        return await call_next(request)

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
