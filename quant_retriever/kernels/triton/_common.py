"""Pieces shared by the Triton kernels: the popcount switch, (score, row) keys and launch sizes.

Imported only when a kernel first runs (see the package docstring): ``@triton.jit`` decides at
import time whether it compiles for the GPU or runs in the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

#: ``key`` of a row outside the scan (past ``n``): below every row, masked ones included.
KEY_NONE = tl.constexpr(-(2**63))


@triton.jit
def popcount64(x, NATIVE: tl.constexpr):
    """Set bits of each int64 in ``x`` (int32): ``popc`` on the GPU, SWAR in the interpreter,
    which has no ``libdevice``."""
    if NATIVE:
        return libdevice.popc(x)
    else:
        # every shift is followed by a mask, so arithmetic shifts of negative words are harmless
        x = x - ((x >> 1) & 0x5555555555555555)
        x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
        x = x + (x >> 8)
        x = x + (x >> 16)
        x = x + (x >> 32)
        return (x & 0x7F).to(tl.int32)


#: Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when imported).
INTERPRETED = not isinstance(popcount64, triton.runtime.JITFunction)


@triton.jit
def score_keys(s, rows, ok, inside):
    """int64 keys that order ``(score desc, row asc)``: the sortable bits of the float32
    score ``s`` above ``~row``. Rows where ``ok`` is False get the lowest score (ties: the
    lower row first); rows outside the scan (``inside`` False) get :data:`KEY_NONE`. NaN ranks
    above everything (as in ``torch.topk``), -0.0 equals +0.0."""
    bits = tl.where(s == 0.0, 0.0, s).to(tl.int32, bitcast=True)
    bits = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FC00000, bits)  # one NaN: the positive one
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    bits = tl.where(ok, bits, -(2**31))
    key = (bits.to(tl.int64) << 32) | (rows ^ 0xFFFFFFFF)
    return tl.where(inside, key, -(2**63))


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys from :func:`score_keys` -> ``(scores float32, rows int64)``; masked rows score
    ``finfo(float32).min`` (as in ``Codec.top``)."""
    bits = (keys >> 32).to(torch.int32)
    masked = bits == -(2**31)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    scores = bits.view(torch.float32).masked_fill(masked, torch.finfo(torch.float32).min)
    return scores, (keys & 0xFFFFFFFF) ^ 0xFFFFFFFF


@triton.jit
def empty_top(QB: tl.constexpr, KP: tl.constexpr):
    """An empty candidate list ``[QB, KP]``: distinct fillers below every row's key (see
    :func:`insert_top`), so each list entry is unique."""
    return tl.full([QB, KP], KEY_NONE, tl.int64) + tl.arange(0, KP)[None, :]


@triton.jit
def insert_top(best, keys):
    """Per query row, the ``KP`` largest of ``best [QB, KP]`` (unsorted) and ``keys [QB, BLOCK_N]``.

    Keys that beat a query's weakest kept entry move in one at a time, best first, each
    replacing the weakest: the loop runs as often as the most such keys of one query, which is
    0 for most tiles once the lists hold good rows (and at most ``KP``: after ``KP`` insertions
    the tile's remaining keys are all weaker).
    """
    cand = tl.where(keys > tl.min(best, axis=1)[:, None], keys, KEY_NONE)
    for _ in range(tl.minimum(tl.max(tl.sum((cand != KEY_NONE).to(tl.int32), axis=1)), best.shape[1])):
        top = tl.max(cand, axis=1)
        low = tl.min(best, axis=1)
        best = tl.where((best == low[:, None]) & (top > low)[:, None], top[:, None], best)
        cand = tl.where(cand == top[:, None], KEY_NONE, cand)
    return best


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def programs_wanted(device: torch.device) -> int:
    """Programs per query block that keep every SM of ``device`` busy (a few per SM)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def split_rows(n: int, device: torch.device, block_rows: int, at_most: int) -> int:
    """Rows per program: a power of two from ``block_rows`` (a power of two) to ``at_most``,
    small enough for at least :func:`programs_wanted` programs over ``n`` rows when it can."""
    fair = max(1, n // programs_wanted(device))
    return max(block_rows, min(at_most, 1 << (fair.bit_length() - 1)))


def chunked_topk(kernel, args: tuple, n: int, nq: int, keep: int, meta: dict, budget: int, device) -> tuple:
    """Launch a top-k scan kernel ``kernel[grid](*args, out, row0, rows, nq, n_splits,
    n_qblocks, **meta)`` over row chunks whose candidate keys (int64) fit ``budget``, merging
    each chunk's per-program lists into the best ``keep`` keys with ``torch.topk``; returns
    :func:`decode_keys` of them."""
    split, kp = meta["SPLIT"], meta["KP"]
    n_qblocks = -(-nq // meta["QB"])
    chunk = max(split, (budget // (nq * kp)) * split)  # rows per launch
    best = None
    for row0 in range(0, n, chunk):
        rows = min(chunk, n - row0)
        n_splits = -(-rows // split)
        out = torch.empty(nq, n_splits * kp, dtype=torch.int64, device=device)
        kernel[(n_qblocks * n_splits,)](*args, out, row0, rows, nq, n_splits, n_qblocks, **meta)
        if best is not None:
            out = torch.cat([best, out], dim=1)
        best = torch.topk(out, min(keep, out.shape[1]), dim=1).values
    return decode_keys(best)
