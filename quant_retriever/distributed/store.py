"""``ShardedStore``: a :class:`~quant_retriever.store.QuantizedStore` split over Ray actors."""

from __future__ import annotations

import heapq
import json
import os
from typing import Iterator, Sequence

import numpy as np

from quant_retriever.codecs import CodecName
from quant_retriever.distributed.index import _host, _sum_memory
from quant_retriever.distributed.shards import Sharded, _positive, _route_strs, split_by_shard
from quant_retriever.index import MemoryUsage, as_vectors
from quant_retriever.store import Filter, Record, compile_filter

__all__ = ["ShardedStore", "check_documents"]


def check_documents(ids, texts, metadatas) -> tuple[list[str], list[str], list[dict | None]]:
    """The checks ``QuantizedStore.upsert`` makes before it writes, made once on the driver so
    that no shard takes its part of a batch another shard would refuse."""
    ids, texts = list(ids), list(texts)
    metadatas = [None] * len(ids) if metadatas is None else list(metadatas)
    if not (len(ids) == len(texts) == len(metadatas)):
        raise ValueError(
            f"ids, texts and metadatas must have the same length. Got {len(ids)} ids, {len(texts)} texts "
            f"and {len(metadatas)} metadatas."
        )
    for i, (doc_id, text, metadata) in enumerate(zip(ids, texts, metadatas)):
        if not isinstance(doc_id, str):
            raise TypeError(f"ids must be strings; item {i} is {type(doc_id).__name__}.")
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; item {i} is {type(text).__name__}.")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict; item {i} is {type(metadata).__name__}.")
        try:
            json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata must be JSON-serializable (str, numbers, bools, None, lists, dicts); item {i}: {exc}.") from None
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique within one call; got duplicates.")
    return ids, texts, metadatas


def _str_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of strings; got a single {type(ids).__name__}.")
    ids = list(ids)
    for i, doc_id in enumerate(ids):
        if not isinstance(doc_id, str):
            raise TypeError(f"ids must be strings; item {i} is {type(doc_id).__name__}.")
    return ids


