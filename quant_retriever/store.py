"""What the frameworks need beyond vectors: string ids, texts, metadata and metadata filters,
in SQLite (stdlib ``sqlite3``), next to a :class:`~quant_retriever.index.QuantizedIndex`.

Each document has a string ``id`` (the frameworks') and an integer ``key`` (the index id).
Metadata is stored as JSON (see :func:`metadata_json` for what is accepted), and its
top-level fields once more in the indexed ``fields`` table, so a filter becomes the set of
matching keys by indexed lookups (:func:`quant_retriever.filters.matching_keys`); that set
restricts the search before top-k, so a filtered search still returns ``k`` hits when ``k``
documents match. The last few filters' key sets are cached; a write brings them up to date by
testing only the documents it wrote (their SQL restricted to those keys).

Persistent layout (``path``): ``store.sqlite`` (tables ``docs``, ``fields`` and ``meta``; the
schema is checked object by object before anything else runs, so a file carrying triggers or
views is refused) and ``index/`` (the index directory).

The commit point of every write is one SQLite transaction, and it is the last step that can
fail: new vectors are committed to the index first (rows SQLite does not know yet), then the
transaction commits, then the replaced or deleted rows leave the index in memory, and are
recorded on disk on a best-effort basis. A call that raises has changed nothing, in the open
object or after reopening; a crash at any point leaves the old or the new state, because
opening drops index rows SQLite does not know (in memory; opening writes nothing to SQLite).

Readers take no lock for the scan: a search reads an immutable index snapshot and checks at the
end that no write was published meanwhile (else it runs again), so searches run in parallel
with each other and with a write, and see a write wholly or not at all.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from quant_retriever.codecs import CodecName, RescoreDtype, split_norm
from quant_retriever.files import (
    DirectoryLock,
    OpenObjects,
    file_kind,
    fsync_dir,
    prepare_new_directory,
    real_directory,
    recover_replacement,
    replace_directory,
    replacement_of,
    write_directory,
)
from quant_retriever.filters import (
    FIELDS_SCHEMA,
    And,
    Cond,
    Filter,
    Not,
    Operator,
    Or,
    check_filter,
    field_rows,
    matching_keys,
)
from quant_retriever.index import MANIFEST as INDEX_MANIFEST
from quant_retriever.index import (
    READ_RETRIES,
    QuantizedIndex,
    as_vectors,
    check_settings,
    discard_empty_index,
    empty_index_problem,
)

__all__ = [
    "Record",
    "Cond",
    "And",
    "Or",
    "Not",
    "Filter",
    "Operator",
    "Metric",
    "QuantizedStore",
    "metadata_json",
    "check_documents",
    "check_rescore_multiplier",
    "check_strings",
    "empty_store_problem",
]

FORMAT = "quant_retriever.store"
VERSION = 2
DB_FILE = "store.sqlite"
CREATING = DB_FILE + ".creating"
INDEX_DIR = "index"
#: Filters whose key sets a store remembers; a write updates them from its own documents.
FILTER_CACHE = 16
#: Writes remembered for that (their dead and added keys); a key set older than them, or
#: behind writes that touched more than CATCH_UP_MAX documents, is evaluated again in full.
WRITES_KEPT = 64
CATCH_UP_MAX = 10_000
#: SQLite with ``json_each`` built in, which the catch-up's restricted statements use.
_JSON_EACH = sqlite3.sqlite_version_info >= (3, 38, 0)
#: Attempts of a search racing writes before it waits for them (see the module docstring).
SEARCH_ATTEMPTS = 3

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


_SCHEMA = (
    """
CREATE TABLE docs (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + FIELDS_SCHEMA
)


def _schema_objects(db: sqlite3.Connection) -> list[tuple]:
    return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def _expected_schema(schema: str = _SCHEMA) -> list[tuple]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(schema)
        return _schema_objects(db)
    finally:
        db.close()


_EXPECTED_SCHEMA = _expected_schema()
#: Schemas this version opens: its own, and that of the first format-2 stores, whose value index
#: lacked the key (filters read every key from the table instead of the index: slower, same keys).
_KNOWN_SCHEMAS = (
    _EXPECTED_SCHEMA,
    _expected_schema(_SCHEMA.replace("(name, elem, kind, val, key)", "(name, elem, kind, val)")),
)


