"""Memory, speed and fidelity to FP32 of every reranker (cross-encoder) precision, in one run.

    python benchmarks/bench_rerank.py                          # the MiniLM demo cross-encoder, 20 x 50 pairs
    python benchmarks/bench_rerank.py --model cross-encoder/ms-marco-MiniLM-L6-v2 --precisions fp32 int8

The pairs: ``--queries`` queries made from standard-library names, each with the
``--candidates`` docstrings that FP32 all-MiniLM-L6-v2 retrieves first among the first
``--corpus`` (``quant_retriever._demo_corpus.stdlib_rerank_candidates``; the same on every
machine with the same Python), as a first retrieval stage would hand them to a reranker. The
model: ``--model``, by default all-MiniLM-L6-v2's encoder and pooler under a fixed-seed random
classification head, built offline (``quant_retriever._demo_corpus.demo_cross_encoder``).

Every precision reranks the same candidates with the same batch size
(``quant_retriever.bench.evaluate_rerankers``, as ``quant-retriever bench-rerank``). Speed is
pairs per second, the median of ``--repeats`` timed rounds after one warm-up, interleaved
across precisions so that a change in machine load hits all of them alike. Fidelity is
measured against the FP32 model on the same pairs: Pearson and Spearman correlation of the
scores, and NDCG@``--at`` and MAP@``--at`` of each precision's ordering against the FP32
ordering. These figures measure quantization fidelity, not task quality: with the demo
model's random head, the orderings themselves mean nothing. torch runs with the machine's
default thread count. ``--large-heap`` as in ``bench_encoders.py``.

On a busy shared machine the INT8 precisions lose the most speed (many short multi-threaded
passes): measure on a quiet one.
"""

from __future__ import annotations

import argparse
import logging
from typing import get_args

import torch
from bench_encoders import _cpu_features, _cpu_name, _large_heap  # this folder is on sys.path

from quant_retriever.bench import (
    demo_cross_encoder,
    evaluate_rerankers,
    format_table,
    read_rerank_pairs,
    reranker_table,
)
from quant_retriever.models import PRECISION_NAMES, Precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="CrossEncoder name or path (default: the MiniLM demo)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISION_NAMES), choices=get_args(Precision))
    parser.add_argument(
        "--compile",
        nargs="*",
        default=[],
        choices=get_args(Precision),
        help="precisions to measure again under torch.compile (default: none)",
    )
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--corpus", type=int, default=1000)
    parser.add_argument("--at", type=int, default=5, help="cut-off of NDCG and MAP")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--large-heap", action="store_true", help="raise glibc's mmap threshold (see bench_encoders)")
    args = parser.parse_args()
    heap = _large_heap() if args.large_heap else "default allocator"

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model = args.model or str(demo_cross_encoder())
    queries, candidates = read_rerank_pairs(None, args.queries, args.candidates, args.corpus)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"{_cpu_name()}; {_cpu_features()}"
    print(
        f"{args.model or 'all-MiniLM-L6-v2 + fixed-seed head (demo)'}: {len(queries)} stdlib queries x "
        f"{args.candidates} MiniLM candidates ({sum(map(len, candidates))} pairs), batch {args.batch_size}, "
        f"{device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads, {heap}"
    )

    reports = evaluate_rerankers(
        model,
        args.precisions,
        queries,
        candidates,
        args.batch_size,
        args.device,
        repeats=args.repeats,
        at=args.at,
        compiled=args.compile,
    )

    print(format_table(*reranker_table(reports)))
    for r in reports:
        if r.skipped is not None:
            print(f"skipped {r.label}: {r.skipped}")


if __name__ == "__main__":
    main()
