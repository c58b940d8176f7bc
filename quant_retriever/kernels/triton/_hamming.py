"""Hamming top-k over packed sign bits: a counting select in two passes over the codes.

1. ``_histogram``: each program scans ``SPLIT`` rows (in tiles of ``BLOCK_N``) for ``QB``
   queries and writes one histogram of ``distance >> SHIFT`` per query: ``[nq, splits, NBINS]``.
2. The plan (a few torch ops on those histograms): per query the threshold bin ``t`` (the
   first where the running count reaches ``keep``), and per (query, split) the output slot of
   the split's first selected row. Rows in bins below ``t`` are all taken; rows in bin ``t``
   are taken in row order, up to the ``cut`` that completes ``keep`` (exact mode,
   ``SHIFT = 0``) or all of them (coarse mode, ``SHIFT > 0``: bins are ``2**SHIFT``
   distances wide, so the final order is settled by step 4).
3. ``_emit``: the same scan again, skipping splits that select nothing; each selected row is
   written to its slot (an exclusive prefix sum within the tile), so the output is in row
   order and deterministic, without atomics.
4. One small merge: ``torch.topk`` on ``(distance, row)`` int64 keys.

Coarse mode (64 bins) costs far less per row than exact mode (``next_pow2(64 * words + 1)``
bins); when a coarse threshold bin holds too many rows (heavy ties, e.g. many duplicates), the
call reruns in exact mode, whose output is exactly ``keep`` rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from quant_retriever.kernels.triton._common import INTERPRETED, next_pow2, popcount64, split_rows

INT32_MAX = 2**31 - 1
COARSE_BINS = 64
#: Rows per tile (one load of ``[BLOCK_N, words]`` int64) and most rows per program.
BLOCK_ROWS = 128
MAX_SPLIT_ROWS = 1 << 16
#: Queries per program (more: registers spill in ``_emit`` on sm_90), and the budget of
#: histogram entries (int32) per call.
QUERY_BLOCK = 8
HIST_BUDGET = 1 << 24
#: A coarse threshold bin may add this many candidates beyond ``keep`` (else: exact mode).
COARSE_EXTRA = 4096


@triton.jit
def _distances(tile, q_ptr, q, nq, words, W: tl.constexpr, NATIVE: tl.constexpr):
    """Distances ``[BLOCK_N]`` int32 of the rows in ``tile [BLOCK_N, WP]`` to query ``q``
    (queries past ``nq``, in the last block, repeat the last one)."""
    qw = tl.load(q_ptr + tl.minimum(q, nq - 1) * W + words, mask=words < W, other=0)
    return tl.sum(popcount64(tile ^ qw[None, :], NATIVE), axis=1)


@triton.jit
def _tile(codes_ptr, valid_ptr, rows, words, n, W: tl.constexpr, HAS_VALID: tl.constexpr):
    """The rows' words ``[BLOCK_N, WP]`` int64 (0 outside) and which rows may be selected."""
    inside = rows < n
    ok = inside
    if HAS_VALID:
        ok = ok & (tl.load(valid_ptr + rows, mask=inside, other=0) != 0)
    tile = tl.load(codes_ptr + rows[:, None] * W + words[None, :], mask=inside[:, None] & (words < W)[None, :], other=0)
    return tile, ok


@triton.jit
def _histogram(
    codes_ptr,
    q_ptr,
    valid_ptr,
    hist_ptr,
    n,
    nq,
    n_splits,
    n_qblocks,
    W: tl.constexpr,
    WP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QB: tl.constexpr,
    NBINS: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_VALID: tl.constexpr,
    NATIVE: tl.constexpr,
):
    # the programs of one split are adjacent, so its query blocks after the first find its rows in L2
    qb = tl.program_id(0) % n_qblocks
    split = tl.program_id(0) // n_qblocks
    q0 = qb * QB
    words = tl.arange(0, WP)
    qidx = tl.arange(0, QB)
    acc = tl.zeros([QB, NBINS], tl.int32)
    for start in range(0, SPLIT, BLOCK_N):
        rows = split.to(tl.int64) * SPLIT + start + tl.arange(0, BLOCK_N)
        tile, ok = _tile(codes_ptr, valid_ptr, rows, words, n, W, HAS_VALID)
        for i in tl.static_range(QB):
            d = _distances(tile, q_ptr, q0 + i, nq, words, W, NATIVE)
            h = tl.histogram(d >> SHIFT, NBINS, mask=ok)
            acc += tl.where(qidx[:, None] == i, h[None, :], 0)
    qs = q0 + qidx
    bins = tl.arange(0, NBINS)
    tl.store(
        hist_ptr + (qs[:, None].to(tl.int64) * n_splits + split) * NBINS + bins[None, :], acc, mask=(qs < nq)[:, None]
    )


