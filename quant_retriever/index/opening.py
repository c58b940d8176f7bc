"""Opening an index directory: recovering an interrupted replacement, identifying the
directory before anything is written to it, locking it, then loading and checking the
generation its manifest names; and a read-only index's move to a newer committed state."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from quant_retriever.devices import resolve_device
from quant_retriever.files import DirectoryLock, OpenObjects, recover_replacement
from quant_retriever.index.directory import MANIFEST, IndexFiles, codec_of, read_manifest

if TYPE_CHECKING:
    from quant_retriever.index.core import QuantizedIndex

__all__ = ["OPEN", "open_shared", "open_index", "reload", "READ_RETRIES"]

#: Persistent indexes open for writing in this process (opening one again shares it).
OPEN = OpenObjects()
#: A read-only opener that finds a generation's files gone (a writer compacted meanwhile)
#: reads the new manifest and tries again this many times.
READ_RETRIES = 5


def open_shared(cls: type[QuantizedIndex], path: Path, device, read_only: bool) -> QuantizedIndex:
    """The index open on ``path``: read-only, a new object; writable, the object this process
    already has open there (one more open of it), else a new one."""
    if read_only:
        return open_index(cls, path, device, True)
    with OPEN.lock():
        existing = OPEN.get(path)
        if existing is not None:
            if device is not None and resolve_device(device) != existing.device:
                raise ValueError(f"{path} is already open in this process on {existing.device}; got device={device!r}.")
            existing._opens += 1
            return existing
        index = open_index(cls, path, device, False)
        OPEN.put(path, index)
        return index


def open_index(cls: type[QuantizedIndex], path: Path, device, read_only: bool) -> QuantizedIndex:
    """A new ``cls`` object open on the index directory ``path`` (see ``QuantizedIndex.open``)."""
    path = recover_replacement(path, writable=not read_only)
    read_manifest(path)  # an index at all? (before a lock file is created in it)
    lock = DirectoryLock(path, shared=read_only)
    try:
        m = read_manifest(path)  # again, locked: a writer that just closed may have committed since
        files = IndexFiles(path, path, codec_of(m, path / MANIFEST), m["rescore"], m["rescore_dtype"])
        index = cls.__new__(cls)
        index._setup(files, resolve_device(device), read_only, lock)
    except BaseException:
        lock.release()
        raise
    try:
        _load(index, m)
    except BaseException:
        index.close()
        raise
    return index


def _load(index: QuantizedIndex, m: dict) -> None:
    """Load the generation ``m`` names into ``index``; a read-only opener that loses a race with
    a compacting writer (the files are gone) reads the new manifest and tries again."""
    for attempt in range(READ_RETRIES + 1):
        try:
            loaded = index._files.load(m, index.device, index._read_only)
            break
        except ValueError:
            if not index._read_only or attempt == READ_RETRIES:
                raise
            fresh = read_manifest(index.path)
            if fresh["generation"] == m["generation"]:
                raise
            m = fresh
    index._snap, index._next_id, index._restricted = loaded.snapshot, loaded.next_id, False


def reload(index: QuantizedIndex) -> bool:
    """Move a read-only ``index`` to the latest committed state; whether it changed."""
    m = read_manifest(index.path)
    files = index._files
    if (m["generation"], m["count"], m["n_deleted"]) == (files.generation, index._snap.rows, files.n_deleted):
        return False
    old = index._snap
    _load(index, m)
    if old.rescore is not None and old.rescore is not index._snap.rescore:
        old.rescore.close()
    return True
