"""Scalar INT8 codes with per-dimension ranges calibrated on the data.

``x[d] ~= lo[d] + scale[d] * (code[d] + 128)`` with ``scale[d] = (hi[d] - lo[d]) / 255``
floored at ``SCALE_FLOOR``: a constant dimension (all-MiniLM-L6-v2's dimension 127 is
about 1e-33 for every text) gets the floor instead of a division by zero, and decodes to
``lo[d]`` exactly. Values outside the calibrated range are clamped after rounding.

=========  ==============  =================================
tensor      shape           content
=========  ==============  =================================
codes       [n, dim] int8   ``round((x - lo) / scale) - 128``
lo, scale   [dim] float32   the calibration (kept by the owner)
=========  ==============  =================================
"""

from __future__ import annotations

import torch

from quant_retriever.codecs import _native

__all__ = ["calibrate", "encode", "decode", "score"]

SCALE_FLOOR = 1e-8
#: Below this many calibration rows, per-dimension ranges are too noisy to trust; every
#: dimension then gets the batch's overall range, widened by ``SMALL_BATCH_MARGIN``.
MIN_ROWS_PER_DIM_RANGE = 64
SMALL_BATCH_MARGIN = 0.5


def calibrate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension ``(lo, scale)``, both ``[dim]`` float32, from sample vectors ``[n, dim]``."""
    x = x.float()
    if x.shape[0] >= MIN_ROWS_PER_DIM_RANGE:
        lo, hi = x.amin(dim=0), x.amax(dim=0)
    else:
        lo_all, hi_all = x.min(), x.max()
        pad = (hi_all - lo_all) * SMALL_BATCH_MARGIN
        lo = (lo_all - pad).expand(x.shape[1]).clone()
        hi = (hi_all + pad).expand(x.shape[1]).clone()
    scale = ((hi - lo) / 255).clamp(min=SCALE_FLOOR)
    return lo, scale


def encode(x: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float ``[n, dim]`` -> ``[n, dim]`` int8 codes (clamped to the calibrated range)."""
    q = torch.round((x.float() - lo) / scale).clamp(0, 255) - 128
    return q.to(torch.int8)


def decode(codes: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``[..., dim]`` int8 codes -> float32 values of the same shape."""
    return lo + scale * (codes.float() + 128)


def score(queries: torch.Tensor, codes: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float ``queries: [q, dim]`` against codes ``[n, dim]`` -> ``[q, n]`` float32 inner products.

    Uses ``<q, lo + scale * (c + 128)> = <q * scale, c> + <q, lo + 128 * scale>``, so the
    corpus is only converted to float, never decoded.
    """
    q = queries.float()
    bias = (q @ (lo + 128 * scale)).unsqueeze(1)  # [q, 1]
    dots = _native.dense_scan(q * scale, codes)
    if dots is None:
        dots = (q * scale) @ codes.float().T
    return dots + bias
