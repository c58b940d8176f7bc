"""A store's SQLite database: its schema and the identification of a file as a store (read-only,
before anything is written to it), the checks of the directory's files, and :class:`Database`,
the connections a store reads and writes through.

Persistent layout of a store (``path``): ``store.sqlite`` (tables ``docs``, ``fields`` and
``meta``; the schema is checked object by object before anything else runs, so a file carrying
triggers or views is refused) and ``index/`` (the index directory).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

from quant_retriever.files import file_kind, real_directory
from quant_retriever.filters import FIELDS_SCHEMA
from quant_retriever.index import check_settings, empty_index_problem
from quant_retriever.store.keywords import DEFAULT_TOKENIZER, TOKENIZERS, create_table

__all__ = [
    "FORMAT",
    "VERSION",
    "DB_FILE",
    "CREATING",
    "INDEX_DIR",
    "Metric",
    "METRICS",
    "Database",
    "identify",
    "check_files",
    "is_leftover",
    "empty_store_problem",
    "create_schema",
    "schema_is_known",
    "has_keywords",
    "add_keywords",
    "meta_value",
    "NO_KEYWORDS",
]

FORMAT = "quant_retriever.store"
VERSION = 2
DB_FILE = "store.sqlite"
CREATING = DB_FILE + ".creating"
INDEX_DIR = "index"
Metric = Literal["ip", "cosine"]
METRICS: tuple[str, ...] = get_args(Metric)
#: The ``meta`` value ``keywords`` of a store made without a keyword index (absent: a store
#: written before keyword search existed).
NO_KEYWORDS = "none"
_LOOKUP_CHUNK = 500  # ids per "IN (?, ...)" lookup, below SQLite's bound-parameter limit

_SCHEMA = (
    """
CREATE TABLE docs (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + FIELDS_SCHEMA
)


def _schema_objects(db: sqlite3.Connection) -> list[tuple]:
    """What the schema holds: ``(type, name, table, sql)`` of every object, by type and name.
    The keyword table's shadow tables (which FTS5 creates and may word differently from one
    SQLite release to the next) count by name alone."""
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    return [(t, n, tn, None if n.startswith("keywords_") else sql) for t, n, tn, sql in rows]


def _expected_schema(schema: str = _SCHEMA, tokenizer: str | None = None) -> list[tuple]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(schema)
        if tokenizer is not None:
            db.execute(create_table(tokenizer))
        return _schema_objects(db)
    finally:
        db.close()


_EXPECTED_SCHEMA = _expected_schema(tokenizer=DEFAULT_TOKENIZER)
#: Schemas this version opens: its own, with the keyword table of any tokenizer or without one
#: (stores written before it existed: a writable open adds it), and that of the first format-2
#: stores, whose value index lacked the key (filters read every key from the table instead of
#: the index: slower, same keys).
_KNOWN_SCHEMAS = [
    _expected_schema(base, tokenizer)
    for base in (_SCHEMA, _SCHEMA.replace("(name, elem, kind, val, key)", "(name, elem, kind, val)"))
    for tokenizer in (None, *TOKENIZERS)
]


def schema_is_known(db: sqlite3.Connection) -> bool:
    return _schema_objects(db) in _KNOWN_SCHEMAS


def meta_value(db: sqlite3.Connection, name: str) -> str | None:
    """The ``meta`` value ``name`` (``None`` when absent)."""
    rows = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchall()
    return rows[0][0] if rows else None


def has_keywords(db: sqlite3.Connection) -> bool:
    """Whether the database holds the keyword table."""
    return bool(db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keywords'").fetchall())


def create_schema(db: sqlite3.Connection, meta: list[tuple[str, str]], tokenizer: str | None) -> None:
    """The tables (the keyword table with ``tokenizer``, none for ``None``) and the settings,
    in one transaction (DDL included)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        if tokenizer is not None:
            db.execute(create_table(tokenizer))
        db.executemany("INSERT INTO meta VALUES (?, ?)", [*meta, ("keywords", tokenizer or NO_KEYWORDS)])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def add_keywords(db: sqlite3.Connection, tokenizer: str) -> int:
    """Build the keyword index from the texts (replacing one there), in one transaction (a
    crash leaves the store as it was); returns the documents indexed."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DROP TABLE IF EXISTS keywords")
        db.execute(create_table(tokenizer))
        db.execute("INSERT INTO keywords(rowid, text) SELECT key, text FROM docs")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('keywords', ?)", (tokenizer,))
        count = db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return count


_SETTINGS_KEYS = {"codec", "rescore", "device", "block_size", "rescore_dtype"}


def is_leftover(entry: Path) -> bool:
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
        db = connect_read_only(path / DB_FILE)
        try:
            if not schema_is_known(db):
                return f"{path / DB_FILE} is not a store's database"
            count = db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        finally:
            db.close()
    except (ValueError, sqlite3.Error) as exc:
        return str(exc)
    return f"{path / DB_FILE} holds {count} documents" if count else None


def connect_read_only(db_file: Path) -> sqlite3.Connection:
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


def check_files(path: Path) -> None:
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


