"""Sentence embeddings at reduced precision: :func:`load_encoder` and the :class:`Encoder` it returns.

``load_encoder(model, precision=...)`` loads a sentence-transformers model at one precision of
the table in :mod:`quant_retriever.models.settings`; the :class:`Encoder` turns texts into
float32, L2-normalised vectors whatever the precision inside. ``load_encoder(...,
compile=True)`` runs the transformer under ``torch.compile``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from quant_retriever.models import int8
from quant_retriever.models.loading import load_model, quiet_third_party
from quant_retriever.models.memory import parameter_bytes
from quant_retriever.models.settings import Precision, model_setting

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["Encoder", "load_encoder", "adapter_encoder", "check_texts", "check_batch_size"]

_MB = 1e6


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """``texts`` as a list of str; ``TypeError`` for a single string or a non-str item."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, got a single {type(texts).__name__}; wrap it in a list.")
    if not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(text).__name__}.")
    return list(texts)


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` as a positive int; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}.")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    return batch_size


def _check_prompt(prompt: object, what: str) -> str | None:
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"{what} must be a str or None, got {type(prompt).__name__}.")
    return prompt


class Encoder:
    """A sentence-embedding model at one precision; build it with :func:`load_encoder`.

    Attributes:
        model_name: the name or path it was loaded from.
        precision: the precision applied (after aliases and device fallbacks).
        device: where the model runs, e.g. ``"cpu"`` or ``"cuda:0"``.
        dim: embedding dimension.
        query_prompt, document_prompt: prefixes that ``encode_queries`` and
            ``encode_documents`` put before each text (e5: ``"query: "``/``"passage: "``).
        compiled: whether the transformer runs under ``torch.compile``.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        model_name: str,
        precision: str,
        device: str,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        compiled: bool = False,
    ) -> None:
        self._model = model
        self.model_name = model_name
        self.precision = precision
        self.device = device
        self.query_prompt = _check_prompt(query_prompt, "query_prompt")
        self.document_prompt = _check_prompt(document_prompt, "document_prompt")
        self.compiled = compiled
        self.dim: int = model.get_embedding_dimension()

    @property
    def model(self) -> SentenceTransformer:
        """The underlying sentence-transformers model."""
        return self._model

    @property
    def parameter_bytes(self) -> int:
        """Memory of parameters, buffers and quantization state now, quantized weights counted
        at their real size (see :mod:`quant_retriever.models.memory`)."""
        return parameter_bytes(self._model)

    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` as they are.

        Returns:
            ``[len(texts), dim]`` float32, each row of unit L2 norm (an empty list gives
            shape ``(0, dim)``). ``show_progress`` shows a tqdm bar over batches.
        """
        return self._encode(None, check_texts(texts), check_batch_size(batch_size), show_progress)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed search queries, each as ``query_prompt + text``: ``[len(texts), dim]`` float32."""
        return self._encode(self.query_prompt, check_texts(texts), check_batch_size(batch_size), show_progress)

    def encode_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed documents, each as ``document_prompt + text``: ``[len(texts), dim]`` float32."""
        return self._encode(self.document_prompt, check_texts(texts), check_batch_size(batch_size), show_progress)

    def _encode(self, prompt: str | None, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if prompt:
            texts = [prompt + text for text in texts]
        with torch.inference_mode(), quiet_third_party(), int8.workspace():
            # vectors: [n, dim] in the model's dtype, on its device
            vectors = self._model.encode(
                texts,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=bool(show_progress),
            )
            vectors = torch.nn.functional.normalize(vectors.float(), p=2.0, dim=-1)
        return vectors.cpu().numpy()

    def __repr__(self) -> str:
        return (
            f"Encoder({self.model_name!r}, precision={self.precision!r}, device={self.device!r}, "
            f"dim={self.dim}, parameters={self.parameter_bytes / _MB:.1f} MB"
            + (", compiled)" if self.compiled else ")")
        )


def load_encoder(
    model: str | os.PathLike[str],
    precision: Precision | None = None,
    device: str | None = None,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    *,
    compile: bool = False,
    **kwargs: Any,
) -> Encoder:
    """Load a sentence-transformers model at ``precision``.

    Args:
        model: a local path or a Hugging Face model name.
        precision: one of ``Precision``; ``None`` reads ``$QUANT_RETRIEVER_PRECISION``,
            else ``"fp32"``. ``fp16`` on a CPU becomes ``bf16`` (logged).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None`` reads
            ``$QUANT_RETRIEVER_DEVICE``, else CUDA when available, else the CPU.
        query_prompt, document_prompt: prefixes for ``encode_queries``/``encode_documents``.
        compile: run the transformer under ``torch.compile`` (needs a C++ compiler on a CPU).
            The first ``encode`` then compiles, which takes about a minute on 2 CPU cores. It
            pays off where the eager model runs many separate memory-bound passes, as torchao's
            INT8 does (see ``docs/embeddings.md``).
        **kwargs: passed to ``SentenceTransformer`` (``revision=``, ``trust_remote_code=``,
            ``model_kwargs=`` without dtype or quantization settings).

    Raises:
        ValueError: unknown precision or unusable device (argument or environment).
        ImportError: an optional dependency is missing; the message names the extra.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(model).__name__}.")
    _check_prompt(query_prompt, "query_prompt")
    _check_prompt(document_prompt, "document_prompt")
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {type(compile).__name__}.")
    return _load_encoder(model, precision, device, query_prompt, document_prompt, compile, kwargs)


def _load_encoder(
    model: str | os.PathLike[str],
    precision: str | None,
    device: str | None,
    query_prompt: str | None,
    document_prompt: str | None,
    use_compile: bool,
    st_kwargs: dict[str, Any],
) -> Encoder:
    loaded = load_model("SentenceTransformer", model, precision, device, compile=use_compile, st_kwargs=st_kwargs)
    encoder = Encoder(
        loaded.model,
        model_name=loaded.name,
        precision=loaded.precision,
        device=str(loaded.device),
        query_prompt=query_prompt,
        document_prompt=document_prompt,
        compiled=loaded.compiled,
    )
    loaded.log("embeddings", f"{encoder.dim}-d")
    return encoder


def adapter_encoder(
    encoder: Encoder | None,
    model_name: str | os.PathLike[str] | None,
    precision: str | None,
    device: str | None,
    query_prompt: str | None,
    document_prompt: str | None,
) -> Encoder:
    """The encoder behind a framework adapter: the one passed in, or one loaded from settings."""
    if encoder is None:
        return load_encoder(model_setting(model_name), precision, device, query_prompt, document_prompt)
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be an Encoder from load_encoder(), got {type(encoder).__name__}.")
    given = {
        "model_name": model_name,
        "precision": precision,
        "device": device,
        "query_prompt": query_prompt,
        "document_prompt": document_prompt,
    }
    clash = sorted(k for k, v in given.items() if v is not None)
    if clash:
        raise ValueError(
            f"Pass either encoder= or the settings to load one, not both; got encoder= and {clash}. "
            f"Prompts belong to the encoder: load_encoder(..., query_prompt=...)."
        )
    return encoder
