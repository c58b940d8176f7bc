"""Metadata filters against their documented semantics.

The semantics of the README's filter table are implemented once more, independently and in
plain Python, by :func:`reference` below (LIKE by dynamic programming, not a regex). Random
metadata (ints, floats, strings, bools, None, lists, missing keys, odd keys) and random
nested filters go through the real store and through both adapters' filter translators and
searches, and every route must select exactly the documents the reference selects. A second
property test compares single conditions with LlamaIndex's own ``build_metadata_filter_fn``:
they must agree everywhere except in the documented differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from langchain_core.embeddings import DeterministicFakeEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn

from quant_retriever.filters import MAX_DEPTH, And, Cond, Not, Or
from quant_retriever.filters import matches as core_matches
from quant_retriever.langchain import QuantizedVectorStore as LangChainStore
from quant_retriever.llama_index import QuantizedVectorStore as LlamaIndexStore
from quant_retriever.store import QuantizedStore

ODD_KEYS = [
    'q"uote',
    "back\\slash",
    "new\nline",
    "nul\0byte",
    "dot.ted",
    "$dollar",
    "école",
    "",
    "it's",
    "%_",
    "a' OR '1'='1",
]
KEYS = ["a", 'q"uote', "nul\0byte", "dot.ted", "$dollar", "école"]
DIM = 8

# ---------------------------------------------------------------------------------------
# the reference: the documented semantics, written for this test only


def kind(v) -> str:
    """JSON kinds; metadata read back from JSON holds exactly these types."""
    return {type(None): "null", bool: "bool", int: "number", float: "number", str: "str", list: "list", dict: "object"}[
        type(v)
    ]


def same(a, b) -> bool:
    return kind(a) == kind(b) and a == b


def like(pattern: str, text: str) -> bool:
    """SQL LIKE by dynamic programming over (pattern tokens, text positions)."""
    tokens, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            tokens.append(("lit", pattern[i + 1]))
            i += 2
            continue
        tokens.append(("many",) if c == "%" else ("one",) if c == "_" else ("lit", c))
        i += 1
    ok = {0}  # text positions reachable after the tokens so far
    for tok in tokens:
        if tok[0] == "many":
            ok = set(range(min(ok), len(text) + 1)) if ok else set()
        elif tok[0] == "one":
            ok = {p + 1 for p in ok if p < len(text)}
        else:
            ok = {p + len(tok[1]) for p in ok if text.startswith(tok[1], p)}
    return len(text) in ok


def reference(node, md: dict) -> bool:
    tag = node[0]
    if tag in ("and", "or"):
        parts = [reference(c, md) for c in node[1]]
        return not parts or (all(parts) if tag == "and" else any(parts))
    if tag == "not":
        return not reference(node[1], md)
    _, key, op, value = node
    v = md.get(key)
    if op == "eq":
        return same(v, value)
    if op == "ne":
        return not same(v, value)
    if op == "in":
        return any(same(v, x) for x in value)
    if op == "nin":
        return not any(same(v, x) for x in value)
    if op in ("lt", "lte", "gt", "gte"):
        if kind(v) != kind(value):
            return False
        return {"lt": v < value, "lte": v <= value, "gt": v > value, "gte": v >= value}[op]
    if op in ("contains", "any", "all"):
        if not isinstance(v, list):
            return False
        wanted = [value] if op == "contains" else value
        found = [any(same(e, x) for e in v) for x in wanted]
        return all(found) if op == "all" else any(found)
    if op in ("like", "ilike", "substring", "isubstring"):
        if not isinstance(v, str):
            return False
        if op.startswith("i"):
            value, v = value.casefold(), v.casefold()
        return like(value, v) if op.endswith("like") else value in v
    if op == "is_empty":
        return v is None or v == "" or v == []
    assert op == "exists"
    return key in md


# ---------------------------------------------------------------------------------------
# random metadata and filters

chars = st.sampled_from(["a", "B", "%", "_", "\\", "\0", "\n", "É", "é", "ß", "ss", "S", "école", "ÉCOLE"])
texts = st.one_of(st.just(""), st.lists(chars, min_size=1, max_size=3).map("".join))
patterns = st.lists(st.sampled_from(["a", "B", "%", "_", "\\%", "\\_", "\\\\", "\n", "É", "ß", "S"]), max_size=4).map(
    "".join
)
numbers = st.sampled_from([0, 1, 2, -3, 0.0, 1.0, 1.5, -2.5, 2**53 + 1])
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(["x", "y"]), scalars, max_size=2)
)
metadata = st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=4)


def leaf_value(op: str):
    if op in ("eq", "ne", "contains"):
        return scalars
    if op in ("in", "nin", "any", "all"):
        return st.lists(scalars, max_size=3)
    if op in ("lt", "lte", "gt", "gte"):
        return st.one_of(numbers, texts)
    if op in ("like", "ilike"):
        return patterns
    if op in ("substring", "isubstring"):
        return texts
    return st.none()


OPS = [
    "eq",
    "ne",
    "in",
    "nin",
    "lt",
    "lte",
    "gt",
    "gte",
    "contains",
    "any",
    "all",
    "like",
    "ilike",
    "substring",
    "isubstring",
    "is_empty",
    "exists",
]


def make_trees(keys: list[str]):
    leaves = st.tuples(st.sampled_from(keys), st.sampled_from(OPS)).flatmap(
        lambda ko: leaf_value(ko[1]).map(lambda v: ("leaf", ko[0], ko[1], v))
    )
    return st.recursive(
        leaves,
        lambda kids: (
            st.tuples(st.sampled_from(["and", "or"]), st.lists(kids, max_size=3)) | kids.map(lambda k: ("not", k))
        ),
        max_leaves=6,
    )


trees = make_trees(KEYS)


def to_core(node):
    if node[0] in ("and", "or"):
        return (And if node[0] == "and" else Or)(tuple(to_core(c) for c in node[1]))
    if node[0] == "not":
        return Not(to_core(node[1]))
    return Cond(node[1], node[2], node[3])


def to_langchain(node, plain_eq: bool):
    if node[0] in ("and", "or"):
        return {f"${node[0]}": [to_langchain(c, plain_eq) for c in node[1]]}
    if node[0] == "not":
        return {"$not": to_langchain(node[1], plain_eq)}
    _, key, op, value = node
    if op == "eq" and plain_eq:
        return {key: value}
    if op in ("is_empty", "exists"):
        return {key: {f"${op}": True}}
    return {key: {f"${op}": value}}


LI_OPS = {
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "in": "in",
    "nin": "nin",
    "contains": "contains",
    "any": "any",
    "all": "all",
    "substring": "text_match",
    "isubstring": "text_match_insensitive",
    "is_empty": "is_empty",
}


def to_llama_index(node):
    """MetadataFilters for the tree, or None where LlamaIndex cannot say it (no bool values,
    lists of one type only, no LIKE or exists)."""
    if node[0] in ("and", "or", "not"):
        kids = node[1] if node[0] != "not" else [node[1]]
        parts = [to_llama_index(c) for c in kids]
        if any(p is None for p in parts):
            return None
        parts = [p.filters[0] if isinstance(p, MetadataFilters) and p.condition is None else p for p in parts]
        return MetadataFilters(filters=parts, condition=FilterCondition(node[0]))
    _, key, op, value = node
    if (
        op not in LI_OPS
        or isinstance(value, bool)
        or (isinstance(value, list) and any(isinstance(x, bool) or x is None for x in value))
    ):
        return None
    try:
        f = MetadataFilter(key=key, value=value, operator=FilterOperator(LI_OPS[op]))
    except ValueError:  # pydantic: a mixed list, say
        return None
    kept = [f.value] if not isinstance(value, list) else [*f.value, f.value]
    if f.value != value or [type(x) for x in kept] != [
        type(x) for x in ([value] if not isinstance(value, list) else [*value, value])
    ]:
        return None  # pydantic changed the value
    return MetadataFilters(filters=[f], condition=None)


def vec(i: int) -> list[float]:
    v = np.random.default_rng(i).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)


writes = st.lists(
    st.tuples(
        st.sampled_from(["upsert", "delete", "delete_where", "compact"]),
        st.lists(metadata, max_size=4),
        st.integers(0, 9),
    ),
    min_size=1,
    max_size=5,
)


@PROPERTY
@given(docs=st.lists(metadata, min_size=1, max_size=6), writes=writes, specs=st.lists(trees, min_size=1, max_size=3))
def test_cached_filters_follow_every_write(docs, writes, specs):
    """A filter's cached key set is brought up to date by each write from the documents it
    wrote (added, replaced, deleted; compactions move rows): after every write, every filter
    selects exactly the documents the reference selects."""
    store = QuantizedStore(codec="int8")
    current: dict[str, dict] = {}

    def upsert(mds: list[dict], start: int) -> None:
        ids = list(dict.fromkeys(f"d{(start + i) % 10}" for i in range(len(mds))))
        mds = mds[: len(ids)]
        store.upsert(ids, np.array([vec(i) for i in range(len(ids))], np.float32), ids, mds)
        current.update(zip(ids, mds))

    def check() -> None:
        for tree in specs:
            got = {r.id for r, _ in store.search(vec(99), k=10, where=to_core(tree))[0]}
            assert got == {i for i, md in current.items() if reference(tree, md)}, tree

    upsert(docs, 0)
    for op, mds, start in writes:
        check()  # the key sets of this version are cached
        if op == "upsert" and mds:
            upsert(mds, start)
        elif op == "delete":
            store.delete([f"d{start}", f"d{(start + 3) % 10}"])
            current.pop(f"d{start}", None), current.pop(f"d{(start + 3) % 10}", None)
        elif op == "delete_where":
            store.delete_where(to_core(specs[0]))
            current = {i: md for i, md in current.items() if not reference(specs[0], md)}
        elif op == "compact":
            store.compact()
        check()


def test_a_write_tests_only_its_own_documents_against_cached_filters(monkeypatch):
    store = QuantizedStore(codec="int8")
    ids = [f"d{i}" for i in range(50)]
    store.upsert(ids, np.array([vec(i) for i in range(50)], np.float32), ids, [{"g": i % 5} for i in range(50)])
    where = Or((Cond("g", "eq", 3), Not(Cond("g", "lt", 2))))
    assert len(store.search(vec(99), k=50, where=where)[0]) == 30
    seen = []
    original = store._cache._matching
    monkeypatch.setattr(store._cache, "_matching", lambda w, within=None: seen.append(within) or original(w, within))
    store.upsert(["d3", "new"], np.array([vec(3), vec(51)], np.float32), ["d3", "new"], [{"g": 0}, {"g": 4}])
    store.delete(["d4"])
    hits = {r.id for r, _ in store.search(vec(99), k=50, where=where)[0]}
    assert hits == {f"d{i}" for i in range(50) if i % 5 >= 2 and i not in (3, 4)} | {"new"}
    assert [len(w) for w in seen] == [2]  # the two documents written, not all 50


def test_writes_too_large_or_too_many_to_catch_up_with_evaluate_the_filter_again():
    from quant_retriever.store import FilterCache

    store = QuantizedStore(codec="int8")
    where = Not(Cond("g", "eq", 1))
    seen = []

    def matching(w, within=None):
        seen.append(within)
        return store._matching(w, within)

    # two writes remembered, at most three documents caught up with
    store._cache = FilterCache(matching, store._keys_of, store._publish_lock, writes_kept=2, catch_up_max=3)
    expected: dict[str, int] = {}

    def write(start: int, n: int) -> None:
        ids = [f"d{i}" for i in range(start, start + n)]
        store.upsert(ids, np.array([vec(i) for i in range(n)], np.float32), ids, [{"g": i % 2} for i in range(n)])
        expected.update((i, j % 2) for j, i in enumerate(ids))

    def hits() -> set:
        return {r.id for r, _ in store.search(vec(99), k=50, where=where)[0]}

    write(0, 6)
    assert hits() == {i for i, g in expected.items() if g != 1} and seen[-1] is None
    write(6, 2)  # small: caught up
    assert hits() == {i for i, g in expected.items() if g != 1} and len(seen[-1]) == 2
    write(8, 4)  # more than CATCH_UP_MAX documents: evaluated again
    assert hits() == {i for i, g in expected.items() if g != 1} and seen[-1] is None
    for start in (12, 13, 14):  # three small writes, two remembered
        write(start, 1)
    assert hits() == {i for i, g in expected.items() if g != 1} and seen[-1] is None


def test_filters_differing_only_in_value_types_are_different_cache_entries():
    store = QuantizedStore(codec="int8")
    mds = [{"v": False}, {"v": 0}, {"v": 0.0}, {"v": True}, {"v": 1}, {"v": [1]}, {"v": [True]}]
    ids = [f"d{i}" for i in range(len(mds))]
    store.upsert(ids, np.array([vec(i) for i in range(len(mds))], np.float32), ids, mds)
    for value in (False, 0, 0.0, True, 1):
        expected = {i for i, md in zip(ids, mds) if reference(("leaf", "v", "eq", value), md)}
        assert {r.id for r, _ in store.search(vec(99), k=7, where=Cond("v", "eq", value))[0]} == expected, value
    assert Cond("v", "eq", False) != Cond("v", "eq", 0) and Cond("v", "in", [1]) != Cond("v", "in", [True])
    assert (
        Cond("v", "in", [1, 2.5]) == Cond("v", "in", (1, 2.5)) and len({Cond("v", "eq", 0), Cond("v", "eq", 0.0)}) == 2
    )


@PROPERTY
@given(
    docs=st.lists(metadata, min_size=2, max_size=8),
    specs=st.lists(st.tuples(trees, st.booleans()), min_size=1, max_size=6),
)
def test_store_and_both_adapters_agree_with_the_documented_semantics(docs, specs):
    ids = [f"d{i}" for i in range(len(docs))]
    store = QuantizedStore(codec="int8")
    store.upsert(ids, np.array([vec(i) for i in range(len(docs))], np.float32), ids, docs)
    lc = LangChainStore(DeterministicFakeEmbedding(size=DIM), codec="int8")
    lc.add_texts(ids, metadatas=docs, ids=ids)
    li = LlamaIndexStore(codec="int8")
    li.add([TextNode(id_=i, text=i, metadata=m, embedding=vec(n)) for n, (i, m) in enumerate(zip(ids, docs))])
    n = len(docs)
    for tree, plain_eq in specs:
        expected = {i for i, md in zip(ids, docs) if reference(tree, md)}
        event(f"matches {'none' if not expected else 'all' if len(expected) == n else 'some'}")
        core = to_core(tree)
        assert {r.id for r in store.records(core)} == expected
        assert {r.id for r, _ in store.search(vec(99), k=n, where=core)[0]} == expected
        assert {
            d.id for d in lc.similarity_search_by_vector(vec(99), k=n, filter=to_langchain(tree, plain_eq))
        } == expected
        mf = to_llama_index(tree)
        if mf is not None:
            event("expressible in LlamaIndex")
            res = li.query(VectorStoreQuery(query_embedding=vec(99), similarity_top_k=n, filters=mf))
            assert set(res.ids) == expected
            assert {x.node_id for x in li.get_nodes(filters=mf)} == expected


@settings(max_examples=3000, deadline=None, phases=PROPERTY.phases)
@given(
    md=st.dictionaries(st.sampled_from(["a", "b"]), st.one_of(texts, values), max_size=2), tree=make_trees(["a", "b"])
)
def test_the_sql_evaluation_agrees_with_the_documented_semantics(md, tree):
    """The same comparison without stores (``filters.matches``: the store's SQL over a
    one-document database), many more times and over two keys, so most conditions meet a value
    (the test above proves the store and the adapters evaluate filters this way)."""
    assert core_matches(to_core(tree), md) == reference(tree, md)


@settings(max_examples=3000, deadline=None, phases=PROPERTY.phases)
@given(
    pattern=patterns,
    text=st.lists(st.sampled_from(["a", "B", "%", "_", "\\", "\n", "É", "é", "ß", "S", "s"]), max_size=5).map("".join),
)
def test_like_agrees_with_the_reference_matcher(pattern, text):
    for op in ("like", "ilike", "substring", "isubstring"):
        assert core_matches(Cond("t", op, pattern), {"t": text}) == reference(("leaf", "t", op, pattern), {"t": text})


# ---------------------------------------------------------------------------------------
# LlamaIndex's own filter function: the same answers outside the documented differences


def documented_difference(op: str, v, value) -> str | None:
    """The row of the README's table where the store deliberately differs, or None."""
    vals = value if isinstance(value, list) else [value]
    if v is None and (value is None or None in vals):
        return "missing and null are None for eq/ne/in/nin"
    if isinstance(v, bool) or (isinstance(v, list) and any(isinstance(e, bool) for e in v)):
        if any(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            return "True == 1"
    if op in ("contains", "any", "all") and isinstance(v, (str, dict)):
        return "CONTAINS/ANY/ALL on strings"
    if op == "all" and not value and v is not None:
        return "ALL [] matches every list only"
    if op == "isubstring" and isinstance(v, str) and (value.lower() in v.lower()) != (value.casefold() in v.casefold()):
        return "casefold, not lower"
    return None


@settings(max_examples=600, deadline=None, phases=PROPERTY.phases)
@given(md=metadata, key=st.sampled_from(KEYS), op=st.sampled_from([o for o in OPS if o in LI_OPS]), data=st.data())
def test_single_conditions_agree_with_build_metadata_filter_fn(md, key, op, data):
    value = data.draw(leaf_value(op))
    mf = to_llama_index(("leaf", key, op, value))
    assume(mf is not None)
    ours = core_matches(to_core(("leaf", key, op, value)), md)
    try:
        theirs = build_metadata_filter_fn(lambda _: md, mf)("x")
    except TypeError:
        event("LlamaIndex raises: a type mismatch, which does not match here")
        assert not ours
        return
    why = documented_difference(op, md.get(key), value)
    if why is None:
        assert ours == theirs, (md, key, op, value)
    else:
        event(f"documented difference: {why}")


# ---------------------------------------------------------------------------------------
# each rule of the table, by example


@pytest.fixture
def three_stores():
    """The same three documents in the store, the LangChain store and the LlamaIndex store."""

    def build(metadatas: list[dict]):
        ids = [f"d{i}" for i in range(len(metadatas))]
        vectors = np.array([vec(i) for i in range(len(ids))], np.float32)
        store = QuantizedStore(codec="int8")
        store.upsert(ids, vectors, ids, metadatas)
        lc = LangChainStore(DeterministicFakeEmbedding(size=DIM), codec="int8")
        lc.add_texts(ids, metadatas=metadatas, ids=ids)
        li = LlamaIndexStore(codec="int8")
        li.add([TextNode(id_=i, text=i, metadata=m, embedding=v.tolist()) for i, m, v in zip(ids, metadatas, vectors)])
        return store, lc, li

    return build


def select(stores, core=None, lc_filter=None, li_filters=None) -> list[set[str]]:
    store, lc, li = stores
    found = []
    if core is not None:
        found.append({r.id for r in store.records(core)})
    if lc_filter is not None:
        found.append({d.id for d in lc.similarity_search_by_vector(vec(0), k=10, filter=lc_filter)})
    if li_filters is not None:
        found.append(
            set(li.query(VectorStoreQuery(query_embedding=vec(0), similarity_top_k=10, filters=li_filters)).ids)
        )
    return found


def li_filter(key, value, op="==") -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=FilterOperator(op))])


