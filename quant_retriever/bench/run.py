"""Running an index benchmark: every method builds and searches the same vectors and queries in
one run (:func:`run_index_benchmark`), and the one timing helper of the project (:func:`median_ms`).

============  ====================================================================
column        meaning
============  ====================================================================
recall        recall@k against exact FP32 inner-product search (torch ``topk``)
mrr, ndcg     MRR@10 and NDCG@10 (linear gain) over the queries that have judged
              relevant documents, when qrels are given; ``*_kept`` divides by exact
              FP32 search's value
B/vec         bytes per vector on the device (the codes searched first) and on
              disk (the INT8 rescore copy)
p50/p95 ms    latency of single-query searches (``n_single`` of them)
batch ms, q/s median latency of ``batch_size``-query batches and queries per second
build s       building the index from the vectors
============  ====================================================================

The first search of each method is a warm-up and is not timed (for ours it includes the
one-time compile of the native CPU kernels).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from quant_retriever.bench import metrics
from quant_retriever.bench.methods import DEFAULT_MULTIPLIERS, Method, default_methods
from quant_retriever.bench.metrics import AT, Qrels, as_matrix
from quant_retriever.bench.report import finite
from quant_retriever.codecs import CODEC_NAMES

__all__ = ["IndexRow", "IndexBenchmark", "run_index_benchmark", "median_ms"]


@dataclass(frozen=True)
class IndexRow:
    """One method's measurements (see the module docstring); ``None`` where not measured."""

    method: str
    group: str
    bytes_per_vector: float
    disk_bytes_per_vector: float
    recall: float
    mrr: float | None
    ndcg: float | None
    mrr_kept: float | None
    ndcg_kept: float | None
    p50_ms: float
    p95_ms: float
    batch_ms: float | None
    batch_qps: float | None
    build_s: float


