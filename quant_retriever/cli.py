"""The quant-retriever command: index documents, query a store, benchmark codecs and
embedding precisions.

    quant-retriever index docs/ --store my_store            # .txt/.md files or a .jsonl file
    quant-retriever query --store my_store "how do I parse JSON?" -k 5
    quant-retriever bench-index vectors.npy --queries queries.npy --qrels qrels.tsv --out bench/
    quant-retriever bench-models --texts texts.txt --precisions fp32 bf16 int8

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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence, get_args

__all__ = ["main"]

PROG = "quant-retriever"
#: Written next to a store's files by ``index``: the embedding model ``query`` must reuse.
SETTINGS_FILE = "embedding.json"
SETTINGS_FORMAT = "quant_retriever.cli"
DEFAULT_PRECISION = "fp32"
DEFAULT_CODEC = "int4"
#: Chunks embedded and written per step (one upsert each: an interrupted run keeps its steps).
STEP = 256
_ALL_PRECISIONS = ["fp32", "fp16", "bf16", "int8", "bnb-int8", "bnb-nf4", "bnb-fp4"]
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
    from quant_retriever import corpus
    from quant_retriever.embeddings import DEFAULT_MODEL

    try:
        return corpus.minilm_path()
    except ImportError:
        return DEFAULT_MODEL


def _model_label(model: str) -> str:
    """A short name for titles: the bundled MiniLM by name, a path by its last part."""
    try:
        from quant_retriever.corpus import minilm_path

        if model == minilm_path():
            return "all-MiniLM-L6-v2"
    except ImportError:
        pass
    return Path(model).name if os.path.sep in model and Path(model).exists() else model


def _quiet_transformers() -> None:
    """Turn off transformers' per-load "Loading weights" bar: noise on a command line."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def _load_encoder(model: str, precision: str, device: str | None):
    from quant_retriever.embeddings import load_encoder

    _quiet_transformers()
    try:
        return load_encoder(model, precision=precision, device=device)
    except (ValueError, ImportError):
        raise
    except Exception as exc:  # a missing model surfaces as OSError/HTTP errors from several libraries
        raise ValueError(f"could not load model {model!r}: {type(exc).__name__}: {_one_line(exc)}") from None


def _read_settings(store_path: Path) -> dict | None:
    path = store_path / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON settings file ({exc}).") from None
    if not isinstance(obj, dict) or obj.get("format") != SETTINGS_FORMAT or not isinstance(obj.get("model"), str):
        raise ValueError(f"{path}: expected a {SETTINGS_FORMAT!r} settings file with a 'model'.")
    return obj


def _is_store(path: Path) -> bool:
    return (path / "store.sqlite").is_file()


def _open_store(path: Path):
    from quant_retriever.store import QuantizedStore

    return QuantizedStore.open(path)


def _check_dim(store, store_path: Path, encoder) -> None:
    if store.dim is not None and store.dim != encoder.dim:
        raise ValueError(
            f"store {store_path} holds {store.dim}-dimensional vectors but model {encoder.model_name!r} makes "
            f"{encoder.dim}-dimensional ones; use the model the store was built with or a new --store."
        )


def _resolve_model(args, settings: dict | None) -> tuple[str, str]:
    """(model, precision): the command line's, else what ``index`` recorded, else the defaults."""
    model = args.model or (settings or {}).get("model") or _default_model()
    precision = args.precision or (settings or {}).get("precision") or DEFAULT_PRECISION
    return model, precision


# --------------------------------------------------------------------------- index