@pytest.mark.parametrize("key", ["plain", *ODD_KEYS])
def test_odd_keys_behave_like_any_other_key(three_stores, key):
    stores = three_stores([{key: "x", "other": 1}, {key: "y"}, {"other": 2}])
    for op, value, expected in [
        ("eq", "x", {"d0"}),
        ("ne", "x", {"d1", "d2"}),
        ("in", ["x", "y"], {"d0", "d1"}),
        ("nin", ["x"], {"d1", "d2"}),
        ("eq", None, {"d2"}),
        ("ne", None, {"d0", "d1"}),
        ("is_empty", None, {"d2"}),
        ("exists", None, {"d0", "d1"}),
        ("like", "_", {"d0", "d1"}),
        ("substring", "y", {"d1"}),
    ]:
        lc = {key: {f"${op}": True if op in ("is_empty", "exists") else value}}
        li = None
        if op in ("eq", "ne", "in", "nin"):
            li = li_filter(key, value, {"eq": "==", "ne": "!="}.get(op, op))
        assert all(found == expected for found in select(stores, Cond(key, op, value), lc, li)), (op, value)
    # a delete by a NE filter removes exactly the other documents, never the whole store
    store, lc, li = stores
    li.delete_nodes(filters=li_filter(key, "x", "!="))
    assert [n.node_id for n in li.get_nodes()] == ["d0"]
    assert store.delete_where(Cond(key, "ne", "x")) == 2 and [r.id for r in store.records()] == ["d0"]


