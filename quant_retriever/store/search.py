"""A store's searches, in three modes, all optimistic so that readers never lock out writers.

- ``dense``: the index's codes, rescored (scores: inner products, or cosines in ``[-1, 1]``);
- ``keyword``: the keyword index's BM25 (scores: BM25, higher is better; see
  :mod:`~quant_retriever.store.keywords`);
- ``hybrid``: both branches (each with its own candidate count), fused before the top ``k``
  (scores: the fusion's, see :mod:`~quant_retriever.store.fusion`);
- ``branches``: both branches, unfused (what a shard of a sharded store returns).

Filters and allowed ids restrict every branch before its top-k. Each attempt reads an
immutable index snapshot and the store version, runs its branches (the filter's key set from
the cache), reads its hits' records through a pooled connection, and checks at the end that no
write was published meanwhile; if one was, it runs again, and after ``SEARCH_ATTEMPTS`` races
it waits for the writes. So a search sees a write wholly or not at all, and never returns an
id after its ``delete`` returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from quant_retriever.store.documents import Record
from quant_retriever.store.fusion import fuse

if TYPE_CHECKING:
    from quant_retriever.store.core import QuantizedStore

__all__ = ["Request", "run", "SEARCH_ATTEMPTS"]

#: Attempts of a search racing writes before it waits for them.
SEARCH_ATTEMPTS = 3


@dataclass(frozen=True)
class Request:
    """One checked search: ``vectors [q, dim]`` (dense, hybrid) and/or ``texts`` (keyword,
    hybrid), one per query; each branch's candidates (``dense_k``, ``sparse_k``); the fusion."""

    mode: str
    n_queries: int
    k: int
    vectors: torch.Tensor | None = None
    texts: list[str] | None = None
    where: object = None
    ids: list[str] | None = None
    mult: int = 4
    dense_k: int = 0
    sparse_k: int = 0
    fusion: str = "rrf"
    rrf_k: float = 60.0
    weights: tuple[float, float] = (1.0, 1.0)


def run(store: QuantizedStore, request: Request) -> list:
    """Per query of a checked request, its top-``k`` ``(record, score)``; in mode
    ``"branches"``, ``[dense hits, keyword hits]`` unfused (as a shard returns them)."""
    for _ in range(SEARCH_ATTEMPTS):
        done, hits = _attempt(store, request)
        if done:
            return hits
    with store._write_lock:  # writes keep racing this search: wait for them
        return _attempt(store, request)[1]


def _attempt(store: QuantizedStore, request: Request) -> tuple[bool, list]:
    """One attempt: ``(True, hits)`` if no write was published meanwhile."""
    store._check_open()
    with store._publish_lock:
        version, index = store._version, store._index
        snapshot = None if index is None else index.snapshot()
    if request.k == 0 or index is None or snapshot.n_alive == 0:
        empty = [[], []] if request.mode == "branches" else []
        return True, [list(empty) for _ in range(request.n_queries)]
    selection = store._cache.selection(request.where, request.ids, version, index)
    with store._db.reading() as query:
        branches = _branches(store, request, index, snapshot, selection, query, version)
        if request.mode == "hybrid":  # fused on keys: only the top k are read
            fusing = dict(weights=request.weights, fusion=request.fusion, rrf_k=request.rrf_k)
            ranked = [[fuse(both, **fusing)[: request.k]] for both in branches]
        else:
            ranked = branches
        keys = sorted({key for lists in ranked for hits in lists for key, _ in hits})
        rows = store._db.lookup("key", keys, "id, text, metadata, key", query)
    if store._version != version or len(rows) != len(keys):
        return False, []
    by_key = {r[3]: Record(r[0], r[1], json.loads(r[2]), r[3]) for r in rows}
    hits = [[[(by_key[key], float(score)) for key, score in h] for h in lists] for lists in ranked]
    return True, hits if request.mode == "branches" else [only for (only,) in hits]


def _branches(store, request: Request, index, snapshot, selection, query, version: int) -> list:
    """Per query, its branches' ``(key, score)`` best first: dense and/or keyword."""
    branches = []
    if request.mode != "keyword":
        n = request.k if request.mode == "dense" else request.dense_k
        dense = [[] for _ in range(request.n_queries)]
        if n:
            res = index.search(
                request.vectors, k=n, rescore_multiplier=request.mult, allowed_ids=selection, snapshot=snapshot
            )
            scores = np.clip(res.scores, -1.0, 1.0) if store.metric == "cosine" else res.scores
            dense = [list(zip(ids.tolist(), s.tolist())) for ids, s in zip(res.ids, scores)]
        branches.append(dense)
    if request.mode != "dense":
        n = request.k if request.mode == "keyword" else request.sparse_k
        allowed = None if selection is None else selection.ids
        branches.append([store._word_scores.top(query, text, n, version, allowed) for text in request.texts])
    return [list(per_query) for per_query in zip(*branches)]
