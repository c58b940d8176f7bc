"""``quant-retriever bench-index``, ``bench-models`` and ``bench-rerank``: what each runs, and
how its result is shown."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

from quant_retriever.cli.output import default_model, model_label, preview, print_table, quiet_transformers

__all__ = [
    "cmd_bench_index",
    "show_bench_index",
    "cmd_bench_models",
    "show_bench_models",
    "cmd_bench_rerank",
    "show_bench_rerank",
]


def cmd_bench_index(args) -> dict:
    from quant_retriever import bench

    vectors = bench.load_vectors(args.vectors, "vectors")
    if args.queries:
        queries = bench.load_vectors(args.queries, "queries")
        held_out = False
    else:
        if args.qrels:
            raise ValueError("--qrels needs --queries: held-out queries (the default) have no relevance judgements.")
        if len(vectors) < 2:
            raise ValueError(f"{args.vectors} has {len(vectors)} vector; need at least 2 to hold queries out.")
        vectors, queries = bench.split_queries(vectors, min(args.n_queries, len(vectors) // 2))
        held_out = True
    if queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the vectors {vectors.shape[1]}.")
    qrels = bench.read_qrels(args.qrels, len(queries), len(vectors)) if args.qrels else None
    skipped: list[str] = []
    methods = bench.index_methods(args.multipliers, args.codecs, baselines=not args.no_baselines, skipped=skipped)
    result = bench.run_index_benchmark(
        vectors,
        queries,
        args.k,
        qrels,
        methods,
        n_single=args.single,
        n_batches=args.batches,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    result = dataclasses.replace(result, skipped=skipped)
    out = Path(args.out)
    meta = {k: v for k, v in result.to_dict().items() if k != "rows"}
    meta.update(vectors_file=str(args.vectors), queries_file=args.queries, qrels_file=args.qrels, held_out=held_out)
    files = {
        k: str(v) for k, v in bench.write_results([asdict(r) for r in result.rows], out, "bench_index", meta).items()
    }
    if not args.no_plot:
        files["png"] = str(bench.plot_index(result, out / "bench_index.png"))
    return {**meta, "rows": result.to_dict()["rows"], "files": files, "_bench": result}


def show_bench_index(result: dict) -> None:
    from quant_retriever import bench

    b: bench.IndexBenchmark = result["_bench"]
    source = "held-out sample of the vectors" if result["held_out"] else result["queries_file"]
    print(
        f"{b.n_vectors} x {b.dim} vectors, {b.n_queries} queries ({source}), k={b.k}, {b.device}, {b.threads} threads"
    )
    if b.exact_mrr is not None:
        exact = f"MRR@10 {b.exact_mrr:.3f}, NDCG@10 {b.exact_ndcg:.3f}"
        print(f"exact FP32 search: {exact} (the 'kept' columns divide by these)")
    print_table(*bench.index_table(b))
    for line in b.skipped:
        print(f"skipped {line}")
    print("wrote " + ", ".join(result["files"].values()))


# --------------------------------------------------------------------------- bench-models


def cmd_bench_models(args) -> dict:
    from quant_retriever import bench

    if args.limit < 2:
        raise ValueError(f"--limit must be at least 2; got {args.limit}.")
    texts = bench.read_texts(args.texts, args.limit)
    model = args.model or default_model()
    quiet_transformers()
    reports = bench.evaluate_encoders(
        model, args.precisions, texts, args.batch_size, args.device, repeats=args.repeats, progress=not args.quiet
    )
    rows = [{"label": r.label, **asdict(r)} for r in reports]
    meta = {
        "model": model,
        "texts": len(texts),
        "texts_file": args.texts,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    out = Path(args.out)
    files = {k: str(v) for k, v in bench.write_results(rows, out, "bench_models", meta).items()}
    if not args.no_plot and any(r.skipped is None for r in reports):
        title = f"{model_label(model)}: {len(texts)} texts, batch {args.batch_size}, median of {args.repeats} passes"
        files["png"] = str(bench.plot_encoders(reports, out / "bench_models.png", title))
    return {**meta, "rows": rows, "files": files, "_table": bench.encoder_table(reports)}


def show_bench_models(result: dict) -> None:
    runs = f"batch {result['batch_size']}, median of {result['repeats']} timed passes"
    print(f"{model_label(result['model'])}: {result['texts']} texts, {runs}")
    print_table(*result["_table"])
    for row in result["rows"]:
        if row["skipped"]:
            print(f"skipped {row['label']}: {preview(row['skipped'], 160)}")
    print("wrote " + ", ".join(result["files"].values()))


# --------------------------------------------------------------------------- bench-rerank


def cmd_bench_rerank(args) -> dict:
    from quant_retriever import bench

    quiet_transformers()
    queries, candidates = bench.read_rerank_pairs(
        args.pairs, args.queries, args.candidates, args.corpus, progress=not args.quiet
    )
    model = args.model or str(bench.demo_cross_encoder())
    reports = bench.evaluate_rerankers(
        model,
        args.precisions,
        queries,
        candidates,
        args.batch_size,
        args.device,
        repeats=args.repeats,
        at=args.at,
        progress=not args.quiet,
    )
    rows = [{"label": r.label, **asdict(r)} for r in reports]
    meta = {
        "model": model,
        "demo_model": args.model is None,
        "queries": len(queries),
        "pairs": sum(map(len, candidates)),
        "pairs_file": args.pairs,
        "at": args.at,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    out = Path(args.out)
    files = {k: str(v) for k, v in bench.write_results(rows, out, "bench_rerank", meta).items()}
    if not args.no_plot and any(r.skipped is None for r in reports):
        title = f"{_rerank_model_label(meta)}: {_rerank_workload(meta)}"
        files["png"] = str(bench.plot_rerankers(reports, out / "bench_rerank.png", title))
    return {**meta, "rows": rows, "files": files, "_table": bench.reranker_table(reports)}


def _rerank_model_label(meta: dict) -> str:
    return "MiniLM demo cross-encoder" if meta["demo_model"] else model_label(meta["model"])


def _rerank_workload(meta: dict) -> str:
    return (
        f"{meta['queries']} queries, {meta['pairs']} pairs, batch {meta['batch_size']}, "
        f"median of {meta['repeats']} timed rounds"
    )


def show_bench_rerank(result: dict) -> None:
    print(f"{_rerank_model_label(result)}: {_rerank_workload(result)}")
    if result["demo_model"]:
        print("(a random classification head on MiniLM: the figures measure quantization fidelity, not relevance)")
    print_table(*result["_table"])
    for row in result["rows"]:
        if row["skipped"]:
            print(f"skipped {row['label']}: {preview(row['skipped'], 160)}")
    print("wrote " + ", ".join(result["files"].values()))


# --------------------------------------------------------------------------- parser
