"""``QuantizedIndex``: compact codes in one device tensor, a chunked first-stage scan, and
exact-enough rescoring from the INT8 copy on disk.

Search pipeline for ``k`` results and ``rescore_multiplier = m``:

1. scan the codes chunk by chunk (see :meth:`QuantizedIndex._chunk_rows`), keeping the running
   top ``k * m`` rows per query (binary: the top ``max(k * m, 20 * k)`` by Hamming distance,
   then re-ranked by the float query against the +-1 codes down to ``k * m``);
2. with rescoring on, gather those rows from the INT8 memory map, dequantize, score them with
   the float query and keep the best ``k``.

Peak extra memory of a search, beyond the codes: the scores of one chunk (at most
``SCORES_PER_CHUNK * 4`` = 16 MB, more only when a batch has over 4M/1024 queries), a decoded
chunk on the plain-torch paths (at most ``DECODED_PER_CHUNK * 4`` = 64 MB), and the candidates
(``queries * k * m * dim * 4`` bytes). It does not grow with the number of vectors. Binary
codes on the CPU scan all rows in one step: the native kernel keeps only per-query candidate
lists (about ``threads * queries * 3 * n_top * 8`` bytes), no score per row.

On-disk layout of a saved or persistent index (a directory):

================  ================================================================
file              content
================  ================================================================
manifest.json     format, version, dim, codec, block_size, rescore, count (rows
                  committed), n_deleted, next_id, int8 calibration (lo, scale)
codes.u8          ``count`` rows of ``row_bytes`` uint8 codes
ids.i64           ``count`` int64 ids, little-endian
deleted.i64       ``n_deleted`` int64 row numbers that were removed
rescore.int8/json the INT8 copy (see :mod:`quant_retriever.rescore`), when rescoring
================  ================================================================

Files are append-only; the manifest (rewritten atomically) is the commit point, and bytes
past what it records are cut when the directory is opened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from quant_retriever.codecs import CODEC_NAMES, Codec, CodecName, CodecParams, binary, int8, make_codec
from quant_retriever.files import DirectoryLock, append_raw, read_json, read_raw, write_directory, write_json_atomic
from quant_retriever.rescore import RescoreStore

__all__ = ["QuantizedIndex", "SearchResult", "MemoryUsage", "resolve_device"]

FORMAT = "quant_retriever.index"
VERSION = 1
MANIFEST = "manifest.json"
#: Scores held per scan step (``queries * rows``), and float elements of decoded rows per step
#: where a codec has to decode (plain-torch paths): 16 MB and 64 MB.
SCORES_PER_CHUNK = 1 << 22
DECODED_PER_CHUNK = 1 << 24
#: Binary search: width of the Hamming pass, as a multiple of ``k``.
BINARY_WIDEN = 20


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N'; got {device!r} ({exc}).") from None


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
    """``device_bytes``: allocated code storage on the device (including growth slack);
    ``disk_bytes``: the INT8 rescore copy on disk; ``bytes_per_vector``: device code bytes of
    one vector; ``disk_bytes_per_vector``: its INT8 copy (0 without rescoring)."""

    device_bytes: int
    disk_bytes: int
    bytes_per_vector: int
    disk_bytes_per_vector: int


def as_vectors(x, dim: int | None, what: str) -> torch.Tensor:
    """Validate a float array/tensor ``[n, dim]`` (or ``[dim]``; any ``dim`` when ``None``)
    -> contiguous float32 CPU-or-device tensor. Raises ``TypeError``/``ValueError``."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"{what} must be a numeric array; got ragged or non-numeric input.")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{what} must be a numpy array or torch tensor; got {type(x).__name__}.")
    if not (t.dtype.is_floating_point):
        raise TypeError(f"{what} must hold floats; got dtype {t.dtype}.")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or (dim is not None and t.shape[1] != dim) or t.shape[1] == 0:
        raise ValueError(f"{what} must have shape (n, {dim or 'dim'}); got {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise ValueError(f"{what} is empty: expected at least one vector.")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contains NaN or infinite values.")
    return t.contiguous()


