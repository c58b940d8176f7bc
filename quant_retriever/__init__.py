"""quant_retriever: quantized embedding models and quantized vector search for RAG."""

from quant_retriever.index import MemoryUsage, QuantizedIndex, SearchResult

__all__ = [
    "QuantizedIndex",
    "SearchResult",
    "MemoryUsage",
    "Encoder",
    "load_encoder",
    "evaluate_encoders",
    "Reranker",
    "RerankResult",
    "load_reranker",
    "evaluate_rerankers",
]
__version__ = "0.1.0"

# the model side is imported on first use, so the index works without its extras
_LAZY = {
    "Encoder": "quant_retriever.models",
    "load_encoder": "quant_retriever.models",
    "evaluate_encoders": "quant_retriever.bench",
    "Reranker": "quant_retriever.models",
    "RerankResult": "quant_retriever.models",
    "load_reranker": "quant_retriever.models",
    "evaluate_rerankers": "quant_retriever.bench",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quant_retriever' has no attribute {name!r}")
