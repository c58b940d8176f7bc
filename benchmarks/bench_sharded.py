"""Sharded search and Ray Data embedding on a local Ray instance.

    python benchmarks/bench_sharded.py                    # 1M vectors; 60k for the overhead; 2,000 texts
    python benchmarks/bench_sharded.py --n 20000 --overhead-n 5000 --texts 64 --batches 2 --single 5   # a quick check

Three tables, medians, the first call of each setup an untimed warm-up:

1. search throughput of a ``ShardedIndex`` with 1, 2 and 4 local shards over ``--n`` random
   unit vectors (384-d), batches of ``--batch`` queries, k=10, INT8 rescoring at x4;
2. the fixed cost of fanning out: one 1-query search on a ``ShardedIndex`` against the same
   search on one in-process ``QuantizedIndex``, at ``--overhead-n`` vectors;
3. embedding throughput: ``embed_corpus`` (MiniLM at ``--precision`` on a Ray Data actor pool,
   written into a 2-shard store) against one process encoding the same texts. Model loading is
   counted in both.

Each shard actor gets ``cpus / shards`` of the ``--cpus`` the local Ray instance is given.
Shards beyond the number of cores cannot search in parallel (see ``docs/scale.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from quant_retriever import QuantizedIndex, load_encoder
from quant_retriever._demo_corpus import stdlib_docstrings
from quant_retriever.models.settings import minilm_path

K = 10
DIM = 384
ADD_STEP = 100_000


def median_ms(fn, runs: int) -> float:
    """Median wall time of ``fn(i)`` over ``runs`` calls, after one untimed call."""
    fn(0)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sharded(n_shards: int, cpus: int, codec: str, x: np.ndarray):
    from quant_retriever.distributed import ShardedIndex

    index = ShardedIndex(DIM, codec=codec, shards=n_shards, actor_options={"num_cpus": cpus / n_shards})
    for s in range(0, len(x), ADD_STEP):
        index.add(x[s : s + ADD_STEP])
    return index


def search_throughput(args, q: np.ndarray) -> list[tuple]:
    x = unit(args.n, 0)
    rows = []
    for codec in args.codecs:
        for n_shards in tqdm(args.shards, desc=f"{codec}: shards", leave=False):
            index = sharded(n_shards, args.cpus, codec, x)
            batch_ms = median_ms(
                lambda i: index.search(q[(i % 4) * args.batch : (i % 4 + 1) * args.batch], K), args.batches
            )
            one_ms = median_ms(lambda i: index.search(q[i % len(q) : i % len(q) + 1], K), args.single)
            rows.append((codec, n_shards, batch_ms, args.batch / batch_ms * 1e3, one_ms))
            index.close()
    return rows


def fan_out_overhead(args, q: np.ndarray) -> list[tuple]:
    x = unit(args.overhead_n, 1)
    single = QuantizedIndex(DIM, codec="int4")
    single.add(x)
    one = lambda index: median_ms(lambda i: index.search(q[i % len(q) : i % len(q) + 1], K), args.single)  # noqa: E731
    base = one(single)
    rows = [("one QuantizedIndex (this process)", base, 0.0)]
    for n_shards in tqdm(args.shards, desc="overhead: shards", leave=False):
        index = sharded(n_shards, args.cpus, "int4", x)
        ms = one(index)
        rows.append((f"ShardedIndex, {n_shards} shard(s)", ms, ms - base))
        index.close()
    return rows


def embedding_throughput(args) -> list[tuple]:
    from quant_retriever.distributed import ShardedStore, embed_corpus

    docs = stdlib_docstrings(limit=args.texts)
    ids, texts = [d.id for d in docs], [d.text for d in docs]
    model = minilm_path()
    rows = []
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        load_encoder(model, precision=args.precision).encode_documents(texts, batch_size=args.batch_size)
        times.append(time.perf_counter() - start)
    rows.append(("one process", 1, float(np.median(times))))
    for actors in args.actors:
        times = []
        for _ in range(args.repeats):
            store = ShardedStore(shards=2, actor_options={"num_cpus": 0})  # the CPUs go to the embedding actors
            start = time.perf_counter()
            embed_corpus(
                store,
                ids,
                texts,
                model=model,
                precision=args.precision,
                batch_size=args.batch_size,
                actors=actors,
                actor_cpus=args.cpus / actors,
                show_progress=False,
            )
            times.append(time.perf_counter() - start)
            store.close()
        rows.append(("Ray Data actor pool -> ShardedStore", actors, float(np.median(times))))
    return [(name, actors, s, len(texts) / s) for name, actors, s in rows]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors for the throughput table")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--codecs", nargs="+", default=["int4", "binary"])
    parser.add_argument("--batch", type=int, default=32, help="queries per batched search")
    parser.add_argument("--batches", type=int, default=10, help="timed batched searches per setup")
    parser.add_argument("--single", type=int, default=50, help="timed 1-query searches per setup")
    parser.add_argument("--overhead-n", type=int, default=60_000, help="vectors for the overhead table")
    parser.add_argument("--texts", type=int, default=2000, help="stdlib docstrings to embed")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per model batch")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="embedding pool sizes")
    parser.add_argument("--repeats", type=int, default=1, help="timed embedding runs per setup (median)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to the local Ray instance")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # tables in order with the bars on stderr
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    q = unit(max(4 * args.batch, args.single), 99)
    print(
        f"{args.cpus} CPUs for Ray, {torch.get_num_threads()} torch threads in this process, "
        f"{int(ray.cluster_resources().get('GPU', 0))} GPUs\n"
    )

    rows = search_throughput(args, q)
    print(f"1. search throughput, {args.n:,} x {DIM} random unit vectors, k={K}, INT8 rescore x4 (median)")
    print(f"{'codec':<8}{'shards':>7}{f'{args.batch} queries ms':>17}{'queries/s':>11}{'1 query ms':>12}")
    for codec, n_shards, batch_ms, qps, one_ms in rows:
        print(f"{codec:<8}{n_shards:>7}{batch_ms:>17.1f}{qps:>11.0f}{one_ms:>12.2f}")

    rows = fan_out_overhead(args, q)
    print(f"\n2. fan-out overhead, one 1-query search, {args.overhead_n:,} vectors, int4 (median)")
    print(f"{'index':<36}{'ms':>8}{'overhead ms':>13}")
    for name, ms, extra in rows:
        print(f"{name:<36}{ms:>8.2f}{extra:>13.2f}")

    rows = embedding_throughput(args)
    print(
        f"\n3. embedding {args.texts:,} stdlib docstrings, MiniLM {args.precision}, "
        f"model loading included (median of {args.repeats})"
    )
    print(f"{'method':<38}{'actors':>7}{'seconds':>9}{'texts/s':>9}")
    for name, actors, seconds, rate in rows:
        print(f"{name:<38}{actors:>7}{seconds:>9.1f}{rate:>9.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
