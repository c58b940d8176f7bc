"""The LlamaIndex vector store: every method, every FilterOperator and condition, doc/node id
restrictions, MMR, persistence, and use inside VectorStoreIndex and its query engines."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from quant_retriever.llama_index import QuantizedVectorStore


class HashEmbedding(BaseEmbedding):
    """Deterministic word-hash bag-of-words embedding: texts sharing words are similar."""

    dim: int = 64

    def _vec(self, text: str) -> list[float]:
        v = np.zeros(self.dim)
        for word in text.lower().split():
            h = int(hashlib.md5(word.strip(".,?").encode()).hexdigest(), 16)
            v[h % self.dim] += 1.0
        n = np.linalg.norm(v)
        return (v / n if n else v).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)


def unit(seed: int, dim: int = 16) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(dim)
    return (v / np.linalg.norm(v)).tolist()


def node(node_id: str, seed: int, ref: str, **metadata) -> TextNode:
    n = TextNode(id_=node_id, text=f"text of {node_id}", metadata=metadata, embedding=unit(seed))
    n.relationships = {}
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

    n.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
    return n


@pytest.fixture(params=["int4", "binary", "int8"])
def store(request):
    s = QuantizedVectorStore(codec=request.param)
    s.add(
        [
            node("n1", 1, "docA", color="red", n=1, tags=["x", "y"], title="Quantized Retrieval"),
            node("n2", 2, "docA", color="blue", n=2, tags=["y"], title="binary codes"),
            node("n3", 3, "docB", color="red", n=3.5, tags=[], title=""),
            node("n4", 4, "docC", n=7),
        ]
    )
    return s


def query_ids(store, filters=None, k=10, **kw) -> set[str]:
    res = store.query(VectorStoreQuery(query_embedding=unit(9), similarity_top_k=k, filters=filters, **kw))
    assert len(res.nodes) == len(res.ids) == len(res.similarities)
    return set(res.ids)


F = FilterOperator
CASES = [
    ([MetadataFilter(key="color", value="red")], None, {"n1", "n3"}),
    ([MetadataFilter(key="color", value="red", operator=F.NE)], None, {"n2", "n4"}),
    ([MetadataFilter(key="n", value=2, operator=F.GT)], None, {"n3", "n4"}),
    ([MetadataFilter(key="n", value=2, operator=F.GTE)], None, {"n2", "n3", "n4"}),
    ([MetadataFilter(key="n", value=3.5, operator=F.LT)], None, {"n1", "n2"}),
    ([MetadataFilter(key="n", value=3.5, operator=F.LTE)], None, {"n1", "n2", "n3"}),
    ([MetadataFilter(key="color", value=["blue", "green"], operator=F.IN)], None, {"n2"}),
    ([MetadataFilter(key="color", value=["blue"], operator=F.NIN)], None, {"n1", "n3", "n4"}),
    ([MetadataFilter(key="tags", value=["x", "q"], operator=F.ANY)], None, {"n1"}),
    ([MetadataFilter(key="tags", value=["y"], operator=F.ALL)], None, {"n1", "n2"}),
    ([MetadataFilter(key="tags", value="y", operator=F.CONTAINS)], None, {"n1", "n2"}),
    ([MetadataFilter(key="title", value="codes", operator=F.TEXT_MATCH)], None, {"n2"}),
    ([MetadataFilter(key="title", value="quantized", operator=F.TEXT_MATCH_INSENSITIVE)], None, {"n1"}),
    ([MetadataFilter(key="title", value=None, operator=F.IS_EMPTY)], None, {"n3", "n4"}),
    (
        [MetadataFilter(key="color", value="red"), MetadataFilter(key="n", value=2, operator=F.GT)],
        FilterCondition.AND,
        {"n3"},
    ),
    ([MetadataFilter(key="color", value="blue"), MetadataFilter(key="n", value=7)], FilterCondition.OR, {"n2", "n4"}),
    ([MetadataFilter(key="color", value="red"), MetadataFilter(key="n", value=7)], FilterCondition.NOT, {"n2"}),
    (
        [
            MetadataFilters(filters=[MetadataFilter(key="color", value="red"), MetadataFilter(key="n", value=1)]),
            MetadataFilter(key="n", value=7),
        ],
        FilterCondition.OR,
        {"n1", "n4"},
    ),
]


@pytest.mark.parametrize("filters, condition, expected", CASES, ids=[str(i) for i in range(len(CASES))])
def test_every_operator_and_condition(store, filters, condition, expected):
    mf = MetadataFilters(filters=filters, condition=condition or FilterCondition.AND)
    assert query_ids(store, mf) == expected
    assert {n.node_id for n in store.get_nodes(filters=mf)} == expected


def test_doc_and_node_id_restrictions(store):
    assert query_ids(store, doc_ids=["docA"]) == {"n1", "n2"}
    assert query_ids(store, node_ids=["n2", "n4", "nope"]) == {"n2", "n4"}
    assert query_ids(store, node_ids=[]) == {"n1", "n2", "n3", "n4"}  # empty list: no restriction
    assert query_ids(store, k=1, doc_ids=["docB"]) == {"n3"}  # restriction applies before top-k


def test_nodes_round_trip_and_upsert(store):
    [n1] = store.get_nodes(node_ids=["n1"])
    assert n1.get_content() == "text of n1" and n1.metadata["color"] == "red" and n1.ref_doc_id == "docA"
    store.add([TextNode(id_="n1", text="replaced", metadata={"color": "green"}, embedding=unit(1))])
    [n1] = store.get_nodes(node_ids=["n1"])
    assert n1.get_content() == "replaced" and n1.metadata == {"color": "green"}
    assert len(store.client) == 4
    assert store.get_nodes(node_ids=[]) == []


def test_delete_ref_doc_delete_nodes_and_clear(store):
    store.delete("docA")
    assert {n.node_id for n in store.get_nodes()} == {"n3", "n4"}
    store.delete_nodes(node_ids=["n3", "n4"], filters=MetadataFilters(filters=[MetadataFilter(key="n", value=7)]))
    assert {n.node_id for n in store.get_nodes()} == {"n3"}
    store.clear()
    assert store.get_nodes() == [] and query_ids(store) == set()


def test_mmr_and_unsupported_modes(store):
    res = store.query(
        VectorStoreQuery(query_embedding=unit(1), similarity_top_k=2, mode=VectorStoreQueryMode.MMR, mmr_threshold=0.5)
    )
    assert len(res.ids) == 2 and res.ids[0] == "n1"
    with pytest.raises(ValueError, match="query modes 'default', 'mmr', 'hybrid', 'sparse', 'text_search'; got"):
        store.query(VectorStoreQuery(query_embedding=unit(1), mode=VectorStoreQueryMode.SEMANTIC_HYBRID))
    with pytest.raises(ValueError, match="needs query_str"):
        store.query(VectorStoreQuery(query_embedding=unit(1), mode=VectorStoreQueryMode.HYBRID))
    with pytest.raises(ValueError, match="embeddings"):
        store.add([TextNode(id_="x", text="no embedding")])


async def test_async_variants(store):
    await store.async_add([node("n5", 5, "docD", color="teal")])
    res = await store.aquery(VectorStoreQuery(query_embedding=unit(5), similarity_top_k=1))
    assert res.ids == ["n5"]
    await store.adelete("docD")
    assert [n.node_id for n in await store.aget_nodes(node_ids=["n5"])] == []
    await store.adelete_nodes(node_ids=["n1"])
    await store.aclear()
    assert store.get_nodes() == []


def test_persistence_reopen_by_path_and_from_persist_dir(tmp_path):
    s = QuantizedVectorStore(codec="int4", path=tmp_path / "li")
    s.add([node("a", 1, "d1", k=1), node("b", 2, "d2", k=2)])
    assert s.dim == 16
    s.close()
    again = QuantizedVectorStore(path=tmp_path / "li")
    assert {n.node_id for n in again.get_nodes()} == {"a", "b"} and again.dim == 16
    again.close()
    third = QuantizedVectorStore.from_persist_dir(tmp_path / "li")
    assert third.query(VectorStoreQuery(query_embedding=unit(2), similarity_top_k=1)).ids == ["b"]
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedVectorStore.from_persist_dir(tmp_path / "nothing")
    mem = QuantizedVectorStore()
    mem.add([node("c", 3, "d3")])
    mem.persist(str(tmp_path / "copy"))
    assert QuantizedVectorStore.from_persist_dir(tmp_path / "copy").get_nodes()[0].node_id == "c"


CORPUS = [
    "The INT4 codec keeps two values per byte with a scale and offset per block.",
    "Binary codes keep one sign bit per dimension and compare by Hamming distance.",
    "Rescoring reads the INT8 copy of the candidates from a memory-mapped file.",
    "SQLite stores the document texts and metadata next to the index.",
]


@pytest.mark.parametrize("persistent", [False, True])
def test_vector_store_index_retriever_and_query_engine(tmp_path, persistent):
    Settings.llm = MockLLM()
    embed = HashEmbedding()
    store = QuantizedVectorStore(codec="int4", path=tmp_path / "vs" if persistent else None)
    docs = [Document(text=t, id_=f"doc{i}", metadata={"i": i}) for i, t in enumerate(CORPUS)]
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    hits = index.as_retriever(similarity_top_k=1).retrieve("Hamming distance of sign bits")
    assert hits[0].node.ref_doc_id == "doc1"
    filtered = index.as_retriever(
        similarity_top_k=2, filters=MetadataFilters(filters=[MetadataFilter(key="i", value=2, operator=F.GTE)])
    ).retrieve("Hamming distance of sign bits")
    assert {h.node.ref_doc_id for h in filtered} == {"doc2", "doc3"}
    response = index.as_query_engine(similarity_top_k=2).query("Where are texts and metadata stored?")
    assert response.source_nodes[0].node.ref_doc_id == "doc3"
    if persistent:
        store.close()
    reopened = VectorStoreIndex.from_vector_store(
        QuantizedVectorStore(path=tmp_path / "vs") if persistent else store, embed_model=embed
    )
    index = reopened
    assert reopened.as_retriever(similarity_top_k=1).retrieve("memory-mapped INT8 copy")[0].node.ref_doc_id == "doc2"
    index.delete_ref_doc("doc2")
    assert "doc2" not in {h.node.ref_doc_id for h in index.as_retriever(similarity_top_k=4).retrieve("INT8 copy")}


def test_similarities_are_cosines_as_in_simple_vector_store():
    """Unnormalised embeddings: the same nodes in SimpleVectorStore and here give the same
    ranking and similarities (cosine), clamped to [-1, 1]."""
    from llama_index.core.vector_stores import SimpleVectorStore

    rng = np.random.default_rng(3)
    nodes = [
        TextNode(id_=f"n{i}", text=f"t{i}", embedding=(rng.standard_normal(24) * rng.uniform(0.1, 30)).tolist())
        for i in range(40)
    ]
    ours, reference = QuantizedVectorStore(codec="int8"), SimpleVectorStore()
    ours.add(nodes)
    reference.add(nodes)
    for q in (rng.standard_normal(24) * 9, np.asarray(nodes[5].embedding)):
        query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=40)
        expected = dict(zip(reference.query(query).ids, reference.query(query).similarities))
        got = ours.query(query)
        assert set(got.ids) == set(expected)
        assert all(
            s == pytest.approx(expected[i], abs=0.01) and -1 <= s <= 1 for i, s in zip(got.ids, got.similarities)
        )
    assert ours.query(VectorStoreQuery(query_embedding=nodes[5].embedding, similarity_top_k=1)).similarities[0] <= 1.0
    assert ours.query(VectorStoreQuery(query_embedding=nodes[5].embedding, similarity_top_k=0)).ids == []


def test_bad_ids_are_refused_and_change_nothing(store):
    with pytest.raises(TypeError, match="single str"):
        store.delete_nodes(node_ids="n1")
    with pytest.raises(TypeError, match="single str"):
        store.get_nodes(node_ids="n1")
    with pytest.raises(TypeError, match="ref_doc_id must be a str"):
        store.delete(["docA"])
    assert len(store.client) == 4


def in_memory_index(embed, texts):
    Settings.llm = MockLLM()
    store = QuantizedVectorStore(codec="int4")
    docs = [Document(text=t, id_=f"doc{i}") for i, t in enumerate(texts)]
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    return index, store


def test_storage_context_persist_idiom_round_trips_and_overwrites(tmp_path):
    from llama_index.core import load_index_from_storage

    embed = HashEmbedding()
    index, store = in_memory_index(embed, CORPUS[:3])
    index.storage_context.persist(persist_dir=str(tmp_path))
    assert (tmp_path / "default__vector_store.json" / "store.sqlite").is_file()

    def reload():
        vs = QuantizedVectorStore.from_persist_dir(tmp_path)
        ctx = StorageContext.from_defaults(persist_dir=str(tmp_path), vector_store=vs)
        return load_index_from_storage(ctx, embed_model=embed), vs

    loaded, vs = reload()
    assert loaded.as_retriever(similarity_top_k=1).retrieve("Hamming distance sign bits")[0].node.ref_doc_id == "doc1"
    vs.close()
    # insert, persist to the same directory again: the copy is replaced, nothing left beside it
    index.insert(Document(text=CORPUS[3], id_="doc3"))
    index.storage_context.persist(persist_dir=str(tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    loaded, vs = reload()
    assert {n.ref_doc_id for n in vs.get_nodes()} == {"doc0", "doc1", "doc2", "doc3"}
    assert (
        loaded.as_retriever(similarity_top_k=1).retrieve("SQLite stores texts and metadata")[0].node.ref_doc_id
        == "doc3"
    )
    # a path-backed store is its own persistence: persist() leaves it where it is
    vs.persist(str(tmp_path / "elsewhere" / "default__vector_store.json"))
    assert not (tmp_path / "elsewhere").exists()


def test_persist_honours_only_local_filesystems(tmp_path):
    import fsspec

    _, store = in_memory_index(HashEmbedding(), CORPUS[:2])
    store.persist(str(tmp_path / "local" / "default__vector_store.json"), fs=fsspec.filesystem("file"))
    assert QuantizedVectorStore.from_persist_dir(tmp_path / "local", fs=fsspec.filesystem("file")).get_nodes()
    memory = fsspec.filesystem("memory")
    with pytest.raises(ValueError, match="local filesystem only; got fs=MemoryFileSystem"):
        store.persist("/d/default__vector_store.json", fs=memory)
    with pytest.raises(ValueError, match="local filesystem only"):
        QuantizedVectorStore.from_persist_dir("/d", fs=memory)
    with pytest.raises(ValueError, match="no store.sqlite in it or in default__vector_store.json/"):
        QuantizedVectorStore.from_persist_dir(tmp_path)
