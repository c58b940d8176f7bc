"""LlamaIndex entry points: ``from quant_retriever.llama_index import QuantizedEmbedding``."""

from quant_retriever.integrations.llama_index import *  # noqa: F401,F403
from quant_retriever.integrations.llama_index import __all__  # noqa: F401
