"""Rotated codes: 1, 2 or 4 bits per dimension on one fixed grid, with a per-row correction
(RaBitQ's and TurboQuant's estimator, calibration-free).

A vector ``x`` is split into its norm and direction ``u = x / |x|``; ``u`` is rotated by a
fixed random orthogonal matrix ``R`` (the same for every vector of a dimension: seeded, never
learned from data), so each coordinate of ``R u`` is close to ``N(0, 1/dim)`` whatever ``u``
was. Each coordinate, times ``sqrt(dim)``, is rounded to the nearest level of the Lloyd-Max
grid of a standard normal with ``2**bits`` levels (:data:`LEVELS`): the code ``c``, and
``xbar = LEVELS[c]``. Inner products are estimated as

    <q, x> ~= |x| * <R q, xbar> / <xbar, R u>

(the division removes the bias of the grid: RaBitQ, SIGMOD 2024; it is exact when ``q = u``).
``<xbar, R u>`` is positive for any non-zero ``u`` (each level has its coordinate's sign).
Decoding gives the vector this estimator scores against: ``R^T xbar / <xbar, R u>`` and the
norm.

Packed row layout (``P`` = ``dim`` rounded up so that the codes fill whole 4-byte words, or
8-byte words at 1 bit, whose rows a Hamming pass reads as 64-bit words):

==============  ===================  ==============================================
bytes            content              shape per row
==============  ===================  ==============================================
0 .. P*b/8       codes                (P*b/8,) uint8: element ``j`` in bits
                                      ``(j*b) % 8 ..`` of byte ``j*b // 8`` (low first)
P*b/8 + 0        norm                 (1,) float32: ``|x|``
P*b/8 + 4        dot                  (1,) float32: ``<xbar, R u>`` (1 for a zero vector)
==============  ===================  ==============================================

Example, ``dim=384``: 48 + 8 = 56 bytes at 1 bit (``rq1``), 96 + 8 = 104 at 2 bits
(``rq2``), 192 + 8 = 200 at 4 bits (``rq4``). Padding elements hold code 0 and are never
scored (rotated queries are padded with zeros).

The rotation is the Q of a QR decomposition of a ``dim x dim`` standard normal matrix drawn
with numpy's PCG64 from :data:`SEED` (in float64, signs fixed by R's diagonal), cached per
dimension, device and precision: vectors are rotated in float64 (so that a code never depends
on its batch), queries in float32.
"""

from __future__ import annotations

import numpy as np
import torch

from quant_retriever.codecs.base import Codec, Scan, split_norm
from quant_retriever.codecs.binary import WIDEN
from quant_retriever.kernels import scans
from quant_retriever.kernels import triton as gpu

__all__ = ["Rotated", "Rq1", "Rq2", "Rq4", "LEVELS", "SEED", "rotation"]

SEED = 20250417
#: The confidence constant of :meth:`Rotated.error_bounds`.
ERROR_EPS = 1.9
#: Lloyd-Max levels of a standard normal, ascending, per bit width (1 bit: +-sqrt(2/pi)).
LEVELS: dict[int, tuple[float, ...]] = {
    1: (-0.7978845608, 0.7978845608),
    2: (-1.5104176, -0.4527800, 0.4527800, 1.5104176),
    4: tuple(
        s * v
        for s, half in ((-1, True), (1, False))
        for v in (
            (2.7326, 2.0690, 1.6181, 1.2562, 0.9424, 0.6568, 0.3881, 0.1284)
            if half
            else (0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0690, 2.7326)
        )
    ),
}

_ROTATIONS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
_ENERGY: dict[int, np.ndarray] = {}


