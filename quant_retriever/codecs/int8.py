"""Per-row INT8 codes: no calibration, so a vector's code never depends on other vectors.

A vector ``x`` is split into its norm and direction ``u = x / |x|``; ``u`` is quantized
symmetrically with its own absmax: ``scale = max(|u|) / 127`` (floored at ``SCALE_FLOOR``),
``code = clamp(round(u / scale), -127, 127)``, so ``x ~= norm * scale * code``. Because
``max(|u|)`` lies in ``[1/sqrt(dim), 1]``, the scale is well away from underflow for every
finite vector; the norm carries the magnitude.

Row layout (``D4 = dim`` rounded up to a multiple of 4):

==========  ==================  ==========================================
bytes        content             shape per row
==========  ==================  ==========================================
0 .. dim     codes               (dim,) int8, ``-127..127``
dim .. D4    padding             zeros
D4 + 0       norm                (1,) float32, ``|x|``
D4 + 4       scale               (1,) float32, ``max|u| / 127``
==========  ==================  ==========================================

Example, ``dim=384``: 384 + 8 = 392 bytes; ``dim=97``: 100 + 8 = 108 bytes. The same rows
are the INT8 rescore copy on disk (:mod:`quant_retriever.rescore`).
"""

from __future__ import annotations

import torch

from quant_retriever.codecs.base import Codec, split_norm
from quant_retriever.kernels import scans

__all__ = ["Int8", "row_bytes", "encode", "decode_unit", "score"]

SCALE_FLOOR = 1e-30


def _d4(dim: int) -> int:
    return -(-dim // 4) * 4


def row_bytes(dim: int) -> int:
    """Bytes of one row (see the layout table)."""
    return _d4(dim) + 8


def encode(x: torch.Tensor) -> torch.Tensor:
    """Float ``[n, dim]`` -> rows ``[n, row_bytes]`` uint8."""
    n, dim = x.shape
    u, norms = split_norm(x)
    scale = (u.abs().amax(dim=1) / 127).clamp(min=SCALE_FLOOR) if dim else torch.ones(n, device=x.device)
    codes = torch.round(u / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)  # clamp after rounding
    out = torch.zeros(n, row_bytes(dim), dtype=torch.uint8, device=x.device)
    out[:, :dim] = codes.view(torch.uint8)
    out[:, _d4(dim) :] = torch.stack([norms, scale], dim=1).view(torch.uint8)
    return out


def _fields(rows: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views ``(codes [n, dim] int8, norms [n] float32, scales [n] float32)``; no copies."""
    factors = rows.view(torch.float32)[:, _d4(dim) // 4 :]
    return rows[:, :dim].view(torch.int8), factors[:, 0], factors[:, 1]


def decode_unit(rows: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows -> ``(directions [n, dim] float32, norms [n] float32)``."""
    codes, norms, scales = _fields(rows, dim)
    return codes.float() * scales.unsqueeze(1), norms.clone()


def score(q: torch.Tensor, rows: torch.Tensor, dim: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Float queries ``[nq, dim]`` against rows ``[n, row_bytes]`` -> ``[nq, n]`` float32
    ``norm * scale * <q, code>``: the rows are never decoded on the CPU (native kernel)."""
    out = scans.dense_scan(q, rows, torch.int8, dim, _d4(dim), 2, valid)
    if out is not None:
        return out
    codes, norms, scales = _fields(rows, dim)
    return (q.float() @ codes.float().T) * (norms * scales).unsqueeze(0)


class Int8(Codec):
    """Per-row INT8 of the direction, with float32 norm and scale (see the module docstring)."""

    name = "int8"
    exact = True

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode(x)

    def stored_floats(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _fields(rows, self.dim)[1:]

    def decode_unit(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_unit(rows, self.dim)

    def score(self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return score(q, rows, self.dim, valid)

    def dense_layout(self) -> tuple[torch.dtype, int, int]:
        return torch.int8, _d4(self.dim), 2

    def scans_in_place(self, device: torch.device) -> bool:
        return scans.available(device)
