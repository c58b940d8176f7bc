"""The :class:`Codec` interface every format implements, and the shared norm split."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch

from quant_retriever.kernels import scans

__all__ = ["Codec", "split_norm", "FLOAT32_MAX"]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_TINY = float(torch.finfo(torch.float64).tiny)
#: Up to this many rows on the CPU, :func:`split_norm` runs in numpy (same float64 steps).
_SMALL = 8
#: Rows checked per step by :meth:`Codec.bad_rows`.
_CHECK_ROWS = 1 << 16

#: ``scan(n)`` -> ``(scores [q, n], rows [q, n])``: the index's chunked first-stage top-n.
Scan = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


def split_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, dim]`` -> ``(u [n, dim] float32, norms [n] float32)`` with ``x = u * norm``.

    Computed in float64, so no norm of a finite float32 vector overflows or underflows on the
    way (norms beyond the float32 range are stored as its largest value). A zero vector gets
    ``u = 0`` and norm 0.
    """
    if x.device.type == "cpu" and x.shape[0] <= _SMALL:  # a few queries: numpy's per-call cost is lower
        x64 = x.numpy().astype(np.float64)
        if len(x64) == 1:  # one query: the same steps on a scalar
            norm = math.sqrt(np.dot(x64[0], x64[0]))
            u, norms = x64 / max(norm, _TINY), np.array([min(norm, FLOAT32_MAX)])
        else:
            sq = np.einsum("nd,nd->n", x64, x64)
            norms = np.sqrt(sq)
            u, norms = x64 / np.maximum(norms, _TINY)[:, None], np.minimum(norms, FLOAT32_MAX)
        return torch.from_numpy(u.astype(np.float32)), torch.from_numpy(norms.astype(np.float32))
    x64 = x.double()
    norms = torch.linalg.vector_norm(x64, dim=1, keepdim=True)
    u = x64 / norms.clamp(min=_TINY)  # a zero vector stays zero
    return u.float(), norms.squeeze(1).clamp(max=FLOAT32_MAX).float()


