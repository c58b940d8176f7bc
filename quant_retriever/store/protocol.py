"""``StoreLike``: what ingestion (and the framework adapters) need of a store, so that a
``QuantizedStore`` and a ``ShardedStore`` serve them alike, with no test of their types."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from quant_retriever.index import MemoryUsage
from quant_retriever.store.documents import Record

__all__ = ["StoreLike"]


@runtime_checkable
class StoreLike(Protocol):
    """A document store with the ``QuantizedStore`` API: documents by id (``upsert``, ``get``,
    ``delete``, ``records``, ``update_metadata``, ``count``), dense, keyword and hybrid
    search, small JSON records of its own (``get_info``,
    ``set_info``), and a description of itself (``settings``: codec, rescore, device, metric,
    dim, ``shards``; ``memory()``)."""

    path: Path | None

    @property
    def dim(self) -> int | None: ...

    @property
    def settings(self) -> dict: ...

    def __len__(self) -> int: ...

    def upsert(self, ids: Sequence[str], vectors, texts: Sequence[str], metadatas=None) -> list[str]: ...

    def get(self, ids: Sequence[str] | None = None, *, where=None, limit=None, offset: int = 0) -> list[Record]: ...

    def delete(self, ids: Sequence[str]) -> list[str]: ...

    def records(self, where=None) -> Iterator[Record]: ...

    def update_metadata(self, ids: Sequence[str], metadatas) -> list[str]: ...

    def count(self, where=None) -> int: ...

    def search(self, queries, k: int = 4, rescore_multiplier: int = 4, where=None, ids=None) -> list: ...

    def keyword_search(self, texts: Sequence[str], k: int = 4, where=None, ids=None) -> list: ...

    def hybrid_search(self, queries, texts: Sequence[str], k: int = 4, rescore_multiplier: int = 4, **kw) -> list: ...

    def get_info(self, name: str) -> Any: ...

    def set_info(self, name: str, value: Any) -> None: ...

    def memory(self) -> MemoryUsage: ...

    def close(self) -> None: ...
