"""Binary (sign) codes, 8 dimensions per byte, compared by Hamming distance.

Bit ``b`` of a vector is ``x[b] > 0``. Bits are packed most-significant first, the same
order as ``numpy.packbits`` (and so ``faiss.IndexBinaryFlat`` and sentence-transformers'
``quantize_embeddings(..., "ubinary")``):

==========  ==========================  ======================================
bytes        content                     shape per row
==========  ==========================  ======================================
0 .. D/8     sign bits                   (D/8,) uint8; dimension ``8j + i`` is bit
                                         ``7 - i`` of byte ``j``
..           zero bits                   up to a multiple of 8 bytes (64-bit words)
==========  ==========================  ======================================

Example, ``dim=384``: 48 bytes, no padding; ``dim=97``: 13 bytes of bits, padded to 16.
Padding bits are 0 in every row and every query, so they never add to a distance.
"""

from __future__ import annotations

import numpy as np
import torch

from quant_retriever.codecs.base import Codec, Scan
from quant_retriever.kernels import scans
from quant_retriever.kernels import triton as gpu

__all__ = ["Binary", "row_bytes", "encode", "decode", "hamming", "score", "WIDEN"]

#: Width of the Hamming pass, as a multiple of ``k``: the second stage re-ranks that many.
WIDEN = 20

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def row_bytes(dim: int) -> int:
    """Bytes of one encoded row: the sign bits rounded up to whole 64-bit words."""
    return -(-dim // 64) * 8


def encode(x: torch.Tensor) -> torch.Tensor:
    """Float vectors ``[n, dim]`` -> packed sign bits ``[n, row_bytes(dim)]`` uint8."""
    n, dim = x.shape
    nbytes = row_bytes(dim)
    if x.device.type == "cpu":  # numpy's packbits is this layout, in one pass
        bits = np.packbits(x.detach().numpy() > 0, axis=1)
        if bits.shape[1] == nbytes:  # dim a multiple of 64: no padding words
            return torch.from_numpy(bits)
        out = np.zeros((n, nbytes), dtype=np.uint8)
        out[:, : bits.shape[1]] = bits
        return torch.from_numpy(out)
    return _encode_torch(x)


def _encode_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`encode` on any device (the numpy path's reference)."""
    n, dim = x.shape
    nbytes = row_bytes(dim)
    bits = torch.zeros(n, nbytes * 8, dtype=torch.uint8, device=x.device)
    bits[:, :dim] = x > 0
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=x.device)
    return (bits.view(n, nbytes, 8) * weights).sum(dim=2, dtype=torch.uint8)


#: byte value -> its 8 bits (1 for a set bit), most significant bit first: [256, 8] float32
_BITS = (torch.arange(256).unsqueeze(1).bitwise_and(torch.tensor(_BIT_WEIGHTS)) != 0).float()
_SIGNS = _BITS * 2 - 1
_ON_DEVICE: dict[tuple[str, torch.device], torch.Tensor] = {}


def _table(name: str, device: torch.device) -> torch.Tensor:
    table = _ON_DEVICE.get((name, device))
    if table is None:
        table = _ON_DEVICE.setdefault((name, device), {"bits": _BITS, "signs": _SIGNS}[name].to(device))
    return table


def decode(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Packed rows ``[n, row_bytes]`` -> ``[n, dim]`` float32 of +1 (bit set) / -1 (one table
    lookup per byte)."""
    return _table("signs", codes.device)[codes.long()].view(codes.shape[0], -1)[:, :dim]


def _popcount64(v: torch.Tensor) -> torch.Tensor:
    # SWAR popcount; every shift is followed by a mask, so arithmetic shifts are harmless
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    v = v + (v >> 32)
    return v & 0x7F


def hamming(qcodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Hamming distances between packed queries ``[q, row_bytes]`` and rows ``[n, row_bytes]``.

    Returns ``[q, n]`` int32: a native popcount kernel on the CPU (see
    :mod:`quant_retriever.kernels.scans`), a SWAR popcount in plain torch elsewhere and as the
    fallback.
    """
    out = scans.hamming_scan(qcodes, codes)
    return out if out is not None else _hamming_eager(qcodes, codes)


def _hamming_eager(qcodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    qwords = qcodes.contiguous().view(torch.int64)  # [q, W]
    words = codes.contiguous().view(torch.int64)  # [n, W]
    return _popcount64(words.unsqueeze(0) ^ qwords.unsqueeze(1)).sum(dim=2).to(torch.int32)


def score(queries: torch.Tensor, codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Asymmetric scores of float ``queries: [q, dim]`` against +-1 codes ``[..., n, row_bytes]``.

    ``codes`` may carry a leading query dimension ``[q, n, row_bytes]`` (one candidate list per
    query); the result is ``[q, n]`` float32 ``<query, sign(x)>``.
    """
    signs = decode(codes.reshape(-1, codes.shape[-1]), dim)
    if codes.dim() == 3:
        signs = signs.view(codes.shape[0], codes.shape[1], dim)
        return torch.einsum("qd,qnd->qn", queries.float(), signs)
    return queries.float() @ signs.T


class Binary(Codec):
    """Sign bits compared by Hamming distance (see the module docstring). Candidates get a
    second stage: the float query against the +-1 codes of a ``WIDEN * k`` Hamming pass."""

    name = "binary"

    @property
    def row_bytes(self) -> int:
        return row_bytes(self.dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode(x)

    def stored_floats(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ()  # sign bits only: no number to damage

    def decode_unit(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # +-1 codes carry no norm: directions +-1/sqrt(dim) with norm sqrt(dim) decode to +-1
        root = self.dim**0.5
        return decode(rows, self.dim) / root, torch.full((rows.shape[0],), root, device=rows.device)

    def score(self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return hamming(encode(q), rows).neg_()

    def scans_in_place(self, device: torch.device) -> bool:
        return scans.available(device) or gpu.available(device)

    def selects_in_place(self, device: torch.device) -> bool:
        return scans.available(device) or gpu.available(device)

    def top(
        self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if gpu.available(rows.device):  # CUDA: a Triton counting select, best first
            dist, pos = gpu.hamming_topk(encode(q), rows, valid, n)
            return dist.neg_(), pos
        picked = scans.hamming_select(encode(q), rows, valid, n)
        if picked is None:
            return super().top(q, rows, valid, n)
        dist, pos = picked  # streaming selection instead of a top-k over all rows
        dist, order = torch.sort(dist, dim=1, stable=True)
        return dist.neg_(), torch.gather(pos, 1, order)

    def rescore(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``<q, +-1 code>`` of each query against its own candidates ``rows [nq, c, row_bytes]``,
        without decoding: per query a table of the partial sums over each byte value
        (``[row_bytes, 256]``), then one lookup per candidate byte."""
        nq, nbytes = q.shape[0], rows.shape[2]
        padded = torch.nn.functional.pad(q.float(), (0, nbytes * 8 - self.dim))
        sums = torch.einsum("qjb,vb->qjv", padded.view(nq, nbytes, 8), _table("bits", q.device))  # [nq, bytes, 256]
        picked = torch.gather(sums, 2, rows.long().transpose(1, 2))  # [nq, bytes, c]
        return picked.sum(dim=1) * 2 - q.float().sum(dim=1, keepdim=True)

    def candidates(
        self,
        q: torch.Tensor,
        codes: torch.Tensor,
        mask: torch.Tensor | None,
        n_valid: int,
        n_cand: int,
        k: int,
        scan: Scan,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = min(max(n_cand, WIDEN * k), n_valid)
        if not gpu.available(codes.device):  # CUDA: the Triton select below
            both = scans.binary_candidates(q, codes, mask, width, n_cand)
            if both is not None:  # the CPU kernel: both stages in one call
                return both
        _, rows = scan(width)
        return self.rerank(q, codes, rows, n_cand)
