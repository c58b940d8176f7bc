"""``QuantizedStore``: what the frameworks need beyond vectors (string ids, texts, metadata and
metadata filters) in SQLite, next to a :class:`~quant_retriever.index.QuantizedIndex`.

Each document has a string ``id`` (the frameworks') and an integer ``key`` (the index id).
Metadata is stored as JSON (see :func:`~quant_retriever.store.metadata_json` for what is
accepted), and its top-level fields once more in the indexed ``fields`` table, so a filter
becomes the set of matching keys by indexed lookups (:func:`quant_retriever.filters.matching_keys`);
that set restricts the search before top-k, so a filtered search still returns ``k`` hits when
``k`` documents match. The last filters' key sets are cached (see
:mod:`~quant_retriever.store.filter_cache`).

The commit point of every write is one SQLite transaction, and it is the last step that can
fail: new vectors are staged in the index first (rows SQLite does not know yet), then the
transaction commits, then the staged rows are published and the replaced or deleted rows leave
the index in memory; they are recorded on disk on a best-effort basis (see
:mod:`quant_retriever.index.staging`). A call that raises has changed nothing, in the open
object or after reopening; a crash at any point leaves the old or the new state, because
opening drops index rows SQLite does not know.

Readers take no lock for the scan: a search reads an immutable index snapshot and checks at the
end that no write was published meanwhile (else it runs again), so searches run in parallel
with each other and with a write, and see a write wholly or not at all.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import quant_retriever.store.creation as creation
import quant_retriever.store.keywords as keyword_index
import quant_retriever.store.opening as opening
from quant_retriever.checks import VectorsLike, as_vectors, check_read_only, check_strings, keyword_only
from quant_retriever.codecs import CodecName, RescoreDtype, split_norm
from quant_retriever.files import (
    DirectoryLock,
    OpenObjects,
    file_kind,
    replace_directory,
    replacement_of,
    write_directory,
)
from quant_retriever.filters import Filter, check_filter, field_rows, matching_keys
from quant_retriever.index import MemoryUsage, QuantizedIndex, check_settings
from quant_retriever.store.database import (
    DB_FILE,
    INDEX_DIR,
    METRICS,
    Database,
    Metric,
)
from quant_retriever.store.documents import check_documents
from quant_retriever.store.filter_cache import FilterCache
from quant_retriever.store.keywords import DEFAULT_TOKENIZER, Tokenizer, check_tokenizer
from quant_retriever.store.reads import Reads
from quant_retriever.store.verify import problems

__all__ = ["QuantizedStore", "check_metric"]

INSERT_DOC = "INSERT INTO docs (key, id, text, metadata) VALUES (?, ?, ?, ?)"
#: Persistent stores open for writing in this process (opening one again shares it).
_OPEN = OpenObjects()


def _info_key(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str; got {name!r}.")
    return f"info:{name}"


def _write_copy(store: QuantizedStore, directory: Path) -> None:
    """A copy of ``store`` into the new directory ``directory``: its database (in WAL mode, as
    every store's, so readers may sit beside a writer) and a compacted copy of its index."""
    dst = sqlite3.connect(str(directory / DB_FILE), isolation_level=None)
    try:
        with store._db.lock:
            store._db.connection.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        dst.close()
    if store._index is not None:
        store._index.save(directory / INDEX_DIR)


def check_metric(metric: object) -> None:
    """``ValueError`` unless ``metric`` is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}; got {metric!r}.")


class QuantizedStore(Reads):
    """Documents (id, text, metadata) in SQLite plus their vectors in a ``QuantizedIndex``.

    ``dim=None`` takes the dimension from the first ``upsert``. ``path=None`` keeps everything
    in memory (the rescore copy in a temporary file); a ``path`` (a new or empty directory)
    makes every ``upsert``/``delete`` that returned durable; reopen with :meth:`open`.
    ``with QuantizedStore(...) as store:`` closes it; ``"id" in store`` tells whether a document
    is stored.

    ``metric="ip"`` scores by inner product of the vectors as given; ``metric="cosine"``
    L2-normalises every vector on ``upsert`` and every query on ``search`` (a zero vector
    stays zero and scores 0), and reports scores clamped to ``[-1, 1]``. The metric is
    recorded in the store and kept on reopening.

    Threads: writes are serialised; searches run in parallel with each other and with a write
    (see the module docstring).
    """

    @keyword_only("codec", "path")
    def __init__(
        self,
        dim: int | None = None,
        *,
        codec: CodecName = "int4",
        path: str | os.PathLike | None = None,
        rescore: bool | None = None,
        device: str | None = None,
        block_size: int = 64,
        rescore_dtype: RescoreDtype = "int8",
        metric: Metric = "ip",
        keywords: Tokenizer | None = DEFAULT_TOKENIZER,
    ):
        check_metric(metric)
        if keywords is not None:
            check_tokenizer(keywords)
        settings = dict(codec=codec, rescore=rescore, device=device, block_size=block_size, rescore_dtype=rescore_dtype)
        check_settings(**settings)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ValueError(f"dim must be a positive int or None; got {dim!r}.")
        self._setup(None if path is None else Path(path), settings, metric, read_only=False)
        self._keywords = keywords
        creation.create(self, dim)
        if self.path is not None:
            with _OPEN.lock():
                _OPEN.put(self.path, self)

    def _setup(self, path: Path | None, settings: dict, metric: str, read_only: bool) -> None:
        self.path, self.metric, self._settings, self._read_only = path, metric, settings, read_only
        self._closed = False
        self._opens = 1
        self._write_lock = threading.RLock()  # one writer at a time
        self._publish_lock = threading.Lock()  # a commit and its index snapshot, as one step
        self._version = 0  # published writes
        self._cache = FilterCache(self._matching, self._keys_of, self._publish_lock)
        self._universe: tuple[int, np.ndarray] | None = None  # (version, every key)
        self._dir_lock: DirectoryLock | None = None
        self._index: QuantizedIndex | None = None
        self._db: Database | None = None
        self._keywords: str | None = None  # the keyword index's tokenizer (None: no keyword index)
        self._word_scores = keyword_index.WordScores()  # each query word's BM25 shares, per version

    def _create_index(self, dim: int) -> None:
        creation.create_index(self, dim)

    # ------------------------------------------------------------------ opening
    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` holds a store (to reopen rather than create), counting one that an
        interrupted :meth:`save_replacing` left aside (opening it puts it back)."""
        path = replacement_of(Path(path)) or Path(path)
        return file_kind(path / DB_FILE) == "a regular file"

    @classmethod
    def open(cls, path: str | os.PathLike, device: str | None = None, *, read_only: bool = False) -> QuantizedStore:
        """Reopen a persistent store, reconciling a write a crash interrupted. Every file is
        checked before anything is written (see :mod:`~quant_retriever.store.opening`): a file
        that fails raises ``ValueError``, changing nothing. Opening a directory this process
        already has open for writing returns that same store (each ``open`` needs its own
        :meth:`close`); another process gets ``RuntimeError``.

        ``read_only=True`` needs read permission only and writes nothing; any number of
        read-only openers may sit beside one writer. It sees the state committed when it was
        opened, until :meth:`refresh`.
        """
        path = Path(path)
        if check_read_only(read_only):
            return opening.open_store(cls, path, device, True)
        with _OPEN.lock():
            existing = _OPEN.get(path)
            if existing is not None:
                existing._opens += 1
                return existing
            store = opening.open_store(cls, path, device, False)
            _OPEN.put(path, store)
            return store

    def refresh(self) -> bool:
        """A read-only store: move to the latest committed state (returns whether it changed).
        A writable store always is at its latest state (returns False)."""
        if not self._read_only:
            return False
        with self._write_lock, self._db.lock, self._publish_lock:
            self._check_open()
            return opening.refresh(self)

    def _release(self) -> None:
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

    @property
    def settings(self) -> dict:
        """What the store was made with: ``codec``, ``rescore`` (``None`` until its index
        decides), ``rescore_dtype``, ``block_size``, ``device``, ``metric``, ``dim`` and
        ``keywords`` (the keyword index's tokenizer, ``None`` without one); and
        ``shards`` (``None``: one store; see ``ShardedStore.settings``)."""
        index, given = self._index, self._settings
        return {
            **{k: given[k] for k in ("codec", "rescore_dtype", "block_size")},
            "rescore": given["rescore"] if index is None else index.rescore,
            "device": None if index is None else str(index.device),
            "metric": self.metric,
            "dim": self.dim,
            "keywords": self._keywords,
            "shards": None,
        }

    def memory(self) -> MemoryUsage:
        """The index's memory (see :meth:`QuantizedIndex.memory`); zeros before it exists."""
        return MemoryUsage(0, 0, 0, 0, 0) if self._index is None else self._index.memory()

    def __len__(self) -> int:
        return len(self._all_keys())

    def __contains__(self, id_: object) -> bool:
        try:
            return bool(self._keys_of(check_strings([id_], "ids")))
        except (TypeError, ValueError):  # not a str, or not one SQLite can hold
            return False

    def __enter__(self) -> QuantizedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_info(self, name: str) -> Any:
        """The JSON value stored under ``name`` by :meth:`set_info`, or ``None``."""
        rows = self._db.query("SELECT value FROM meta WHERE name = ?", (_info_key(name),))
        return json.loads(rows[0][0]) if rows else None

    def set_info(self, name: str, value: Any) -> None:
        """Record a small JSON value (e.g. the embedding model) in the store's own metadata:
        durable when the store has a path, kept by :meth:`save`."""
        key = _info_key(name)
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"info {name!r} must be JSON-serializable: {exc}.") from None
        with self._write_lock, self._db.lock:
            self._check_writable()
            self._db.connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this store was closed; open it again with QuantizedStore.open.")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ValueError(f"{self.path} was opened read-only; open it without read_only=True to change it.")

    def _all_keys(self) -> np.ndarray:
        """Every key, sorted (cached until the next write)."""
        version, cached = self._version, self._universe
        if cached is not None and cached[0] == version:
            return cached[1]
        rows = self._db.query("SELECT key FROM docs ORDER BY key")
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self._universe = (version, keys)
        return keys

    def _keys_of(self, ids: list[str]) -> dict[str, int]:
        return dict(self._db.lookup("id", ids, "id, key"))

    def _matching(self, where: Filter, within: np.ndarray | None = None) -> np.ndarray:
        """Sorted keys of the documents matching a filter (among the keys ``within``)."""
        check_filter(where)
        with self._db.lock:
            self._check_open()
            query = self._db.connection.execute
            return matching_keys(where, lambda sql, params: query(sql, params).fetchall(), self._all_keys, within)

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        ids: Sequence[str],
        vectors: VectorsLike,
        texts: Sequence[str],
        metadatas: Sequence[dict | None] | None = None,
    ) -> list[str]:
        """Add documents, replacing those whose ids already exist. Returns the ids.

        ``vectors``: ``[n, dim]`` floats; ``ids``/``texts``/``metadatas`` one per vector (ids
        and texts are any valid Unicode strings, NUL included; metadata follows
        :func:`~quant_retriever.store.metadata_json`). Nothing changes if the call raises.
        """
        ids, texts, meta_json, metadata = check_documents(ids, texts, metadatas)
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
            staged = self._index.stage(vectors.to(self._index.device))  # 1. in the index's files, not yet known
            keys = staged.ids.tolist()
            fields = [row for key, m in zip(keys, metadata) for row in field_rows(key, m)]
            old_rows = [(k,) for k in old.values()]
            self._commit(  # 2. the commit point
                [
                    *self._removing(old_rows),
                    (INSERT_DOC, list(zip(keys, ids, texts, meta_json))),
                    ("INSERT INTO fields VALUES (?, ?, ?, ?, ?)", fields),
                    *([(keyword_index.INSERT, list(zip(keys, texts)))] if self._keywords else []),
                ],
                staged,
                np.fromiter(old.values(), dtype=np.int64, count=len(old)),
            )
        return ids

    def _commit(self, statements: list[tuple[str, list]], staged, dead: np.ndarray, changed=None) -> None:
        """Run ``statements`` in one transaction; as it commits, publish the staged rows (or
        none) and drop ``dead`` keys from the index in memory, as one step for readers. Then
        record the dead rows on disk, best effort (a crash or an error there is reconciled on
        opening)."""
        db = self._db.connection
        staged = staged if staged is not None or self._index is None else self._index.stage(None)
        with self._db.lock:
            try:
                db.execute("BEGIN IMMEDIATE")
                for sql, rows in statements:
                    if rows:
                        db.executemany(sql, rows)
                with self._publish_lock:
                    db.execute("COMMIT")
                    if staged is not None:
                        staged.publish(dead)
                    self._version += 1
                    added = staged.ids if staged is not None else dead[:0]
                    self._cache.remember(self._version, dead, added, dead[:0] if changed is None else changed)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if staged is not None:
                    staged.discard()  # the staged rows stay unpublished: rows SQLite never knew
                raise
        if self._index is not None and len(dead):
            self._index.record_deletions()

    def _as_metric(self, x: torch.Tensor) -> torch.Tensor:
        """Vectors as the metric scores them: unit length (zero stays zero) for cosine."""
        return split_norm(x)[0] if self.metric == "cosine" else x

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

    def _removing(self, rows: list[tuple[int]]) -> list[tuple[str, list]]:
        """The statements that remove the documents of ``rows`` (their keywords first: the
        keyword index reads the text it drops from ``docs``)."""
        return [
            *([(keyword_index.DELETE, rows)] if self._keywords else []),
            ("DELETE FROM docs WHERE key = ?", rows),
            ("DELETE FROM fields WHERE key = ?", rows),
        ]

    def _delete_keys(self, keys: np.ndarray) -> None:
        if len(keys):
            self._commit(self._removing([(int(k),) for k in keys]), None, keys)

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict | None]) -> list[str]:
        """Replace the metadata of stored documents, without embedding them again; returns the
        ids that existed (unknown ids are ignored). Filters see the change at once (texts and
        the keyword index do not change). Nothing changes if the call raises."""
        ids, _, meta_json, metadata = check_documents(ids, [""] * len(check_strings(ids, "ids")), metadatas)
        with self._write_lock:
            self._check_writable()
            found = self._keys_of(ids)
            chosen = [(found[i], j, m) for i, j, m in zip(ids, meta_json, metadata) if i in found]
            keys = np.array(sorted(k for k, _, _ in chosen), dtype=np.int64)
            if chosen:
                fields = [row for key, _, m in chosen for row in field_rows(key, m)]
                self._commit(
                    [
                        ("UPDATE docs SET metadata = ? WHERE key = ?", [(j, k) for k, j, _ in chosen]),
                        ("DELETE FROM fields WHERE key = ?", [(k,) for k, _, _ in chosen]),
                        ("INSERT INTO fields VALUES (?, ?, ?, ?, ?)", fields),
                    ],
                    None,
                    keys[:0],
                    changed=keys,
                )
            return [i for i in ids if i in found]

    def clear(self) -> None:
        """Delete every document."""
        with self._write_lock:
            self._check_writable()
            self._delete_keys(self._all_keys())

    def compact(self) -> None:
        """Reclaim the space of deleted and replaced documents now (it also happens on its own
        once they pass a quarter of the index; see :meth:`QuantizedIndex.compact`)."""
        with self._write_lock:
            self._check_writable()
            if self._index is not None:
                with self._publish_lock:
                    self._index.compact()
                    self._version += 1
                    self._cache.remember(self._version)

    # ------------------------------------------------------------------ lifecycle
    def save(self, path: str | os.PathLike) -> None:
        """Write a compacted copy of this store to ``path`` (a new or empty directory), via a
        temporary sibling and a rename, so a failure leaves nothing behind."""
        with self._write_lock:
            self._check_open()
            write_directory(path, lambda tmp: _write_copy(self, tmp))

    def save_replacing(self, path: str | os.PathLike) -> None:
        """:meth:`save` to ``path``, which may already hold a saved store: that one is replaced
        atomically (see :func:`quant_retriever.files.replace_directory`): a crash at any moment
        leaves the old or the new store at ``path``, never a mix. ``path`` holding anything but
        a store, or a store open for writing, is refused."""
        is_store = lambda p: file_kind(p / DB_FILE) == "a regular file"  # noqa: E731
        replace_directory(Path(path), self.save, is_store, "quant_retriever store", self)

    def verify(self) -> list[str]:
        """Cross-check SQLite, the index and its files; returns the problems, ``[]`` when consistent."""
        with self._write_lock:
            self._check_open()
            return problems(self)

    def close(self) -> None:
        """Close SQLite and the index and release the directory lock; later calls raise
        ``ValueError``. Everything written is already durable. A store opened several times in
        this process closes on the last ``close``."""
        with self._write_lock:
            if self._closed:
                return
            self._opens -= 1
            if self._opens > 0:
                return
            self._closed = True
            self._release()