def test_case_insensitive_operators_fold_like_python(three_stores):
    stores = three_stores([{"t": "ÉCOLE normale"}, {"t": "Straße"}, {"t": "ecole"}])
    for needle, expected in [
        ("école", {"d0"}),
        ("ÉCOLE", {"d0"}),
        ("STRASSE", {"d1"}),
        ("straße", {"d1"}),
        ("ECOLE", {"d2"}),
    ]:  # folding keeps accents
        li = li_filter("t", needle, "text_match_insensitive")
        assert select(stores, Cond("t", "isubstring", needle), {"t": {"$isubstring": needle}}, li) == [expected] * 3, (
            needle
        )
        assert select(stores, lc_filter={"t": {"$ilike": f"%{needle}%"}}) == [expected]
    # the case-sensitive ones do not fold
    assert (
        select(
            stores, Cond("t", "substring", "école"), {"t": {"$like": "%école%"}}, li_filter("t", "école", "text_match")
        )
        == [set()] * 3
    )


@pytest.mark.parametrize(
    "pattern, text, matches",
    [
        ("abc", "abc", True),
        ("abc", "abcd", False),
        ("ab", "abc", False),  # the whole string must match
        ("a%", "abc", True),
        ("%c", "abc", True),
        ("%b%", "abc", True),
        ("%", "", True),
        ("%%", "x", True),
        ("a_c", "abc", True),
        ("a_c", "ac", False),
        ("a_c", "abbc", False),
        ("___", "héé", True),
        ("a\\%", "a%", True),
        ("a\\%", "ab", False),
        ("a\\_", "a_", True),
        ("a\\_", "ab", False),
        ("a\\\\b", "a\\b", True),
        ("a%", "a\nb", True),
        ("a_b", "a\nb", True),  # wildcards match newlines too
        ("a.c", "abc", False),
        ("a*", "aaa", False),
        ("(x)", "(x)", True),
        ("[ab]", "a", False),  # no regex syntax
        ("ABC", "abc", False),
    ],
)
def test_like_is_sql_like(pattern, text, matches):
    md = [{"t": text}, {"t": 5}, {}]
    assert core_matches(Cond("t", "like", pattern), md[0]) is matches
    assert not any(core_matches(Cond("t", "like", pattern), m) for m in md[1:])
    assert core_matches(Cond("t", "ilike", pattern.upper() if "\\" not in pattern else pattern), md[0]) is (
        matches or pattern == "ABC"
    )
    assert like(pattern, text) is matches  # and the test's own reference agrees


