"""ctypes wrappers of the vector-scan kernels in ``scans.c`` (CPU tensors only).

Each function returns ``None`` when the kernels are unavailable (off, no compiler, or a
tensor not on the CPU); the codecs then run their eager-torch reference instead.
"""

from __future__ import annotations

import numpy as np
import torch

from quant_retriever.kernels.build import Library, signature

__all__ = [
    "LIBRARY",
    "available",
    "int4_scan",
    "rq_scan",
    "rq8_available",
    "hamming_scan",
    "hamming_select",
    "binary_candidates",
    "dense_scan",
    "dense_top",
]

_DENSE = signature("p", "i64", "i64", "i64", "i64", "i64", "p", "i64", "i64", "p", "p", "i64", "p", "p", "i32")
_DENSE_TOP = signature("p", "i64", "i64", "i64", "i64", "i64", "p", "i64", "p", "i64", "i64", "f64", "p", "p")
LIBRARY = Library(
    "scans.c",
    {
        "int4_scan": signature("p", "i64", "i64", "i64", "i64", "p", "i64", "p", "p", "i64", "p", "p", "i32"),
        "rq_scan": signature("p", "i64", "i64", "i64", "i64", "p", "p", "i64", "i32", "p", "p", "i64", "p", "p", "i32"),
        "rq8_built": signature(),
        "hamming_scan": signature("p", "i64", "i64", "p", "i64", "p", "i32"),
        "hamming_select": signature("p", "i64", "i64", "i64", "p", "i64", "p", "i64", "p", "p", "i32"),
        "binary_candidates": signature("p", "i64", "i64", "p", "i64", "p", "i64", "i64", "p", "p", "i32"),
        "dense_scan_i8": _DENSE,
        "dense_scan_f16": _DENSE,
        "dense_top_i8": _DENSE_TOP,
        "dense_top_f16": _DENSE_TOP,
    },
)

#: Below this many (row, query) pairs a scan runs on one thread: starting and joining an
#: OpenMP team costs more than it saves, and much more on a busy machine.
PARALLEL_MIN_WORK = 1 << 15


#: A scan that keeps each query's best rows holds a list per thread (12 bytes an entry): past
#: this many bytes in all, it runs on fewer threads rather than multiply a large batch's lists.
KEPT_BYTES_MAX = 1 << 28


