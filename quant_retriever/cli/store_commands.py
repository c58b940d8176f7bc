"""``quant-retriever index`` and ``query``: what each runs, and how its result is shown."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from quant_retriever.cli.output import preview, quiet_transformers

__all__ = ["cmd_index", "show_index", "cmd_query", "show_query", "cmd_serve", "show_serve"]

PROG = "quant-retriever"


def cmd_index(args) -> dict:
    from quant_retriever import ingest

    if args.shards is not None and not args.ray:
        raise ValueError("--shards needs --ray (a sharded store on Ray).")
    started = time.perf_counter()
    quiet_transformers()
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
        keywords=None if args.keywords == "none" else args.keywords,
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


def show_index(result: dict) -> None:
    rescore = f" + {result['rescore_dtype'].upper()} rescore copy on disk" if result["rescore"] else ""
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


def parse_where(items: Sequence[str] | None):
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


def cmd_query(args) -> dict:
    from quant_retriever import ingest
    from quant_retriever.models.settings import portable_model_name

    where = parse_where(args.where)
    questions = [q for q in args.question if q.strip()]
    if not questions:
        raise ValueError("the question is empty.")
    if args.url:
        return _query_server(args, questions, where)
    store_path = Path(args.store)
    quiet_transformers()
    try:
        store = ingest.open_store(store_path, read_only=args.read_only)
    except ValueError as exc:
        if "no store at" not in str(exc):
            raise
        raise ValueError(f"no store at {store_path}; build one with: {PROG} index DOCS --store {store_path}") from None
    try:
        encoder = (
            None
            if args.mode == "keyword"
            else ingest.load_store_encoder(store, args.model, args.precision, args.device)
        )
        started = time.perf_counter()
        if encoder is None:  # keyword search: no model to load
            hits = store.keyword_search(questions, k=args.k, where=where)
        else:
            vectors = encoder.encode(questions)  # [len(questions), dim]
            if args.mode == "hybrid":
                hits = store.hybrid_search(
                    vectors, questions, k=args.k, rescore_multiplier=args.multiplier, where=where
                )
            else:
                hits = store.search(vectors, k=args.k, rescore_multiplier=args.multiplier, where=where)
        seconds = time.perf_counter() - started
    finally:
        store.close()
    model = None if encoder is None else portable_model_name(encoder.model_name)
    return _query_result(
        str(store_path), args, model, None if encoder is None else encoder.precision, seconds, questions, hits
    )


def _query_server(args, questions: list[str], where) -> dict:
    """``query --url``: the server embeds the questions with the store's own model."""
    from quant_retriever.server.client import RemoteStore
    from quant_retriever.server.run import API_KEY_ENV

    with RemoteStore(args.url, api_key=os.environ.get(API_KEY_ENV) or None) as store:
        started = time.perf_counter()
        hits = store.search_texts(questions, args.mode, args.k, args.multiplier, where=where)
        seconds = time.perf_counter() - started
        info = store.server_info()
    return _query_result(args.url, args, info["model"], info["precision"], seconds, questions, hits)


def _query_result(store: str, args, model, precision, seconds: float, questions: list[str], hits) -> dict:
    return {
        "store": store,
        "mode": args.mode,
        "model": model,
        "precision": precision,
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


def cmd_serve(args) -> dict:
    from quant_retriever.server.app import Limits
    from quant_retriever.server.run import read_api_key, serve

    quiet_transformers()
    limits = Limits(max_body=args.max_body_mb << 20, max_batch=args.max_batch, max_k=args.max_k)
    serve(
        args.store,
        host=args.host,
        port=args.port,
        read_only=args.read_only,
        api_key=read_api_key(args.api_key_file),
        model=args.model,
        precision=args.precision,
        device=args.device,
        limits=limits,
        embed=not args.no_model,
        codec=args.codec,
    )
    return {"stopped": args.store}


def show_serve(result: dict) -> None:
    print(f"server stopped; store {result['stopped']} closed")


def show_query(result: dict, width: int) -> None:
    for block in result["results"]:
        print(f"query: {block['query']}")
        if not block["hits"]:
            print("  (no hits: the store is empty or nothing matches --where)")
        for hit in block["hits"]:
            print(f"{hit['rank']:>3}. {hit['score']:.4f}  {hit['id']}")
            print(f"     {preview(hit['text'], width)}")
        print()


# --------------------------------------------------------------------------- bench-index
