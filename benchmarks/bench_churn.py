"""Index core v2 in one run: recall for every way of batching the corpus, and sizes and latency
under churn (the same ids re-upserted many times), before and after.

    python benchmarks/bench_churn.py                  # both parts
    python benchmarks/bench_churn.py --part batching  # recall@10 per codec for adds of 1/16/64/all
    python benchmarks/bench_churn.py --part churn --rounds 50 --ids 1000

Recall@10 is against exact FP32 search on the real MiniLM embeddings of the stdlib docstrings.
Churn: a persistent index of ``--ids`` vectors; each round removes every id and adds it again
with a new vector (what an upsert does). Latency is the median of 1-query searches.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from quant_retriever import QuantizedIndex

BATCHINGS = [
    ("int4", True, 2, "int8"),
    ("int4", True, 2, "fp16"),
    ("int4", False, 1, "int8"),
    ("binary", True, 4, "int8"),
    ("int8", False, 1, "int8"),
    ("fp16", False, 1, "int8"),
    ("fp32", False, 1, "int8"),
]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def batching(args) -> None:
    from quant_retriever import _demo_corpus as corpus

    docs = corpus.stdlib_docstrings()
    x = corpus.embed_cached([d.text for d in docs])
    q = corpus.embed_cached(corpus.stdlib_queries(docs, args.queries))
    truth = torch.topk(torch.from_numpy(q) @ torch.from_numpy(x).T, 10).indices.numpy()
    sizes = [len(x), 1, 16, 64]
    print(
        f"\nrecall@10 against exact FP32, {len(x)} x {x.shape[1]} MiniLM vectors, {len(q)} queries, by add batch size"
    )
    print(f"{'codec':<28}" + "".join(f"{('one add' if s == len(x) else f'adds of {s}'):>12}" for s in sizes))
    for codec, rescore, mult, rdtype in tqdm(BATCHINGS, desc="codecs", leave=False):
        cells = []
        for size in sizes:
            index = QuantizedIndex(x.shape[1], codec=codec, rescore=rescore, rescore_dtype=rdtype)
            for start in range(0, len(x), size):
                index.add(x[start : start + size])
            cells.append(recall_at(index.search(q, k=10, rescore_multiplier=mult).ids, truth))
        label = f"{codec}" + (f" + {rdtype} rescore x{mult}" if rescore else "")
        print(f"{label:<28}" + "".join(f"{c:>12.4f}" for c in cells))


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def churn(args) -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(args.ids)

    def vectors():
        v = rng.standard_normal((args.ids, 384), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    queries = vectors()[:1]
    print(f"\nchurn: {args.ids} ids re-upserted {args.rounds} times (remove + add), persistent index, 384-d")
    print(f"{'codec':<10}{'':>8}{'device MB':>11}{'host KB':>10}{'dir MB':>9}{'rows':>8}{'search ms':>11}")
    for codec in ("int4", "binary", "int8"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "idx"
            index = QuantizedIndex(384, codec=codec, path=path)
            index.add(vectors(), ids=ids)

            def row(label: str) -> None:
                mem = index.memory()
                ms = median_ms(lambda: index.search(queries, k=10), args.searches)
                rows = mem.device_bytes // max(mem.bytes_per_vector, 1)
                print(
                    f"{codec:<10}{label:>8}{mem.device_bytes / 1e6:>11.2f}{mem.host_bytes / 1e3:>10.1f}"
                    f"{directory_bytes(path) / 1e6:>9.2f}{rows:>8}{ms:>11.3f}"
                )

            row("before")
            for _ in tqdm(range(args.rounds), desc=f"{codec} rounds", leave=False):
                index.remove(ids)
                index.add(vectors(), ids=ids)
            row("after")
            index.compact()
            row("compact")
            index.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["batching", "churn", "both"], default="both")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--searches", type=int, default=50)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if args.part in ("batching", "both"):
        batching(args)
    if args.part in ("churn", "both"):
        churn(args)


if __name__ == "__main__":
    main()
