"""LlamaIndex's standard flows end to end, with the real all-MiniLM-L6-v2 model behind
QuantizedEmbedding: an IngestionPipeline with upserts (docstore + vector store), insert,
delete_ref_doc, refresh_ref_docs, aquery with MockLLM, load_index_from_storage with a
path-backed store, and the persistence idiom round trip in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.storage.docstore import SimpleDocumentStore

import quant_retriever
from quant_retriever.llama_index import QuantizedEmbedding, QuantizedVectorStore

TEXTS = {
    "install": "Install the package with pip inside a virtual environment. "
    "On Windows the installer needs the Visual C++ runtime.",
    "retry": "Failed HTTP requests are retried three times with exponential backoff. "
    "The retry budget resets after one minute.",
    "cache": "Responses are cached on disk for ten minutes, keyed by the request URL.",
    "logs": "Log files rotate daily at midnight and are kept for two weeks.",
}
QUESTIONS = {
    "What does the Windows installer need?": "install",
    "How often are failed requests retried?": "retry",
    "How long are responses cached?": "cache",
    "When do log files rotate?": "logs",
}


@pytest.fixture(scope="module")
def embed(minilm_path):
    Settings.llm = MockLLM()
    return QuantizedEmbedding(model_name=minilm_path, precision="fp32", device="cpu")


def documents(**changes: str) -> list[Document]:
    return [Document(text=changes.get(k, t), id_=k, metadata={"topic": k}) for k, t in TEXTS.items()]


def best(index: VectorStoreIndex, question: str) -> str:
    return index.as_retriever(similarity_top_k=1).retrieve(question)[0].node.ref_doc_id


def test_ingestion_pipeline_upserts_into_docstore_and_vector_store(embed):
    store, docstore = QuantizedVectorStore(codec="int4"), SimpleDocumentStore()
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=20, chunk_overlap=0), embed],
        docstore=docstore,
        vector_store=store,
        docstore_strategy=DocstoreStrategy.UPSERTS,
    )
    first = pipeline.run(documents=documents())
    assert len(first) == len(store.client) > len(TEXTS)  # several chunks per document
    assert pipeline.run(documents=documents()) == []  # unchanged: skipped
    changed = "The retry budget resets after five minutes without errors."
    second = pipeline.run(documents=documents(retry=changed))
    assert {n.ref_doc_id for n in second} == {"retry"}
    stored = store.get_nodes()
    assert [n.get_content() for n in stored if n.ref_doc_id == "retry"] == [changed]  # old chunks deleted
    assert len(stored) == len(first) - sum(n.ref_doc_id == "retry" for n in first) + 1
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed)
    assert best(index, "When does the retry budget reset?") == "retry"
    assert store.client.verify() == []


async def test_insert_delete_refresh_and_aquery(embed):
    store = QuantizedVectorStore(codec="int8")
    docs = documents()
    index = VectorStoreIndex.from_documents(
        docs[:3], storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    index.insert(docs[3])
    assert all(best(index, q) == topic for q, topic in QUESTIONS.items())
    index.delete_ref_doc("cache", delete_from_docstore=True)
    assert "cache" not in {n.ref_doc_id for n in store.get_nodes()}
    faq = Document(text="Questions go to the mailing list, answered within a day.", id_="faq")
    refreshed = index.refresh_ref_docs([*documents(install="Installing needs Python 3.10 or newer.")[:1], docs[3], faq])
    assert refreshed == [True, False, True]  # changed, unchanged, new
    assert best(index, "Which Python version is needed to install?") == "install"
    assert best(index, "Where do I send questions?") == "faq"
    assert [n.get_content() for n in store.get_nodes() if n.ref_doc_id == "install"] == [
        "Installing needs Python 3.10 or newer."
    ]
    index.insert(docs[2])
    response = await index.as_query_engine(similarity_top_k=1).aquery("How long are responses cached?")
    assert response.source_nodes[0].node.ref_doc_id == "cache"
    assert -1.0 <= response.source_nodes[0].score <= 1.0
    nodes = await index.as_retriever(similarity_top_k=2).aretrieve("When do log files rotate?")
    assert nodes[0].node.ref_doc_id == "logs"


def test_load_index_from_storage_with_a_path_backed_store(embed, tmp_path):
    store = QuantizedVectorStore(codec="int4", path=tmp_path / "vectors")
    ctx = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(documents(), storage_context=ctx, embed_model=embed)
    ctx.persist(persist_dir=str(tmp_path / "storage"))  # docstore and index store; the vectors are already on disk
    store.close()
    reopened = QuantizedVectorStore(path=tmp_path / "vectors")
    loaded = load_index_from_storage(
        StorageContext.from_defaults(persist_dir=str(tmp_path / "storage"), vector_store=reopened), embed_model=embed
    )
    assert loaded.index_id == index.index_id
    assert all(best(loaded, q) == topic for q, topic in QUESTIONS.items())
    loaded.delete_ref_doc("logs")
    assert "logs" not in {n.ref_doc_id for n in reopened.get_nodes()}


READER = textwrap.dedent(
    """
    import json, sys
    from llama_index.core import Settings, StorageContext, load_index_from_storage
    from llama_index.core.llms import MockLLM
    from quant_retriever.llama_index import QuantizedEmbedding, QuantizedVectorStore

    persist_dir, model, questions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    Settings.llm = MockLLM()
    store = QuantizedVectorStore.from_persist_dir(persist_dir)
    ctx = StorageContext.from_defaults(persist_dir=persist_dir, vector_store=store)
    embed_model = QuantizedEmbedding(model_name=model, precision="fp32", device="cpu")
    index = load_index_from_storage(ctx, embed_model=embed_model)
    engine = index.as_query_engine(similarity_top_k=2)
    answers = {q: [(n.node.ref_doc_id, round(n.score, 4)) for n in engine.query(q).source_nodes] for q in questions}
    print(json.dumps(answers))
    """
)


def test_persistence_idiom_round_trips_in_a_fresh_process(embed, tmp_path, minilm_path):
    store = QuantizedVectorStore(codec="int4")  # in memory: persist() writes a copy
    index = VectorStoreIndex.from_documents(
        documents()[:3], storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    index.storage_context.persist(persist_dir=str(tmp_path))
    index.insert(documents()[3])  # then persist to the same directory again: replaced atomically
    index.storage_context.persist(persist_dir=str(tmp_path))
    engine = index.as_query_engine(similarity_top_k=2)
    here = {q: [(n.node.ref_doc_id, round(n.score, 4)) for n in engine.query(q).source_nodes] for q in QUESTIONS}
    env = {**os.environ, "PYTHONPATH": str(Path(quant_retriever.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", READER, str(tmp_path), minilm_path, json.dumps(list(QUESTIONS))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    there = {q: [tuple(hit) for hit in hits] for q, hits in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    assert there == here
    assert all(hits[0][0] == QUESTIONS[q] for q, hits in there.items())