def test_like_pattern_ending_in_an_escape_is_refused():
    with pytest.raises(ValueError, match="escape character"):
        Cond("t", "like", "abc\\")
    with pytest.raises(ValueError, match="escape character"):
        LangChainStore(DeterministicFakeEmbedding(size=DIM)).similarity_search("q", filter={"t": {"$ilike": "%\\"}})


def test_none_and_missing_keys_follow_metadata_get(three_stores):
    stores = three_stores([{"k": None}, {}, {"k": "v"}])
    for core, lc, li, expected in [
        (Cond("k", "eq", None), {"k": None}, li_filter("k", None), {"d0", "d1"}),
        (Cond("k", "ne", None), {"k": {"$ne": None}}, li_filter("k", None, "!="), {"d2"}),
        (Cond("k", "eq", "v"), {"k": "v"}, li_filter("k", "v"), {"d2"}),
        (Cond("k", "ne", "v"), {"k": {"$ne": "v"}}, li_filter("k", "v", "!="), {"d0", "d1"}),
        (Cond("k", "in", [None]), {"k": {"$in": [None]}}, None, {"d0", "d1"}),
        (Cond("k", "nin", [None]), {"k": {"$nin": [None]}}, None, {"d2"}),
        (Cond("k", "nin", ["v"]), {"k": {"$nin": ["v"]}}, li_filter("k", ["v"], "nin"), {"d0", "d1"}),
        (Cond("k", "exists"), {"k": {"$exists": True}}, None, {"d0", "d2"}),  # the one operator that tells them apart
        (Not(Cond("k", "exists")), {"k": {"$exists": False}}, None, {"d1"}),
    ]:
        assert all(found == expected for found in select(stores, core, lc, li)), core


