"""LangChain adapters: ``QuantizedEmbeddings``, a LangChain ``Embeddings`` over an :class:`Encoder`."""

from __future__ import annotations

import os
from typing import Any, Optional

try:
    from langchain_core.embeddings import Embeddings
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quant_retriever.langchain needs langchain-core; install it with: "
        "pip install 'quant-retriever[langchain]'"
    ) from exc

from quant_retriever.models.encoder import Encoder, adapter_encoder
from quant_retriever.models.settings import Precision

__all__ = ["QuantizedEmbeddings", "QuantizedVectorStore", "QuantizedRetriever"]


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

    model_name: Optional[str] = None
    precision: Optional[Precision] = None
    device: Optional[str] = None
    batch_size: int = Field(default=32, gt=0)
    query_prompt: Optional[str] = None
    document_prompt: Optional[str] = None
    encoder: Optional[Encoder] = Field(default=None, exclude=True, repr=False)

    @field_validator("model_name", mode="before")
    @classmethod
    def _path_as_str(cls, value: Any) -> Any:
        """A local model directory may be given as a ``pathlib.Path`` (any ``os.PathLike``)."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value

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


from quant_retriever.integrations._langchain_store import QuantizedVectorStore, QuantizedRetriever  # noqa: E402
