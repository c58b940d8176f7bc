"""Benchmarking reranker precisions: :func:`evaluate_rerankers` measures what a precision costs in
fidelity to FP32 and buys in memory and speed, on the same queries and candidates in one run.

==================  ===============================================================
column              meaning
==================  ===============================================================
parameter_bytes     parameters, buffers and quantization state of the loaded model
pairs_per_second    (query, passage) pairs scored per second: every query's
                    candidates reranked once, median of ``repeats`` timed rounds
pearson, spearman   correlation of the scores ``rerank`` returns with the FP32
                    scores of the same pairs, over all pairs
ndcg, map           NDCG@``at`` and MAP@``at`` of the precision's ordering of each
                    query's candidates, taking the FP32 ordering as the truth: its
                    first ``at`` are the relevant ones, graded ``at`` down to 1 by
                    their FP32 rank for NDCG; 1.0 means the same top ``at`` (in the
                    same order, for NDCG)
==================  ===============================================================

These figures measure quantization fidelity, not task quality: how closely a precision
reproduces its own model's FP32 scores and orderings, whatever the model's quality.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant_retriever._demo_corpus import demo_cross_encoder, stdlib_rerank_candidates
from quant_retriever.bench import metrics
from quant_retriever.bench.sweep import Measured, check_repeats, precision_label, precision_runs, sweep
from quant_retriever.models.encoder import check_batch_size, check_texts
from quant_retriever.models.reranker import Reranker, load_reranker
from quant_retriever.models.settings import Precision, lookup_precision

__all__ = ["RerankerReport", "evaluate_rerankers", "read_rerank_pairs", "demo_cross_encoder"]

_MB = 1e6


@dataclass(frozen=True)
class RerankerReport:
    """One precision measured against FP32 on the same pairs (see the module docstring).

    ``applied_precision`` and the numbers are ``None`` when the precision could not load or
    run on this machine; ``skipped`` then says why. ``at`` is the cut-off of ``ndcg`` and
    ``map``; ``compiled``: measured with ``load_reranker(..., compile=True)``.
    """

    precision: str
    applied_precision: str | None
    parameter_bytes: int | None
    pairs_per_second: float | None
    pearson: float | None
    spearman: float | None
    ndcg: float | None
    map: float | None
    at: int
    skipped: str | None = None
    compiled: bool = False

    @property
    def label(self) -> str:
        """``"int8"``, ``"fp16 (bf16)"`` when a fallback applied, ``"+compile"`` appended."""
        return precision_label(self.precision, self.applied_precision, self.compiled)

    def __repr__(self) -> str:
        if self.skipped is not None:
            return f"RerankerReport({self.label}: skipped, {self.skipped})"
        return (
            f"RerankerReport({self.label}: {self.parameter_bytes / _MB:.1f} MB, "
            f"{self.pairs_per_second:.1f} pairs/s, pearson {self.pearson:.4f} spearman {self.spearman:.4f}, "
            f"NDCG@{self.at} {self.ndcg:.3f}, MAP@{self.at} {self.map:.3f})"
        )


def evaluate_rerankers(
    model: str | os.PathLike[str],
    precisions: Sequence[Precision],
    queries: Sequence[str],
    candidates: Sequence[Sequence[str]],
    batch_size: int = 32,
    device: str | None = None,
    *,
    repeats: int = 3,
    at: int = 5,
    compiled: Sequence[Precision] = (),
    progress: bool = True,
) -> list[RerankerReport]:
    """Compare precisions of one cross-encoder with FP32 on ``candidates[i]`` reranked for
    ``queries[i]``, in one run (see the module docstring for what is measured).

    Precisions named in ``compiled`` are measured a second time with ``compile=True``;
    ``progress`` shows tqdm bars on stderr. A
    precision that cannot load or run here (missing package, no GPU kernel) is reported with
    ``skipped`` set instead of raising. ``TypeError``/``ValueError`` for queries that are not
    strings, candidate lists that are not lists of strings or are empty, lists of different
    lengths, fewer than 2 pairs in all, and ``at`` < 1.
    """
    runs = precision_runs(precisions, compiled)
    queries = check_texts(queries, "queries")
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise TypeError(f"candidates must be a list of lists of strings, got {type(candidates).__name__}.")
    if len(candidates) != len(queries):
        raise ValueError(
            f"candidates must hold one list per query; got {len(candidates)} lists for {len(queries)} queries."
        )
    candidates = [check_texts(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
    empty = [i for i, c in enumerate(candidates) if not c]
    if empty:
        raise ValueError(f"every query needs at least one candidate; candidates{empty[:5]} are empty.")
    if sum(map(len, candidates)) < 2:
        raise ValueError("need at least 2 (query, candidate) pairs to correlate scores.")
    if isinstance(at, bool) or not isinstance(at, int) or at < 1:
        raise ValueError(f"at must be a positive int, got {at!r}.")
    batch_size, repeats = check_batch_size(batch_size), check_repeats(repeats)
    return _evaluate(model, runs, queries, candidates, batch_size, device, repeats, at, progress)


def _rerank_all(reranker: Reranker, queries: list[str], candidates: list[list[str]], batch_size: int) -> list:
    """Every query's candidates reranked: per query ``(order [n], scores [n] in the candidates'
    order)``."""
    out = []
    for query, texts in zip(queries, candidates):
        result = reranker.rerank(query, texts, None, batch_size)
        scores = np.empty(len(texts), dtype=np.float32)
        scores[result.indices] = result.scores
        out.append((result.indices, scores))
    return out


def _evaluate(
    model: str | os.PathLike[str],
    runs: list[tuple[str, bool]],
    queries: list[str],
    candidates: list[list[str]],
    batch_size: int,
    device: str | None,
    repeats: int,
    at: int,
    progress: bool,
) -> list[RerankerReport]:
    reference_reranker = load_reranker(model, "fp32", device)
    reference = _rerank_all(reference_reranker, queries, candidates, batch_size)
    reference_scores = np.concatenate([scores for _, scores in reference])  # [pairs]
    # the FP32 top ``at`` of each query are its relevant candidates, graded by FP32 rank
    qrels = [{int(d): float(at - rank) for rank, d in enumerate(order[:at].tolist())} for order, _ in reference]
    n_pairs = len(reference_scores)

    def load(name: str, use_compile: bool) -> Reranker:
        if lookup_precision(name, "in precisions").name == "fp32" and not use_compile:
            return reference_reranker
        return load_reranker(model, name, device, compile=use_compile)

    measured = sweep(runs, load, lambda r: _rerank_all(r, queries, candidates, batch_size), repeats, progress)
    reports = []
    for (name, use_compile), run in zip(runs, measured):
        if not isinstance(run, Measured):
            reports.append(RerankerReport(name, None, None, None, None, None, None, None, at, run, use_compile))
            continue
        orders = [order for order, _ in run.output]
        scores = np.concatenate([s for _, s in run.output])
        reports.append(
            RerankerReport(
                precision=name,
                applied_precision=run.model.precision,
                parameter_bytes=run.model.parameter_bytes,
                pairs_per_second=n_pairs / run.seconds,
                pearson=metrics.pearson(scores, reference_scores),
                spearman=metrics.spearman(scores, reference_scores),
                ndcg=metrics.ndcg(orders, qrels, at),
                map=metrics.mean_average_precision(orders, qrels, at),
                at=at,
                compiled=use_compile,
            )
        )
    return reports


def read_rerank_pairs(
    path: str | os.PathLike | None, n_queries: int, candidates: int, corpus_size: int = 1000, progress: bool = True
) -> tuple[list[str], list[list[str]]]:
    """``(queries, candidates)``: the first ``n_queries`` lines of a ``.jsonl`` file with one
    ``{"query": str, "passages": [str, ...]}`` per line, each cut to its first ``candidates``
    passages; ``None``: standard-library queries, each with the ``candidates`` docstrings that
    FP32 MiniLM retrieves first among ``corpus_size`` (embedded once and cached; ``progress``
    shows a bar while that runs). ``ValueError`` naming the line for a missing file or a
    malformed line."""
    for name, value in (("n_queries", n_queries), ("candidates", candidates), ("corpus_size", corpus_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if path is None:
        pairs = stdlib_rerank_candidates(n_queries, candidates, corpus_size, progress)
        return [q for q, _ in pairs], [c for _, c in pairs]
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"pairs file {p} does not exist.")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not UTF-8 text; expected one JSON object per line.") from None
    queries, passages = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        texts = obj.get("passages") if isinstance(obj, dict) else None
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("query"), str)
            or not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) for t in texts)
        ):
            raise ValueError(
                f'{p} line {lineno}: expected {{"query": "...", "passages": ["...", ...]}} '
                f"with at least one passage; got {line.strip()[:60]!r}."
            )
        queries.append(obj["query"])
        passages.append(texts[:candidates])
        if len(queries) == n_queries:
            break
    if not queries:
        raise ValueError(f'{p} holds no pairs; expected one {{"query": ..., "passages": [...]}} per line.')
    return queries, passages
