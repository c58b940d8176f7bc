"""What the frameworks need beyond vectors: string ids, texts, metadata and metadata filters,
in SQLite (stdlib ``sqlite3``), next to a :class:`~quant_retriever.index.QuantizedIndex`.

Each document has a string ``id`` (the frameworks') and an integer ``key`` (the index id).
Metadata is stored as JSON (see :func:`metadata_json` for what is accepted). Filters are the
tree of :mod:`quant_retriever.filters`; a filtered search evaluates the compiled predicate on
every record's metadata once to get the allowed keys (no SQL is ever built from a key or a
value), so filtering happens before top-k and a filtered search still returns ``k`` hits
when ``k`` documents match.

Persistent layout (``path``): ``store.sqlite`` (tables ``docs`` and ``meta``) and ``index/``
(the index directory). Writes are ordered so that a crash at any point leaves at worst rows
in one part that the other does not know; :meth:`QuantizedStore.open` reconciles them, so an
interrupted ``upsert``/``delete`` is either wholly there or wholly absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, get_args

import numpy as np
import torch

from quant_retriever.codecs import CodecName, RescoreDtype, split_norm
from quant_retriever.files import DirectoryLock, fsync_dir, write_directory
from quant_retriever.filters import And, Cond, Filter, Not, Operator, Or, compile_filter
from quant_retriever.index import QuantizedIndex, as_vectors, check_settings

__all__ = [
    "Record", "Cond", "And", "Or", "Not", "Filter", "Operator", "Metric", "QuantizedStore", "compile_filter",
    "metadata_json",
]

FORMAT = "quant_retriever.store"
VERSION = 1

Metric = Literal["ip", "cosine"]
METRICS: tuple[str, ...] = get_args(Metric)
MAX_METADATA_DEPTH = 100  # lists/dicts nested deeper raise ValueError (never RecursionError)
_LOOKUP_CHUNK = 500  # ids per "IN (?, ...)" lookup, below SQLite's bound-parameter limit


@dataclass(frozen=True)
class Record:
    """A stored document: framework ``id``, ``text``, ``metadata`` and the index ``key``."""

    id: str
    text: str
    metadata: dict
    key: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _check_unicode(s: str, what: str) -> None:
    """SQLite stores UTF-8: a str with a lone surrogate cannot be stored, so refuse it clearly."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode (a lone surrogate at position {exc.start}): {s[:40]!r}.") from None


