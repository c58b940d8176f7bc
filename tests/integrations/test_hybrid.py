"""Hybrid and keyword retrieval through both frameworks, end to end with the real
all-MiniLM-L6-v2 model: LangChain's indexing API (documents added in batches, then changed)
with ``retrieval_mode`` and hybrid/keyword retrievers; LlamaIndex's ingestion pipeline with
``vector_store_query_mode="hybrid"`` (``alpha``, ``sparse_top_k``, ``hybrid_top_k``), SPARSE and
TEXT_SEARCH, and a query engine; the records API both adapters share (delete by filter, metadata
updated without re-embedding, counts, pages); reopening keeps the keyword index."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from langchain_core.documents import Document as LCDocument
from langchain_core.indexing import InMemoryRecordManager, index
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.vector_stores.types import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from quant_retriever import langchain as qlc
from quant_retriever import llama_index as qli
from quant_retriever.store.fusion import fuse

NOTES = {
    "e4012": ("errors.md", "Error E4012 means the upload token expired; request a new token and retry."),
    "e5003": ("errors.md", "Error E5003 means the storage quota is exceeded; delete old snapshots."),
    "v231": ("releases.md", "Version 2.3.1 fixed a memory leak in the websocket reconnect loop."),
    "v240": ("releases.md", "Version 2.4.0 added resumable uploads and dropped Python 3.8."),
    "proxy": ("network.md", "Set HTTPS_PROXY to route requests through a corporate proxy server."),
    "timeout": ("network.md", "Requests time out after thirty seconds unless you pass a timeout."),
    "cache": ("storage.md", "Downloaded files are cached under ~/.cache for a week."),
    "auth": ("security.md", "Tokens are signed with HMAC-SHA256 and rotated every ninety days."),
}


@pytest.fixture(scope="module")
def lc_embeddings(minilm_path):
    return qlc.QuantizedEmbeddings(model_name=minilm_path, precision="int8", device="cpu")


@pytest.fixture(scope="module")
def li_embed(minilm_path):
    Settings.llm = MockLLM()
    return qli.QuantizedEmbedding(model_name=minilm_path, precision="int8", device="cpu")


def lc_docs(**changes: str) -> list[LCDocument]:
    return [
        LCDocument(page_content=changes.get(k, text), metadata={"source": src, "note": k})
        for k, (src, text) in NOTES.items()
    ]


def notes_of(docs) -> list[str]:
    return [d.metadata["note"] for d in docs]


# ---------------------------------------------------------------------------------- LangChain
@pytest.mark.parametrize("persistent", [False, True])
def test_langchain_indexing_api_in_batches_with_hybrid_retrieval(lc_embeddings, tmp_path, persistent):
    path = tmp_path / "s" if persistent else None
    store = qlc.QuantizedVectorStore(lc_embeddings, codec="int4", path=path, retrieval_mode="hybrid")
    records = InMemoryRecordManager(namespace="notes")
    records.create_schema()
    kwargs = dict(
        cleanup="incremental", source_id_key="source", key_encoder="sha256", batch_size=2
    )  # a source per batch
    assert index(lc_docs(), records, store, **kwargs)["num_added"] == len(NOTES)

    # an identifier a small model cannot read: keyword finds it first, hybrid keeps it
    assert notes_of(store.keyword_search("E5003", k=1)) == ["e5003"]
    assert notes_of(store.similarity_search("what does E5003 mean", k=2))[0] == "e5003"  # retrieval_mode
    retriever = store.as_retriever(search_type="hybrid", search_kwargs={"k": 2, "sparse_top_k": 8})
    assert notes_of(retriever.invoke("2.3.1 memory leak"))[0] == "v231"
    assert notes_of(store.as_retriever(search_type="keyword", search_kwargs={"k": 3}).invoke("HMAC")) == ["auth"]
    # filters apply in both branches before top-k
    hits = store.hybrid_search("upload token", k=3, filter={"source": "releases.md"})
    assert set(notes_of(hits)) == {"v231", "v240"}

    # a changed chunk: the new words are found at once, the old ones are gone
    changed = lc_docs(e4012="Error E4012 now means the upload was rejected by a virus scanner.")
    assert index(changed, records, store, **kwargs)["num_deleted"] == 1
    assert notes_of(store.keyword_search("scanner", k=3)) == ["e4012"]
    assert store.keyword_search("expired", k=3) == []
    assert store.count() == len(NOTES) and store.store.verify() == []

    # the reference: the same fusion of the two branches, taken one by one
    query = "request a new token"
    dense = [(store.store.get([d.id])[0].key, s) for d, s in _dense(store, query, 16)]
    keyword = [(store.store.get([d.id])[0].key, s) for d, s in store.keyword_search_with_score(query, k=16)]
    expected = [key for key, _ in fuse([dense, keyword], (1.0, 1.0))[:3]]
    assert [store.store.get([d.id])[0].key for d in store.hybrid_search(query, k=3)] == expected

    if persistent:
        store.close()
        reopened = qlc.QuantizedVectorStore.load(path, lc_embeddings, retrieval_mode="keyword")
        assert notes_of(reopened.similarity_search("scanner", k=1)) == ["e4012"]
        reopened.close()


def _dense(store, query, k):
    return store.similarity_search_with_score_by_vector(store.embeddings.embed_query(query), k=k)


def test_langchain_async_scores_and_mode_checks(lc_embeddings):
    store = qlc.QuantizedVectorStore.from_documents(lc_docs(), lc_embeddings, codec="binary", retrieval_mode="keyword")
    assert notes_of(asyncio.run(store.akeyword_search("HTTPS_PROXY", k=1))) == ["proxy"]
    assert notes_of(asyncio.run(store.ahybrid_search("corporate proxy", k=1, alpha=0.5))) == ["proxy"]
    scored = store.similarity_search_with_score("proxy server", k=2)
    assert scored[0][1] > 0 and notes_of([scored[0][0]]) == ["proxy"]  # BM25 scores, best first
    with pytest.raises(ValueError, match="retrieval_mode is 'keyword'"):
        store.similarity_search_with_relevance_scores("proxy")
    with pytest.raises(ValueError, match="retrieval_mode must be one of"):
        qlc.QuantizedVectorStore(lc_embeddings, retrieval_mode="sparse")
    with pytest.raises(TypeError, match="unexpected keyword argument 'alpah'"):
        store.hybrid_search("proxy", alpah=0.5)
    syntax = store.keyword_search_with_score('"NEAR" AND (x* OR -y): HMAC^', k=8)
    assert syntax and syntax == store.keyword_search_with_score("near and x or y hmac", k=8)  # plain words


def test_langchain_records_api(lc_embeddings):
    store = qlc.QuantizedVectorStore(lc_embeddings, codec="int4")
    ids = store.add_documents(lc_docs())
    by_note = dict(zip(NOTES, ids))
    assert store.count() == 8 and store.count({"source": "network.md"}) == 2
    page = store.get(filter={"source": {"$in": ["errors.md", "releases.md"]}}, limit=2, offset=1)
    assert notes_of(page) == ["e5003", "v231"]
    vectors_before = store.store.vectors(store.store.get(ids))
    assert store.update_metadata([by_note["cache"]], [{"source": "network.md", "note": "cache"}]) == [by_note["cache"]]
    assert store.count({"source": "network.md"}) == 3  # the filter sees it at once
    assert np.array_equal(store.store.vectors(store.store.get(ids)), vectors_before)  # not embedded again
    assert notes_of(store.keyword_search("cached", k=2, filter={"source": "network.md"})) == ["cache"]
    assert store.delete(filter={"source": "network.md"}) is True
    assert store.count() == 5 and store.count({"source": "network.md"}) == 0
    store.delete([by_note["auth"], by_note["v231"]], filter={"source": "security.md"})  # ids that match it only
    assert sorted(notes_of(store.get())) == ["e4012", "e5003", "v231", "v240"]


# --------------------------------------------------------------------------------- LlamaIndex
def li_documents() -> list[Document]:
    return [Document(text=text, id_=k, metadata={"source": src}) for k, (src, text) in NOTES.items()]


@pytest.fixture(params=["int4", "binary"])
def li_index(request, li_embed, tmp_path):
    store = qli.QuantizedVectorStore(codec=request.param, path=tmp_path / "s")
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), li_embed], vector_store=store
    )
    for start in range(0, len(NOTES), 3):  # in batches
        pipeline.run(documents=li_documents()[start : start + 3])
    yield VectorStoreIndex.from_vector_store(store, embed_model=li_embed), store
    store.close()


def test_llama_index_hybrid_retriever_and_query_engine(li_index):
    index, store = li_index
    retriever = index.as_retriever(vector_store_query_mode="hybrid", alpha=0.5, similarity_top_k=2)
    assert retriever.retrieve("what does E5003 mean")[0].node.ref_doc_id == "e5003"
    rrf = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=4, sparse_top_k=8, hybrid_top_k=3)
    assert len(rrf.retrieve("2.3.1 memory leak")) == 3
    assert rrf.retrieve("2.3.1 memory leak")[0].node.ref_doc_id == "v231"
    for mode in ("sparse", "text_search"):
        keyword = index.as_retriever(vector_store_query_mode=mode, similarity_top_k=2)
        assert [n.node.ref_doc_id for n in keyword.retrieve("HMAC rotated")] == ["auth"]
    filtered = index.as_retriever(
        vector_store_query_mode="hybrid",
        alpha=0.5,
        similarity_top_k=4,
        filters=MetadataFilters(
            filters=[MetadataFilter(key="source", value="releases.md", operator=FilterOperator.EQ)]
        ),
    )
    assert {n.node.ref_doc_id for n in filtered.retrieve("upload token")} == {"v231", "v240"}
    engine = index.as_query_engine(vector_store_query_mode="hybrid", alpha=0.5, similarity_top_k=2, llm=MockLLM())
    response = engine.query("which error means the quota is exceeded")
    assert response.source_nodes[0].node.ref_doc_id == "e5003"


def test_llama_index_alpha_ends_are_one_branch(li_index):
    """Relative-score fusion min-max scales each branch (LlamaIndex's convention: a branch's
    last candidate scales to 0), so at alpha 0 the documents that score above 0 are the keyword
    ranking's head, in its order, and at alpha 1 the dense ranking's."""
    _, store = li_index
    for alpha, branch in ((0.0, VectorStoreQueryMode.SPARSE), (1.0, VectorStoreQueryMode.DEFAULT)):
        fused = store.query(_query(VectorStoreQueryMode.HYBRID, "token", alpha=alpha, top=4))
        alone = store.query(_query(branch, "token", top=4))
        head = [i for i, s in zip(fused.ids, fused.similarities) if s > 0]
        assert head and head == alone.ids[: len(head)], alpha
        assert len(head) >= len(alone.ids) - 1  # all but the branch's last, scaled to 0


def _query(mode, text, alpha=None, top=2):
    vector = np.random.default_rng(7).standard_normal(384).astype(np.float32).tolist()
    return VectorStoreQuery(
        query_embedding=vector, query_str=text, mode=mode, alpha=alpha, similarity_top_k=top, sparse_top_k=top
    )


def test_llama_index_records_api(li_index):
    _, store = li_index
    nodes = store.get_nodes()
    assert store.count() == len(nodes) == len(NOTES)
    target = next(n for n in nodes if n.ref_doc_id == "cache")
    metadata = dict(target.metadata, source="network.md")
    assert store.update_metadata([target.node_id], [metadata]) == [target.node_id]
    network = MetadataFilters(filters=[MetadataFilter(key="source", value="network.md")])
    assert {n.ref_doc_id for n in store.get_nodes(filters=network)} == {"proxy", "timeout", "cache"}
    store.delete_nodes(filters=network)
    assert store.count() == len(NOTES) - 3 and store.client.verify() == []


def test_adapters_without_a_keyword_index_say_so(lc_embeddings, tmp_path):
    """``keywords=None``: a dense-only store (no keyword table); keyword and hybrid searches
    raise a ``ValueError`` that says why, dense search works."""
    lc = qlc.QuantizedVectorStore(lc_embeddings, codec="int4", path=tmp_path / "lc", keywords=None)
    lc.add_documents(lc_docs())
    assert lc.store.settings["keywords"] is None and len(lc.similarity_search("proxy", k=2)) == 2
    for call in (lc.keyword_search, lc.hybrid_search):
        with pytest.raises(ValueError, match="has no keyword index"):
            call("proxy")
    li = qli.QuantizedVectorStore(codec="int4", dim=384, keywords=None)
    assert li.client.settings["keywords"] is None
    with pytest.raises(ValueError, match="has no keyword index"):
        li.query(_query(VectorStoreQueryMode.SPARSE, "proxy"))
    with pytest.raises(ValueError, match="keywords must be None or one of"):
        qli.QuantizedVectorStore(codec="int4", dim=384, keywords="porter")