def _as_ids(ids, n: int | None = None) -> np.ndarray:
    """Validate ids -> 1-D int64 numpy array (of length ``n`` when given), unique and non-negative."""
    arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional; got shape {arr.shape}.")
    if len(arr) and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integers; got dtype {arr.dtype}.")
    if n is not None and len(arr) != n:
        raise ValueError(f"ids must have one id per vector. Got {len(arr)} ids and {n} vectors.")
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


class QuantizedIndex:
    """Vectors as compact codes in one device tensor, rescored from an INT8 copy on disk.

    Scores are inner products (cosine for unit vectors). Thread safety: one writer and any
    number of readers; ``add``/``remove`` and ``search`` take an internal lock around the
    state they share, so a search never sees a half-applied write.
    """

    def __init__(
        self,
        dim: int,
        codec: CodecName = "int4",
        rescore: bool | None = None,
        path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        block_size: int = 64,
    ):
        """Create an empty index.

        ``rescore=None`` keeps the INT8 copy for the lossy codecs (int4, binary) and skips it
        for int8/fp16/fp32, whose first-stage scores are already at least as exact.
        ``path=None`` keeps codes in memory and the INT8 copy in a temporary directory; a
        ``path`` (a new or empty directory) persists every ``add``/``remove`` there; reopen it
        with :meth:`load`.
        """
        dim = _positive_int(dim, "dim")
        block_size = _positive_int(block_size, "block_size")
        if block_size % 8:
            raise ValueError(f"block_size must be a multiple of 8; got {block_size}.")
        codec_obj = make_codec(codec, CodecParams(dim=dim, block_size=block_size))
        if rescore is not None and not isinstance(rescore, bool):
            raise TypeError(f"rescore must be True, False or None; got {rescore!r}.")
        self.dim = dim
        self.codec_name: str = codec
        self.block_size = block_size
        self.rescore = (not codec_obj.exact_as_int8) if rescore is None else rescore
        self.device = resolve_device(device)
        self._codec = codec_obj
        self._lock = threading.RLock()
        self._chunk: int | None = None  # rows per scan step; None = sized by _chunk_rows
        self._codes = torch.zeros(0, codec_obj.row_bytes, dtype=torch.uint8, device=self.device)
        self._alive = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._ids = np.zeros(0, dtype=np.int64)
        self._rows = 0  # rows used (alive or deleted)
        self._row_of: dict[int, int] = {}  # id -> row, alive rows only
        self._deleted: list[int] = []  # removed row numbers, in order
        self._next_id = 0
        self._store: RescoreStore | None = None
        self._path: Path | None = None
        self._dir_lock: DirectoryLock | None = None
        if path is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="quant_retriever_"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._workdir, True)
        else:
            p = Path(path)
            if p.exists() and (not p.is_dir() or any(p.iterdir())):
                raise ValueError(f"path {p} must be a new or empty directory; reopen an index with QuantizedIndex.load.")
            p.mkdir(parents=True, exist_ok=True)
            self._dir_lock = DirectoryLock(p)
            self._workdir = self._path = p
            self._write_manifest()

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self._row_of)

    def __repr__(self) -> str:
        return (
            f"QuantizedIndex(dim={self.dim}, codec={self.codec_name!r}, rescore={self.rescore}, "
            f"vectors={len(self)}, device={self.device}, path={str(self._path) if self._path else None!r})"
        )

    @property
    def path(self) -> Path | None:
        """The directory a persistent index lives in (``None`` when in memory)."""
        return self._path

    def ids(self) -> np.ndarray:
        """The ids of all searchable vectors, in insertion order."""
        with self._lock:
            rows = np.flatnonzero(self._alive[: self._rows].cpu().numpy())
            return self._ids[rows].copy()

    def add(self, vectors, ids=None) -> np.ndarray:
        """Add ``vectors`` (``[n, dim]`` float array or tensor). Returns their int64 ids.

        ``ids`` (``[n]`` non-negative ints, unique, not yet in the index) or ``None`` for
        consecutive new ids. Nothing changes if the call raises.
        """
        x = as_vectors(vectors, self.dim, "vectors")
        with self._lock:
            if ids is None:
                new_ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            else:
                new_ids = _as_ids(ids, len(x))
                taken = [int(i) for i in new_ids if int(i) in self._row_of]
                if taken:
                    raise ValueError(f"ids already in the index: {taken[:10]}; remove them first.")
            self._add(x.to(self.device), new_ids)
            return new_ids

    def remove(self, ids) -> None:
        """Remove vectors by id. Unknown ids raise ``ValueError`` and nothing is removed."""
        with self._lock:
            arr, rows = self._rows_for(ids)
            if self._path is not None:
                append_raw(self._path / "deleted.i64", len(self._deleted) * 8, rows)
            for i in arr:
                del self._row_of[int(i)]
            self._deleted.extend(rows.tolist())
            self._alive[torch.from_numpy(rows).to(self.device)] = False
            if self._path is not None:
                self._write_manifest()

    def search(self, queries, k: int = 10, rescore_multiplier: int = 4, *, allowed_ids=None) -> SearchResult:
        """Top-``k`` ids and inner-product scores for each query (``[q, dim]`` or ``[dim]``).

        ``rescore_multiplier``: with rescoring, ``k * rescore_multiplier`` first-stage
        candidates are rescored from the INT8 copy. ``allowed_ids`` restricts the search to
        those ids before top-k (ids not in the index are ignored). Results have
        ``min(k, searchable vectors)`` columns.
        """
        q = as_vectors(queries, self.dim, "queries")
        k = _positive_int(k, "k")
        mult = _positive_int(rescore_multiplier, "rescore_multiplier")
        with self._lock:
            mask = None if len(self._row_of) == self._rows else self._alive[: self._rows]
            if allowed_ids is not None:
                mask = self._row_mask(allowed_ids) if mask is None else mask & self._row_mask(allowed_ids)
            n_valid = self._rows if mask is None else int(mask.sum())
            k = min(k, n_valid)
            if k == 0:
                empty = np.zeros((len(q), 0))
                return SearchResult(empty.astype(np.int64), empty.astype(np.float32))
            scores, rows = self._search(q.to(self.device), mask, n_valid, k, mult)
            return SearchResult(self._ids[rows.cpu().numpy()], scores.cpu().numpy().astype(np.float32))

    def get_vectors(self, ids) -> np.ndarray:
        """Best available reconstruction ``[n, dim]`` float32 of the given ids: the INT8 copy
        when there is one, else the decoded codes."""
        with self._lock:
            _, rows = self._rows_for(ids)
            if self._store is not None:
                return self._store.gather(rows).numpy()
            return self._codec.decode(self._codes[torch.from_numpy(rows).to(self.device)]).cpu().numpy()

    def memory(self) -> MemoryUsage:
        """Bytes on the device, on disk, and per vector (see :class:`MemoryUsage`)."""
        with self._lock:
            device = self._codes.numel() + self._alive.numel()
            disk = self._store.nbytes if self._store is not None else 0
            return MemoryUsage(device, disk, self._codec.row_bytes, self.dim if self.rescore else 0)

    def save(self, path: str | os.PathLike) -> None:
        """Write a compacted copy (deleted rows dropped) to ``path``, a new or empty directory.

        Written to a temporary sibling and renamed into place, so a failure leaves nothing.
        """
        if self._path is not None and Path(path).resolve() == self._path.resolve():
            return  # a persistent index is always saved
        with self._lock:
            write_directory(path, self._save_compacted)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "QuantizedIndex":
        """Open an index directory written by :meth:`save` or by a persistent index.

        Raises ``ValueError`` for a directory that is not an index, a newer format version, or
        inconsistent files. The opened index keeps persisting to ``path``.
        """
        return cls._open(Path(path), device)

    def close(self) -> None:
        """Release a persistent index's directory lock (the data is already on disk); the
        object must not be used afterwards."""
        with self._lock:
            if self._dir_lock is not None:
                self._dir_lock.release()

    def verify(self) -> list[str]:
        """Cross-check every part (in-memory state, the INT8 copy, the files of a persistent
        index); returns the problems found, ``[]`` when consistent."""
        with self._lock:
            problems = []
            alive = self._alive[: self._rows].cpu().numpy()
            live_ids = self._ids[: self._rows][alive]
            if len(np.unique(live_ids)) != len(live_ids):
                problems.append("live ids repeat")
            if self._row_of != dict(zip(live_ids.tolist(), np.flatnonzero(alive).tolist())):
                problems.append("id -> row map disagrees with ids and deletions")
            if int((~alive).sum()) != len(set(self._deleted)):
                problems.append(f"{int((~alive).sum())} dead rows but {len(set(self._deleted))} deletions recorded")
            if self.rescore and self._rows and (self._store is None or self._store.count != self._rows):
                problems.append(f"INT8 copy has {self._store.count if self._store else 0} rows; codes have {self._rows}")
            if self._path is not None:
                expect = {"codes.u8": self._rows * self._codec.row_bytes, "ids.i64": self._rows * 8,
                          "deleted.i64": len(self._deleted) * 8}
                if self._store is not None:
                    expect[RescoreStore.DATA_FILE] = self._store.nbytes
                for name, size in expect.items():
                    found = (self._path / name).stat().st_size if (self._path / name).exists() else (0 if size == 0 else -1)
                    if found != size:
                        problems.append(f"{name}: {found} bytes on disk, {size} committed")
                on_disk = read_json(self._path / MANIFEST, FORMAT, VERSION)
                if on_disk["count"] != self._rows or on_disk["n_deleted"] != len(self._deleted):
                    problems.append("manifest.json disagrees with the open index")
            return problems

    # ------------------------------------------------------------------ internals
    def _rows_for(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(validated ids, their rows); an id not in the index raises ``ValueError``."""
        arr = _as_ids(ids)
        unknown = [int(i) for i in arr if int(i) not in self._row_of]
        if unknown:
            raise ValueError(f"ids not in the index: {unknown[:10]}.")
        return arr, np.array([self._row_of[int(i)] for i in arr], dtype=np.int64)

    def _calibrate(self, x: torch.Tensor) -> None:
        lo, scale = int8.calibrate(x)
        self._codec = Codec(self.codec_name, CodecParams(self.dim, self.block_size, lo, scale))
        if self.rescore:
            self._store = RescoreStore(self._workdir, self.dim, lo, scale)

    def _add(self, x: torch.Tensor, new_ids: np.ndarray) -> None:
        first = self._codec.params.lo is None
        old = (self._codec, self._store)
        if first:
            self._calibrate(x)
        start, n = self._rows, len(x)
        store_count = self._store.count if self._store is not None else 0
        try:
            codes = self._codec.encode(x)
            self._reserve(start + n)
            if self._store is not None:
                self._store.append(x)
            if self._path is not None:
                append_raw(self._path / "codes.u8", start * self._codec.row_bytes, codes.cpu().numpy())
                append_raw(self._path / "ids.i64", start * 8, new_ids)
            self._codes[start : start + n] = codes
            self._alive[start : start + n] = True
            self._ids[start : start + n] = new_ids
            self._rows = start + n
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
            self._row_of.update(zip(new_ids.tolist(), range(start, start + n)))
            if self._path is not None:
                self._write_manifest()
        except BaseException:
            self._rows = start
            self._alive[start:] = False
            for i in new_ids.tolist():
                if self._row_of.get(i, -1) >= start:
                    del self._row_of[i]
            if self._store is not None and not first:
                self._store.truncate(store_count)
            if first:
                self._codec, self._store = old
            raise

    def _reserve(self, rows: int) -> None:
        """Grow code storage to hold ``rows`` rows by at least half its size (amortised O(1) per row)."""
        cap = self._codes.shape[0]
        if rows <= cap:
            return
        new_cap = max(rows, cap + cap // 2, 16)
        codes = torch.zeros(new_cap, self._codes.shape[1], dtype=torch.uint8, device=self.device)
        codes[:cap] = self._codes
        alive = torch.zeros(new_cap, dtype=torch.bool, device=self.device)
        alive[:cap] = self._alive
        ids = np.zeros(new_cap, dtype=np.int64)
        ids[:cap] = self._ids
        self._codes, self._alive, self._ids = codes, alive, ids

    def _row_mask(self, allowed_ids: Iterable[int]) -> torch.Tensor:
        arr = np.asarray(list(allowed_ids) if not isinstance(allowed_ids, (np.ndarray, torch.Tensor)) else allowed_ids)
        if len(arr) and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"allowed_ids must be integers; got dtype {arr.dtype}.")
        rows = [self._row_of[i] for i in arr.astype(np.int64).tolist() if i in self._row_of]
        mask = torch.zeros(self._rows, dtype=torch.bool)
        mask[rows] = True
        return mask.to(self.device)

    def _scan(self, q: torch.Tensor, mask: torch.Tensor | None, n_top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunked first stage: running top-``n_top`` (scores, rows), each ``[q, n_top]``.

        ``mask`` (``[rows]`` bool, ``None`` = all rows) is applied before each chunk's top-k.
        Rows outside it score the lowest value of the score dtype and are dropped by the caller.
        """
        best_s = best_r = None
        step = self._chunk_rows(len(q))
        for start in range(0, self._rows, step):
            stop = min(start + step, self._rows)
            valid = None if mask is None else mask[start:stop]
            top_s, top_r = self._codec.top(q, self._codes[start:stop], valid, min(n_top, stop - start))
            top_r += start
            if best_s is not None:
                top_s, top_r = torch.cat([best_s, top_s], dim=1), torch.cat([best_r, top_r], dim=1)
                if top_s.shape[1] > n_top:  # stable: equal scores keep the lower row (earlier chunk)
                    top_s, pos = torch.sort(top_s, dim=1, descending=True, stable=True)
                    top_s, top_r = top_s[:, :n_top], torch.gather(top_r, 1, pos[:, :n_top])
            best_s, best_r = top_s, top_r
        return best_s, best_r

    def _chunk_rows(self, n_queries: int) -> int:
        """Rows per scan step: ``SCORES_PER_CHUNK / queries``, and no more than
        ``DECODED_PER_CHUNK / dim`` when the codec decodes rows to score them; every row
        when the codec selects without scores."""
        if self._chunk is not None:
            return self._chunk
        if self._codec.selects_in_place(self.device):
            return min(max(self._rows, 1), 1 << 30)
        rows = SCORES_PER_CHUNK // n_queries
        if not self._codec.scans_in_place(self.device):
            rows = min(rows, DECODED_PER_CHUNK // self.dim)
        return max(rows, 1024)

    def _search(self, q: torch.Tensor, mask: torch.Tensor | None, n_valid: int, k: int, mult: int):
        """Top-``k`` (scores ``[q, k]`` float32, rows ``[q, k]``) among ``n_valid`` masked rows."""
        n_cand = min(k * mult if self.rescore else k, n_valid)
        if self.codec_name == "binary":
            width = min(max(n_cand, BINARY_WIDEN * k), n_valid)
            _, rows = self._scan(q, mask, width)
            # second stage (BPR): float query against the +-1 codes of the Hamming candidates
            cand = self._codes[rows.reshape(-1)].view(rows.shape[0], rows.shape[1], -1)
            s = binary.score(q, cand, self.dim)
            s, pos = torch.topk(s, n_cand, dim=1)
            rows = torch.gather(rows, 1, pos)
        else:
            s, rows = self._scan(q, mask, n_cand)
        if self.rescore and self._store is not None:
            uniq, inverse = np.unique(rows.cpu().numpy(), return_inverse=True)
            vecs = self._store.gather(uniq, self.device)[torch.from_numpy(inverse.reshape(-1)).to(self.device)]
            s = torch.einsum("qd,qcd->qc", q, vecs.view(len(q), rows.shape[1], self.dim))
        s, pos = torch.topk(s, k, dim=1)
        return s, torch.gather(rows, 1, pos)

    # ------------------------------------------------------------------ persistence
    def _manifest(self, count: int, n_deleted: int) -> dict:
        p = self._codec.params
        return {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "codec": self.codec_name,
            "block_size": self.block_size,
            "rescore": self.rescore,
            "row_bytes": self._codec.row_bytes,
            "count": count,
            "n_deleted": n_deleted,
            "next_id": self._next_id,
            "int8": None if p.lo is None else {"lo": p.lo.cpu().tolist(), "scale": p.scale.cpu().tolist()},
        }

    def _write_manifest(self) -> None:
        write_json_atomic(self._path / MANIFEST, self._manifest(self._rows, len(self._deleted)))

    def _save_compacted(self, directory: Path) -> None:
        rows = np.flatnonzero(self._alive[: self._rows].cpu().numpy())
        codes = self._codes[: self._rows][torch.from_numpy(rows).to(self.device)].cpu().numpy()
        append_raw(directory / "codes.u8", 0, codes)
        append_raw(directory / "ids.i64", 0, self._ids[rows])
        append_raw(directory / "deleted.i64", 0, np.zeros(0, dtype=np.int64))
        if self._store is not None:
            self._store.copy_to(directory, rows)
        write_json_atomic(directory / MANIFEST, self._manifest(len(rows), 0))

    @classmethod
    def _open(cls, path: Path, device) -> "QuantizedIndex":
        m = read_json(path / MANIFEST, FORMAT, VERSION)
        try:
            dim, codec, block_size = int(m["dim"]), m["codec"], int(m["block_size"])
            rescore, count, n_deleted, next_id = bool(m["rescore"]), int(m["count"]), int(m["n_deleted"]), int(m["next_id"])
            calib = m["int8"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path / MANIFEST}: malformed manifest ({exc}).") from None
        if codec not in CODEC_NAMES:
            raise ValueError(f"{path / MANIFEST}: unknown codec {codec!r}.")
        if min(dim, block_size) <= 0 or min(count, n_deleted, next_id) < 0 or n_deleted > count:
            raise ValueError(f"{path / MANIFEST}: negative or inconsistent sizes.")
        index = cls.__new__(cls)
        QuantizedIndex.__init__(index, dim, codec, rescore, None, device, block_size)
        index._cleanup()  # drop the temporary directory made by __init__
        index._dir_lock = DirectoryLock(path)
        index._workdir = index._path = path
        dev = index.device
        if calib is not None:
            try:
                lo = torch.tensor(calib["lo"], dtype=torch.float32)
                scale = torch.tensor(calib["scale"], dtype=torch.float32)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path / MANIFEST}: malformed int8 calibration ({exc}).") from None
            if lo.shape != (dim,) or scale.shape != (dim,):
                raise ValueError(f"{path / MANIFEST}: int8 calibration must have {dim} values.")
            index._codec = Codec(codec, CodecParams(dim, block_size, lo.to(dev), scale.to(dev)))
        elif count:
            raise ValueError(f"{path / MANIFEST}: {count} rows but no int8 calibration.")
        row_bytes = index._codec.row_bytes
        if int(m.get("row_bytes", row_bytes)) != row_bytes:
            raise ValueError(f"{path / MANIFEST}: row_bytes {m.get('row_bytes')} does not match codec ({row_bytes}).")
        codes = read_raw(path / "codes.u8", np.uint8, count, row_bytes) if count else np.zeros((0, row_bytes), np.uint8)
        ids = read_raw(path / "ids.i64", np.int64, count) if count else np.zeros(0, np.int64)
        deleted = read_raw(path / "deleted.i64", np.int64, n_deleted) if n_deleted else np.zeros(0, np.int64)
        if len(deleted) and (deleted.min() < 0 or deleted.max() >= count):
            raise ValueError(f"{path / 'deleted.i64'}: row numbers outside 0..{count - 1}.")
        alive = np.ones(count, dtype=bool)
        alive[deleted] = False
        live_ids = ids[alive]
        if len(live_ids) and (live_ids.min() < 0 or len(np.unique(live_ids)) != len(live_ids)):
            raise ValueError(f"{path / 'ids.i64'}: ids are negative or repeated.")
        if rescore and calib is not None:
            index._store = RescoreStore.open(path, count)
        index._reserve(count)
        index._codes[:count] = torch.from_numpy(codes.reshape(count, row_bytes)).to(dev)
        index._alive[:count] = torch.from_numpy(alive).to(dev)
        index._ids[:count] = ids
        index._rows = count
        index._deleted = deleted.tolist()
        index._row_of = dict(zip(live_ids.tolist(), np.flatnonzero(alive).tolist()))
        index._next_id = max(next_id, int(ids.max()) + 1 if count else 0)
        for name in ("codes.u8", "ids.i64", "deleted.i64"):
            (path / name).touch()
        return index
