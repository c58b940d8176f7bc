"""The paths a RAG application hits most, side by side in one run (issue 11's table).

    python benchmarks/bench_paths.py                 # everything below
    python benchmarks/bench_paths.py --n-real 60000 --n-random 1000000

Real data: ``--n-real`` passages of the Python standard library (docstring paragraphs, then
comment blocks), embedded once with all-MiniLM-L6-v2 (at ``--embed-precision``) and cached
under ``.cache/``. Every store search goes through the LangChain ``QuantizedVectorStore`` (by
vector: the query's embedding is not timed), one query, k=10. The equality filter matches a fifth of the
documents; "cold" is its first search after a write (the filter's SQL runs), "warm" a repeat
(its key set is cached). Random data: ``--n-random`` unit vectors for the batch and codec rows and
the FP32 torch matmul they are compared with (the int4 batch goal is stated against it).
Peers (faiss, and Chroma / Qdrant local when installed: ``pip install chromadb qdrant-client``)
search the same vectors. Medians of ``--runs`` searches; the two sides of a ratio (filtered and
unfiltered, ours and faiss binary) alternate call by call, and compare within one run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from quant_retriever import QuantizedIndex
from quant_retriever._demo_corpus import embed_cached, stdlib_docstrings
from quant_retriever.bench import interleaved_ms, median_ms

K = 10


def passages(n: int) -> list[str]:
    """Up to ``n`` distinct passages of the standard library: docstring paragraphs, then
    comment blocks of its source files, in sorted file order."""
    seen: dict[str, None] = {}
    for doc in stdlib_docstrings(max_chars=100_000):
        for para in doc.text.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= 40:
                seen.setdefault(para[:1000])
    root = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(root.rglob("*.py")):
        if len(seen) >= n:
            break
        block: list[str] = []
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines() + [""]:
            s = line.strip()
            if s.startswith("#"):
                block.append(s.lstrip("#").strip())
            elif block:
                text = " ".join(block)
                if len(text) >= 40:
                    seen.setdefault(text[:1000])
                block = []
    return list(seen)[:n]


def row(table: list, label: str, ms: float, note: str = "") -> None:
    table.append((label, ms, note))
    print(f"  {label:<58} {ms:>10.3f} ms  {note}")


def real_data(n: int, precision: str = "fp32"):
    texts = passages(n)
    x = embed_cached(texts, precision=precision)
    rng = np.random.default_rng(0)
    q = x[rng.choice(len(x), 64, replace=False)] + rng.normal(0, 0.02, (64, x.shape[1])).astype(np.float32)
    return texts, x, q / np.linalg.norm(q, axis=1, keepdims=True)


def store_paths(args, table: list) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from quant_retriever.langchain import QuantizedVectorStore

    texts, x, q = real_data(args.n_real, args.embed_precision)
    n = len(x)
    print(f"\n{n} real MiniLM vectors ({args.embed_precision}, 384-d) through the LangChain store, 1 query, k={K}")
    ids = [f"p{i}" for i in range(n)]
    metas = [{"group": i % 5, "kind": "docstring"} for i in range(n)]
    for codec in ("int4", "binary"):
        store = QuantizedVectorStore(DeterministicFakeEmbedding(size=384), codec=codec)
        for a in tqdm(range(0, n, 5000), desc=f"loading {codec}", leave=False):
            store.store.upsert(ids[a : a + 5000], x[a : a + 5000], texts[a : a + 5000], metas[a : a + 5000])
        queries = itertools.cycle(q)
        search = lambda **kw: store.similarity_search_by_vector(next(queries).tolist(), k=K, **kw)  # noqa: E731
        flt = {"group": 3}
        base, warm = interleaved_ms(search, lambda: search(filter=flt), runs=args.runs)
        row(table, f"{codec} store search, unfiltered", base)
        cold = []
        for i in range(min(args.runs, 20)):
            store.store.upsert([f"extra{i}"], x[i : i + 1], ["extra"], [{"group": 3}])  # a write: cache invalid
            start = time.perf_counter()
            search(filter=flt)
            cold.append((time.perf_counter() - start) * 1e3)
        row(table, f"{codec} store search, filter matching 1/5, repeated", warm, f"{warm / base:.2f}x unfiltered")
        row(
            table,
            f"{codec} store search, filter matching 1/5, after a write",
            statistics.median(cold),
            f"{statistics.median(cold) / base:.2f}x unfiltered",
        )
        if codec == "int4":
            threads(store.store, q, table, args)
    peers(x, q, table, args)


def threads(store, q: np.ndarray, table: list, args) -> None:
    """Queries per second of 1 and 4 threads on one store (kernel threads 1; the medians of
    interleaved rounds), and the latency of one small query issued while a 3,000-query batch
    runs on the same object."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def qps(n_threads: int, seconds: float = 3.0) -> float:
            done = [0] * n_threads
            stop = time.perf_counter() + seconds

            def work(t: int) -> None:
                i = t
                while time.perf_counter() < stop:
                    store.search(q[i % len(q)], k=K)
                    done[t] += 1
                    i += n_threads

            pool = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            return sum(done) / seconds

        rounds = [(qps(1, 1.5), qps(4, 1.5)) for _ in range(args.thread_rounds)]  # interleaved: same host load
        one, four = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        table.append(("int4 store, 1 thread", 1e3 / one, f"{one:.0f} q/s"))
        table.append(("int4 store, 4 threads", 1e3 / four, f"{four:.0f} q/s ({four / one:.2f}x)"))
        ratios = ", ".join(f"{b / a:.2f}x" for a, b in rounds)
        print(
            f"  int4 store, kernel threads 1: 1 thread {one:.0f} q/s, 4 threads {four:.0f} q/s ({four / one:.2f}x; "
            f"medians of {len(rounds)} interleaved rounds of 1.5 s, whose ratios were {ratios})"
        )
    finally:
        torch.set_num_threads(saved)
    batch = np.repeat(q, 3000 // len(q) + 1, axis=0)[:3000]
    ended: list[float] = []
    worker = threading.Thread(target=lambda: (store.search(batch, k=K), ended.append(time.perf_counter())))
    worker.start()
    time.sleep(0.2)
    start = time.perf_counter()
    store.search(q[0], k=K)
    small = (time.perf_counter() - start) * 1e3
    worker.join()
    row(
        table,
        "one small query beside a 3,000-query batch",
        small,
        "finished before the batch" if start + small / 1e3 < ended[0] else "WAITED for the batch",
    )


def peers(x: np.ndarray, q: np.ndarray, table: list, args) -> None:
    import faiss

    n = len(x)
    queries = itertools.cycle(q)
    for size in (1000, n):
        index = QuantizedIndex(384, codec="binary")
        index.add(x[:size])
        flat = faiss.IndexBinaryFlat(384)
        flat.add(np.packbits(x[:size] > 0, axis=1))
        ours, theirs = interleaved_ms(
            lambda: index.search(next(queries), k=K),
            lambda: flat.search(np.packbits(next(queries)[None] > 0, axis=1), K),
            runs=args.runs,
        )
        row(table, f"binary + rescore x4, {size} vectors (QuantizedIndex)", ours, f"{ours / theirs:.2f}x faiss binary")
        row(table, f"faiss IndexBinaryFlat, {size} vectors", theirs)
    try:
        import chromadb
    except ImportError:
        print("  (Chroma not installed)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            client = chromadb.PersistentClient(path=tmp)
            col = client.create_collection("bench", metadata={"hnsw:space": "ip"})
            for a in range(0, n, 5000):
                col.add(
                    ids=[f"p{i}" for i in range(a, min(a + 5000, n))],
                    embeddings=x[a : a + 5000].tolist(),
                    metadatas=[{"group": i % 5} for i in range(a, min(a + 5000, n))],
                )
            row(
                table,
                "Chroma (HNSW), unfiltered",
                median_ms(lambda: col.query(query_embeddings=[next(queries).tolist()], n_results=K), args.runs),
            )
            row(
                table,
                "Chroma (HNSW), filter matching 1/5",
                median_ms(
                    lambda: col.query(query_embeddings=[next(queries).tolist()], n_results=K, where={"group": 3}),
                    args.runs,
                ),
            )
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        print("  (Qdrant client not installed)")
    else:
        client = QdrantClient(":memory:")
        client.create_collection("bench", vectors_config=models.VectorParams(size=384, distance=models.Distance.DOT))
        for a in range(0, n, 5000):
            client.upload_points(
                "bench",
                [
                    models.PointStruct(id=i, vector=x[i].tolist(), payload={"group": i % 5})
                    for i in range(a, min(a + 5000, n))
                ],
            )
        row(
            table,
            "Qdrant local, unfiltered",
            median_ms(lambda: client.query_points("bench", query=next(queries).tolist(), limit=K), min(args.runs, 20)),
        )
        flt = models.Filter(must=[models.FieldCondition(key="group", match=models.MatchValue(value=3))])
        row(
            table,
            "Qdrant local, filter matching 1/5",
            median_ms(
                lambda: client.query_points("bench", query=next(queries).tolist(), limit=K, query_filter=flt),
                min(args.runs, 20),
            ),
        )


def random_paths(args, table: list) -> None:
    import faiss

    n = args.n_random
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((32, 384), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    print(f"\n{n} random unit vectors (384-d), k={K}; threads {torch.get_num_threads()}")
    runs = max(3, args.runs // 10)
    for codec, rescore in (("int4", True), ("binary", True), ("int8", False), ("fp16", False)):
        index = QuantizedIndex(384, codec=codec, rescore=rescore)
        for a in tqdm(range(0, n, 100_000), desc=f"adding {codec}", leave=False):
            index.add(x[a : a + 100_000])
        one = median_ms(lambda: index.search(q[:1], k=K), runs)
        batch = median_ms(lambda: index.search(q, k=K), runs)
        label = f"{codec}{' + INT8 x4' if rescore else ''}"
        row(table, f"{label}, 1 query", one)
        row(table, f"{label}, 32 queries (per query)", batch / 32, f"{batch:.1f} ms per batch")

    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    batch = median_ms(lambda: torch.topk(qt @ xt.T, K, dim=1), runs)
    row(table, "FP32 matmul + top-k in torch, 32 queries (per query)", batch / 32, f"{batch:.1f} ms per batch")

    sq = faiss.IndexScalarQuantizer(384, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(x[:100_000])
    sq.add(x)
    batch = median_ms(lambda: sq.search(q, K), runs)
    row(table, "faiss SQ QT_4bit, 32 queries (per query)", batch / 32, f"{batch:.1f} ms per batch")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-real", type=int, default=60_000)
    parser.add_argument("--n-random", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--thread-rounds", type=int, default=5, help="interleaved 1- and 4-thread rounds")
    parser.add_argument(
        "--embed-precision", default="fp32", help="precision of the MiniLM that embeds the passages (int8: faster)"
    )
    parser.add_argument("--part", choices=["store", "random", "both"], default="both")
    args = parser.parse_args(argv)
    flags = (
        [
            f
            for f in ("avx512f", "avx512_vnni", "avx512_vpopcntdq", "avx512_bf16", "amx_tile", "f16c")
            if f in Path("/proc/cpuinfo").read_text()
        ]
        if Path("/proc/cpuinfo").exists()
        else []
    )
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
        f"CPU flags: {' '.join(flags)}"
    )
    table: list = []
    if args.part in ("store", "both"):
        store_paths(args, table)
    if args.part in ("random", "both"):
        random_paths(args, table)


if __name__ == "__main__":
    main()
