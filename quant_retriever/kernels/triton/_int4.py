"""INT4 scores with the top-k fused: one pass over the codes, a running top-k per program.

Row ``r`` (``codecs/int4.py``; ``P`` padded elements, ``NB`` blocks, ``RW = row_bytes / 4``
32-bit words) read as 32-bit words: nibble words ``0 .. P/8``, then FP16 scales and offsets
(halves ``P/4 ..``), then the float32 norm at word ``P/8 + NB``. Word ``w`` holds elements
``8w .. 8w+7``, element ``8w + i`` in bits ``4i .. 4i+3``, and belongs to block ``w // WPB``.

The query is split by that position: ``qph [nq, 8, P/8]`` holds ``q[8w + i]`` at ``[:, i, w]``
(the C kernel's even/odd split, for 32-bit words), and ``qs [nq, P/8]`` the sum of each word's
eight elements, so

    score = norm * sum_w (scale[w // WPB] * sum_i qph[i, w] * nib_i(w) + offset[w // WPB] * qs[w])

Nibbles become floats with the exponent trick (``bits(2**23) | c`` is ``2**23 + c``), which
avoids integer-to-float conversions. Fewer than 16 queries: multiply-add on CUDA cores.
From 16: ``tl.dot`` in FP16 with FP32 accumulation, exact to about FP32 because every
product is split in parts FP16 holds exactly: the nibble ``c`` times the scale's top 7
significant bits and ``c`` times its low 4 bits, against the query's high and low FP16
halves (the query is scaled by a power of two so its halves stay in range).

Each program scans ``SPLIT`` rows in tiles of ``BLOCK_N`` and keeps the ``KP`` best
``(score, row)`` keys per query (see ``_common.score_keys``); one ``torch.topk`` merges the
programs' lists. When ``KP`` reaches ``SPLIT`` there is nothing to select inside a program
and every key is written; the caller then bounds memory by scanning in row chunks.
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

#: Below this many queries, multiply-add; from it, tensor cores.
DOT_MIN_QUERIES = 16
BLOCK_ROWS = 64
MAX_SPLIT_ROWS = 1 << 14
#: Largest candidate list per query (a power of two; larger ``keep``: every key is written),
#: and most candidate-list entries per program (they live in registers).
MAX_KP = 1024
MAX_LIST = 4096
#: Budget of candidate keys (int64) held per row chunk.
KEY_BUDGET = 1 << 23


@triton.jit
def _nibbles(w, F16: tl.constexpr):
    """``w [BLOCK_N, WC]`` int32 -> ``[BLOCK_N, 8, WC]`` nibble values 0..15 as floats,
    ``[:, i, :]`` the nibble at bits ``4i``: OR-ing a nibble into the mantissa of ``2**23``
    (FP16: ``2**10``) and subtracting it again is exact and needs no conversion instruction."""
    shifts = 4 * tl.arange(0, 8)
    nib = (w[:, None, :] >> shifts[None, :, None]) & 15
    if F16:
        return (nib | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0
    else:
        return (nib | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def _topk_kernel(
    words_ptr,
    halves_ptr,
    floats_ptr,
    qa_ptr,
    qb_ptr,
    qsa_ptr,
    qsb_ptr,
    qscale_ptr,
    valid_ptr,
    out_ptr,
    row0,
    n,
    nq,
    n_splits,
    n_qblocks,
    RW: tl.constexpr,
    NW: tl.constexpr,
    WPB: tl.constexpr,
    NB: tl.constexpr,
    WC: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QB: tl.constexpr,
    KP: tl.constexpr,
    DOT: tl.constexpr,
    SELECT: tl.constexpr,
    HAS_VALID: tl.constexpr,
):
    qblock = tl.program_id(0) % n_qblocks
    split = tl.program_id(0) // n_qblocks
    q0 = qblock * QB
    qidx = tl.arange(0, QB)
    qrow = tl.minimum(q0 + qidx, nq - 1)  # queries past nq (last block) repeat the last one
    wc = tl.arange(0, WC)
    phase = tl.arange(0, 8)
    best = empty_top(QB, KP)
    for start in range(0, SPLIT, BLOCK_N):
        local = split.to(tl.int64) * SPLIT + start + tl.arange(0, BLOCK_N)
        inside = local < n
        rows = row0 + local
        acc = tl.zeros([BLOCK_N, QB], tl.float32)
        for c in range(0, NW, WC):
            w_at = c + wc  # [WC] word index in the row
            w_ok = inside[:, None] & (w_at < NW)[None, :]
            w = tl.load(words_ptr + rows[:, None] * RW + w_at[None, :], mask=w_ok, other=0)
            meta = halves_ptr + rows[:, None] * (2 * RW) + (NW * 2 + w_at // WPB)[None, :]
            scale = tl.load(meta, mask=w_ok, other=0.0)  # [BLOCK_N, WC] float16
            offset = tl.load(meta + NB, mask=w_ok, other=0.0)
            if DOT:
                # query tiles: row i * WC + k is q[8 * (c + k) + i]
                q_at = qrow[None, None, :] * (8 * NW) + phase[:, None, None] * NW + w_at[None, :, None]  # [8, WC, QB]
                q_ok = (w_at < NW)[None, :, None]
                s_at = qrow[None, :] * NW + w_at[:, None]  # [WC, QB]
                s_ok = (w_at < NW)[:, None]
                nib = _nibbles(w, True)  # [BLOCK_N, 8, WC] float16
                hi = (scale.to(tl.int16, bitcast=True) & -16).to(tl.float16, bitcast=True)  # top 7 bits
                a_hi = tl.reshape(nib * hi[:, None, :], [BLOCK_N, 8 * WC])
                a_lo = tl.reshape(nib * (scale - hi)[:, None, :], [BLOCK_N, 8 * WC])
                qa = tl.reshape(tl.load(qa_ptr + q_at, mask=q_ok, other=0.0), [8 * WC, QB])
                qb = tl.reshape(tl.load(qb_ptr + q_at, mask=q_ok, other=0.0), [8 * WC, QB])
                acc = tl.dot(a_hi, qa, acc)
                acc = tl.dot(a_hi, qb, acc)
                acc = tl.dot(a_lo, qa, acc)
                acc = tl.dot(offset, tl.load(qsa_ptr + s_at, mask=s_ok, other=0.0), acc)
                acc = tl.dot(offset, tl.load(qsb_ptr + s_at, mask=s_ok, other=0.0), acc)
            else:
                nib = _nibbles(w, False)  # [BLOCK_N, 8, WC] float32
                scale = scale.to(tl.float32)
                offset = offset.to(tl.float32)
                for j in tl.static_range(QB):
                    qj_row = tl.minimum(q0 + j, nq - 1)
                    qj_at = qj_row * (8 * NW) + phase[:, None] * NW + w_at[None, :]
                    qj = tl.load(qa_ptr + qj_at, mask=(w_at < NW)[None, :], other=0.0)  # [8, WC]
                    sj = tl.load(qsa_ptr + qj_row * NW + w_at, mask=w_at < NW, other=0.0)  # [WC]
                    per_word = tl.sum(nib * qj[None, :, :], axis=1)  # [BLOCK_N, WC]
                    part = tl.sum(per_word * scale + offset * sj[None, :], axis=1)  # [BLOCK_N]
                    acc += tl.where(qidx[None, :] == j, part[:, None], 0.0)
        norm = tl.load(floats_ptr + rows * RW + NW + NB, mask=inside, other=0.0)
        qscale = tl.load(qscale_ptr + qrow)
        s = tl.trans(acc * norm[:, None] * qscale[None, :])  # [QB, BLOCK_N]
        ok = inside
        if HAS_VALID:
            ok = ok & (tl.load(valid_ptr + rows, mask=inside, other=0) != 0)
        keys = score_keys(s, rows[None, :], ok[None, :], inside[None, :])
        if SELECT:
            best = insert_top(best, keys)
        else:  # KP == SPLIT == BLOCK_N: every key goes out
            best = keys
    out_at = (q0 + qidx)[:, None].to(tl.int64) * (n_splits * KP) + split * KP + tl.arange(0, KP)[None, :]
    tl.store(out_ptr + out_at, best, mask=(q0 + qidx < nq)[:, None])


def _queries(q: torch.Tensor, padded: int, dot: bool):
    """``q [nq, dim]`` float32 -> ``(qa, qb, qsa, qsb, qscale)``: phase-split queries (see the
    module docstring) and per-word sums; for ``dot``, FP16 high/low halves of ``q / qscale``
    with ``qscale`` a power of two per query, else FP32 (``qb``/``qsb`` unused)."""
    nq, dim = q.shape
    nw = padded // 8
    q = torch.nn.functional.pad(q, (0, padded - dim))
    qscale = torch.ones(nq, device=q.device)
    if dot:  # |q / qscale| <= 1: FP16 halves neither overflow nor lose the top bits
        top = q.abs().amax(dim=1)
        qscale = torch.where(top > 0, torch.exp2(torch.ceil(torch.log2(top))), qscale)
        q = q / qscale[:, None]
    phases = q.view(nq, nw, 8).transpose(1, 2).contiguous()  # [nq, 8, NW]
    sums = q.view(nq, nw, 8).sum(dim=2)  # [nq, NW]
    if not dot:
        return phases, phases, sums, sums, qscale
    hi, shi = phases.half(), sums.half()
    return hi, (phases - hi.float()).half(), shi, (sums - shi.float()).half(), qscale


def config(
    n: int,
    nq: int,
    keep: int,
    padded: int,
    block_size: int,
    device: torch.device,
    has_valid: bool,
    *,
    block_rows: int = BLOCK_ROWS,
    split: int | None = None,
    words_per_chunk: int | None = None,
    query_block: int | None = None,
    max_kp: int = MAX_KP,
) -> dict:
    """The launch parameters of ``_topk_kernel`` (its constexprs and compile options) for
    ``nq`` queries keeping ``keep`` of ``n`` rows; the keyword arguments override the defaults."""
    nw = padded // 8
    kp = next_pow2(keep)
    select = kp <= max_kp
    lists = MAX_LIST // kp if select else MAX_LIST  # queries per program whose lists fit
    dot = nq >= DOT_MIN_QUERIES and lists >= DOT_MIN_QUERIES
    qb = query_block or min(16 if dot else 8, next_pow2(nq), lists)  # more: registers spill (sm_80)
    if select:
        split = split or split_rows(n, device, block_rows, MAX_SPLIT_ROWS)
    else:  # nothing to select in a program: each writes its tile's keys
        kp = split = block_rows
    return dict(
        # 32-bit words per row: the nibbles, one word of scale and offset per block, the norm
        RW=nw + padded // block_size + 1,
        NW=nw,
        WPB=block_size // 8,
        NB=padded // block_size,
        WC=words_per_chunk or (16 if dot else min(8, next_pow2(nw))),  # tl.dot needs K >= 16
        SPLIT=split,
        BLOCK_N=block_rows,
        QB=qb,
        KP=kp,
        DOT=dot,
        SELECT=select,
        HAS_VALID=has_valid,
        # multiply-adds as FMAs, explicitly: Triton 3.10 turns the default off
        num_warps=8 if dot else 4,
        enable_fp_fusion=True,
    )


def topk(
    q: torch.Tensor,
    codes: torch.Tensor,
    valid: torch.Tensor | None,
    keep: int,
    padded: int,
    block_size: int,
    **overrides,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [nq, keep] float32, rows [nq, keep] int64)``, best first: see ``int4_topk``.
    Inputs validated by the caller (contiguous, 8-byte aligned, ``0 < keep <= n < 2**31``);
    ``overrides`` go to :func:`config`."""
    n, nq = codes.shape[0], q.shape[0]
    meta = config(n, nq, keep, padded, block_size, codes.device, valid is not None, **overrides)
    qa, qb_, qsa, qsb, qscale = _queries(q, padded, meta["DOT"])
    words, halves, floats = codes.view(torch.int32), codes.view(torch.float16), codes.view(torch.float32)
    mask = valid.view(torch.uint8) if valid is not None else words
    args = (words, halves, floats, qa, qb_, qsa, qsb, qscale, mask)
    return chunked_topk(_topk_kernel, args, n, nq, keep, meta, KEY_BUDGET, codes.device)