def _create_schema(db: sqlite3.Connection, meta: list[tuple[str, str]]) -> None:
    """The tables and the settings, in one transaction (DDL included)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany("INSERT INTO meta VALUES (?, ?)", meta)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


_SETTINGS_KEYS = {"codec", "rescore", "device", "block_size", "rescore_dtype"}
#: Persistent stores open for writing in this process (opening one again shares it).
_OPEN = OpenObjects()


def _is_leftover(entry: Path) -> bool:
    """What an interrupted creation can leave in a store directory (whose database, the commit
    point of the creation, is missing): the database being built (``store.sqlite.creating`` and
    its journals, regular files) and the index created before it, holding no data."""
    if entry.name.startswith(CREATING):
        return file_kind(entry) == "a regular file"
    return entry.name == INDEX_DIR and empty_index_problem(entry) is None


def empty_store_problem(path: Path) -> str | None:
    """Why ``path`` is not a store directory that provably holds no document (``None`` when it
    is one): only a store's files, as regular files, its index an empty one (see
    :func:`~quant_retriever.index.empty_index_problem`), and its database, if any, this format's
    with no document. The shards of a sharded store whose creation was interrupted are such."""
    if file_kind(path) != "a directory":
        return f"{path} is {file_kind(path) or 'missing'}, not a store directory"
    for entry in path.iterdir():
        if entry.name == INDEX_DIR:
            problem = empty_index_problem(entry)
            if problem is not None:
                return problem
        elif not (entry.name in (".lock", ".readers") or entry.name.startswith(DB_FILE)):
            return f"{path} holds {entry.name!r}, which is not part of an empty store"
        elif file_kind(entry) != "a regular file":
            return f"{entry} is {file_kind(entry)}"
    if file_kind(path / DB_FILE) != "a regular file":
        return None  # its database was never put in place
    try:
        db = _connect_read_only(path / DB_FILE)
        try:
            if _schema_objects(db) not in _KNOWN_SCHEMAS:
                return f"{path / DB_FILE} is not a store's database"
            count = db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        finally:
            db.close()
    except (ValueError, sqlite3.Error) as exc:
        return str(exc)
    return f"{path / DB_FILE} holds {count} documents" if count else None


def _connect_read_only(db_file: Path) -> sqlite3.Connection:
    """A connection that never writes to ``db_file``: ``mode=ro`` (which reads the write-ahead
    log through the ``-shm`` index, read-only if need be), or, where SQLite cannot open that
    way without creating files (another user's store, a read-only mount) and no write-ahead log
    holds commits, ``immutable=1``, which is then exact. ``ValueError`` if neither can read it."""
    uri = db_file.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return db
        except sqlite3.Error:
            db.close()
            raise
    except sqlite3.OperationalError:
        wal = db_file.with_name(db_file.name + "-wal")
        if os.path.lexists(wal) and wal.lstat().st_size:
            raise ValueError(
                f"{db_file}: its write-ahead log ({wal.name}) holds commits that a reader without write access cannot "
                "apply; open the store once with write access (or copy it where you can write) first."
            ) from None
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{db_file}: not a quant_retriever store ({exc}).") from None
    try:
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise ValueError(f"{db_file}: cannot be opened ({exc}).") from None


def _check_files(path: Path) -> None:
    """Before SQLite touches anything: the database is a regular file and its journals, where
    present, too (SQLite itself would follow a link or block on a FIFO), and ``index`` is a
    directory, not a link to one. ``ValueError`` naming the first that is not."""
    kind = file_kind(path / DB_FILE)
    if kind != "a regular file":
        raise ValueError(f"{path} is not a quant_retriever store ({DB_FILE} is {kind or 'missing'}).")
    for suffix in ("-wal", "-shm", "-journal"):
        kind = file_kind(path / (DB_FILE + suffix))
        if kind not in (None, "a regular file"):
            raise ValueError(f"{path / (DB_FILE + suffix)} is {kind}, where SQLite expects a regular file.")
    if os.path.lexists(path / INDEX_DIR):
        real_directory(path / INDEX_DIR, "index directory")


def check_documents(ids, texts, metadatas) -> tuple[list[str], list[str], list[str]]:
    """``(ids, texts, metadata JSON)`` of documents about to be upserted: every check an upsert
    makes before it writes (lengths, unique ids, strings, :func:`metadata_json`), so callers
    that split a batch (the sharded store) refuse it whole, before any part is written."""
    ids, texts = check_strings(ids, "ids"), check_strings(texts, "texts")
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
    return ids, texts, [metadata_json(m, f"metadata of item {i}") for i, m in enumerate(metadatas)]


def check_rescore_multiplier(value: object) -> int:
    """``value`` as a rescore multiplier (an int >= 1); ``TypeError``/``ValueError`` otherwise.
    The one check, shared with the framework adapters that keep a default multiplier."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"rescore_multiplier must be an int; got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"rescore_multiplier must be >= 1; got {value}.")
    return int(value)


def check_metric(metric: object) -> None:
    """``ValueError`` unless ``metric`` is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}; got {metric!r}.")


def _check_unicode(s: str, what: str) -> None:
    """SQLite stores UTF-8: a str with a lone surrogate cannot be stored, so refuse it clearly."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode (a lone surrogate at position {exc.start}): {s[:40]!r}."
        ) from None


def check_strings(values, what: str) -> list[str]:
    """A list of strings from a sequence of them; a bare str/bytes is refused (it is not a
    list of ids: ``delete("abc")`` must not mean ``delete(["a", "b", "c"])``)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"{what} must be a list of strings; got the single {type(values).__name__} {values[:40]!r} "
            f"(wrap one in a list: [{values[:40]!r}])."
        )
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
                        raise TypeError(
                            f"{where} has the key {k!r} of type {type(k).__name__}; metadata keys must be str."
                        )
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


def _sorted_member(x: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``x``'s entries that are in ``sorted_keys`` (sorted), as a bool mask: one binary search
    each, so a short ``sorted_keys`` costs next to nothing against a long ``x``."""
    if not len(sorted_keys) or not len(x):
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, x), len(sorted_keys) - 1)
    return sorted_keys[pos] == x


