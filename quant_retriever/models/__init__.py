"""Models at reduced precision, all kinds sharing one precision table.

- :mod:`~quant_retriever.models.settings`: the precision table and the settings read from the
  environment;
- :mod:`~quant_retriever.models.loading`: loading a sentence-transformers model class at one
  precision, with the per-precision loaders (shared by every model kind);
- :mod:`~quant_retriever.models.memory`: memory of quantized parameters;
- :mod:`~quant_retriever.models.int8`: the INT8 linear layers and token-embedding table;
- :mod:`~quant_retriever.models.encoder`: :class:`Encoder` and :func:`load_encoder`;
- :mod:`~quant_retriever.models.reranker`: :class:`Reranker`, :class:`RerankResult` and
  :func:`load_reranker` (cross-encoders).
"""

from quant_retriever.models.encoder import Encoder, load_encoder
from quant_retriever.models.reranker import Reranker, RerankResult, load_reranker
from quant_retriever.models.settings import PRECISION_NAMES, Precision

__all__ = ["Encoder", "load_encoder", "Reranker", "RerankResult", "load_reranker", "Precision", "PRECISION_NAMES"]
