"""Property-based tests: random (often invalid) calls on QuantizedIndex and both stores. Only
ValueError/TypeError may escape, and every part stays consistent (``verify() == []``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quant_retriever import QuantizedIndex
from quant_retriever.store import And, Cond, Not, Or, QuantizedStore

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

dtypes = st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.bool_])
codecs = st.sampled_from(["int4", "binary", "int8", "fp16", "fp32", "rq1", "rq2", "rq4"])
floats = st.floats(allow_nan=True, allow_infinity=True, width=16)  # representable in every float dtype


@st.composite
def arrays(draw, dim: int):
    if draw(st.booleans()):  # half the time a valid batch, so the happy paths are fuzzed too
        return draw(hnp.arrays(np.float32, (draw(st.integers(1, 30)), dim), elements=st.floats(-2, 2, width=32)))
    rows = draw(st.integers(0, 40))
    cols = draw(st.sampled_from([dim, dim, dim, dim + 1, max(dim - 1, 0)]))
    shape = draw(st.sampled_from([(rows, cols), (cols,), (rows, cols, 1)]))
    dtype = draw(dtypes)
    special = np.issubdtype(dtype, np.floating) and draw(st.booleans())
    return draw(hnp.arrays(dtype, shape, elements=floats if special else None))


def ids_for(draw, n: int):
    kind = draw(st.sampled_from(["none", "ok", "random"]))
    if kind == "none":
        return None
    if kind == "ok":
        return draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True))
    return draw(st.lists(st.one_of(st.integers(-5, 50), st.floats(), st.text(max_size=3)), max_size=n + 2))


@SETTINGS
@given(data=st.data(), dim=st.integers(1, 40), codec=codecs)
def test_index_random_calls(data, dim, codec):
    index = QuantizedIndex(dim, codec=codec, block_size=8)
    model: set[int] = set(index.add(np.random.default_rng(dim).standard_normal((5, dim)).astype(np.float32)).tolist())
    for _ in range(data.draw(st.integers(1, 8))):
        action = data.draw(st.sampled_from(["add", "remove", "search"]))
        try:
            if action == "add":
                x = data.draw(arrays(dim))
                ids = ids_for(data.draw, len(x) if x.ndim else 0)
                added = index.add(x, ids=ids)
                model.update(added.tolist())
                event("index add succeeded")
            elif action == "remove":
                victims = data.draw(
                    st.lists(st.one_of(st.sampled_from(sorted(model) or [0]), st.integers(-3, 100)), max_size=4)
                )
                index.remove(victims)
                model.difference_update(victims)
            else:
                q = data.draw(arrays(dim))
                k = data.draw(st.one_of(st.integers(-2, 100), st.floats(0, 5), st.none()))
                mult = data.draw(st.integers(0, 12))
                allowed = data.draw(st.one_of(st.none(), st.lists(st.integers(-2, 60), max_size=10)))
                res = index.search(q, k=k, rescore_multiplier=mult, allowed_ids=allowed)
                assert res.ids.shape == res.scores.shape
                assert set(res.ids.ravel().tolist()) <= model
                assert res.ids.shape[1] <= min(k, len(model))
                event("index search succeeded" + (" with hits" if res.ids.size else ""))
        except (ValueError, TypeError):
            pass
        assert index.verify() == []
        assert set(index.ids().tolist()) == model and len(index) == len(model)
    if model:  # after any sequence of calls, the index still answers correctly
        res = index.search(np.ones(dim, np.float32), k=len(model))
        assert sorted(res.ids[0].tolist()) == sorted(model)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-10, 10),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
    ),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=5,
)
keys = st.sampled_from(["a", "b", "missing", "ü", ""])
ops = st.sampled_from(
    [
        "eq",
        "ne",
        "lt",
        "lte",
        "gt",
        "gte",
        "in",
        "nin",
        "contains",
        "any",
        "all",
        "text_match",
        "text_match_insensitive",
        "is_empty",
        "bogus",
    ]
)
conds = st.tuples(keys, ops, json_values)
filters = st.recursive(
    conds,
    lambda children: (
        st.lists(children, max_size=3).map(lambda xs: ("and", xs))
        | st.lists(children, max_size=3).map(lambda xs: ("or", xs))
        | children.map(lambda x: ("not", x))
    ),
    max_leaves=5,
)


def to_tree(spec):
    if spec[0] == "and":
        return And(tuple(to_tree(s) for s in spec[1]))
    if spec[0] == "or":
        return Or(tuple(to_tree(s) for s in spec[1]))
    if spec[0] == "not":
        return Not(to_tree(spec[1]))
    return Cond(*spec)


@SETTINGS
@given(data=st.data(), codec=codecs)
def test_store_random_calls(data, codec):
    store = QuantizedStore(codec=codec, block_size=8)
    store.upsert(["seed-0", "seed-1"], np.eye(2, 6, dtype=np.float32), ["a", "b"], [{"a": 1}, {"b": [1, "x"]}])
    model: dict[str, str] = {"seed-0": "a", "seed-1": "b"}
    for _ in range(data.draw(st.integers(1, 6))):
        action = data.draw(st.sampled_from(["upsert", "delete", "search"]))
        try:
            if action == "upsert":
                n = data.draw(st.integers(0, 5))
                ids = data.draw(st.lists(st.one_of(st.text(max_size=4), st.integers()), min_size=n, max_size=n))
                texts = data.draw(st.lists(st.one_of(st.text(max_size=20), st.none()), min_size=n, max_size=n + 1))
                metas = data.draw(
                    st.lists(
                        st.one_of(st.dictionaries(keys, json_values, max_size=3), st.none()), min_size=n, max_size=n
                    )
                )
                vectors = data.draw(arrays(store.dim or 6))
                store.upsert(ids, vectors, texts, metas)
                model.update(zip(ids, texts))
                event("store upsert succeeded" + (" (non-empty)" if ids else ""))
            elif action == "delete":
                victims = data.draw(
                    st.lists(st.one_of(st.sampled_from(sorted(model) or ["x"]), st.text(max_size=2)), max_size=3)
                )
                store.delete(victims)
                for v in victims:
                    model.pop(v, None)
            else:
                q = data.draw(arrays(store.dim or 6))
                where = data.draw(st.one_of(st.none(), filters.map(to_tree)))
                k = data.draw(st.integers(-1, 30))
                hits = store.search(q, k=k, where=where)
                event("store search succeeded" + (" with hits" if any(hits) else ""))
                for row in hits:
                    assert len(row) <= max(k, 0)
                    assert all(r.id in model and model[r.id] == r.text for r, _ in row)
        except (ValueError, TypeError):
            pass
        assert store.verify() == []
        assert {r.id: r.text for r in store.records()} == model
    hits = store.search(np.ones(store.dim, np.float32), k=len(model) + 1)[0]
    assert sorted(r.id for r, _ in hits) == sorted(model)


@pytest.mark.parametrize("framework", ["langchain", "llama_index"])
@SETTINGS
@given(texts=st.lists(st.text(max_size=30), min_size=1, max_size=6), data=st.data())
def test_framework_stores_take_unicode_and_empty_texts(framework, texts, data):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    emb = DeterministicFakeEmbedding(size=8)
    k = data.draw(st.integers(1, 20))
    if framework == "langchain":
        from quant_retriever.langchain import QuantizedVectorStore

        store = QuantizedVectorStore(emb, codec="binary")
        ids = store.add_texts(texts, metadatas=[{"t": t} for t in texts])
        flt = {data.draw(keys): data.draw(st.one_of(st.text(max_size=3), st.integers()))}
        try:
            docs = store.similarity_search(texts[0], k=k, filter=flt)
            assert len(docs) <= min(k, len(texts)) and set(d.id for d in docs) <= set(ids)
        except ValueError as exc:
            assert "64 bits" in str(exc)
        assert store.store.verify() == []
    else:
        from llama_index.core.schema import TextNode
        from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

        from quant_retriever.llama_index import QuantizedVectorStore

        store = QuantizedVectorStore(codec="int4")
        store.add(
            [
                TextNode(id_=f"n{i}", text=t, metadata={"t": t}, embedding=emb.embed_query(t))
                for i, t in enumerate(texts)
            ]
        )
        flt = MetadataFilters(filters=[MetadataFilter(key=data.draw(keys), value=data.draw(st.text(max_size=3)))])
        res = store.query(VectorStoreQuery(query_embedding=emb.embed_query(texts[0]), similarity_top_k=k, filters=flt))
        assert len(res.ids) <= min(k, len(texts))
        assert store.client.verify() == []
