"""LangChain's standard flows end to end, with the real all-MiniLM-L6-v2 model (INT8) behind
QuantizedEmbeddings: the indexing API (index/aindex with a record manager, incremental and
full cleanup), the async methods and an LCEL chain."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.indexing import InMemoryRecordManager, aindex, index
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from quant_retriever.langchain import QuantizedEmbeddings, QuantizedVectorStore

GUIDE = [
    ("install.md", "Install the package with pip and create a virtual environment first."),
    ("install.md", "On Windows the installer needs the Visual C++ runtime."),
    ("retry.md", "Failed HTTP requests are retried three times with exponential backoff."),
    ("retry.md", "The retry budget resets after one minute without errors."),
    ("cache.md", "Responses are cached on disk for ten minutes, keyed by the request URL."),
]


@pytest.fixture(scope="module")
def embeddings(minilm_path):
    return QuantizedEmbeddings(model_name=minilm_path, precision="int8", device="cpu")


def guide_docs(changes: dict[int, str] | None = None) -> list[Document]:
    changes = changes or {}
    return [
        Document(page_content=changes.get(i, text), metadata={"source": src}) for i, (src, text) in enumerate(GUIDE)
    ]


def top(store: QuantizedVectorStore, query: str, **kwargs) -> str:
    return store.similarity_search(query, k=1, **kwargs)[0].page_content


def counts(result: dict) -> tuple[int, int, int, int]:
    return result["num_added"], result["num_updated"], result["num_skipped"], result["num_deleted"]


@pytest.mark.parametrize("persistent", [False, True])
def test_indexing_api_incremental_and_full_cleanup(embeddings, tmp_path, persistent):
    store = QuantizedVectorStore(embeddings, codec="int4", path=tmp_path / "s" if persistent else None)
    records = InMemoryRecordManager(namespace="guide")
    records.create_schema()
    assert counts(
        index(guide_docs(), records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    ) == (5, 0, 0, 0)
    assert counts(
        index(guide_docs(), records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    ) == (0, 0, 5, 0)
    assert len(store.store) == 5
    # one chunk of retry.md changes: the new one is added and the stale one deleted
    changed = guide_docs({3: "The retry budget resets after five minutes without errors."})
    assert counts(
        index(changed, records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    ) == (1, 0, 4, 1)
    assert len(store.store) == 5
    assert top(store, "when does the retry budget reset?") == changed[3].page_content
    assert "one minute" not in " ".join(d.page_content for d in store.similarity_search("retry budget", k=5))
    # full cleanup with only install.md left: everything else goes
    only_install = [d for d in changed if d.metadata["source"] == "install.md"]
    assert counts(
        index(only_install, records, store, cleanup="full", source_id_key="source", key_encoder="sha256")
    ) == (0, 0, 2, 3)
    assert sorted(d.metadata["source"] for d in store.similarity_search("anything", k=10)) == ["install.md"] * 2
    assert store.store.verify() == []
    if persistent:  # what the record manager knows is what a reopened store holds
        store.close()
        reopened = QuantizedVectorStore.load(tmp_path / "s", embeddings)
        assert len(reopened.store) == 2
        assert sorted(r.id for r in reopened.store.get(records.list_keys())) == sorted(records.list_keys())


async def test_aindex_and_async_methods(embeddings):
    store = QuantizedVectorStore(embeddings, codec="binary")
    records = InMemoryRecordManager(namespace="guide")
    await records.acreate_schema()
    assert counts(
        await aindex(guide_docs(), records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    ) == (5, 0, 0, 0)
    assert counts(
        await aindex(guide_docs(), records, store, cleanup="incremental", source_id_key="source", key_encoder="sha256")
    ) == (0, 0, 5, 0)
    assert counts(
        await aindex(guide_docs()[:2], records, store, cleanup="full", source_id_key="source", key_encoder="sha256")
    ) == (0, 0, 2, 3)
    [doc] = await store.asimilarity_search("Windows runtime", k=1)
    assert "Visual C++" in doc.page_content
    ids = await store.aadd_documents([Document(page_content="Logs rotate daily at midnight.", id="logs")])
    assert ids == ["logs"] and [d.id for d in await store.aget_by_ids(["logs"])] == ["logs"]
    [(hit, relevance)] = await store.asimilarity_search_with_relevance_scores("when do logs rotate?", k=1)
    assert hit.id == "logs" and 0.5 < relevance <= 1.0
    assert len(await store.amax_marginal_relevance_search("install", k=2, fetch_k=3)) == 2
    retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"source": "install.md"}})
    assert (await retriever.ainvoke("Windows"))[0].metadata["source"] == "install.md"
    await store.adelete(["logs"])
    assert await store.aget_by_ids(["logs"]) == []


def test_lcel_chain_retrieves_the_right_context(embeddings):
    store = QuantizedVectorStore.from_documents(guide_docs(), embeddings, codec="int4")
    prompt = ChatPromptTemplate.from_messages([("system", "Context:\n{context}"), ("human", "{question}")])
    echo_llm = RunnableLambda(lambda value: value.to_string())  # shows what the model would be given
    chain = (
        {
            "context": store.as_retriever(search_kwargs={"k": 1})
            | (lambda docs: "\n".join(d.page_content for d in docs)),
            "question": RunnablePassthrough(),
        }
        | prompt
        | echo_llm
        | StrOutputParser()
    )
    out = chain.invoke("How long are responses cached?")
    assert "cached on disk for ten minutes" in out and "Human: How long are responses cached?" in out
    batch = chain.batch(["How many times is a request retried?", "What does the Windows installer need?"])
    assert "retried three times" in batch[0] and "Visual C++" in batch[1]
    threshold = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.6, "k": 5}
    )
    hits = threshold.invoke("How many times are failed HTTP requests retried?")
    assert hits and hits[0].metadata["source"] == "retry.md" and len(hits) < 5
