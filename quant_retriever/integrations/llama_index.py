"""LlamaIndex adapters: ``QuantizedEmbedding``, a LlamaIndex ``BaseEmbedding`` over an :class:`Encoder`."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quant_retriever.llama_index needs llama-index-core; install it with: "
        "pip install 'quant-retriever[llama-index]'"
    ) from exc

from quant_retriever.models.encoder import Encoder, adapter_encoder
from quant_retriever.models.settings import Precision

__all__ = ["QuantizedEmbedding", "QuantizedVectorStore"]


class QuantizedEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from a sentence-transformers model at reduced precision.

    ``QuantizedEmbedding(model_name=..., precision="int8")`` loads the model with
    :func:`quant_retriever.load_encoder`; settings left ``None`` come from
    ``$QUANT_RETRIEVER_MODEL`` / ``$QUANT_RETRIEVER_PRECISION`` / ``$QUANT_RETRIEVER_DEVICE``.
    Pass ``encoder=`` instead to share one loaded model. ``embed_batch_size`` is both how many
    texts LlamaIndex hands over at a time and the model's batch size. Queries get
    ``query_prompt`` and texts ``document_prompt`` in front.
    """

    precision: Optional[str] = Field(default=None, description="The precision applied to the model.")
    device: Optional[str] = Field(default=None, description="Where the model runs.")
    query_prompt: Optional[str] = Field(default=None, description="Prefix for queries.")
    document_prompt: Optional[str] = Field(default=None, description="Prefix for documents.")
    _encoder: Encoder = PrivateAttr()

    def __init__(
        self,
        model_name: Optional[str] = None,
        precision: Optional[Precision] = None,
        device: Optional[str] = None,
        query_prompt: Optional[str] = None,
        document_prompt: Optional[str] = None,
        embed_batch_size: int = 32,
        encoder: Optional[Encoder] = None,
        **kwargs: Any,
    ) -> None:
        encoder = adapter_encoder(encoder, model_name, precision, device, query_prompt, document_prompt)
        super().__init__(
            model_name=encoder.model_name,
            precision=encoder.precision,
            device=encoder.device,
            query_prompt=encoder.query_prompt,
            document_prompt=encoder.document_prompt,
            embed_batch_size=embed_batch_size,
            **kwargs,
        )
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "QuantizedEmbedding"

    @property
    def encoder(self) -> Encoder:
        """The loaded model behind this adapter."""
        return self._encoder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encoder.encode_queries([query], batch_size=1)[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encoder.encode_documents(texts, batch_size=self.embed_batch_size).tolist()

    # The async variants run the sync ones in a worker thread, so the event loop stays free.
    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


from quant_retriever.integrations._llama_index_store import QuantizedVectorStore  # noqa: E402