def test_empty_all_matches_every_list_and_nothing_else(three_stores):
    stores = three_stores([{"tags": ["a"]}, {"tags": []}, {"tags": "a"}, {}][:3])
    assert (
        select(stores, Cond("tags", "all", []), {"tags": {"$all": []}}, li_filter("tags", [], "all"))
        == [{"d0", "d1"}] * 3
    )
    assert select(stores, Cond("tags", "any", []), {"tags": {"$any": []}}, li_filter("tags", [], "any")) == [set()] * 3


@pytest.mark.parametrize("condition", [FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT, None])
def test_empty_metadata_filters_place_no_restriction(three_stores, condition):
    stores = three_stores([{"a": 1}, {"a": 2}, {}])
    empty = MetadataFilters(filters=[], condition=condition)
    assert select(stores, li_filters=empty) == [{"d0", "d1", "d2"}]
    assert {n.node_id for n in stores[2].get_nodes(filters=empty)} == {"d0", "d1", "d2"}
    assert build_metadata_filter_fn(lambda _: {}, empty)("x")  # as LlamaIndex's own stores
    assert select(stores, Or(()), {"$or": []}) == [{"d0", "d1", "d2"}] * 2


# The table of deliberate differences from LlamaIndex's build_metadata_filter_fn, each row
# shown on one document: (metadata, filter, this store, LlamaIndex)
DIFFERENCES = [
    ({}, ("k", None, "=="), True, False),  # missing = null = None for eq/ne/in/nin
    ({}, ("k", None, "!="), False, True),
    ({"k": True}, ("k", 1, "=="), False, True),  # True == 1 in Python, not here
    ({"k": [True]}, ("k", 1, "contains"), False, True),
    ({"k": True}, ("k", 0, ">"), False, True),
    ({"k": "abc"}, ("k", "b", "contains"), False, True),  # CONTAINS/ANY/ALL test lists, not substrings
    ({"k": "abc"}, ("k", ["a", "z"], "any"), False, True),
    ({"k": "abc"}, ("k", ["a", "b"], "all"), False, True),
    ({"k": 5}, ("k", [], "all"), False, True),  # ALL [] matches every list, not every present value
    ({"k": "straße"}, ("k", "SS", "text_match_insensitive"), True, False),  # str.casefold, not str.lower
]
RAISING = [
    ({"k": 5}, ("k", "a", "<")),  # type mismatches do not match here; LlamaIndex raises TypeError
    ({"k": [1]}, ("k", 2, ">=")),
    ({"k": 5}, ("k", "a", "contains")),
    ({"k": 5}, ("k", "a", "text_match")),
]


