"""The ``quant-retriever`` console script, run as a subprocess through its installed entry
point on real data: real documents (stdlib module docstrings and this repository's README),
the real all-MiniLM-L6-v2 model, real MiniLM vectors of stdlib docstrings."""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quant_retriever import _demo_corpus as corpus_module
from quant_retriever import bench, ingest
from quant_retriever.codecs import CODECS
from quant_retriever.store import QuantizedStore

REPO = Path(__file__).resolve().parents[2]
EXE = shutil.which("quant-retriever", path=str(Path(sys.executable).parent))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args, ok: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert EXE, f"the console script is not installed next to {sys.executable}: pip install -e ."
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("QUANT_RETRIEVER_DEBUG", None)
    proc = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def run_json(*args) -> dict:
    return json.loads(run(*args, "--json").stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


def assert_png(path: Path, min_width: int = 400, min_height: int = 200) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= min_width and height >= min_height
    assert len(data) < 200_000
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        assert img.size == (width, height)
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 5  # something was drawn


# --------------------------------------------------------------------------- data


def _stdlib_module_docs() -> dict[str, str]:
    import csv as csv_module
    import heapq
    import json as json_module
    import sqlite3

    return {m.__name__: m.__doc__ for m in (json_module, csv_module, heapq, sqlite3)}


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> Path:
    """A folder of real documents: stdlib module docstrings as .txt, the README as .md in a
    sub-folder, plus files that must be skipped (hidden, other suffix)."""
    root = tmp_path_factory.mktemp("docs")
    for name, text in _stdlib_module_docs().items():
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
    (root / "guide").mkdir()
    shutil.copy(REPO / "README.md", root / "guide" / "README.md")
    (root / ".hidden.md").write_text("a hidden note that must not be indexed", encoding="utf-8")
    (root / "script.py").write_text("print('not a document')\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def folder_store(docs_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A store indexed from ``docs_dir`` with MiniLM fp32 and small chunks; the JSON summary."""
    store = tmp_path_factory.mktemp("stores") / "folder.qr"
    summary = run_json("index", docs_dir, "--store", store, "--chunk-size", "600", "--overlap", "60")
    return store, summary


def stored_records(store: Path) -> dict:
    s = QuantizedStore.open(store)
    try:
        assert s.verify() == []
        return {r.id: r for r in s.records()}
    finally:
        s.close()


# --------------------------------------------------------------------------- ingest (in process)


def test_split_text_bounds_and_overlap():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    chunks = ingest.split_text(text, chunk_size=400, overlap=50)
    assert len(chunks) > 5
    assert all(0 < len(c) <= 400 for c in chunks)
    words = text.split()
    covered = " ".join(chunks).split()
    assert set(words) == set(covered)  # nothing lost, nothing invented
    for previous, chunk in zip(chunks, chunks[1:]):  # each starts with up to 50 characters ending the previous
        if not any(c.isspace() for c in previous[-51:]):
            continue  # no word boundary in them (a long URL or code line): the overlap is empty, as documented
        tails = (previous[-n:].strip() for n in range(1, 51))
        assert any(t and chunk.startswith(t + " ") for t in tails), (previous[-60:], chunk[:60])
    assert ingest.split_text("   \n\n ") == []
    assert ingest.split_text("x" * 250, chunk_size=100, overlap=0) == ["x" * 100, "x" * 100, "x" * 50]
    with pytest.raises(ValueError, match="overlap"):
        ingest.split_text(text, chunk_size=100, overlap=60)


def test_read_qrels_format(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("# query\tdoc\trel\n0\t5\n0 7 2\n\n2\t1\t0\n", encoding="utf-8")
    assert bench.read_qrels(path, n_queries=3, n_docs=10) == [{5: 1.0, 7: 2.0}, {}, {1: 0.0}]
    path.write_text("0\t5\n1\t10\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: doc index 10 is out of range"):
        bench.read_qrels(path, n_queries=3, n_docs=10)


# --------------------------------------------------------------------------- index and query


def test_index_folder(docs_dir, folder_store):
    store, summary = folder_store
    expected = ingest.chunk_documents(ingest.read_documents(docs_dir), 600, 60)
    files = {"json.txt", "csv.txt", "heapq.txt", "sqlite3.txt", "guide/README.md"}
    assert summary["documents"] == len(files)
    assert summary["chunks"] == summary["embedded"] == summary["records"] == len(expected)
    assert summary["unchanged"] == 0 and summary["removed"] == 0
    assert summary["codec"] == "int4" and summary["rescore"] is True
    assert summary["bytes_per_vector"] == 220 and summary["disk_bytes_per_vector"] == 392
    assert summary["dim"] == 384 and summary["precision"] == "fp32"
    records = stored_records(store)
    assert set(records) == {c.id for c in expected}
    assert {r.metadata["source"] for r in records.values()} == files
    readme = sorted(
        (r for r in records.values() if r.metadata["doc_id"] == "guide/README.md"), key=lambda r: r.metadata["chunk"]
    )
    assert [r.id for r in readme] == [f"guide/README.md#{n}" for n in range(len(readme))]
    assert len(readme) > 3 and all(len(r.text) <= 600 for r in records.values())
    s = QuantizedStore.open(store)
    recorded = s.get_info("embedding")
    s.close()
    assert recorded == {"model": "sentence-transformers/all-MiniLM-L6-v2", "precision": "fp32", "dim": 384}
    assert not (store / "embedding.json").exists()  # recorded in the store itself, not beside it


def test_query_uses_the_recorded_model(folder_store):
    store, _ = folder_store
    out = run_json(
        "query",
        "--store",
        store,
        "-k",
        "3",
        "JSON encoder and decoder: serialize Python objects to JSON text",
        "heap queue algorithm, a priority queue",
    )
    assert out["precision"] == "fp32" and "minilm" in out["model"].lower()
    (json_hits, heap_hits) = [block["hits"] for block in out["results"]]
    assert len(json_hits) == len(heap_hits) == 3
    assert json_hits[0]["metadata"]["source"] == "json.txt"
    assert heap_hits[0]["metadata"]["source"] == "heapq.txt"
    scores = [h["score"] for h in json_hits]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1.0001

    # plain output, filtered to one source: "  1. 0.4321  guide/README.md#3" then a preview line
    text = run(
        "query", "--store", store, "-k", "2", "--preview", "60", "--where", "source=guide/README.md", "JSON encoder"
    ).stdout
    lines = text.splitlines()
    assert lines[0] == "query: JSON encoder"
    hits = [line.split() for line in lines if line.startswith("  ") and line.strip()[:2] in ("1.", "2.")]
    assert [h[0] for h in hits] == ["1.", "2."] and all(h[2].startswith("guide/README.md#") for h in hits)
    previews = [line for line in lines if line.startswith("     ")]
    assert len(previews) == 2 and all(5 < len(p) <= 65 for p in previews)


def test_query_modes(folder_store):
    """``--mode keyword`` loads no model and ranks by BM25; ``--mode hybrid`` fuses both; each
    equals the store's own search of that mode; the index command built the keyword index."""
    store, _ = folder_store
    question = "heapq heappush"
    keyword = run_json("query", "--store", store, "-k", "3", "--mode", "keyword", question)
    assert keyword["mode"] == "keyword" and keyword["model"] is None
    hybrid = run_json("query", "--store", store, "-k", "3", "--mode", "hybrid", question)
    assert hybrid["mode"] == "hybrid" and "minilm" in hybrid["model"].lower()
    s = QuantizedStore.open(store, read_only=True)
    try:
        expected = [(r.id, s) for r, s in s.keyword_search([question], k=3)[0]]
        assert s.verify() == []
    finally:
        s.close()
    got = [(h["id"], h["score"]) for h in keyword["results"][0]["hits"]]
    assert [i for i, _ in got] == [i for i, _ in expected] and expected
    assert all(abs(a - b) <= 1e-6 for (_, a), (_, b) in zip(got, expected))  # printed to 6 places
    assert hybrid["results"][0]["hits"][0]["metadata"]["source"] == "heapq.txt"
    assert_one_line_error(run("query", "--store", store, "--mode", "sparse", "x", ok=False), "--mode")


@pytest.mark.parametrize("keywords", ["trigram", "none"])
def test_index_chooses_the_keyword_tokenizer(docs_dir, tmp_path, keywords):
    store = tmp_path / "s.qr"
    run_json("index", docs_dir / "heapq.txt", "--store", store, "--keywords", keywords, "--chunk-size", "600")
    s = QuantizedStore.open(store, read_only=True)
    assert s.settings["keywords"] == (None if keywords == "none" else keywords)
    s.close()
    if keywords == "none":
        assert_one_line_error(run("query", "--store", store, "--mode", "keyword", "heap", ok=False), "no keyword index")
    else:  # trigrams: a part of a word finds it
        hits = run_json("query", "--store", store, "--mode", "keyword", "eappus")["results"][0]["hits"]
        assert hits and "heappush" in hits[0]["text"]


def test_reindex_does_not_duplicate_and_drops_stale_chunks(docs_dir, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(docs_dir, docs)
    store = tmp_path / "store.qr"
    first = run_json("index", docs, "--store", store, "--chunk-size", "600", "--overlap", "60")
    before = stored_records(store)

    again = run_json("index", docs, "--store", store, "--chunk-size", "600", "--overlap", "60")
    assert again["embedded"] == 0 and again["unchanged"] == first["chunks"] and again["removed"] == 0
    assert again["records"] == first["records"]
    assert stored_records(store).keys() == before.keys()

    # the README shrinks to its first paragraphs and one file changes: only they are re-embedded
    readme = docs / "guide" / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8")[:900], encoding="utf-8")
    (docs / "heapq.txt").write_text("Heap queue algorithm (a.k.a. priority queue), rewritten.", encoding="utf-8")
    third = run("index", docs, "--store", store, "--chunk-size", "600", "--overlap", "60")
    assert "bytes/vector" in third.stdout and "stale removed" in third.stdout
    after = stored_records(store)
    expected = ingest.chunk_documents(ingest.read_documents(docs), 600, 60)
    assert after.keys() == {c.id for c in expected}
    assert after["heapq.txt#0"].text.endswith("rewritten.")
    readme_chunks = lambda records: {k for k in records if k.startswith("guide/README.md#")}  # noqa: E731
    assert len(readme_chunks(after)) < len(readme_chunks(before))  # the stale tail is gone


def test_index_jsonl_with_ids_metadata_and_int8(tmp_path):
    docs = _stdlib_module_docs()
    path = tmp_path / "docs.jsonl"
    lines = [
        {"id": "json-doc", "text": docs["json"], "metadata": {"lang": "en", "module": "json"}},
        {"id": 7, "text": docs["csv"], "metadata": {"module": "csv"}},
        {"text": docs["heapq"]},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    store = tmp_path / "jsonl.qr"
    summary = run_json("index", path, "--store", store, "--precision", "int8", "--codec", "binary")
    assert summary["documents"] == 3 and summary["codec"] == "binary" and summary["bytes_per_vector"] == 48
    assert summary["precision"] == "int8"
    records = stored_records(store)
    assert {k.split("#")[0] for k in records} == {"json-doc", "7", "docs.jsonl:3"}
    first = records["json-doc#0"]
    assert first.metadata == {"lang": "en", "module": "json", "doc_id": "json-doc", "chunk": 0, "source": "docs.jsonl"}

    out = run_json("query", "--store", store, "-k", "1", "--where", "module=csv", "reading and writing CSV files")
    assert out["precision"] == "int8"  # the recorded precision, not the default
    assert out["results"][0]["hits"][0]["id"].startswith("7#")


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "empty" / "blank.md").write_text("  \n\n", encoding="utf-8")
    (root / "empty" / "code.py").write_text("x = 1\n", encoding="utf-8")
    (root / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "unterminated\n', encoding="utf-8")
    (root / "no_text.jsonl").write_text('{"text": "fine"}\n\n{"body": "no text key"}\n', encoding="utf-8")
    (root / "dup.jsonl").write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n', encoding="utf-8")
    (root / "ok.jsonl").write_text('{"text": "a fine document"}\n', encoding="utf-8")
    (root / "notes.pdf").write_bytes(b"%PDF-1.4")
    (root / "not_npy.npy").write_text("not an array", encoding="utf-8")
    np.save(root / "ints.npy", np.arange(12).reshape(3, 4))
    np.save(root / "vectors.npy", np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    (root / "qrels.tsv").write_text("0\t1\nzero\tone\n", encoding="utf-8")
    (root / "one_text.txt").write_text("only one line\n", encoding="utf-8")
    (root / "pairs.jsonl").write_text('{"query": "q", "passages": ["a"]}\n{"query": "q2"}\n', encoding="utf-8")
    (root / "ok_pairs.jsonl").write_text('{"query": "q", "passages": ["a", "b"]}\n', encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["index", "{bad}/missing", "--store", "{tmp}/s"], ["missing does not exist"]),
        (["index", "{bad}/notes.pdf", "--store", "{tmp}/s"], [".pdf file"]),
        (["index", "{bad}/empty", "--store", "{tmp}/s"], ["empty corpus"]),
        (["index", "{bad}/broken.jsonl", "--store", "{tmp}/s"], ["broken.jsonl line 2", "not valid JSON"]),
        (["index", "{bad}/no_text.jsonl", "--store", "{tmp}/s"], ["no_text.jsonl line 3", "'text'"]),
        (["index", "{bad}/dup.jsonl", "--store", "{tmp}/s"], ["line 2", "duplicate id 'a'"]),
        (["index", "{bad}/empty", "--store", "{tmp}/s", "--codec", "int3"], ["--codec", "int3", "int4"]),
        (["index", "{bad}/empty", "--store", "{tmp}/s", "--precision", "int3"], ["--precision", "int3", "bnb-nf4"]),
        (["index", "{bad}/dup.jsonl", "--store", "{bad}"], ["is not a quant_retriever store"]),
        (["index", "{bad}/ok.jsonl", "--store", "{tmp}/s", "--model", "{bad}/no-such-model"], ["could not load model"]),
        (["query", "--store", "{tmp}/nothing", "hello"], ["no store at"]),
        (["bench-index", "{bad}/missing.npy"], ["does not exist"]),
        (["bench-index", "{bad}/not_npy.npy"], ["not a .npy array file"]),
        (["bench-index", "{bad}/ints.npy"], ["2-D float array"]),
        (["bench-index", "{bad}/vectors.npy", "--qrels", "{bad}/qrels.tsv"], ["--qrels needs --queries"]),
        (
            ["bench-index", "{bad}/vectors.npy", "--queries", "{bad}/vectors.npy", "--qrels", "{bad}/qrels.tsv"],
            ["qrels.tsv line 2"],
        ),
        (["bench-models", "--texts", "{bad}/missing.txt"], ["does not exist"]),
        (["bench-models", "--texts", "{bad}/one_text.txt"], ["need at least 2"]),
        (["bench-models", "--precisions", "fp3"], ["invalid choice: 'fp3'"]),
        (["bench-rerank", "--pairs", "{bad}/missing.jsonl"], ["pairs file", "does not exist"]),
        (["bench-rerank", "--pairs", "{bad}/pairs.jsonl"], ["pairs.jsonl line 2", '"passages"']),
        (["bench-rerank", "--at", "0"], ["--at", "expected a positive integer; got 0"]),
        (["bench-rerank", "--precisions", "fp3"], ["invalid choice: 'fp3'"]),
        (["bench-rerank", "--model", "{bad}/no-such-model", "--pairs", "{bad}/ok_pairs.jsonl"], ["no-such-model"]),
    ],
)
def test_bad_input_is_one_line_error(bad_inputs, tmp_path, args, fragments):
    args = [a.format(bad=bad_inputs, tmp=tmp_path) for a in args]
    proc = run(*args, ok=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "s").exists()  # a failed index leaves no store behind


def test_store_with_another_dimension_is_refused(docs_dir, tmp_path):
    store = tmp_path / "dim8.qr"
    s = QuantizedStore(dim=8, codec="int8", path=store)
    s.upsert(["a"], np.ones((1, 8), dtype=np.float32), ["eight dimensions"])
    s.close()
    proc = run("index", docs_dir, "--store", store, ok=False)
    assert_one_line_error(proc, "8-dimensional", "384-dimensional")
    assert stored_records(store).keys() == {"a"}  # untouched
    assert_one_line_error(run("query", "--store", store, "anything", ok=False), "8-dimensional")


def test_store_open_elsewhere_is_refused(folder_store):
    store, _ = folder_store
    holder = QuantizedStore.open(store)
    try:
        assert_one_line_error(run("query", "--store", store, "json", ok=False), "already open")
    finally:
        holder.close()


# --------------------------------------------------------------------------- benchmarks


@pytest.fixture(scope="module")
def bench_inputs(corpus_docs, corpus_vectors, tmp_path_factory) -> Path:
    """600 real MiniLM docstring vectors, 20 queries made from docstring names, and qrels
    pointing each query at its source docstring (index ``i * (n_docs // 200)``)."""
    docs, queries = corpus_vectors
    step = len(corpus_docs) // 200
    n_queries = 600 // step
    root = tmp_path_factory.mktemp("bench")
    np.save(root / "docs.npy", docs[:600])
    np.save(root / "queries.npy", queries[:n_queries])
    lines = ["# query\tdoc\trelevance"] + [f"{i}\t{i * step}\t1" for i in range(n_queries)]
    (root / "qrels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_bench_index_with_queries_and_qrels(bench_inputs, tmp_path):
    out = run_json(
        "bench-index",
        bench_inputs / "docs.npy",
        "--queries",
        bench_inputs / "queries.npy",
        "--qrels",
        bench_inputs / "qrels.tsv",
        "--k",
        "10",
        "--multipliers",
        "1",
        "4",
        "--single",
        "3",
        "--batches",
        "1",
        "--batch-size",
        "8",
        "--out",
        tmp_path / "out",
        "-q",
    )
    assert out["n_vectors"] == 600 and out["dim"] == 384 and out["k"] == 10 and not out["held_out"]
    rows = {r["method"]: r for r in out["rows"]}
    ours = [
        "qr fp32",
        "qr fp16",
        "qr int8",
        "qr int4",
        "qr int4 +int8 x1",
        "qr int4 +int8 x4",
        "qr binary",
        "qr binary +int8 x1",
        "qr binary +int8 x4",
    ]
    assert list(rows)[: len(ours)] == ours
    assert rows["qr fp32"]["recall"] == pytest.approx(1.0) and rows["qr fp32"]["mrr_kept"] == pytest.approx(1.0)
    assert rows["qr int4 +int8 x4"]["recall"] >= 0.9 and rows["qr binary +int8 x4"]["recall"] >= 0.8
    assert rows["qr binary +int8 x4"]["recall"] > rows["qr binary"]["recall"]
    assert (rows["qr int4"]["bytes_per_vector"], rows["qr binary"]["bytes_per_vector"]) == (220, 48)
    assert rows["qr int4 +int8 x4"]["disk_bytes_per_vector"] == 392 and rows["qr int4"]["disk_bytes_per_vector"] == 0
    assert 0 < out["exact_mrr"] <= 1 and 0 < out["exact_ndcg"] <= 1
    for r in rows.values():
        assert 0 <= r["recall"] <= 1 and r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and r["batch_qps"] > 0
        assert r["ndcg"] is not None and r["build_s"] >= 0
    if "faiss IndexFlatIP" in rows:
        assert rows["faiss IndexFlatIP"]["recall"] == pytest.approx(1.0)

    files = {k: Path(v) for k, v in out["files"].items()}
    assert set(files) == {"csv", "json", "png"}
    with files["csv"].open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == list(rows) and float(table[0]["recall"]) == pytest.approx(1.0)
    assert json.loads(files["json"].read_text())["rows"] == out["rows"]
    assert_png(files["png"], 800, 300)


def test_bench_index_held_out_queries_plain_table(bench_inputs, tmp_path):
    proc = run(
        "bench-index",
        bench_inputs / "docs.npy",
        "--n-queries",
        "30",
        "--codecs",
        "int4",
        "fp32",
        "--multipliers",
        "2",
        "--no-baselines",
        "--single",
        "2",
        "--batches",
        "0",
        "--no-plot",
        "--out",
        tmp_path,
        "-q",
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("570 x 384 vectors, 30 queries (held-out sample")
    header = next(line for line in lines if line.startswith("method"))
    assert header.split()[:4] == ["method", "B/vec", "dev", "B/vec"]
    body = [line.split() for line in lines if line.startswith("qr ")]
    assert [" ".join(b[:-10]) for b in body] == ["qr fp32", "qr int4", "qr int4 +int8 x2"]
    numbers = [b[-10:] for b in body]  # B/vec dev, B/vec disk, recall, MRR kept, NDCG kept, ...
    fp32, int4, int8 = (str(CODECS[name](384).row_bytes) for name in ("fp32", "int4", "int8"))
    assert numbers[0][:5] == [fp32, "0", "1.000", "n/a", "n/a"]  # exact; no qrels, so no MRR
    assert numbers[2][:2] == [int4, int8] and float(numbers[2][2]) >= 0.9
    saved = json.loads((tmp_path / "bench_index.json").read_text())
    assert saved["held_out"] is True and saved["n_queries"] == 30 and saved["n_vectors"] == 570
    assert not (tmp_path / "bench_index.png").exists()


def test_bench_models(tmp_path, corpus_docs):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(d.text for d in corpus_docs[:24]) + "\n", encoding="utf-8")
    out = run_json(
        "bench-models",
        "--texts",
        texts,
        "--limit",
        "16",
        "--precisions",
        "fp32",
        "bf16",
        "--repeats",
        "1",
        "--batch-size",
        "8",
        "--out",
        tmp_path / "out",
        "-q",
    )
    assert out["texts"] == 16
    rows = {r["label"]: r for r in out["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    assert rows["fp32"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert 0.98 < rows["bf16"]["mean_cosine"] < 1.0 and rows["bf16"]["top10_overlap"] > 0.8
    assert rows["bf16"]["parameter_bytes"] < 0.6 * rows["fp32"]["parameter_bytes"]
    assert all(r["texts_per_second"] > 0 for r in rows.values())
    files = {k: Path(v) for k, v in out["files"].items()}
    assert [r["label"] for r in csv.DictReader(files["csv"].open(encoding="utf-8"))] == ["fp32", "bf16"]
    assert_png(files["png"], 800, 250)


def test_bench_rerank_on_stdlib_pairs(tmp_path, tiny_cross_encoder):
    args = ["--model", tiny_cross_encoder, "--queries", "3", "--candidates", "6", "--corpus", "40"]
    args += ["--precisions", "fp32", "int8", "--at", "3", "--repeats", "1", "--batch-size", "4"]
    proc = run("bench-rerank", *args, "--out", tmp_path / "out", "--json", "-q")
    assert "Loading and warming up" not in proc.stderr and "Batches" not in proc.stderr  # -q: no bars
    out = json.loads(proc.stdout)
    assert (out["queries"], out["pairs"], out["at"], out["demo_model"]) == (3, 18, 3, False)
    rows = {r["label"]: r for r in out["rows"]}
    assert set(rows) == {"fp32", "int8"}
    assert [rows["fp32"][k] for k in ("pearson", "spearman", "ndcg", "map")] == [1.0, 1.0, 1.0, 1.0]
    assert rows["int8"]["pearson"] >= 0.98 and 0.5 <= rows["int8"]["ndcg"] <= 1.0
    assert rows["int8"]["parameter_bytes"] < 0.4 * rows["fp32"]["parameter_bytes"]
    files = {k: Path(v) for k, v in out["files"].items()}
    assert [r["label"] for r in csv.DictReader(files["csv"].open(encoding="utf-8"))] == ["fp32", "int8"]
    assert json.loads(files["json"].read_text())["model"] == tiny_cross_encoder
    assert_png(files["png"], 800, 250)


def test_bench_rerank_defaults_to_the_offline_minilm_cross_encoder(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    docs = [d.text for d in corpus_module.stdlib_docstrings(8)]
    lines = [{"query": "parse JSON text", "passages": docs[:4]}, {"query": "open a socket", "passages": docs[4:]}]
    pairs.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    args = ["--pairs", pairs, "--precisions", "fp32", "bf16", "--repeats", "1", "--no-plot", "--out", tmp_path]
    proc = run("bench-rerank", *args)
    assert "MiniLM demo cross-encoder: 2 queries, 8 pairs" in proc.stdout
    assert "quantization fidelity, not relevance" in proc.stdout
    table = proc.stdout.split("precision", 1)[1].splitlines()
    assert table[2].split()[0] == "fp32" and table[3].split()[0] == "bf16"
    saved = json.loads((tmp_path / "bench_rerank.json").read_text())
    assert saved["demo_model"] is True and Path(saved["model"]).name == "minilm-cross-encoder-seed0"
    assert not (tmp_path / "bench_rerank.png").exists()


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["index", "query", "bench-index", "bench-models", "bench-rerank"])
def test_help_has_examples(command):
    text = run(command, "--help").stdout
    assert "examples:" in text and f"quant-retriever {command} " in text and "--json" in text


def test_bench_models_defaults_to_every_precision_of_the_table():
    from quant_retriever.cli.parser import build_parser
    from quant_retriever.models.settings import PRECISIONS

    args = build_parser().parse_args(["bench-models"])
    assert args.precisions == list(dict.fromkeys(spec.name for spec in PRECISIONS.values()))
    assert args.precisions == ["fp32", "fp16", "bf16", "int8", "bnb-int8", "bnb-nf4", "bnb-fp4"]


def test_top_level_help_and_python_m():
    assert "bench-models" in run("--help").stdout and "bench-rerank" in run("--help").stdout
    proc = subprocess.run(
        [sys.executable, "-m", "quant_retriever", "--version"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("quant-retriever ")
    assert_one_line_error(run("index", ok=False), "required")
