"""The quant-retriever command: index documents, query a store, benchmark codecs, embedding
precisions and reranker precisions.

    quant-retriever index docs/ --store my_store            # .txt/.md files or a .jsonl file
    quant-retriever query --store my_store "how do I parse JSON?" -k 5
    quant-retriever bench-index vectors.npy --queries queries.npy --qrels qrels.tsv --out bench/
    quant-retriever bench-models --texts texts.txt --precisions fp32 bf16 int8
    quant-retriever bench-rerank --precisions fp32 int8 bnb-nf4
    quant-retriever serve --store my_store                  # HTTP on 127.0.0.1:8000, docs at /docs

Every command takes --json (machine-readable output on stdout) and --quiet (no progress
bars). Bad input ends with a one-line 'error:' message on stderr and exit status 1 (2 for a
malformed command line); QUANT_RETRIEVER_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import get_args

from quant_retriever.cli.bench_commands import (
    cmd_bench_index,
    cmd_bench_models,
    cmd_bench_rerank,
    show_bench_index,
    show_bench_models,
    show_bench_rerank,
)
from quant_retriever.cli.output import Parser
from quant_retriever.cli.store_commands import (
    PROG,
    cmd_index,
    cmd_query,
    cmd_serve,
    show_index,
    show_query,
    show_serve,
)
from quant_retriever.store.keywords import DEFAULT_TOKENIZER, TOKENIZERS

__all__ = ["build_parser"]


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
  quant-retriever query --store docs.qr "retry policy" --where source=guide.md
  quant-retriever query --store docs.qr "json.JSONDecoder raw_decode" --mode hybrid
  quant-retriever query --url http://127.0.0.1:8000 "retry policy"      # ask a running server""",
    "serve": """examples:
  quant-retriever serve --store notes.qr                              # 127.0.0.1:8000
  quant-retriever serve --store notes.qr --read-only --port 9000
  QUANT_RETRIEVER_API_KEY=... quant-retriever serve --store notes.qr --host 0.0.0.0

The store and its recorded embedding model are loaded once; clients use RemoteStore (both
framework adapters take it as store=) or the JSON API (OpenAPI at /docs). A host that is not
loopback needs an API key from --api-key-file or $QUANT_RETRIEVER_API_KEY; SIGTERM finishes
the requests in flight and closes the store.""",
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


def build_parser() -> argparse.ArgumentParser:
    from quant_retriever.codecs import CODEC_NAMES
    from quant_retriever.ingest import DEFAULT_CODEC

    parser = Parser(
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
        "index", "Embed a folder of .txt/.md files or a .jsonl file into a persistent store.", cmd_index, show_index
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
    p.add_argument(
        "--keywords",
        choices=[*TOKENIZERS, "none"],
        default=DEFAULT_TOKENIZER,
        metavar="TOKENIZER",
        help=f"keyword index tokenizer of a new store: {', '.join(map(repr, TOKENIZERS))} or none "
        f"(default {DEFAULT_TOKENIZER!r})",
    )
    p.add_argument("--chunk-size", type=_positive, default=1000, help="characters per chunk at most (default 1000)")
    p.add_argument(
        "--overlap", type=_non_negative, default=100, help="characters repeated from the previous chunk (default 100)"
    )
    p.add_argument("--batch-size", type=_positive, default=32, help="texts per model batch (default 32)")
    p.add_argument("--ray", action="store_true", help="a sharded store on Ray, embedded on a Ray Data actor pool")
    p.add_argument("--shards", type=_positive, help="shards of a new sharded store (with --ray; default 2)")
    _common(p)

    p = command("query", "Search a store built by 'index' with one or more questions.", cmd_query, show_query)
    p.add_argument("question", nargs="+", help="question text (several: one search each)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="store directory written by 'index'")
    where.add_argument("--url", help="a running 'quant-retriever serve' (the server embeds the question)")
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
        "--mode",
        choices=("dense", "keyword", "hybrid"),
        default="dense",
        help="dense (the vectors, default), keyword (BM25 over the texts, no model loaded) or hybrid (both, fused)",
    )
    p.add_argument(
        "--read-only", action="store_true", help="open the store read-only (beside a writer, no write access)"
    )
    _model_options(p, "the one recorded by 'index'", "the one recorded by 'index'")
    _common(p)

    p = command("serve", "Serve a store over HTTP: one process owns it, many clients share it.", cmd_serve, show_serve)
    p.add_argument("--store", required=True, help="store directory (created empty when there is none)")
    p.add_argument(
        "--codec", choices=CODEC_NAMES, metavar="C", help=f"device codes of a new store (default {DEFAULT_CODEC})"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need an API key)")
    p.add_argument("--port", type=_positive, default=8000, help="port (default 8000)")
    p.add_argument("--read-only", action="store_true", help="serve searches and reads only")
    p.add_argument("--api-key-file", metavar="FILE", help="file whose first line is the API key")
    p.add_argument("--max-body-mb", type=_positive, default=64, help="request body limit in MiB (default 64)")
    p.add_argument("--max-batch", type=_positive, default=4096, help="documents or queries a request (default 4096)")
    p.add_argument("--max-k", type=_positive, default=10000, help="largest k a search may ask (default 10000)")
    p.add_argument("--no-model", action="store_true", help="load no embedding model (clients send vectors)")
    _model_options(p, "the store's recorded model, else all-MiniLM-L6-v2", "the store's recorded one, else fp32")
    _common(p)

    p = command(
        "bench-index",
        "Recall, memory and latency of every codec x rescore multiplier, with baselines.",
        cmd_bench_index,
        show_bench_index,
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
        cmd_bench_models,
        show_bench_models,
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
        cmd_bench_rerank,
        show_bench_rerank,
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