def identify(db_file: Path) -> dict:
    """The ``meta`` of a store file, read through a read-only connection after checking
    that its schema is exactly ours; ``ValueError`` naming the file otherwise."""
    db = connect_read_only(db_file)
    try:
        db.execute("PRAGMA trusted_schema=OFF")
        found = _schema_objects(db)
        if found not in _KNOWN_SCHEMAS:
            known = {(t, n) for schema in _KNOWN_SCHEMAS for t, n, _, _ in schema}
            extra = sorted({(t, n) for t, n, _, _ in found} - known)
            raise ValueError(
                f"{db_file}: not a quant_retriever store of this version (its schema differs"
                f"{': unexpected ' + ', '.join(f'{t} {n!r}' for t, n in extra[:5]) if extra else ''}); "
                "nothing was changed."
            )
        damage = [row[0] for row in db.execute("PRAGMA quick_check(5)").fetchall() if row[0] != "ok"]
        if damage:  # every page and b-tree, before anything relies on them (a truncated copy, a torn disk)
            raise ValueError(f"{db_file}: the database is damaged ({'; '.join(damage)[:300]}); nothing was changed.")
        if has_keywords(db) != (meta_value(db, "keywords") not in (None, NO_KEYWORDS)):
            raise ValueError(f"{db_file}: its keyword index and its settings disagree; nothing was changed.")
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
        ok = ok and meta.get("keywords", NO_KEYWORDS) in (*TOKENIZERS, NO_KEYWORDS)
        if ok:
            check_settings(**{**settings, "device": None})
    except (ValueError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise ValueError(f"{db_file}: the store's settings are malformed.")
    return meta


class Database:
    """The connections of one store: the main one (``connection``, used under ``lock``: writes
    in explicit transactions, short reads), and a pool of read connections searches read their
    hits' records through (see :meth:`reading`). ``path=None``: an in-memory database under a
    random name, in SQLite's shared cache."""

    def __init__(self, path: Path | None, read_only: bool):
        self.path, self.read_only = path, read_only
        self.lock = threading.RLock()  # the main connection, for short statements
        self.closed = False
        self._readers: list[sqlite3.Connection] = []  # idle connections for searches' record reads
        self._readers_lock = threading.Lock()
        self._memory_uri = f"file:quant_retriever-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self.connection: sqlite3.Connection = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """The main connection: read-only URI opening for a read-only store (see
        :func:`connect_read_only`), pinned to the state committed when it opened; WAL with
        ``synchronous=FULL`` for a writable one on disk."""
        if self.path is None:
            db = sqlite3.connect(self._memory_uri, uri=True, check_same_thread=False, isolation_level=None)
        elif self.read_only:
            db = connect_read_only(self.path / DB_FILE)
            self.pin(db)
        else:
            db = sqlite3.connect(str(self.path / DB_FILE), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA trusted_schema=OFF")
        if self.path is not None and not self.read_only:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        return db  # autocommit: writes run in explicit transactions

    @staticmethod
    def pin(db: sqlite3.Connection) -> None:
        """Start a read transaction: a read-only store sees this committed state until refresh."""
        if db.in_transaction:
            db.execute("COMMIT")
        db.execute("BEGIN")
        db.execute("SELECT COUNT(*) FROM meta").fetchone()

    def query(self, sql: str, params=()) -> list:
        with self.lock:
            self._check_open()
            return self.connection.execute(sql, params).fetchall()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("this store was closed; open it again with QuantizedStore.open.")

    @contextmanager
    def reading(self) -> Iterator[Callable[[str, Any], list]]:
        """A query function for a search to read the records of its hits without the
        connection lock, so parallel searches and a write's transaction never wait on each
        other: a connection of its own from a pool. It reads the committed state of a file, or
        an in-memory store's shared cache without table locks, uncommitted rows included (which
        the search's check tolerates: records are never updated, only deleted, and a missing
        one means a write raced it). A read-only store reads its pinned state, under the lock."""
        with self._readers_lock:
            self._check_open()
            db = self._readers.pop() if self._readers else None
        if db is None and not self.read_only:
            db = self._open_reader()
        if db is None:
            yield self.query
            return
        try:
            yield lambda sql, params: db.execute(sql, params).fetchall()
        finally:
            with self._readers_lock:
                if self.closed:
                    db.close()
                else:
                    self._readers.append(db)

    def _open_reader(self) -> sqlite3.Connection | None:
        """A new read connection for :meth:`reading` (``None`` if SQLite cannot open one, e.g.
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

    def lookup(self, column: Literal["id", "key"], values: list, columns: str, query=None) -> list[tuple]:
        """Rows (``columns``) whose ``column`` is one of ``values``: every value is bound as a
        parameter (so any string, NUL included, matches exactly), in chunks of any length;
        ``query`` runs the SQL (the main connection by default)."""
        query = query or self.query
        rows: list[tuple] = []
        for start in range(0, len(values), _LOOKUP_CHUNK):
            part = values[start : start + _LOOKUP_CHUNK]
            marks = ", ".join("?" * len(part))
            rows += query(f"SELECT {columns} FROM docs WHERE {column} IN ({marks})", part)
        return rows

    def close(self) -> None:
        """Close every connection (later calls raise ``ValueError``)."""
        with self.lock, self._readers_lock:
            self.closed = True
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()
        with self.lock:
            self.connection.close()
