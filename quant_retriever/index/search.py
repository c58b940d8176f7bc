"""The search pipeline of :class:`~quant_retriever.index.QuantizedIndex`, for ``k`` results and
``rescore_multiplier = m``:

1. queries are split into norm and direction (ranking by inner product does not depend on a
   query's norm); the codec's first stage finds the top ``k * m`` rows per query
   (:meth:`Pipeline.scan`): in one native call on the CPU, whose kernels keep each query's
   best rows while they scan (no score per row is stored; kept lists stay under 256 MB), or
   chunk by chunk elsewhere (at most ``SCORES_PER_CHUNK`` scores and ``DECODED_PER_CHUNK``
   decoded floats a step: 16 MB and 64 MB), merging a running top-k. A codec may add a second
   stage (binary: a ``20 * k`` Hamming pass re-ranked by the float query against +-1 codes);
2. with rescoring on, the candidates a codec's error bounds rule out are dropped (rotated codes:
   :func:`prune`), and the rest are read from the rescore copy and scored again
   (:func:`rescore`): one query in place, in one native call; a few queries against every
   distinct candidate at once; many queries each against its own; the best ``k`` are kept and
   multiplied by the query norms. A row of the copy that holds a NaN or an infinity (a damaged
   file) ranks below every sound row.

A selection of rows (``mask``, or the row numbers ``subset`` of a small one) restricts the
first stage before its top-k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quant_retriever.codecs import FLOAT32_MAX, Codec, split_norm
from quant_retriever.index.snapshot import Snapshot

__all__ = ["SearchResult", "Pipeline", "prune", "SCORES_PER_CHUNK", "DECODED_PER_CHUNK", "RESCORE_ALL_PAIRS"]

#: Scores held per scan step (``queries * rows``), and float elements of decoded rows per step
#: where a codec has to decode (plain-torch paths): 16 MB and 64 MB.
SCORES_PER_CHUNK = 1 << 22
DECODED_PER_CHUNK = 1 << 24
#: Rescoring scores every query against every distinct candidate when those number at most
#: this many times the candidates of one query (one native scan), else per query.
RESCORE_ALL_PAIRS = 4


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


@dataclass
class Pipeline:
    """How one index searches: its codec, its rescore format, its device. ``chunk`` fixes the
    rows per scan step (``None``: sized by :meth:`chunk_rows`); ``prune``: rescore only the
    candidates the codec's error bounds cannot rule out (see :func:`prune`)."""

    codec: Codec
    rescore_codec: Codec
    device: torch.device
    chunk: int | None = None
    prune: bool = True

    def search(self, snap: Snapshot, q: torch.Tensor, mask, subset, n_valid: int, k: int, n_cand: int):
        """Top-``k`` (scores, rows: ``[q, k]`` float32 and int64 numpy) of ``snap`` among
        ``n_valid`` rows: those of ``mask``, or the row numbers ``subset`` (gathered), from
        ``n_cand`` first-stage candidates, rescored when ``snap`` has a rescore copy."""
        u, qnorm = split_norm(q)  # ranking does not depend on the query norm
        if subset is None:
            codes = snap.codes[: snap.rows]
        else:
            subset_t = torch.from_numpy(subset).to(self.device)
            codes = snap.codes[subset_t]
        s, rows = self.codec.candidates(
            u, codes, mask, n_valid, n_cand, k, lambda n: self.scan(codes, u, mask, min(n, n_valid))
        )
        pad = None
        if snap.rescore is not None and self.prune and rows.shape[1] > k:
            bounds = self.codec.error_bounds(codes[rows.flatten()])
            if bounds is not None:
                s, rows, pad = prune(s, rows, bounds.view(rows.shape), k)
        if subset is not None:
            rows = subset_t[rows]
        if snap.rescore is not None:
            if rows.shape[0] == 1 and self.device.type == "cpu":  # read in place, ranked in one native call
                top = snap.rescore.top(u, float(qnorm[0]), rows[0], k, snap.rows)
                if top is not None:
                    return top[0][None], rows[0].numpy()[top[1]][None]
            s = rescore(snap, self.rescore_codec, self.device, u, rows)
            if pad is not None:
                s = s.masked_fill(pad.to(s.device), -torch.inf)
        s, pos = torch.sort(s.float(), dim=1, descending=True, stable=True)  # ties: first-stage order
        s, pos = s[:, :k], pos[:, :k]
        scaled = s.cpu().numpy().astype(np.float64) * qnorm.cpu().numpy().astype(np.float64)[:, None]
        scaled = np.fmin(np.fmax(scaled, -FLOAT32_MAX, out=scaled), FLOAT32_MAX, out=scaled)  # NaN (-inf * 0) -> -max
        return scaled.astype(np.float32), torch.gather(rows, 1, pos).cpu().numpy()

    def scan(self, codes: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None, n_top: int):
        """First stage over ``codes [rows, row_bytes]``: the top-``n_top`` (scores, positions),
        each ``[q, n_top]``, merged over steps of :meth:`chunk_rows` rows.

        ``mask`` (``[rows]`` bool, ``None`` = all rows) is applied before each step's top-k.
        Rows outside it score lowest and are never returned while ``n_top`` <= valid rows.
        """
        best_s = best_r = None
        n = codes.shape[0]
        step = self.chunk_rows(n, len(q))
        for start in range(0, n, step):
            stop = min(start + step, n)
            valid = None if mask is None else mask[start:stop]
            top_s, top_r = self.codec.top(q, codes[start:stop], valid, min(n_top, stop - start))
            if start:
                top_r += start
            if best_s is not None:
                top_s, top_r = torch.cat([best_s, top_s], dim=1), torch.cat([best_r, top_r], dim=1)
                if top_s.shape[1] > n_top:  # stable: equal scores keep the lower row (earlier step)
                    top_s, pos = torch.sort(top_s, dim=1, descending=True, stable=True)
                    top_s, top_r = top_s[:, :n_top], torch.gather(top_r, 1, pos[:, :n_top])
            best_s, best_r = top_s, top_r
        return best_s, best_r

    def chunk_rows(self, rows: int, n_queries: int) -> int:
        """Rows per scan step: every row when the codec selects without scores (the native
        kernels); else ``SCORES_PER_CHUNK / queries``, and no more than
        ``DECODED_PER_CHUNK / dim`` when the codec decodes rows to score them."""
        if self.chunk is not None:
            return self.chunk
        if self.codec.selects_in_place(self.device):
            return min(max(rows, 1), 1 << 30)
        step = SCORES_PER_CHUNK // n_queries
        if not self.codec.scans_in_place(self.device):
            step = min(step, DECODED_PER_CHUNK // self.codec.dim)
        return max(step, 1024)


def prune(
    s: torch.Tensor, rows: torch.Tensor, bounds: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Candidates worth rescoring: a row whose upper bound (score + bound) is below the k-th
    best lower bound (score - bound) of its query cannot reach that query's top ``k``. Returns
    the kept ``(scores, rows)`` first, in their order, cut to the most any query keeps, and the
    mask ``[q, c]`` of the columns past a query's own kept rows (rescored, then dropped), or
    ``None`` when every query keeps as many. At least ``k`` rows are always kept."""
    lower = torch.topk(s - bounds, k, dim=1).values[:, -1:]
    keep = (s + bounds) >= lower
    if bool(keep.all()):
        return s, rows, None
    counts = keep.sum(dim=1)
    width = int(counts.max())
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]
    pad = torch.arange(width, device=s.device)[None, :] >= counts[:, None]
    return torch.gather(s, 1, order), torch.gather(rows, 1, order), (pad if bool(pad.any()) else None)


def rescore(snap: Snapshot, codec: Codec, device: torch.device, u: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Scores ``[q, c]`` of unit queries ``u`` against their candidates ``rows [q, c]``, from
    the rescore copy (``codec`` rows): each distinct row read once for all queries, then every
    query against every distinct row (:func:`_all_pairs`) when the queries share candidates,
    or each against its own (:func:`_per_query`). Damaged rows score ``-inf``."""
    one = rows.shape[0] == 1  # one query's candidates are distinct rows already, in order
    uniq, inverse = (rows[0].cpu().numpy(), None) if one else np.unique(rows.cpu().numpy(), return_inverse=True)
    cand = snap.rescore.gather(uniq, snap.rows)
    broken = codec.bad_rows(cand)
    if device.type == "cuda":  # one pinned, asynchronous copy to the GPU
        cand = cand.pin_memory().to(device, non_blocking=True)
    if one:
        s = codec.score(u, cand)
    else:
        inverse = torch.from_numpy(inverse.reshape(rows.shape)).to(device)
        if len(uniq) <= RESCORE_ALL_PAIRS * rows.shape[1]:
            s = _all_pairs(codec, u, cand, inverse)
        else:
            s = _per_query(codec, u, cand, inverse)
    if len(broken):
        hit = torch.zeros(len(uniq), dtype=torch.bool, device=s.device)
        hit[torch.from_numpy(broken).to(s.device)] = True
        s = s.float().masked_fill(hit[None] if one else hit[inverse], float("-inf"))
    return s


def _all_pairs(codec: Codec, u: torch.Tensor, cand: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Every query against every distinct candidate (one scan), then each query's own picked."""
    return torch.gather(codec.score(u, cand), 1, inverse)


def _per_query(codec: Codec, u: torch.Tensor, cand: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Each query against its own candidates only (queries that share few candidates)."""
    return codec.rescore(u, cand[inverse.reshape(-1)].view(*inverse.shape, -1))