def _threads(rows: int, queries: int = 1, keep: int | None = None) -> int:
    if rows * queries < PARALLEL_MIN_WORK:
        return 1
    threads = torch.get_num_threads()
    return max(1, min(threads, KEPT_BYTES_MAX // (12 * queries * keep))) if keep else threads


def _usable(*tensors: torch.Tensor):
    for t in tensors:
        if t.device.type != "cpu":
            return None
    return LIBRARY.get()


def available(device: torch.device) -> bool:
    """Whether scans on ``device`` run in the native kernels (no decoded copies of rows)."""
    return device.type == "cpu" and LIBRARY.get() is not None


def _padded_queries(q: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Queries ``[nq, p]`` zero-padded to ``[nq, p16]`` (``p16``: ``p`` rounded up to 16), the
    width the kernels' vector loops step through."""
    nq, p = q.shape
    p16 = -(-p // 16) * 16
    return _zero_padded(q, nq, p16), p16


def _zero_padded(q: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``q [nq, p]`` as contiguous float32 ``[rows, cols]``, zeros past it; ``q`` itself when it
    already is that (the kernels only read queries)."""
    if q.shape == (rows, cols) and q.dtype == torch.float32 and q.is_contiguous():
        return q
    out = torch.zeros(rows, cols, dtype=torch.float32)
    out[: q.shape[0], : q.shape[1]] = q
    return out


def _valid_ptr(valid: torch.Tensor | None, n: int):
    if valid is None:
        return None, None
    v = valid.contiguous().view(torch.uint8)
    if v.shape != (n,):
        raise ValueError(f"valid must have one entry per row ({n}); got shape {tuple(valid.shape)}.")
    return v, v.data_ptr()


def _address(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def _scan(fn, args: tuple, valid: torch.Tensor | None, n: int, nq: int, keep: int | None):
    """Run a scan kernel ``fn(*args, valid, out, keep, top_s, top_r, threads)`` over ``n`` rows:
    scores ``[nq, n]``, or with ``keep`` each query's best rows ``(scores, rows)`` ``[nq, keep]``
    (outputs allocated in numpy: no torch op on the way)."""
    if keep is not None and not 0 < keep <= n:
        raise ValueError(f"a scan keeps 0 < keep <= rows; got keep={keep}, rows={n}.")
    mask, vp = _valid_ptr(valid, n)  # the mask's contiguous copy lives until the call returns
    if keep is None:
        out, top_s, top_r = np.empty((nq, n), dtype=np.float32), None, None
    else:
        out, top_s, top_r = None, np.empty((nq, keep), dtype=np.float32), np.empty((nq, keep), dtype=np.int64)
    if fn(*args, vp, _address(out), keep or 0, _address(top_s), _address(top_r), _threads(n, nq, keep)):
        raise MemoryError("the scan kernel could not allocate its buffers.")
    return torch.from_numpy(out) if keep is None else (torch.from_numpy(top_s), torch.from_numpy(top_r))


def int4_scan(q: torch.Tensor, codes: torch.Tensor, half_p: int, nb: int, valid: torch.Tensor | None = None, keep=None):
    """Scores ``[nq, n]`` of zero-padded float queries ``q: [nq, 2 * half_p]`` against INT4 rows
    ``codes: [n, row_bytes]`` (see ``codecs/int4.py``); rows where ``valid`` is False score -inf.
    With ``keep``: only each query's best ``keep`` rows, ``(scores, rows)`` each ``[nq, keep]``,
    best first (ties to the lower row), never a score per row."""
    lib = _usable(q, codes)
    if lib is None:
        return None
    codes = codes.contiguous()
    q = (q if q.dtype == torch.float32 else q.float()).contiguous()
    nq, n = q.shape[0], codes.shape[0]
    args = (codes.data_ptr(), n, codes.shape[1], half_p, nb, q.data_ptr(), nq)
    return _scan(lib.int4_scan, args, valid, n, nq, keep)


def rq_scan(
    q: torch.Tensor,
    codes: torch.Tensor,
    code_bytes: int,
    bits: int,
    levels: torch.Tensor,
    valid=None,
    keep=None,
    approx: bool = False,
):
    """Scores ``[nq, n]`` of rotated queries in the plane layout of ``scans.c``'s ``decode_rq``
    (``q: [nq, 8 * code_bytes / bits]``) against rotated rows ``codes: [n, row_bytes]`` (see
    ``codecs/rotated.py``; ``levels``: the grid, at most 16 floats); ``valid`` and ``keep`` as
    in :func:`int4_scan`. With ``approx`` and :func:`rq8_available`, queries and levels are
    rounded to 8 bits (``rq8_scan`` in ``scans.c``): every score approximate, or with ``keep``
    the best ``keep`` of a longer approximate list, scored again exactly."""
    lib = _usable(q, codes)
    if lib is None:
        return None
    codes = codes.contiguous()
    q, _ = _padded_queries(q)
    table = _zero_padded(levels.view(1, -1), 1, 16)
    nq, n = q.shape[0], codes.shape[0]
    args = (codes.data_ptr(), n, codes.shape[1], code_bytes, bits, table.data_ptr(), q.data_ptr(), nq, int(approx))
    return _scan(lib.rq_scan, args, valid, n, nq, keep)


def rq8_available() -> bool:
    """Whether :func:`rq_scan` has its INT8 path here (a native build with AVX-512 VNNI and VBMI)."""
    lib = LIBRARY.get()
    return lib is not None and bool(lib.rq8_built())


def hamming_scan(qcodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor | None:
    """Hamming distances ``[nq, n]`` int32 between packed rows (whole 64-bit words each)."""
    lib = _usable(qcodes, codes)
    if lib is None:
        return None
    codes, qcodes = codes.contiguous(), qcodes.contiguous()
    out = torch.empty(qcodes.shape[0], codes.shape[0], dtype=torch.int32)
    lib.hamming_scan(
        codes.data_ptr(),
        codes.shape[0],
        codes.shape[1] // 8,
        qcodes.data_ptr(),
        qcodes.shape[0],
        out.data_ptr(),
        _threads(codes.shape[0], qcodes.shape[0]),
    )
    return out


def hamming_select(
    qcodes: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor | None, keep: int, words: int | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``keep`` rows of smallest Hamming distance per query: ``(distances [nq, keep] int32,
    rows [nq, keep] int64)``, unsorted; rows where ``valid`` is False come last with distance
    ``INT32_MAX``. Ties keep the lower row, for any thread count. ``words``: the 64-bit words of
    bits at the start of each row (default: the whole row); ``qcodes [nq, words * 8]``."""
    lib = _usable(qcodes, codes)
    if lib is None:
        return None
    codes, qcodes = codes.contiguous(), qcodes.contiguous()
    nq, n = qcodes.shape[0], codes.shape[0]
    stride = codes.shape[1] // 8
    words = stride if words is None else words
    if not 0 < keep <= n < 2**31:
        raise ValueError(f"hamming_select needs 0 < keep <= rows < 2**31; got keep={keep}, rows={n}.")
    if codes.shape[1] % 8 or qcodes.shape[1] != 8 * words or not 0 < words <= stride:
        raise ValueError(f"hamming_select needs rows of whole words holding the query's {qcodes.shape[1]} bytes.")
    mask = None if valid is None else valid.contiguous().view(torch.uint8)
    dist = torch.empty(nq, keep, dtype=torch.int32)
    rows = torch.empty(nq, keep, dtype=torch.int64)
    lib.hamming_select(
        codes.data_ptr(),
        n,
        words,
        stride,
        qcodes.data_ptr(),
        nq,
        None if mask is None else mask.data_ptr(),
        keep,
        dist.data_ptr(),
        rows.data_ptr(),
        _threads(n, nq),
    )
    return dist, rows


def binary_candidates(
    q: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor | None, width: int, n_cand: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Binary's two stages in one call: the ``width`` rows of smallest Hamming distance to the
    sign bits of the float queries ``q [nq, dim]`` (packed in the kernel), re-ranked by ``q``
    against their +-1 codes; the best ``n_cand``: ``(scores [nq, n_cand] float32, rows
    [nq, n_cand] int64)``, best first."""
    lib = _usable(q, codes)
    if lib is None:
        return None
    codes = codes.contiguous()
    nq, n, words = q.shape[0], codes.shape[0], codes.shape[1] // 8
    if not 0 < n_cand <= width <= n < 2**31:
        raise ValueError(f"binary_candidates needs 0 < n_cand <= width <= rows < 2**31; got {n_cand}, {width}, {n}.")
    keep, vp = _valid_ptr(valid, n)
    qf = _zero_padded(q, nq, words * 64)
    scores = np.empty((nq, n_cand), dtype=np.float32)
    rows = np.empty((nq, n_cand), dtype=np.int64)
    lib.binary_candidates(
        codes.data_ptr(),
        n,
        words,
        qf.data_ptr(),
        nq,
        vp,
        width,
        n_cand,
        scores.ctypes.data,
        rows.ctypes.data,
        _threads(n, nq),
    )
    return torch.from_numpy(scores), torch.from_numpy(rows)


def dense_scan(
    q: torch.Tensor,
    codes: torch.Tensor,
    dtype: torch.dtype,
    dim: int,
    factor_offset: int,
    n_factors: int,
    valid: torch.Tensor | None = None,
    keep: int | None = None,
):
    """``[nq, n]`` float32: ``<q, row values> * product(row factors)`` for float queries
    ``q [nq, dim]`` and rows ``codes [n, row_bytes]`` uint8 that hold ``dim`` values of
    ``dtype`` (int8 or float16) and ``n_factors`` float32 factors at byte ``factor_offset``;
    rows where ``valid`` is False score -inf. With ``keep``: the best rows as in
    :func:`int4_scan`."""
    lib = _usable(q, codes)
    if lib is None:
        return None
    fn = {torch.int8: lib.dense_scan_i8, torch.float16: lib.dense_scan_f16}[dtype]
    codes = codes.contiguous()
    n, nq = codes.shape[0], q.shape[0]
    qs, p16 = _padded_queries(q)
    args = (codes.data_ptr(), n, codes.shape[1], dim, factor_offset, n_factors, qs.data_ptr(), nq, p16)
    return _scan(fn, args, valid, n, nq, keep)


def dense_top(
    q: torch.Tensor,
    qnorm: float,
    codes: tuple[int, int, int],
    pick: torch.Tensor,
    k: int,
    dim: int,
    dtype: torch.dtype,
    factor_offset: int,
    n_factors: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """One unit query ``q [1, dim]`` against the dense rows ``pick`` (int64) of ``codes``
    (``(address, n, row_bytes)`` of C-contiguous uint8 rows, e.g. a memory map, read in place;
    layout as in :func:`dense_scan`): the best ``k`` as ``(scores [k] float32, times ``qnorm``
    and clipped to the float32 range; positions [k] in pick)``, best first, ties to the
    earlier pick. ``ValueError`` for a pick outside the rows."""
    lib = _usable(q, pick)
    if lib is None:
        return None
    m = len(pick)
    if not 0 < k <= m or pick.dtype != torch.int64:
        raise ValueError(f"dense_top needs 0 < k <= len(pick) and int64 picks; got k={k}, {m} {pick.dtype}.")
    fn = {torch.int8: lib.dense_top_i8, torch.float16: lib.dense_top_f16}[dtype]
    qs, p16 = _padded_queries(q)
    pick = pick.contiguous()
    scores, pos = np.empty(k, dtype=np.float32), np.empty(k, dtype=np.int64)
    address, n, row_bytes = codes
    bad = fn(
        address,
        n,
        row_bytes,
        dim,
        factor_offset,
        n_factors,
        pick.data_ptr(),
        m,
        qs.data_ptr(),
        p16,
        k,
        qnorm,
        scores.ctypes.data,
        pos.ctypes.data,
    )
    if bad:
        raise ValueError(f"dense_top: picked rows must be in [0, {n}).")
    return scores, pos
