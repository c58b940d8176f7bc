"""Both framework adapters on a ShardedStore (real local Ray, real MiniLM): the langchain-tests
vector store suite, and end to end next to the same adapter on one QuantizedStore: add
documents, filtered search, delete, persistence."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="the distributed tests need the 'ray' extra: pip install 'quant-retriever[ray]'"
)

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402
from llama_index.core import Document as LlamaDocument  # noqa: E402
from llama_index.core import Settings, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters  # noqa: E402

from quant_retriever import load_encoder  # noqa: E402
from quant_retriever.distributed import ShardedStore  # noqa: E402
from quant_retriever.langchain import QuantizedEmbeddings  # noqa: E402
from quant_retriever.langchain import QuantizedVectorStore as LangChainStore  # noqa: E402
from quant_retriever.llama_index import QuantizedEmbedding  # noqa: E402
from quant_retriever.llama_index import QuantizedVectorStore as LlamaStore  # noqa: E402
from quant_retriever.store import QuantizedStore  # noqa: E402

QUERIES = ["parse a JSON document", "open a file with a context manager", "random numbers"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return load_encoder(minilm_path, precision="fp32")


@pytest.fixture(scope="module")
def docs(corpus_docs):
    """(id, text, metadata) of up to 14 stdlib docstrings from each of six modules (cut to 300
    characters); metadata: the module and a number."""
    picked, per_module = [], {}
    for d in corpus_docs:
        module = d.id.split(".")[0]
        if module in ("json", "os", "random", "csv", "heapq", "shutil") and per_module.get(module, 0) < 14:
            per_module[module] = per_module.get(module, 0) + 1
            picked.append((d.id, d.text[:300], {"module": module, "i": len(picked)}))  # short: fast to embed
    return picked


# ---------------------------------------------------------------------------- LangChain
@pytest.fixture(scope="module")
def shared_store():
    store = ShardedStore(shards=2, metric="cosine")  # the metric the adapters give their own stores
    yield store
    store.close()


class TestShardedLangChainStandard(VectorStoreIntegrationTests):
    """The langchain-tests suite on one sharded store, emptied before each test."""

    @pytest.fixture()
    def vectorstore(self, shared_store):
        shared_store.clear()
        store = LangChainStore(self.get_embeddings(), store=shared_store)
        assert store.store is shared_store  # an empty store is still the one given
        yield store


def _lc_hits(store, query: str, flt) -> list[tuple[str, float]]:
    return [(d.id, s) for d, s in store.similarity_search_with_score(query, k=5, filter=flt)]


def test_langchain_end_to_end_on_a_persistent_sharded_store(tmp_path, encoder, docs):
    emb = QuantizedEmbeddings(encoder=encoder)
    documents = [Document(id=i, page_content=t, metadata=m) for i, t, m in docs]
    sharded = LangChainStore(emb, store=ShardedStore(codec="int8", path=tmp_path / "lc", shards=2, metric="cosine"))
    sharded.add_documents(documents[:50])
    sharded.add_documents(documents[40:])  # 40..49 again: replaced in place
    # the reference: the same adapter on one store holding the same vectors (embedded once)
    single = LangChainStore(emb, store=QuantizedStore(codec="int8"))
    ids, texts, metas = zip(*docs)
    single.store.upsert(ids, sharded.store.vectors(sharded.store.get(ids)), texts, metas)
    assert min(sharded.store.shard_sizes()) > 0 and len(sharded.store) == len(docs)
    filters = [None, {"module": "json"}, {"i": {"$gte": 40}}, lambda d: d.metadata["module"] in ("os", "random")]
    for query in QUERIES:
        for flt in filters:
            got, want = _lc_hits(sharded, query, flt), _lc_hits(single, query, flt)
            assert [i for i, _ in got] == [i for i, _ in want] and len(got) > 0
            # the reference holds the sharded store's INT8 reconstructions, quantized once more
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=2e-3)
        assert [d.id for d in sharded.max_marginal_relevance_search(query, k=3)] == [
            d.id for d in single.max_marginal_relevance_search(query, k=3)
        ]
    retriever = sharded.as_retriever(search_kwargs={"k": 2, "filter": {"module": "json"}})
    assert {d.metadata["module"] for d in retriever.invoke(QUERIES[0])} == {"json"}

    gone = [i for i, _, m in docs if m["module"] == "json"]
    sharded.delete(gone)
    single.delete(gone)
    assert sharded.get_by_ids(gone) == [] and _lc_hits(sharded, QUERIES[0], {"module": "json"}) == []
    before = _lc_hits(sharded, QUERIES[1], None)
    assert [i for i, _ in before] == [i for i, _ in _lc_hits(single, QUERIES[1], None)]
    sharded.close()

    reopened = LangChainStore(emb, store=ShardedStore.open(tmp_path / "lc"))
    assert _lc_hits(reopened, QUERIES[1], None) == before
    assert reopened.get_by_ids([docs[0][0]]) == [documents[0]]
    reopened.close()


def test_langchain_keyword_hybrid_and_records_api_on_a_sharded_store(encoder, docs):
    """The modes and the records API route through the sharded store: the same documents
    match a keyword query as on one store (BM25's statistics are per shard, the matches are
    not), filters hold in every mode, and metadata updates, counts, pages and deletes by filter
    agree with one store."""
    emb = QuantizedEmbeddings(encoder=encoder)
    documents = [Document(id=i, page_content=t, metadata=m) for i, t, m in docs]
    sharded = LangChainStore(emb, store=ShardedStore(codec="int4", shards=2, metric="cosine"), retrieval_mode="hybrid")
    single = LangChainStore(emb, codec="int4", retrieval_mode="hybrid")
    for store in (sharded, single):
        store.add_documents(documents)
    for query in QUERIES + ["JSONDecodeError", "heappush heappop"]:
        assert {d.id for d in sharded.keyword_search(query, k=200)} == {
            d.id for d in single.keyword_search(query, k=200)
        }
        for flt in ({"module": "json"}, {"i": {"$lt": 30}}):
            hits = sharded.similarity_search(query, k=4, filter=flt)  # retrieval_mode="hybrid"
            assert hits and all(sharded.get(filter=flt, limit=None).count(d) for d in hits)
    assert sharded.as_retriever(search_type="hybrid", search_kwargs={"k": 3, "alpha": 0.5}).invoke(QUERIES[0])
    os_ids = [d.id for d in single.get(filter={"module": "os"})]
    for store in (sharded, single):
        assert store.update_metadata(os_ids[:3], [{"module": "json", "i": -1}] * 3) == os_ids[:3]
    assert sharded.count({"module": "json"}) == single.count({"module": "json"}) == 17
    moved = sharded.get(filter={"i": -1})  # the shards' records, merged by key
    assert sorted(d.id for d in moved) == sorted(os_ids[:3])
    assert sharded.get(filter={"i": -1}, limit=2, offset=1) == moved[1:3]
    sharded.delete(filter={"module": "json"})
    single.delete(filter={"module": "json"})
    assert sharded.count() == single.count() == len(docs) - 17 and sharded.store.verify() == []
    sharded.close()


# ---------------------------------------------------------------------------- LlamaIndex
def _li_hits(index, query: str, filters) -> list[tuple[str, float]]:
    return [
        (h.node.ref_doc_id, h.score) for h in index.as_retriever(similarity_top_k=5, filters=filters).retrieve(query)
    ]


def test_llama_index_end_to_end_on_a_persistent_sharded_store(tmp_path, encoder, docs):
    Settings.llm = MockLLM()
    embed = QuantizedEmbedding(encoder=encoder)
    documents = [LlamaDocument(text=t, id_=i, metadata=m) for i, t, m in docs]
    sharded_store = LlamaStore(store=ShardedStore(codec="int8", path=tmp_path / "li", shards=2, metric="cosine"))
    assert sharded_store.path == str(tmp_path / "li")
    sharded = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=sharded_store), embed_model=embed
    )
    # the reference: one store holding the same nodes and vectors (embedded once)
    nodes = sharded_store.get_nodes()
    for node, vector in zip(nodes, sharded_store.client.vectors(sharded_store.client.get([n.node_id for n in nodes]))):
        node.embedding = vector.tolist()
    single = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=LlamaStore(codec="int8")), embed_model=embed
    )
    indexes = [sharded, single]
    filters = [
        None,
        MetadataFilters(filters=[MetadataFilter(key="module", value="json")]),
        MetadataFilters(filters=[MetadataFilter(key="i", value=60, operator=FilterOperator.GTE)]),
    ]
    for query in QUERIES:
        for flt in filters:
            got, want = (_li_hits(index, query, flt) for index in indexes)
            assert [i for i, _ in got] == [i for i, _ in want] and len(got) > 0
            # the reference holds the sharded store's INT8 reconstructions, quantized once more
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=2e-3)
    response = indexes[0].as_query_engine(similarity_top_k=2).query(QUERIES[0])
    assert [n.node.ref_doc_id for n in response.source_nodes] == [
        i for i, _ in _li_hits(indexes[1], QUERIES[0], None)[:2]
    ]

    gone = docs[3][0]
    for index in indexes:
        index.delete_ref_doc(gone)
    assert gone not in {i for i, _ in _li_hits(indexes[0], docs[3][1], None)}
    before = _li_hits(indexes[0], QUERIES[2], None)
    indexes[0].storage_context.persist(str(tmp_path / "li-storage"))  # the store itself is already on disk
    sharded_store.close()

    reopened = VectorStoreIndex.from_vector_store(
        LlamaStore(store=ShardedStore.open(tmp_path / "li")), embed_model=embed
    )
    assert _li_hits(reopened, QUERIES[2], None) == before
    reopened.vector_store.close()
    with pytest.raises(ValueError, match="either store= or path="):
        LlamaStore(store=sharded_store.client, path=tmp_path / "other")