def _strings(values, what: str) -> list[str]:
    """A list of strings from a sequence of them; a bare str/bytes is refused (it is not a
    list of ids: ``delete("abc")`` must not mean ``delete(["a", "b", "c"])``)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings; got the single {type(values).__name__} {values[:40]!r} "
                        f"(wrap one in a list: [{values[:40]!r}]).")
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{what} must be strings; item {i} is {type(v).__name__} {v!r:.60}.")
        _check_unicode(v, f"{what} item {i}")
    return values


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def metadata_json(metadata: Any, what: str = "metadata") -> str:
    """The JSON stored for one document's metadata (``None`` is ``{}``).

    The one rule: metadata is JSON data. A dict with ``str`` keys whose values are ``str``,
    ``int`` (64-bit), finite ``float``, ``bool``, ``None``, lists/tuples or such dicts, nested
    at most :data:`MAX_METADATA_DEPTH` deep. Subclasses of these are stored as the plain type
    (a tuple reads back as a list, an ``IntEnum`` as an int, ``numpy.float64`` as a float).
    Anything else (datetime, bytes, sets, numpy integers and arrays, non-``str`` keys such as
    ``{1: ..}``, which JSON would merge with ``{"1": ..}``) raises ``TypeError`` naming where it
    is; NaN, infinity and integers beyond 64 bits raise ``ValueError``. Nothing is converted
    silently and nothing is stored when any value is refused.
    """
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise TypeError(f"{what} must be a dict; got {type(metadata).__name__}.")
    stack = [(metadata, what, 1)]
    while stack:  # iterative, so no input reaches Python's recursion limit
        value, where, depth = stack.pop()
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            _check_unicode(value, where)
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"{where} is an integer beyond 64 bits: {value}.")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{where} is {value!r}; metadata numbers must be finite.")
        elif isinstance(value, (dict, list, tuple)):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"{what} is nested deeper than {MAX_METADATA_DEPTH} levels (or contains itself).")
            if isinstance(value, dict):
                for k, v in value.items():
                    if not isinstance(k, str):
                        raise TypeError(f"{where} has the key {k!r} of type {type(k).__name__}; metadata keys must be str.")
                    _check_unicode(k, f"{where} key")
                    stack.append((v, f"{where}[{k!r}]", depth + 1))
            else:
                stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        else:
            raise TypeError(
                f"{where} is a {_type_name(value)} ({value!r:.60}); metadata values must be "
                "JSON data: str, int, float, bool, None, lists or dicts with str keys (convert it first, e.g. "
                "str(x), x.isoformat(), x.tolist() or x.item())."
            )
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False)


class QuantizedStore:
    """Documents (id, text, metadata) in SQLite plus their vectors in a ``QuantizedIndex``.

    ``dim=None`` takes the dimension from the first ``upsert``. ``path=None`` keeps everything
    in memory (the INT8 copy in a temporary file); a ``path`` (directory) makes every
    ``upsert``/``delete`` that returned durable; reopen with :meth:`open`. Thread safety: calls
    are serialised by a lock (one writer; searches wait for a write in progress).

    ``metric="ip"`` scores by inner product of the vectors as given; ``metric="cosine"``
    L2-normalises every vector on ``upsert`` and every query on ``search`` (a zero vector
    stays zero and scores 0), and reports scores clamped to ``[-1, 1]``. The metric is
    recorded in the store and kept on reopening.
    """

    def __init__(
        self,
        dim: int | None = None,
        codec: CodecName = "int4",
        path: str | os.PathLike | None = None,
        *,
        rescore: bool | None = None,
        device: str | None = None,
        block_size: int = 64,
        rescore_dtype: RescoreDtype = "int8",
        metric: Metric = "ip",
    ):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}; got {metric!r}.")
        self.metric = metric
        self._settings = dict(codec=codec, rescore=rescore, device=device, block_size=block_size, rescore_dtype=rescore_dtype)
        check_settings(**self._settings)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ValueError(f"dim must be a positive int or None; got {dim!r}.")
        self._lock = threading.RLock()
        self.path = None if path is None else Path(path)
        if self.path is not None:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise ValueError(f"path {self.path} must be a new or empty directory; reopen a store with QuantizedStore.open.")
            self.path.mkdir(parents=True, exist_ok=True)
        self._dir_lock = DirectoryLock(self.path) if self.path is not None else None
        self._db = self._connect()
        self._index: QuantizedIndex | None = None
        with self._db:
            self._db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("format", FORMAT), ("version", str(VERSION)), ("settings", json.dumps({**self._settings, "device": None})),
                 ("metric", metric)],
            )
        if dim is not None:
            self._create_index(dim)

    # ------------------------------------------------------------------ opening
    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self.path is None else str(self.path / "store.sqlite")
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL" if self.path is not None else "PRAGMA journal_mode=MEMORY")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.isolation_level = "DEFERRED"
        return db

    def _create_index(self, dim: int) -> None:
        index_path = None if self.path is None else self.path / "index"
        self._index = QuantizedIndex(dim, path=index_path, **self._settings)
        self._set_meta("dim", str(dim))

    def _set_meta(self, name: str, value: str) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    @classmethod
    def open(cls, path: str | os.PathLike, device: str | None = None) -> "QuantizedStore":
        """Reopen a persistent store, reconciling a write a crash interrupted."""
        path = Path(path)
        db_file = path / "store.sqlite"
        if not db_file.is_file():
            raise ValueError(f"{path} is not a quant_retriever store (no store.sqlite).")
        store = cls.__new__(cls)
        store._lock = threading.RLock()
        store.path = path
        store._dir_lock = DirectoryLock(path)
        try:
            store._db = store._connect()
            meta = dict(store._db.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{db_file}: not a quant_retriever store ({exc}).") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{db_file}: not a quant_retriever store.")
        if int(meta.get("version", "0")) > VERSION:
            raise ValueError(f"{db_file}: written by a newer quant_retriever (format version {meta['version']}).")
        store._settings = {**json.loads(meta["settings"]), "device": device}
        store.metric = meta.get("metric", "ip")
        if store.metric not in METRICS:
            raise ValueError(f"{db_file}: field 'metric' must be one of {', '.join(map(repr, METRICS))}; found {store.metric!r:.80}.")
        store._index = None
        if "dim" in meta:
            if (path / "index" / "manifest.json").is_file():
                store._index = QuantizedIndex.load(path / "index", device=device)
            else:  # crashed between recording dim and creating the index
                store._create_index(int(meta["dim"]))
            store._reconcile()
        return store

    def _reconcile(self) -> None:
        """Drop index rows SQLite does not know and SQLite rows the index does not have."""
        in_index = set(self._index.ids().tolist())
        in_db = {k for (k,) in self._db.execute("SELECT key FROM docs")}
        orphans = sorted(in_index - in_db)
        if orphans:
            self._index.remove(orphans)
        missing = sorted(in_db - in_index)
        if missing:
            with self._db:
                self._db.executemany("DELETE FROM docs WHERE key = ?", [(k,) for k in missing])

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int | None:
        return None if self._index is None else self._index.dim

    @property
    def index(self) -> QuantizedIndex | None:
        """The underlying index (``None`` until the first vectors arrive)."""
        return self._index

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: Sequence[str], vectors, texts: Sequence[str], metadatas: Sequence[dict | None] | None = None) -> list[str]:
        """Add documents, replacing those whose ids already exist. Returns the ids.

        ``vectors``: ``[n, dim]`` floats; ``ids``/``texts``/``metadatas`` one per vector (ids
        and texts are any valid Unicode strings, NUL included; metadata follows
        :func:`metadata_json`). Nothing changes if the call raises.
        """
        ids, texts = _strings(ids, "ids"), _strings(texts, "texts")
        if metadatas is None:
            metadatas = [None] * len(ids)
        elif isinstance(metadatas, dict):
            raise TypeError("metadatas must be a list with one dict per document; got a single dict.")
        metadatas = list(metadatas)
        if not (len(ids) == len(texts) == len(metadatas)):
            raise ValueError(
                f"ids, texts and metadatas must have the same length. Got {len(ids)} ids, {len(texts)} texts "
                f"and {len(metadatas)} metadatas."
            )
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique within one call; got duplicates.")
        meta_json = [metadata_json(m, f"metadata of item {i}") for i, m in enumerate(metadatas)]
        if not ids:
            return []
        with self._lock:
            vectors = self._as_metric(as_vectors(vectors, self.dim, "vectors"))
            if len(vectors) != len(ids):
                raise ValueError(f"vectors must have one row per id. Got {len(vectors)} vectors and {len(ids)} ids.")
            if self._index is None:
                self._create_index(vectors.shape[1])
            old = self._keys_of(ids)
            keys = self._index.add(vectors)  # 1. new rows (orphans until the commit below)
            try:
                with self._db:  # 2. one transaction: the commit point
                    if old:
                        self._db.executemany("DELETE FROM docs WHERE key = ?", [(k,) for k in old.values()])
                    self._db.executemany(
                        "INSERT INTO docs (key, id, text, metadata) VALUES (?, ?, ?, ?)",
                        zip(keys.tolist(), ids, texts, meta_json),
                    )
            except BaseException:
                self._index.remove(keys)
                raise
            if old:  # 3. replaced rows leave the index (a crash before this is reconciled on open)
                self._index.remove(list(old.values()))
        return ids

    def _as_metric(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors as the metric scores them: unit length (zero stays zero) for cosine."""
        return split_norm(x)[0] if self.metric == "cosine" else x

    def _keys_of(self, ids: list[str]) -> dict[str, int]:
        return dict(self._lookup("id", ids, "id, key"))

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete documents by id; returns the ids that existed (unknown ids are ignored).
        ``ids`` is a list: a bare string is refused, never taken as a list of characters."""
        ids = _strings(ids, "ids")
        with self._lock:
            found = self._keys_of(ids)
            self._delete_keys(found)
            return [i for i in dict.fromkeys(ids) if i in found]

    def delete_where(self, where: Filter) -> int:
        """Delete every document matching a filter; returns how many."""
        match = compile_filter(where)
        with self._lock:
            found = {i: k for i, k, m in self._db.execute("SELECT id, key, metadata FROM docs") if match(json.loads(m))}
            self._delete_keys(found)
            return len(found)

    def _delete_keys(self, found: dict[str, int]) -> None:
        if not found:
            return
        with self._db:  # SQLite first: a crash after this leaves index rows that open() drops
            self._db.executemany("DELETE FROM docs WHERE key = ?", [(k,) for k in found.values()])
        self._index.remove(list(found.values()))

    def compact(self) -> None:
        """Reclaim the space of deleted and replaced documents now (it also happens on its own
        once they pass a quarter of the index; see :meth:`QuantizedIndex.compact`)."""
        with self._lock:
            if self._index is not None:
                self._index.compact()

    def clear(self) -> None:
        """Delete every document."""
        with self._lock:
            found = dict(self._db.execute("SELECT id, key FROM docs").fetchall())
            self._delete_keys(found)

    # ------------------------------------------------------------------ reads
    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked (a bare string is refused)."""
        ids = _strings(ids, "ids")
        with self._lock:
            rows = {r[0]: Record(r[0], r[1], json.loads(r[2]), r[3]) for r in self._lookup("id", ids, "id, text, metadata, key")}
            return [rows[i] for i in dict.fromkeys(ids) if i in rows]

    def records(self, where: Filter | None = None) -> Iterator[Record]:
        """All records (matching ``where``), in insertion order."""
        match = compile_filter(where) if where is not None else (lambda m: True)
        with self._lock:
            rows = self._db.execute("SELECT id, text, metadata, key FROM docs ORDER BY key").fetchall()
        records = (Record(r[0], r[1], json.loads(r[2]), r[3]) for r in rows)
        return iter([r for r in records if match(r.metadata)])

    def vectors(self, records: Sequence[Record]) -> np.ndarray:
        """Reconstructed vectors ``[n, dim]`` of records (from the INT8 copy when there is one)."""
        with self._lock:
            if not records:
                return np.zeros((0, self.dim or 0), dtype=np.float32)
            return self._index.get_vectors([r.key for r in records])

    def search(
        self,
        queries,
        k: int = 4,
        rescore_multiplier: int = 4,
        where: Filter | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[list[tuple[Record, float]]]:
        """Top-``k`` ``(record, score)`` per query, best first. Scores are inner products, or
        cosines in ``[-1, 1]`` with ``metric="cosine"``.

        ``where`` (a filter) and ``ids`` (allowed document ids) restrict the search before
        top-k; ``k=0`` and an empty store return empty lists.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int; got {type(k).__name__}.")
        if k < 0:
            raise ValueError(f"k must be >= 0; got {k}.")
        match = compile_filter(where) if where is not None else None
        ids = None if ids is None else _strings(ids, "ids")
        with self._lock:
            q = self._as_metric(as_vectors(queries, self.dim, "queries"))
            if k == 0 or self._index is None or len(self._index) == 0:
                return [[] for _ in range(len(q))]
            allowed = None
            if match is not None:
                allowed = {key for key, m in self._db.execute("SELECT key, metadata FROM docs") if match(json.loads(m))}
            if ids is not None:
                wanted = set(self._keys_of(ids).values())
                allowed = wanted if allowed is None else allowed & wanted
            res = self._index.search(
                q, k=int(k), rescore_multiplier=rescore_multiplier,
                allowed_ids=None if allowed is None else np.fromiter(allowed, np.int64, len(allowed)),
            )
            scores = np.clip(res.scores, -1.0, 1.0) if self.metric == "cosine" else res.scores
            by_key = {
                r[3]: Record(r[0], r[1], json.loads(r[2]), r[3])
                for r in self._lookup("key", np.unique(res.ids).tolist(), "id, text, metadata, key")
            }
            return [
                [(by_key[int(key)], float(score)) for key, score in zip(row_ids, row_scores)]
                for row_ids, row_scores in zip(res.ids, scores)
            ]

    def _lookup(self, column: Literal["id", "key"], values: list, columns: str) -> list[tuple]:
        """Rows (``columns``) whose ``column`` is one of ``values``: every value is bound as a
        parameter (so any string, NUL included, matches exactly), in chunks of any length."""
        rows: list[tuple] = []
        for start in range(0, len(values), _LOOKUP_CHUNK):
            part = values[start : start + _LOOKUP_CHUNK]
            marks = ", ".join("?" * len(part))
            rows += self._db.execute(f"SELECT {columns} FROM docs WHERE {column} IN ({marks})", part).fetchall()
        return rows

    def save(self, path: str | os.PathLike) -> None:
        """Write a compacted copy of this store to ``path`` (a new or empty directory), via a
        temporary sibling and a rename, so a failure leaves nothing behind."""
        def fill(tmp: Path) -> None:
            dst = sqlite3.connect(str(tmp / "store.sqlite"))
            try:
                self._db.backup(dst)
            finally:
                dst.close()
            if self._index is not None:
                self._index.save(tmp / "index")

        with self._lock:
            write_directory(path, fill)

    def save_replacing(self, path: str | os.PathLike) -> None:
        """:meth:`save` to ``path``, which may already hold a saved store: that one is replaced
        atomically. The copy is written to a hidden temporary sibling and swapped in with one
        rename exchange, so a crash at any moment leaves the old or the new store at ``path``,
        never a mix; temporaries an interrupted call left behind are removed. ``path`` holding
        anything but a store, or a store open for writing, is refused."""
        target = Path(path)
        recover_replacement(target)
        if not target.exists() or (target.is_dir() and not target.is_symlink() and not any(target.iterdir())):
            self.save(target)
            return
        if target.is_symlink() or not (target / "store.sqlite").is_file():
            raise ValueError(f"{target} exists and is not a quant_retriever store; refusing to replace it.")
        lock = DirectoryLock(target)  # raises while the store there is open for writing
        try:
            for leftover in _replacement_temporaries(target):
                shutil.rmtree(leftover)
            new = Path(tempfile.mkdtemp(prefix=f".{target.name}.qr-new-", dir=target.parent))
            try:
                self.save(new)
                _swap(new, target)  # the commit point; ``new`` now holds the old store
            finally:
                shutil.rmtree(new, ignore_errors=True)
        finally:
            lock.release()

    def verify(self) -> list[str]:
        """Cross-check SQLite, the index and its files; returns the problems, ``[]`` when consistent."""
        with self._lock:
            problems = [f"sqlite: {row[0]}" for row in self._db.execute("PRAGMA integrity_check") if row[0] != "ok"]
            keys = {k for (k,) in self._db.execute("SELECT key FROM docs")}
            if self._index is None:
                return problems + ([f"{len(keys)} records but no index"] if keys else [])
            problems += self._index.verify()
            in_index = set(self._index.ids().tolist())
            if keys != in_index:
                problems.append(
                    f"{len(keys - in_index)} records without vectors, {len(in_index - keys)} vectors without records"
                )
            return problems

    def close(self) -> None:
        """Close SQLite and the index and release the directory lock; the store must not be
        used afterwards. Everything written is already durable."""
        with self._lock:
            self._db.close()
            if self._index is not None:
                self._index.close()
            if self._dir_lock is not None:
                self._dir_lock.release()


def _replacement_temporaries(target: Path) -> list[Path]:
    """Hidden siblings :meth:`QuantizedStore.save_replacing` writes (and ``save``'s own
    temporaries inside them): ``.<name>.qr-new-*``, ``.<name>.qr-old-*``, ``..<name>.qr-*``."""
    prefixes = (f".{target.name}.qr-", f"..{target.name}.qr-")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes) and p.is_dir() and not p.is_symlink())


def recover_replacement(target: str | os.PathLike) -> None:
    """Finish what a crash interrupted inside :meth:`QuantizedStore.save_replacing` on a
    filesystem without rename exchange: with ``target`` missing, the old store (renamed aside
    just before the crash) is renamed back."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        return
    old = [p for p in _replacement_temporaries(target) if p.name.startswith(f".{target.name}.qr-old-")]
    if old:
        os.rename(old[-1], target)
        fsync_dir(target.parent)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; ``False`` where
    the platform or the filesystem cannot (then nothing was changed)."""
    import ctypes
    import errno

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap(new: Path, target: Path) -> None:
    """Put the directory ``new`` at ``target`` and the old ``target`` at ``new``: one atomic
    rename exchange where there is one; elsewhere two renames, with the old store aside as
    ``.<name>.qr-old-*`` in between (:func:`recover_replacement` renames it back)."""
    if not _rename_exchange(new, target):
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.qr-old-", dir=target.parent))
        os.rename(target, aside)  # replaces the empty ``aside``
        os.rename(new, target)
        os.rename(aside, new)
    fsync_dir(target.parent)
