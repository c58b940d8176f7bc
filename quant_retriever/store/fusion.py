"""Fusing ranked lists of hits: reciprocal-rank fusion and relative-score fusion.

Each list is ``[(key, score), ...]`` best first. The fused list is ``[(key, fused score),
...]`` best first, ties broken by the key (so a fused ranking never depends on dict order).

- ``rrf``: ``sum over lists of weight / (k + rank)``, ranks from 1 (Cormack et al.'s
  reciprocal-rank fusion; ``k = 60`` as in the paper, Qdrant, Milvus and LanceDB). A hit
  missing from a list takes nothing from it. Scores lie in ``(0, sum(weights) / (k + 1)]``.
- ``relative``: each list's scores min-max scaled to ``[0, 1]`` (a list whose scores are all
  equal scales to 1, or to 0 when they are not positive, as LlamaIndex's relative-score fusion
  does), then weighted and summed; with two lists LlamaIndex's ``alpha`` is the weight of the
  first (dense) and ``1 - alpha`` that of the second (keyword). Scores lie in ``[0, sum(weights)]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from quant_retriever.checks import int_at_least

__all__ = ["Fusion", "FUSIONS", "RRF_K", "BRANCH_FACTOR", "fuse", "fuse_hits", "hybrid_options"]

Fusion = Literal["rrf", "relative"]
FUSIONS = ("rrf", "relative")
RRF_K = 60
#: Each branch of a hybrid search takes this many times ``k`` candidates unless told otherwise.
BRANCH_FACTOR = 4

Hits = Sequence[tuple[int, float]]


def fuse(
    lists: Sequence[Hits], weights: Sequence[float] | None = None, fusion: str = "rrf", rrf_k: float = RRF_K
) -> list:
    """The fused ranking of ``lists`` (see the module docstring); ``weights`` default to 1 each."""
    total: dict[int, float] = {}
    for hits, weight in zip(lists, [1.0] * len(lists) if weights is None else weights):
        for key, share in zip((key for key, _ in hits), _shares(hits, fusion, rrf_k)):
            total[key] = total.get(key, 0.0) + weight * share
    return sorted(total.items(), key=lambda item: (-item[1], item[0]))


def _shares(hits: Hits, fusion: str, rrf_k: float) -> list[float]:
    if fusion == "rrf":
        return [1.0 / (rrf_k + rank) for rank in range(1, len(hits) + 1)]
    scores = [score for _, score in hits]
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0 if high > 0 else 0.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def fuse_hits(branches: Sequence[Sequence[tuple[Any, float]]], k: int, key: Callable, **fusing) -> list:
    """The top ``k`` of :func:`fuse` over lists of ``(record, score)``, records told apart (and
    ties broken) by ``key(record)``."""
    by_key = {key(r): r for hits in branches for r, _ in hits}
    fused = fuse([[(key(r), s) for r, s in hits] for hits in branches], **fusing)
    return [(by_key[x], score) for x, score in fused[:k]]


def hybrid_options(k, dense_top_k, sparse_top_k, fusion, rrf_k, weights, alpha) -> dict:
    """A hybrid search's checked options: each branch's candidate count (``BRANCH_FACTOR * k``
    by default) and the fusion (``weights`` (dense, keyword), or ``alpha``; not both)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(map(repr, FUSIONS))}; got {fusion!r}.")
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not rrf_k >= 0:
        raise ValueError(f"rrf_k must be a number >= 0; got {rrf_k!r}.")
    k = int_at_least(k, "k", 0)
    return dict(
        dense_k=int_at_least(BRANCH_FACTOR * k if dense_top_k is None else dense_top_k, "dense_top_k", 0),
        sparse_k=int_at_least(BRANCH_FACTOR * k if sparse_top_k is None else sparse_top_k, "sparse_top_k", 0),
        fusion=fusion,
        rrf_k=float(rrf_k),
        weights=_weights(weights, alpha),
    )


def _weights(weights, alpha) -> tuple[float, float]:
    """(dense, keyword) weights from ``weights`` or ``alpha`` (not both)."""
    if weights is not None and alpha is not None:
        raise TypeError("pass weights or alpha, not both.")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1]; got {alpha!r}.")
        return float(alpha), 1.0 - float(alpha)
    if weights is None:
        return 1.0, 1.0
    try:
        dense, keyword = (float(w) for w in weights)
    except (TypeError, ValueError):
        raise TypeError(f"weights must be two numbers (dense, keyword); got {weights!r}.") from None
    if not (0 <= dense < float("inf") and 0 <= keyword < float("inf")):
        raise ValueError(f"weights must be finite numbers >= 0; got {weights!r}.")
    return dense, keyword
