"""``RemoteStore``: the ``QuantizedStore`` API over HTTP, against ``quant-retriever serve``.

Both framework adapters take it as their ``store=`` (it is a
:class:`~quant_retriever.store.StoreLike`), so a LangChain or LlamaIndex application points
at a shared server with one argument::

    store = RemoteStore("http://127.0.0.1:8000", api_key=os.environ["QUANT_RETRIEVER_API_KEY"])
    vs = QuantizedVectorStore(embeddings, store=store)         # LangChain
    vs = QuantizedLlamaIndexStore(store=store)                 # LlamaIndex

Every method is synchronous (httpx); the search and document methods have ``a``-prefixed
coroutines too (``asearch``, ``aupsert``, ...), on an ``httpx.AsyncClient``. A 4xx from the
server raises ``ValueError`` with its message (``PermissionError`` for 401/403), so callers
see the same errors as in process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from quant_retriever.index import MemoryUsage
from quant_retriever.server.wire import filter_to_json, record_from_json
from quant_retriever.store.documents import Record

__all__ = ["RemoteStore"]

#: Documents (or ids, or records of a page) a request carries at most, or the server's batch
#: limit when lower: larger calls go in several requests (an upsert of more is as many
#: upserts, each all or nothing).
SEND_BATCH = 1024


def _raise_for(response) -> Any:
    if response.status_code < 400:
        return response.json()
    try:
        message = response.json().get("error") or response.text
    except ValueError:
        message = response.text
    if response.status_code in (401, 403):
        raise PermissionError(message)
    if response.status_code < 500:
        raise ValueError(message)
    raise RuntimeError(f"server error {response.status_code}: {message}")


def _vectors(v) -> list | None:
    if v is None:
        return None
    arr = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if not np.isfinite(arr).all():
        raise ValueError("vectors must be finite (no NaN or infinity).")
    return arr.tolist()


class RemoteStore:
    """A store served by ``quant-retriever serve`` at ``url`` (see the module docstring)."""

    path = None

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 60.0):
        import httpx

        headers = {} if api_key is None else {"api-key": api_key}
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._async_args = dict(base_url=self.url, headers=headers, timeout=timeout)
        self._async = None
        self._info = self._call("GET", "/info")
        self._batch = min(SEND_BATCH, int(self._info["limits"]["max_batch"]))  # what one request may carry

    # ------------------------------------------------------------------ transport
    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        return _raise_for(self._client.request(method, path, json=body))

    async def _acall(self, method: str, path: str, body: dict | None = None) -> Any:
        import httpx

        if self._async is None:
            self._async = httpx.AsyncClient(**self._async_args)
        return _raise_for(await self._async.request(method, path, json=body))

    def _batches(self, items: list) -> list[list]:
        return [items[i : i + self._batch] for i in range(0, len(items), self._batch)]

    # ------------------------------------------------------------------ description
    @property
    def settings(self) -> dict:
        return self.server_info()["settings"]

    @property
    def dim(self) -> int | None:
        if self._info["settings"]["dim"] is None:
            self.server_info()
        return self._info["settings"]["dim"]

    @property
    def read_only(self) -> bool:
        return bool(self._info["read_only"])

    def server_info(self) -> dict:
        """The server's ``/info``: count, settings, memory, model, precision, read_only, limits."""
        self._info = self._call("GET", "/info")
        return self._info

    def memory(self) -> MemoryUsage:
        return MemoryUsage(**self.server_info()["memory"])

    def __len__(self) -> int:
        return self.count()

    def count(self, where=None) -> int:
        return self._call("POST", "/documents/count", {"where": _where(where)})["count"]

    def get_info(self, name: str) -> Any:
        return self._call("GET", f"/meta/{_name(name)}")["value"]

    def set_info(self, name: str, value: Any) -> None:
        self._call("PUT", f"/meta/{_name(name)}", {"value": value})

    # ------------------------------------------------------------------ documents
    def upsert(self, ids: Sequence[str], vectors, texts: Sequence[str], metadatas=None) -> list[str]:
        ids, texts = list(ids), list(texts)
        rows = _vectors(vectors)
        metas = None if metadatas is None else list(metadatas)
        out: list[str] = []
        for i in range(0, max(len(ids), 1), self._batch):
            part = slice(i, i + self._batch)
            body = {"ids": ids[part], "texts": texts[part], "metadatas": None if metas is None else metas[part]}
            body["vectors"] = None if rows is None else rows[part]
            out += self._call("POST", "/documents", body)["ids"]
        return out

    def get(self, ids: Sequence[str] | None = None, *, where=None, limit=None, offset: int = 0) -> list[Record]:
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, not one string.")
        if ids is None:  # pages (the server's are bounded by its batch limit)
            out: list[Record] = []
            while limit is None or len(out) < limit:
                size = self._batch if limit is None else min(self._batch, limit - len(out))
                body = {"where": _where(where), "limit": size, "offset": offset + len(out)}
                page = [record_from_json(r) for r in self._call("POST", "/documents/get", body)["records"]]
                out += page
                if len(page) < size:
                    break
            return out
        if where is not None or limit is not None or offset:
            raise TypeError("get takes ids, or where/limit/offset; not both.")
        out = []
        for part in self._batches(list(dict.fromkeys(ids))):
            out += [record_from_json(r) for r in self._call("POST", "/documents/get", {"ids": part})["records"]]
        return out

    def records(self, where=None) -> Iterator[Record]:
        return iter(self.get(where=where))

    def delete(self, ids: Sequence[str]) -> list[str]:
        return [
            i
            for part in self._batches(list(ids))
            for i in self._call("POST", "/documents/delete", {"ids": part})["deleted"]
        ]

    def delete_where(self, where) -> int:
        return self._call("POST", "/documents/delete", {"where": _where(where)})["deleted_count"]

    def update_metadata(self, ids: Sequence[str], metadatas) -> list[str]:
        ids, metadatas = list(ids), list(metadatas)
        if len(ids) > self._batch:  # one request: a change is all or nothing
            raise ValueError(f"update_metadata takes at most {self._batch} documents a call over this server.")
        return self._call("POST", "/documents/metadata", {"ids": ids, "metadatas": metadatas})["ids"]

    def vectors(self, records: Sequence[Record]) -> np.ndarray:
        if not records:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        parts = [
            self._call("POST", "/documents/vectors", {"ids": p})["vectors"]
            for p in self._batches([r.id for r in records])
        ]
        return np.asarray([v for p in parts for v in p], dtype=np.float32)

    def clear(self) -> None:
        self._call("POST", "/documents/clear")

    def compact(self) -> None:
        self._call("POST", "/compact")

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int = 4, rescore_multiplier: int = 4, where=None, ids=None) -> list:
        return _hits(self._call("POST", "/search", _search("dense", queries, None, k, rescore_multiplier, where, ids)))

    def keyword_search(self, texts: Sequence[str], k: int = 4, where=None, ids=None) -> list:
        return _hits(self._call("POST", "/search", _search("keyword", None, texts, k, 4, where, ids)))

    def hybrid_search(
        self, queries, texts: Sequence[str], k: int = 4, rescore_multiplier: int = 4, where=None, ids=None, **options
    ) -> list:
        """As ``QuantizedStore.hybrid_search``; ``options``: ``dense_top_k``, ``sparse_top_k``,
        ``fusion``, ``rrf_k``, ``weights``, ``alpha``."""
        body = {**_search("hybrid", queries, texts, k, rescore_multiplier, where, ids), **options}
        return _hits(self._call("POST", "/search", body))

    def search_texts(
        self, texts: Sequence[str], mode: str = "dense", k: int = 4, rescore_multiplier: int = 4, where=None, ids=None
    ) -> list:
        """Search by texts alone, embedded by the server's model (``mode``: ``dense``,
        ``keyword`` or ``hybrid``); a server started with ``--no-model`` refuses dense and hybrid."""
        body = _search(mode, None, texts, k, rescore_multiplier, where, ids)
        return _hits(self._call("POST", "/search", body))

    async def asearch(self, queries, k: int = 4, rescore_multiplier: int = 4, where=None, ids=None) -> list:
        body = _search("dense", queries, None, k, rescore_multiplier, where, ids)
        return _hits(await self._acall("POST", "/search", body))

    async def akeyword_search(self, texts: Sequence[str], k: int = 4, where=None, ids=None) -> list:
        return _hits(await self._acall("POST", "/search", _search("keyword", None, texts, k, 4, where, ids)))

    async def aget(self, ids: Sequence[str]) -> list[Record]:
        out = await self._acall("POST", "/documents/get", {"ids": list(ids)})
        return [record_from_json(r) for r in out["records"]]

    async def aupsert(self, ids: Sequence[str], vectors, texts: Sequence[str], metadatas=None) -> list[str]:
        body = {"ids": list(ids), "texts": list(texts), "vectors": _vectors(vectors)}
        body["metadatas"] = None if metadatas is None else list(metadatas)
        return (await self._acall("POST", "/documents", body))["ids"]

    # ------------------------------------------------------------------ lifecycle
    def save_replacing(self, path) -> None:
        raise ValueError("a RemoteStore is persisted by its server (its store is on the server's disk).")

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        """Close the async client (an event loop's own; the next coroutine opens another)."""
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _where(where) -> dict | None:
    return None if where is None else filter_to_json(where)


def _name(name: str) -> str:
    from urllib.parse import quote

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str; got {name!r}.")
    return quote(name, safe="")


def _search(mode, queries, texts, k, mult, where, ids) -> dict:
    return {
        "mode": mode,
        "vectors": _vectors(queries),
        "texts": None if texts is None else list(texts),
        "k": k,
        "rescore_multiplier": mult,
        "where": _where(where),
        "ids": None if ids is None else list(ids),
    }


def _hits(out: dict) -> list[list[tuple[Record, float]]]:
    return [[(record_from_json(h), h["score"]) for h in row] for row in out["results"]]