def _cmd_index(args) -> dict:
    from quant_retriever import ingest

    store_path = Path(args.store)
    if store_path.exists() and not _is_store(store_path) and (store_path.is_file() or any(store_path.iterdir())):
        raise ValueError(f"--store {store_path} exists and is not a quant_retriever store; pick a new or empty directory.")
    started = time.perf_counter()
    documents = ingest.read_documents(args.input)
    chunks = ingest.chunk_documents(documents, args.chunk_size, args.overlap)
    settings = _read_settings(store_path) if _is_store(store_path) else None
    if settings and args.model and args.model != settings["model"]:
        raise ValueError(
            f"store {store_path} was indexed with model {settings['model']!r}, not {args.model!r}; "
            "leave out --model or use a new --store."
        )
    model, precision = _resolve_model(args, settings)
    store, created = _store_for_index(store_path, args.codec)
    try:
        todo = _changed_chunks(store, chunks)
        encoder = None
        if todo or settings is None:  # nothing to embed in a store with a recorded model: no model load
            encoder = _load_encoder(model, precision, args.device)
            _check_dim(store, store_path, encoder)
            precision = encoder.precision
        else:
            precision = settings.get("precision", precision)
        _embed_chunks(store, encoder, todo, args.batch_size, args.quiet)
        removed = _drop_stale_chunks(store, chunks)
        from quant_retriever.files import write_json_atomic

        write_json_atomic(store_path / SETTINGS_FILE, {
            "format": SETTINGS_FORMAT, "version": 1, "model": model, "precision": precision,
            "dim": store.dim, "chunk_size": args.chunk_size, "overlap": args.overlap,
        })
        memory = store.index.memory()
        result = {
            "store": str(store_path), "input": str(args.input), "documents": len(documents), "chunks": len(chunks),
            "embedded": len(todo), "unchanged": len(chunks) - len(todo), "removed": removed, "records": len(store),
            "codec": store.index.codec_name, "rescore": store.index.rescore, "device": str(store.index.device),
            "bytes_per_vector": memory.bytes_per_vector, "disk_bytes_per_vector": memory.disk_bytes_per_vector,
            "device_bytes": memory.device_bytes, "disk_bytes": memory.disk_bytes, "model": model,
            "precision": precision, "dim": store.dim, "seconds": round(time.perf_counter() - started, 3),
        }
    except BaseException:
        empty = created and len(store) == 0
        store.close()
        if empty:  # nothing was written: leave no half-made store behind
            import shutil

            shutil.rmtree(store_path, ignore_errors=True)
        raise
    store.close()
    return result


def _store_for_index(store_path: Path, codec: str | None):
    """(store, created): reopen an existing store (its codec must match ``codec`` when given)
    or create one."""
    from quant_retriever.store import QuantizedStore

    if _is_store(store_path):
        store = _open_store(store_path)
        if codec is not None and store.index is not None and store.index.codec_name != codec:
            found = store.index.codec_name
            store.close()
            raise ValueError(f"store {store_path} uses codec {found!r}, not {codec!r}; leave out --codec or use a new --store.")
        return store, False
    return QuantizedStore(codec=codec or DEFAULT_CODEC, path=store_path), True


def _changed_chunks(store, chunks: list) -> list:
    """The chunks that are new or whose text or metadata differ from the stored ones."""
    existing = {r.id: (r.text, r.metadata) for r in store.get([c.id for c in chunks])}
    return [c for c in chunks if existing.get(c.id) != (c.text, c.metadata)]


def _embed_chunks(store, encoder, chunks: list, batch_size: int, quiet: bool) -> None:
    """Embed and upsert ``chunks``, ``STEP`` at a time, with a progress bar on stderr."""
    from tqdm import tqdm

    with tqdm(total=len(chunks), desc="embedding", unit="chunk", file=sys.stderr, disable=quiet or not chunks) as bar:
        for start in range(0, len(chunks), STEP):
            step = chunks[start : start + STEP]
            vectors = encoder.encode([c.text for c in step], batch_size=batch_size)  # [len(step), dim]
            store.upsert([c.id for c in step], vectors, [c.text for c in step], [c.metadata for c in step])
            bar.update(len(step))