class Codec:
    """One code format: ``uint8`` rows ``[n, row_bytes]`` in, float scores out.

    Subclasses set ``name`` and implement ``row_bytes``, ``encode``, ``decode_unit`` and
    ``score``; the rest has working defaults. Scores are for unit-norm float32 queries
    ``q [nq, dim]`` (the index normalises queries and multiplies their norms back in):
    ``score(q, rows)[i, j] ~= <q[i], x[j]>``.
    """

    name: ClassVar[str]
    #: First-stage scores are at least as precise as an INT8 rescore copy (rescoring is off
    #: by default for such formats).
    exact: ClassVar[bool] = False

    def __init__(self, dim: int):
        self.dim = dim

    @classmethod
    def create(cls, dim: int, options: dict) -> Codec:
        """Build from the index's options; formats without options ignore them."""
        return cls(dim)

    def params(self) -> dict:
        """Format parameters besides ``dim``, as recorded in a manifest (``create`` reads them)."""
        return {}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(dim={self.dim}{extra}, row_bytes={self.row_bytes})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.dim == other.dim and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self), self.dim, tuple(sorted(self.params().items()))))

    # ------------------------------------------------------------------ format
    @property
    def row_bytes(self) -> int:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``[n, dim]`` -> ``[n, row_bytes]`` uint8, on ``x``'s device."""
        raise NotImplementedError

    def decode_unit(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, row_bytes]`` -> ``(directions [n, dim] float32, norms [n] float32)``."""
        raise NotImplementedError

    def stored_floats(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The floating-point fields of rows ``[n, row_bytes]`` (views, each ``[n, ...]``):
        norms, scales, offsets, unquantized values. :meth:`encode` only writes finite ones.
        The default decodes the rows; formats override it with views of their fields."""
        return self.decode_unit(rows)

    def bad_rows(self, rows: torch.Tensor) -> np.ndarray:
        """Positions (int64, ascending) of the rows ``[n, row_bytes]`` holding a NaN or an
        infinity in a stored float (see :meth:`stored_floats`): damaged data, since no encoder
        writes one. Checked in steps of rows, so memory stays bounded."""
        found = []
        for start in range(0, rows.shape[0], _CHECK_ROWS):
            part = rows[start : start + _CHECK_ROWS]
            ok = torch.ones(part.shape[0], dtype=torch.bool, device=part.device)
            for field in self.stored_floats(part):
                ok &= torch.isfinite(field.reshape(part.shape[0], -1)).all(dim=1)
            found.append(start + torch.nonzero(~ok).flatten().cpu().numpy())
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def decode(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, row_bytes]`` uint8 -> ``[n, dim]`` float32 reconstructions."""
        u, norms = self.decode_unit(rows)
        return u * norms.unsqueeze(1)

    def score(self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """First-stage scores ``[nq, n]``, higher is better (float32 inner products; binary:
        minus the Hamming distance, int32). ``valid`` (``[n]`` bool) is a hint: a kernel may
        skip rows where it is False, and their scores are then meaningless."""
        raise NotImplementedError

    def dense_layout(self) -> tuple[torch.dtype, int, int] | None:
        """``(dtype, factor_offset, n_factors)`` when a row is ``dim`` values of ``dtype`` (int8
        or float16) and then ``n_factors`` float32 factors at byte ``factor_offset``, whose
        product scales the dot product (the native dense kernels read such rows in place)."""
        return None

    def top_in_place(
        self, q: torch.Tensor, qnorm: float, rows: tuple[int, int], pick: torch.Tensor, k: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """One unit query ``q [1, dim]`` against the rows ``pick`` of the ``rows = (address,
        count)`` rows of this format in memory (a memory map, read in place): the best ``k`` as
        ``(scores [k] float32 times qnorm, positions [k] in pick)``; ``None`` without a native
        kernel for this format (see :func:`~quant_retriever.kernels.scans.dense_top`)."""
        layout = self.dense_layout()
        if layout is None:
            return None
        return scans.dense_top(q, qnorm, (*rows, self.row_bytes), pick, k, self.dim, *layout)

    # ------------------------------------------------------------------ search stages
    def scans_in_place(self, device: torch.device) -> bool:
        """Whether ``score`` reads rows without a float copy of them (bounds the chunk size)."""
        return False

    def selects_in_place(self, device: torch.device) -> bool:
        """Whether ``top`` keeps only candidate lists, never a score per row (no chunking):
        the native dense scans do."""
        return self.dense_layout() is not None and scans.available(device)

    def top(
        self, q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``n`` best rows per query: ``(scores [nq, n], positions [nq, n])``, best first;
        rows where ``valid`` (``[rows]`` bool) is False score lowest."""
        layout = self.dense_layout()
        if layout is not None:
            dtype, factor_offset, n_factors = layout
            picked = scans.dense_scan(q, rows, dtype, self.dim, factor_offset, n_factors, valid, keep=n)
            if picked is not None:
                return picked
        s = self.score(q, rows, valid)
        if valid is not None:
            low = torch.finfo(s.dtype).min if s.dtype.is_floating_point else torch.iinfo(s.dtype).min
            s = s.masked_fill(~valid, low)
        return torch.topk(s, n, dim=1)

    def error_bounds(self, rows: torch.Tensor) -> torch.Tensor | None:
        """For rows ``[n, row_bytes]``, a bound ``[n]`` on how far a first-stage score of each
        row (against a unit query) lies from the true inner product, or ``None`` when the
        format has none (then every candidate is rescored)."""
        return None

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
        """The ``n_cand`` candidates per query the index rescores (or returns): ``(scores,
        rows)``, each ``[nq, n_cand]``, among the ``n_valid`` rows of ``codes`` that ``mask``
        allows. ``scan(n)`` runs the index's chunked first stage; formats with a second stage
        (binary) override this."""
        return scan(n_cand)

    def rerank(
        self, q: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor, n: int, dropped: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A second stage: each query's rows ``rows [nq, w]`` of ``codes`` scored again by
        :meth:`rescore` (``dropped``: positions that score lowest), the best ``n`` kept as
        ``(scores, rows)``."""
        s = self.rescore(q, codes[rows.reshape(-1)].view(rows.shape[0], rows.shape[1], -1))
        if dropped is not None:
            s = s.masked_fill(dropped, -torch.inf)
        s, pos = torch.topk(s, min(n, s.shape[1]), dim=1)
        return s, torch.gather(rows, 1, pos)

    def rescore(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Scores ``[nq, c]`` of each query against its own candidates ``rows [nq, c, row_bytes]``."""
        nq, c = rows.shape[0], rows.shape[1]
        u, norms = self.decode_unit(rows.reshape(nq * c, -1))
        return torch.einsum("qd,qcd->qc", q, u.view(nq, c, self.dim)) * norms.view(nq, c)
