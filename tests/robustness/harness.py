"""Helpers of the robustness tests: a directory tree's fingerprint, calls run in a child
process under a timeout (so a hang is a failure, never a stuck suite), and a child killed with
SIGKILL just before its N-th I/O event.

Children fork from a forkserver that imported the library once (a fresh, single-threaded
process), so a case costs a fork, not an interpreter start-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import signal
import sqlite3
import stat
import sys
import traceback
from pathlib import Path

_PRELOAD = ["quant_retriever.store", "quant_retriever.langchain", "quant_retriever.llama_index", "harness"]
_CONTEXT = None


def context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(_PRELOAD)
    return _CONTEXT


# ---------------------------------------------------------------------------- fingerprints
def tree(path: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every entry under ``path`` (links not followed): ``name -> (kind, mode, size, sha256 or
    link target)``. ``skip``: names left out (coordination files a reader may create)."""
    out = {}
    path = Path(path)
    if not os.path.lexists(path):
        return out
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            if name in skip or name.endswith(skip):
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                entry = ("link", 0, 0, os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                entry = ("file", stat.S_IMODE(st.st_mode), st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            elif stat.S_ISDIR(st.st_mode):
                entry = ("dir", stat.S_IMODE(st.st_mode), 0, "")
            else:
                entry = ("other", stat.S_IMODE(st.st_mode), 0, "")
            out[str(p.relative_to(path))] = entry
    return out


# ---------------------------------------------------------------------------- children
def _child(conn, fn, args):
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # reported to the parent: the test decides what was allowed
        conn.send(("raised", type(exc).__name__, str(exc)[:2000], traceback.format_exc()[-3000:]))
    finally:
        conn.close()


def in_child(fn, *args, timeout: float = 60.0):
    """``fn(*args)`` in a child process: ``("ok", value)``, ``("raised", type name, message,
    traceback)``, ``("hang",)`` after ``timeout`` seconds (the child is killed), or ``("died",
    exit code)``."""
    ctx = context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            proc.join()
            return ("hang",)
        try:
            result = parent.recv()
        except EOFError:
            result = None
        proc.join(timeout)
        if result is None:
            return ("died", proc.exitcode)
        return result
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
            proc.join()


# ---------------------------------------------------------------------------- kills at I/O events
_OS_CALLS = {
    getattr(os, name)
    for name in ("open", "write", "pwrite", "fsync", "ftruncate", "rename", "replace", "unlink", "remove", "rmdir")
    + ("mkdir",)
}
_SQL_CALLS = {"execute", "executemany", "executescript", "commit", "backup"}


def _is_io(fn) -> bool:
    if fn in _OS_CALLS or fn is sqlite3.connect:
        return True
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    return (name in _SQL_CALLS and isinstance(owner, sqlite3.Connection)) or (
        name in ("write", "flush") and isinstance(owner, io.IOBase)
    )


_KILL = {"at": 0, "seen": 0, "on": False}


@contextlib.contextmanager
def io_events():
    """The region of an operation whose I/O events :func:`kill_at` counts (and kills at):
    what comes before (building the source of a save, say) is set-up."""
    _KILL["on"] = True
    try:
        yield
    finally:
        _KILL["on"] = False


def _profile(frame, event, arg):
    if event == "c_call" and _KILL["on"] and _is_io(arg):
        _KILL["seen"] += 1
        if _KILL["seen"] == _KILL["at"]:
            os.kill(os.getpid(), signal.SIGKILL)


def _killed_at(n: int, fn, args):
    """Run ``fn(*args)``, SIGKILLed just before the ``n``-th I/O event inside its
    :func:`io_events` region (``n = 0``: never); returns the number of events it made there."""
    _KILL.update(at=n, seen=0, on=False)
    sys.setprofile(_profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return _KILL["seen"]


def count_io_events(fn, *args) -> int:
    """How many I/O events ``fn(*args)`` makes, run to the end in a child."""
    result = in_child(_killed_at, 0, fn, args)
    assert result[0] == "ok", result
    return result[1]


def kill_at(n: int, fn, *args) -> bool:
    """Run ``fn(*args)`` in a child SIGKILLed just before its ``n``-th I/O event; whether the
    kill landed (``False``: the call finished first)."""
    result = in_child(_killed_at, n, fn, args)
    if result[0] == "died":
        assert result[1] == -signal.SIGKILL, result
        return True
    assert result[0] == "ok", result
    return False


# ---------------------------------------------------------------------------- a store with a history
DIM = 8


def vectors(n: int, seed: int = 0):
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


QUERIES_SEED = 99


def build_store(path: Path, material: Path, codec: str = "int4", rescore_dtype: str = "int8") -> None:
    """A persistent store with a history: generation 0 (saved aside in ``material``: its index
    files, its manifest and its database), then deletions, a compaction (generation 1) and more
    writes, some deletions recorded in generation 1's file."""
    import shutil

    from quant_retriever.store import QuantizedStore

    material.mkdir(parents=True, exist_ok=True)
    store = QuantizedStore(DIM, codec=codec, path=path, block_size=8, rescore_dtype=rescore_dtype)
    store.upsert([f"d{i}" for i in range(20)], vectors(20), [f"t{i}" for i in range(20)], [{"i": i} for i in range(20)])
    store.delete(["d1", "d2"])
    store.close()
    for entry in (path / "index").iterdir():
        if entry.name != ".lock":
            shutil.copy(entry, material / entry.name)
    shutil.copy(path / "store.sqlite", material / "store.sqlite")
    store = QuantizedStore.open(path)
    store.compact()
    store.upsert(["d3", "n1"], vectors(2, 1), ["t3b", "n1"], [{"i": 3}, {"i": 100}])
    store.delete(["d4"])
    store.close()


def observe(path: Path, read_only: bool) -> tuple:
    """What a user sees of the store at ``path``: its records, the top hits of fixed queries,
    dense and keyword, and that every part agrees (``verify()``: the keyword index against the
    texts too)."""
    from quant_retriever.store import QuantizedStore

    store = QuantizedStore.open(path, read_only=read_only)
    try:
        records = sorted((r.id, r.text, r.key) for r in store.records())
        hits = [[r.id for r, _ in row] for row in store.search(vectors(3, QUERIES_SEED), k=4)] if records else []
        hits += [[(r.id, round(s, 9)) for r, s in row] for row in store.keyword_search(["t3b n1 t5 t0"], k=4)]
        return records, hits, store.verify()
    finally:
        store.close()


#: What an open may create beside a store's files: the readers' lock, SQLite's coordination files.
COORDINATION = (".readers", "store.sqlite-wal", "store.sqlite-shm")


#: SQLite's own coordination files: SQLite creates, resets and removes them as it opens and
#: closes a database (a closed connection removes an empty or checkpointed ``-wal``).
SQLITE_FILES = ("store.sqlite-wal", "store.sqlite-shm")


def assert_unchanged(path: Path, before: dict) -> None:
    """Every entry of ``before`` is still there, the same (kind, mode, size, bytes), but SQLite's
    coordination files when they were regular files; anything new is a coordination file an open
    may create."""
    after = tree(path)
    sqlite_own = {n for n in before if n.endswith(SQLITE_FILES) and before[n][0] == "file"}
    changed = {
        name: (before[name], after.get(name))
        for name in before
        if after.get(name) != before[name] and name not in sqlite_own
    }
    added = {name for name in after if name not in before and not name.endswith(COORDINATION)}
    assert not changed and not added, (changed, added)
