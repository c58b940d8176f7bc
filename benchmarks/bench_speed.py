"""Side-by-side search latency at scale: our binary/int4/int8/fp16 indexes against faiss
``IndexBinaryFlat`` and ``IndexScalarQuantizer(QT_4bit)`` on the same random unit vectors,
in one run (medians; the first search of each index is an untimed warm-up).

    python benchmarks/bench_speed.py --n 1000000
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from tqdm import tqdm

from quant_retriever import QuantizedIndex
from quant_retriever.bench import median_ms
from quant_retriever.kernels import scans as _native


def _medians(search, singles: list[np.ndarray], batches: list[np.ndarray]) -> tuple[float, float]:
    """(median ms of one-query searches, of 32-query searches), each call on the next input."""
    one, many = itertools.cycle(singles), itertools.cycle(batches)
    return median_ms(lambda: search(next(one)), len(singles)), median_ms(lambda: search(next(many)), len(batches))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=40, help="timed one-query searches")
    args = parser.parse_args(argv)
    import faiss

    start = time.perf_counter()
    compiled = _native.LIBRARY.get() is not None
    built = f"compiled in {time.perf_counter() - start:.2f} s (not timed below)" if compiled else "unavailable"
    print(f"native kernels: {built}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((max(args.single, 160), 384), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    singles = [q[i : i + 1] for i in range(args.single)]
    batches = [q[32 * i : 32 * i + 32] for i in range(5)]
    rows = {}
    for codec in tqdm(["binary", "int4", "int8", "fp16"], desc="ours"):
        index = QuantizedIndex(384, codec=codec)
        for s in range(0, len(x), 200_000):
            index.add(x[s : s + 200_000])
        index.search(q[:1], 10)
        name = f"qr {codec}" + (" +int8 x4" if index.rescore else "")
        rows[name] = _medians(lambda b, index=index: index.search(b, 10), singles, batches)
        del index
    binary = faiss.IndexBinaryFlat(384)
    binary.add(np.packbits(x > 0, axis=1))
    rows["faiss IndexBinaryFlat"] = _medians(lambda b: binary.search(np.packbits(b > 0, axis=1), 10), singles, batches)
    sq = faiss.IndexScalarQuantizer(384, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(x[:100_000])
    sq.add(x)
    rows["faiss SQ QT_4bit"] = _medians(lambda b: sq.search(b, 10), singles, batches)
    print(f"{args.n} x 384 random unit vectors, k=10, {torch.get_num_threads()} threads, median ms")
    print(f"{'method':<24}{'1 query':>10}{'32 queries':>12}")
    for name, (a, b) in rows.items():
        print(f"{name:<24}{a:>10.2f}{b:>12.2f}")


if __name__ == "__main__":
    main()
