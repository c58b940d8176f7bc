"""``ShardedIndex``: a :class:`~quant_retriever.index.QuantizedIndex` split over Ray actors."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from quant_retriever.checks import IdsLike, VectorsLike, as_ids, as_vectors, automatic_ids, int_at_least, keyword_only
from quant_retriever.codecs import CodecName, RescoreDtype
from quant_retriever.distributed.routing import route_ints, split_by_shard
from quant_retriever.distributed.shards import MANIFEST, Sharded
from quant_retriever.files import write_json_atomic
from quant_retriever.index import MemoryUsage, SearchResult, Selection

__all__ = ["ShardedIndex", "merge_top_k"]


def merge_top_k(results: list[SearchResult], k: int, n_queries: int) -> SearchResult:
    """The best ``k`` of several shards' results per query: score descending, then id
    ascending (so ties break the same way whatever the shard count)."""
    if not results:
        empty = np.zeros((n_queries, 0))
        return SearchResult(empty.astype(np.int64), empty.astype(np.float32))
    ids = np.concatenate([r.ids for r in results], axis=1)  # [q, sum of shard k]
    scores = np.concatenate([r.scores for r in results], axis=1)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return SearchResult(np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1))


def _host(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


class ShardedIndex(Sharded):
    """A ``QuantizedIndex`` split over ``shards`` Ray actors, each owning one shard.

    The arguments up to ``rescore_dtype`` are ``QuantizedIndex``'s and apply to every shard;
    ``device=None`` lets each actor pick its own GPU when it has one. ``actor_options``: Ray
    options of each shard actor (default: :func:`~quant_retriever.distributed.shards.default_actor_options`).
    Starts a local Ray instance when none is running.

    An id lives on shard :func:`~quant_retriever.distributed.shard_of`; automatic ids count
    up from 0 as in one index. A search sends the queries to every shard, each returns its top
    ``k`` after its own rescoring, and the driver merges them (:func:`merge_top_k`). With
    rescoring, a shard rescores its own ``k * rescore_multiplier`` candidates, so the sharded
    search considers at least the candidates one index would (see ``docs/scale.md``).

    ``path`` (a new or empty directory, visible from every actor's node) makes the index
    persistent: ``path/shard-N`` holds each shard; reopen with :meth:`open`. :meth:`ids`
    returns ids sorted (one index returns insertion order).
    """

    _KIND = "index"
    _OPEN = "open"

    @keyword_only("codec", "rescore", "path", "device", "block_size")
    def __init__(
        self,
        dim: int,
        *,
        codec: CodecName = "int4",
        rescore: bool | None = None,
        path: str | os.PathLike | None = None,
        device: str | None = None,
        block_size: int = 64,
        rescore_dtype: RescoreDtype = "int8",
        shards: int = 2,
        actor_options: dict | None = None,
    ):
        self._setup(shards, path, device, actor_options)
        settings = dict(codec=codec, rescore=rescore, device=device, block_size=block_size, rescore_dtype=rescore_dtype)
        self._create(lambda p: ((dim,), {**settings, "path": p}))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None, **kwargs) -> ShardedIndex:
        """Deprecated name of :meth:`open` (every persistent class reopens with ``open``)."""
        warnings.warn("ShardedIndex.load is deprecated; use ShardedIndex.open.", DeprecationWarning, stacklevel=2)
        return cls.open(path, device, **kwargs)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        device: str | None = None,
        *,
        shards: int | None = None,
        actor_options: dict | None = None,
        read_only: bool = False,
    ) -> ShardedIndex:
        """Open a sharded index directory (written by a persistent ``ShardedIndex`` or
        :meth:`save`). ``shards``, when given, must match the directory's count;
        ``read_only=True`` opens every shard read-only (see ``QuantizedIndex.open``)."""
        return cls._open(path, shards, device, actor_options, read_only)

    # ------------------------------------------------------------------ settings
    @property
    def dim(self) -> int:
        return self._info["dim"]

    @property
    def codec_name(self) -> str:
        return self._info["codec"]

    @property
    def rescore(self) -> bool:
        return self._info["rescore"]

    @property
    def rescore_dtype(self) -> str:
        return self._info["rescore_dtype"]

    @property
    def block_size(self) -> int:
        return self._info["block_size"]

    @property
    def device(self) -> str:
        """The device of shard 0 as that actor sees it (each actor numbers its own GPUs)."""
        return self._info["device"]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"shards={self.shards}"
        return (
            f"ShardedIndex(dim={self.dim}, codec={self.codec_name!r}, rescore={self.rescore}, {state}, "
            f"path={str(self.path) if self.path else None!r})"
        )

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return sum(self._read("__len__").values())

    def shard_sizes(self) -> list[int]:
        """Searchable vectors on each shard."""
        return [n for _, n in sorted(self._read("__len__").items())]

    def ids(self) -> np.ndarray:
        """The ids of all searchable vectors, sorted."""
        return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *self._read("ids").values()]))

    def _shard_ids(self) -> dict:
        return self._read("ids")

    def _by_shard(self, name: str, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out[j] = <shard of ids[j]>.name(ids routed there)[...]``, one call per shard."""
        parts = split_by_shard(route_ints(ids, self.shards))
        for s, res in self._read(name, {s: ((ids[rows],), {}) for s, rows in parts.items()}).items():
            out[parts[s]] = res
        return out

    def __contains__(self, id_: object) -> bool:
        ok = not isinstance(id_, bool) and isinstance(id_, (int, np.integer)) and 0 <= id_ < 2**63
        return ok and bool(self.contains([id_])[0])

    def contains(self, ids: IdsLike) -> np.ndarray:
        """``[len(ids)]`` bool: which of ``ids`` are in the index."""
        arr = as_ids(ids)
        return self._by_shard("contains", arr, np.zeros(len(arr), dtype=bool))

    def get_vectors(self, ids) -> np.ndarray:
        """Reconstructions ``[n, dim]`` float32 of the given ids (see ``QuantizedIndex.get_vectors``)."""
        arr = as_ids(ids)
        return self._by_shard("get_vectors", arr, np.zeros((len(arr), self.dim), dtype=np.float32))

    def search(
        self, queries: VectorsLike, k: int = 10, rescore_multiplier: int = 4, *, allowed_ids: IdsLike | None = None
    ) -> SearchResult:
        """Top-``k`` ids and scores per query, as ``QuantizedIndex.search``: every shard
        searches (``allowed_ids`` go to the shards that own them), the driver merges."""
        q = _host(as_vectors(queries, self.dim, "queries"))
        k = int_at_least(k, "k")
        mult = int_at_least(rescore_multiplier, "rescore_multiplier")
        if allowed_ids is None:
            calls = self._every(q, k, mult)
        else:
            arr = Selection.of(allowed_ids).ids
            parts = split_by_shard(route_ints(arr, self.shards))
            calls = {s: ((q, k, mult), {"allowed_ids": arr[rows]}) for s, rows in parts.items()}
        results = self._read("search", calls)
        return merge_top_k([results[s] for s in sorted(results)], k, len(q))

    def memory(self) -> MemoryUsage:
        """Sums over the shards (see ``QuantizedIndex.memory``); per-vector sizes are one shard's."""
        return _sum_memory(list(self._read("memory").values()))

    # ------------------------------------------------------------------ writes
    def _reserve(self, next_id: int) -> None:
        """Record ``next_id`` before vectors with ids below it reach a shard, so a crash never
        lets an id be handed out twice."""
        if next_id != self._next_id:
            self._next_id = next_id
            if self.path is not None:
                write_json_atomic(self.path / MANIFEST, self._manifest())

    def add(self, vectors: VectorsLike, ids: IdsLike | None = None) -> np.ndarray:
        """Add vectors (``[n, dim]``); returns their int64 ids (see ``QuantizedIndex.add``).
        Nothing changes if the call raises: shards that took their part give it back."""
        x = _host(as_vectors(vectors, self.dim, "vectors"))
        with self._lock:
            self._check_writable()
            new_ids = automatic_ids(len(x), self._next_id) if ids is None else as_ids(ids, len(x))
            taken = new_ids[self.contains(new_ids)] if ids is not None else new_ids[:0]
            if len(taken):
                raise ValueError(f"ids already in the index: {taken[:10].tolist()}; remove them first.")
            parts = split_by_shard(route_ints(new_ids, self.shards))
            before = self._next_id
            self._reserve(max(before, int(new_ids.max()) + 1))
            done, failed = self._gather(
                self._send("add", {s: ((x[rows], new_ids[rows]), {}) for s, rows in parts.items()})
            )
            if failed:
                self._gather(self._send("remove", {s: ((new_ids[parts[s]],), {}) for s in done}, check=False))
                self._reserve(before)
                raise failed[min(failed)]
            return new_ids

    def remove(self, ids) -> None:
        """Remove vectors by id; unknown ids raise ``ValueError`` and nothing is removed."""
        arr = as_ids(ids)
        with self._lock:
            present = self.contains(arr)
            if not present.all():
                raise ValueError(f"ids not in the index: {arr[~present][:10].tolist()}.")
            parts = split_by_shard(route_ints(arr, self.shards))
            self._write("remove", {s: ((arr[rows],), {}) for s, rows in parts.items()})

    def compact(self) -> None:
        """Compact every shard (see ``QuantizedIndex.compact``)."""
        with self._lock:
            self._write("compact")


def _sum_memory(parts: list[MemoryUsage | None]) -> MemoryUsage:
    parts = [p for p in parts if p is not None]
    if not parts:
        return MemoryUsage(0, 0, 0, 0, 0)
    return MemoryUsage(
        device_bytes=sum(p.device_bytes for p in parts),
        disk_bytes=sum(p.disk_bytes for p in parts),
        bytes_per_vector=parts[0].bytes_per_vector,
        disk_bytes_per_vector=parts[0].disk_bytes_per_vector,
        host_bytes=sum(p.host_bytes for p in parts),
    )
