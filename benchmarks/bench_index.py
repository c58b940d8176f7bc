"""Recall, memory and latency of every codec against exact FP32 search and common baselines.

    python benchmarks/bench_index.py --data corpus          # real MiniLM vectors (recall, MRR)
    python benchmarks/bench_index.py --data random --n 1000000   # speed at 1M x 384

Every method searches the same vectors and queries in one run. Recall@10 is measured
against exact FP32 inner-product search; "MRR kept" / "NDCG kept" are MRR@10 / NDCG@10 of the
docstring each query was made from, divided by exact search's (corpus data only). Latency:
p50/p95 over single-query searches, and the median of 32-query batches. The first search of
each method is a warm-up and is not timed (it includes the one-time compile of the native CPU
kernels, reported separately). The measuring core is ``quant_retriever.bench``, shared with
``quant-retriever bench-index`` (which takes any .npy vectors and also writes CSV, JSON and
a plot).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from quant_retriever import bench
from quant_retriever.kernels import scans as _native

K = 10


def load_data(kind: str, n: int, n_queries: int, dim: int = 384):
    """(vectors [n, dim], queries [q, dim], qrels or None): random unit vectors, or the stdlib
    docstrings and queries made from their names, embedded with MiniLM."""
    if kind == "random":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = rng.standard_normal((n_queries, dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        return x, q, None
    from quant_retriever import _demo_corpus as corpus

    docs = corpus.stdlib_docstrings()
    queries = corpus.stdlib_queries(docs, n_queries)
    step = max(1, len(docs) // n_queries)
    qrels = bench.qrels_from_sources(np.arange(0, len(docs), step)[: len(queries)])
    return corpus.embed_cached([d.text for d in docs]), corpus.embed_cached(queries), qrels


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["corpus", "random"], default="corpus")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors for --data random")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--single", type=int, default=50, help="single-query searches timed per method")
    parser.add_argument("--quick", action="store_true", help="only rescore multiplier 4")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    lib = _native.LIBRARY.get()
    print(
        "native CPU kernels: "
        + (f"compiled in {time.perf_counter() - t0:.2f} s" if lib else "unavailable (eager torch)")
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    x, q, qrels = load_data(args.data, args.n, args.queries)
    print(f"data: {args.data}, {x.shape[0]} x {x.shape[1]} vectors, {len(q)} queries")
    skipped: list[str] = []
    methods = bench.index_methods([4] if args.quick else bench.DEFAULT_MULTIPLIERS, skipped=skipped)
    for line in skipped:
        print(f"skipped {line}")
    result = bench.run_index_benchmark(x, q, K, qrels, methods, n_single=args.single, progress=True)
    if result.exact_mrr is not None:
        print(f"exact FP32 MRR@10 of the source docstring: {result.exact_mrr:.3f}, NDCG@10 {result.exact_ndcg:.3f}")
    print()
    print(bench.format_table(*bench.index_table(result), title=f"{args.data}: {x.shape[0]} x {x.shape[1]}, k={K}"))


if __name__ == "__main__":
    main()
