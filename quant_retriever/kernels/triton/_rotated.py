"""Rotated-code scores (``codecs/rotated.py``) with the top-k fused, as ``_int4.py`` does.

Row ``r`` read as 32-bit words: code words ``0 .. NW`` (``PER = 32 / bits`` elements a word,
element ``PER * w + i`` in bits ``bits * i ..`` of word ``w``), then the float32 norm and dot at
words ``NW`` and ``NW + 1``. The rotated query is split by that position: ``qph [nq, PER, NW]``
holds ``(R q)[PER * w + i]`` at ``[:, i, w]``, so

    score = norm / dot * sum_w sum_i qph[i, w] * LEVELS[code_i(w)]

Codes become levels by selects on their magnitude (the grid is symmetric, at most 8
magnitudes), not a gather. Multiply-add on CUDA
cores, a running top-k on packed ``(score, row)`` keys per program, one ``torch.topk`` to merge
the programs' lists (see ``_common``); the launch sizes follow ``_int4.config``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quant_retriever.kernels.triton._common import (
    chunked_topk,
    empty_top,
    insert_top,
    next_pow2,
    score_keys,
    split_rows,
)
from quant_retriever.kernels.triton._int4 import BLOCK_ROWS, KEY_BUDGET, MAX_KP, MAX_LIST, MAX_SPLIT_ROWS


@triton.jit
def _levels(code, levels_ptr, BITS: tl.constexpr):
    """The grid level of each code, by selects on its magnitude (the grid is symmetric: code
    ``c`` of the upper half is level ``levels[c]``, of the lower half ``-levels[2**BITS - 1 -
    c]``). No gather: a tensor of pointers would take two registers an element."""
    half: tl.constexpr = 1 << (BITS - 1)
    upper = code >= half
    mag = tl.where(upper, code - half, half - 1 - code)
    x = tl.zeros(code.shape, tl.float32)
    for v in tl.static_range(half):
        x = tl.where(mag == v, tl.load(levels_ptr + half + v), x)
    return tl.where(upper, x, -x)


@triton.jit
def _topk_kernel(
    words_ptr,
    floats_ptr,
    q_ptr,
    levels_ptr,
    valid_ptr,
    out_ptr,
    row0,
    n,
    nq,
    n_splits,
    n_qblocks,
    RW: tl.constexpr,
    NW: tl.constexpr,
    BITS: tl.constexpr,
    PER: tl.constexpr,
    WC: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QB: tl.constexpr,
    KP: tl.constexpr,
    SELECT: tl.constexpr,
    HAS_VALID: tl.constexpr,
):
    qblock = tl.program_id(0) % n_qblocks
    split = tl.program_id(0) // n_qblocks
    q0 = qblock * QB
    qidx = tl.arange(0, QB)
    wc = tl.arange(0, WC)
    phase = tl.arange(0, PER)
    best = empty_top(QB, KP)
    for start in range(0, SPLIT, BLOCK_N):
        local = split.to(tl.int64) * SPLIT + start + tl.arange(0, BLOCK_N)
        inside = local < n
        rows = row0 + local
        acc = tl.zeros([BLOCK_N, QB], tl.float32)
        for c in range(0, NW, WC):
            w_at = c + wc
            w_ok = inside[:, None] & (w_at < NW)[None, :]
            w = tl.load(words_ptr + rows[:, None] * RW + w_at[None, :], mask=w_ok, other=0)  # [BLOCK_N, WC]
            code = (w[:, None, :] >> (BITS * phase)[None, :, None]) & ((1 << BITS) - 1)  # [BLOCK_N, PER, WC]
            x = _levels(code, levels_ptr, BITS)
            for j in tl.static_range(QB):
                qj_row = tl.minimum(q0 + j, nq - 1)
                qj_at = qj_row * (PER * NW) + phase[:, None] * NW + w_at[None, :]
                qj = tl.load(q_ptr + qj_at, mask=(w_at < NW)[None, :], other=0.0)  # [PER, WC]
                part = tl.sum(tl.sum(x * qj[None, :, :], axis=1), axis=1)  # [BLOCK_N]
                acc += tl.where(qidx[None, :] == j, part[:, None], 0.0)
        norm = tl.load(floats_ptr + rows * RW + NW, mask=inside, other=0.0)
        dot = tl.load(floats_ptr + rows * RW + NW + 1, mask=inside, other=1.0)
        s = tl.trans(acc * (norm / dot)[:, None])  # [QB, BLOCK_N]
        ok = inside
        if HAS_VALID:
            ok = ok & (tl.load(valid_ptr + rows, mask=inside, other=0) != 0)
        keys = score_keys(s, rows[None, :], ok[None, :], inside[None, :])
        if SELECT:
            best = insert_top(best, keys)
        else:
            best = keys
    out_at = (q0 + qidx)[:, None].to(tl.int64) * (n_splits * KP) + split * KP + tl.arange(0, KP)[None, :]
    tl.store(out_ptr + out_at, best, mask=(q0 + qidx < nq)[:, None])


def config(
    n: int,
    nq: int,
    keep: int,
    padded: int,
    bits: int,
    device: torch.device,
    has_valid: bool,
    *,
    block_rows: int = BLOCK_ROWS,
    split: int | None = None,
) -> dict:
    """The launch parameters of ``_topk_kernel`` for ``nq`` queries keeping ``keep`` of ``n``
    rows of ``padded`` elements at ``bits`` bits (as ``_int4.config``, multiply-add only)."""
    per = 32 // bits
    nw = padded // per
    kp = next_pow2(keep)
    select = kp <= MAX_KP
    lists = MAX_LIST // kp if select else MAX_LIST
    if select:
        split = split or split_rows(n, device, block_rows, MAX_SPLIT_ROWS)
    else:  # nothing to select in a program: each writes its tile's keys
        kp = split = block_rows
    return dict(
        RW=nw + 2,  # the code words, the norm, the dot
        NW=nw,
        BITS=bits,
        PER=per,
        WC=min(32 // per, next_pow2(nw)),  # tiles of [BLOCK_N, 32] codes: no register spills
        SPLIT=split,
        BLOCK_N=block_rows,
        QB=min(8, next_pow2(nq), lists),
        KP=kp,
        SELECT=select,
        HAS_VALID=has_valid,
        num_warps=4,
        enable_fp_fusion=True,
    )


def topk(
    q: torch.Tensor,
    codes: torch.Tensor,
    valid: torch.Tensor | None,
    keep: int,
    bits: int,
    levels: torch.Tensor,
    **overrides,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [nq, keep] float32, rows [nq, keep] int64)``, best first: see ``rq_topk``.
    ``q [nq, padded]``: the rotated queries, zero-padded (``padded`` a multiple of ``32 /
    bits``); inputs validated by the caller; ``overrides`` go to :func:`config`."""
    n, nq = codes.shape[0], q.shape[0]
    meta = config(n, nq, keep, q.shape[1], bits, codes.device, valid is not None, **overrides)
    nw, per = meta["NW"], meta["PER"]
    qph = q.float().view(nq, nw, per).transpose(1, 2).contiguous()  # [nq, PER, NW]
    words, floats = codes.view(torch.int32), codes.view(torch.float32)
    mask = valid.view(torch.uint8) if valid is not None else words
    table = levels.to(device=codes.device, dtype=torch.float32).contiguous()
    args = (words, floats, qph, table, mask)
    return chunked_topk(_topk_kernel, args, n, nq, keep, meta, KEY_BUDGET, codes.device)
