"""Cross-encoder rerankers at reduced precision: :func:`load_reranker` and the :class:`Reranker` it
returns.

``load_reranker(model, precision=...)`` loads a sentence-transformers ``CrossEncoder`` with one
score per pair at one precision of the table in :mod:`quant_retriever.models.settings` (the same
loaders as the encoders: INT8 linear layers, per-sequence attention and INT8 token embeddings
included). ``reranker.rerank(query, texts, top_n)`` scores every ``(query, text)`` pair and
returns the best ``top_n`` as a :class:`RerankResult`.

Pairs are scored in batches of similar length: the pairs are tokenized once, sorted by their
token count and cut into batches of ``batch_size``, so a batch pads to a length close to each
of its pairs. At ``int8`` a pair's INT8 rounding does not depend on its batch mates (see
:mod:`quant_retriever.models.attention`), so neither the batching nor the other candidates
change its score beyond float rounding (~1e-7).

Bad input: a ``query`` that is not a str, ``texts`` that are not a list of str (a lone
string included) or a ``top_n`` that is not an int raise ``TypeError``; an empty ``texts``
gives an empty result; ``top_n`` larger than the number of texts returns all of them (as
Python slicing and the frameworks' rerankers do), ``top_n=None`` all, ``top_n=0`` none, and a
negative ``top_n`` raises ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from quant_retriever.models import int8
from quant_retriever.models.encoder import check_batch_size, check_texts
from quant_retriever.models.loading import load_model, quiet_third_party
from quant_retriever.models.memory import parameter_bytes
from quant_retriever.models.settings import RERANKER_ENV, Precision, model_setting

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

__all__ = ["Reranker", "RerankResult", "load_reranker", "adapter_reranker", "check_top_n"]

_MB = 1e6


@dataclass(frozen=True, repr=False)
class RerankResult:
    """The texts a reranker kept, best first.

    ``indices``: ``[n]`` int64 positions in the ``texts`` given; ``scores``: ``[n]`` float32,
    the model's score of each (descending; equal scores keep the order of the texts).
    """

    indices: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        """``(index, score)`` pairs as Python numbers, best first."""
        return zip(self.indices.tolist(), self.scores.tolist())

    def __repr__(self) -> str:
        more = ", ..." if len(self) > 8 else ""
        indices = ", ".join(map(str, self.indices[:8].tolist()))
        scores = ", ".join(f"{s:.4g}" for s in self.scores[:8].tolist())
        return f"RerankResult(indices=[{indices}{more}], scores=[{scores}{more}])"


def check_top_n(top_n: object) -> int | None:
    """``top_n`` as ``None`` (all) or an int >= 0; ``TypeError``/``ValueError`` otherwise."""
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)):
        raise TypeError(f"top_n must be an int or None, got {type(top_n).__name__}.")
    if top_n < 0:
        raise ValueError(f"top_n must be >= 0, got {top_n}.")
    return int(top_n)


def _check_query(query: object) -> str:
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}.")
    return query


class Reranker:
    """A cross-encoder at one precision; build it with :func:`load_reranker`.

    Attributes:
        model_name: the name or path it was loaded from.
        precision: the precision applied (after aliases and device fallbacks).
        device: where the model runs, e.g. ``"cpu"`` or ``"cuda:0"``.
        compiled: whether the transformer runs under ``torch.compile``.
    """

    def __init__(self, model: CrossEncoder, *, model_name: str, precision: str, device: str, compiled: bool = False):
        self._model = model
        self.model_name = model_name
        self.precision = precision
        self.device = device
        self.compiled = compiled

    @property
    def model(self) -> CrossEncoder:
        """The underlying sentence-transformers ``CrossEncoder``."""
        return self._model

    @property
    def parameter_bytes(self) -> int:
        """Memory of parameters, buffers and quantization state now (see
        :mod:`quant_retriever.models.memory`)."""
        return parameter_bytes(self._model)

    def score(self, query: str, texts: Sequence[str], batch_size: int = 32, *, logits: bool = False) -> np.ndarray:
        """The score of each ``(query, text)`` pair, in the order of ``texts``: ``[len(texts)]``
        float32. The model's activation is applied (a sigmoid for most rerankers, as
        ``CrossEncoder.predict`` does) unless ``logits``."""
        return self._score(_check_query(query), check_texts(texts), check_batch_size(batch_size), logits)

    def rerank(self, query: str, texts: Sequence[str], top_n: int | None = None, batch_size: int = 32) -> RerankResult:
        """Order ``texts`` by their score against ``query`` and keep the best ``top_n`` (``None``:
        all; more than ``len(texts)``: all). An empty ``texts`` gives an empty result."""
        query, texts = _check_query(query), check_texts(texts)
        top_n = check_top_n(top_n)
        scores = self._score(query, texts, check_batch_size(batch_size), False)  # [n]
        order = np.argsort(-scores, kind="stable")[:top_n]  # NaN last; ties keep the texts' order
        return RerankResult(order.astype(np.int64), scores[order])

    def _score(self, query: str, texts: list[str], batch_size: int, logits: bool) -> np.ndarray:
        scores = np.empty(len(texts), dtype=np.float32)
        if not texts:
            return scores
        activation = torch.nn.Identity() if logits else None  # None: the model's own
        with torch.inference_mode(), quiet_third_party(), int8.workspace():
            for batch in self._length_buckets(query, texts, batch_size):
                pairs = [(query, texts[i]) for i in batch.tolist()]
                out = self._model.predict(
                    pairs, batch_size=len(pairs), activation_fn=activation, convert_to_tensor=True,
                    show_progress_bar=False,
                )  # fmt: skip
                scores[batch] = out.float().reshape(len(pairs)).cpu().numpy()
        return scores

    def _length_buckets(self, query: str, texts: list[str], batch_size: int) -> list[np.ndarray]:
        """Indices of ``texts`` in batches of ``batch_size`` pairs of similar token count,
        longest first."""
        if len(texts) <= batch_size:
            return [np.arange(len(texts))]
        tokenizer = self._model.tokenizer
        limit = getattr(self._model, "max_seq_length", None) or tokenizer.model_max_length
        encoded = tokenizer([query] * len(texts), texts, truncation=True, max_length=limit)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])  # [n]
        order = np.argsort(-lengths, kind="stable")
        return [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]

    def __repr__(self) -> str:
        return (
            f"Reranker({self.model_name!r}, precision={self.precision!r}, device={self.device!r}, "
            f"parameters={self.parameter_bytes / _MB:.1f} MB" + (", compiled)" if self.compiled else ")")
        )


def load_reranker(
    model: str | os.PathLike[str],
    precision: Precision | None = None,
    device: str | None = None,
    *,
    compile: bool = False,
    **kwargs: Any,
) -> Reranker:
    """Load a sentence-transformers ``CrossEncoder`` with one score per pair at ``precision``.

    Args:
        model: a local path or a Hugging Face model name (e.g. ``"BAAI/bge-reranker-base"``,
            ``"cross-encoder/ms-marco-MiniLM-L6-v2"``).
        precision: one of ``Precision``; ``None`` reads ``$QUANT_RETRIEVER_RERANK_PRECISION``,
            then ``$QUANT_RETRIEVER_PRECISION``, else ``"fp32"``. ``fp16`` on a CPU becomes
            ``bf16`` (logged).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None`` reads
            ``$QUANT_RETRIEVER_RERANK_DEVICE``, then ``$QUANT_RETRIEVER_DEVICE``, else CUDA when
            available, else the CPU.
        compile: run the transformer under ``torch.compile`` (see :func:`load_encoder`).
        **kwargs: passed to ``CrossEncoder`` (``max_length=``, ``revision=``,
            ``trust_remote_code=``, ``model_kwargs=`` without dtype or quantization settings).

    Raises:
        ValueError: unknown precision or unusable device (argument or environment), or a model
            with more than one output per pair (a classifier, not a reranker).
        ImportError: an optional dependency is missing; the message names the extra.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(model).__name__}.")
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {type(compile).__name__}.")
    return _load_reranker(model, precision, device, compile, kwargs)