class QuantizedStore:
    """Documents (id, text, metadata) in SQLite plus their vectors in a ``QuantizedIndex``.

    ``dim=None`` takes the dimension from the first ``upsert``. ``path=None`` keeps everything
    in memory (the rescore copy in a temporary file); a ``path`` (a new or empty directory)
    makes every ``upsert``/``delete`` that returned durable; reopen with :meth:`open`.

    ``metric="ip"`` scores by inner product of the vectors as given; ``metric="cosine"``
    L2-normalises every vector on ``upsert`` and every query on ``search`` (a zero vector
    stays zero and scores 0), and reports scores clamped to ``[-1, 1]``. The metric is
    recorded in the store and kept on reopening.

    Threads: writes are serialised; searches run in parallel with each other and with a write
    (see the module docstring).
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
        check_metric(metric)
        settings = dict(codec=codec, rescore=rescore, device=device, block_size=block_size, rescore_dtype=rescore_dtype)
        check_settings(**settings)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ValueError(f"dim must be a positive int or None; got {dim!r}.")
        self._setup(None if path is None else Path(path), settings, metric, read_only=False)
        if self.path is not None:
            self._dir_lock = prepare_new_directory(self.path, "store", "QuantizedStore.open", _is_leftover)
        try:
            meta = [
                ("format", FORMAT),
                ("version", str(VERSION)),
                ("settings", json.dumps({**settings, "device": None})),
                ("metric", metric),
                *([] if dim is None else [("dim", str(dim))]),
            ]
            if dim is not None:  # the index first: the database refers to it once renamed into place
                self._index = QuantizedIndex(dim, path=self._index_path(), **settings)
            if self.path is None:
                self._db = self._connect()
                _create_schema(self._db, meta)
            else:  # built under another name, renamed into place once complete: the commit point
                building = self.path / CREATING
                db = sqlite3.connect(str(building), isolation_level=None)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    _create_schema(db, meta)
                finally:
                    db.close()
                os.rename(building, self.path / DB_FILE)
                fsync_dir(self.path)
                self._db = self._connect()
        except BaseException:
            self._release()
            if self.path is not None and not os.path.lexists(self.path / DB_FILE):
                self._remove_leftovers()
            raise
        if self.path is not None:
            with _OPEN.lock():
                _OPEN.put(self.path, self)

    def _setup(self, path: Path | None, settings: dict, metric: str, read_only: bool) -> None:
        self.path = path
        self.metric = metric
        self._settings = settings
        self._read_only = read_only
        self._closed = False
        self._opens = 1
        self._write_lock = threading.RLock()  # one writer at a time
        self._db_lock = threading.RLock()  # the SQLite connection, for short statements
        self._readers: list[sqlite3.Connection] = []  # idle connections for searches' record reads
        self._readers_lock = threading.Lock()
        self._memory_uri = f"file:quant_retriever-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._publish_lock = threading.Lock()  # a commit and its index snapshot, as one step
        self._version = 0  # published writes
        self._filters: OrderedDict = OrderedDict()  # (filter, ids) -> (version, Selection)
        self._writes: deque = deque(maxlen=WRITES_KEPT)  # (version, dead keys, added keys)
        self._universe: tuple[int, np.ndarray] | None = None  # (version, every key)
        self._dir_lock: DirectoryLock | None = None
        self._index: QuantizedIndex | None = None
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ opening
    def _connect(self) -> sqlite3.Connection:
        """The SQLite connection: without a path, an in-memory database under a random name
        (shared cache, which searches read through their own connections); read-only URI
        opening for a read-only store (immutable when SQLite cannot otherwise read without
        writing)."""
        if self.path is None:
            db = sqlite3.connect(self._memory_uri, uri=True, check_same_thread=False, isolation_level=None)
        elif self._read_only:
            db = _connect_read_only(self.path / DB_FILE)
            self._pin(db)
        else:
            db = sqlite3.connect(str(self.path / DB_FILE), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA trusted_schema=OFF")
        if self.path is not None and not self._read_only:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        return db  # autocommit: writes run in explicit transactions (see _commit)

    @staticmethod
    def _pin(db: sqlite3.Connection) -> None:
        """Start a read transaction: a read-only store sees this committed state until refresh."""
        if db.in_transaction:
            db.execute("COMMIT")
        db.execute("BEGIN")
        db.execute("SELECT COUNT(*) FROM meta").fetchone()

    def _index_path(self) -> Path | None:
        return None if self.path is None else self.path / INDEX_DIR

    def _remove_leftovers(self) -> None:
        """After a creation that raised, best effort: what it wrote before its commit point (the
        next creation in this directory removes anything left)."""
        for entry in self.path.iterdir():
            try:
                if _is_leftover(entry):
                    discard_empty_index(entry) if entry.name == INDEX_DIR else entry.unlink()
            except (OSError, ValueError, RuntimeError):
                pass

    def _create_index(self, dim: int) -> None:
        """The index of a store made without a dimension, at its first upsert: created, then
        the dimension recorded (the commit point). An index directory no recorded dimension
        refers to holds no data (a first upsert a crash interrupted): it is removed first."""
        index_path = self._index_path()
        if index_path is not None and os.path.lexists(index_path):
            discard_empty_index(index_path)
        index = QuantizedIndex(dim, path=index_path, **self._settings)
        try:
            with self._db_lock, self._db:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(dim),))
        except BaseException:
            index.close()
            if index_path is not None:
                try:
                    discard_empty_index(index_path)
                except (OSError, ValueError, RuntimeError):
                    pass  # removed by the next attempt
            raise
        self._index = index

    def get_info(self, name: str) -> Any:
        """The JSON value stored under ``name`` by :meth:`set_info`, or ``None``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str; got {name!r}.")
        rows = self._query("SELECT value FROM meta WHERE name = ?", (f"info:{name}",))
        return json.loads(rows[0][0]) if rows else None

    def set_info(self, name: str, value: Any) -> None:
        """Record a small JSON value (e.g. the embedding model) in the store's own metadata:
        durable when the store has a path, kept by :meth:`save`."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str; got {name!r}.")
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"info {name!r} must be JSON-serializable: {exc}.") from None
        with self._write_lock, self._db_lock:
            self._check_writable()
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"info:{name}", text))

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a store (to reopen rather than create), counting one that an
        interrupted :meth:`save_replacing` left aside (opening it puts it back)."""
        path = replacement_of(Path(path)) or Path(path)
        return file_kind(path / DB_FILE) == "a regular file"

    @classmethod
    def open(cls, path: str | os.PathLike, device: str | None = None, *, read_only: bool = False) -> QuantizedStore:
        """Reopen a persistent store, reconciling a write a crash interrupted (in memory:
        opening writes nothing to SQLite and needs no free space).

        The file is identified as a store before anything is written to it: its schema must be
        exactly this version's (another application's database, or one carrying triggers or
        views, raises ``ValueError`` and is left untouched). Opening a directory this process
        already has open for writing returns that same store (each ``open`` needs its own
        :meth:`close`); another process gets ``RuntimeError`` until it is closed.

        ``read_only=True`` needs no write permission and writes nothing; any number of
        read-only openers may sit beside one writer. It sees the state committed when it was
        opened, until :meth:`refresh`.
        """
        path = Path(path)
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be True or False; got {read_only!r}.")
        if read_only:
            return cls._open(path, device, read_only=True)
        with _OPEN.lock():
            existing = _OPEN.get(path)
            if existing is not None:
                existing._opens += 1
                return existing
            store = cls._open(path, device, read_only=False)
            _OPEN.put(path, store)
            return store

    @classmethod
    def _open(cls, path: Path, device, read_only: bool) -> QuantizedStore:
        try:
            return cls._open_checked(path, device, read_only)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise RuntimeError(f"{path / DB_FILE} is locked by another process ({exc}); try again.") from None
            raise ValueError(f"{path / DB_FILE}: cannot be read ({exc}).") from None
        except sqlite3.DatabaseError as exc:  # a damaged file SQLite found only past the schema check
            raise ValueError(f"{path / DB_FILE}: damaged ({exc}).") from None

    @classmethod
    def _open_checked(cls, path: Path, device, read_only: bool) -> QuantizedStore:
        path = recover_replacement(path, writable=not read_only)
        _check_files(path)
        meta = cls._identify(path / DB_FILE)  # read-only: nothing is written to a file not yet known as ours
        store = cls.__new__(cls)
        settings = json.loads(meta["settings"])
        store._setup(path, {**settings, "device": device}, meta["metric"], read_only)
        try:
            store._dir_lock = DirectoryLock(path, shared=read_only)
            store._db = store._connect()
            if _schema_objects(store._db) not in _KNOWN_SCHEMAS:  # again, on the connection we keep
                raise ValueError(f"{path / DB_FILE}: the schema changed while it was being opened.")
            dim = store._query("SELECT value FROM meta WHERE name = 'dim'")  # again, under the lock
            if dim:
                store._open_index(int(dim[0][0]), device)
        except BaseException:
            store._release()
            raise
        return store

    def _open_index(self, dim: int, device) -> None:
        """Open the index the recorded ``dim`` refers to, check it against the records, and
        reconcile what a crash interrupted. Nothing is written before every check passed."""
        index_path = self._index_path()
        if not os.path.lexists(index_path / INDEX_MANIFEST):  # created before dim was recorded: damaged
            keys = self._all_keys()
            if len(keys):
                raise ValueError(
                    f"{self.path}: {len(keys)} records but no index ({INDEX_DIR}/{INDEX_MANIFEST} is missing); "
                    "nothing was changed. Re-create the store from its documents."
                )
            if not self._read_only:  # no record refers to it: a new, empty index
                self._create_index(dim)
            return
        self._index = QuantizedIndex._opened(index_path, device, self._read_only)
        if (self._index.dim, self._index.codec_name) != (dim, self._settings["codec"]):
            raise ValueError(
                f"{index_path} holds {self._index.codec_name} vectors of dim {self._index.dim}, but the store "
                f"records {self._settings['codec']} of dim {dim}: it is another store's index."
            )
        self._reconcile()
        self._index._remove_garbage()

    @staticmethod
    def _identify(db_file: Path) -> dict:
        """The ``meta`` of a store file, read through a read-only connection after checking
        that its schema is exactly ours; ``ValueError`` naming the file otherwise."""
        db = _connect_read_only(db_file)
        try:
            db.execute("PRAGMA trusted_schema=OFF")
            found = _schema_objects(db)
            if found not in _KNOWN_SCHEMAS:
                extra = sorted({(t, n) for t, n, _, _ in found} - {(t, n) for t, n, _, _ in _EXPECTED_SCHEMA})
                raise ValueError(
                    f"{db_file}: not a quant_retriever store of this version (its schema differs"
                    f"{': unexpected ' + ', '.join(f'{t} {n!r}' for t, n in extra[:5]) if extra else ''}); "
                    "nothing was changed."
                )
            damage = [row[0] for row in db.execute("PRAGMA quick_check(5)").fetchall() if row[0] != "ok"]
            if damage:  # every page and b-tree, before anything relies on them (a truncated copy, a torn disk)
                raise ValueError(
                    f"{db_file}: the database is damaged ({'; '.join(damage)[:300]}); nothing was changed."
                )
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{db_file}: not a quant_retriever store ({exc}).") from None
        finally:
            db.close()
        if meta.get("format") != FORMAT:
            raise ValueError(f"{db_file}: not a quant_retriever store.")
        version = meta.get("version", "")
        if not version.isdigit() or int(version) != VERSION:
            newer = version.isdigit() and int(version) > VERSION
            raise ValueError(
                f"{db_file}: format version {version!r} is "
                + (
                    "written by a newer quant_retriever."
                    if newer
                    else "no longer read; re-create the store from your documents."
                )
            )
        try:
            settings = json.loads(meta.get("settings", ""))
            ok = isinstance(settings, dict) and set(settings) == _SETTINGS_KEYS
            ok = ok and meta.get("metric") in METRICS and (meta.get("dim") is None or meta["dim"].isdigit())
            if ok:
                check_settings(**{**settings, "device": None})
        except (ValueError, TypeError, RecursionError):
            ok = False
        if not ok:
            raise ValueError(f"{db_file}: the store's settings are malformed.")
        return meta

    def _reconcile(self) -> None:
        """After a crash: index rows SQLite does not know (an upsert whose transaction never
        committed, or deletions not yet recorded in the index) leave the index, in memory and
        then, best effort, on disk. Records without vectors, which no crash leaves (vectors are
        committed before their records, and leave the index after them), mean a damaged or
        foreign index: a writable open refuses it (``ValueError``) before changing anything.

        A read-only store: exactly the rows of its pinned SQLite state are alive (a writer
        elsewhere may have recorded later deletions in the index); the index is loaded again
        when a compaction raced the opening."""
        in_db = self._all_keys()
        if self._read_only:
            for _ in range(READ_RETRIES):
                if not len(self._index._restrict(in_db)) or not self._index.refresh():
                    return
            return
        in_index = np.sort(self._index.ids())
        missing = np.setdiff1d(in_db, in_index, assume_unique=True)
        if len(missing):  # no crash leaves these: vectors are committed before their records
            raise ValueError(
                f"{self.path}: {len(missing)} of its {len(in_db)} records have no vector in {INDEX_DIR}/ (keys "
                f"{missing[:5].tolist()}): the index is damaged, or is another store's. Nothing was changed; "
                "open it with read_only=True to search the others, or re-create the store from its documents."
            )
        orphans = np.setdiff1d(in_index, in_db, assume_unique=True)
        if len(orphans):
            self._index._publish(None, orphans)
            self._index._persist_pending()

    def refresh(self) -> bool:
        """A read-only store: move to the latest committed state (returns whether it changed).
        A writable store always is at its latest state (returns False)."""
        if not self._read_only:
            return False
        with self._write_lock, self._db_lock:
            self._check_open()
            with self._publish_lock:
                before = len(self._all_keys())
                self._pin(self._db)
                self._version += 1
                self._writes.clear()  # another process's writes: cached key sets start over
                changed = self._index is not None and self._index.refresh()
                if self._index is not None:
                    self._reconcile()
                return bool(changed) or len(self._all_keys()) != before

    def _release(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()
        if self._db is not None:
            self._db.close()
        if self._index is not None:
            self._index.close()
        if self._dir_lock is not None:
            self._dir_lock.release()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int | None:
        return None if self._index is None else self._index.dim

    @property
    def index(self) -> QuantizedIndex | None:
        """The underlying index (``None`` until the first vectors arrive)."""
        return self._index

    @property
    def read_only(self) -> bool:
        return self._read_only

    def __len__(self) -> int:
        return len(self._all_keys())

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this store was closed; open it again with QuantizedStore.open.")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ValueError(f"{self.path} was opened read-only; open it without read_only=True to change it.")

    def _query(self, sql: str, params=()) -> list:
        with self._db_lock:
            self._check_open()
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _reading(self) -> Iterator[Callable[[str, Any], list]]:
        """A query function for a search to read the records of its hits without the
        connection lock, so parallel searches and a write's transaction never wait on each
        other: a connection of its own from a pool. It reads the committed state of a file, or
        an in-memory store's shared cache without table locks, uncommitted rows included (which
        the search's check tolerates: records are never updated, only deleted, and a missing
        one means a write raced it). A read-only store reads its pinned state, under the lock."""
        with self._readers_lock:
            self._check_open()
            db = self._readers.pop() if self._readers else None
        if db is None and not self._read_only:
            db = self._open_reader()
        if db is None:
            yield self._query
            return
        try:
            yield lambda sql, params: db.execute(sql, params).fetchall()
        finally:
            with self._readers_lock:
                if self._closed:
                    db.close()
                else:
                    self._readers.append(db)

    def _open_reader(self) -> sqlite3.Connection | None:
        """A new read connection for :meth:`_reading` (``None`` if SQLite cannot open one, e.g.
        a build without shared cache: reads then share the main connection)."""
        if self.path is None:
            uri = self._memory_uri
        else:
            uri = f"{(self.path / DB_FILE).resolve().as_uri()}?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        except sqlite3.Error:
            return None
        try:
            db.execute("PRAGMA trusted_schema=OFF")
            db.execute("PRAGMA query_only=ON")
            db.execute("PRAGMA read_uncommitted=ON")  # shared cache only: no table locks
            db.execute("SELECT key FROM docs LIMIT 0").fetchall()
        except sqlite3.Error:
            db.close()
            return None
        return db

    def _all_keys(self) -> np.ndarray:
        """Every key, sorted (cached until the next write)."""
        version = self._version
        cached = self._universe
        if cached is not None and cached[0] == version:
            return cached[1]
        rows = self._query("SELECT key FROM docs ORDER BY key")
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self._universe = (version, keys)
        return keys

    # ------------------------------------------------------------------ writes
    def upsert(
        self, ids: Sequence[str], vectors, texts: Sequence[str], metadatas: Sequence[dict | None] | None = None
    ) -> list[str]:
        """Add documents, replacing those whose ids already exist. Returns the ids.

        ``vectors``: ``[n, dim]`` floats; ``ids``/``texts``/``metadatas`` one per vector (ids
        and texts are any valid Unicode strings, NUL included; metadata follows
        :func:`metadata_json`). Nothing changes if the call raises.
        """
        ids, texts, meta_json = check_documents(ids, texts, metadatas)
        if not ids:
            return []
        with self._write_lock:
            self._check_writable()
            vectors = self._as_metric(as_vectors(vectors, self.dim, "vectors"))
            if len(vectors) != len(ids):
                raise ValueError(f"vectors must have one row per id. Got {len(vectors)} vectors and {len(ids)} ids.")
            if self._index is None:
                self._create_index(vectors.shape[1])
            old = self._keys_of(ids)
            staged = self._index._stage_add(vectors.to(self._index.device))  # 1. on disk, not yet known
            keys = staged.ids.tolist()
            fields = [row for key, stored in zip(keys, meta_json) for row in field_rows(key, json.loads(stored))]
            self._commit(  # 2. the commit point
                [
                    ("DELETE FROM docs WHERE key = ?", [(k,) for k in old.values()]),
                    ("DELETE FROM fields WHERE key = ?", [(k,) for k in old.values()]),
                    (
                        "INSERT INTO docs (key, id, text, metadata) VALUES (?, ?, ?, ?)",
                        list(zip(keys, ids, texts, meta_json)),
                    ),
                    ("INSERT INTO fields VALUES (?, ?, ?, ?, ?)", fields),
                ],
                staged,
                np.fromiter(old.values(), dtype=np.int64, count=len(old)),
            )
        return ids

    def _commit(self, statements: list[tuple[str, list]], staged, dead: np.ndarray) -> None:
        """Run ``statements`` in one transaction; as it commits, publish the staged rows and
        drop ``dead`` keys from the index in memory, as one step for readers. Then record the
        dead rows on disk, best effort (a crash or an error there is reconciled on opening)."""
        with self._db_lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, rows in statements:
                    if rows:
                        self._db.executemany(sql, rows)
                with self._publish_lock:
                    self._db.execute("COMMIT")
                    if self._index is not None:
                        self._index._publish(staged, dead)
                    self._version += 1
                    self._remember_write(dead, staged.ids if staged is not None else np.zeros(0, dtype=np.int64))
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if staged is not None:
                    self._index._discard()  # the staged rows stay unpublished: rows SQLite never knew
                raise
        if self._index is not None and len(dead):
            self._index._persist_pending()

    def _as_metric(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors as the metric scores them: unit length (zero stays zero) for cosine."""
        return split_norm(x)[0] if self.metric == "cosine" else x

    def _keys_of(self, ids: list[str]) -> dict[str, int]:
        return dict(self._lookup("id", ids, "id, key"))

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete documents by id; returns the ids that existed (unknown ids are ignored).
        ``ids`` is a list: a bare string is refused, never taken as a list of characters."""
        ids = check_strings(ids, "ids")
        with self._write_lock:
            self._check_writable()
            found = self._keys_of(ids)
            self._delete_keys(np.fromiter(found.values(), dtype=np.int64, count=len(found)))
            return [i for i in dict.fromkeys(ids) if i in found]

    def delete_where(self, where: Filter) -> int:
        """Delete every document matching a filter; returns how many."""
        with self._write_lock:
            self._check_writable()
            keys = self._matching(where)
            self._delete_keys(keys)
            return len(keys)

    def _delete_keys(self, keys: np.ndarray) -> None:
        if len(keys):
            rows = [(int(k),) for k in keys]
            self._commit(
                [("DELETE FROM docs WHERE key = ?", rows), ("DELETE FROM fields WHERE key = ?", rows)], None, keys
            )

    def compact(self) -> None:
        """Reclaim the space of deleted and replaced documents now (it also happens on its own
        once they pass a quarter of the index; see :meth:`QuantizedIndex.compact`)."""
        with self._write_lock:
            self._check_writable()
            if self._index is not None:
                with self._publish_lock:
                    self._index.compact()
                    self._version += 1
                    self._remember_write(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def clear(self) -> None:
        """Delete every document."""
        with self._write_lock:
            self._check_writable()
            self._delete_keys(self._all_keys())

    # ------------------------------------------------------------------ reads
    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked (a bare string is refused)."""
        ids = check_strings(ids, "ids")
        rows = {
            r[0]: Record(r[0], r[1], json.loads(r[2]), r[3]) for r in self._lookup("id", ids, "id, text, metadata, key")
        }
        return [rows[i] for i in dict.fromkeys(ids) if i in rows]

    def records(self, where: Filter | None = None) -> Iterator[Record]:
        """All records (matching ``where``), in insertion order."""
        if where is None:
            rows = self._query("SELECT id, text, metadata, key FROM docs ORDER BY key")
        else:
            rows = sorted(
                self._lookup("key", self._matching(where).tolist(), "id, text, metadata, key"), key=lambda r: r[3]
            )
        return iter([Record(r[0], r[1], json.loads(r[2]), r[3]) for r in rows])

    def vectors(self, records: Sequence[Record]) -> np.ndarray:
        """Reconstructed vectors ``[n, dim]`` of records (from the rescore copy when there is one)."""
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
        rescore_multiplier = check_rescore_multiplier(rescore_multiplier)
        ids = None if ids is None else check_strings(ids, "ids")
        if where is not None:
            check_filter(where)
        q = self._as_metric(as_vectors(queries, self.dim, "queries"))
        for attempt in range(SEARCH_ATTEMPTS + 1):
            if attempt == SEARCH_ATTEMPTS:  # writes keep racing this search: wait for them
                with self._write_lock:
                    return self._search_once(q, int(k), int(rescore_multiplier), where, ids)[1]
            done, hits = self._search_once(q, int(k), int(rescore_multiplier), where, ids)
            if done:
                return hits
        raise AssertionError("unreachable")

    def _search_once(self, q: torch.Tensor, k: int, mult: int, where, ids) -> tuple[bool, list]:
        """One optimistic attempt: ``(True, hits)`` if no write was published meanwhile."""
        self._check_open()
        with self._publish_lock:
            version = self._version
            index = self._index
            snapshot = None if index is None else index.snapshot()
        if k == 0 or index is None or snapshot.n_alive == 0:
            return True, [[] for _ in range(len(q))]
        selection = self._selection(where, ids, version, index)
        res = index.search(q, k=k, rescore_multiplier=mult, allowed_ids=selection, snapshot=snapshot)
        scores = np.clip(res.scores, -1.0, 1.0) if self.metric == "cosine" else res.scores
        hits = np.unique(res.ids).tolist()
        with self._reading() as query:
            rows = self._lookup("key", hits, "id, text, metadata, key", query)
        if self._version != version or len(rows) != len(hits):
            return False, []
        by_key = {r[3]: Record(r[0], r[1], json.loads(r[2]), r[3]) for r in rows}
        return True, [
            [(by_key[int(key)], float(score)) for key, score in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(res.ids, scores)
        ]

    def _selection(self, where: Filter | None, ids: list[str] | None, version: int, index: QuantizedIndex):
        """The index selection for a filter and/or ids (``None`` for neither), from a small
        cache: a filter's key set is brought up to date with the documents written since."""
        if where is None and ids is None:
            return None
        cache_key = (where, None if ids is None else tuple(ids))
        try:
            cached = self._filters.get(cache_key)
        except TypeError:  # an unhashable value inside the filter: no caching
            cache_key, cached = None, None
        if cached is not None and cached[0] == version:
            return cached[1]
        keys = None
        if cached is not None and ids is None:
            keys = self._caught_up(where, cached[1].ids, cached[0], version)
        if keys is None:
            keys = self._matching(where) if where is not None else None
        if ids is not None:
            wanted = np.unique(np.fromiter(self._keys_of(ids).values(), dtype=np.int64))
            keys = wanted if keys is None else np.intersect1d(keys, wanted, assume_unique=True)
        selection = index.selection(keys)
        if cache_key is not None:
            with self._db_lock:
                self._filters[cache_key] = (version, selection)
                self._filters.move_to_end(cache_key)
                while len(self._filters) > FILTER_CACHE:
                    self._filters.popitem(last=False)
        return selection

    def _remember_write(self, dead: np.ndarray, added: np.ndarray) -> None:
        """Record the write just published (under the publish lock) for :meth:`_caught_up`; a
        write too large to catch up with is recorded without its keys."""
        small = len(dead) + len(added) <= CATCH_UP_MAX
        self._writes.append((self._version, dead if small else None, added if small else None))

    def _caught_up(self, where: Filter, keys: np.ndarray, since: int, version: int) -> np.ndarray | None:
        """The keys matching ``where`` at ``version``, from ``keys`` (those at ``since``) and the
        writes in between: their dead keys leave, their added documents alone are tested.
        ``None`` when those writes are not all remembered or added too many documents."""
        with self._publish_lock:
            writes = [w for w in self._writes if since < w[0] <= version]
        if not _JSON_EACH or len(writes) != version - since or any(w[1] is None for w in writes):
            return None
        dead = np.sort(np.concatenate([w[1] for w in writes] + [np.zeros(0, dtype=np.int64)]))
        added = np.sort(np.concatenate([w[2] for w in writes] + [np.zeros(0, dtype=np.int64)]))
        added = added[~_sorted_member(added, dead)]
        if len(dead) + len(added) > CATCH_UP_MAX:
            return None
        keys = keys[~_sorted_member(keys, dead)]
        fresh = self._matching(where, within=added) if len(added) else added
        fresh = fresh[~_sorted_member(fresh, keys)]  # already there if the key set was newer than `since`
        return np.insert(keys, np.searchsorted(keys, fresh), fresh)

    def _matching(self, where: Filter, within: np.ndarray | None = None) -> np.ndarray:
        """Sorted keys of the documents matching a filter (among the keys ``within``)."""
        check_filter(where)
        with self._db_lock:
            self._check_open()
            return matching_keys(
                where, lambda sql, params: self._db.execute(sql, params).fetchall(), self._all_keys, within
            )

    def _lookup(self, column: Literal["id", "key"], values: list, columns: str, query=None) -> list[tuple]:
        """Rows (``columns``) whose ``column`` is one of ``values``: every value is bound as a
        parameter (so any string, NUL included, matches exactly), in chunks of any length;
        ``query`` runs the SQL (the main connection by default)."""
        query = query or self._query
        rows: list[tuple] = []
        for start in range(0, len(values), _LOOKUP_CHUNK):
            part = values[start : start + _LOOKUP_CHUNK]
            marks = ", ".join("?" * len(part))
            rows += query(f"SELECT {columns} FROM docs WHERE {column} IN ({marks})", part)
        return rows

    def save(self, path: str | os.PathLike) -> None:
        """Write a compacted copy of this store to ``path`` (a new or empty directory), via a
        temporary sibling and a rename, so a failure leaves nothing behind."""

        def fill(tmp: Path) -> None:
            dst = sqlite3.connect(str(tmp / DB_FILE), isolation_level=None)
            try:
                with self._db_lock:
                    self._db.backup(dst)
                dst.execute("PRAGMA journal_mode=WAL")  # as every store: readers beside a writer
            finally:
                dst.close()
            if self._index is not None:
                self._index.save(tmp / INDEX_DIR)

        with self._write_lock:
            self._check_open()
            write_directory(path, fill)

    def save_replacing(self, path: str | os.PathLike) -> None:
        """:meth:`save` to ``path``, which may already hold a saved store: that one is replaced
        atomically (see :func:`quant_retriever.files.replace_directory`): a crash at any moment
        leaves the old or the new store at ``path``, never a mix. ``path`` holding anything but
        a store, or a store open for writing, is refused."""
        replace_directory(
            Path(path), self.save, lambda p: file_kind(p / DB_FILE) == "a regular file", "quant_retriever store", self
        )

    def verify(self) -> list[str]:
        """Cross-check SQLite, the index and its files; returns the problems, ``[]`` when consistent."""
        with self._write_lock:
            self._check_open()
            problems = [f"sqlite: {row[0]}" for row in self._query("PRAGMA integrity_check") if row[0] != "ok"]
            keys = self._all_keys()
            if self._index is None:
                return problems + ([f"{len(keys)} records but no index"] if len(keys) else [])
            problems += self._index.verify()
            in_index = self._index.ids()
            if not np.array_equal(np.sort(in_index), keys):
                missing, orphans = np.setdiff1d(keys, in_index), np.setdiff1d(in_index, keys)
                problems.append(f"{len(missing)} records without vectors, {len(orphans)} vectors without records")
            fields = self._query("SELECT COUNT(DISTINCT key) FROM fields WHERE key NOT IN (SELECT key FROM docs)")[0][0]
            if fields:
                problems.append(f"{fields} documents' metadata fields are left in the fields table")
            return problems

    def close(self) -> None:
        """Close SQLite and the index and release the directory lock; later calls raise
        ``ValueError``. Everything written is already durable. A store opened several times in
        this process closes on the last ``close``."""
        with self._write_lock, self._db_lock:
            if self._closed:
                return
            self._opens -= 1
            if self._opens > 0:
                return
            self._closed = True
            self._release()
