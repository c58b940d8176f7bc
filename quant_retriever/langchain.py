"""LangChain entry points: ``from quant_retriever.langchain import QuantizedEmbeddings``."""

from quant_retriever.integrations.langchain import *  # noqa: F401,F403
from quant_retriever.integrations.langchain import __all__  # noqa: F401
