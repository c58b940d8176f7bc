"""Read-only opening of a store: beside a writer in another process, with the state committed
at open until ``refresh()``, writing nothing, refusing writes; through both adapters."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from llama_index.core.vector_stores.types import VectorStoreQuery

from quant_retriever.langchain import QuantizedVectorStore as LangChainStore
from quant_retriever.llama_index import QuantizedVectorStore as LlamaIndexStore
from quant_retriever.store import Cond, QuantizedStore

DIM = 16


def vecs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fingerprint(path: Path) -> dict:
    """Every file's digest, except the reader lock and SQLite's own coordination files (which
    a reader of a WAL database may create when the directory is writable)."""
    skip = (".readers", "store.sqlite-wal", "store.sqlite-shm")
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name not in skip
    }


WRITER = """
import sys, time
import numpy as np
from quant_retriever.store import QuantizedStore
store = QuantizedStore.open(sys.argv[1])
rng = np.random.default_rng(1)
print("OPEN", flush=True)
for line in sys.stdin:
    n = int(line)
    v = rng.standard_normal((n, 16)).astype(np.float32)
    store.upsert([f"w{n}-{i}" for i in range(n)], v, ["w"] * n, [{"w": True}] * n)
    store.delete(["d0"]) if n == 2 else None
    print("DONE", flush=True)
"""


def test_a_reader_beside_a_writer_in_another_process(tmp_path):
    store = QuantizedStore(DIM, codec="int4", path=tmp_path / "s", block_size=8)
    store.upsert([f"d{i}" for i in range(50)], vecs(50), ["t"] * 50, [{"i": i} for i in range(50)])
    store.close()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "s")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "OPEN"
        reader = QuantizedStore.open(tmp_path / "s", read_only=True)
        assert reader.read_only and len(reader) == 50
        writer.stdin.write("2\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "DONE"
        assert len(reader) == 50 and {r.id for r, _ in reader.search(vecs(1)[0], k=50)[0]} >= {
            "d0"
        }  # its state at open
        assert reader.refresh() is True
        assert len(reader) == 51 and not reader.get(["d0"]) and len(reader.get(["w2-0", "w2-1"])) == 2
        assert [r.id for r, _ in reader.search(vecs(1)[0], k=60, where=Cond("w", "eq", True))[0]] != []
        assert reader.verify() == []
        for call in (
            lambda: reader.upsert(["x"], vecs(1), ["x"]),
            lambda: reader.delete(["d1"]),
            reader.clear,
            reader.compact,
            lambda: reader.delete_where(Cond("i", "eq", 1)),
        ):
            with pytest.raises(ValueError, match="read-only"):
                call()
        second = QuantizedStore.open(tmp_path / "s", read_only=True)  # any number of readers
        assert len(second) == 51
        reader.close()
        second.close()
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)


def test_read_only_opening_writes_nothing(tmp_path):
    store = QuantizedStore(DIM, codec="binary", path=tmp_path / "s")
    store.upsert([f"d{i}" for i in range(20)], vecs(20), ["t"] * 20)
    store.delete(["d3"])
    store.close()
    before = fingerprint(tmp_path / "s")
    reader = QuantizedStore.open(tmp_path / "s", read_only=True)
    hits = reader.search(vecs(3, 5), k=3)
    assert len(hits) == 3 and reader.verify() == []
    reader.close()
    assert fingerprint(tmp_path / "s") == before


def test_both_adapters_open_read_only(tmp_path):
    emb = DeterministicFakeEmbedding(size=DIM)
    lc = LangChainStore.from_texts(["alpha", "beta"], emb, ids=["a", "b"], path=tmp_path / "lc")
    lc.close()
    ro = LangChainStore.load(tmp_path / "lc", emb, read_only=True)
    assert ro.similarity_search("alpha", k=1)[0].id == "a"
    with pytest.raises(ValueError, match="read-only"):
        ro.add_texts(["gamma"])
    li = LlamaIndexStore(path=tmp_path / "li")
    from llama_index.core.schema import TextNode

    li.add([TextNode(id_="n1", text="one", embedding=vecs(1)[0].tolist())])
    li.close()
    ro_li = LlamaIndexStore.from_persist_dir(tmp_path / "li", read_only=True)
    result = ro_li.query(VectorStoreQuery(query_embedding=vecs(1)[0].tolist(), similarity_top_k=1))
    assert result.ids == ["n1"]
    with pytest.raises(ValueError, match="read-only"):
        ro_li.delete_nodes(["n1"])
    with pytest.raises(ValueError, match="opens an existing store"):
        LlamaIndexStore(path=tmp_path / "nothing", read_only=True)
