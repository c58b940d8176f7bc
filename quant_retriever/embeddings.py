"""Deprecated alias of :mod:`quant_retriever.models` (and, for ``evaluate_encoders`` and
``EncoderReport``, :mod:`quant_retriever.bench`); import from those, or from ``quant_retriever``."""

import warnings

from quant_retriever.models.encoder import Encoder, load_encoder
from quant_retriever.models.settings import Precision

__all__ = ["Encoder", "Precision", "load_encoder"]  # and, lazily, evaluate_encoders and EncoderReport

warnings.warn(
    "quant_retriever.embeddings is deprecated: import Encoder and load_encoder from quant_retriever "
    "(or quant_retriever.models), evaluate_encoders from quant_retriever.bench.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    if name in ("evaluate_encoders", "EncoderReport"):
        from quant_retriever import bench

        return getattr(bench, name)
    raise AttributeError(f"module 'quant_retriever.embeddings' has no attribute {name!r}")
