"""QuantizedReranker inside LangChain's own ContextualCompressionRetriever, over the quantized
store's retriever with the real all-MiniLM-L6-v2 embeddings (INT8), checked against the
Reranker it wraps, sync and async."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from pydantic import ValidationError

from quant_retriever import _demo_corpus as corpus
from quant_retriever.langchain import QuantizedEmbeddings, QuantizedReranker, QuantizedVectorStore
from quant_retriever.models import load_reranker

QUESTION = "read rows from a CSV file"


@pytest.fixture(scope="module")
def store(minilm_path):
    embeddings = QuantizedEmbeddings(model_name=minilm_path, precision="int8", device="cpu")
    store = QuantizedVectorStore(embeddings, codec="int4")
    docs = [
        Document(id=d.id, page_content=d.text, metadata={"module": d.id.split(".")[0], "source": d.source})
        for d in corpus.stdlib_docstrings(150)
    ]
    store.add_documents(docs)
    return store


@pytest.fixture(scope="module")
def reranker(tiny_cross_encoder):
    return load_reranker(tiny_cross_encoder, "int8", device="cpu")


def test_two_stage_retrieval_is_the_reranked_first_stage(store, reranker):
    base = store.as_retriever(search_kwargs={"k": 20})
    retriever = ContextualCompressionRetriever(
        base_compressor=QuantizedReranker(reranker=reranker, top_n=5), base_retriever=base
    )
    docs = retriever.invoke(QUESTION)
    first_stage = base.invoke(QUESTION)
    expected = reranker.rerank(QUESTION, [d.page_content for d in first_stage], top_n=5)
    assert [d.id for d in docs] == [first_stage[i].id for i in expected.indices]
    assert [d.metadata["relevance_score"] for d in docs] == pytest.approx(expected.scores.tolist(), abs=1e-6)
    assert all(type(d.metadata["relevance_score"]) is float for d in docs)
    for doc in docs:  # the rest of the document is the stored one
        stored = store.get_by_ids([doc.id])[0]
        assert doc.page_content == stored.page_content
        assert {k: v for k, v in doc.metadata.items() if k != "relevance_score"} == stored.metadata
        assert "relevance_score" not in stored.metadata


async def test_async_retrieval_matches_sync(store, reranker):
    retriever = ContextualCompressionRetriever(
        base_compressor=QuantizedReranker(reranker=reranker, top_n=3),
        base_retriever=store.as_retriever(search_kwargs={"k": 10}),
    )
    sync = retriever.invoke(QUESTION)
    docs = await retriever.ainvoke(QUESTION)
    assert [(d.id, d.metadata["relevance_score"]) for d in docs] == [
        (d.id, d.metadata["relevance_score"]) for d in sync
    ]
    assert len(docs) == 3


def test_in_an_lcel_chain(store, reranker):
    retriever = ContextualCompressionRetriever(
        base_compressor=QuantizedReranker(reranker=reranker, top_n=2),
        base_retriever=store.as_retriever(search_kwargs={"k": 8}),
    )
    seen = []

    def context(docs: list[Document]) -> str:
        seen.extend(docs)
        return "\n\n".join(d.page_content for d in docs)

    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = (
        {"context": retriever | context, "question": RunnablePassthrough()}
        | prompt
        | FakeListChatModel(responses=["Use csv.reader."])
        | StrOutputParser()
    )
    assert chain.invoke(QUESTION) == "Use csv.reader."
    assert len(seen) == 2 and all("relevance_score" in d.metadata for d in seen)


def test_compress_documents_keeps_inputs_and_handles_edges(reranker):
    docs = [
        Document(id=f"d{i}", page_content=d.text, metadata={"n": i, "tags": ["x"]})
        for i, d in enumerate(corpus.stdlib_docstrings(6))
    ]
    before = copy.deepcopy(docs)
    everything = QuantizedReranker(reranker=reranker, top_n=None).compress_documents(docs, QUESTION)
    assert sorted(d.id for d in everything) == sorted(d.id for d in docs) and docs == before
    scores = [d.metadata["relevance_score"] for d in everything]
    assert scores == sorted(scores, reverse=True)
    assert QuantizedReranker(reranker=reranker, top_n=100).compress_documents(docs, QUESTION) == everything
    assert QuantizedReranker(reranker=reranker, top_n=0).compress_documents(docs, QUESTION) == []
    assert QuantizedReranker(reranker=reranker).compress_documents([], QUESTION) == []
    assert QuantizedReranker(reranker=reranker).top_n == 3  # LangChain's CrossEncoderReranker default
    with pytest.raises(TypeError, match=r"documents\[1\] must be a langchain Document, got str"):
        QuantizedReranker(reranker=reranker).compress_documents([docs[0], "text"], QUESTION)
    with pytest.raises(TypeError, match="query must be a str, got int"):
        QuantizedReranker(reranker=reranker).compress_documents(docs, 42)
    assert docs == before


def test_loads_from_settings_and_reports_what_was_applied(tiny_cross_encoder, monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_MODEL", tiny_cross_encoder)
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_PRECISION", "fp16")
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_DEVICE", "cpu")
    compressor = QuantizedReranker()
    assert (compressor.model_name, compressor.precision, compressor.device) == (tiny_cross_encoder, "bf16", "cpu")
    explicit = QuantizedReranker(model_name=Path(tiny_cross_encoder), precision="int8")
    assert (explicit.model_name, explicit.reranker.precision) == (tiny_cross_encoder, "int8")


def test_bad_settings_are_refused(reranker):
    with pytest.raises(ValueError, match=r"Pass either reranker= or the settings .* \['precision'\]"):
        QuantizedReranker(reranker=reranker, precision="int8")
    with pytest.raises(ValidationError, match="top_n"):
        QuantizedReranker(reranker=reranker, top_n=-1)
    with pytest.raises(ValidationError, match="batch_size"):
        QuantizedReranker(reranker=reranker, batch_size=0)
    with pytest.raises(ValidationError, match="reranker"):
        QuantizedReranker(reranker="cross-encoder/ms-marco-MiniLM-L6-v2")
    with pytest.raises(ValidationError, match="top_k"):
        QuantizedReranker(reranker=reranker, top_k=3)  # extra="forbid": a misspelt option is not ignored
