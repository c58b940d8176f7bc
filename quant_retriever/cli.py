"""The quant-retriever command: index documents, query a store, benchmark codecs, embedding
precisions and reranker precisions.

    quant-retriever index docs/ --store my_store            # .txt/.md files or a .jsonl file
    quant-retriever query --store my_store "how do I parse JSON?" -k 5
    quant-retriever bench-index vectors.npy --queries queries.npy --qrels qrels.tsv --out bench/
    quant-retriever bench-models --texts texts.txt --precisions fp32 bf16 int8
    quant-retriever bench-rerank --precisions fp32 int8 bnb-nf4

Every command takes --json (machine-readable output on stdout) and --quiet (no progress
bars). Bad input ends with a one-line 'error:' message on stderr and exit status 1 (2 for a
malformed command line); QUANT_RETRIEVER_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

__all__ = ["main"]

PROG = "quant-retriever"
# Errors that mean bad input or an unusable environment: one line, no traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, ImportError, RuntimeError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- output helpers


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    """A rich table on a terminal when rich is installed; plain aligned text otherwise."""
    from quant_retriever.bench import format_table

    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=title, title_justify="left")
            for i, h in enumerate(headers):
                table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
            for r in rows:
                table.add_row(*map(str, r))
            console = Console()
            needed = 1 + sum(3 + max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers))
            if needed <= console.width:  # else rich would crop columns: plain text wraps instead
                console.print(table)
                return
    print(format_table(headers, rows, title))


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _preview(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 3, 0)].rstrip() + "..."


# --------------------------------------------------------------------------- models and stores


def _default_model() -> str:
    """The bundled all-MiniLM-L6-v2 when its package is installed, else its hub name."""
    from quant_retriever.models.settings import DEFAULT_MODEL, local_model_path

    return local_model_path(DEFAULT_MODEL)


def _model_label(model: str) -> str:
    """A short name for titles: all-MiniLM-L6-v2 and local paths by their last part."""
    from quant_retriever.models.settings import DEFAULT_MODEL, portable_model_name

    name = portable_model_name(model)
    return Path(name).name if name == DEFAULT_MODEL or Path(name).exists() else name


def _quiet_transformers() -> None:
    """Turn off transformers' per-load "Loading weights" bar: noise on a command line."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------- index


