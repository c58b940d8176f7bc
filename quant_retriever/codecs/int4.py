"""Similarity-aware block-wise INT4 codes, two values per byte.

Each vector ``x`` is split into its norm (kept in float32) and its direction ``u = x / |x|``.
``u`` is cut into blocks of ``block_size`` elements; each block is min-max quantized to
``0..15`` with an FP16 scale and an FP16 offset (the block minimum):
``u[i] ~= offset[b] + scale[b] * code[i]``.

Packed row layout (``P = ceil(dim / block_size) * block_size`` padded elements,
``B = P / block_size`` blocks; every codec row is a run of ``uint8``):

==========  ========================  ===============================================
bytes        content                   shape per row
==========  ========================  ===============================================
0 .. P/2     nibbles                   (P/2,) uint8: element ``2j`` in the low nibble,
                                       element ``2j+1`` in the high nibble of byte ``j``
P/2 + 0      scales                    (B,) float16, little-endian
P/2 + 2B     offsets                   (B,) float16
P/2 + 4B     norm                      (1,) float32 (4-byte aligned: P/2 and 4B are
                                       multiples of 4)
==========  ========================  ===============================================

Example, ``dim=384, block_size=64``: 192 + 12 + 12 + 4 = 220 bytes.
Elements past ``dim`` repeat the last real element (so they do not widen the block range)
and are never scored: queries are padded with zeros.
"""

from __future__ import annotations

import torch

from quant_retriever.codecs.base import Codec, split_norm
from quant_retriever.kernels import scans
from quant_retriever.kernels import triton as gpu

__all__ = ["Int4", "row_bytes", "encode", "decode", "score"]

#: Scales are floored at the smallest normal FP16 number, so a constant block never divides by 0.
SCALE_FLOOR = 2.0**-14
#: Largest block: one block spans the whole padded vector at most, and blocks are bytes apart.
MAX_BLOCK_SIZE = 1 << 16


