"""What a benchmark measures against: held-out queries, relevance judgements (qrels) and the
metrics recall@k, MRR@10, NDCG@10 (linear gain) and MAP, and score correlations (Pearson,
Spearman).

Qrels files (:func:`read_qrels`): one judgement per line, ``query_index<TAB>doc_index`` or
``query_index<TAB>doc_index<TAB>relevance`` (relevance a number, default 1; 0 means judged
not relevant); indices count from 0 in the query and vector arrays; blank lines and lines
starting with ``#`` are skipped; spaces work as separators too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "AT",
    "Qrels",
    "load_vectors",
    "as_matrix",
    "split_queries",
    "read_qrels",
    "qrels_from_sources",
    "recall",
    "mrr",
    "ndcg",
    "mean_average_precision",
    "pearson",
    "spearman",
    "ratio",
]

#: rank cut-off of MRR and NDCG (recall uses ``k``)
AT = 10

Qrels = list  # list[dict[int, float]]: per query, doc index -> relevance


def load_vectors(path: str | os.PathLike, what: str) -> np.ndarray:
    """A 2-D float array ``[n, dim]`` from a ``.npy`` file (no pickles); ``what`` names it in
    the ``ValueError`` for a missing file, another format or another shape."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file {p} does not exist.")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{p}: not a .npy array file ({' '.join(str(exc).split())}).") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating) or 0 in arr.shape:
        shape = getattr(arr, "shape", None)
        kind = getattr(arr, "dtype", type(arr).__name__)
        raise ValueError(f"{p}: expected a 2-D float array (n, dim); got {kind} {shape}.")
    return arr


def as_matrix(x: object, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array; got {type(x).__name__}.")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (n, dim); got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must hold floats; got dtype {x.dtype}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values.")
    return x


def split_queries(vectors: np.ndarray, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``n_queries`` random rows of ``vectors`` as queries: ``(corpus [n - q, d],
    queries [q, d])``, the corpus without them."""
    vectors = as_matrix(vectors, "vectors")
    if isinstance(n_queries, bool) or not isinstance(n_queries, int) or not 1 <= n_queries < len(vectors):
        raise ValueError(
            f"n_queries must be an int from 1 to {len(vectors) - 1} (fewer than the vectors); got {n_queries!r}."
        )
    picked = np.random.default_rng(seed).choice(len(vectors), n_queries, replace=False)
    keep = np.ones(len(vectors), dtype=bool)
    keep[picked] = False
    return vectors[keep], vectors[np.sort(picked)]


def read_qrels(path: str | os.PathLike, n_queries: int, n_docs: int) -> Qrels:
    """Read a qrels file (format in the module docstring) -> per query a dict ``{doc index:
    relevance}``. Raises ``ValueError`` naming the line for a malformed line or an index out
    of range."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"qrels file {path} does not exist.")
    return _read_qrels(path, n_queries, n_docs)


def _read_qrels(path: Path, n_queries: int, n_docs: int) -> Qrels:
    qrels: Qrels = [{} for _ in range(n_queries)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(
            f"{path}: not a UTF-8 text file of 'query_index<TAB>doc_index[<TAB>relevance]' lines."
        ) from None
    judged = 0
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path} line {lineno}"
        if len(parts) not in (2, 3):
            raise ValueError(
                f"{where}: expected 'query_index<TAB>doc_index[<TAB>relevance]'; got {line.strip()[:60]!r}."
            )
        try:
            q, d = int(parts[0]), int(parts[1])
            rel = float(parts[2]) if len(parts) == 3 else 1.0
        except ValueError:
            raise ValueError(
                f"{where}: indices must be integers and relevance a number; got {line.strip()[:60]!r}."
            ) from None
        if not 0 <= q < n_queries:
            raise ValueError(f"{where}: query index {q} is out of range for {n_queries} queries.")
        if not 0 <= d < n_docs:
            raise ValueError(f"{where}: doc index {d} is out of range for {n_docs} vectors.")
        if not math.isfinite(rel) or rel < 0:
            raise ValueError(f"{where}: relevance must be a finite number >= 0; got {parts[2]!r}.")
        qrels[q][d] = rel
        judged += 1
    if not judged:
        raise ValueError(f"{path}: no judgements found; expected 'query_index<TAB>doc_index[<TAB>relevance]' lines.")
    return qrels


def qrels_from_sources(doc_indices: Sequence[int]) -> Qrels:
    """Qrels where query ``i`` has one relevant document, ``doc_indices[i]``."""
    return [{int(d): 1.0} for d in doc_indices]


def recall(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(ids, truth)]))


def mrr(ids: np.ndarray, qrels: Qrels) -> float | None:
    values = []
    for row, rel in zip(ids, qrels):
        if any(r > 0 for r in rel.values()):
            ranks = [i for i, d in enumerate(row[:AT].tolist()) if rel.get(d, 0) > 0]
            values.append(1.0 / (ranks[0] + 1) if ranks else 0.0)
    return float(np.mean(values)) if values else None


def ndcg(ids: Sequence[np.ndarray], qrels: Qrels, at: int = AT) -> float | None:
    """Mean NDCG@``at`` (linear gain) over the queries with a relevant document; ``ids``: per
    query, document indices best first (rows may differ in length)."""
    values = []
    for row, rel in zip(ids, qrels):
        ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:at]
        if ideal:
            dcg = sum(rel.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(row[:at].tolist()))
            values.append(dcg / sum(r / math.log2(i + 2) for i, r in enumerate(ideal)))
    return float(np.mean(values)) if values else None


def mean_average_precision(ids: Sequence[np.ndarray], qrels: Qrels, at: int = AT) -> float | None:
    """MAP@``at`` over the queries with a relevant document: per query, the mean of the
    precision at the rank of each relevant document in the first ``at``, divided by
    ``min(at, number relevant)``."""
    values = []
    for row, rel in zip(ids, qrels):
        relevant = sum(1 for r in rel.values() if r > 0)
        if relevant:
            hits, total = 0, 0.0
            for i, d in enumerate(row[:at].tolist()):
                if rel.get(d, 0) > 0:
                    hits += 1
                    total += hits / (i + 1)
            values.append(total / min(at, relevant))
    return float(np.mean(values)) if values else None


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first position of each value
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length score arrays; NaN when either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the ranks, ties at their mean rank."""
    return pearson(_ranks(np.asarray(a)), _ranks(np.asarray(b)))


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
