"""Incremental indexing (quant_retriever.ingest.index_documents / index_path /
load_store_encoder) on real SQLite stores with the real all-MiniLM-L6-v2 model, and a small
randomly initialised BERT as "another model"."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from quant_retriever import ingest
from quant_retriever.ingest import Document, index_documents, index_path, load_store_encoder
from quant_retriever.models import load_encoder
from quant_retriever.models.settings import DEFAULT_MODEL
from quant_retriever.store import QuantizedStore

PARAGRAPH = "Heap queue algorithm, also known as the priority queue algorithm. " * 3


def documents(**texts: str) -> list[Document]:
    return [Document(doc_id, text, {"lang": "en"}, f"{doc_id}.txt") for doc_id, text in texts.items()]


def never() -> None:
    raise AssertionError("the model was loaded although nothing had to be embedded")


@pytest.fixture(scope="module")
def fp32(minilm_path):
    return load_encoder(minilm_path, "fp32", device="cpu")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A sentence-transformers model directory: a randomly initialised 2-layer BERT, 32-d."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(root / "hf")
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(root / "hf")
    word = models.Transformer(str(root / "hf"))
    model = SentenceTransformer(modules=[word, models.Pooling(32)])
    model.save(str(root / "st"))
    return str(root / "st")


def records(store: QuantizedStore) -> dict:
    return {r.id: (r.text, r.metadata) for r in store.records()}


def test_incremental_runs_embed_only_changes_and_drop_stale_chunks(tmp_path, fp32):
    store = QuantizedStore(codec="int8", path=tmp_path / "s")
    docs = documents(a=PARAGRAPH * 2, b="Reading and writing CSV files.", c=PARAGRAPH)
    first = index_documents(store, fp32, docs, chunk_size=120, overlap=10)
    chunks = ingest.chunk_documents(docs, 120, 10)
    assert (first.chunks, first.embedded, first.unchanged, first.removed) == (len(chunks), len(chunks), 0, 0)
    assert first.records == len(store) == len(chunks) and first.codec == "int8" and first.dim == 384
    assert store.get_info("embedding") == {"model": DEFAULT_MODEL, "precision": "fp32", "dim": 384}
    vectors = store.vectors(store.get([c.id for c in chunks]))
    np.testing.assert_allclose(vectors, fp32.encode([c.text for c in chunks]), atol=0.01)

    again = index_documents(store, never, docs, chunk_size=120, overlap=10)  # nothing to embed: no model load
    assert (again.embedded, again.unchanged, again.removed) == (0, len(chunks), 0)
    assert again.model == DEFAULT_MODEL and again.precision == "fp32"

    # "a" shrinks to one chunk, "b" changes, "c" stays: only "b" and "a#0" (its text changed) are embedded
    changed = documents(a=PARAGRAPH[:100], b="Reading and writing CSV files, rewritten.", c=PARAGRAPH)
    third = index_documents(store, lambda: fp32, changed, chunk_size=120, overlap=10)
    expected = ingest.chunk_documents(changed, 120, 10)
    a_before = sum(c.id.startswith("a#") for c in chunks)
    assert third.removed == a_before - 1 and third.embedded == 2
    assert records(store) == {c.id: (c.text, c.metadata) for c in expected}
    assert store.verify() == []
    store.close()


def test_the_record_travels_with_the_store(tmp_path, fp32, minilm_path):
    store = QuantizedStore(path=tmp_path / "here")
    docs = documents(heap=PARAGRAPH, csv="Reading and writing CSV files: comma-separated values.")
    index_documents(store, fp32, docs, chunk_size=200, overlap=20)
    store.close()
    shutil.move(tmp_path / "here", tmp_path / "moved")  # another place, as on another machine
    moved = QuantizedStore.open(tmp_path / "moved")
    assert moved.get_info("embedding")["model"] == DEFAULT_MODEL  # the hub name, not this machine's path
    encoder = load_store_encoder(moved)  # the bundled copy of the recorded model
    assert encoder.model_name == minilm_path and encoder.precision == "fp32"
    hit = moved.search(encoder.encode(["parse a comma-separated file"]), k=1)[0][0]
    assert hit[0].id == "csv#0"
    moved.close()


def test_another_model_is_refused_before_anything_is_written(tmp_path, fp32, tiny_bert):
    store = QuantizedStore(path=tmp_path / "s")
    index_documents(store, fp32, documents(a=PARAGRAPH), chunk_size=200, overlap=20)
    before = records(store)
    other = load_encoder(tiny_bert, "fp32", device="cpu")
    with pytest.raises(ValueError, match=r"indexed with model 'sentence-transformers/all-MiniLM-L6-v2'"):
        index_documents(store, other, documents(a="new text", z="another"), chunk_size=200, overlap=20)
    with pytest.raises(ValueError, match="indexed with model"):
        load_store_encoder(store, model=tiny_bert)
    assert records(store) == before and store.get_info("embedding")["model"] == DEFAULT_MODEL

    # a store with vectors but no record: the dimension decides
    bare = QuantizedStore(path=tmp_path / "bare")
    bare.upsert(["v"], np.ones((1, 384), dtype=np.float32), ["a vector"])
    with pytest.raises(ValueError, match="384-dimensional vectors but model .* makes 32-dimensional ones"):
        index_documents(bare, other, documents(a="text"), chunk_size=200, overlap=20)
    assert records(bare) == {"v": ("a vector", {})} and bare.get_info("embedding") is None
    store.close()
    bare.close()


def test_a_legacy_settings_file_is_read_once_then_replaced(tmp_path, minilm_path):
    store = QuantizedStore(codec="int8", path=tmp_path / "old")
    legacy = tmp_path / "old" / "embedding.json"
    old = {"format": "quant_retriever.cli", "version": 1, "model": minilm_path, "precision": "int8", "dim": 384}
    legacy.write_text(json.dumps(old))
    encoder = load_store_encoder(store)
    assert encoder.precision == "int8" and encoder.model_name == minilm_path
    result = index_documents(store, encoder, documents(a=PARAGRAPH), chunk_size=200, overlap=20)
    assert result.precision == "int8" and not legacy.exists()
    assert store.get_info("embedding") == {"model": DEFAULT_MODEL, "precision": "int8", "dim": 384}
    legacy.write_text("{not json")  # once recorded in the store, the file is not read again
    assert load_store_encoder(store).precision == "int8"
    store.close()


def test_bad_arguments_raise_and_write_nothing(tmp_path, fp32):
    store = QuantizedStore(path=tmp_path / "s")
    docs = documents(a=PARAGRAPH)
    cases = [
        (TypeError, "store must be a QuantizedStore", lambda: index_documents("store", fp32, docs)),
        (TypeError, "encoder must be an Encoder", lambda: index_documents(store, "model", docs)),
        (TypeError, "documents must be a list of Document", lambda: index_documents(store, fp32, "text")),
        (TypeError, r"documents\[1\] must be a Document", lambda: index_documents(store, fp32, [docs[0], "b"])),
        (ValueError, "duplicate document id 'a'", lambda: index_documents(store, fp32, docs + docs)),
        (ValueError, "chunk_size must be at least 20", lambda: index_documents(store, fp32, docs, chunk_size=5)),
        (ValueError, "batch_size must be positive", lambda: index_documents(store, fp32, docs, batch_size=0)),
        (ValueError, "no document has any text", lambda: index_documents(store, fp32, documents(a="  \n"))),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    assert len(store) == 0 and store.get_info("embedding") is None and store.dim is None
    store.close()


def test_index_path_creates_reopens_and_cleans_up(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "heap.md").write_text(PARAGRAPH, encoding="utf-8")
    target = tmp_path / "store.qr"
    with pytest.raises(ValueError, match="could not load model"):
        index_path(docs, target, model=str(tmp_path / "no-such-model"))
    assert not target.exists()  # the store this call created is gone again

    first = index_path(docs, target, codec="binary", chunk_size=100, overlap=10)
    assert first.codec == "binary" and first.embedded == first.chunks > 1 and first.memory.bytes_per_vector == 48
    (docs / "csv.txt").write_text("Reading and writing CSV files.", encoding="utf-8")
    second = index_path(docs, target, chunk_size=100, overlap=10)
    assert (second.embedded, second.unchanged) == (1, first.chunks)
    with pytest.raises(ValueError, match="uses codec 'binary', not 'int4'"):
        index_path(docs, target, codec="int4")
    with pytest.raises(ValueError, match="indexed with model"):
        index_path(docs, target, model="BAAI/bge-small-en-v1.5")  # refused before any download
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store")
    with pytest.raises(ValueError, match="is not a quant_retriever store"):
        index_path(docs, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "not a store"


def test_store_info_is_json_in_the_store_and_survives_reopen_and_save(tmp_path):
    store = QuantizedStore(dim=4, path=tmp_path / "s")
    assert store.get_info("anything") is None
    store.set_info("embedding", {"model": "m", "precision": "int8", "dim": 4, "ünï": [1, 2.5, None]})
    store.set_info("other", "x")
    with pytest.raises(TypeError, match="must be JSON-serializable"):
        store.set_info("bad", {"set": {1, 2}})
    with pytest.raises(TypeError, match="must be JSON-serializable"):
        store.set_info("nan", float("nan"))
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        store.set_info("", 1)
    assert store.get_info("bad") is None and store.get_info("nan") is None
    store.save(tmp_path / "copy")
    store.close()
    for path in (tmp_path / "s", tmp_path / "copy"):
        reopened = QuantizedStore.open(path)
        assert reopened.get_info("embedding") == {"model": "m", "precision": "int8", "dim": 4, "ünï": [1, 2.5, None]}
        assert reopened.get_info("other") == "x" and reopened.dim == 4
        reopened.close()