@triton.jit
def _emit(
    codes_ptr,
    q_ptr,
    valid_ptr,
    thr_ptr,
    cut_ptr,
    slot_ptr,
    ties_ptr,
    count_ptr,
    out_d_ptr,
    out_r_ptr,
    n,
    nq,
    n_splits,
    n_qblocks,
    out_cols,
    W: tl.constexpr,
    WP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QB: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_VALID: tl.constexpr,
    NATIVE: tl.constexpr,
):
    qb = tl.program_id(0) % n_qblocks
    split = tl.program_id(0) // n_qblocks
    q0 = qb * QB
    qidx = tl.arange(0, QB)
    qs = q0 + qidx
    qok = qs < nq
    at = qs.to(tl.int64) * n_splits + split
    count = tl.load(count_ptr + at, mask=qok, other=0)
    if tl.sum(count) > 0:  # most splits select nothing for any query of the block
        words = tl.arange(0, WP)
        thr = tl.load(thr_ptr + qs, mask=qok, other=0)
        cut = tl.load(cut_ptr + qs, mask=qok, other=0)
        slot = tl.load(slot_ptr + at, mask=qok, other=0)  # next output slot per query
        ties = tl.load(ties_ptr + at, mask=qok, other=0)  # rows of the threshold bin seen before
        for start in range(0, SPLIT, BLOCK_N):
            rows = split.to(tl.int64) * SPLIT + start + tl.arange(0, BLOCK_N)
            tile, ok = _tile(codes_ptr, valid_ptr, rows, words, n, W, HAS_VALID)
            for i in tl.static_range(QB):
                d = _distances(tile, q_ptr, q0 + i, nq, words, W, NATIVE)
                b = d >> SHIFT
                mine = qidx == i  # this query's entries of thr, cut, slot and ties
                t = tl.sum(tl.where(mine, thr, 0))
                tie = (ok & (b == t)).to(tl.int32)
                tie_rank = tl.sum(tl.where(mine, ties, 0)) + (tl.cumsum(tie, 0) - tie)
                take = ((ok & (b < t)) | ((tie != 0) & (tie_rank < tl.sum(tl.where(mine, cut, 0))))).to(tl.int32)
                pos = tl.sum(tl.where(mine, slot, 0)) + (tl.cumsum(take, 0) - take)
                # queries past nq have thr = cut = 0 and take nothing
                dest = (q0 + i).to(tl.int64) * out_cols + pos
                tl.store(out_d_ptr + dest, d, mask=take != 0)
                tl.store(out_r_ptr + dest, rows, mask=take != 0)
                slot += tl.where(mine, tl.sum(take), 0)
                ties += tl.where(mine, tl.sum(tie), 0)


def _plan(hist: torch.Tensor, keep: int, exact: bool):
    """Threshold bins, cuts and per-split output slots from ``hist [nq, splits, NBINS]``.

    Returns ``(thr [nq], cut [nq], slot, ties, count [nq, splits], width)``: ``width`` is the
    most rows any query emits (``keep`` in exact mode).
    """
    hist = hist.long()
    nq, _, nbins = hist.shape
    cum = hist.sum(dim=1).cumsum(dim=1)  # [nq, NBINS]
    thr = (cum < keep).sum(dim=1)  # first bin reaching keep; NBINS: fewer valid rows than keep
    below = torch.where(thr > 0, cum.gather(1, (thr - 1).clamp(min=0)[:, None])[:, 0], 0)
    bins = torch.arange(nbins, device=hist.device)
    lower = (hist * (bins < thr[:, None, None])).sum(dim=2)  # [nq, splits]
    at_thr = hist.gather(2, thr.clamp(max=nbins - 1)[:, None, None].expand(-1, hist.shape[1], 1))[:, :, 0]
    at_thr = at_thr * (thr < nbins)[:, None]
    cut = keep - below if exact else torch.full_like(thr, 2**62)
    ties = at_thr.cumsum(dim=1) - at_thr  # threshold-bin rows in earlier splits
    count = lower + (cut[:, None] - ties).clamp(min=0).minimum(at_thr)
    slot = count.cumsum(dim=1) - count
    width = keep if exact else int(count.sum(dim=1).max())
    return thr, cut, slot.contiguous(), ties.contiguous(), count.contiguous(), width


