"""``QuantizedStore.verify``: SQLite's own integrity check, the index's, and the records
against the index's vectors and the metadata fields table."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from quant_retriever.store.core import QuantizedStore

__all__ = ["problems"]


def problems(store: QuantizedStore) -> list[str]:
    """What disagrees in ``store`` (call with its write lock held); ``[]`` when consistent."""
    found = [f"sqlite: {row[0]}" for row in store._db.query("PRAGMA integrity_check") if row[0] != "ok"]
    keys = store._all_keys()
    if store.index is None:
        return found + ([f"{len(keys)} records but no index"] if len(keys) else [])
    found += store.index.verify()
    in_index = store.index.ids()
    if not np.array_equal(np.sort(in_index), keys):
        missing, orphans = np.setdiff1d(keys, in_index), np.setdiff1d(in_index, keys)
        found.append(f"{len(missing)} records without vectors, {len(orphans)} vectors without records")
    if store._keywords:
        found += _keyword_problems(store, len(keys))
    sql = "SELECT COUNT(DISTINCT key) FROM fields WHERE key NOT IN (SELECT key FROM docs)"
    if fields := store._db.query(sql)[0][0]:
        found.append(f"{fields} documents' metadata fields are left in the fields table")
    return found


def _keyword_problems(store: QuantizedStore, documents: int) -> list[str]:
    """FTS5's own check of the keyword index and of it against the texts (``rank`` 1: the
    external content too; a write statement, so a writable store only), or, read-only, the count
    of documents it indexes."""
    if store.read_only:
        indexed = store._db.query("SELECT COUNT(*) FROM keywords_docsize")[0][0]
        return [] if indexed == documents else [f"keyword index: {indexed} documents indexed, {documents} stored"]
    try:
        store._db.query("INSERT INTO keywords(keywords, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        return [f"keyword index: it disagrees with the texts or is damaged ({exc})"]
    return []
