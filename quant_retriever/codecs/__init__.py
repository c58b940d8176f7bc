"""Code formats: one class per format behind one registry, pure tensor math (no I/O, results on
the input's device).

Every format stores a vector as one row of ``uint8`` (``row_bytes`` wide), so a corpus is a
single ``[n, row_bytes]`` tensor. Every format but binary keeps a vector's direction
``u = x / |x|`` quantized and its norm ``|x|`` as float32 in the row, so any finite vector, of
any norm, encodes without calibration: nothing is learned from the data, and a vector's
code does not depend on which other vectors were added with it.

========  ==================  =============================================================
name      class               row (see each module's layout table)
========  ==================  =============================================================
int4      :class:`Int4`       block-wise min-max nibbles of ``u``, FP16 scale/offset per
                              block, float32 norm
binary    :class:`Binary`     sign bits, whole 64-bit words
int8      :class:`Int8`       per-row absmax INT8 of ``u``, float32 norm and scale
fp16      :class:`Float16`    ``u`` as FP16, float32 norm
fp32      :class:`Float32`    ``u`` as FP32, float32 norm
rq1       :class:`Rq1`        ``R u`` (a fixed random rotation) on a 1-bit grid, float32
                              norm and correction (RaBitQ's estimator)
rq2       :class:`Rq2`        the same on a 2-bit Lloyd-Max grid
rq4       :class:`Rq4`        the same on a 4-bit Lloyd-Max grid
========  ==================  =============================================================

Adding a format is one module with a :class:`Codec` subclass and one line in ``CODECS``;
``tests/unit/codecs/test_codec_contract.py`` runs every registered codec through the same contract.
"""

from __future__ import annotations

from typing import Literal

from quant_retriever.codecs.base import FLOAT32_MAX, Codec, split_norm
from quant_retriever.codecs.binary import Binary
from quant_retriever.codecs.floats import Float16, Float32
from quant_retriever.codecs.int4 import Int4
from quant_retriever.codecs.int8 import Int8
from quant_retriever.codecs.rotated import Rq1, Rq2, Rq4

__all__ = [
    "FLOAT32_MAX",
    "Codec",
    "CodecName",
    "CODECS",
    "CODEC_NAMES",
    "RescoreDtype",
    "RESCORE_DTYPES",
    "make_codec",
    "split_norm",
]

CodecName = Literal["int4", "binary", "int8", "fp16", "fp32", "rq1", "rq2", "rq4"]
#: The registry: format name -> class.
CODECS: dict[str, type[Codec]] = {cls.name: cls for cls in (Int4, Binary, Int8, Float16, Float32, Rq1, Rq2, Rq4)}
CODEC_NAMES: tuple[str, ...] = tuple(CODECS)

RescoreDtype = Literal["int8", "fp16"]
#: Formats the rescore copy on disk may use.
RESCORE_DTYPES: tuple[str, ...] = ("int8", "fp16")


def make_codec(name: object, dim: int, **options) -> Codec:
    """The codec ``name`` for ``dim``-dimensional vectors. ``options`` (e.g. ``block_size``)
    go to the formats that take them and are ignored by the others. An unknown name raises
    ``ValueError`` listing the valid ones."""
    if not isinstance(name, str) or name not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(map(repr, CODEC_NAMES))}; got {name!r}.")
    return CODECS[name].create(dim, options)
