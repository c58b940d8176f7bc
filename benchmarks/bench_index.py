"""Recall, memory and latency of every codec against exact FP32 search and common baselines.

    python benchmarks/bench_index.py --data corpus          # real MiniLM vectors (recall, MRR)
    python benchmarks/bench_index.py --data random --n 1000000   # speed at 1M x 384

Every method searches the same vectors and queries in one run. Recall@10 is measured
against exact FP32 inner-product search; "MRR kept" is MRR@10 of the docstring each query
was made from, divided by exact search's MRR@10 (corpus data only). Latency: p50/p95 over
single-query searches, and the median of 32-query batches. The first search of each method
is a warm-up and is not timed (it includes the one-time compile of the native CPU kernels,
reported separately).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from quant_retriever import QuantizedIndex
from quant_retriever.codecs import _native

K = 10


@dataclass
class Method:
    name: str
    build: Callable[[np.ndarray], object]  # corpus -> state
    search: Callable[[object, np.ndarray], np.ndarray]  # (state, queries [q, d]) -> ids [q, K]
    bytes_per_vector: Callable[[object], float]
    disk_bytes_per_vector: Callable[[object], float] = lambda s: 0


def ours(codec: str, rescore: bool, mult: int = 1) -> Method:
    label = f"qr {codec}" + (f" +int8 x{mult}" if rescore else "")
    return Method(
        label,
        lambda x: _built(QuantizedIndex(x.shape[1], codec=codec, rescore=rescore), x),
        lambda idx, q: idx.search(q, k=K, rescore_multiplier=mult).ids,
        lambda idx: idx.memory().bytes_per_vector,
        lambda idx: idx.memory().disk_bytes_per_vector,
    )


def _built(index: QuantizedIndex, x: np.ndarray) -> QuantizedIndex:
    for start in range(0, len(x), 100_000):
        index.add(x[start : start + 100_000])
    return index


def faiss_methods() -> list[Method]:
    try:
        import faiss
    except ImportError:
        print("faiss not installed: pip install 'quant-retriever[bench]'")
        return []

    def sq(kind):
        def build(x):
            index = faiss.IndexScalarQuantizer(x.shape[1], kind, faiss.METRIC_INNER_PRODUCT)
            index.train(x[:100_000])
            index.add(x)
            return index

        return build

    def binary_build(x):
        index = faiss.IndexBinaryFlat(x.shape[1])
        index.add(np.packbits(x > 0, axis=1))
        return index

    def flat_build(x):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index

    return [
        Method("faiss IndexFlatIP", flat_build, lambda i, q: i.search(q, K)[1], lambda i: 4 * i.d),
        Method("faiss IndexBinaryFlat", binary_build, lambda i, q: i.search(np.packbits(q > 0, axis=1), K)[1], lambda i: i.code_size),
        Method("faiss SQ QT_4bit", sq(faiss.ScalarQuantizer.QT_4bit), lambda i, q: i.search(q, K)[1], lambda i: i.sa_code_size()),
        Method("faiss SQ QT_8bit", sq(faiss.ScalarQuantizer.QT_8bit), lambda i, q: i.search(q, K)[1], lambda i: i.sa_code_size()),
    ]


def sentence_transformers_methods() -> list[Method]:
    try:
        from sentence_transformers.util.quantization import (
            quantize_embeddings,
            semantic_search_faiss,
            semantic_search_usearch,
        )
    except ImportError:
        print("sentence-transformers >= 6 not installed: its baselines are skipped")
        return []

    def st(fn, precision, ranges_needed, size):
        def build(x):
            ranges = np.vstack([x[:10_000].min(0), x[:10_000].max(0)]) if ranges_needed else None
            codes = quantize_embeddings(x, precision=precision, ranges=ranges)
            _, _, index = fn(
                x[:1], corpus_embeddings=codes, corpus_precision=precision, top_k=1, output_index=True, rescore=False,
                ranges=ranges,
            )
            return index, ranges, size(x.shape[1])

        def search(state, q):
            index, ranges, _ = state
            res = fn(q, corpus_index=index, corpus_precision=precision, top_k=K, rescore_multiplier=4, ranges=ranges)[0]
            return np.array([[hit["corpus_id"] for hit in hits] for hits in res])

        return build, search

    out = []
    for fn, precision, label, size, ranged in [
        (semantic_search_faiss, "ubinary", "st faiss ubinary x4", lambda d: d / 8, False),
        (semantic_search_usearch, "int8", "st usearch int8 x4", lambda d: d, True),
    ]:
        build, search = st(fn, precision, ranged, size)
        out.append(Method(label, build, search, lambda state: state[2]))
    return out


def timed(fn, runs):
    times = []
    for run in runs:
        start = time.perf_counter()
        fn(run)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3


def evaluate(method: Method, x: np.ndarray, q: np.ndarray, truth: np.ndarray, qrels: np.ndarray | None, n_single: int):
    t0 = time.perf_counter()
    state = method.build(x)
    build_s = time.perf_counter() - t0
    ids = method.search(state, q[:1])  # warm-up
    ids = np.concatenate([method.search(state, q[i : i + 256]) for i in range(0, len(q), 256)])
    recall = np.mean([len(set(a[:K]) & set(b)) / K for a, b in zip(ids, truth)])
    mrr = None
    if qrels is not None:
        mrr = np.mean([1.0 / (list(row[:K]).index(rel) + 1) if rel in row[:K] else 0.0 for row, rel in zip(ids, qrels)])
    single = timed(lambda i: method.search(state, q[i : i + 1]), range(min(n_single, len(q))))
    batches = [q[i : i + 32] for i in range(0, min(len(q), 32 * 5), 32) if len(q[i : i + 32]) == 32]
    batch = timed(lambda b: method.search(state, b), batches) if batches else np.array([np.nan])
    return {
        "method": method.name,
        "B/vec device": method.bytes_per_vector(state),
        "B/vec disk": method.disk_bytes_per_vector(state),
        "recall@10": recall,
        "mrr@10": mrr,
        "1q p50 ms": float(np.median(single)),
        "1q p95 ms": float(np.percentile(single, 95)),
        "32q ms": float(np.median(batch)),
        "build s": build_s,
    }


def print_table(rows: list[dict], exact_mrr: float | None, title: str) -> None:
    print(f"\n{title}")
    head = f"{'method':<26} {'B/vec dev':>9} {'B/vec disk':>10} {'recall@10':>9} {'MRR kept':>8} {'1q p50 ms':>9} {'1q p95 ms':>9} {'32q ms':>8} {'build s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        kept = f"{r['mrr@10'] / exact_mrr:8.3f}" if exact_mrr and r["mrr@10"] is not None else f"{'n/a':>8}"
        print(
            f"{r['method']:<26} {r['B/vec device']:9.0f} {r['B/vec disk']:10.0f} {r['recall@10']:9.3f} {kept} "
            f"{r['1q p50 ms']:9.2f} {r['1q p95 ms']:9.2f} {r['32q ms']:8.2f} {r['build s']:7.1f}"
        )


def methods(quick: bool) -> list[Method]:
    out = [ours("fp32", False), ours("fp16", False), ours("int8", False)]
    mults = [4] if quick else [1, 2, 4, 10]
    for codec in ("int4", "binary"):
        out.append(ours(codec, False))
        out.extend(ours(codec, True, m) for m in mults)
    return out + faiss_methods() + sentence_transformers_methods()


def load_data(kind: str, n: int, n_queries: int, dim: int = 384):
    if kind == "random":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = rng.standard_normal((n_queries, dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        return x, q, None
    from quant_retriever import corpus

    docs = corpus.stdlib_docstrings()
    queries = corpus.stdlib_queries(docs, n_queries)
    step = max(1, len(docs) // n_queries)
    qrels = np.arange(0, len(docs), step)[: len(queries)]
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
    lib = _native.kernels()
    print(f"native CPU kernels: {'compiled in %.2f s' % (time.perf_counter() - t0) if lib else 'unavailable (eager torch)'}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    x, q, qrels = load_data(args.data, args.n, args.queries)
    print(f"data: {args.data}, {x.shape[0]} x {x.shape[1]} vectors, {len(q)} queries")
    truth = torch.topk(torch.from_numpy(q) @ torch.from_numpy(x).T, K, dim=1).indices.numpy()
    exact_mrr = None
    if qrels is not None:
        exact_mrr = np.mean([1.0 / (list(r).index(rel) + 1) if rel in r else 0.0 for r, rel in zip(truth, qrels)])
        print(f"exact FP32 MRR@10 of the source docstring: {exact_mrr:.3f}")
    rows = []
    for method in tqdm(methods(args.quick), desc="methods", file=sys.stderr):
        rows.append(evaluate(method, x, q, truth, qrels, args.single))
        del method
    print_table(rows, exact_mrr, f"{args.data}: {x.shape[0]} x {x.shape[1]}, k={K}")


if __name__ == "__main__":
    main()
