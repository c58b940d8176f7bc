"""Unquantized directions in FP16 / FP32 with a float32 norm, for like-for-like comparisons
(and FP16 as the finer rescore copy).

Row layout (``E`` = 2 for FP16, 4 for FP32; ``W = dim * E`` rounded up to a multiple of 4):

==========  ==================  ==========================================
bytes        content             shape per row
==========  ==================  ==========================================
0 .. W       direction           (dim,) float16 / float32 ``u = x / |x|``
W + 0        norm                (1,) float32 ``|x|``
==========  ==================  ==========================================

Example, ``dim=384``: FP16 772 bytes, FP32 1540 bytes. Keeping the direction (never the raw
vector) means FP16 neither overflows above 65504 nor flushes tiny vectors to zero.
"""

from __future__ import annotations

import torch

from quant_retriever.codecs.base import Codec, split_norm
from quant_retriever.kernels import scans

__all__ = ["Float16", "Float32"]


class _Float(Codec):
    dtype: torch.dtype
    exact = True

    @property
    def _width(self) -> int:
        return -(-self.dim * self.dtype.itemsize // 4) * 4

    @property
    def row_bytes(self) -> int:
        return self._width + 4

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        u, norms = split_norm(x)
        out = torch.zeros(x.shape[0], self.row_bytes, dtype=torch.uint8, device=x.device)
        out[:, : self.dim * self.dtype.itemsize] = u.to(self.dtype).view(torch.uint8)
        out[:, self._width :] = norms.unsqueeze(1).view(torch.uint8)
        return out

    def _fields(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``(directions [n, dim] of dtype, norms [n] float32)``; no copies."""
        return rows[:, : self.dim * self.dtype.itemsize].view(self.dtype), rows.view(torch.float32)[:, self._width // 4]

    def stored_floats(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._fields(rows)

    def decode_unit(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, norms = self._fields(rows)
        return u.float(), norms.clone()

    def score(self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        u, norms = self._fields(rows)
        return (q.float() @ u.float().T) * norms.unsqueeze(0)


class Float16(_Float):
    """FP16 directions; scanned by the native kernel on the CPU."""

    name = "fp16"
    dtype = torch.float16

    def score(self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        out = scans.dense_scan(q, rows, torch.float16, self.dim, self._width, 1, valid)
        return out if out is not None else super().score(q, rows)

    def dense_layout(self) -> tuple[torch.dtype, int, int]:
        return torch.float16, self._width, 1

    def scans_in_place(self, device: torch.device) -> bool:
        return scans.available(device)


class Float32(_Float):
    """FP32 directions; scanned by a strided matmul (no copy)."""

    name = "fp32"
    dtype = torch.float32

    def scans_in_place(self, device: torch.device) -> bool:
        return True