def _padded(dim: int, block_size: int) -> int:
    return -(-dim // block_size) * block_size


def row_bytes(dim: int, block_size: int = 64) -> int:
    """Bytes of one encoded row (see the layout table in the module docstring)."""
    p = _padded(dim, block_size)
    return p // 2 + 4 * (p // block_size) + 4


def _fields(codes: torch.Tensor, dim: int, block_size: int):
    """Views of packed rows ``codes: [n, row_bytes]`` (rows contiguous): no copies.

    Returns nibbles [n, P/2] uint8, scales [n, B] float16, offsets [n, B] float16, norms [n]
    float32.
    """
    p = _padded(dim, block_size)
    nb = p // block_size
    halves = codes.view(torch.float16)  # [n, row_bytes / 2]
    m = p // 4  # first float16 after the nibbles
    norms = codes.view(torch.float32)[:, (p // 2 + 4 * nb) // 4]
    return codes[:, : p // 2], halves[:, m : m + nb], halves[:, m + nb : m + 2 * nb], norms


def encode(x: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Encode float vectors ``x: [n, dim]`` into packed rows ``[n, row_bytes]`` uint8."""
    n, dim = x.shape
    p = _padded(dim, block_size)
    nb = p // block_size
    u, norms = split_norm(x)
    if p > dim:  # repeat the last element so padding never widens a block's range
        u = torch.cat([u, u[:, -1:].expand(n, p - dim)], dim=1)
    blocks = u.view(n, nb, block_size)
    lo = blocks.amin(dim=2).to(torch.float16)
    hi = blocks.amax(dim=2)
    scale = ((hi - lo.float()) / 15).clamp(min=SCALE_FLOOR).to(torch.float16)
    # quantize against the FP16-rounded scale/offset actually stored; clamp after rounding
    q = torch.round((blocks - lo.float().unsqueeze(2)) / scale.float().unsqueeze(2))
    q = q.clamp(0, 15).to(torch.uint8).view(n, p)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    meta = torch.cat([scale, lo], dim=1).view(torch.uint8)
    out = torch.empty(n, row_bytes(dim, block_size), dtype=torch.uint8, device=x.device)
    out[:, : p // 2] = packed
    out[:, p // 2 : p // 2 + meta.shape[1]] = meta
    out[:, p // 2 + meta.shape[1] :] = norms.unsqueeze(1).view(torch.uint8)
    return out


def _unpack(nibbles: torch.Tensor) -> torch.Tensor:
    """[n, P/2] uint8 -> [n, P] float32 codes in 0..15."""
    return torch.stack([nibbles & 15, nibbles >> 4], dim=2).view(nibbles.shape[0], -1).float()


def decode_unit(codes: torch.Tensor, dim: int, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows ``[n, row_bytes]`` -> ``(directions [n, dim] float32, norms [n] float32)``."""
    nibbles, scales, offsets, norms = _fields(codes, dim, block_size)
    n = codes.shape[0]
    q = _unpack(nibbles).view(n, -1, block_size)
    u = offsets.float().unsqueeze(2) + scales.float().unsqueeze(2) * q
    return u.view(n, -1)[:, :dim].contiguous(), norms.clone()


def decode(codes: torch.Tensor, dim: int, block_size: int = 64) -> torch.Tensor:
    """Packed rows ``[n, row_bytes]`` -> float32 vectors ``[n, dim]`` (norm re-applied)."""
    u, norms = decode_unit(codes, dim, block_size)
    return u * norms.unsqueeze(1)


def score(
    queries: torch.Tensor, codes: torch.Tensor, dim: int, block_size: int = 64, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Asymmetric scores: float ``queries: [q, dim]`` against packed rows ``codes: [n, row_bytes]``.

    Returns ``[q, n]`` float32 inner products ``<query, decode(code)>``. On the CPU a fused
    native kernel scans the nibbles directly (see :mod:`quant_retriever.kernels.scans`); elsewhere (and as the
    fallback) the rows given are decoded, so callers bound memory by passing chunks.
    """
    p = _padded(dim, block_size)
    q = _padded_queries(queries, dim, block_size)
    out = scans.int4_scan(q, codes, p // 2, p // block_size, valid)
    return out if out is not None else _score_eager(q, codes, dim, block_size)


def _padded_queries(queries: torch.Tensor, dim: int, block_size: int) -> torch.Tensor:
    """Float queries zero-padded to the padded width (padding elements are never scored)."""
    p = _padded(dim, block_size)
    q = queries.float()
    return torch.nn.functional.pad(q, (0, p - dim)) if p > dim else q


def _score_eager(q: torch.Tensor, codes: torch.Tensor, dim: int, block_size: int) -> torch.Tensor:
    # q: [q, P] zero-padded; decode [n, P] (scale only), one matmul, offsets via block sums
    p = _padded(dim, block_size)
    nb = p // block_size
    nibbles, scales, offsets, norms = _fields(codes, dim, block_size)
    n = codes.shape[0]
    qsum = q.view(q.shape[0], nb, block_size).sum(dim=2)  # [q, B]
    deq = _unpack(nibbles).view(n, nb, block_size) * scales.float().unsqueeze(2)
    return (q @ deq.view(n, p).T + qsum @ offsets.float().T) * norms.float().unsqueeze(0)


class Int4(Codec):
    """Block-wise INT4 (see the module docstring); ``block_size`` a positive multiple of 8."""

    name = "int4"

    def __init__(self, dim: int, block_size: int = 64):
        super().__init__(dim)
        if isinstance(block_size, bool) or not isinstance(block_size, int):
            raise TypeError(f"block_size must be an int; got {type(block_size).__name__}.")
        if block_size <= 0 or block_size % 8 or block_size > MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be a multiple of 8 in 8..{MAX_BLOCK_SIZE}; got {block_size}.")
        self.block_size = block_size

    @classmethod
    def create(cls, dim: int, options: dict) -> Int4:
        return cls(dim, options.get("block_size", 64))

    def params(self) -> dict:
        return {"block_size": self.block_size}

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.dim, self.block_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode(x, self.block_size)

    def stored_floats(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _fields(rows, self.dim, self.block_size)[1:]

    def decode_unit(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_unit(rows, self.dim, self.block_size)

    def score(self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return score(q, rows, self.dim, self.block_size, valid)

    def scans_in_place(self, device: torch.device) -> bool:
        return scans.available(device) or gpu.available(device)

    def selects_in_place(self, device: torch.device) -> bool:
        return scans.available(device) or gpu.available(device)  # a running top-k, no score per row

    def top(
        self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if gpu.available(rows.device):  # CUDA: scores and top-k fused in one Triton kernel
            return gpu.int4_topk(q, rows, valid, n, self.dim, self.block_size)
        p = _padded(self.dim, self.block_size)
        padded = _padded_queries(q, self.dim, self.block_size)
        picked = scans.int4_scan(padded, rows, p // 2, p // self.block_size, valid, keep=n)
        return picked if picked is not None else super().top(q, rows, valid, n)
