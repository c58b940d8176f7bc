"""LangChain adapters: ``QuantizedEmbeddings``, a LangChain ``Embeddings`` over an :class:`Encoder`,
and ``QuantizedReranker``, a ``BaseDocumentCompressor`` over a :class:`Reranker`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Annotated, Any

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quant_retriever.langchain needs langchain-core; install it with: pip install 'quant-retriever[langchain]'"
    ) from exc

from quant_retriever.models.encoder import Encoder, adapter_encoder
from quant_retriever.models.reranker import Reranker, adapter_reranker
from quant_retriever.models.settings import Precision

__all__ = ["QuantizedEmbeddings", "QuantizedReranker", "QuantizedVectorStore", "QuantizedRetriever"]


def _path_as_str(value: Any) -> Any:
    """A local model directory may be given as a ``pathlib.Path`` (any ``os.PathLike``)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


ModelName = Annotated[str | None, BeforeValidator(_path_as_str)]


class QuantizedEmbeddings(BaseModel, Embeddings):
    """LangChain embeddings from a sentence-transformers model at reduced precision.

    ``QuantizedEmbeddings(model_name=..., precision="int8")`` loads the model with
    :func:`quant_retriever.load_encoder`; settings left ``None`` come from
    ``$QUANT_RETRIEVER_MODEL`` / ``$QUANT_RETRIEVER_PRECISION`` / ``$QUANT_RETRIEVER_DEVICE``
    (then all-MiniLM-L6-v2, fp32, CUDA if available). Pass ``encoder=`` instead to share one
    loaded model between several adapters. After construction ``precision`` and ``device``
    hold what was applied (``fp16`` on a CPU reads ``bf16``).

    Queries get ``query_prompt`` and documents ``document_prompt`` in front (e5:
    ``"query: "`` / ``"passage: "``). Vectors are unit-length lists of Python floats.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model_name: ModelName = None
    precision: Precision | None = None
    device: str | None = None
    batch_size: int = Field(default=32, gt=0)
    query_prompt: str | None = None
    document_prompt: str | None = None
    encoder: Encoder | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _load_encoder(self) -> QuantizedEmbeddings:
        encoder = adapter_encoder(
            self.encoder, self.model_name, self.precision, self.device, self.query_prompt, self.document_prompt
        )
        self.encoder = encoder
        self.model_name = encoder.model_name
        self.precision = encoder.precision  # type: ignore[assignment]
        self.device = encoder.device
        self.query_prompt = encoder.query_prompt
        self.document_prompt = encoder.document_prompt
        return self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents: ``len(texts)`` vectors of ``dim`` floats."""
        return self.encoder.encode_documents(texts, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query: ``dim`` floats."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}.")
        return self.encoder.encode_queries([text], batch_size=1)[0].tolist()


class QuantizedReranker(BaseDocumentCompressor):
    """A LangChain document compressor that reorders documents with a cross-encoder at reduced
    precision and keeps the best ``top_n``: use it as the ``base_compressor`` of a
    ``ContextualCompressionRetriever``.

    ``QuantizedReranker(model_name=..., precision="int8", top_n=5)`` loads the model with
    :func:`quant_retriever.load_reranker`; settings left ``None`` come from
    ``$QUANT_RETRIEVER_RERANK_MODEL`` / ``$QUANT_RETRIEVER_RERANK_PRECISION`` /
    ``$QUANT_RETRIEVER_RERANK_DEVICE`` (precision and device fall back to the shared
    ``$QUANT_RETRIEVER_PRECISION`` / ``$QUANT_RETRIEVER_DEVICE``; then
    cross-encoder/ms-marco-MiniLM-L6-v2, fp32, CUDA if available). Pass ``reranker=`` instead
    to share one loaded model. After construction ``precision`` and ``device`` hold what was
    applied.

    Each document kept is a copy (same ``id``) whose metadata adds ``relevance_score``, the
    model's score for it, as LangChain's Cohere and FlashRank rerankers do; the documents
    passed in are not changed. ``top_n=None`` keeps them all, reordered.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model_name: ModelName = None
    precision: Precision | None = None
    device: str | None = None
    top_n: int | None = Field(default=3, ge=0)
    batch_size: int = Field(default=32, gt=0)
    reranker: Reranker | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _load_reranker(self) -> QuantizedReranker:
        reranker = adapter_reranker(self.reranker, self.model_name, self.precision, self.device)
        self.reranker = reranker
        self.model_name = reranker.model_name
        self.precision = reranker.precision  # type: ignore[assignment]
        self.device = reranker.device
        return self

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The best ``top_n`` of ``documents`` for ``query``, best first, each a copy with
        ``metadata["relevance_score"]``. An empty sequence gives an empty list."""
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise TypeError(f"documents[{i}] must be a langchain Document, got {type(doc).__name__}.")
        result = self.reranker.rerank(query, [d.page_content for d in documents], self.top_n, self.batch_size)
        return [
            documents[i].model_copy(update={"metadata": {**documents[i].metadata, "relevance_score": score}})
            for i, score in result
        ]


from quant_retriever.integrations._langchain_store import QuantizedRetriever, QuantizedVectorStore  # noqa: E402