def _drop_stale_chunks(store, chunks: list) -> int:
    """Delete the stored chunks past each document's new last chunk (the document got
    shorter); returns how many. A document's chunks are numbered without gaps, so probing
    ``<doc>#<n>``, ``<doc>#<n + 1>``, ... until one is missing finds them all."""
    next_chunk: dict[str, int] = {}  # doc id -> first chunk number past its end
    for c in chunks:
        next_chunk[c.metadata["doc_id"]] = c.metadata["chunk"] + 1
    removed = 0
    while next_chunk:
        probe = {f"{doc}#{n}": doc for doc, n in next_chunk.items()}
        found = store.delete(list(probe))
        removed += len(found)
        next_chunk = {probe[i]: next_chunk[probe[i]] + 1 for i in found}
    return removed


def _show_index(result: dict) -> None:
    rescore = " + INT8 rescore copy on disk" if result["rescore"] else ""
    print(
        f"indexed {result['documents']} documents -> {result['chunks']} chunks "
        f"({result['embedded']} embedded, {result['unchanged']} unchanged, {result['removed']} stale removed) "
        f"in {result['seconds']:.1f} s"
    )
    print(f"store:  {result['store']} ({result['records']} chunks in all), codec {result['codec']}{rescore}, device {result['device']}")
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
    store_path = Path(args.store)
    if not _is_store(store_path):
        raise ValueError(f"no store at {store_path} (no store.sqlite); build one with: {PROG} index DOCS --store {store_path}")
    if args.k < 1:
        raise ValueError(f"-k must be at least 1; got {args.k}.")
    where = _parse_where(args.where)
    questions = [q for q in args.question if q.strip()]
    if not questions:
        raise ValueError("the question is empty.")
    store = _open_store(store_path)
    try:
        settings = _read_settings(store_path)
        model, precision = _resolve_model(args, settings)
        encoder = _load_encoder(model, precision, args.device)
        _check_dim(store, store_path, encoder)
        started = time.perf_counter()
        vectors = encoder.encode(questions)  # [len(questions), dim]
        hits = store.search(vectors, k=args.k, rescore_multiplier=args.multiplier, where=where)
        seconds = time.perf_counter() - started
    finally:
        store.close()
    return {
        "store": str(store_path), "model": model, "precision": encoder.precision, "k": args.k, "seconds": round(seconds, 4),
        "results": [
            {"query": q, "hits": [
                {"rank": i + 1, "score": round(score, 6), "id": rec.id, "text": rec.text, "metadata": rec.metadata}
                for i, (rec, score) in enumerate(row)
            ]}
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


def _load_npy(path: str, what: str):
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file {p} does not exist.")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{p}: not a .npy array file ({_one_line(exc)}).") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating) or 0 in arr.shape:
        shape = getattr(arr, "shape", None)
        raise ValueError(f"{p}: expected a 2-D float array (n, dim); got {getattr(arr, 'dtype', type(arr).__name__)} {shape}.")
    return arr


def _cmd_bench_index(args) -> dict:
    from quant_retriever import bench

    vectors = _load_npy(args.vectors, "vectors")
    if args.queries:
        queries = _load_npy(args.queries, "queries")
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
        vectors, queries, args.k, qrels, methods, n_single=args.single, n_batches=args.batches,
        batch_size=args.batch_size, progress=not args.quiet,
    )
    result = dataclasses.replace(result, skipped=skipped)
    out = Path(args.out)
    meta = {k: v for k, v in result.to_dict().items() if k != "rows"}
    meta.update(vectors_file=str(args.vectors), queries_file=args.queries, qrels_file=args.qrels, held_out=held_out)
    files = {k: str(v) for k, v in bench.write_results([asdict(r) for r in result.rows], out, "bench_index", meta).items()}
    if not args.no_plot:
        files["png"] = str(bench.plot_index(result, out / "bench_index.png"))
    return {**meta, "rows": result.to_dict()["rows"], "files": files, "_bench": result}