class ShardedStore(Sharded):
    """A ``QuantizedStore`` split over ``shards`` Ray actors, each owning one shard.

    ``dim``, ``codec``, ``path``, ``rescore``, ``device`` and ``block_size`` are
    ``QuantizedStore``'s and apply to every shard (``device=None``: each actor its own GPU
    when it has one). ``actor_options``: Ray options of each shard actor. Starts a local Ray
    instance when none is running.

    A document lives on shard :func:`~quant_retriever.distributed.shard_of` of its id, so an
    upsert replaces it in place. A search runs on every shard (filters and allowed ids
    applied there, before top-k) and the driver merges the hits: score descending, then id.
    ``Record.key`` is the key inside the record's shard. :meth:`records` yields each shard's
    records in insertion order, the shards interleaved by key (not one global order).

    ``path`` (a new or empty directory, visible from every actor's node) makes the store
    persistent, one ``QuantizedStore`` per ``path/shard-N``; reopen with :meth:`open`.
    """

    _KIND = "store"
    _OPEN = "open"

    def __init__(
        self,
        dim: int | None = None,
        codec: CodecName = "int4",
        path: str | os.PathLike | None = None,
        *,
        rescore: bool | None = None,
        device: str | None = None,
        block_size: int = 64,
        shards: int = 2,
        actor_options: dict | None = None,
    ):
        self._setup(shards, path, device, actor_options)
        self._create(lambda p: ((dim, codec, p), {"rescore": rescore, "device": device, "block_size": block_size}))

    @classmethod
    def open(cls, path: str | os.PathLike, device: str | None = None, *, shards: int | None = None,
             actor_options: dict | None = None) -> "ShardedStore":
        """Reopen a persistent sharded store (each shard reconciles a write a crash
        interrupted). ``shards``, when given, must match the directory's count."""
        return cls._open(path, shards, device, actor_options)

    @property
    def dim(self) -> int | None:
        return self._info["dim"]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"shards={self.shards}"
        return f"ShardedStore(dim={self.dim}, {state}, path={str(self.path) if self.path else None!r})"

    def __len__(self) -> int:
        return sum(self._read("__len__").values())

    def shard_sizes(self) -> list[int]:
        """Documents on each shard."""
        return [n for _, n in sorted(self._read("__len__").items())]

    def memory(self) -> MemoryUsage:
        """The shards' index memory, summed (see ``QuantizedIndex.memory``)."""
        return _sum_memory(list(self._read("index.memory").values()))

    def _by_shard(self, ids: list[str]) -> dict[int, np.ndarray]:
        return split_by_shard(_route_strs(ids, self.shards))

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[str], vectors, texts: Sequence[str], metadatas: Sequence[dict | None] | None = None) -> list[str]:
        """Add documents, replacing those whose ids exist (see ``QuantizedStore.upsert``);
        each shard takes the documents it owns. Returns the ids."""
        ids, texts, metadatas = check_documents(ids, texts, metadatas)
        if not ids:
            return []
        with self._lock:
            self._check_usable()
            x = _host(as_vectors(vectors, self.dim, "vectors"))
            if len(x) != len(ids):
                raise ValueError(f"vectors must have one row per id. Got {len(x)} vectors and {len(ids)} ids.")
            calls = {
                s: (([ids[j] for j in rows], x[rows], [texts[j] for j in rows], [metadatas[j] for j in rows]), {})
                for s, rows in self._by_shard(ids).items()
            }
            self._write("upsert", calls)
            self._info["dim"] = x.shape[1]
        return ids

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete documents by id; returns the ids that existed (unknown ids are ignored)."""
        ids = _str_ids(ids)
        with self._lock:
            found = self._write("delete", {s: (([ids[j] for j in rows],), {}) for s, rows in self._by_shard(ids).items()})
            existed = {i for part in found.values() for i in part}
            return [i for i in dict.fromkeys(ids) if i in existed]

    def delete_where(self, where: Filter) -> int:
        """Delete every document matching a filter; returns how many."""
        compile_filter(where)  # a bad filter fails here, before any shard
        with self._lock:
            return sum(self._write("delete_where", self._every(where)).values())

    def clear(self) -> None:
        """Delete every document."""
        with self._lock:
            self._write("clear")

    def compact(self) -> None:
        """Compact every shard's index (see ``QuantizedIndex.compact``)."""
        with self._lock:
            self._write("index.compact")

    # ------------------------------------------------------------------ reads
    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked."""
        ids = _str_ids(ids)
        found = self._read("get", {s: (([ids[j] for j in rows],), {}) for s, rows in self._by_shard(ids).items()})
        by_id = {r.id: r for part in found.values() for r in part}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    def records(self, where: Filter | None = None) -> Iterator[Record]:
        """All records (matching ``where``): each shard's in insertion order, merged by key."""
        if where is not None:
            compile_filter(where)
        parts = self._read("records", self._every(where))
        keyed = [[(r.key, s, r) for r in part] for s, part in sorted(parts.items())]
        for _, _, record in heapq.merge(*keyed, key=lambda t: t[:2]):
            yield record

    def _shard_ids(self) -> dict:
        return {s: [r.id for r in part] for s, part in self._read("records", self._every()).items()}

    def vectors(self, records: Sequence[Record]) -> np.ndarray:
        """Reconstructed vectors ``[n, dim]`` of records (each from its own shard)."""
        records = list(records)
        out = np.zeros((len(records), self.dim or 0), dtype=np.float32)
        if not records:
            return out
        parts = self._by_shard([r.id for r in records])
        for s, vecs in self._read("vectors", {s: (([records[j] for j in rows],), {}) for s, rows in parts.items()}).items():
            out[parts[s]] = vecs
        return out

    def search(
        self,
        queries,
        k: int = 4,
        rescore_multiplier: int = 4,
        where: Filter | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[list[tuple[Record, float]]]:
        """Top-``k`` ``(record, score)`` per query, as ``QuantizedStore.search``: every shard
        searches with the filter (``ids`` go to the shards that own them), the driver merges."""
        q = _host(as_vectors(queries, self.dim, "queries"))
        k = _positive(k, "k")
        mult = _positive(rescore_multiplier, "rescore_multiplier")
        if where is not None:
            compile_filter(where)
        if ids is None:
            calls = self._every(q, k, mult, where)
        else:
            ids = _str_ids(ids)
            calls = {s: ((q, k, mult, where, [ids[j] for j in rows]), {}) for s, rows in self._by_shard(ids).items()}
        hits = self._read("search", calls)
        return [
            heapq.nsmallest(k, (h for s in sorted(hits) for h in hits[s][i]), key=lambda h: (-h[1], h[0].id))
            for i in range(len(q))
        ]
