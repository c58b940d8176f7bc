"""Triton kernels for the first-stage scans on CUDA, with the top-k selection fused.

Dispatch rule (each codec owns it; one method per codec, no branches in the index):

==========================  ===============================================================
rows on                     first-stage scan
==========================  ===============================================================
CUDA, Triton importable     these kernels (:func:`hamming_topk`, :func:`int4_topk`, :func:`rq_topk`)
the CPU                     the C kernels (:mod:`quant_retriever.kernels.scans`)
anything else               eager torch, the reference every kernel is tested against
==========================  ===============================================================

``QUANT_RETRIEVER_TRITON=0`` (or ``false``/``no``/``off``) turns these kernels off; CUDA scans
then run eager torch. :func:`available` says whether they run for a device.

==================  ==========================================================================
kernel              what it does per (query block x row split) program
==================  ==========================================================================
``hamming_topk``    int64 loads, XOR, popcount (``libdevice.popc``); a histogram of distances
                    per query, then a compaction pass that writes the selected rows in row
                    order; one small merge (see ``_hamming.py``)
``int4_topk``       int32 loads of nibbles, FP16 scales/offsets and the float32 norm of each
                    row; multiply-add for fewer than 16 queries, ``tl.dot`` (FP16 tensor cores,
                    split into high and low halves for FP32 accuracy) for more; a running top-k
                    on packed ``(score, row)`` int64 keys; one small merge (see ``_int4.py``)
``rq_topk``         int32 loads of the rotated codes, levels gathered from the grid, the float32
                    norm and dot of each row; multiply-add, the same running top-k and merge
                    (see ``_rotated.py``)
==================  ==========================================================================

Both read the codes in the codec's own layout (no padded or transposed copy): INT4 rows are
4-byte aligned, so 32-bit loads see every field. Ties go to the lower row, as on the CPU.

Tests run the same kernels on the CPU in Triton's interpreter: ``TRITON_INTERPRET=1`` set
before the first call (the kernel modules are imported on first use, and ``@triton.jit``
chooses between compiling and interpreting when they are imported). The interpreter has no
``libdevice``, so the popcount switches to a SWAR bit trick there. Under the interpreter the
functions accept CPU tensors; :func:`available` still says False for the CPU (the C kernels
serve it).
"""

from __future__ import annotations

import functools
import importlib.util
import numbers
import os

import torch

__all__ = ["available", "enabled", "hamming_topk", "int4_topk", "rq_topk"]

#: Triton's NVIDIA backend needs compute capability 8.0 (Ampere) or newer.
MIN_CAPABILITY = (8, 0)


def enabled() -> bool:
    """False when ``QUANT_RETRIEVER_TRITON`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("QUANT_RETRIEVER_TRITON", "1").strip().lower() not in {"0", "false", "no", "off"}


@functools.cache
def _importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def available(device: torch.device | str) -> bool:
    """Whether scans of rows on ``device`` run in these kernels: a CUDA device of compute
    capability >= 8.0, Triton importable, and ``QUANT_RETRIEVER_TRITON`` not off."""
    device = torch.device(device)
    if device.type != "cuda" or not enabled() or not _importable() or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def _check_device(*tensors: torch.Tensor | None) -> torch.device:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device; got {', '.join(sorted(map(str, devices)))}.")
    device = devices.pop()
    if not _importable():
        raise ImportError("the Triton kernels need triton: pip install 'quant-retriever[gpu]'.")
    if device.type == "cuda":
        return device
    if device.type == "cpu":
        from quant_retriever.kernels.triton import _common  # decides: compiled or interpreted

        if _common.INTERPRETED:
            return device
    raise ValueError(f"the Triton kernels run on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); got {device}.")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dim()}-D {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_rows(codes: object, row_bytes: int, what: str) -> int:
    """The row count of ``codes``, a 2-D uint8 tensor of ``row_bytes`` bytes per row."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.dim() != 2:
        raise TypeError(f"{what} must be a 2-D uint8 tensor; got {_describe(codes)}.")
    if codes.shape[1] != row_bytes:
        raise ValueError(f"{what} must have {row_bytes} bytes per row; got {codes.shape[1]}.")
    return codes.shape[0]


def _aligned(codes: torch.Tensor) -> torch.Tensor:
    """``codes`` contiguous, starting on an 8-byte boundary (the kernels load 32/64-bit words)."""
    codes = codes.contiguous()
    return codes if codes.data_ptr() % 8 == 0 else codes.clone()


def _check_keep(keep: object, n: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, numbers.Integral):
        raise TypeError(f"keep must be an int; got {type(keep).__name__}.")
    if not 0 < keep <= n < 2**31:
        raise ValueError(f"keep must satisfy 0 < keep <= rows < 2**31; got keep={keep}, rows={n}.")
    return int(keep)


def _check_valid(valid: object, n: int) -> torch.Tensor | None:
    if valid is not None and (not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape != (n,)):
        raise TypeError(f"valid must be None or a bool tensor of shape ({n},); got {_describe(valid)}.")
    return valid


