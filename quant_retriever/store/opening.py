"""Opening a persistent store: the directory's files checked and the database identified
before anything is written, then the index its recorded dimension refers to checked against
the records, and what a crash interrupted reconciled; and a read-only store's refresh."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quant_retriever.files import DirectoryLock, recover_replacement
from quant_retriever.index import MANIFEST as INDEX_MANIFEST
from quant_retriever.index import READ_RETRIES, QuantizedIndex
from quant_retriever.store.database import (
    DB_FILE,
    INDEX_DIR,
    NO_KEYWORDS,
    Database,
    add_keywords,
    check_files,
    identify,
    meta_value,
    schema_is_known,
)
from quant_retriever.store.keywords import DEFAULT_TOKENIZER

if TYPE_CHECKING:
    from quant_retriever.store.core import QuantizedStore

__all__ = ["open_store", "reconcile", "refresh"]

log = logging.getLogger("quant_retriever")


def open_store(cls: type[QuantizedStore], path: Path, device, read_only: bool) -> QuantizedStore:
    """A new ``cls`` open on the store directory ``path`` (see ``QuantizedStore.open``); SQLite
    errors past the identification are a damaged file (``ValueError``) or a lock held
    elsewhere (``RuntimeError``)."""
    try:
        return _open(cls, path, device, read_only)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise RuntimeError(f"{path / DB_FILE} is locked by another process ({exc}); try again.") from None
        raise ValueError(f"{path / DB_FILE}: cannot be read ({exc}).") from None
    except sqlite3.DatabaseError as exc:  # a damaged file SQLite found only past the schema check
        raise ValueError(f"{path / DB_FILE}: damaged ({exc}).") from None


def _open(cls: type[QuantizedStore], path: Path, device, read_only: bool) -> QuantizedStore:
    path = recover_replacement(path, writable=not read_only)
    check_files(path)
    meta = identify(path / DB_FILE)  # read-only: nothing is written to a file not yet known as ours
    store = cls.__new__(cls)
    store._setup(path, {**json.loads(meta["settings"]), "device": device}, meta["metric"], read_only)
    try:
        store._dir_lock = DirectoryLock(path, shared=read_only)
        store._db = Database(path, read_only)
        if not schema_is_known(store._db.connection):  # again, on the connection we keep
            raise ValueError(f"{path / DB_FILE}: the schema changed while it was being opened.")
        dim = store._db.query("SELECT value FROM meta WHERE name = 'dim'")  # again, under the lock
        if dim:
            _open_index(store, int(dim[0][0]), device)
        _open_keywords(store)
    except BaseException:
        store._release()
        raise
    return store


def _open_keywords(store: QuantizedStore) -> None:
    """The keyword index's tokenizer; a writable store written before keyword search existed
    gets its index here, built from its texts in one transaction (and says so)."""
    recorded = meta_value(store._db.connection, "keywords")
    if recorded is None and not store.read_only:
        with store._db.lock:
            count = add_keywords(store._db.connection, DEFAULT_TOKENIZER)
        log.warning(
            "quant_retriever: built the keyword index of %s (%d documents, tokenizer %r); it was written before "
            "keyword search existed.",
            store.path,
            count,
            DEFAULT_TOKENIZER,
        )
        recorded = DEFAULT_TOKENIZER
    store._keywords = None if recorded in (None, NO_KEYWORDS) else recorded


def _open_index(store: QuantizedStore, dim: int, device) -> None:
    """Open the index the recorded ``dim`` refers to, check it against the records, and
    reconcile what a crash interrupted. Nothing is written before every check passed."""
    index_path = store.path / INDEX_DIR
    if not os.path.lexists(index_path / INDEX_MANIFEST):  # it is created before dim is recorded: damaged
        keys = store._all_keys()
        if len(keys):
            raise ValueError(
                f"{store.path}: {len(keys)} records but no index ({INDEX_DIR}/{INDEX_MANIFEST} is missing); "
                "nothing was changed. Re-create the store from its documents."
            )
        if not store.read_only:  # no record refers to it: a new, empty index
            store._create_index(dim)
        return
    store._index = QuantizedIndex._opened(index_path, device, store.read_only)
    if (store._index.dim, store._index.codec_name) != (dim, store._settings["codec"]):
        raise ValueError(
            f"{index_path} holds {store._index.codec_name} vectors of dim {store._index.dim}, but the store "
            f"records {store._settings['codec']} of dim {dim}: it is another store's index."
        )
    reconcile(store)
    store._index.remove_garbage()


def reconcile(store: QuantizedStore) -> None:
    """After a crash: index rows SQLite does not know (an upsert whose transaction never
    committed, or deletions not yet recorded in the index) leave the index, in memory and then,
    best effort, on disk. Records without vectors, which no crash leaves (vectors are committed
    before their records, and leave the index after them), mean a damaged or foreign index: a
    writable open refuses it (``ValueError``) before changing anything.

    A read-only store: exactly the rows of its pinned SQLite state are alive (a writer elsewhere
    may have recorded later deletions in the index); the index is loaded again when a
    compaction raced the opening."""
    index, in_db = store._index, store._all_keys()
    if store.read_only:
        for _ in range(READ_RETRIES):
            if not len(index.restrict(in_db)) or not index.refresh():
                return
        return
    in_index = np.sort(index.ids())
    missing = np.setdiff1d(in_db, in_index, assume_unique=True)
    if len(missing):
        raise ValueError(
            f"{store.path}: {len(missing)} of its {len(in_db)} records have no vector in {INDEX_DIR}/ (keys "
            f"{missing[:5].tolist()}): the index is damaged, or is another store's. Nothing was changed; "
            "open it with read_only=True to search the others, or re-create the store from its documents."
        )
    orphans = np.setdiff1d(in_index, in_db, assume_unique=True)
    if len(orphans):
        index.stage(None).publish(orphans)
        index.record_deletions()


def refresh(store: QuantizedStore) -> bool:
    """Move a read-only store to the latest committed state (call with its locks held)."""
    before = len(store._all_keys())
    store._db.pin(store._db.connection)
    store._version += 1
    store._cache.forget_writes()  # another process's writes: cached key sets start over
    recorded = meta_value(store._db.connection, "keywords")  # (a writer may have built the index)
    store._keywords = None if recorded in (None, NO_KEYWORDS) else recorded
    changed = store._index is not None and store._index.refresh()
    if store._index is not None:
        reconcile(store)
    return bool(changed) or len(store._all_keys()) != before
