"""Creating a store, atomically as a whole: its index is created first, then its database,
which records the dimension, is built under another name and renamed into place (the commit
point). A store made without a dimension creates its index at the first upsert, then records
the dimension in a transaction (that upsert's commit point comes later). So a store killed
while being created is either no store (its directory holds only what
:func:`~quant_retriever.store.database.is_leftover` vouches for, which the next creation
clears) or a complete one."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import TYPE_CHECKING

from quant_retriever.files import fsync_dir, prepare_new_directory
from quant_retriever.index import QuantizedIndex, discard_empty_index
from quant_retriever.store.database import (
    CREATING,
    DB_FILE,
    FORMAT,
    INDEX_DIR,
    VERSION,
    Database,
    create_schema,
    is_leftover,
)

if TYPE_CHECKING:
    from quant_retriever.store.core import QuantizedStore

__all__ = ["create", "create_index"]


def create(store: QuantizedStore, dim: int | None) -> None:
    """Create ``store`` (set up, not yet created) in its new or empty directory, or in memory."""
    path, settings = store.path, store._settings
    if path is not None:
        store._dir_lock = prepare_new_directory(path, "store", "QuantizedStore.open", is_leftover)
    try:
        meta = [
            ("format", FORMAT),
            ("version", str(VERSION)),
            ("settings", json.dumps({**settings, "device": None})),
            ("metric", store.metric),
            *([] if dim is None else [("dim", str(dim))]),
        ]
        if dim is not None:  # the index first: the database refers to it once renamed into place
            store._index = QuantizedIndex(dim, path=None if path is None else path / INDEX_DIR, **settings)
        if path is not None:
            building = path / CREATING
            db = sqlite3.connect(str(building), isolation_level=None)
            try:
                db.execute("PRAGMA page_size=8192")  # (before WAL fixes it) fewer pages for the keyword index to write
                db.execute("PRAGMA journal_mode=WAL")
                create_schema(db, meta, store._keywords)
            finally:
                db.close()
            os.rename(building, path / DB_FILE)  # the commit point
            fsync_dir(path)
        store._db = Database(path, False)
        if path is None:
            create_schema(store._db.connection, meta, store._keywords)
    except BaseException:
        store._release()
        if path is not None and not os.path.lexists(path / DB_FILE):
            _remove_leftovers(store)
        raise


def _remove_leftovers(store: QuantizedStore) -> None:
    """After a creation that raised, best effort: what it wrote before its commit point (the
    next creation in this directory removes anything left)."""
    for entry in store.path.iterdir():
        try:
            if is_leftover(entry):
                discard_empty_index(entry) if entry.name == INDEX_DIR else entry.unlink()
        except (OSError, ValueError, RuntimeError):
            pass


def create_index(store: QuantizedStore, dim: int) -> None:
    """The index of a store made without a dimension, at its first upsert: created, then the
    dimension recorded. An index directory no recorded dimension refers to holds no data (a
    first upsert a crash interrupted): it is removed first."""
    index_path = None if store.path is None else store.path / INDEX_DIR
    if index_path is not None and os.path.lexists(index_path):
        discard_empty_index(index_path)
    index = QuantizedIndex(dim, path=index_path, **store._settings)
    try:
        with store._db.lock, store._db.connection:
            store._db.connection.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(dim),))
    except BaseException:
        index.close()
        if index_path is not None:
            try:
                discard_empty_index(index_path)
            except (OSError, ValueError, RuntimeError):
                pass  # removed by the next attempt
        raise
    store._index = index
