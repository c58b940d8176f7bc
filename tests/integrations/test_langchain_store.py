"""The LangChain vector store and retriever: the langchain-tests standard suites for every
codec (in memory and persistent), plus filters, MMR, relevance scores and reopening."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

from quant_retriever.langchain import QuantizedRetriever, QuantizedVectorStore


def _suite(codec: str, persistent: bool):
    class Suite(VectorStoreIntegrationTests):
        @pytest.fixture()
        def vectorstore(self, tmp_path):
            path = tmp_path / "store" if persistent else None
            yield QuantizedVectorStore(self.get_embeddings(), codec=codec, path=path)

    Suite.__name__ = f"TestStandard_{codec}_{'disk' if persistent else 'memory'}"
    return Suite


for _codec in ("int4", "binary", "int8", "fp16"):
    for _persistent in (False, True):
        _cls = _suite(_codec, _persistent)
        globals()[_cls.__name__] = _cls


class TestRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[QuantizedRetriever]:
        return QuantizedRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        store = QuantizedVectorStore(DeterministicFakeEmbedding(size=16))
        store.add_texts([f"document number {i}" for i in range(10)])
        return {"vectorstore": store}

    @property
    def retriever_query_example(self) -> str:
        return "document number 3"


@pytest.fixture
def fruit_store():
    emb = DeterministicFakeEmbedding(size=32)
    store = QuantizedVectorStore(emb, codec="int4")
    docs = [
        Document(id="apple", page_content="apple", metadata={"kind": "fruit", "price": 1.0, "tags": ["red", "sweet"]}),
        Document(
            id="lemon", page_content="lemon", metadata={"kind": "fruit", "price": 0.5, "tags": ["yellow", "sour"]}
        ),
        Document(id="leek", page_content="leek", metadata={"kind": "vegetable", "price": 2.0, "tags": []}),
        Document(id="kale", page_content="kale", metadata={"kind": "vegetable", "price": 3.0, "name": "Curly Kale"}),
    ]
    store.add_documents(docs)
    return store, emb


@pytest.mark.parametrize(
    "flt, expected",
    [
        ({"kind": "fruit"}, {"apple", "lemon"}),
        ({"kind": {"$ne": "fruit"}}, {"leek", "kale"}),
        ({"price": {"$gt": 0.5, "$lte": 2.0}}, {"apple", "leek"}),
        ({"price": {"$gte": 3}}, {"kale"}),
        ({"price": {"$lt": 1}}, {"lemon"}),
        ({"kind": {"$in": ["vegetable"]}}, {"leek", "kale"}),
        ({"kind": {"$nin": ["vegetable"]}}, {"apple", "lemon"}),
        ({"tags": {"$contains": "sour"}}, {"lemon"}),
        ({"tags": {"$is_empty": True}}, {"leek", "kale"}),
        ({"tags": {"$is_empty": False}}, {"apple", "lemon"}),
        ({"name": {"$like": "%Kale"}}, {"kale"}),
        ({"name": {"$like": "Kale"}}, set()),  # SQL LIKE: the whole value must match
        ({"name": {"$like": "Curly _ale"}}, {"kale"}),
        ({"name": {"$ilike": "curly%"}}, {"kale"}),
        ({"name": {"$substring": "Kale"}}, {"kale"}),
        ({"name": {"$isubstring": "kALE"}}, {"kale"}),
        ({"name": {"$exists": True}}, {"kale"}),
        ({"name": {"$exists": False}}, {"apple", "lemon", "leek"}),
        ({"name": None}, {"apple", "lemon", "leek"}),  # a missing key is None
        ({"$dollar key": {"$ne": 1}}, {"apple", "lemon", "leek", "kale"}),  # "$..." keys are metadata keys
        ({"$or": [{"kind": "vegetable", "price": {"$gt": 2.5}}, {"tags": {"$contains": "red"}}]}, {"kale", "apple"}),
        ({"$not": {"kind": "fruit"}}, {"leek", "kale"}),
        ({"$and": [{"kind": "fruit"}, {"price": {"$lt": 0.9}}]}, {"lemon"}),
    ],
)
def test_dict_filters_give_exact_ids(fruit_store, flt, expected):
    store, _ = fruit_store
    assert {d.id for d in store.similarity_search("apple", k=10, filter=flt)} == expected


def test_callable_filter_and_filter_before_top_k(fruit_store):
    store, _ = fruit_store
    assert [
        d.id for d in store.similarity_search("apple", k=1, filter=lambda d: d.metadata["kind"] == "vegetable")
    ] in (
        ["leek"],
        ["kale"],
    )
    assert len(store.similarity_search("apple", k=2, filter={"kind": "vegetable"})) == 2


def test_unknown_operators_raise(fruit_store):
    store, _ = fruit_store
    with pytest.raises(ValueError, match="Invalid operator: '\\$regex'"):
        store.similarity_search("apple", filter={"kind": {"$regex": "f.*"}})
    with pytest.raises(ValueError, match="Invalid operator"):
        store.similarity_search("apple", filter={"$xor": []})


def test_scores_are_cosines_as_in_memory_vector_store():
    """Unnormalised embeddings (DeterministicFakeEmbedding's have norms near sqrt(dim)):
    the scores are InMemoryVectorStore's cosine similarities, and relevance scores spread
    over (0, 1) instead of clamping to 0 or 1, so a score threshold works."""
    emb = DeterministicFakeEmbedding(size=32)
    texts = [f"document {i}" for i in range(50)]
    ours = QuantizedVectorStore(emb, codec="int8")
    ours.add_texts(texts, ids=texts)
    reference = InMemoryVectorStore(emb)
    reference.add_texts(texts, ids=texts)
    for query in ("document 7", "something else"):
        expected = {d.id: s for d, s in reference.similarity_search_with_score(query, k=50)}
        got = ours.similarity_search_with_score(query, k=50)
        assert {d.id for d, _ in got} == set(expected)
        assert all(s == pytest.approx(expected[d.id], abs=0.01) for d, s in got)
    relevance = [s for _, s in ours.similarity_search_with_relevance_scores("something else", k=50)]
    assert all(0.0 < s < 1.0 for s in relevance) and max(relevance) - min(relevance) > 0.3
    [(doc, score)] = ours.similarity_search_with_score("document 7", k=1)
    assert doc.id == "document 7" and score == pytest.approx(1.0, abs=0.01) and score <= 1.0  # clamped cosine
    retriever = ours.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99, "k": 5}
    )
    assert [d.id for d in retriever.invoke("document 7")] == ["document 7"]
    top_k = QuantizedRetriever(vectorstore=ours, k=5, search_type="similarity_score_threshold", score_threshold=0.99)
    assert [d.id for d in top_k.invoke("document 7")] == ["document 7"]


def test_self_matches_never_score_above_one(fruit_store):
    store, emb = fruit_store
    for text in ("apple", "lemon", "leek", "kale"):
        [(doc, score)] = store.similarity_search_with_score(text, k=1)
        assert doc.id == text and 0.99 <= score <= 1.0
        [(_, rel)] = store.similarity_search_with_relevance_scores(text, k=1)
        assert 0.995 <= rel <= 1.0


def test_k_zero_returns_nothing_as_in_memory_vector_store(fruit_store):
    store, emb = fruit_store
    reference = InMemoryVectorStore(emb)
    reference.add_texts(["apple"])
    assert reference.similarity_search("apple", k=0) == []
    q = emb.embed_query("apple")
    assert store.similarity_search("apple", k=0) == []
    assert store.similarity_search_with_score("apple", k=0) == []
    assert store.similarity_search_by_vector(q, k=0) == []
    assert store.max_marginal_relevance_search("apple", k=0) == []
    assert QuantizedRetriever(vectorstore=store, k=0).invoke("apple") == []


class _Normalised(DeterministicFakeEmbedding):
    def __init__(self, base: DeterministicFakeEmbedding):
        super().__init__(size=base.size)

    def embed_documents(self, texts):
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text):
        v = np.array(super().embed_query(text))
        return (v / np.linalg.norm(v)).tolist()


def test_mmr_prefers_diverse_results():
    emb = _Normalised(DeterministicFakeEmbedding(size=16))
    store = QuantizedVectorStore(emb, codec="int4")
    base = np.array(emb.embed_query("query"))
    near = base + 0.05 * np.array(emb.embed_query("noise"))
    other = np.array(emb.embed_query("far away"))
    vectors = [near, near * 1.0001, other]
    store.store.upsert(["a", "a-dup", "b"], np.array(vectors, dtype=np.float32), ["a", "a dup", "b"], None)
    plain = [d.id for d in store.similarity_search_by_vector(base.tolist(), k=2)]
    mmr = [d.id for d in store.max_marginal_relevance_search_by_vector(base.tolist(), k=2, fetch_k=3, lambda_mult=0.1)]
    assert set(plain) == {"a", "a-dup"}
    assert "b" in mmr
    retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 3, "lambda_mult": 0.1})
    assert "b" in [d.id for d in retriever.invoke("query")]


def test_documents_are_not_mutated_and_upsert_by_document_id(fruit_store):
    store, _ = fruit_store
    doc = Document(id="apple", page_content="green apple", metadata={"kind": "fruit"})
    store.add_documents([doc])
    assert doc == Document(id="apple", page_content="green apple", metadata={"kind": "fruit"})
    assert store.get_by_ids(["apple"]) == [Document(id="apple", page_content="green apple", metadata={"kind": "fruit"})]
    assert len(store.store) == 4


def test_persistent_store_reopens(tmp_path):
    emb = DeterministicFakeEmbedding(size=12)
    store = QuantizedVectorStore.from_texts(
        ["alpha", "beta", "gamma"],
        emb,
        metadatas=[{"n": 1}, {"n": 2}, {"n": 3}],
        ids=["a", "b", "c"],
        codec="binary",
        path=tmp_path / "lc",
    )
    store.delete(["b"])
    before = store.similarity_search("gamma", k=5)
    again = QuantizedVectorStore.load(tmp_path / "lc", emb)  # a notebook cell run twice
    assert again.store is store.store and again.similarity_search("gamma", k=5) == before
    again.close()
    store.close()
    reopened = QuantizedVectorStore.load(tmp_path / "lc", emb)
    assert reopened.similarity_search("gamma", k=5) == before
    assert {d.id for d in reopened.similarity_search("alpha", k=5)} == {"a", "c"}
    assert reopened.get_by_ids(["c"]) == [Document(id="c", page_content="gamma", metadata={"n": 3})]


async def test_async_methods(fruit_store):
    store, _ = fruit_store
    ids = await store.aadd_texts(["plum"], [{"kind": "fruit"}], ids=["plum"])
    assert ids == ["plum"]
    docs = await store.asimilarity_search("plum", k=1)
    assert docs[0].id == "plum"
    assert [d.id for d in await store.aget_by_ids(["plum"])] == ["plum"]
    await store.adelete(["plum"])
    assert await store.aget_by_ids(["plum"]) == []
    mmr = await store.amax_marginal_relevance_search("apple", k=2)
    assert len(mmr) == 2


def test_bad_arguments():
    emb = DeterministicFakeEmbedding(size=4)
    with pytest.raises(TypeError, match="Embeddings"):
        QuantizedVectorStore("not embeddings")
    with pytest.raises(ValueError, match="rescore_multiplier"):
        QuantizedVectorStore(emb, rescore_multiplier=0)
    with pytest.raises(ValueError, match="codec"):
        QuantizedVectorStore(emb, codec="pq")
    store = QuantizedVectorStore(emb)
    with pytest.raises(ValueError, match="Got 1 ids and 2 texts"):
        store.add_texts(["a", "b"], ids=["1"])
    store.add_texts(["a"], ids=["a"])
    with pytest.raises(TypeError, match="filter must be a dict"):
        store.similarity_search("a", filter=["kind"])
    with pytest.raises(TypeError, match="single str"):
        store.add_texts("abc")
    assert store.get_by_ids(["a"]) != []


def test_a_bare_string_id_is_refused_never_split(fruit_store):
    """delete("abc") once deleted "a", "b" and "c"; InMemoryVectorStore still does."""
    store, _ = fruit_store
    store.add_texts(["x", "y", "z"], ids=["a", "b", "c"])
    with pytest.raises(TypeError, match="got the single str 'abc'"):
        store.delete("abc")
    with pytest.raises(TypeError, match="single str"):
        store.get_by_ids("abc")
    assert len(store.store) == 7
    store.delete(["abc", "a"])
    assert sorted(d.id for d in store.get_by_ids(["a", "b", "c"])) == ["b", "c"]


def test_reopening_by_constructor_points_to_load(tmp_path):
    emb = DeterministicFakeEmbedding(size=4)
    QuantizedVectorStore(emb, path=tmp_path / "s").close()
    with pytest.raises(ValueError, match=r"QuantizedVectorStore\.load\(path, embedding\)"):
        QuantizedVectorStore(emb, path=tmp_path / "s")
    QuantizedVectorStore.load(tmp_path / "s", emb).close()
