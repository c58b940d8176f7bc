"""What the frameworks need beyond vectors: string ids, texts, metadata and metadata filters,
in SQLite (stdlib ``sqlite3``), next to a :class:`~quant_retriever.index.QuantizedIndex`.

Each document has a string ``id`` (the frameworks') and an integer ``key`` (the index id).
Metadata is stored as JSON. Filters are a small tree (:class:`Cond`, :class:`And`,
:class:`Or`, :class:`Not`) that the adapters build from LangChain dicts or LlamaIndex
``MetadataFilters``; :func:`compile_filter` turns it into one SQL ``WHERE`` clause, which is
run once per search to get the allowed keys: filtering happens before top-k, so a filtered
search still returns ``k`` hits when ``k`` documents match.

Persistent layout (``path``): ``store.sqlite`` (tables ``docs`` and ``meta``) and ``index/``
(the index directory). Writes are ordered so that a crash at any point leaves at worst rows
in one part that the other does not know; :meth:`QuantizedStore.open` reconciles them, so an
interrupted ``upsert``/``delete`` is either wholly there or wholly absent.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, Union, get_args

import numpy as np

from quant_retriever.codecs import CodecName
from quant_retriever.files import DirectoryLock, write_directory
from quant_retriever.index import QuantizedIndex, as_vectors

__all__ = ["Record", "Cond", "And", "Or", "Not", "Filter", "Operator", "QuantizedStore", "compile_filter"]

FORMAT = "quant_retriever.store"
VERSION = 1

Operator = Literal[
    "eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "contains", "any", "all",
    "text_match", "text_match_insensitive", "is_empty",
]
OPERATORS: tuple[str, ...] = get_args(Operator)


@dataclass(frozen=True)
class Record:
    """A stored document: framework ``id``, ``text``, ``metadata`` and the index ``key``."""

    id: str
    text: str
    metadata: dict
    key: int


@dataclass(frozen=True)
class Cond:
    """``metadata[key] <op> value``. ``contains``/``any``/``all`` test list-valued metadata;
    ``text_match`` is a substring test; ``is_empty`` matches missing, null, ``""`` or ``[]``."""

    key: str
    op: Operator
    value: Any = None

    def __post_init__(self):
        if not isinstance(self.key, str):
            raise TypeError(f"filter keys must be strings; got {self.key!r}.")
        if self.op not in OPERATORS:
            raise ValueError(f"Invalid operator: {self.op!r}; expected one of {', '.join(OPERATORS)}.")


@dataclass(frozen=True)
class And:
    items: tuple = field(default_factory=tuple)


@dataclass(frozen=True)
class Or:
    items: tuple = field(default_factory=tuple)


@dataclass(frozen=True)
class Not:
    item: Any


Filter = Union[Cond, And, Or, Not]


def _json_path(key: str) -> str:
    """SQL string literal of the JSON path of a top-level ``key`` (quotes escaped)."""
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "'" + path.replace("'", "''") + "'"


def _typed_equal(value: Any, expr: str, type_expr: str, params: list) -> str:
    """SQL for ``<expr> == value`` that only matches a JSON value of the same kind."""
    # every comparison is wrapped in COALESCE(..., 0): a missing key (SQL NULL) is "false",
    # never NULL, so NOT and OR behave like Python
    if value is None:
        return f"COALESCE({type_expr} = 'null', 0)"
    if isinstance(value, bool):
        return f"COALESCE({type_expr} = '{'true' if value else 'false'}', 0)"
    if isinstance(value, (int, float)):
        params.append(_number(value))
        return f"COALESCE({type_expr} IN ('integer', 'real') AND {expr} = ?, 0)"
    if isinstance(value, str):
        params.append(value)
        return f"COALESCE({type_expr} = 'text' AND {expr} = ?, 0)"
    raise TypeError(f"filter values must be str, int, float, bool or None; got {type(value).__name__} {value!r}.")


def _number(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"filter values must be finite numbers; got {value!r}.")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError(f"filter integers must fit in 64 bits; got {value}.")
    return value


def _as_list(value: Any, op: str) -> list:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"operator {op!r} needs a list of values; got {type(value).__name__} {value!r}.")


def _compile_cond(c: Cond, params: list) -> str:
    path = _json_path(c.key)
    v, t = f"json_extract(metadata, {path})", f"json_type(metadata, {path})"
    op, value = c.op, c.value
    if op == "eq":
        return _typed_equal(value, v, t, params)
    if op == "ne":  # like Python's metadata.get(key) != value: a missing key matches
        return f"NOT ({_typed_equal(value, v, t, params)})"
    if op in ("lt", "lte", "gt", "gte"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"operator {op!r} compares numbers or strings; got {type(value).__name__} {value!r}.")
        kinds = "'text'" if isinstance(value, str) else "'integer', 'real'"
        params.append(value if isinstance(value, str) else _number(value))
        return f"({t} IN ({kinds}) AND {v} {dict(lt='<', lte='<=', gt='>', gte='>=')[op]} ?)"
    if op in ("in", "nin"):
        parts = [_typed_equal(x, v, t, params) for x in _as_list(value, op)]
        sql = "(" + " OR ".join(parts) + ")" if parts else "0"
        return f"NOT {sql}" if op == "nin" else sql
    if op in ("contains", "any", "all"):
        if op == "contains" and isinstance(value, (list, tuple, set, frozenset)):
            raise TypeError("operator 'contains' takes one value; use 'any' or 'all' for several.")
        values = [value] if op == "contains" else _as_list(value, op)
        parts = [
            f"EXISTS (SELECT 1 FROM json_each(metadata, {path}) AS je WHERE "
            f"{_typed_equal(x, 'je.value', 'je.type', params)})"
            for x in values
        ]
        if not parts:
            return "1" if op == "all" else "0"
        return f"({t} = 'array' AND (" + (" AND " if op == "all" else " OR ").join(parts) + "))"
    if op in ("text_match", "text_match_insensitive"):
        if not isinstance(value, str):
            raise TypeError(f"operator {op!r} needs a string; got {type(value).__name__} {value!r}.")
        params.append(value)
        if op == "text_match":
            return f"({t} = 'text' AND instr({v}, ?) > 0)"
        return f"({t} = 'text' AND instr(lower({v}), lower(?)) > 0)"
    # is_empty: missing, null, "" or []
    return (
        f"({t} IS NULL OR {t} = 'null' OR ({t} = 'text' AND {v} = '') "
        f"OR ({t} = 'array' AND json_array_length(metadata, {path}) = 0))"
    )


def compile_filter(f: Filter) -> tuple[str, list]:
    """Compile a filter tree into ``(sql_where, params)`` over the ``docs`` table."""
    params: list = []

    def walk(node) -> str:
        if isinstance(node, Cond):
            return f"COALESCE({_compile_cond(node, params)}, 0)"
        if isinstance(node, (And, Or)):
            if not node.items:
                return "1" if isinstance(node, And) else "0"
            joiner = " AND " if isinstance(node, And) else " OR "
            return "(" + joiner.join(walk(x) for x in node.items) + ")"
        if isinstance(node, Not):
            return f"NOT ({walk(node.item)})"
        raise TypeError(f"filter must be Cond/And/Or/Not; got {type(node).__name__}.")

    return walk(f), params


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _metadata_json(metadata: Any, i: int) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict; item {i} is {type(metadata).__name__}.")
    try:
        return json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serializable (str, numbers, bools, None, lists, dicts); item {i}: {exc}.") from None


class QuantizedStore:
    """Documents (id, text, metadata) in SQLite plus their vectors in a ``QuantizedIndex``.

    ``dim=None`` takes the dimension from the first ``upsert``. ``path=None`` keeps everything
    in memory (the INT8 copy in a temporary file); a ``path`` (directory) makes every
    ``upsert``/``delete`` that returned durable; reopen with :meth:`open`. Thread safety: calls
    are serialised by a lock (one writer; searches wait for a write in progress).
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
    ):
        self._settings = dict(codec=codec, rescore=rescore, device=device, block_size=block_size)
        QuantizedIndex(dim or 8, **self._settings)  # validates codec, block_size, device, rescore early
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
                [("format", FORMAT), ("version", str(VERSION)), ("settings", json.dumps({**self._settings, "device": None}))],
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

    def get_info(self, name: str) -> Any:
        """The JSON value stored under ``name`` by :meth:`set_info`, or ``None``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str; got {name!r}.")
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (f"info:{name}",)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_info(self, name: str, value: Any) -> None:
        """Record a small JSON value (e.g. the embedding model) in the store's own metadata:
        durable when the store has a path, kept by :meth:`save`."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str; got {name!r}.")
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"info {name!r} must be JSON-serializable: {exc}.") from None
        with self._lock:
            self._set_meta(f"info:{name}", text)

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

        ``vectors``: ``[n, dim]`` floats; ``ids``/``texts``/``metadatas`` one per vector.
        Nothing changes if the call raises.
        """
        ids, texts = list(ids), list(texts)
        metadatas = [None] * len(ids) if metadatas is None else list(metadatas)
        if not (len(ids) == len(texts) == len(metadatas)):
            raise ValueError(
                f"ids, texts and metadatas must have the same length. Got {len(ids)} ids, {len(texts)} texts "
                f"and {len(metadatas)} metadatas."
            )
        for i, (doc_id, text) in enumerate(zip(ids, texts)):
            if not isinstance(doc_id, str):
                raise TypeError(f"ids must be strings; item {i} is {type(doc_id).__name__}.")
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings; item {i} is {type(text).__name__}.")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique within one call; got duplicates.")
        meta_json = [_metadata_json(m, i) for i, m in enumerate(metadatas)]
        if not ids:
            return []
        with self._lock:
            vectors = as_vectors(vectors, self.dim, "vectors")
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

    def _keys_of(self, ids: Sequence[str]) -> dict[str, int]:
        return {r.id: r.key for r in self._records_where_in("id", list(ids))}

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete documents by id; returns the ids that existed (unknown ids are ignored)."""
        ids = list(ids)
        for i, doc_id in enumerate(ids):
            if not isinstance(doc_id, str):
                raise TypeError(f"ids must be strings; item {i} is {type(doc_id).__name__}.")
        with self._lock:
            found = self._keys_of(ids)
            self._delete_keys(found)
            return [i for i in dict.fromkeys(ids) if i in found]

    def delete_where(self, where: Filter) -> int:
        """Delete every document matching a filter; returns how many."""
        with self._lock:
            sql, params = compile_filter(where)
            found = dict(self._db.execute(f"SELECT id, key FROM docs WHERE {sql}", params).fetchall())
            self._delete_keys(found)
            return len(found)

    def _delete_keys(self, found: dict[str, int]) -> None:
        if not found:
            return
        with self._db:  # SQLite first: a crash after this leaves index rows that open() drops
            self._db.executemany("DELETE FROM docs WHERE key = ?", [(k,) for k in found.values()])
        self._index.remove(list(found.values()))

    def clear(self) -> None:
        """Delete every document."""
        with self._lock:
            found = dict(self._db.execute("SELECT id, key FROM docs").fetchall())
            self._delete_keys(found)

    # ------------------------------------------------------------------ reads
    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records for the ids that exist, in the order asked."""
        with self._lock:
            ids = list(ids)
            rows = {r.id: r for r in self._records_where_in("id", ids)}
            return [rows[i] for i in dict.fromkeys(ids) if i in rows]

    def records(self, where: Filter | None = None) -> Iterator[Record]:
        """All records (matching ``where``), in insertion order."""
        sql, params = compile_filter(where) if where is not None else ("1", [])
        with self._lock:
            rows = self._db.execute(f"SELECT id, text, metadata, key FROM docs WHERE {sql} ORDER BY key", params).fetchall()
        for r in rows:
            yield Record(r[0], r[1], json.loads(r[2]), r[3])

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
        """Top-``k`` ``(record, score)`` per query, scores are inner products, best first.

        ``where`` (a filter) and ``ids`` (allowed document ids) restrict the search before
        top-k; an empty store returns empty lists.
        """
        with self._lock:
            q = as_vectors(queries, self.dim, "queries")
            if self._index is None or len(self._index) == 0:
                return [[] for _ in range(len(q))]
            allowed = None
            if where is not None or ids is not None:
                clauses, params = [], []
                if where is not None:
                    sql, params = compile_filter(where)
                    clauses.append(sql)
                if ids is not None:
                    clauses.append("id IN (SELECT value FROM json_each(?))")
                    params = [*params, json.dumps(list(ids))]
                allowed = np.array([k_ for (k_,) in self._db.execute(
                    f"SELECT key FROM docs WHERE {' AND '.join(clauses)}", params
                )], dtype=np.int64)
            res = self._index.search(q, k=k, rescore_multiplier=rescore_multiplier, allowed_ids=allowed)
            by_key = {r.key: r for r in self._records_where_in("key", np.unique(res.ids).tolist())}
            return [
                [(by_key[int(key)], float(score)) for key, score in zip(row_ids, row_scores)]
                for row_ids, row_scores in zip(res.ids, res.scores)
            ]

    def _records_where_in(self, column: str, values: list) -> list[Record]:
        """Records whose ``column`` (``id`` or ``key``) is in ``values`` (one query, any length)."""
        rows = self._db.execute(
            f"SELECT id, text, metadata, key FROM docs WHERE {column} IN (SELECT value FROM json_each(?))",
            [json.dumps(values)],
        )
        return [Record(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

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
