"""``QuantizedIndex``: compact codes in one device tensor, a chunked first-stage scan, and
rescoring from a finer copy (INT8 or FP16) on disk.

Search pipeline for ``k`` results and ``rescore_multiplier = m``:

1. queries are split into norm and direction (ranking by inner product does not depend on a
   query's norm), and the codec's first stage scans the codes chunk by chunk (see
   :meth:`QuantizedIndex._chunk_rows`), keeping the running top ``k * m`` rows per query;
   a codec may add a second stage (binary: a ``20 * k`` Hamming pass re-ranked by the float
   query against the +-1 codes);
2. with rescoring on, those rows are gathered from the memory-mapped rescore copy and
   scored again; the best ``k`` are kept and multiplied by the query norms.

Nothing in the index depends on which vectors came first or how they were batched: every
code format is calibration-free (see :mod:`quant_retriever.codecs`).

Peak extra memory of a search, beyond the codes: the scores of one chunk (at most
``SCORES_PER_CHUNK * 4`` = 16 MB, more only when a batch has over 4M/1024 queries), a decoded
chunk on the plain-torch paths (at most ``DECODED_PER_CHUNK * 4`` = 64 MB), and the candidates.
Binary codes on the CPU scan all rows in one step, keeping only per-query candidate lists.

Deleted and replaced rows stay in place until :meth:`QuantizedIndex.compact`, which runs by
itself once dead rows pass ``COMPACT_FRACTION`` of all rows (and ``COMPACT_MIN_DEAD``).

Readers never wait for writers: every write builds the next immutable :class:`_Snapshot`
(codes view, row count, alive mask, id map) and publishes it with one assignment; a search
works on the snapshot it started with. So a search sees a write wholly or not at all, and a
search that starts after ``remove`` returned never sees the removed ids.

On-disk layout of a saved or persistent index (a directory; ``G`` is the generation, which
:meth:`compact` advances):

================  ================================================================
file              content
================  ================================================================
manifest.json     format, version (2), dim, codec, codec_params, rescore,
                  row_bytes, rescore_dtype, generation, count (rows committed), n_deleted,
                  next_id, checksums (the CRC-32 of each file's committed bytes): the
                  commit point, rewritten atomically
codes.G.u8        ``count`` rows of ``row_bytes`` uint8 codes
ids.G.i64         ``count`` int64 ids, little-endian
deleted.G.i64     ``n_deleted`` int64 row numbers that were removed
rescore.G.<fmt>   the rescore copy (``int8`` or ``fp16`` rows), when rescoring
================  ================================================================

Files are append-only within a generation; bytes past what the manifest records (a torn
append) are ignored and overwritten by the next append. Opening checks every file the manifest
names (sizes, checksums, and that no stored number is NaN or infinite) before it changes
anything; only then does a writable open remove the files an interrupted compaction leaves
(generation ``G - 1`` or ``G + 1`` of the manifest's ``G``) and manifest temporaries. A file
that fails a check raises ``ValueError`` naming it, with every byte left as it was. Manifests
without checksums (the first format-2 releases) are checked for sizes and numbers only.
Version 1 directories (per-dimension INT8 calibration) are refused with a clear error.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from quant_retriever.codecs import (
    CODEC_NAMES,
    FLOAT32_MAX,
    RESCORE_DTYPES,
    Codec,
    CodecName,
    RescoreDtype,
    make_codec,
    split_norm,
)
from quant_retriever.devices import resolve_device
from quant_retriever.files import (
    Bool,
    DirectoryLock,
    Field,
    Int,
    Object,
    OneOf,
    OpenObjects,
    append_raw,
    checksum,
    file_checksum,
    file_kind,
    fsync_dir,
    open_file,
    prepare_new_directory,
    read_json,
    read_raw,
    recover_replacement,
    write_directory,
    write_json_atomic,
)
from quant_retriever.rescore import RescoreFile

__all__ = [
    "QuantizedIndex",
    "SearchResult",
    "MemoryUsage",
    "Selection",
    "resolve_device",
    "as_vectors",
    "check_settings",
]

FORMAT = "quant_retriever.index"
VERSION = 2
MANIFEST = "manifest.json"
MAX_DIM = 1 << 16
MAX_ID = 2**63 - 1
#: Scores held per scan step (``queries * rows``), and float elements of decoded rows per step
#: where a codec has to decode (plain-torch paths): 16 MB and 64 MB.
SCORES_PER_CHUNK = 1 << 22
DECODED_PER_CHUNK = 1 << 24
#: Rescoring scores every query against every distinct candidate when those number at most
#: this many times the candidates of one query (one native scan), else per query.
RESCORE_ALL_PAIRS = 4
#: A selection of fewer than 1/SUBSET_FRACTION of the rows is scanned as a gathered subset of
#: rows; larger ones as a mask over every row.
SUBSET_FRACTION = 16
#: Automatic compaction: once dead rows are at least this fraction of all rows, and at least
#: ``COMPACT_MIN_DEAD`` of them.
COMPACT_FRACTION = 0.25
COMPACT_MIN_DEAD = 64

_MANIFEST_SCHEMA = {
    "dim": Int(1, MAX_DIM),
    "codec": OneOf(*CODEC_NAMES),
    "codec_params": Object(),
    "row_bytes": Int(1, 1 << 20),
    "rescore": Bool(),
    "rescore_dtype": OneOf(*RESCORE_DTYPES),
    "generation": Int(0, 2**53),
    "count": Int(0, 2**40),
    "n_deleted": Int(0, 2**40),
    "next_id": Int(0, MAX_ID + 1),
}
_SUMMED = ("codes", "ids", "deleted", "rescore")
_OPTIONAL = {
    "checksums": Field(
        f"an object of CRC-32 values (keys among {', '.join(_SUMMED)})",
        lambda v: type(v) is dict and all(k in _SUMMED and type(c) is int and 0 <= c < 2**32 for k, c in v.items()),
    )
}
#: Persistent indexes open for writing in this process (opening one again shares it).
_OPEN = OpenObjects()
#: A read-only opener that finds a generation's files gone (a writer compacted meanwhile)
#: reads the new manifest and tries again this many times.
READ_RETRIES = 5
_DATA_FILE = re.compile(r"(codes|ids|deleted)\.(\d+)\.(u8|i64)|rescore\.(\d+)\.(int8|fp16)")
_MANIFEST_TEMP = re.compile(re.escape(MANIFEST) + r"\.[A-Za-z0-9_]+\.tmp")
_LOCKS = (".lock", ".readers")


def _files(generation: int, rescore_dtype: str) -> dict[str, str]:
    g = generation
    return {
        "codes": f"codes.{g}.u8",
        "ids": f"ids.{g}.i64",
        "deleted": f"deleted.{g}.i64",
        "rescore": f"rescore.{g}.{rescore_dtype}",
    }


def _generation_of(name: str) -> int | None:
    match = _DATA_FILE.fullmatch(name)
    return None if match is None else int(match.group(2) or match.group(4))


def _is_creation_leftover(entry: Path) -> bool:
    """What an interrupted creation leaves (the manifest, its commit point, is missing): the
    empty data files of generation 0 and manifest temporaries, as regular files."""
    if file_kind(entry) != "a regular file" or os.path.lexists(entry.parent / MANIFEST):
        return False
    return _MANIFEST_TEMP.fullmatch(entry.name) is not None or (
        _generation_of(entry.name) == 0 and entry.lstat().st_size == 0
    )


def empty_index_problem(path: Path) -> str | None:
    """Why ``path`` is not an index directory that provably holds no data (``None`` when it is
    one): only this format's files, as regular files, and a manifest, if any, committing no row."""
    if file_kind(path) != "a directory":
        return f"{path} is {file_kind(path) or 'missing'}, not an index directory"
    for entry in path.iterdir():
        known = (
            entry.name in (MANIFEST, *_LOCKS)
            or _MANIFEST_TEMP.fullmatch(entry.name) is not None
            or _generation_of(entry.name) is not None
        )
        if not known or file_kind(entry) != "a regular file":
            return f"{path} holds {entry.name!r}, which is not part of an empty index"
    if not os.path.lexists(path / MANIFEST):  # an interrupted creation: its data files are empty
        full = [e.name for e in path.iterdir() if _generation_of(e.name) is not None and e.lstat().st_size]
        return f"{path} has no manifest but data in {full[0]}" if full else None
    try:
        m = read_json(path / MANIFEST, FORMAT, VERSION, _MANIFEST_SCHEMA)
    except ValueError as exc:
        return str(exc)
    return f"{path / MANIFEST} commits {m['count']} rows" if m["count"] or m["n_deleted"] else None


