"""The read methods of :class:`~quant_retriever.store.QuantizedStore`: records by id or by
filter (paged), their vectors, and the three search modes (see
:mod:`~quant_retriever.store.search`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from quant_retriever.checks import VectorsLike, as_vectors, check_paired, check_strings, int_at_least
from quant_retriever.filters import Filter, check_filter
from quant_retriever.store.documents import Record
from quant_retriever.store.fusion import RRF_K, hybrid_options
from quant_retriever.store.search import Request, run

__all__ = ["Reads"]

_COLUMNS = "id, text, metadata, key"
_INT64_MAX = 2**63 - 1


def _record(row) -> Record:
    return Record(row[0], row[1], json.loads(row[2]), row[3])


class Reads:
    """Reads of a store (mixed into ``QuantizedStore``)."""

    def get(
        self,
        ids: Sequence[str] | None = None,
        *,
        where: Filter | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Record]:
        """Records for the ``ids`` that exist, in the order asked (a bare string is refused);
        or, without ``ids``, a page of the records matching ``where`` (all without it), in
        insertion order: ``limit`` of them (``None``: all) from the ``offset``-th on."""
        if ids is not None:
            if where is not None or limit is not None or offset:
                raise TypeError("get takes ids, or where/limit/offset; not both.")
            ids = check_strings(ids, "ids")
            rows = {r[0]: _record(r) for r in self._db.lookup("id", ids, _COLUMNS)}
            return [rows[i] for i in dict.fromkeys(ids) if i in rows]
        offset = int_at_least(offset, "offset", 0)
        limit = None if limit is None else int_at_least(limit, "limit", 0)
        if where is None:  # (SQLite integers are 64-bit: larger counts mean "all" / "past the end")
            sql = f"SELECT {_COLUMNS} FROM docs ORDER BY key LIMIT ? OFFSET ?"
            params = (-1 if limit is None else min(limit, _INT64_MAX), min(offset, _INT64_MAX))
            return [_record(r) for r in self._db.query(sql, params)]
        keys = self._matching(where).tolist()[offset : None if limit is None else offset + limit]
        return [_record(r) for r in sorted(self._db.lookup("key", keys, _COLUMNS), key=lambda r: r[3])]

    def records(self, where: Filter | None = None) -> Iterator[Record]:
        """All records (matching ``where``), in insertion order."""
        return iter(self.get(where=where))

    def count(self, where: Filter | None = None) -> int:
        """How many documents (matching ``where``) the store holds."""
        return len(self._all_keys()) if where is None else len(self._matching(where))

    def vectors(self, records: Sequence[Record]) -> np.ndarray:
        """Reconstructed vectors ``[n, dim]`` of records (from the rescore copy when there is one)."""
        if not records:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return self._index.get_vectors([r.key for r in records])

    def search(
        self,
        queries: VectorsLike,
        k: int = 4,
        rescore_multiplier: int = 4,
        where: Filter | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[list[tuple[Record, float]]]:
        """Dense search: top-``k`` ``(record, score)`` per query vector, best first. Scores are
        inner products, or cosines in ``[-1, 1]`` with ``metric="cosine"``.

        ``where`` (a filter) and ``ids`` (allowed document ids) restrict the search before
        top-k; ``k=0`` and an empty store return empty lists.
        """
        q = self._queries(queries)
        return run(self, self._request("dense", len(q), k, where, ids, vectors=q, mult=rescore_multiplier))

    def keyword_search(
        self, texts: Sequence[str], k: int = 4, where: Filter | None = None, ids: Sequence[str] | None = None
    ) -> list[list[tuple[Record, float]]]:
        """Keyword search: top-``k`` ``(record, BM25 score)`` per query text, best first (see
        :mod:`~quant_retriever.store.keywords`: a text is words, never FTS5 syntax; a text
        without a word finds nothing). ``where`` and ``ids`` as in :meth:`search`."""
        texts = self._texts(texts)
        return run(self, self._request("keyword", len(texts), k, where, ids, texts=texts))

    def hybrid_search(
        self,
        queries: VectorsLike,
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
        """Hybrid search: per query (a vector and its text), the dense branch's top
        ``dense_top_k`` and the keyword branch's top ``sparse_top_k`` (each ``4 * k`` by
        default) fused, then the top ``k`` ``(record, fused score)``, best first.

        ``fusion``: ``"rrf"`` (reciprocal-rank fusion with ``rrf_k``, the default) or
        ``"relative"`` (min-max scaled scores); ``weights`` (dense, keyword), default equal, or
        LlamaIndex's ``alpha``: the dense branch's weight, ``1 - alpha`` the keyword branch's (1:
        dense only, 0: keyword only). See :mod:`~quant_retriever.store.fusion` for the scores.
        ``where`` and ``ids`` restrict both branches before their top-k. Equal fused scores
        (frequent with RRF) keep insertion order.
        """
        q, texts = self._paired(queries, texts)
        options = hybrid_options(k, dense_top_k, sparse_top_k, fusion, rrf_k, weights, alpha)
        request = self._request("hybrid", len(q), k, where, ids, vectors=q, texts=texts, mult=rescore_multiplier)
        return run(self, replace(request, **options))

    def hybrid_branches(
        self,
        queries: VectorsLike,
        texts: Sequence[str],
        k: int,
        rescore_multiplier: int = 4,
        where: Filter | None = None,
        ids: Sequence[str] | None = None,
        *,
        dense_k: int,
        sparse_k: int,
    ) -> list[list[list[tuple[Record, float]]]]:
        """Per query, the two branches of a hybrid search, unfused: ``[dense hits, keyword
        hits]`` (the top ``dense_k`` and ``sparse_k``; nothing when ``k`` is 0). A shard of a
        sharded store answers this, and the driver merges each branch and fuses once."""
        q, texts = self._paired(queries, texts)
        request = self._request("branches", len(q), k, where, ids, vectors=q, texts=texts, mult=rescore_multiplier)
        counts = dict(dense_k=int_at_least(dense_k, "dense_k", 0), sparse_k=int_at_least(sparse_k, "sparse_k", 0))
        return run(self, replace(request, **counts))

    # ------------------------------------------------------------------ checks
    def _queries(self, queries: VectorsLike):
        return self._as_metric(as_vectors(queries, self.dim, "queries"))

    def _paired(self, queries: VectorsLike, texts: Sequence[str]):
        """Query vectors and their texts, one text per vector."""
        q = self._queries(queries)
        return q, check_paired(self._texts(texts), len(q))

    def _texts(self, texts: Sequence[str]) -> list[str]:
        texts = check_strings(texts, "texts")
        if not self._keywords:
            raise ValueError(
                f"{self.path or 'this store'} has no keyword index (it was made with keywords=None, or written "
                "before keyword search existed and opened read-only: open it once without read_only=True)."
            )
        return texts

    def _request(self, mode: str, n: int, k, where, ids, **parts) -> Request:
        k = int_at_least(k, "k", 0)
        mult = int_at_least(parts.pop("mult", 4), "rescore_multiplier")
        if where is not None:
            check_filter(where)
        ids = None if ids is None else check_strings(ids, "ids")
        return Request(mode, n, k, where=where, ids=ids, mult=mult, **parts)
