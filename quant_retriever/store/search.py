"""A store's search: optimistic, so readers never lock out writers. Each attempt reads an
immutable index snapshot and the store version, searches it (the filter's key set from the
cache), reads its hits' records through a pooled connection, and checks at the end that no
write was published meanwhile; if one was, it runs again, and after ``SEARCH_ATTEMPTS`` races
it waits for the writes. So a search sees a write wholly or not at all, and never returns an
id after its ``delete`` returned."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch

from quant_retriever.store.documents import Record

if TYPE_CHECKING:
    from quant_retriever.store.core import QuantizedStore

__all__ = ["optimistic_search", "SEARCH_ATTEMPTS"]

#: Attempts of a search racing writes before it waits for them.
SEARCH_ATTEMPTS = 3


def optimistic_search(store: QuantizedStore, q: torch.Tensor, k: int, mult: int, where, ids) -> list:
    """Top-``k`` ``(record, score)`` per query of the checked queries ``q``."""
    for _ in range(SEARCH_ATTEMPTS):
        done, hits = _attempt(store, q, k, mult, where, ids)
        if done:
            return hits
    with store._write_lock:  # writes keep racing this search: wait for them
        return _attempt(store, q, k, mult, where, ids)[1]


def _attempt(store: QuantizedStore, q: torch.Tensor, k: int, mult: int, where, ids) -> tuple[bool, list]:
    """One attempt: ``(True, hits)`` if no write was published meanwhile."""
    store._check_open()
    with store._publish_lock:
        version, index = store._version, store._index
        snapshot = None if index is None else index.snapshot()
    if k == 0 or index is None or snapshot.n_alive == 0:
        return True, [[] for _ in range(len(q))]
    selection = store._cache.selection(where, ids, version, index)
    res = index.search(q, k=k, rescore_multiplier=mult, allowed_ids=selection, snapshot=snapshot)
    scores = np.clip(res.scores, -1.0, 1.0) if store.metric == "cosine" else res.scores
    hits = np.unique(res.ids).tolist()
    with store._db.reading() as query:
        rows = store._db.lookup("key", hits, "id, text, metadata, key", query)
    if store._version != version or len(rows) != len(hits):
        return False, []
    by_key = {r[3]: Record(r[0], r[1], json.loads(r[2]), r[3]) for r in rows}
    return True, [
        [(by_key[int(key)], float(score)) for key, score in zip(row_ids, row_scores)]
        for row_ids, row_scores in zip(res.ids, scores)
    ]
