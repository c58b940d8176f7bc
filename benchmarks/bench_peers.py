"""Our codes against the strongest peers, in one run: recall per device byte, and latency.

    python benchmarks/bench_peers.py                                     # all 6,112 docstrings + 1M random
    python benchmarks/bench_peers.py --corpus passages --embed-precision int8   # bench_paths' 60,530 passages
    python benchmarks/bench_peers.py --n-random 100000 --queries 200 --rounds 5   # a quick check

Real vectors: MiniLM embeddings (cached; ``--embed-precision``, fp32 by default, int8 embeds
60k passages in minutes rather than an hour) of the standard library's docstrings
(``--corpus docstrings``, all 6,112, as ``bench_hybrid.py`` stores them) or of ``--n-real``
passages (``--corpus passages``, as ``bench_paths.py`` embeds them); queries: ``--queries``
docstring first sentences, embedded the same way (held out: not in the corpus). Recall@10 is
against exact float32 inner products. Random vectors: ``--n-random`` seeded unit vectors, 32
random queries.

Methods (``--peers`` runs what is installed):

- ours: ``int4``, ``rq4``, ``rq2``, ``rq1`` and ``binary`` codes, alone and with the INT8
  rescore copy at each ``--multipliers`` value (device bytes: the codes; the INT8 copy is on
  disk); the rotated codes rescore only the candidates their error bounds cannot rule out
  (``rescored/q``: rows read from the copy per query), and are shown again rescoring every
  candidate (``every row``), for recall at equal multipliers;
- turbovec ``TurboQuantIndex`` 2- and 4-bit (device bytes: ``dim * bits / 8 + 4``);
- faiss ``IndexRaBitQ`` 1/2/4-bit (``qb=8``) alone and refined from an SQ8 copy
  (``IndexRefine``) at the multipliers, ``IndexRaBitQFastScan`` 4-bit, ``IndexScalarQuantizer``
  4-bit and ``IndexBinaryFlat`` (device bytes: their code size; faiss keeps everything in RAM).

Latency: k=10, the median over ``--rounds`` rounds in which every method is called in turn,
with 1 query and with 32 queries (milliseconds per query), at the real corpus and at the
random one. Each method is timed in the setting the table names (ours: the multiplier in
``SPEED``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

import quant_retriever.index.search as search_mod
from quant_retriever import QuantizedIndex
from quant_retriever._demo_corpus import embed_cached

K = 10
#: The multiplier each of our codecs is timed at (0: no rescoring).
SPEED = {"int4": 0, "rq4": 0, "rq2": 4, "rq1": 4, "binary": 4}


class Method:
    """One searchable setting: ``build(x)`` -> state, ``search(state, q, k)`` -> ids ``[nq, k]``."""

    def __init__(self, name: str, bytes_per_vector: float, build: Callable, search: Callable, timed: bool = True):
        self.name, self.bytes_per_vector, self.build, self.search, self.timed = (
            name,
            bytes_per_vector,
            build,
            search,
            timed,
        )
        self.recall = float("nan")


class Rescored:
    """Counts the rows each query rescores, by wrapping the pipeline's pruning step (a query
    none of whose candidates is pruned rescores them all)."""

    def __init__(self):
        self.rows, self.queries = 0, 0
        self.real = search_mod.prune

    def __call__(self, s, rows, bounds, k):
        out = self.real(s, rows, bounds, k)
        kept, pad = out[1].shape[1], out[2]
        self.rows += kept * len(rows) - (0 if pad is None else int(pad.sum()))
        self.queries += len(rows)
        return out


def ours(codec: str, mult: int, prune: bool = True) -> Method:
    def build(x):
        index = QuantizedIndex(x.shape[1], codec=codec, rescore=mult > 0)
        index._pipeline.prune = prune
        index.add(torch.from_numpy(x))
        return index

    def search(index, q, k):
        return np.asarray(index.search(torch.from_numpy(q), k=k, rescore_multiplier=max(mult, 1)).ids)

    bpv = QuantizedIndex(384, codec=codec).codec.row_bytes
    label = f"ours {codec}" + (f" + INT8 x{mult}" if mult else "") + ("" if prune else ", every row")
    method = Method(label, bpv, build, search, timed=SPEED[codec] == mult and prune)
    method.rescored = mult * K if mult else 0  # without bounds (or pruning off): every candidate
    return method


def turbovec_methods() -> list[Method]:
    import turbovec

    def make(bits):
        def build(x):
            index = turbovec.TurboQuantIndex(x.shape[1], bits)
            index.add(x)
            return index

        return Method(f"turbovec {bits}-bit", 384 * bits / 8 + 4, build, lambda s, q, k: np.asarray(s.search(q, k)[1]))

    return [make(4), make(2)]


def faiss_methods(multipliers) -> list[Method]:
    import faiss

    def rabitq(bits, mult=0, fast=False):
        def build(x):
            d = x.shape[1]
            if fast:
                base = faiss.IndexRaBitQFastScan(d, faiss.METRIC_INNER_PRODUCT, 32, bits)
            else:
                base = faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT, bits)
            index = (
                faiss.IndexRefine(
                    base, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
                )
                if mult
                else base
            )
            index.train(x)
            index.add(x)
            return index, base

        def search(state, q, k):
            index, base = state
            inner = faiss.RaBitQSearchParameters(qb=8) if not fast else None
            if mult:
                params = faiss.IndexRefineSearchParameters(k_factor=mult, base_index_params=inner)
            else:
                params = inner
            return index.search(q, k, params=params)[1] if params is not None else index.search(q, k)[1]

        name = f"faiss RaBitQ{'FastScan' if fast else ''} {bits}-bit" + (f" + SQ8 x{mult}" if mult else "")
        probe = faiss.IndexRaBitQ(384, faiss.METRIC_INNER_PRODUCT, bits)
        return Method(name, probe.code_size, build, search, timed=(mult == 0))

    def simple(name, make, bpv):
        def build(x):
            index = make(x.shape[1])
            index.train(x)
            index.add(x)
            return index

        return Method(name, bpv, build, lambda s, q, k: s.search(q, k)[1])

    methods = []
    for bits in (4, 2, 1):
        methods.append(rabitq(bits))
        methods += [rabitq(bits, m) for m in multipliers]
    methods.append(rabitq(4, fast=True))
    methods.append(
        simple(
            "faiss SQ 4-bit",
            lambda d: faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT),
            192,
        )
    )
    methods.append(simple("faiss IndexBinaryFlat", lambda d: _BinaryFlat(d), 48))
    return methods


class _BinaryFlat:
    """faiss ``IndexBinaryFlat`` over the sign bits of float vectors and queries."""

    def __init__(self, d):
        import faiss

        self.index = faiss.IndexBinaryFlat(d)

    def train(self, x):
        pass

    def add(self, x):
        self.index.add(np.packbits(x > 0, axis=1))

    def search(self, q, k):
        return self.index.search(np.packbits(q > 0, axis=1), k)


def real_vectors(args):
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import bench_hybrid

    if args.corpus == "passages":
        import bench_paths

        texts = bench_paths.passages(args.n_real)
    else:
        _, texts, _ = bench_hybrid.build_corpus(10, args.docs)
    _, _, sets = bench_hybrid.build_corpus(args.queries)
    x = embed_cached(texts, precision=args.embed_precision)
    q = embed_cached([t for t, _ in sets["sentence"]])
    return x.astype(np.float32), q.astype(np.float32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[:K]) & set(b)) / K for a, b in zip(found, truth)]))


def timings(methods, x, queries, rounds, label) -> dict[str, tuple[float, float]]:
    """Median ms per query of 1 and of 32 queries, every method called in turn each round."""
    states = {}
    for m in tqdm(methods, desc=f"build ({label})", leave=False):
        states[m.name] = m.build(x)
        m.search(states[m.name], queries[:1], K)  # warm-up
    one, batch = {m.name: [] for m in methods}, {m.name: [] for m in methods}
    for r in tqdm(range(rounds), desc=f"timing ({label})", leave=False):
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            q1 = queries[r % len(queries) : r % len(queries) + 1]
            start = time.perf_counter()
            m.search(states[m.name], q1, K)
            one[m.name].append(time.perf_counter() - start)
            start = time.perf_counter()
            m.search(states[m.name], queries[:32], K)
            batch[m.name].append((time.perf_counter() - start) / 32)
    del states
    return {n: (float(np.median(one[n])) * 1e3, float(np.median(batch[n])) * 1e3) for n in one}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["docstrings", "passages"], default="docstrings")
    parser.add_argument("--n-real", type=int, default=60530, help="passages with --corpus passages")
    parser.add_argument("--docs", type=int, default=None, help="docstrings with --corpus docstrings (default: all)")
    parser.add_argument(
        "--embed-precision", default="fp32", help="precision of the MiniLM that embeds the corpus (int8: faster)"
    )
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--n-random", type=int, default=1_000_000)
    parser.add_argument("--multipliers", type=int, nargs="+", default=[2, 4, 10])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--no-peers", action="store_true", help="ours only")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    x, q = real_vectors(args)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :K]
    methods = [ours(c, m) for c in SPEED for m in (0, *args.multipliers)]
    methods += [ours(c, m, prune=False) for c in SPEED if c.startswith("rq") for m in args.multipliers]
    skipped = []
    if not args.no_peers:
        for name, make in (("turbovec", turbovec_methods), ("faiss", lambda: faiss_methods(args.multipliers))):
            try:
                methods += make()
            except ImportError:
                skipped.append(name)
    print(
        f"real: {len(x):,} x {x.shape[1]} MiniLM vectors ({args.corpus}, embedded at {args.embed_precision}), "
        f"{len(q):,} queries; k={K}"
    )
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    for m in tqdm(methods, desc="recall", leave=False):
        state = m.build(x)
        counter = search_mod.prune = Rescored()
        try:  # one query at a time: rows rescored per query (a batch rescores its widest query's)
            found = np.concatenate([m.search(state, q[i : i + 1], K) for i in range(len(q))])
        finally:
            search_mod.prune = counter.real
        if counter.queries:
            m.rescored = counter.rows / counter.queries
        m.recall = recall_at_k(found, truth)
        del state

    timed = [m for m in methods if m.timed]
    real_ms = timings(timed, x, q, args.rounds, "real")
    rng = np.random.default_rng(0)
    xr = rng.standard_normal((args.n_random, x.shape[1]), dtype=np.float32)
    xr /= np.linalg.norm(xr, axis=1, keepdims=True)
    qr = rng.standard_normal((32, x.shape[1]), dtype=np.float32)
    qr /= np.linalg.norm(qr, axis=1, keepdims=True)
    random_ms = timings(timed, xr, qr, args.rounds, "random")

    print(
        f"\n{'method':<45}{'B/vec':>7}{'recall@10':>11}{'rescored/q':>12}{'real 1q ms':>12}{'32q ms/q':>10}"
        f"{'random 1q ms':>14}{'32q ms/q':>10}"
    )
    for m in methods:
        cells = ""
        if m.name in real_ms:
            (a, b), (c, d) = real_ms[m.name], random_ms[m.name]
            cells = f"{a:>12.3f}{b:>10.3f}{c:>14.3f}{d:>10.3f}"
        rescored = f"{m.rescored:>12.1f}" if hasattr(m, "rescored") else f"{'':>12}"
        print(f"{m.name:<45}{m.bytes_per_vector:>7.0f}{m.recall:>11.4f}{rescored}{cells}")
    print(f"\nrandom: {args.n_random:,} unit vectors; latency medians of {args.rounds} interleaved rounds")


if __name__ == "__main__":
    main()
