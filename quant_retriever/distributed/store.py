"""``ShardedStore``: a :class:`~quant_retriever.store.QuantizedStore` split over Ray actors."""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np

from quant_retriever.checks import as_vectors, check_paired, check_strings, int_at_least, keyword_only
from quant_retriever.codecs import CodecName, make_codec
from quant_retriever.distributed.index import _host, _sum_memory
from quant_retriever.distributed.routing import route_strs, split_by_shard
from quant_retriever.distributed.shards import MANIFEST, Sharded
from quant_retriever.files import replace_directory
from quant_retriever.filters import check_filter
from quant_retriever.index import MemoryUsage
from quant_retriever.store import Filter, Metric, Record, check_documents, check_metric
from quant_retriever.store.fusion import RRF_K, fuse_hits, hybrid_options
from quant_retriever.store.keywords import DEFAULT_TOKENIZER, Tokenizer, check_tokenizer

__all__ = ["ShardedStore"]


class ShardedStore(Sharded):
    """A ``QuantizedStore`` split over ``shards`` Ray actors, each owning one shard.

    ``dim``, ``codec``, ``path``, ``rescore``, ``device``, ``block_size``, ``metric`` and
    ``keywords`` are ``QuantizedStore``'s and apply to every shard (``device=None``: each actor its own GPU
    when it has one). ``actor_options``: Ray options of each shard actor. Starts a local Ray
    instance when none is running.

    A document lives on shard :func:`~quant_retriever.distributed.shard_of` of its id, so an
    upsert replaces it in place. A search runs on every shard (filters and allowed ids
    applied there, before top-k) and the driver merges the hits: score descending (equal scores
    in shard order, then as their shard ranked them). A
    hybrid search merges each branch across the shards, then fuses once. Keyword (BM25) scores
    use each shard's own statistics (document frequencies, average length), so they differ a
    little from one store's over the same documents (docs/scale.md gives the overlap measured).
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
        keywords: Tokenizer | None = DEFAULT_TOKENIZER,
        shards: int = 2,
        actor_options: dict | None = None,
    ):
        check_metric(metric)
        keywords = None if keywords is None else check_tokenizer(keywords)
        self._setup(shards, path, device, actor_options)
        settings = dict(rescore=rescore, device=device, block_size=block_size, rescore_dtype=rescore_dtype)
        self._create(
            lambda p: ((dim,), {"codec": codec, "path": p, **settings, "metric": metric, "keywords": keywords})
        )
        # before the first vectors the shards have no index to describe: keep what they were given
        given = dict(
            codec=codec,
            rescore=(not make_codec(codec, 8, block_size=block_size).exact) if rescore is None else rescore,
            rescore_dtype=rescore_dtype,
            block_size=block_size,
            device=device or "auto",
            metric=metric,
            keywords=keywords,
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

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict | None]) -> list[str]:
        """Replace the metadata of stored documents without embedding them again (see
        ``QuantizedStore.update_metadata``); returns the ids that existed."""
        ids = check_strings(ids, "ids")
        check_documents(ids, [""] * len(ids), metadatas)  # the whole batch, before any shard
        metadatas = list(metadatas)
        with self._lock:
            calls = {
                s: (([ids[j] for j in rows], [metadatas[j] for j in rows]), {})
                for s, rows in self._by_shard(ids).items()
            }
            existed = {i for part in self._write("update_metadata", calls).values() for i in part}
        return [i for i in ids if i in existed]

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

    def get(
        self,
        ids: Sequence[str] | None = None,
        *,
        where: Filter | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Record]:
        """Records for the ``ids`` that exist, in the order asked; or a page of those matching
        ``where``, in :meth:`records` order (see ``QuantizedStore.get``)."""
        if ids is None:
            offset = int_at_least(offset, "offset", 0)
            limit = None if limit is None else int_at_least(limit, "limit", 0)
            return list(islice(self.records(where), offset, None if limit is None else offset + limit))
        if where is not None or limit is not None or offset:
            raise TypeError("get takes ids, or where/limit/offset; not both.")
        ids = check_strings(ids, "ids")
        found = self._read("get", {s: (([ids[j] for j in rows],), {}) for s, rows in self._by_shard(ids).items()})
        by_id = {r.id: r for part in found.values() for r in part}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    def count(self, where: Filter | None = None) -> int:
        """How many documents (matching ``where``) the shards hold."""
        if where is not None:
            check_filter(where)
        return sum(self._read("count", self._every(where)).values())

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
        hits = self._read("search", self._restricted((q, k, mult), where, ids))
        return [_best((hits[s][i] for s in sorted(hits)), k) for i in range(len(q))]

    def keyword_search(
        self, texts: Sequence[str], k: int = 4, where: Filter | None = None, ids: Sequence[str] | None = None
    ) -> list[list[tuple[Record, float]]]:
        """Top-``k`` ``(record, BM25)`` per query text, as ``QuantizedStore.keyword_search``:
        every shard searches its keyword index, the driver merges (each shard's BM25 uses its
        own statistics: see the class docstring)."""
        texts = check_strings(texts, "texts")
        if int_at_least(k, "k", 0) == 0:
            return [[] for _ in texts]
        hits = self._read("keyword_search", self._restricted((texts, k), where, ids))
        return [_best((hits[s][i] for s in sorted(hits)), k) for i in range(len(texts))]

    def hybrid_search(
        self,
        queries,
        texts: Sequence[str],
        k: int = 4,
        rescore_multiplier: int = 4,
        where: Filter | None = None,
        ids: Sequence[str] | None = None,
        *,
        dense_top_k: int | None = None,
        sparse_top_k: int | None = None,
        fusion: str = "rrf",
        rrf_k: float = RRF_K,
        weights: tuple[float, float] | None = None,
        alpha: float | None = None,
    ) -> list[list[tuple[Record, float]]]:
        """Hybrid search, as ``QuantizedStore.hybrid_search``: every shard returns each
        branch's top candidates, the driver merges each branch across the shards to its top
        ``dense_top_k`` / ``sparse_top_k`` and fuses once (equal fused scores by shard, then
        key: one shard ranks as one store)."""
        q = _host(as_vectors(queries, self.dim, "queries"))
        texts = check_paired(check_strings(texts, "texts"), len(q))
        options = hybrid_options(k, dense_top_k, sparse_top_k, fusion, rrf_k, weights, alpha)
        mult = int_at_least(rescore_multiplier, "rescore_multiplier")
        if k == 0:
            return [[] for _ in range(len(q))]
        counts = {"dense_k": options.pop("dense_k"), "sparse_k": options.pop("sparse_k")}
        parts = self._read("hybrid_branches", self._restricted((q, texts, k, mult), where, ids, **counts))
        shard_of = {r.id: s for s, part in parts.items() for branches in part for hits in branches for r, _ in hits}
        fused = []
        for i in range(len(q)):
            dense = _best((parts[s][i][0] for s in sorted(parts)), counts["dense_k"])
            keyword = _best((parts[s][i][1] for s in sorted(parts)), counts["sparse_k"])
            fused.append(fuse_hits([dense, keyword], k, key=lambda r: (shard_of[r.id], r.key), **options))
        return fused

    def _restricted(self, args: tuple, where: Filter | None, ids: Sequence[str] | None, **kwargs) -> dict:
        """Calls of a search: every shard with ``args + (where,)``, or with ``ids`` each shard
        that owns some of them, with its own."""
        if where is not None:
            check_filter(where)
        if ids is None:
            return self._every(*args, where, **kwargs)
        ids = check_strings(ids, "ids")
        return {s: ((*args, where, [ids[j] for j in rows]), kwargs) for s, rows in self._by_shard(ids).items()}


def _best(parts: Iterable[list[tuple[Record, float]]], n: int) -> list[tuple[Record, float]]:
    """The best ``n`` hits of the shards' lists (given in shard order): score descending, equal
    scores in shard order, then as their shard ranked them (so one shard ranks as one store)."""
    return heapq.nsmallest(n, (h for part in parts for h in part), key=lambda h: -h[1])  # stable