def rotation(dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed ``[dim, dim]`` orthogonal matrix ``R`` of this dimension (float64 as drawn,
    or rounded to ``dtype``)."""
    key = (dim, dtype, torch.device(device))
    r = _ROTATIONS.get(key)
    if r is None:
        exact = _ROTATIONS.get((dim, torch.float64, torch.device("cpu")))
        if exact is None:
            g = np.random.Generator(np.random.PCG64(SEED)).standard_normal((dim, dim))
            q, tri = np.linalg.qr(g)
            q *= np.where(np.diag(tri) < 0, -1.0, 1.0)[None, :]
            exact = _ROTATIONS.setdefault((dim, torch.float64, torch.device("cpu")), torch.from_numpy(q.T.copy()))
        r = _ROTATIONS.setdefault(key, exact.to(device=device, dtype=dtype))
    return r


class Rotated(Codec):
    """Rotated ``bits``-bit codes (see the module docstring); subclasses fix ``bits``."""

    bits: int

    @property
    def padded(self) -> int:
        per_word = (64 if self.bits == 1 else 32) // self.bits
        return -(-self.dim // per_word) * per_word

    @property
    def code_bytes(self) -> int:
        return self.padded * self.bits // 8

    @property
    def row_bytes(self) -> int:
        return self.code_bytes + 8

    def _levels(self, device) -> torch.Tensor:
        return torch.tensor(LEVELS[self.bits], dtype=torch.float32, device=device)

    def rotate(self, v: torch.Tensor) -> torch.Tensor:
        """``[n, dim]`` -> ``R v`` per row, zero-padded to ``[n, padded]`` float32."""
        out = v.float() @ rotation(self.dim, v.device).T
        return torch.nn.functional.pad(out, (0, self.padded - self.dim)) if self.padded > self.dim else out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        u, norms = split_norm(x)
        # in float64, so that a row's code never depends on the batch (a float32 GEMM's
        # rounding does, through its blocking)
        ru = u.double() @ rotation(self.dim, x.device, torch.float64).T
        codes, dot = self._nearest(ru)
        dot = torch.where(norms > 0, dot, torch.ones_like(dot)).float()
        full = torch.zeros(n, self.padded, dtype=torch.uint8, device=x.device)
        full[:, : self.dim] = codes.to(torch.uint8)
        per_byte = 8 // self.bits
        shifts = torch.arange(per_byte, device=x.device, dtype=torch.uint8) * self.bits
        packed = (full.view(n, -1, per_byte) << shifts).sum(dim=2, dtype=torch.uint8)
        out = torch.empty(n, self.row_bytes, dtype=torch.uint8, device=x.device)
        out[:, : self.code_bytes] = packed
        out[:, self.code_bytes :] = torch.stack([norms.float(), dot], dim=1).view(torch.uint8)
        return out

    def _nearest(self, ru: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes of rotated unit rows ``ru [n, dim]`` (float64): the nearest level of
        ``ru * sqrt(dim)``; and their ``dot``, ``<xbar, ru>``."""
        levels = self._levels(ru.device).double()
        codes = torch.searchsorted((levels[1:] + levels[:-1]) / 2, (ru * self.dim**0.5).contiguous())
        return codes, (levels[codes] * ru).sum(dim=1)

    def _fields(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of rows ``[n, row_bytes]``: codes ``[n, code_bytes]`` uint8, norms, dots ``[n]``."""
        floats = rows.view(torch.float32)
        first = self.code_bytes // 4
        return rows[:, : self.code_bytes], floats[:, first], floats[:, first + 1]

    def stored_floats(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._fields(rows)[1:]

    def bad_rows(self, rows: torch.Tensor) -> np.ndarray:
        """Rows with a stored NaN or infinity, and rows no encoder writes: a negative norm or a
        ``dot`` that is not positive (it divides every score)."""
        _, norms, dots = self._fields(rows)
        odd = torch.nonzero(~(norms >= 0) | ~(dots > 0)).flatten().cpu().numpy()
        return np.union1d(super().bad_rows(rows), odd).astype(np.int64)

    def _energy(self) -> np.ndarray:
        """``|xbar|^2`` by bytes: per byte value, the sum of the squared levels of the codes it
        packs (``[256]`` float32, cached per bit width)."""
        table = _ENERGY.get(self.bits)
        if table is None:
            levels = np.array(LEVELS[self.bits])
            packed = (np.arange(256)[:, None] >> (np.arange(8 // self.bits) * self.bits)) & ((1 << self.bits) - 1)
            table = _ENERGY.setdefault(self.bits, (levels[packed] ** 2).sum(axis=1).astype(np.float32))
        return table

    def error_bounds(self, rows: torch.Tensor) -> torch.Tensor:
        """RaBitQ's bound (SIGMOD 2024, Theorem 3.2), on the grid vector normalised: with
        ``c = <xbar, R u> / |xbar|``, the error of an estimate against a unit query is close to
        normal with standard deviation ``|x| * sqrt(1 - c^2) / c / sqrt(dim - 1)``; the bound is
        ``ERROR_EPS = 1.9`` of those (the paper's choice: about 94% of estimates lie within it,
        and the rows that matter, near a top-k's edge, are rarely the ones outside). Zero
        vectors: 0. Computed in numpy (a few candidates: cheaper than a dozen torch calls)."""
        r = rows.cpu().numpy()
        norm_dot = r[:, self.code_bytes : self.code_bytes + 8].view(np.float32)
        padding = (self.padded - self.dim) * LEVELS[self.bits][0] ** 2  # padded elements hold code 0
        xbar2 = self._energy()[r[:, : self.code_bytes]].sum(axis=1) - padding
        spread = np.sqrt(np.maximum(xbar2 / (norm_dot[:, 1] * norm_dot[:, 1]) - 1, 0))  # sqrt(1 - c^2) / c
        bounds = norm_dot[:, 0] * spread * np.float32(ERROR_EPS / max(self.dim - 1, 1) ** 0.5)
        return torch.from_numpy(bounds.astype(np.float32)).to(rows.device)

    def levels_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Packed codes ``[n, code_bytes]`` -> grid levels ``xbar [n, padded]`` float32."""
        per_byte = 8 // self.bits
        shifts = torch.arange(per_byte, device=codes.device, dtype=torch.uint8) * self.bits
        c = (codes.unsqueeze(2) >> shifts) & ((1 << self.bits) - 1)
        return self._levels(codes.device)[c.view(codes.shape[0], -1).long()]

    def decode_unit(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, norms, dots = self._fields(rows)
        xbar = self.levels_of(codes)[:, : self.dim]
        u = (xbar @ rotation(self.dim, rows.device)) / dots.unsqueeze(1)
        return u, norms.clone()

    def _planes(self, q: torch.Tensor) -> torch.Tensor:
        """Rotated queries in the native kernel's layout: plane ``t`` holds the elements
        ``i * (8 / bits) + t`` (see ``decode_rq`` in ``scans.c``)."""
        r = self.rotate(q)
        return r.view(r.shape[0], self.code_bytes, 8 // self.bits).transpose(1, 2).reshape(r.shape[0], -1)

    def _native(self, q: torch.Tensor, rows: torch.Tensor, valid, keep=None, approx=False):
        levels = self._levels("cpu")
        return scans.rq_scan(self._planes(q), rows, self.code_bytes, self.bits, levels, valid, keep, approx)

    def score(self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        out = self._native(q, rows, valid)
        return out if out is not None else self._score_eager(q, rows)

    def _score_eager(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        codes, norms, dots = self._fields(rows)
        return (self.rotate(q) @ self.levels_of(codes).T) * (norms / dots).unsqueeze(0)

    def rescore(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Each query against its own candidates ``rows [nq, c, row_bytes]``, in the rotated
        space (nothing rotated back): one native scan per query where the kernels run."""
        nq, c = rows.shape[0], rows.shape[1]
        if nq and c and scans.available(rows.device):
            planes, levels = self._planes(q), self._levels("cpu")
            return torch.cat(
                [scans.rq_scan(planes[i : i + 1], rows[i], self.code_bytes, self.bits, levels) for i in range(nq)]
            )
        codes, norms, dots = self._fields(rows.reshape(nq * c, -1))
        xbar = self.levels_of(codes).view(nq, c, -1)
        return torch.einsum("qp,qcp->qc", self.rotate(q), xbar) * (norms / dots).view(nq, c)

    def scans_in_place(self, device: torch.device) -> bool:
        return scans.available(device) or gpu.available(device)

    def selects_in_place(self, device: torch.device) -> bool:
        return scans.available(device) or gpu.available(device)

    def top(
        self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if gpu.available(rows.device):  # CUDA: scores and top-k fused in one Triton kernel
            return gpu.rq_topk(self.rotate(q), rows, valid, n, self.bits, self._levels(rows.device))
        # approx: where built, an INT8 scan chooses a longer list, scored again exactly in C
        picked = self._native(q, rows, valid, keep=n, approx=True)
        return picked if picked is not None else super().top(q, rows, valid, n)


class Rq1(Rotated):
    """1-bit rotated codes. Candidates get two stages, as binary's: a Hamming pass over the
    sign bits (the codes are the signs of ``R u``) against those of ``R q`` keeps
    ``WIDEN * k`` rows, which the estimator re-ranks."""

    name = "rq1"
    bits = 1

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
        if gpu.available(codes.device) or not scans.available(codes.device):
            return scan(n_cand)  # CUDA (a Triton scan) or no native kernel: the estimator over every row
        planes = self._planes(q)  # R q, plane t = element t of each byte: bit t of the codes
        signs = np.packbits(planes.view(len(q), 8, -1).transpose(1, 2).numpy() > 0, axis=2, bitorder="little")
        dist, rows = scans.hamming_select(
            torch.from_numpy(signs.reshape(len(q), -1)), codes, mask, width, words=self.code_bytes // 8
        )
        return self.rerank(q, codes, rows, n_cand, dropped=dist == torch.iinfo(torch.int32).max)  # padding


class Rq2(Rotated):
    name = "rq2"
    bits = 2


class Rq4(Rotated):
    name = "rq4"
    bits = 4