@pytest.mark.parametrize("md, spec, ours, theirs", DIFFERENCES)
def test_documented_differences_from_llama_index(three_stores, md, spec, ours, theirs):
    mf = li_filter(*spec)
    assert build_metadata_filter_fn(lambda _: md, mf)("x") is theirs
    stores = three_stores([md, {"other": 1}])
    assert ("d0" in select(stores, li_filters=mf)[0]) is ours


@pytest.mark.parametrize("md, spec", RAISING)
def test_type_mismatches_do_not_match_where_llama_index_raises(three_stores, md, spec):
    mf = li_filter(*spec)
    with pytest.raises(TypeError):
        build_metadata_filter_fn(lambda _: md, mf)("x")
    assert "d0" not in select(three_stores([md, {"other": 1}]), li_filters=mf)[0]


def test_in_with_a_string_is_refused_where_llama_index_tests_substrings():
    assert build_metadata_filter_fn(lambda _: {"k": "b"}, li_filter("k", "abc", "in"))("x")  # "b" in "abc"
    with pytest.raises(TypeError, match="needs a list"):
        LlamaIndexStore().get_nodes(filters=li_filter("k", "abc", "in"))
    with pytest.raises(TypeError, match="needs a list"):
        LangChainStore(DeterministicFakeEmbedding(size=DIM)).similarity_search("q", filter={"k": {"$in": "abc"}})


