"""quant_retriever: quantized embedding models and quantized vector search for RAG."""

from quant_retriever.index import MemoryUsage, QuantizedIndex, SearchResult

__all__ = [
    "QuantizedIndex",
    "SearchResult",
    "MemoryUsage",
    "Encoder",
    "load_encoder",
    "evaluate_encoders",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the embedding side is imported on first use, so the index works without its extras
    if name in ("Encoder", "load_encoder", "evaluate_encoders"):
        from quant_retriever import embeddings

        return getattr(embeddings, name)
    raise AttributeError(f"module 'quant_retriever' has no attribute {name!r}")