def discard_empty_index(path: Path) -> None:
    """Remove the index directory ``path`` when it provably holds no data (see
    :func:`empty_index_problem`). An owner whose own commit point never referred to the index (a
    store killed before recording its dimension) calls this before creating one there.
    Anything else raises ``ValueError``, removing nothing."""
    problem = empty_index_problem(Path(path))
    if problem is not None:
        raise ValueError(f"{problem}; it was left as it is.")
    lock = DirectoryLock(path)
    try:
        for entry in Path(path).iterdir():
            entry.unlink()
        Path(path).rmdir()
    finally:
        lock.release()


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query: ``ids`` ``[q, k]`` int64 and ``scores`` ``[q, k]`` float32 (inner
    products, best first). ``k`` is capped at the number of searchable vectors."""

    ids: np.ndarray
    scores: np.ndarray

    def __repr__(self) -> str:
        q, k = self.ids.shape
        head = ", ".join(f"{i}:{s:.4f}" for i, s in zip(self.ids[0, :3], self.scores[0, :3])) if q and k else ""
        return f"SearchResult(queries={q}, k={k}, first=[{head}{', ...' if k > 3 else ''}])"


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


@dataclass(frozen=True)
class _Snapshot:
    """What a search reads, published whole by each write. Arrays are never modified at
    positions below ``rows`` once published (writes copy them), so a reader needs no lock."""

    codes: torch.Tensor  # [capacity, row_bytes] uint8 on the device; rows [0, rows) valid
    ids: np.ndarray  # [capacity] int64: row -> id
    alive_host: np.ndarray | None  # [capacity] bool, None while no row is dead
    alive: torch.Tensor | None  # the same on the device (shares memory on the CPU)
    order: tuple[np.ndarray, np.ndarray] | None  # (ids sorted, their rows); None: ids[:rows] sorted
    rows: int
    n_alive: int
    rescore: RescoreFile | None

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64 array), -1 for ids not (or no longer) in the index."""
        keys, rows_of = (self.ids[: self.rows], None) if self.order is None else self.order
        pos = np.searchsorted(keys, ids, side="right") - 1  # a re-added id's live row is its last
        safe = np.maximum(pos, 0)
        hit = (pos >= 0) & (keys[safe] == ids) if len(keys) else np.zeros(len(ids), dtype=bool)
        rows = np.where(hit, safe if rows_of is None else rows_of[safe], -1)
        if self.alive_host is not None:
            rows[hit] = np.where(self.alive_host[rows[hit]], rows[hit], -1)
        return rows

    def live_rows(self) -> np.ndarray:
        if self.alive_host is None:
            return np.arange(self.rows, dtype=np.int64)
        return np.flatnonzero(self.alive_host[: self.rows])


@dataclass(frozen=True)
class _Staged:
    """Rows written and committed on disk but not yet published (see ``_stage_add``)."""

    snapshot: _Snapshot
    next_id: int
    ids: np.ndarray
    sums: dict  # CRC-32 of every file with the staged rows (see QuantizedIndex._checksums)