def _show_bench_index(result: dict) -> None:
    from quant_retriever import bench

    b: bench.IndexBenchmark = result["_bench"]
    source = "held-out sample of the vectors" if result["held_out"] else result["queries_file"]
    print(f"{b.n_vectors} x {b.dim} vectors, {b.n_queries} queries ({source}), k={b.k}, {b.device}, {b.threads} threads")
    if b.exact_mrr is not None:
        print(f"exact FP32 search: MRR@10 {b.exact_mrr:.3f}, NDCG@10 {b.exact_ndcg:.3f} (the 'kept' columns divide by these)")
    _print_table(*bench.index_table(b))
    for line in b.skipped:
        print(f"skipped {line}")
    print("wrote " + ", ".join(result["files"].values()))


# --------------------------------------------------------------------------- bench-models


def _read_texts(path: str | None, limit: int) -> list[str]:
    from quant_retriever import ingest

    if path is None:
        from quant_retriever.corpus import stdlib_docstrings

        return [d.text for d in stdlib_docstrings(limit)]
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"texts file {p} does not exist.")
    if p.suffix.lower() == ".jsonl":
        texts = [d.text for d in ingest.read_documents(p)]
    else:
        try:
            texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"{p}: not UTF-8 text; expected one text per line or a .jsonl file.") from None
    texts = texts[:limit]
    if len(texts) < 2:
        raise ValueError(f"{p} has {len(texts)} text(s); need at least 2 (one per line, or a .jsonl with 'text').")
    return texts


def _cmd_bench_models(args) -> dict:
    from quant_retriever import bench
    from quant_retriever.embeddings import evaluate_encoders

    if args.limit < 2:
        raise ValueError(f"--limit must be at least 2; got {args.limit}.")
    texts = _read_texts(args.texts, args.limit)
    model = args.model or _default_model()
    _quiet_transformers()
    reports = evaluate_encoders(model, args.precisions, texts, args.batch_size, args.device, repeats=args.repeats)
    rows = [{"label": r.label, **asdict(r)} for r in reports]
    meta = {"model": model, "texts": len(texts), "texts_file": args.texts, "batch_size": args.batch_size, "repeats": args.repeats}
    out = Path(args.out)
    files = {k: str(v) for k, v in bench.write_results(rows, out, "bench_models", meta).items()}
    if not args.no_plot and any(r.skipped is None for r in reports):
        title = f"{_model_label(model)}: {len(texts)} texts, batch {args.batch_size}, median of {args.repeats} passes"
        files["png"] = str(bench.plot_encoders(reports, out / "bench_models.png", title))
    return {**meta, "rows": rows, "files": files, "_table": bench.encoder_table(reports)}