def test_five_thousand_deep_filters_raise_value_error():
    lc, core, li = {"k": 1}, Cond("k", "eq", 1), MetadataFilters(filters=[MetadataFilter(key="k", value=1)])
    for _ in range(5000):
        lc, core, li = {"$not": lc}, Not(core), MetadataFilters(filters=[li])
    with pytest.raises(ValueError, match=f"at most {MAX_DEPTH} levels"):
        LangChainStore(DeterministicFakeEmbedding(size=DIM)).similarity_search("q", filter=lc)
    with pytest.raises(ValueError, match=f"at most {MAX_DEPTH} levels"):
        QuantizedStore().search(vec(0), where=core)
    with pytest.raises(ValueError, match=f"at most {MAX_DEPTH} levels"):
        LlamaIndexStore().query(VectorStoreQuery(query_embedding=vec(0), filters=li))


def test_the_one_filter_table_names_every_operator():
    import re
    from pathlib import Path

    from quant_retriever.filters import OPERATORS
    from quant_retriever.integrations import _langchain_store, _llama_index_store

    root = Path(__file__).resolve().parents[3]

    def table(path: str) -> str:
        text = (root / path).read_text()
        return text[text.index("<!-- filter-table: start -->") : text.index("<!-- filter-table: end -->")]

    readme = table("docs/filters.md")
    assert "filter-table" not in (root / "README.md").read_text()  # the one table lives in docs/filters.md
    rows = [line.split(" | ") for line in readme.splitlines() if line.startswith("| `")]
    core = {w for r in rows for w in re.findall(r"`(\w+)`", r[0])}
    langchain = {w for r in rows for w in re.findall(r"`\{?\"?(\$\w+)", r[1])}
    llama = {w for r in rows for w in re.findall(r"`([A-Z_]+)`", r[2])}
    assert set(OPERATORS) <= core
    assert set(_langchain_store._OPS) | set(_langchain_store._FLAGS) | {"$and", "$or", "$not"} <= langchain
    assert {FilterOperator(op).name for op in _llama_index_store._OPS} <= llama


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=3),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**64), 2**64),
            st.floats(),
            st.text(max_size=3),
            st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=2), st.none()), max_size=3),
            st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        ),
        max_size=5,
    )
)
def test_field_rows_fast_path_agrees_with_the_kinds(metadata):
    """Differential: the rows of scalars of exact types (the fast path) are those the general
    kind rules give, for every value (bools, ints beyond 64 bits, lists and objects included)."""
    from quant_retriever.filters import _code_and_val, _kind, field_rows

    want = []
    for name, v in metadata.items():
        code, val = _code_and_val(v)
        want.append((7, name, code, 0, val))
        if isinstance(v, list):
            want += [
                (7, name, _code_and_val(e)[0], 1, _code_and_val(e)[1])
                for e in v
                if _kind(e) in ("null", "bool", "number", "str")
            ]
    got = field_rows(7, metadata)
    assert [r[:4] for r in got] == [r[:4] for r in want]
    for g, w in zip(got, want):
        assert type(g[4]) is type(w[4]) and (g[4] == w[4] or g[4] != g[4])  # (NaN)