def config(
    n: int,
    nq: int,
    row_bytes: int,
    device: torch.device,
    has_valid: bool,
    exact: bool,
    *,
    block_rows: int = BLOCK_ROWS,
    split: int | None = None,
    query_block: int = QUERY_BLOCK,
) -> dict:
    """The launch parameters of ``_histogram`` and ``_emit`` (their constexprs, ``NBINS``
    ``_histogram``'s alone, and compile options) for ``nq`` queries over ``n`` rows; keywords
    override the defaults."""
    w = row_bytes // 8
    maxd = 64 * w
    if exact:
        shift, nbins = 0, next_pow2(maxd + 1)
    else:
        shift, nbins = max(0, maxd.bit_length() - COARSE_BINS.bit_length() + 1), COARSE_BINS
    if split is None:  # enough programs, and a bounded histogram
        split = split_rows(n, device, block_rows, MAX_SPLIT_ROWS)
        split = max(split, next_pow2(-(-n * nq * nbins // HIST_BUDGET)))
    return dict(
        W=w,
        WP=next_pow2(w),
        SPLIT=split,
        BLOCK_N=block_rows,
        QB=min(query_block, next_pow2(nq)),
        NBINS=nbins,
        SHIFT=shift,
        HAS_VALID=has_valid,
        NATIVE=not INTERPRETED,
        enable_fp_fusion=True,
    )  # no float math; explicit, so Triton 3.9 does not warn


def topk(
    qcodes: torch.Tensor,
    codes: torch.Tensor,
    valid: torch.Tensor | None,
    keep: int,
    *,
    exact: bool = False,
    **overrides,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dist [nq, keep] int32, rows [nq, keep] int64)``, best first: see ``hamming_topk``.
    Inputs validated by the caller (contiguous, 8-byte aligned, ``0 < keep <= n < 2**31``);
    ``overrides`` go to :func:`config`."""
    n, nq = codes.shape[0], qcodes.shape[0]
    meta = config(n, nq, codes.shape[1], codes.device, valid is not None, exact, **overrides)
    nbins = meta.pop("NBINS")
    words, qwords = codes.view(torch.int64), qcodes.view(torch.int64)
    n_qblocks = -(-nq // meta["QB"])
    n_splits = -(-n // meta["SPLIT"])
    mask = valid.view(torch.uint8) if valid is not None else words
    grid = (n_qblocks * n_splits,)
    hist = torch.empty(nq, n_splits, nbins, dtype=torch.int32, device=codes.device)
    _histogram[grid](words, qwords, mask, hist, n, nq, n_splits, n_qblocks, NBINS=nbins, **meta)
    thr, cut, slot, ties, count, width = _plan(hist, keep, exact)
    if not exact and width > keep + COARSE_EXTRA:
        return topk(qcodes, codes, valid, keep, exact=True, **overrides)
    out_d = torch.full((nq, width), INT32_MAX, dtype=torch.int32, device=codes.device)
    out_r = torch.full((nq, width), n, dtype=torch.int64, device=codes.device)
    _emit[grid](
        words, qwords, mask, thr, cut, slot, ties, count, out_d, out_r, n, nq, n_splits, n_qblocks, width, **meta
    )
    n_valid = n if valid is None else int(valid.sum())
    if n_valid < keep:  # too few valid rows: pad with the others, in row order (as the C kernel)
        pad = torch.nonzero(~valid)[: keep - n_valid, 0]
        out_d = torch.cat([out_d, torch.full((nq, len(pad)), INT32_MAX, dtype=torch.int32, device=codes.device)], 1)
        out_r = torch.cat([out_r, pad.expand(nq, -1)], 1)
    keys = (out_d.long() << 32) | out_r
    keys = torch.topk(keys, keep, dim=1, largest=False).values
    return (keys >> 32).to(torch.int32), keys & 0xFFFFFFFF