def _empty(keep: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, keep, dtype=dtype, device=device), torch.zeros(0, keep, dtype=torch.int64, device=device)


def hamming_topk(
    qcodes: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor | None, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` rows of smallest Hamming distance per query, best first.

    ``qcodes [nq, row_bytes]`` and ``codes [n, row_bytes]`` are packed sign bits (uint8, whole
    64-bit words per row, see ``codecs/binary.py``); ``valid`` is ``None`` or ``[n]`` bool.
    Returns ``(dist [nq, keep] int32, rows [nq, keep] int64)``: the smallest ``(distance,
    row)`` pairs in order, so ties keep the lower row. Rows where ``valid`` is False come only
    when fewer than ``keep`` rows are valid: last, in row order, with distance ``INT32_MAX``
    (the contract of :func:`quant_retriever.kernels.scans.hamming_select`, sorted).
    """
    if not isinstance(qcodes, torch.Tensor) or qcodes.dtype != torch.uint8 or qcodes.dim() != 2:
        raise TypeError(f"qcodes must be a 2-D uint8 tensor; got {_describe(qcodes)}.")
    row_bytes = qcodes.shape[1]
    if row_bytes == 0 or row_bytes % 8:
        raise ValueError(f"rows must be whole 64-bit words (a positive multiple of 8 bytes); got {row_bytes} bytes.")
    n = _check_rows(codes, row_bytes, "codes")
    keep = _check_keep(keep, n)
    device = _check_device(qcodes, codes, _check_valid(valid, n))
    if qcodes.shape[0] == 0:
        return _empty(keep, torch.int32, device)
    from quant_retriever.kernels.triton import _hamming

    valid = None if valid is None else valid.contiguous()
    return _hamming.topk(_aligned(qcodes), _aligned(codes), valid, keep)


def int4_topk(
    q: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor | None, keep: int, dim: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` best INT4 rows per float query, best first.

    ``q [nq, dim]`` float queries; ``codes [n, row_bytes]`` uint8 rows of
    ``codecs/int4.py`` (``dim``, ``block_size``); ``valid`` ``None`` or ``[n]`` bool.
    Returns ``(scores [nq, keep] float32, rows [nq, keep] int64)``: scores are
    ``<q, decode(row)>`` (the ``Int4.score`` values, to float32 rounding), ties keep the lower
    row, rows where ``valid`` is False come only when fewer than ``keep`` rows are valid
    (last, in row order, with score ``finfo(float32).min``), as ``Int4.top`` returns them.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int; got {dim!r}.")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0 or block_size % 8:
        raise ValueError(f"block_size must be a positive multiple of 8; got {block_size!r}.")
    if not isinstance(q, torch.Tensor) or not q.dtype.is_floating_point or q.dim() != 2 or q.shape[1] != dim:
        raise TypeError(f"q must be a 2-D float tensor of shape (nq, {dim}); got {_describe(q)}.")
    padded = -(-dim // block_size) * block_size
    n = _check_rows(codes, padded // 2 + 4 * (padded // block_size) + 4, "codes")
    keep = _check_keep(keep, n)
    device = _check_device(q, codes, _check_valid(valid, n))
    if q.shape[0] == 0:
        return _empty(keep, torch.float32, device)
    from quant_retriever.kernels.triton import _int4

    valid = None if valid is None else valid.contiguous()
    return _int4.topk(q.float(), _aligned(codes), valid, keep, padded, block_size)


def rq_topk(
    q: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor | None, keep: int, bits: int, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` best rotated rows per query, best first.

    ``q [nq, padded]``: the queries rotated by the codec's ``R`` and zero-padded (see
    ``codecs/rotated.py``, ``Rotated.rotate``); ``codes [n, padded * bits / 8 + 8]`` its rows;
    ``levels`` its grid. Returns ``(scores [nq, keep] float32, rows [nq, keep] int64)`` as
    :func:`int4_topk` does: ``Rotated.score`` values, ties to the lower row, invalid rows
    last only when fewer than ``keep`` are valid.
    """
    if bits not in (1, 2, 4):
        raise ValueError(f"bits must be 1, 2 or 4; got {bits!r}.")
    if not isinstance(q, torch.Tensor) or not q.dtype.is_floating_point or q.dim() != 2 or q.shape[1] % (32 // bits):
        raise TypeError(f"q must be a 2-D float tensor of whole {32 // bits}-element words; got {_describe(q)}.")
    n = _check_rows(codes, q.shape[1] * bits // 8 + 8, "codes")
    keep = _check_keep(keep, n)
    device = _check_device(q, codes, _check_valid(valid, n))
    if q.shape[0] == 0:
        return _empty(keep, torch.float32, device)
    from quant_retriever.kernels.triton import _rotated

    valid = None if valid is None else valid.contiguous()
    return _rotated.topk(q.float(), _aligned(codes), valid, keep, bits, levels)