@dataclass(frozen=True)
class IndexBenchmark:
    """A whole run: the data's shape, exact FP32 search's MRR/NDCG, and one row per method."""

    n_vectors: int
    dim: int
    n_queries: int
    k: int
    batch_size: int
    exact_mrr: float | None
    exact_ndcg: float | None
    rows: list[IndexRow]
    skipped: list[str] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1

    def to_dict(self) -> dict:
        """JSON-ready: the settings, then ``rows`` as a list of dicts (NaN -> ``None``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rows"}
        out["rows"] = [asdict(r) for r in self.rows]
        return finite(out)

    def __repr__(self) -> str:
        best = max(self.rows, key=lambda r: r.recall).method if self.rows else "-"
        return (
            f"IndexBenchmark({self.n_vectors} x {self.dim}, {self.n_queries} queries, k={self.k}, "
            f"{len(self.rows)} methods, best recall: {best})"
        )


def _timed_ms(fn: Callable[[Any], Any], runs: Iterable[Any]) -> np.ndarray:
    """Wall time of ``fn(run)`` for each of ``runs``, in milliseconds: ``[len(runs)]``."""
    times = []
    for run in runs:
        start = time.perf_counter()
        fn(run)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3  # ms


def median_ms(fn: Callable[[], Any], runs: int = 20) -> float:
    """Median wall time of ``runs`` calls of ``fn``, in milliseconds."""
    return float(np.median(_timed_ms(lambda _: fn(), range(runs))))


def interleaved_ms(*fns: Callable[[], Any], runs: int = 20) -> list[float]:
    """Median wall times (ms) of ``runs`` calls of each of ``fns``, called in turn, so that a
    burst of load on a shared machine falls on all of them alike (for ratios)."""
    times = _timed_ms(lambda i: fns[i % len(fns)](), range(runs * len(fns))).reshape(runs, len(fns))
    return [float(m) for m in np.median(times, axis=0)]


def _evaluate(method: Method, x, q, truth, qrels, k, exact, n_single, n_batches, batch_size) -> IndexRow:
    k_search = max(k, AT) if qrels is not None else k
    k_search = min(k_search, len(x))
    t0 = time.perf_counter()
    state = method.build(x)
    build_s = time.perf_counter() - t0
    method.search(state, q[:1], k_search)  # warm-up
    ids = np.concatenate([method.search(state, q[i : i + 256], k_search) for i in range(0, len(q), 256)])
    mrr = ndcg = None
    if qrels is not None:
        mrr, ndcg = metrics.mrr(ids, qrels), metrics.ndcg(ids, qrels)
    single = _timed_ms(lambda i: method.search(state, q[i : i + 1], k), range(min(n_single, len(q))))
    batches = [q[i : i + batch_size] for i in range(0, len(q) - batch_size + 1, batch_size)][:n_batches]
    batch = _timed_ms(lambda b: method.search(state, b, k), batches) if batches else None
    batch_ms = float(np.median(batch)) if batch is not None else None
    return IndexRow(
        method=method.name,
        group=method.group,
        bytes_per_vector=float(method.bytes_per_vector(state)),
        disk_bytes_per_vector=float(method.disk_bytes_per_vector(state)),
        recall=metrics.recall(ids, truth, k),
        mrr=mrr,
        ndcg=ndcg,
        mrr_kept=metrics.ratio(mrr, exact[0]),
        ndcg_kept=metrics.ratio(ndcg, exact[1]),
        p50_ms=float(np.median(single)) if len(single) else math.nan,
        p95_ms=float(np.percentile(single, 95)) if len(single) else math.nan,
        batch_ms=batch_ms,
        batch_qps=batch_size / batch_ms * 1e3 if batch_ms else None,
        build_s=build_s,
    )


def run_index_benchmark(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    qrels: Qrels | None = None,
    methods: Sequence[Method] | None = None,
    n_single: int = 50,
    n_batches: int = 5,
    batch_size: int = 32,
    progress: bool = False,
) -> IndexBenchmark:
    """Build and search every method on ``vectors`` ``[n, d]`` with ``queries`` ``[q, d]``.

    ``qrels`` (one dict per query, see :func:`read_qrels`) adds MRR@10 and NDCG@10;
    ``methods`` defaults to :func:`index_methods`. ``progress`` shows a tqdm bar on stderr.
    """
    vectors, queries = as_matrix(vectors, "vectors"), as_matrix(queries, "queries")
    if queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries must have the vectors' dimension {vectors.shape[1]}; got {queries.shape[1]}.")
    for name, value, low in (
        ("k", k, 1),
        ("n_single", n_single, 0),
        ("n_batches", n_batches, 0),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
    if k > len(vectors):
        raise ValueError(f"k must be at most the number of vectors ({len(vectors)}); got {k}.")
    if qrels is not None and len(qrels) != len(queries):
        raise ValueError(f"qrels must have one entry per query. Got {len(qrels)} entries and {len(queries)} queries.")
    skipped: list[str] = []
    methods = (
        default_methods(list(DEFAULT_MULTIPLIERS), list(CODEC_NAMES), True, skipped)
        if methods is None
        else list(methods)
    )
    return _run_index_benchmark(vectors, queries, k, qrels, methods, skipped, n_single, n_batches, batch_size, progress)


def _run_index_benchmark(x, q, k, qrels, methods, skipped, n_single, n_batches, batch_size, progress) -> IndexBenchmark:
    from tqdm import tqdm

    # truth: [q, max(k, AT)] exact inner-product neighbours
    truth = torch.topk(torch.from_numpy(q) @ torch.from_numpy(x).T, min(max(k, AT), len(x)), dim=1).indices.numpy()
    exact = (metrics.mrr(truth, qrels), metrics.ndcg(truth, qrels)) if qrels is not None else (None, None)
    rows = []
    for method in tqdm(methods, desc="methods", unit="method", file=sys.stderr, disable=not progress):
        rows.append(_evaluate(method, x, q, truth[:, :k], qrels, k, exact, n_single, n_batches, batch_size))
    return IndexBenchmark(
        n_vectors=len(x),
        dim=x.shape[1],
        n_queries=len(q),
        k=k,
        batch_size=batch_size,
        exact_mrr=exact[0],
        exact_ndcg=exact[1],
        rows=rows,
        skipped=skipped,
        device="cuda" if torch.cuda.is_available() else "cpu",
        threads=torch.get_num_threads(),
    )