def _cmd_index(args) -> dict:
    from quant_retriever import ingest

    if args.shards is not None and not args.ray:
        raise ValueError("--shards needs --ray (a sharded store on Ray).")
    started = time.perf_counter()
    _quiet_transformers()
    r = ingest.index_path(
        args.input,
        args.store,
        model=args.model,
        precision=args.precision,
        device=args.device,
        codec=args.codec,
        chunk_size=args.chunk_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        progress=not args.quiet,
        shards=(args.shards or 2) if args.ray else None,
    )
    memory = {
        k: getattr(r.memory, k) for k in ("bytes_per_vector", "disk_bytes_per_vector", "device_bytes", "disk_bytes")
    }
    counts = {k: v for k, v in asdict(r).items() if k != "memory"}
    return {
        "store": str(args.store),
        "input": str(args.input),
        **counts,
        **memory,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _show_index(result: dict) -> None:
    rescore = " + INT8 rescore copy on disk" if result["rescore"] else ""
    print(
        f"indexed {result['documents']} documents -> {result['chunks']} chunks "
        f"({result['embedded']} embedded, {result['unchanged']} unchanged, {result['removed']} stale removed) "
        f"in {result['seconds']:.1f} s"
    )
    print(f"store:  {result['store']} ({result['records']} chunks in all), codec {result['codec']}{rescore}", end="")
    print(f", device {result['device']}")
    print(f"memory: {result['bytes_per_vector']} bytes/vector on the device, {result['disk_bytes_per_vector']} on disk")
    print(f"model:  {result['model']} ({result['precision']}, {result['dim']}-d)")


# --------------------------------------------------------------------------- query


def _parse_where(items: Sequence[str] | None):
    from quant_retriever.store import And, Cond

    conds = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where takes KEY=VALUE; got {item!r}.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        conds.append(Cond(key, "eq", value))
    return And(tuple(conds)) if conds else None


def _cmd_query(args) -> dict:
    from quant_retriever import ingest
    from quant_retriever.models.settings import portable_model_name

    store_path = Path(args.store)
    where = _parse_where(args.where)
    questions = [q for q in args.question if q.strip()]
    if not questions:
        raise ValueError("the question is empty.")
    _quiet_transformers()
    try:
        store = ingest.open_store(store_path, read_only=args.read_only)
    except ValueError as exc:
        if "no store at" not in str(exc):
            raise
        raise ValueError(f"no store at {store_path}; build one with: {PROG} index DOCS --store {store_path}") from None
    try:
        encoder = ingest.load_store_encoder(store, args.model, args.precision, args.device)
        started = time.perf_counter()
        vectors = encoder.encode(questions)  # [len(questions), dim]
        hits = store.search(vectors, k=args.k, rescore_multiplier=args.multiplier, where=where)
        seconds = time.perf_counter() - started
    finally:
        store.close()
    return {
        "store": str(store_path),
        "model": portable_model_name(encoder.model_name),
        "precision": encoder.precision,
        "k": args.k,
        "seconds": round(seconds, 4),
        "results": [
            {
                "query": q,
                "hits": [
                    {"rank": i + 1, "score": round(score, 6), "id": rec.id, "text": rec.text, "metadata": rec.metadata}
                    for i, (rec, score) in enumerate(row)
                ],
            }
            for q, row in zip(questions, hits)
        ],
    }


def _show_query(result: dict, preview: int) -> None:
    for block in result["results"]:
        print(f"query: {block['query']}")
        if not block["hits"]:
            print("  (no hits: the store is empty or nothing matches --where)")
        for hit in block["hits"]:
            print(f"{hit['rank']:>3}. {hit['score']:.4f}  {hit['id']}")
            print(f"     {_preview(hit['text'], preview)}")
        print()


# --------------------------------------------------------------------------- bench-index


def _cmd_bench_index(args) -> dict:
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


def _show_bench_index(result: dict) -> None:
    from quant_retriever import bench

    b: bench.IndexBenchmark = result["_bench"]
    source = "held-out sample of the vectors" if result["held_out"] else result["queries_file"]
    print(
        f"{b.n_vectors} x {b.dim} vectors, {b.n_queries} queries ({source}), k={b.k}, {b.device}, {b.threads} threads"
    )
    if b.exact_mrr is not None:
        exact = f"MRR@10 {b.exact_mrr:.3f}, NDCG@10 {b.exact_ndcg:.3f}"
        print(f"exact FP32 search: {exact} (the 'kept' columns divide by these)")
    _print_table(*bench.index_table(b))
    for line in b.skipped:
        print(f"skipped {line}")
    print("wrote " + ", ".join(result["files"].values()))


# --------------------------------------------------------------------------- bench-models


def _cmd_bench_models(args) -> dict:
    from quant_retriever import bench

    if args.limit < 2:
        raise ValueError(f"--limit must be at least 2; got {args.limit}.")
    texts = bench.read_texts(args.texts, args.limit)
    model = args.model or _default_model()
    _quiet_transformers()
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
        title = f"{_model_label(model)}: {len(texts)} texts, batch {args.batch_size}, median of {args.repeats} passes"
        files["png"] = str(bench.plot_encoders(reports, out / "bench_models.png", title))
    return {**meta, "rows": rows, "files": files, "_table": bench.encoder_table(reports)}


def _show_bench_models(result: dict) -> None:
    runs = f"batch {result['batch_size']}, median of {result['repeats']} timed passes"
    print(f"{_model_label(result['model'])}: {result['texts']} texts, {runs}")
    _print_table(*result["_table"])
    for row in result["rows"]:
        if row["skipped"]:
            print(f"skipped {row['label']}: {_preview(row['skipped'], 160)}")
    print("wrote " + ", ".join(result["files"].values()))


# --------------------------------------------------------------------------- bench-rerank


def _cmd_bench_rerank(args) -> dict:
    from quant_retriever import bench

    _quiet_transformers()
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
    return "MiniLM demo cross-encoder" if meta["demo_model"] else _model_label(meta["model"])


def _rerank_workload(meta: dict) -> str:
    return (
        f"{meta['queries']} queries, {meta['pairs']} pairs, batch {meta['batch_size']}, "
        f"median of {meta['repeats']} timed rounds"
    )


def _show_bench_rerank(result: dict) -> None:
    print(f"{_rerank_model_label(result)}: {_rerank_workload(result)}")
    if result["demo_model"]:
        print("(a random classification head on MiniLM: the figures measure quantization fidelity, not relevance)")
    _print_table(*result["_table"])
    for row in result["rows"]:
        if row["skipped"]:
            print(f"skipped {row['label']}: {_preview(row['skipped'], 160)}")
    print("wrote " + ", ".join(result["files"].values()))


# --------------------------------------------------------------------------- parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout (no table)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _model_options(parser: argparse.ArgumentParser, default_model: str, default_precision: str) -> None:
    from quant_retriever.models import Precision

    parser.add_argument("--model", help=f"sentence-transformers model name or path (default: {default_model})")
    parser.add_argument(
        "--precision",
        choices=get_args(Precision),
        metavar="P",
        help=f"embedding precision: {', '.join(get_args(Precision))} (default: {default_precision})",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")


def _int_at_least(minimum: int, expected: str):
    """An argparse ``type`` for integers >= ``minimum``; ``expected`` words the error."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {n}")
        return n

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


_EXAMPLES = {
    "index": """examples:
  quant-retriever index notes/ --store notes.qr
  quant-retriever index docs.jsonl --store docs.qr --precision int8 --codec binary
  quant-retriever index notes/ --store notes.qr --json      # again: only changed chunks are embedded

A folder is read recursively (.txt and .md files, one document each; chunk ids are
'<relative path>#<n>'). A .jsonl file has one object per line: {"text": ..., "id": ...,
"metadata": {...}} (id and metadata optional; default id '<file>:<line>'). Re-running on the
same input replaces chunks instead of duplicating them. The model and precision are recorded
in the store, so 'query' and later runs use the same ones.""",
    "query": """examples:
  quant-retriever query --store notes.qr "how do I parse JSON?"
  quant-retriever query --store notes.qr "socket timeout" "file locking" -k 3 --json
  quant-retriever query --store docs.qr "retry policy" --where source=guide.md""",
    "bench-index": """examples:
  quant-retriever bench-index vectors.npy                           # 200 held-out vectors as queries
  quant-retriever bench-index docs.npy --queries q.npy --qrels qrels.tsv --out bench/
  quant-retriever bench-index docs.npy --multipliers 4 --codecs int4 binary --single 20 --json

Qrels: one 'query_index<TAB>doc_index[<TAB>relevance]' per line (indices from 0 into the
query and vector arrays, relevance default 1, '#' comments). Writes bench_index.csv,
bench_index.json and bench_index.png (recall vs bytes per vector and vs latency) to --out.""",
    "bench-models": """examples:
  quant-retriever bench-models --texts texts.txt                    # one text per line
  quant-retriever bench-models --model BAAI/bge-small-en-v1.5 --texts docs.jsonl --precisions fp32 int8
  quant-retriever bench-models --limit 256 --out bench/             # 256 stdlib docstrings

Precisions that cannot run on this machine (no GPU, bitsandbytes missing) are reported as
skipped. Writes bench_models.csv, bench_models.json and bench_models.png to --out.""",
    "bench-rerank": """examples:
  quant-retriever bench-rerank                                      # the offline MiniLM demo cross-encoder
  quant-retriever bench-rerank --model cross-encoder/ms-marco-MiniLM-L6-v2 --precisions fp32 int8
  quant-retriever bench-rerank --pairs pairs.jsonl --at 10 --out bench/

Without --pairs, the queries are made from standard-library names and each one's candidates
are the docstrings that FP32 MiniLM retrieves first for it. A --pairs file has one
{"query": "...", "passages": ["...", ...]} per line. Every precision is compared with FP32
of the same model: score correlation (Pearson, Spearman) and NDCG and MAP of its ordering
against the FP32 ordering (FP32's top --at are the relevant ones). These measure
quantization fidelity, not task quality; without --model the head is random. Writes
bench_rerank.csv, bench_rerank.json and bench_rerank.png to --out.""",
}


def _build_parser() -> argparse.ArgumentParser:
    from quant_retriever.codecs import CODEC_NAMES
    from quant_retriever.ingest import DEFAULT_CODEC

    parser = _Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from quant_retriever import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_: str, run: Callable, show: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(run=run, show=show)
        return p

    p = command(
        "index", "Embed a folder of .txt/.md files or a .jsonl file into a persistent store.", _cmd_index, _show_index
    )
    p.add_argument("input", metavar="DIR_OR_JSONL", help="folder of .txt/.md files, one such file, or a .jsonl file")
    p.add_argument("--store", required=True, help="store directory (created, or reopened when it exists)")
    _model_options(p, "the store's recorded model, else all-MiniLM-L6-v2", "the store's recorded one, else fp32")
    p.add_argument(
        "--codec",
        choices=CODEC_NAMES,
        metavar="C",
        help=f"device codes of a new store: {', '.join(CODEC_NAMES)} (default {DEFAULT_CODEC})",
    )
    p.add_argument("--chunk-size", type=_positive, default=1000, help="characters per chunk at most (default 1000)")
    p.add_argument(
        "--overlap", type=_non_negative, default=100, help="characters repeated from the previous chunk (default 100)"
    )
    p.add_argument("--batch-size", type=_positive, default=32, help="texts per model batch (default 32)")
    p.add_argument("--ray", action="store_true", help="a sharded store on Ray, embedded on a Ray Data actor pool")
    p.add_argument("--shards", type=_positive, help="shards of a new sharded store (with --ray; default 2)")
    _common(p)

    p = command("query", "Search a store built by 'index' with one or more questions.", _cmd_query, _show_query)
    p.add_argument("question", nargs="+", help="question text (several: one search each)")
    p.add_argument("--store", required=True, help="store directory written by 'index'")
    p.add_argument("-k", type=_positive, default=5, help="hits per question (default 5)")
    p.add_argument(
        "--multiplier", type=_positive, default=4, help="rescore multiplier: candidates = k x this (default 4)"
    )
    p.add_argument(
        "--where",
        action="append",
        metavar="KEY=VALUE",
        help="only chunks whose metadata KEY equals VALUE (JSON or a string); repeat to AND",
    )
    p.add_argument("--preview", type=_positive, default=200, help="characters of text shown per hit (default 200)")
    p.add_argument(
        "--read-only", action="store_true", help="open the store read-only (beside a writer, no write access)"
    )
    _model_options(p, "the one recorded by 'index'", "the one recorded by 'index'")
    _common(p)

    p = command(
        "bench-index",
        "Recall, memory and latency of every codec x rescore multiplier, with baselines.",
        _cmd_bench_index,
        _show_bench_index,
    )
    p.add_argument("vectors", metavar="VECTORS.npy", help="corpus vectors, a 2-D float .npy file")
    p.add_argument("--queries", metavar="Q.npy", help="query vectors (default: a held-out sample of VECTORS)")
    p.add_argument("--qrels", metavar="QRELS", help="relevance judgements (needs --queries): adds MRR@10 and NDCG@10")
    p.add_argument("--n-queries", type=_positive, default=200, help="held-out queries without --queries (default 200)")
    p.add_argument("--k", "-k", type=_positive, default=10, help="recall@k against exact FP32 search (default 10)")
    p.add_argument(
        "--multipliers",
        type=_positive,
        nargs="+",
        default=[1, 2, 4, 10],
        help="INT8 rescore multipliers for int4/binary (default 1 2 4 10)",
    )
    p.add_argument(
        "--codecs",
        nargs="+",
        choices=CODEC_NAMES,
        default=list(CODEC_NAMES),
        metavar="C",
        help=f"codecs to measure (default all: {' '.join(CODEC_NAMES)})",
    )
    p.add_argument("--no-baselines", action="store_true", help="skip faiss and sentence-transformers baselines")
    p.add_argument(
        "--single", type=_non_negative, default=50, help="single-query searches timed per method (default 50)"
    )
    p.add_argument("--batches", type=_non_negative, default=5, help="query batches timed per method (default 5)")
    p.add_argument("--batch-size", type=_positive, default=32, help="queries per timed batch (default 32)")
    p.add_argument("--out", default="bench_out", help="folder for bench_index.csv/.json/.png (default bench_out)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    _common(p)

    p = command(
        "bench-models",
        "Memory, speed and fidelity to FP32 of embedding precisions.",
        _cmd_bench_models,
        _show_bench_models,
    )
    p.add_argument("--model", help="sentence-transformers model name or path (default all-MiniLM-L6-v2)")
    p.add_argument(
        "--texts", metavar="FILE", help="one text per line, or a .jsonl with 'text' (default: stdlib docstrings)"
    )
    p.add_argument("--limit", type=_positive, default=256, help="use the first N texts (default 256)")
    _precision_bench_options(p, "texts", 64, "bench_models")

    p = command(
        "bench-rerank",
        "Memory, speed and fidelity to FP32 of cross-encoder reranker precisions.",
        _cmd_bench_rerank,
        _show_bench_rerank,
    )
    p.add_argument(
        "--model", help="CrossEncoder name or path (default: all-MiniLM-L6-v2 under a fixed-seed head, built offline)"
    )
    p.add_argument("--pairs", metavar="FILE", help='.jsonl of {"query", "passages"} (default: stdlib queries)')
    p.add_argument("--queries", type=_positive, default=20, help="queries to rerank (default 20)")
    p.add_argument("--candidates", type=_positive, default=50, help="candidates per query (default 50)")
    p.add_argument(
        "--corpus", type=_positive, default=1000, help="stdlib docstrings the candidates come from (default 1000)"
    )
    p.add_argument("--at", type=_positive, default=5, help="cut-off of NDCG and MAP (default 5)")
    _precision_bench_options(p, "pairs", 32, "bench_rerank")
    return parser


def _precision_bench_options(p: argparse.ArgumentParser, unit: str, batch_size: int, stem: str) -> None:
    """The options that bench-models and bench-rerank share, and the common ones."""
    from quant_retriever.models import PRECISION_NAMES, Precision

    p.add_argument(
        "--precisions",
        nargs="+",
        choices=get_args(Precision),
        default=list(PRECISION_NAMES),
        metavar="P",
        help=f"default: all of {' '.join(PRECISION_NAMES)}",
    )
    p.add_argument("--batch-size", type=_positive, default=batch_size, help=f"{unit} per batch (default {batch_size})")
    p.add_argument("--repeats", type=_positive, default=3, help="timed passes per precision (default 3)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--out", default="bench_out", help=f"folder for {stem}.csv/.json/.png (default bench_out)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    _common(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``quant-retriever`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _run(args)


def _run(args) -> int:
    if args.quiet:
        # Our own bars are turned off by progress=False. tqdm reads this variable once, when it
        # is imported, so it reaches only the processes started from here (this one has already
        # imported tqdm by now).
        os.environ["TQDM_DISABLE"] = "1"
    try:
        result = args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        if os.environ.get("QUANT_RETRIEVER_DEBUG"):
            raise
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    if args.json:
        _print_json({k: v for k, v in result.items() if not k.startswith("_")})
    elif args.command == "query":
        args.show(result, args.preview)
    else:
        args.show(result)
    return 0