def _merge_order(snap: _Snapshot, new_ids: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The id map after appending ``new_ids`` at rows ``start..``: still ``None`` while ids
    stay sorted (the common case: automatic ids), else sorted ``(ids, rows)`` arrays."""
    if snap.order is None:
        ordered = np.all(new_ids[1:] >= new_ids[:-1]) and (start == 0 or new_ids[0] >= snap.ids[start - 1])
        if ordered:
            return None
        keys, rows = snap.ids[:start], np.arange(start, dtype=np.int64)
    else:
        keys, rows = snap.order
    by = np.argsort(new_ids, kind="stable")
    add_keys, add_rows = new_ids[by], np.arange(start, start + len(new_ids), dtype=np.int64)[by]
    at = np.searchsorted(keys, add_keys, side="right")
    return np.insert(keys, at, add_keys), np.insert(rows, at, add_rows)


def _order_of(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if len(ids) < 2 or np.all(ids[1:] >= ids[:-1]):
        return None
    by = np.argsort(ids, kind="stable")
    return ids[by], by.astype(np.int64)


class Selection:
    """A set of ids to restrict searches to (see :meth:`QuantizedIndex.selection`), with its
    rows cached per index snapshot: a filter evaluated once costs nothing on later searches
    until the index changes. Ids not in the index are ignored."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self._cached: tuple[_Snapshot, np.ndarray, torch.Tensor | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Selection({len(self.ids)} ids)"

    def resolve(self, snap: _Snapshot, device: torch.device) -> tuple[np.ndarray, torch.Tensor | None]:
        """``(rows, mask)`` for ``snap``: the live rows of the ids (sorted), and a ``[rows]``
        bool mask on ``device`` unless the rows are few enough to be scanned as a subset."""
        cached = self._cached
        if cached is not None and cached[0] is snap:
            return cached[1], cached[2]
        rows = snap.lookup(self.ids)
        rows = np.sort(rows[rows >= 0])
        mask = None
        if len(rows) * SUBSET_FRACTION > snap.rows:
            host = np.zeros(snap.rows, dtype=bool)
            host[rows] = True
            mask = torch.from_numpy(host) if device.type == "cpu" else torch.from_numpy(host).to(device)
        self._cached = (snap, rows, mask)
        return rows, mask


def _float_range_error(t: torch.Tensor, what: str) -> ValueError:
    if t.dtype != torch.float32 and bool(torch.isfinite(t).all()):
        return ValueError(f"{what} has values outside the float32 range (|x| > {FLOAT32_MAX:.3e}).")
    return ValueError(f"{what} contains NaN or infinite values.")


def as_vectors(x, dim: int | None, what: str) -> torch.Tensor:
    """Validate a float array/tensor ``[n, dim]`` (or ``[dim]``; any ``dim`` when ``None``)
    -> contiguous float32 tensor on its own device. Raises ``TypeError``/``ValueError``."""
    if type(x) is np.ndarray and x.dtype == np.float32 and 0 < x.ndim <= 2:  # the usual query: few checks
        arr = x.reshape(1, -1) if x.ndim == 1 else x
        if arr.shape[0] and arr.shape[1] and arr.shape[1] == (dim or arr.shape[1]) and np.isfinite(arr).all():
            return torch.from_numpy(np.ascontiguousarray(arr))
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided or x.device.type == "meta":
            raise TypeError(f"{what} must be a dense tensor with data; got layout {x.layout} on {x.device.type}.")
        t = x.detach()
    elif isinstance(x, (np.ndarray, list, tuple)):
        try:
            arr = np.asarray(x)
        except ValueError:
            raise TypeError(f"{what} must be a numeric array; got ragged input.") from None
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{what} must be a numeric array; got dtype {arr.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{what} must be a numpy array or torch tensor; got {type(x).__name__}.")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{what} must hold floats; got dtype {t.dtype}.")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or (dim is not None and t.shape[1] != dim) or t.shape[1] == 0:
        raise ValueError(f"{what} must have shape (n, {dim or 'dim'}); got {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise ValueError(f"{what} is empty: expected at least one vector.")
    f = t.float()
    finite = np.isfinite(f.numpy()).all() if f.device.type == "cpu" else bool(torch.isfinite(f).all())
    if not finite:
        raise _float_range_error(t, what)
    return f.contiguous()


def new_ids_for(ids, n: int, next_id: int, present) -> np.ndarray:
    """The ids of ``n`` new vectors: ``ids`` checked (``present(ids)`` -> bool mask of the
    ones already in the index, which are refused), or ``next_id, next_id + 1, ...``."""
    if ids is None:
        if next_id + n - 1 > MAX_ID:
            raise ValueError(f"automatic ids are exhausted (the next would pass {MAX_ID}); pass ids explicitly.")
        return np.arange(next_id, next_id + n, dtype=np.int64)
    new_ids = as_ids(ids, n)
    taken = new_ids[present(new_ids)]
    if len(taken):
        raise ValueError(f"ids already in the index: {taken[:10].tolist()}; remove them first.")
    return new_ids


def as_ids(ids, n: int | None = None) -> np.ndarray:
    """Validate ids -> 1-D int64 numpy array (of length ``n`` when given), unique, in 0..2**63-1."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of integers; got a single {type(ids).__name__}.")
    arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional; got shape {arr.shape}.")
    if len(arr) and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"ids must be integers; got dtype {arr.dtype}.")
    if n is not None and len(arr) != n:
        raise ValueError(f"ids must have one id per vector. Got {len(arr)} ids and {n} vectors.")
    if len(arr) and arr.dtype == np.uint64 and int(arr.max()) > MAX_ID:
        raise ValueError(f"ids must be in 0..{MAX_ID}; got {int(arr.max())}.")
    arr = arr.astype(np.int64)
    if len(arr) and arr.min() < 0:
        raise ValueError(f"ids must be non-negative; got {int(arr.min())}.")
    if len(np.unique(arr)) != len(arr):
        raise ValueError("ids must be unique within one call; got duplicates.")
    return arr


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"{name} must be >= 1; got {value}.")
    return int(value)


def check_settings(codec, rescore, device, block_size, rescore_dtype) -> None:
    """Validate index settings that do not depend on ``dim`` (``ValueError``/``TypeError``),
    without allocating anything: the stores call this before their first vectors arrive."""
    make_codec(codec, 8, block_size=block_size)
    if rescore is not None and not isinstance(rescore, bool):
        raise TypeError(f"rescore must be True, False or None; got {rescore!r}.")
    if rescore_dtype not in RESCORE_DTYPES:
        raise ValueError(f"rescore_dtype must be one of {', '.join(map(repr, RESCORE_DTYPES))}; got {rescore_dtype!r}.")
    resolve_device(device)


def _empty_snapshot(codec: Codec, device: torch.device, rescore: RescoreFile | None) -> _Snapshot:
    codes = torch.zeros(0, codec.row_bytes, dtype=torch.uint8, device=device)
    return _Snapshot(codes, np.zeros(0, dtype=np.int64), None, None, None, 0, 0, rescore)


class QuantizedIndex:
    """Vectors as compact codes in one device tensor, rescored from a finer copy on disk.

    Scores are inner products (cosine for unit vectors). ``codec``: ``"int4"`` (block-wise,
    ``block_size`` elements per block), ``"binary"``, ``"int8"``, ``"fp16"`` or ``"fp32"``.
    ``rescore``: keep the rescore copy (``None``: for int4 and binary only), in
    ``rescore_dtype`` ``"int8"`` (dim + 8 bytes per vector) or ``"fp16"`` (2 * dim + 4).
    ``path=None`` keeps everything in memory (the rescore copy in a temporary file); a
    ``path`` (a new or empty directory) makes the index persistent: every ``add``/``remove``
    that returned is on disk; reopen with :meth:`load`.

    Thread safety: writes are serialised by a lock; searches take no lock (see the module
    docstring) and may run in parallel with each other and with one write.
    """

    def __init__(
        self,
        dim: int,
        codec: CodecName = "int4",
        rescore: bool | None = None,
        path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        block_size: int = 64,
        *,
        rescore_dtype: RescoreDtype = "int8",
    ):
        dim = _positive_int(dim, "dim")
        if dim > MAX_DIM:
            raise ValueError(f"dim must be at most {MAX_DIM}; got {dim}.")
        check_settings(codec, rescore, device, block_size, rescore_dtype)
        codec_obj = make_codec(codec, dim, block_size=block_size)
        self._setup(
            dim, codec_obj, (not codec_obj.exact) if rescore is None else rescore, rescore_dtype, resolve_device(device)
        )
        if path is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="quant_retriever_"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._workdir, True)
            self._start_empty()
        else:
            p = Path(path)
            self._dir_lock = prepare_new_directory(p, "index", "QuantizedIndex.load", _is_creation_leftover)
            self._workdir = self._path = p
            try:
                self._start_empty()
                for name in ("codes", "ids", "deleted"):
                    append_raw(p / self._file(name), 0, np.zeros(0, dtype=np.uint8))
                self._write_manifest(self._snap)  # the commit point of the creation
            except BaseException:
                self.close()
                raise
            with _OPEN.lock():
                _OPEN.put(p, self)

    def _setup(self, dim: int, codec: Codec, rescore: bool, rescore_dtype: str, device: torch.device) -> None:
        self.dim = dim
        self.codec_name: str = codec.name
        self.block_size: int = codec.params().get("block_size", 64)
        self.rescore = rescore
        self.rescore_dtype = rescore_dtype
        self.device = device
        self._codec = codec
        self._rescore_codec = make_codec(rescore_dtype, dim)
        self._lock = threading.RLock()
        self._chunk: int | None = None  # rows per scan step; None = sized by _chunk_rows
        self._generation = 0
        self._n_deleted = 0
        self._next_id = 0
        self._path: Path | None = None
        self._dir_lock: DirectoryLock | None = None
        self._closed = False
        self._read_only = False
        self._restricted = False  # which rows are alive is the owner's word, not the deletions file's
        self._opens = 1  # opens sharing this object (see load)
        self._pending: list[np.ndarray] = []  # rows dead in memory, not yet recorded on disk
        self._snap: _Snapshot | None = None
        self._sums = dict.fromkeys(("codes", "ids", "deleted"), 0)  # CRC-32 of each file's committed bytes

    def _start_empty(self) -> None:
        store = None
        if self.rescore:
            store = RescoreFile(
                self._workdir / self._file("rescore"), self._rescore_codec, create=True, durable=self._path is not None
            )
        self._snap = _empty_snapshot(self._codec, self.device, store)

    def _file(self, name: str, generation: int | None = None) -> str:
        return _files(self._generation if generation is None else generation, self.rescore_dtype)[name]

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return self._snap.n_alive

    def __repr__(self) -> str:
        return (
            f"QuantizedIndex(dim={self.dim}, codec={self.codec_name!r}, rescore={self.rescore}, "
            f"vectors={len(self)}, device={self.device}, path={str(self._path) if self._path else None!r})"
        )

    @property
    def path(self) -> Path | None:
        """The directory a persistent index lives in (``None`` when in memory)."""
        return self._path

    @property
    def codec(self) -> Codec:
        """The code format object (see :mod:`quant_retriever.codecs`)."""
        return self._codec

    def ids(self) -> np.ndarray:
        """The ids of all searchable vectors, in insertion order."""
        snap = self._snap
        return snap.ids[snap.live_rows()].copy()

    def contains(self, ids) -> np.ndarray:
        """``[len(ids)]`` bool: which of ``ids`` are in the index."""
        return self._snap.lookup(as_ids(ids)) >= 0

    def add(self, vectors, ids=None) -> np.ndarray:
        """Add ``vectors`` (``[n, dim]`` float array or tensor). Returns their int64 ids.

        ``ids`` (``[n]`` non-negative ints, unique, not yet in the index) or ``None`` for
        consecutive new ids. Nothing changes if the call raises.
        """
        x = as_vectors(vectors, self.dim, "vectors")
        with self._lock:
            self._check_writable()
            snap = self._snap
            new_ids = new_ids_for(ids, len(x), self._next_id, lambda i: snap.lookup(i) >= 0)
            self._publish(self._stage_add(x.to(self.device), new_ids))
            return new_ids

    def remove(self, ids) -> None:
        """Remove vectors by id. Unknown ids raise ``ValueError`` and nothing is removed.
        Compacts the index when dead rows pass the threshold (see :meth:`compact`)."""
        arr = as_ids(ids)
        with self._lock:
            self._check_writable()
            snap = self._snap
            rows = snap.lookup(arr)
            if (rows < 0).any():
                raise ValueError(f"ids not in the index: {arr[rows < 0][:10].tolist()}.")
            if not len(rows):
                return
            new = self._without(snap, rows)
            self._write_deletions(new, np.concatenate([*self._pending, rows]))  # the commit point
            self._pending, self._snap = [], new
            self._compact_if_worth_it()

    def snapshot(self) -> _Snapshot:
        """The current immutable state (for a consistent multi-step read: pass it to
        :meth:`search` as ``snapshot=``; later writes do not change it)."""
        return self._snap

    # ---- the write protocol of a store that keeps its own commit point (see store.py) ----
    def _stage_add(self, x: torch.Tensor, new_ids: np.ndarray | None = None) -> _Staged:
        """Write new rows to disk and commit them there (as rows the owner does not know yet
        if a crash follows) without publishing them in memory; automatic ids when ``new_ids``
        is None. Raises, changing nothing in memory, on any failure."""
        self._check_writable()
        if new_ids is None:
            if self._next_id + len(x) - 1 > MAX_ID:
                raise ValueError(f"automatic ids are exhausted (the next would pass {MAX_ID}); pass ids explicitly.")
            new_ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        snap = self._snap
        start, n = snap.rows, len(x)
        codes = self._codec.encode(x)
        grown = self._grown(snap, start + n)
        sums = self._checksums()
        if grown.rescore is not None:
            sums["rescore"] = grown.rescore.append(x)
        if self._path is not None:
            host = codes.cpu().numpy()
            sums.update(codes=checksum(host, sums["codes"]), ids=checksum(new_ids, sums["ids"]))
            append_raw(self._path / self._file("codes"), start * self._codec.row_bytes, host)
            append_raw(self._path / self._file("ids"), start * 8, new_ids)
        # positions past snap.rows: no published snapshot reads them
        grown.codes[start : start + n] = codes
        grown.ids[start : start + n] = new_ids
        if grown.alive_host is not None:
            grown.alive_host[start : start + n] = True
            if self.device.type != "cpu":
                grown.alive[start : start + n] = True
        new = replace(grown, rows=start + n, n_alive=snap.n_alive + n, order=_merge_order(snap, new_ids, start))
        next_id = max(self._next_id, int(new_ids.max()) + 1)
        if self._path is not None:
            # the commit point on disk; nothing is truncated on failure (the disk may already
            # name these rows), the next append overwrites bytes past the committed rows
            self._write_manifest(new, next_id=next_id, sums=sums)
        return _Staged(new, next_id, new_ids, sums)

    def _publish(self, staged: _Staged | None, dead: np.ndarray | None = None) -> None:
        """Make ``staged`` rows searchable and the ids ``dead`` (not in the index: ignored)
        unsearchable, in one snapshot. In memory only, and it cannot fail: the dead rows are
        recorded on disk by :meth:`_persist_pending` (a store reconciles them on opening)."""
        snap = self._snap
        if staged is not None:
            if staged.snapshot.rescore is not None:
                staged.snapshot.rescore.commit(staged.snapshot.rows, staged.sums["rescore"])
            snap, self._next_id = staged.snapshot, staged.next_id
            self._sums = {name: staged.sums[name] for name in self._sums}
        if dead is not None and len(dead):
            rows = snap.lookup(np.asarray(dead, dtype=np.int64))
            rows = np.unique(rows[rows >= 0])
            if len(rows):
                snap = self._without(snap, rows)
                self._pending.append(rows)
        self._snap = snap

    def _discard(self) -> None:
        """After a staged add was not published: put the manifest back to the published state,
        best effort (rows it still names are dropped when the owner reconciles on opening)."""
        if self._path is not None:
            try:
                self._write_manifest(self._snap)
            except OSError:
                pass

    def _persist_pending(self) -> None:
        """Record published deletions on disk, then compact when worth it. Best effort: an
        I/O error (a full disk) only warns; the deletions stay in memory, are retried by the
        next write, and a store reconciles them when it is opened again."""
        try:
            if self._pending and not self._read_only:
                self._write_deletions(self._snap, np.concatenate(self._pending))
                self._pending = []
            self._compact_if_worth_it()
        except OSError as exc:
            warnings.warn(
                f"quant_retriever: could not record deletions in {self._path} ({exc}); they stay in effect in "
                "memory, are retried by the next write and are reconciled when the store is opened again.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _restrict(self, ids: np.ndarray) -> np.ndarray:
        """A read-only view: exactly the rows of ``ids`` are alive, whatever the deletions on
        disk say (the owner's records decide); in memory only. Returns the ids it lacks."""
        snap = self._snap
        alive = np.zeros(len(snap.ids), dtype=bool)
        alive[: snap.rows] = np.isin(snap.ids[: snap.rows], ids)
        self._restricted = True
        self._snap = replace(snap, alive_host=alive, alive=self._on_device(alive), n_alive=int(alive.sum()))
        return np.setdiff1d(ids, snap.ids[: snap.rows][alive[: snap.rows]])

    def _without(self, snap: _Snapshot, rows: np.ndarray) -> _Snapshot:
        """``snap`` with ``rows`` dead (a copy of the alive mask: published masks never change)."""
        alive_host = np.ones(len(snap.ids), dtype=bool) if snap.alive_host is None else snap.alive_host.copy()
        alive_host[rows] = False
        return replace(snap, alive_host=alive_host, alive=self._on_device(alive_host), n_alive=snap.n_alive - len(rows))

    def _write_deletions(self, new: _Snapshot, rows: np.ndarray) -> None:
        """Append dead row numbers to the deletions file and commit them (persistent only)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if self._path is not None:
            crc = checksum(rows, self._sums["deleted"])
            append_raw(self._path / self._file("deleted"), self._n_deleted * 8, rows)
            n_deleted = self._n_deleted + len(rows)
            self._write_manifest(new, n_deleted=n_deleted, sums={**self._checksums(), "deleted": crc})  # commit point
            self._sums["deleted"] = crc
        self._n_deleted += len(rows)

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
                    f"quant_retriever: compaction of {self._path} postponed ({exc}).", RuntimeWarning, stacklevel=4
                )

    def selection(self, ids) -> Selection:
        """A reusable restriction to ``ids`` for :meth:`search` (``allowed_ids=``): its rows are
        worked out once per version of the index, not once per search."""
        if isinstance(ids, Selection):
            return ids
        if isinstance(ids, (str, bytes)):
            raise TypeError("allowed ids must be a sequence of integers; got a string.")
        arr = (
            ids.cpu().numpy()
            if isinstance(ids, torch.Tensor)
            else np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        )
        if len(arr) and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"allowed ids must be integers; got dtype {arr.dtype}.")
        arr = arr.astype(np.int64).reshape(-1)
        return Selection(arr if (arr[1:] > arr[:-1]).all() else np.unique(arr))  # filters give sorted keys

    def search(
        self, queries, k: int = 10, rescore_multiplier: int = 4, *, allowed_ids=None, snapshot: _Snapshot | None = None
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
        k = _positive_int(k, "k")
        mult = _positive_int(rescore_multiplier, "rescore_multiplier")
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
        scores, rows = self._search(snap, q.to(self.device), mask, subset, n_valid, k, mult)
        return SearchResult(snap.ids[rows], scores)

    def get_vectors(self, ids) -> np.ndarray:
        """Best available reconstruction ``[n, dim]`` float32 of the given ids: the rescore
        copy when there is one, else the decoded codes."""
        arr = as_ids(ids)
        snap = self._snap
        rows = snap.lookup(arr)
        if (rows < 0).any():
            raise ValueError(f"ids not in the index: {arr[rows < 0][:10].tolist()}.")
        if snap.rescore is not None:
            return self._rescore_codec.decode(snap.rescore.gather(rows, snap.rows)).numpy()
        return self._codec.decode(snap.codes[torch.from_numpy(rows).to(self.device)]).cpu().numpy()

    def memory(self) -> MemoryUsage:
        """Bytes on the device, on disk, on the host, and per vector (see :class:`MemoryUsage`)."""
        snap = self._snap
        device = snap.codes.numel() + (snap.alive.numel() if snap.alive is not None else 0)
        host = snap.ids.nbytes + (sum(a.nbytes for a in snap.order) if snap.order is not None else 0)
        if snap.alive_host is not None and self.device.type != "cpu":
            host += snap.alive_host.nbytes
        disk = snap.rescore.nbytes if snap.rescore is not None else 0
        per_disk = self._rescore_codec.row_bytes if self.rescore else 0
        return MemoryUsage(device, disk, self._codec.row_bytes, per_disk, host)

    def compact(self) -> None:
        """Drop deleted and replaced rows from the device tensor, the files and the rescore
        copy, in place. Crash-safe: the new generation's files are complete before the manifest
        names them, so a crash at any moment leaves the old or the new state. Ids are kept."""
        with self._lock:
            self._check_writable()
            snap = self._snap
            if snap.rows == snap.n_alive:
                return
            live = snap.live_rows()
            gen = self._generation + 1
            live_t = torch.from_numpy(live).to(self.device)
            codes = snap.codes[: snap.rows][live_t].contiguous()
            ids = snap.ids[live].copy()
            new_files = _files(gen, self.rescore_dtype)
            rescore = None
            sums = dict.fromkeys(self._sums, 0)
            try:
                if snap.rescore is not None:
                    crc = snap.rescore.copy_rows(self._workdir / new_files["rescore"], live)
                    rescore = RescoreFile(
                        self._workdir / new_files["rescore"],
                        self._rescore_codec,
                        len(live),
                        durable=self._path is not None,
                        crc=crc,
                    )
                    sums["rescore"] = crc
                new = _Snapshot(codes, ids, None, None, _order_of(ids), len(live), len(live), rescore)
                if self._path is not None:
                    host = codes.cpu().numpy()
                    sums.update(codes=checksum(host), ids=checksum(ids))
                    append_raw(self._path / new_files["codes"], 0, host)
                    append_raw(self._path / new_files["ids"], 0, ids)
                    append_raw(self._path / new_files["deleted"], 0, np.zeros(0, dtype=np.int64))
                    self._write_manifest(new, n_deleted=0, generation=gen, sums=sums)  # the commit point
            except BaseException:
                if rescore is not None:
                    rescore.close()
                for name in new_files.values():
                    (self._workdir / name).unlink(missing_ok=True)
                raise
            old_files = _files(self._generation, self.rescore_dtype)
            self._generation, self._n_deleted, self._snap, self._pending = gen, 0, new, []
            self._sums = {name: sums[name] for name in self._sums}
            try:  # after the commit point: a failure only warns (the next open removes the old files)
                for name in old_files.values():  # readers of the old snapshot keep their descriptor
                    (self._workdir / name).unlink(missing_ok=True)
                if self._path is not None:
                    fsync_dir(self._path)
            except OSError as exc:
                warnings.warn(
                    f"quant_retriever: {self._path} was compacted, but the old generation's files were not all "
                    f"removed ({exc}); the next writable open removes them.",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def save(self, path: str | os.PathLike) -> None:
        """Write a compacted copy (deleted rows dropped) to ``path``, a new or empty directory.

        Written to a temporary sibling and renamed into place, so a failure leaves nothing.
        """
        if self._path is not None and Path(path).resolve() == self._path.resolve():
            return  # a persistent index is always saved
        with self._lock:
            self._check_open()
            write_directory(path, lambda d: self._write_copy(d, self._snap))

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device | None = None, *, read_only: bool = False
    ) -> QuantizedIndex:
        """Open an index directory written by :meth:`save` or by a persistent index.

        Raises ``ValueError`` for a directory that is not an index, another format version,
        or inconsistent files. The opened index keeps persisting to ``path``. Opening a
        directory this process already has open for writing returns that same object (each
        ``load`` needs its own :meth:`close`); another process gets ``RuntimeError``.

        ``read_only=True`` needs no write permission and writes nothing: any number of
        read-only openers (in any process) may sit beside one writer. A read-only index sees
        the state committed when it was opened; :meth:`refresh` moves it to the latest.
        """
        index = cls._opened(path, device, read_only)
        index._remove_garbage()
        return index

    @classmethod
    def _opened(cls, path: str | os.PathLike, device, read_only: bool) -> QuantizedIndex:
        """:meth:`load` without removing garbage: an owner with a commit point of its own (the
        store) checks its records against the index first, then calls :meth:`_remove_garbage`."""
        path = Path(path)
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be True or False; got {read_only!r}.")
        if read_only:
            return cls._open(path, device, read_only=True)
        with _OPEN.lock():
            existing = _OPEN.get(path)
            if existing is not None:
                if device is not None and resolve_device(device) != existing.device:
                    raise ValueError(
                        f"{path} is already open in this process on {existing.device}; got device={device!r}."
                    )
                existing._opens += 1
                return existing
            index = cls._open(path, device)
            _OPEN.put(path, index)
            return index

    @property
    def read_only(self) -> bool:
        return self._read_only

    def refresh(self) -> bool:
        """A read-only index: move to the latest committed state (returns whether it changed).
        A writable one always is at its latest state (returns False)."""
        if not self._read_only:
            return False
        with self._lock:
            self._check_open()
            m = self._read_manifest(self._path)
            if (m["generation"], m["count"], m["n_deleted"]) == (self._generation, self._snap.rows, self._n_deleted):
                return False
            old = self._snap
            self._load_with_retries(m)
            if old.rescore is not None and old.rescore is not self._snap.rescore:
                old.rescore.close()
            return True

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

    def verify(self) -> list[str]:
        """Cross-check every part (in-memory state, the rescore copy, the files of a persistent
        index); returns the problems found, ``[]`` when consistent."""
        with self._lock:
            self._check_open()
            snap = self._snap
            problems = []
            live = snap.live_rows()
            live_ids = snap.ids[live]
            if len(np.unique(live_ids)) != len(live_ids):
                problems.append("live ids repeat")
            if len(live_ids) and not np.array_equal(snap.lookup(live_ids), live):
                problems.append("id -> row map disagrees with ids and deletions")
            pending = sum(len(p) for p in self._pending)
            if not self._restricted and snap.rows - snap.n_alive != self._n_deleted + pending:
                problems.append(f"{snap.rows - snap.n_alive} dead rows but {self._n_deleted} deletions recorded")
            if self.rescore:
                if snap.rescore is None or snap.rescore.count != snap.rows:
                    problems.append(
                        f"rescore copy has {snap.rescore.count if snap.rescore else 0} rows; codes have {snap.rows}"
                    )
                else:
                    try:
                        snap.rescore.check()
                        bad = snap.rescore.bad_rows(snap.rows)
                        if len(bad):
                            problems.append(f"{snap.rescore.path.name}: rows {bad[:5].tolist()} hold NaN or infinities")
                    except ValueError as exc:
                        problems.append(str(exc))
            bad = self._codec.bad_rows(snap.codes[: snap.rows])
            if len(bad):
                problems.append(f"codes: rows {bad[:5].tolist()} hold NaN or infinities")
            if self._path is not None:
                problems += self._verify_files(snap)
            return problems

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this index was closed; open it again with QuantizedIndex.load.")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise ValueError(f"{self._path} was opened read-only; open it without read_only=True to change it.")

    def _on_device(self, host: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(host)
        return t if self.device.type == "cpu" else t.to(self.device)

    def _grown(self, snap: _Snapshot, rows: int) -> _Snapshot:
        """``snap`` with storage for ``rows`` rows: the same arrays when they fit, else new ones
        grown by half (amortised O(1) per row); only positions past ``snap.rows`` differ."""
        cap = snap.codes.shape[0]
        if rows <= cap:
            return snap
        new_cap = max(rows, cap + cap // 2, 16)
        codes = torch.zeros(new_cap, snap.codes.shape[1], dtype=torch.uint8, device=self.device)
        codes[: snap.rows] = snap.codes[: snap.rows]
        ids = np.zeros(new_cap, dtype=np.int64)
        ids[: snap.rows] = snap.ids[: snap.rows]
        alive_host = alive = None
        if snap.alive_host is not None:
            alive_host = np.zeros(new_cap, dtype=bool)
            alive_host[: snap.rows] = snap.alive_host[: snap.rows]
            alive = self._on_device(alive_host)
        return replace(snap, codes=codes, ids=ids, alive_host=alive_host, alive=alive)

    def _scan(self, codes: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None, n_top: int):
        """Chunked first stage over ``codes [rows, row_bytes]``: running top-``n_top`` (scores,
        positions), each ``[q, n_top]``.

        ``mask`` (``[rows]`` bool, ``None`` = all rows) is applied before each chunk's top-k.
        Rows outside it score lowest and are never returned while ``n_top`` <= valid rows.
        """
        best_s = best_r = None
        n = codes.shape[0]
        step = self._chunk_rows(n, len(q))
        for start in range(0, n, step):
            stop = min(start + step, n)
            valid = None if mask is None else mask[start:stop]
            top_s, top_r = self._codec.top(q, codes[start:stop], valid, min(n_top, stop - start))
            if start:
                top_r += start
            if best_s is not None:
                top_s, top_r = torch.cat([best_s, top_s], dim=1), torch.cat([best_r, top_r], dim=1)
                if top_s.shape[1] > n_top:  # stable: equal scores keep the lower row (earlier chunk)
                    top_s, pos = torch.sort(top_s, dim=1, descending=True, stable=True)
                    top_s, top_r = top_s[:, :n_top], torch.gather(top_r, 1, pos[:, :n_top])
            best_s, best_r = top_s, top_r
        return best_s, best_r

    def _chunk_rows(self, rows: int, n_queries: int) -> int:
        """Rows per scan step: ``SCORES_PER_CHUNK / queries``, and no more than
        ``DECODED_PER_CHUNK / dim`` when the codec decodes rows to score them; every row
        when the codec selects without scores."""
        if self._chunk is not None:
            return self._chunk
        if self._codec.selects_in_place(self.device):
            return min(max(rows, 1), 1 << 30)
        step = SCORES_PER_CHUNK // n_queries
        if not self._codec.scans_in_place(self.device):
            step = min(step, DECODED_PER_CHUNK // self.dim)
        return max(step, 1024)

    def _search(self, snap: _Snapshot, q: torch.Tensor, mask, subset, n_valid: int, k: int, mult: int):
        """Top-``k`` (scores, rows: ``[q, k]`` float32 and int64 numpy) among ``n_valid`` rows:
        those of ``mask``, or the row numbers ``subset`` (a small selection, gathered)."""
        u, qnorm = split_norm(q)  # ranking does not depend on the query norm
        n_cand = min(k * mult if self.rescore else k, n_valid)
        if subset is None:
            codes = snap.codes[: snap.rows]
        else:
            subset_t = torch.from_numpy(subset).to(self.device)
            codes = snap.codes[subset_t]
        s, rows = self._codec.candidates(
            u, codes, mask, n_valid, n_cand, k, lambda n: self._scan(codes, u, mask, min(n, n_valid))
        )
        if subset is not None:
            rows = subset_t[rows]
        if snap.rescore is not None:
            one = rows.shape[0] == 1  # one query's candidates are distinct rows already, in order
            if one and self.device.type == "cpu":  # read in place, scored and ranked in one native call
                top = snap.rescore.top(u, float(qnorm[0]), rows[0], k, snap.rows)
                if top is not None:
                    return top[0][None], rows[0].numpy()[top[1]][None]
            uniq, inverse = (rows[0].cpu().numpy(), None) if one else np.unique(rows.cpu().numpy(), return_inverse=True)
            cand = snap.rescore.gather(uniq, snap.rows)  # read once per distinct row, for all queries
            broken = self._rescore_codec.bad_rows(cand)  # a damaged file's rows rank last
            if self.device.type == "cuda":  # one pinned, asynchronous copy to the GPU
                cand = cand.pin_memory().to(self.device, non_blocking=True)
            if one:
                s = self._rescore_codec.score(u, cand)
            else:
                inverse = torch.from_numpy(inverse.reshape(rows.shape)).to(self.device)
                if len(uniq) <= RESCORE_ALL_PAIRS * rows.shape[1]:  # few queries: one scan of every candidate
                    s = torch.gather(self._rescore_codec.score(u, cand), 1, inverse)
                else:  # each query against its own candidates only
                    s = self._rescore_codec.rescore(u, cand[inverse.reshape(-1)].view(*rows.shape, -1))
            if len(broken):
                hit = torch.zeros(len(uniq), dtype=torch.bool, device=s.device)
                hit[torch.from_numpy(broken).to(s.device)] = True
                s = s.float().masked_fill(hit[None] if one else hit[inverse], float("-inf"))
        s, pos = torch.sort(s.float(), dim=1, descending=True, stable=True)  # ties: first-stage order
        s, pos = s[:, :k], pos[:, :k]
        scaled = s.cpu().numpy().astype(np.float64) * qnorm.cpu().numpy().astype(np.float64)[:, None]
        scaled = np.fmin(np.fmax(scaled, -FLOAT32_MAX, out=scaled), FLOAT32_MAX, out=scaled)  # NaN (-inf * 0) -> -max
        return scaled.astype(np.float32), torch.gather(rows, 1, pos).cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def _checksums(self) -> dict:
        """The CRC-32 of every file's committed bytes, as the published state has them."""
        sums = dict(self._sums)
        if self._snap is not None and self._snap.rescore is not None:
            sums["rescore"] = self._snap.rescore.crc
        return sums

    def _manifest(self, snap: _Snapshot, n_deleted: int, next_id: int, generation: int, sums: dict) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "codec": self.codec_name,
            "codec_params": self._codec.params(),
            "row_bytes": self._codec.row_bytes,
            "rescore": self.rescore,
            "rescore_dtype": self.rescore_dtype,
            "generation": generation,
            "count": snap.rows,
            "n_deleted": n_deleted,
            "next_id": next_id,
            "checksums": sums,
        }

    def _write_manifest(self, snap: _Snapshot, *, n_deleted=None, next_id=None, generation=None, sums=None) -> None:
        m = self._manifest(
            snap,
            self._n_deleted if n_deleted is None else n_deleted,
            self._next_id if next_id is None else next_id,
            self._generation if generation is None else generation,
            self._checksums() if sums is None else sums,
        )
        write_json_atomic(self._path / MANIFEST, m)

    def _write_copy(self, directory: Path, snap: _Snapshot) -> None:
        """A compacted copy, generation 0, into ``directory``."""
        live = snap.live_rows()
        files = _files(0, self.rescore_dtype)
        codes = snap.codes[: snap.rows][torch.from_numpy(live).to(self.device)].cpu().numpy()
        ids = snap.ids[live]
        append_raw(directory / files["codes"], 0, codes)
        append_raw(directory / files["ids"], 0, ids)
        append_raw(directory / files["deleted"], 0, np.zeros(0, dtype=np.int64))
        sums = {"codes": checksum(codes), "ids": checksum(ids), "deleted": 0}
        if snap.rescore is not None:
            sums["rescore"] = snap.rescore.copy_rows(directory / files["rescore"], live)
        copy = replace(snap, rows=len(live))
        write_json_atomic(directory / MANIFEST, self._manifest(copy, 0, self._next_id, 0, sums))

    def _verify_files(self, snap: _Snapshot) -> list[str]:
        problems = []
        expect = {"codes": snap.rows * self._codec.row_bytes, "ids": snap.rows * 8, "deleted": self._n_deleted * 8}
        if snap.rescore is not None:
            expect["rescore"] = snap.rescore.nbytes
        sums = self._checksums()
        for kind, size in expect.items():
            name = self._file(kind)
            try:
                fd = open_file(self._path / name, os.O_RDONLY)
            except (OSError, ValueError) as exc:
                problems.append(f"{name}: {exc}")
                continue
            try:
                found = os.fstat(fd).st_size
                if found < size:
                    problems.append(f"{name}: {found} bytes on disk, {size} committed")
                elif file_checksum(fd, size) != sums[kind]:
                    problems.append(f"{name}: the committed bytes on disk do not match their checksum")
            finally:
                os.close(fd)
        try:
            on_disk = self._read_manifest(self._path)
            if on_disk.get("checksums", sums) != sums:
                problems.append("manifest.json records other checksums than the open index's")
            if (on_disk["count"], on_disk["n_deleted"], on_disk["generation"]) != (
                snap.rows,
                self._n_deleted,
                self._generation,
            ):
                problems.append("manifest.json disagrees with the open index")
            deleted = read_raw(self._path / self._file("deleted"), np.int64, self._n_deleted)
            alive = np.ones(snap.rows, dtype=bool)
            alive[np.concatenate([deleted, *self._pending])] = False
            live_now = snap.alive_host[: snap.rows] if snap.alive_host is not None else alive
            if not self._restricted and not np.array_equal(alive, live_now):
                problems.append("deleted rows on disk disagree with the open index")
        except (ValueError, IndexError) as exc:
            problems.append(str(exc))
        return problems

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        return read_json(path / MANIFEST, FORMAT, VERSION, _MANIFEST_SCHEMA, _OPTIONAL)

    @classmethod
    def _open(cls, path: Path, device, read_only: bool = False) -> QuantizedIndex:
        path = recover_replacement(path, writable=not read_only)
        cls._read_manifest(path)  # an index at all? (before the lock file is created in it)
        lock = DirectoryLock(path, shared=read_only)
        try:
            m = cls._read_manifest(path)  # again, locked: a writer that just closed may have committed since
            codec = cls._codec_of(m, path / MANIFEST)
            index = cls.__new__(cls)
            index._setup(m["dim"], codec, m["rescore"], m["rescore_dtype"], resolve_device(device))
        except BaseException:
            lock.release()
            raise
        index._read_only, index._dir_lock = read_only, lock
        try:
            index._workdir = index._path = path
            index._load_with_retries(m)
        except BaseException:
            index.close()
            raise
        return index

    @staticmethod
    def _codec_of(m: dict, where: Path) -> Codec:
        try:
            codec = make_codec(m["codec"], m["dim"], **m["codec_params"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: field 'codec_params' is invalid ({exc}).") from None
        if codec.params() != m["codec_params"]:
            raise ValueError(f"{where}: field 'codec_params' must be {codec.params()!r} for codec {m['codec']!r}.")
        if codec.row_bytes != m["row_bytes"]:
            raise ValueError(
                f"{where}: field 'row_bytes' is {m['row_bytes']} but codec {codec!r} has {codec.row_bytes}."
            )
        return codec

    def _load_with_retries(self, m: dict) -> None:
        """Load the files ``m`` names; a read-only opener that loses a race with a compacting
        writer (the files are gone) reads the new manifest and tries again."""
        for attempt in range(READ_RETRIES + 1):
            try:
                return self._load_files(m)
            except ValueError:
                if not self._read_only or attempt == READ_RETRIES:
                    raise
                fresh = self._read_manifest(self._path)
                if fresh["generation"] == m["generation"]:
                    raise
                m = fresh

    def _load_files(self, m: dict) -> None:
        """Read and check every file ``m`` names, then (writable) remove the garbage an
        interrupted compaction left; nothing changes, on disk or here, before every check passed."""
        path, generation = self._path, m["generation"]
        count, n_deleted, next_id = m["count"], m["n_deleted"], m["next_id"]
        if n_deleted > count:
            raise ValueError(f"{path / MANIFEST}: n_deleted ({n_deleted}) is larger than count ({count}).")
        names = _files(generation, self.rescore_dtype)
        sums = m.get("checksums", {})
        codes = read_raw(path / names["codes"], np.uint8, count, self._codec.row_bytes)
        ids = read_raw(path / names["ids"], np.int64, count)
        deleted = read_raw(path / names["deleted"], np.int64, n_deleted)
        for name, data in (("codes", codes), ("ids", ids), ("deleted", deleted)):
            if name in sums and checksum(data) != sums[name]:
                raise ValueError(
                    f"{path / names[name]}: its first {data.nbytes} bytes do not match the checksum in {MANIFEST}; "
                    "the file was damaged, or comes from another index or generation."
                )
        if len(deleted) and (deleted.min() < 0 or deleted.max() >= count or len(np.unique(deleted)) != len(deleted)):
            raise ValueError(f"{path / names['deleted']}: row numbers repeat or fall outside 0..{count - 1}.")
        alive_host = None
        if n_deleted:
            alive_host = np.ones(count, dtype=bool)
            alive_host[deleted] = False
        live_ids = ids if alive_host is None else ids[alive_host]
        if len(live_ids) and (live_ids.min() < 0 or len(np.unique(live_ids)) != len(live_ids)):
            raise ValueError(f"{path / names['ids']}: ids are negative or repeated.")
        codes_t = torch.from_numpy(codes.reshape(count, self._codec.row_bytes))
        bad = self._codec.bad_rows(codes_t)
        if len(bad):
            raise ValueError(
                f"{path / names['codes']}: rows {bad[:5].tolist()} hold NaN or infinite numbers, which no encoder "
                "writes; the file is damaged."
            )
        rescore = None
        if self.rescore:
            rescore = RescoreFile(
                path / names["rescore"], self._rescore_codec, count, read_only=self._read_only, crc=sums.get("rescore")
            )
        self._snap = _Snapshot(
            codes_t.to(self.device),
            ids,
            alive_host,
            None if alive_host is None else self._on_device(alive_host),
            _order_of(ids),
            count,
            count - n_deleted,
            rescore,
        )
        self._generation, self._n_deleted, self._restricted = generation, n_deleted, False
        self._sums = {"codes": checksum(codes), "ids": checksum(ids), "deleted": checksum(deleted)}
        self._next_id = max(next_id, int(ids.max()) + 1 if count else 0)

    def _remove_garbage(self) -> None:
        """Remove what the write protocol provably leaves behind, once the files of the current
        generation ``G`` were checked (a writable index only): the other generation of an
        interrupted compaction (``G - 1``, killed after its commit; ``G + 1``, before it) and
        manifest temporaries, as regular files. Anything else is left alone."""
        if self._read_only or self._path is None:
            return
        generation = self._generation
        for entry in self._path.iterdir():
            if file_kind(entry) != "a regular file":
                continue
            if _generation_of(entry.name) in (generation - 1, generation + 1) or _MANIFEST_TEMP.fullmatch(entry.name):
                entry.unlink()
