"""``QuantizedIndex``: compact codes in one device tensor, searched in two stages (see
:mod:`quant_retriever.index.search`), persisted in a directory of append-only files (see
:mod:`quant_retriever.index.directory`).

Nothing in the index depends on which vectors came first or how they were batched: every code
format is calibration-free (see :mod:`quant_retriever.codecs`).

Readers never wait for writers: every write builds the next immutable
:class:`~quant_retriever.index.snapshot.Snapshot` (codes view, row count, alive mask, id map)
and publishes it with one assignment; a search works on the snapshot it started with. So a
search sees a write wholly or not at all, and a search that starts after ``remove`` returned
never sees the removed ids.

Deleted and replaced rows stay in place until :meth:`QuantizedIndex.compact`, which runs by
itself once dead rows pass ``COMPACT_FRACTION`` of all rows (and ``COMPACT_MIN_DEAD``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quant_retriever.checks import IdsLike, VectorsLike, as_ids, as_vectors, automatic_ids, int_at_least, keyword_only
from quant_retriever.checks import check_read_only as _check_read_only
from quant_retriever.codecs import RESCORE_DTYPES, Codec, CodecName, RescoreDtype, make_codec
from quant_retriever.devices import resolve_device
from quant_retriever.files import DirectoryLock, fsync_dir, prepare_new_directory, write_directory
from quant_retriever.index.directory import MAX_DIM, IndexFiles, is_creation_leftover
from quant_retriever.index.opening import OPEN, open_shared, reload
from quant_retriever.index.search import Pipeline, SearchResult
from quant_retriever.index.snapshot import Selection, Snapshot
from quant_retriever.index.staging import Staged, record_deletions
from quant_retriever.index.verify import problems

__all__ = ["QuantizedIndex", "MemoryUsage", "check_settings"]

#: Automatic compaction: once dead rows are at least this fraction of all rows, and at least
#: ``COMPACT_MIN_DEAD`` of them.
COMPACT_FRACTION = 0.25
COMPACT_MIN_DEAD = 64


@dataclass(frozen=True)
class MemoryUsage:
    """``device_bytes``: allocated code storage and alive mask on the index device (including
    growth slack); ``disk_bytes``: the rescore copy on disk; ``bytes_per_vector``: device code
    bytes of one vector; ``disk_bytes_per_vector``: its rescore copy (0 without rescoring);
    ``host_bytes``: the id map and, when the device is not the CPU, the host copy of the alive
    mask."""

    device_bytes: int
    disk_bytes: int
    bytes_per_vector: int
    disk_bytes_per_vector: int
    host_bytes: int = 0


def check_settings(codec, rescore, device, block_size, rescore_dtype) -> None:
    """Validate index settings that do not depend on ``dim`` (``ValueError``/``TypeError``),
    without allocating anything: the stores call this before their first vectors arrive."""
    make_codec(codec, 8, block_size=block_size)
    if rescore is not None and not isinstance(rescore, bool):
        raise TypeError(f"rescore must be True, False or None; got {rescore!r}.")
    if rescore_dtype not in RESCORE_DTYPES:
        raise ValueError(f"rescore_dtype must be one of {', '.join(map(repr, RESCORE_DTYPES))}; got {rescore_dtype!r}.")
    resolve_device(device)


class QuantizedIndex:
    """Vectors as compact codes in one device tensor, rescored from a finer copy on disk.

    Scores are inner products (cosine for unit vectors). ``codec``: ``"int4"`` (block-wise,
    ``block_size`` elements per block), ``"binary"``, ``"int8"``, ``"fp16"`` or ``"fp32"``.
    ``rescore``: keep the rescore copy (``None``: for the quantized codes: int4, binary, rq*), in
    ``rescore_dtype`` ``"int8"`` (dim + 8 bytes per vector) or ``"fp16"`` (2 * dim + 4).
    ``path=None`` keeps everything in memory (the rescore copy in a temporary file); a
    ``path`` (a new or empty directory) makes the index persistent: every ``add``/``remove``
    that returned is on disk; reopen with :meth:`open`. ``with QuantizedIndex(...) as index:``
    closes it; ``id in index`` tells whether an id is searchable.

    Thread safety: writes are serialised by a lock; searches take no lock (see the module
    docstring) and may run in parallel with each other and with one write.

    An owner with a commit point of its own (the store) writes through :meth:`stage`,
    :meth:`record_deletions` and :meth:`restrict` (see :mod:`quant_retriever.index.staging`).
    """

    @keyword_only("codec", "rescore", "path", "device", "block_size")
    def __init__(
        self,
        dim: int,
        *,
        codec: CodecName = "int4",
        rescore: bool | None = None,
        path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        block_size: int = 64,
        rescore_dtype: RescoreDtype = "int8",
    ):
        dim = int_at_least(dim, "dim")
        if dim > MAX_DIM:
            raise ValueError(f"dim must be at most {MAX_DIM}; got {dim}.")
        check_settings(codec, rescore, device, block_size, rescore_dtype)
        codec_obj = make_codec(codec, dim, block_size=block_size)
        rescore = (not codec_obj.exact) if rescore is None else rescore
        if path is None:
            workdir = Path(tempfile.mkdtemp(prefix="quant_retriever_"))
            self._setup(IndexFiles(None, workdir, codec_obj, rescore, rescore_dtype), resolve_device(device), False)
            self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)
            self._snap = Snapshot.empty(codec_obj.row_bytes, self.device, self._files.new_rescore())
            return
        p = Path(path)
        lock = prepare_new_directory(p, "index", "QuantizedIndex.open", is_creation_leftover)
        self._setup(IndexFiles(p, p, codec_obj, rescore, rescore_dtype), resolve_device(device), False, lock)
        try:
            self._snap = Snapshot.empty(codec_obj.row_bytes, self.device, self._files.new_rescore())
            self._files.create(self._snap, self._next_id)  # the commit point of the creation
        except BaseException:
            self.close()
            raise
        with OPEN.lock():
            OPEN.put(p, self)

    def _setup(self, files: IndexFiles, device: torch.device, read_only: bool, lock: DirectoryLock | None = None):
        codec = files.codec
        self.dim, self.codec_name, self.device = codec.dim, codec.name, device
        self.block_size: int = codec.params().get("block_size", 64)
        self.rescore, self.rescore_dtype = files.rescore, files.rescore_dtype
        self._files, self._dir_lock, self._read_only = files, lock, read_only
        self._pipeline = Pipeline(codec, files.rescore_codec, device)
        self._lock = threading.RLock()
        self._next_id = 0
        self._closed = False
        self._restricted = False  # which rows are alive is the owner's word, not the deletions file's
        self._opens = 1  # opens sharing this object (see open)
        self._pending: list[np.ndarray] = []  # rows dead in memory, not yet recorded on disk
        self._snap: Snapshot | None = None

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._snap.n_alive

    def __contains__(self, id_: object) -> bool:
        if isinstance(id_, bool) or not isinstance(id_, (int, np.integer)):
            return False
        return 0 <= id_ < 2**63 and bool(self._snap.lookup(np.array([id_], dtype=np.int64))[0] >= 0)

    def __repr__(self) -> str:
        return (
            f"QuantizedIndex(dim={self.dim}, codec={self.codec_name!r}, rescore={self.rescore}, "
            f"vectors={len(self)}, device={self.device}, path={str(self.path) if self.path else None!r})"
        )

    @property
    def path(self) -> Path | None:
        """The directory a persistent index lives in (``None`` when in memory)."""
        return self._files.path

    @property
    def codec(self) -> Codec:
        """The code format object (see :mod:`quant_retriever.codecs`)."""
        return self._files.codec

    @property
    def read_only(self) -> bool:
        return self._read_only

    def ids(self) -> np.ndarray:
        """The ids of all searchable vectors, in insertion order."""
        snap = self._snap
        return snap.ids[snap.live_rows()].copy()

    def contains(self, ids: IdsLike) -> np.ndarray:
        """``[len(ids)]`` bool: which of ``ids`` are in the index."""
        return self._snap.lookup(as_ids(ids)) >= 0

    def snapshot(self) -> Snapshot:
        """The current immutable state (for a consistent multi-step read: pass it to
        :meth:`search` as ``snapshot=``; later writes do not change it)."""
        return self._snap

    def selection(self, ids: IdsLike | Selection) -> Selection:
        """A reusable restriction to ``ids`` for :meth:`search` (``allowed_ids=``): its rows are
        worked out once per version of the index, not once per search."""
        return Selection.of(ids)

    def search(
        self,
        queries: VectorsLike,
        k: int = 10,
        rescore_multiplier: int = 4,
        *,
        allowed_ids: IdsLike | Selection | None = None,
        snapshot: Snapshot | None = None,
    ) -> SearchResult:
        """Top-``k`` ids and inner-product scores for each query (``[q, dim]`` or ``[dim]``).

        ``rescore_multiplier``: with rescoring, ``k * rescore_multiplier`` first-stage
        candidates are rescored from the disk copy. ``allowed_ids`` (ids, or a
        :meth:`selection` of them) restricts the search to those ids before top-k (ids not in
        the index are ignored); a small selection scans only its own rows. Results have
        ``min(k, searchable vectors)`` columns. ``snapshot`` (from :meth:`snapshot`) searches
        that state instead of the latest.
        """
        q = as_vectors(queries, self.dim, "queries")
        k = int_at_least(k, "k")
        mult = int_at_least(rescore_multiplier, "rescore_multiplier")
        snap = self._snap if snapshot is None else snapshot  # everything below reads this snapshot only
        if self._closed:
            self._check_open()
        subset = None
        mask = None if snap.alive is None else snap.alive[: snap.rows]
        n_valid = snap.n_alive
        if allowed_ids is not None:
            rows, mask = self.selection(allowed_ids).resolve(snap, self.device)
            subset, n_valid = (rows if mask is None else None), len(rows)
        k = min(k, n_valid)
        if k == 0:
            empty = np.zeros((len(q), 0))
            return SearchResult(empty.astype(np.int64), empty.astype(np.float32))
        n_cand = min(k * mult if self.rescore else k, n_valid)
        scores, rows = self._pipeline.search(snap, q.to(self.device), mask, subset, n_valid, k, n_cand)
        return SearchResult(snap.ids[rows], scores)

    def get_vectors(self, ids: IdsLike) -> np.ndarray:
        """Best available reconstruction ``[n, dim]`` float32 of the given ids: the rescore
        copy when there is one, else the decoded codes."""
        arr = as_ids(ids)
        snap = self._snap
        rows = snap.lookup(arr)
        if (rows < 0).any():
            raise ValueError(f"ids not in the index: {arr[rows < 0][:10].tolist()}.")
        if snap.rescore is not None:
            return self._files.rescore_codec.decode(snap.rescore.gather(rows, snap.rows)).numpy()
        return self.codec.decode(snap.codes[torch.from_numpy(rows).to(self.device)]).cpu().numpy()

    def memory(self) -> MemoryUsage:
        """Bytes on the device, on disk, on the host, and per vector (see :class:`MemoryUsage`)."""
        snap = self._snap
        device = snap.codes.numel() + (snap.alive.numel() if snap.alive is not None else 0)
        host = snap.ids.nbytes + (sum(a.nbytes for a in snap.order) if snap.order is not None else 0)
        if snap.alive_host is not None and self.device.type != "cpu":
            host += snap.alive_host.nbytes
        disk = snap.rescore.nbytes if snap.rescore is not None else 0
        per_disk = self._files.rescore_codec.row_bytes if self.rescore else 0
        return MemoryUsage(device, disk, self.codec.row_bytes, per_disk, host)

    # ------------------------------------------------------------------ writing
    def add(self, vectors: VectorsLike, ids: IdsLike | None = None) -> np.ndarray:
        """Add ``vectors`` (``[n, dim]`` float array or tensor). Returns their int64 ids.

        ``ids`` (``[n]`` non-negative ints, unique, not yet in the index) or ``None`` for
        consecutive new ids. Nothing changes if the call raises.
        """
        x = as_vectors(vectors, self.dim, "vectors")
        with self._lock:
            self._check_writable()
            if ids is not None:
                ids = as_ids(ids, len(x))
                taken = ids[self._snap.lookup(ids) >= 0]
                if len(taken):
                    raise ValueError(f"ids already in the index: {taken[:10].tolist()}; remove them first.")
            staged = self._stage(x.to(self.device), ids)
            staged.publish()
            return staged.ids

    def stage(self, vectors: VectorsLike | None) -> Staged:
        """Write ``vectors`` as new rows with automatic ids (``None``: no rows) and commit them
        in the files, without making them searchable (see :mod:`~quant_retriever.index.staging`).
        Raises, changing nothing in memory, on failure."""
        self._check_writable()
        if vectors is None:
            snap = self._snap
            return Staged(self, snap, self._next_id, np.zeros(0, dtype=np.int64), self._files.checksums(snap))
        return self._stage(as_vectors(vectors, self.dim, "vectors").to(self.device), None)

    def _stage(self, x: torch.Tensor, ids: np.ndarray | None) -> Staged:
        snap = self._snap
        ids = automatic_ids(len(x), self._next_id) if ids is None else ids
        codes = self.codec.encode(x)
        sums = self._files.append(snap, x, codes, ids)
        new = snap.appended(codes, ids)
        next_id = max(self._next_id, int(ids.max()) + 1)
        # the commit point in the files; nothing is truncated on failure (the files may already
        # name these rows), the next append overwrites bytes past the committed rows
        self._files.commit(new, next_id, sums=sums)
        return Staged(self, new, next_id, ids, sums)

    def remove(self, ids: IdsLike) -> None:
        """Remove vectors by id. Unknown ids raise ``ValueError`` and nothing is removed.
        Compacts the index when dead rows pass the threshold (see :meth:`compact`)."""
        arr = as_ids(ids)
        with self._lock:
            self._check_writable()
            rows = self._snap.lookup(arr)
            if (rows < 0).any():
                raise ValueError(f"ids not in the index: {arr[rows < 0][:10].tolist()}.")
            if not len(rows):
                return
            new = self._snap.without(rows)
            self._files.record_deletions(new, self._next_id, np.concatenate([*self._pending, rows]))  # commit point
            self._pending, self._snap = [], new
            self._compact_if_worth_it()

    def record_deletions(self) -> None:
        """Record deletions a staged write published (see :func:`~.staging.record_deletions`)."""
        record_deletions(self)

    def restrict(self, ids: np.ndarray) -> np.ndarray:
        """A read-only owner's view: exactly the rows of ``ids`` are alive, whatever the
        deletions in the files say (the owner's records decide); in memory only. Returns the
        ids it lacks."""
        snap = self._snap
        self._restricted, self._snap = True, snap.only(ids)
        return np.setdiff1d(ids, snap.ids[: snap.rows][self._snap.alive_host[: snap.rows]])

    def _compact_if_worth_it(self) -> None:
        """Compact when dead rows pass the threshold. Called after a write's commit point, so a
        failure (a full disk) only warns: the write stands and compaction is tried again later."""
        snap = self._snap
        dead = snap.rows - snap.n_alive
        if not self._read_only and dead >= COMPACT_MIN_DEAD and dead >= COMPACT_FRACTION * snap.rows:
            try:
                self.compact()
            except (OSError, ValueError, MemoryError) as exc:
                warnings.warn(
                    f"quant_retriever: compaction of {self.path} postponed ({exc}).", RuntimeWarning, stacklevel=4
                )

    def compact(self) -> None:
        """Drop deleted and replaced rows from the device tensor, the files and the rescore
        copy, in place. Crash-safe: the new generation's files are complete before the manifest
        names them, so a crash at any moment leaves the old or the new state. Ids are kept."""
        with self._lock:
            self._check_writable()
            snap, files = self._snap, self._files
            if snap.rows == snap.n_alive:
                return
            old = files.generation
            new, sums = files.write_generation(
                files.workdir, old + 1, snap, snap.live_rows(), self._next_id, files.path is not None
            )
            files.generation, files.n_deleted, files.sums = old + 1, 0, {k: sums[k] for k in files.sums}
            self._snap, self._pending = new, []
            try:  # after the commit point: a failure only warns (the next open removes the old files)
                files.remove_generation(old)
                if files.path is not None:
                    fsync_dir(files.path)
            except OSError as exc:
                warnings.warn(
                    f"quant_retriever: {files.path} was compacted, but the old generation's files were not all "
                    f"removed ({exc}); the next writable open removes them.",
                    RuntimeWarning,
                    stacklevel=2,
                )

    # ------------------------------------------------------------------ lifecycle
    def save(self, path: str | os.PathLike) -> None:
        """Write a compacted copy (deleted rows dropped) to ``path``, a new or empty directory.

        Written to a temporary sibling and renamed into place, so a failure leaves nothing.
        """
        if self.path is not None and Path(path).resolve() == self.path.resolve():
            return  # a persistent index is always saved
        with self._lock:
            self._check_open()
            write_directory(path, self._write_copy)

    def _write_copy(self, directory: Path) -> None:
        snap = self._snap
        copy, _ = self._files.write_generation(directory, 0, snap, snap.live_rows(), self._next_id, True)
        if copy.rescore is not None:
            copy.rescore.close()

    @classmethod
    def open(
        cls, path: str | os.PathLike, device: str | torch.device | None = None, *, read_only: bool = False
    ) -> QuantizedIndex:
        """Open an index directory written by :meth:`save` or by a persistent index.

        Raises ``ValueError`` for a directory that is not an index, another format version,
        or files that fail a check (see :mod:`~quant_retriever.index.directory`). The opened
        index keeps persisting to ``path``. Opening a directory this process already has open
        for writing returns that same object (each ``open`` needs its own :meth:`close`);
        another process gets ``RuntimeError``.

        ``read_only=True`` needs no write permission and writes nothing: any number of
        read-only openers (in any process) may sit beside one writer. A read-only index sees
        the state committed when it was opened; :meth:`refresh` moves it to the latest.
        """
        index = cls._opened(path, device, read_only)
        index.remove_garbage()
        return index

    @classmethod
    def load(cls, path: str | os.PathLike, device=None, *, read_only: bool = False) -> QuantizedIndex:
        """Deprecated name of :meth:`open` (every persistent class reopens with ``open``)."""
        warnings.warn("QuantizedIndex.load is deprecated; use QuantizedIndex.open.", DeprecationWarning, stacklevel=2)
        return cls.open(path, device, read_only=read_only)

    @classmethod
    def _opened(cls, path: str | os.PathLike, device, read_only: bool) -> QuantizedIndex:
        """:meth:`open` without removing garbage: an owner with a commit point of its own (the
        store) checks its records against the index first, then calls :meth:`remove_garbage`."""
        return open_shared(cls, Path(path), device, _check_read_only(read_only))

    def remove_garbage(self) -> None:
        """Remove what an interrupted compaction left (a writable persistent index only; see
        :meth:`IndexFiles.remove_garbage`)."""
        if not self._read_only and self.path is not None:
            self._files.remove_garbage()

    def refresh(self) -> bool:
        """A read-only index: move to the latest committed state (returns whether it changed).
        A writable one always is at its latest state (returns False)."""
        if not self._read_only:
            return False
        with self._lock:
            self._check_open()
            return reload(self)

    def close(self) -> None:
        """Release a persistent index's directory lock and files (the data is already on
        disk); later calls raise ``ValueError``. An index opened several times in this process
        closes on the last ``close``."""
        with self._lock:
            if self._closed:
                return
            self._opens -= 1
            if self._opens > 0:
                return
            self._closed = True
            if self._snap is not None and self._snap.rescore is not None:
                self._snap.rescore.close()
            if self._dir_lock is not None:
                self._dir_lock.release()

    def __enter__(self) -> QuantizedIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify(self) -> list[str]:
        """Cross-check every part (in-memory state, the rescore copy, the files of a persistent
        index); returns the problems found, ``[]`` when consistent."""
        with self._lock:
            self._check_open()
            return problems(self)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this index was closed; open it again with QuantizedIndex.open.")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ValueError(f"{self.path} was opened read-only; open it without read_only=True to change it.")
