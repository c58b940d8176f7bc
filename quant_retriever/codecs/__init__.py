"""Code formats: one module each, pure tensor math (no I/O, results on the input's device).

``CODECS`` is the one lookup table the index uses. Every format stores a vector as one row
of ``uint8`` (``row_bytes`` wide) so the whole corpus is a single ``[n, row_bytes]`` tensor;
:class:`Codec` converts between those rows and each module's natural dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from quant_retriever.codecs import _native, binary, floats, int4, int8

__all__ = ["CodecName", "CODEC_NAMES", "Codec", "CodecParams", "make_codec"]

CodecName = Literal["int4", "binary", "int8", "fp16", "fp32"]
CODEC_NAMES: tuple[str, ...] = get_args(CodecName)


@dataclass(frozen=True)
class CodecParams:
    """What a codec needs besides the rows: the dimension, the INT4 block size and the INT8
    calibration (``lo``/``scale``, ``[dim]`` float32 on the index device; ``None`` until the
    first vectors are seen)."""

    dim: int
    block_size: int = 64
    lo: torch.Tensor | None = None
    scale: torch.Tensor | None = None


@dataclass(frozen=True)
class Codec:
    """One format as the index sees it: ``uint8`` rows in, float scores out.

    ``exact_as_int8`` says whether first-stage scores are already at least as precise as the
    INT8 rescore copy (then rescoring cannot improve them).
    """

    name: str
    params: CodecParams

    @property
    def row_bytes(self) -> int:
        d = self.params.dim
        return {
            "int4": lambda: int4.row_bytes(d, self.params.block_size),
            "binary": lambda: binary.row_bytes(d),
            "int8": lambda: d,
            "fp16": lambda: 2 * d,
            "fp32": lambda: 4 * d,
        }[self.name]()

    def scans_in_place(self, device: torch.device) -> bool:
        """Whether ``score`` reads rows without making a float copy of them (bounds chunk size)."""
        return self.name == "fp32" or _native.available(device)

    def selects_in_place(self, device: torch.device) -> bool:
        """Whether ``top`` keeps only candidate lists, never a score per row (no chunking needed)."""
        return self.name == "binary" and _native.available(device)

    @property
    def exact_as_int8(self) -> bool:
        return self.name in ("int8", "fp16", "fp32")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``[n, dim]`` -> ``[n, row_bytes]`` uint8."""
        p = self.params
        if self.name == "int4":
            return int4.encode(x, p.block_size)
        if self.name == "binary":
            return binary.encode(x)
        if self.name == "int8":
            return int8.encode(x, p.lo, p.scale).view(torch.uint8)
        dtype = torch.float16 if self.name == "fp16" else torch.float32
        return floats.encode(x, dtype).view(torch.uint8)

    def decode(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, row_bytes]`` uint8 -> ``[n, dim]`` float32 (binary decodes to +-1)."""
        p = self.params
        if self.name == "int4":
            return int4.decode(rows, p.dim, p.block_size)
        if self.name == "binary":
            return binary.decode(rows, p.dim)
        if self.name == "int8":
            return int8.decode(self._natural(rows), p.lo, p.scale)
        return floats.decode(self._natural(rows))

    def score(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """First-stage scores, ``[q, dim]`` float x ``[n, row_bytes]`` -> ``[q, n]``; higher is
        better (binary: minus the Hamming distance, int32; the rest float32)."""
        p = self.params
        if self.name == "int4":
            return int4.score(queries, rows, p.dim, p.block_size)
        if self.name == "binary":
            qcodes = binary.encode(queries)
            return binary.hamming(qcodes, rows).neg_()
        if self.name == "int8":
            return int8.score(queries, self._natural(rows), p.lo, p.scale)
        return floats.score(queries, self._natural(rows))

    def top(
        self, queries: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor | None, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``n`` best rows per query by first-stage score: ``(scores [q, n], positions
        [q, n])``, best first. Rows where ``valid`` (``[rows]`` bool) is False score lowest."""
        if self.name == "binary":
            picked = _native.hamming_select(binary.encode(queries), rows, valid, n)
            if picked is not None:  # streaming selection instead of a top-k over all rows
                dist, pos = picked
                dist, order = torch.sort(dist, dim=1, stable=True)
                return dist.neg_(), torch.gather(pos, 1, order)
        s = self.score(queries, rows)
        if valid is not None:
            low = torch.finfo(s.dtype).min if s.dtype.is_floating_point else torch.iinfo(s.dtype).min
            s = s.masked_fill(~valid, low)
        return torch.topk(s, n, dim=1)

    def _natural(self, rows: torch.Tensor) -> torch.Tensor:
        dtype = {"int8": torch.int8, "fp16": torch.float16, "fp32": torch.float32}[self.name]
        return rows.view(dtype)


def make_codec(name: str, params: CodecParams) -> Codec:
    """Look ``name`` up in the codec table; an unknown name raises ``ValueError``."""
    if not isinstance(name, str) or name not in CODEC_NAMES:
        raise ValueError(f"codec must be one of {', '.join(map(repr, CODEC_NAMES))}; got {name!r}.")
    return Codec(name, params)