def _load_reranker(
    model: str | os.PathLike[str], precision: str | None, device: str | None, use_compile: bool, st_kwargs: dict
) -> Reranker:
    loaded = load_model(
        "CrossEncoder", model, precision, device, compile=use_compile, st_kwargs=st_kwargs, env=RERANKER_ENV
    )
    labels = loaded.model.num_labels
    if labels != 1:
        raise ValueError(
            f"{loaded.name} has {labels} outputs per pair; a reranker needs a CrossEncoder with one score "
            "(num_labels=1)."
        )
    reranker = Reranker(
        loaded.model,
        model_name=loaded.name,
        precision=loaded.precision,
        device=str(loaded.device),
        compiled=loaded.compiled,
    )
    limit = getattr(loaded.model, "max_seq_length", None)
    loaded.log("reranker", f"one score per pair, at most {limit} tokens" if limit else "one score per pair")
    return reranker


def adapter_reranker(
    reranker: Reranker | None,
    model_name: str | os.PathLike[str] | None,
    precision: str | None,
    device: str | None,
) -> Reranker:
    """The reranker behind a framework adapter: the one passed in, or one loaded from settings
    (``$QUANT_RETRIEVER_RERANK_MODEL``, else ``cross-encoder/ms-marco-MiniLM-L6-v2``)."""
    if reranker is None:
        return load_reranker(model_setting(model_name, RERANKER_ENV), precision, device)
    if not isinstance(reranker, Reranker):
        raise TypeError(f"reranker must be a Reranker from load_reranker(), got {type(reranker).__name__}.")
    given = {"model_name": model_name, "precision": precision, "device": device}
    clash = sorted(k for k, v in given.items() if v is not None)
    if clash:
        raise ValueError(f"Pass either reranker= or the settings to load one, not both; got reranker= and {clash}.")
    return reranker
