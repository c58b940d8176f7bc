"""LlamaIndex adapters: ``QuantizedEmbedding``, a LlamaIndex ``BaseEmbedding`` over an :class:`Encoder`,
and ``QuantizedRerank``, a ``BaseNodePostprocessor`` over a :class:`Reranker`."""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quant_retriever.llama_index needs llama-index-core; install it with: "
        "pip install 'quant-retriever[llama-index]'"
    ) from exc

from quant_retriever.models.encoder import Encoder, adapter_encoder
from quant_retriever.models.reranker import Reranker, adapter_reranker, check_top_n
from quant_retriever.models.settings import Precision

__all__ = ["QuantizedEmbedding", "QuantizedRerank", "QuantizedVectorStore"]


class QuantizedEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from a sentence-transformers model at reduced precision.

    ``QuantizedEmbedding(model_name=..., precision="int8")`` loads the model with
    :func:`quant_retriever.load_encoder`; settings left ``None`` come from
    ``$QUANT_RETRIEVER_MODEL`` / ``$QUANT_RETRIEVER_PRECISION`` / ``$QUANT_RETRIEVER_DEVICE``.
    Pass ``encoder=`` instead to share one loaded model. ``embed_batch_size`` is both how many
    texts LlamaIndex hands over at a time and the model's batch size. Queries get
    ``query_prompt`` and texts ``document_prompt`` in front.
    """

    precision: str | None = Field(default=None, description="The precision applied to the model.")
    device: str | None = Field(default=None, description="Where the model runs.")
    query_prompt: str | None = Field(default=None, description="Prefix for queries.")
    document_prompt: str | None = Field(default=None, description="Prefix for documents.")
    _encoder: Encoder = PrivateAttr()

    def __init__(
        self,
        model_name: str | None = None,
        precision: Precision | None = None,
        device: str | None = None,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        embed_batch_size: int = 32,
        encoder: Encoder | None = None,
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


class QuantizedRerank(BaseNodePostprocessor):
    """A LlamaIndex node postprocessor that reorders nodes with a cross-encoder at reduced
    precision and keeps the best ``top_n``, as LlamaIndex's ``SentenceTransformerRerank`` does:
    ``index.as_query_engine(similarity_top_k=50, node_postprocessors=[QuantizedRerank(top_n=5)])``.

    ``QuantizedRerank(model_name=..., precision="int8")`` loads the model with
    :func:`quant_retriever.load_reranker`; settings left ``None`` come from
    ``$QUANT_RETRIEVER_RERANK_MODEL`` / ``$QUANT_RETRIEVER_RERANK_PRECISION`` /
    ``$QUANT_RETRIEVER_RERANK_DEVICE`` (then as :class:`QuantizedEmbedding`'s settings). Pass
    ``reranker=`` instead to share one loaded model.

    A node is scored on its content with its embed-visible metadata
    (``MetadataMode.EMBED``), as ``SentenceTransformerRerank`` does; the nodes returned carry
    the model's score in place of the retrieval score, which ``keep_retrieval_score`` keeps
    in the metadata of a copy of the node (``retrieval_score``). The nodes passed in are not
    changed.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str = Field(description="The cross-encoder's name or path.")
    precision: str = Field(description="The precision applied to the model.")
    device: str = Field(description="Where the model runs.")
    top_n: int | None = Field(default=2, ge=0, description="Nodes to keep, best first (None: all).")
    keep_retrieval_score: bool = Field(default=False, description="Keep the retrieval score in metadata.")
    batch_size: int = Field(default=32, gt=0, description="Pairs scored per model batch.")
    _reranker: Reranker = PrivateAttr()

    def __init__(
        self,
        top_n: int | None = 2,
        model_name: str | None = None,
        precision: Precision | None = None,
        device: str | None = None,
        keep_retrieval_score: bool = False,
        batch_size: int = 32,
        reranker: Reranker | None = None,
        **kwargs: Any,
    ) -> None:
        top_n = check_top_n(top_n)
        reranker = adapter_reranker(reranker, model_name, precision, device)
        super().__init__(
            model_name=reranker.model_name,
            precision=reranker.precision,
            device=reranker.device,
            top_n=top_n,
            keep_retrieval_score=keep_retrieval_score,
            batch_size=batch_size,
            **kwargs,
        )
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "QuantizedRerank"

    @property
    def reranker(self) -> Reranker:
        """The loaded model behind this adapter."""
        return self._reranker

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("QuantizedRerank needs the query: pass query_bundle= or query_str=.")
        for i, hit in enumerate(nodes):
            if not isinstance(hit, NodeWithScore):
                raise TypeError(f"nodes[{i}] must be a NodeWithScore, got {type(hit).__name__}.")
        if not nodes:
            return []
        texts = [hit.node.get_content(metadata_mode=MetadataMode.EMBED) for hit in nodes]
        payload = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model_name,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            result = self._reranker.rerank(query_bundle.query_str, texts, self.top_n, self.batch_size)
            kept = [NodeWithScore(node=self._node(nodes[i]), score=score) for i, score in result]
            event.on_end(payload={EventPayload.NODES: kept})
        return kept

    def _node(self, hit: NodeWithScore):
        """The node itself, or with ``keep_retrieval_score`` a copy whose metadata holds the
        retrieval score (the original may be the docstore's own node)."""
        if not self.keep_retrieval_score:
            return hit.node
        return hit.node.model_copy(update={"metadata": {**hit.node.metadata, "retrieval_score": hit.score}})


from quant_retriever.integrations._llama_index_store import QuantizedVectorStore  # noqa: E402