def _show_bench_models(result: dict) -> None:
    print(f"{_model_label(result['model'])}: {result['texts']} texts, batch {result['batch_size']}, median of {result['repeats']} timed passes")
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
    from quant_retriever.embeddings import Precision

    parser.add_argument("--model", help=f"sentence-transformers model name or path (default: {default_model})")
    parser.add_argument("--precision", choices=get_args(Precision), metavar="P",
                        help=f"embedding precision: {', '.join(get_args(Precision))} (default: {default_precision})")
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
in STORE/embedding.json, so 'query' uses the same ones.""",
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
}


def _build_parser() -> argparse.ArgumentParser:
    from quant_retriever.codecs import CODEC_NAMES
    from quant_retriever.embeddings import Precision

    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from quant_retriever import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_: str, run: Callable, show: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=_EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=run, show=show)
        return p

    p = command("index", "Embed a folder of .txt/.md files or a .jsonl file into a persistent store.",
                _cmd_index, _show_index)
    p.add_argument("input", metavar="DIR_OR_JSONL", help="folder of .txt/.md files, one such file, or a .jsonl file")
    p.add_argument("--store", required=True, help="store directory (created, or reopened when it exists)")
    _model_options(p, "the store's recorded model, else all-MiniLM-L6-v2", "the store's recorded one, else fp32")
    p.add_argument("--codec", choices=CODEC_NAMES, metavar="C",
                   help=f"device codes of a new store: {', '.join(CODEC_NAMES)} (default {DEFAULT_CODEC})")
    p.add_argument("--chunk-size", type=_positive, default=1000, help="characters per chunk at most (default 1000)")
    p.add_argument("--overlap", type=_non_negative, default=100, help="characters repeated from the previous chunk (default 100)")
    p.add_argument("--batch-size", type=_positive, default=32, help="texts per model batch (default 32)")
    _common(p)

    p = command("query", "Search a store built by 'index' with one or more questions.", _cmd_query, _show_query)
    p.add_argument("question", nargs="+", help="question text (several: one search each)")
    p.add_argument("--store", required=True, help="store directory written by 'index'")
    p.add_argument("-k", type=_positive, default=5, help="hits per question (default 5)")
    p.add_argument("--multiplier", type=_positive, default=4, help="rescore multiplier: candidates = k x this (default 4)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only chunks whose metadata KEY equals VALUE (JSON or a string); repeat to AND")
    p.add_argument("--preview", type=_positive, default=200, help="characters of text shown per hit (default 200)")
    _model_options(p, "the one recorded by 'index'", "the one recorded by 'index'")
    _common(p)

    p = command("bench-index", "Recall, memory and latency of every codec x rescore multiplier, with baselines.",
                _cmd_bench_index, _show_bench_index)
    p.add_argument("vectors", metavar="VECTORS.npy", help="corpus vectors, a 2-D float .npy file")
    p.add_argument("--queries", metavar="Q.npy", help="query vectors (default: a held-out sample of VECTORS)")
    p.add_argument("--qrels", metavar="QRELS", help="relevance judgements (needs --queries): adds MRR@10 and NDCG@10")
    p.add_argument("--n-queries", type=_positive, default=200, help="held-out queries without --queries (default 200)")
    p.add_argument("--k", "-k", type=_positive, default=10, help="recall@k against exact FP32 search (default 10)")
    p.add_argument("--multipliers", type=_positive, nargs="+", default=[1, 2, 4, 10],
                   help="INT8 rescore multipliers for int4/binary (default 1 2 4 10)")
    p.add_argument("--codecs", nargs="+", choices=CODEC_NAMES, default=list(CODEC_NAMES), metavar="C",
                   help=f"codecs to measure (default all: {' '.join(CODEC_NAMES)})")
    p.add_argument("--no-baselines", action="store_true", help="skip faiss and sentence-transformers baselines")
    p.add_argument("--single", type=_non_negative, default=50, help="single-query searches timed per method (default 50)")
    p.add_argument("--batches", type=_non_negative, default=5, help="query batches timed per method (default 5)")
    p.add_argument("--batch-size", type=_positive, default=32, help="queries per timed batch (default 32)")
    p.add_argument("--out", default="bench_out", help="folder for bench_index.csv/.json/.png (default bench_out)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    _common(p)

    p = command("bench-models", "Memory, speed and fidelity to FP32 of embedding precisions.",
                _cmd_bench_models, _show_bench_models)
    p.add_argument("--model", help="sentence-transformers model name or path (default all-MiniLM-L6-v2)")
    p.add_argument("--texts", metavar="FILE", help="one text per line, or a .jsonl with 'text' (default: stdlib docstrings)")
    p.add_argument("--limit", type=_positive, default=256, help="use the first N texts (default 256)")
    p.add_argument("--precisions", nargs="+", choices=get_args(Precision), default=_ALL_PRECISIONS, metavar="P",
                   help=f"default: all of {' '.join(_ALL_PRECISIONS)}")
    p.add_argument("--batch-size", type=_positive, default=64, help="texts per batch (default 64)")
    p.add_argument("--repeats", type=_positive, default=3, help="timed passes per precision (default 3)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--out", default="bench_out", help="folder for bench_models.csv/.json/.png (default bench_out)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    _common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``quant-retriever`` command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _run(args)


def _run(args) -> int:
    if args.quiet:  # also the bars of the libraries underneath (tqdm reads this at each bar)
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
