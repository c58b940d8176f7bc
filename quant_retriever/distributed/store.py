"""``ShardedStore``: a :class:`~quant_retriever.store.QuantizedStore` split over Ray actors."""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from quant_retriever.checks import as_vectors, check_strings, int_at_least, keyword_only
from quant_retriever.codecs import CodecName, make_codec
from quant_retriever.distributed.index import _host, _sum_memory
from quant_retriever.distributed.routing import route_strs, split_by_shard
from quant_retriever.distributed.shards import MANIFEST, Sharded
from quant_retriever.files import replace_directory
from quant_retriever.filters import check_filter
from quant_retriever.index import MemoryUsage
from quant_retriever.store import Filter, Metric, Record, check_documents, check_metric

__all__ = ["ShardedStore"]


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

    @keyword_only("codec", "path")
    def __init__(
        self,
        dim: int | None = None,
        *,
        codec: CodecName = "int4",
        path: str | os.PathLike | None = None,
        rescore: bool | None = None,
        device: str | None = None,
        block_size: int = 64,
        rescore_dtype: str = "int8",
        metric: Metric = "ip",
        shards: int = 2,
        actor_options: dict | None = None,
    ):
        check_metric(metric)
        self._setup(shards, path, device, actor_options)
        settings = dict(rescore=rescore, device=device, block_size=block_size, rescore_dtype=rescore_dtype)
        self._create(lambda p: ((dim,), {"codec": codec, "path": p, **settings, "metric": metric}))
        # before the first vectors the shards have no index to describe: keep what they were given
        given = dict(
            codec=codec,
            rescore=(not make_codec(codec, 8, block_size=block_size).exact) if rescore is None else rescore,
            rescore_dtype=rescore_dtype,
            block_size=block_size,
            device=device or "auto",
            metric=metric,
        )
        self._info.update({k: v for k, v in given.items() if self._info.get(k) is None})

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        device: str | None = None,
        *,
        shards: int | None = None,
        actor_options: dict | None = None,
        read_only: bool = False,
    ) -> ShardedStore:
        """Reopen a persistent sharded store (each shard reconciles a write a crash
        interrupted). ``shards``, when given, must match the directory's count.
        ``read_only=True`` opens every shard read-only (see ``QuantizedStore.open``)."""
        return cls._open(path, shards, device, actor_options, read_only)

    @property
    def metric(self) -> str:
        return self._info["metric"]

    def refresh(self) -> bool:
        """Read-only shards move to the latest committed state (see ``QuantizedStore.refresh``)."""
        return any(self._read("refresh").values())

    @property
    def settings(self) -> dict:
        """What every shard's store was made with: ``codec``, ``rescore``, ``rescore_dtype``,
        ``block_size``, ``device``, ``metric`` and ``dim``; and ``shards``."""
        return {**self._info, "shards": self.shards}

    def get_info(self, name: str):
        """The JSON value recorded under ``name`` (see ``QuantizedStore.get_info``)."""
        return self._read("get_info", {0: ((name,), {})})[0]

    def set_info(self, name: str, value) -> None:
        """Record a small JSON value in every shard (see ``QuantizedStore.set_info``)."""
        with self._lock:
            self._write("set_info", self._every(name, value))

    def save_replacing(self, path: str | os.PathLike) -> None:
        """:meth:`save` to ``path``, atomically replacing a sharded store saved there before
        (see :func:`quant_retriever.files.replace_directory`)."""
        replace_directory(Path(path), self.save, lambda p: (p / MANIFEST).is_file(), "sharded store", self)

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
        return split_by_shard(route_strs(ids, self.shards))

    # ------------------------------------------------------------------ writes
    def upsert(
        self, ids: Sequence[str], vectors, texts: Sequence[str], metadatas: Sequence[dict | None] | None = None
    ) -> list[str]:
        """Add documents, replacing those whose ids exist (see ``QuantizedStore.upsert``);
        each shard takes the documents it owns. Returns the ids."""
        check_documents(ids, texts, metadatas)  # the whole batch, before any shard takes its part
        ids, texts = list(ids), list(texts)
        metadatas = [None] * len(ids) if metadatas is None else list(metadatas)
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
        ids = check_strings(ids, "ids")
        with self._lock:
            found = self._write(
                "delete", {s: (([ids[j] for j in rows],), {}) for s, rows in self._by_shard(ids).items()}
            )
            existed = {i for part in found.values() for i in part}
            return [i for i in dict.fromkeys(ids) if i in existed]

    def delete_where(self, where: Filter) -> int:
        """Delete every document matching a filter; returns how many."""
        check_filter(where)  # a bad filter fails here, before any shard
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
    def __contains__(self, id_: object) -> bool:
        try:
            return bool(self.get(check_strings([id_], "ids")))
        except (TypeError, ValueError):
            return False

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked."""
        ids = check_strings(ids, "ids")
        found = self._read("get", {s: (([ids[j] for j in rows],), {}) for s, rows in self._by_shard(ids).items()})
        by_id = {r.id: r for part in found.values() for r in part}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    def records(self, where: Filter | None = None) -> Iterator[Record]:
        """All records (matching ``where``): each shard's in insertion order, merged by key."""
        if where is not None:
            check_filter(where)
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
        for s, vecs in self._read(
            "vectors", {s: (([records[j] for j in rows],), {}) for s, rows in parts.items()}
        ).items():
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
        k = int_at_least(k, "k", 0)
        if k == 0:
            return [[] for _ in range(len(q))]
        mult = int_at_least(rescore_multiplier, "rescore_multiplier")
        if where is not None:
            check_filter(where)
        if ids is None:
            calls = self._every(q, k, mult, where)
        else:
            ids = check_strings(ids, "ids")
            calls = {s: ((q, k, mult, where, [ids[j] for j in rows]), {}) for s, rows in self._by_shard(ids).items()}
        hits = self._read("search", calls)
        return [
            heapq.nsmallest(k, (h for s in sorted(hits) for h in hits[s][i]), key=lambda h: (-h[1], h[0].id))
            for i in range(len(q))
        ]
