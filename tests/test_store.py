"""QuantizedStore: SQLite records + the index; filters with exact expected ids; persistence."""

from __future__ import annotations

import numpy as np
import pytest

from quant_retriever.store import And, Cond, Not, Or, QuantizedStore

DOCS = {
    "a": {"color": "red", "n": 1, "tags": ["x", "y"], "flag": True, "title": "Quantized Retrieval"},
    "b": {"color": "blue", "n": 2, "tags": ["y"], "flag": False, "title": "binary codes"},
    "c": {"color": "red", "n": 3.5, "tags": [], "title": "INT8 rescoring"},
    "d": {"n": "3", "tags": ["z"], "empty": None},
    "e": {},
}


def vecs(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=["int4", "binary", "int8", "fp16"])
def store(request):
    s = QuantizedStore(codec=request.param)
    s.upsert(list(DOCS), vecs(5), [f"text {k}" for k in DOCS], list(DOCS.values()))
    return s


FILTERS = [
    (Cond("color", "eq", "red"), {"a", "c"}),
    (Cond("color", "ne", "red"), {"b", "d", "e"}),
    (Cond("n", "lt", 3), {"a", "b"}),
    (Cond("n", "lte", 2), {"a", "b"}),
    (Cond("n", "gt", 2), {"c"}),
    (Cond("n", "gte", 2), {"b", "c"}),
    (Cond("n", "gt", "2"), {"d"}),  # strings compare with strings only
    (Cond("color", "in", ["red", "blue"]), {"a", "b", "c"}),
    (Cond("color", "nin", ["red"]), {"b", "d", "e"}),
    (Cond("tags", "contains", "y"), {"a", "b"}),
    (Cond("tags", "any", ["x", "z"]), {"a", "d"}),
    (Cond("tags", "all", ["x", "y"]), {"a"}),
    (Cond("title", "substring", "binary"), {"b"}),
    (Cond("title", "substring", "int8"), set()),
    (Cond("title", "isubstring", "int8"), {"c"}),
    (Cond("title", "like", "%re%"), {"c"}),  # LIKE is case-sensitive
    (Cond("title", "ilike", "%RE%"), {"a", "c"}),
    (Cond("title", "like", "binary code_"), {"b"}),
    (Cond("title", "like", "binary"), set()),  # LIKE matches the whole string
    (Cond("title", "ilike", "int8%"), {"c"}),
    (Cond("color", "exists"), {"a", "b", "c"}),
    (Cond("empty", "exists"), {"d"}),
    (Cond("empty", "eq", None), set(DOCS)),  # missing and null are the same None
    (Cond("empty", "ne", None), set()),
    (Cond("color", "in", [None, "blue"]), {"b", "d", "e"}),
    (Cond("tags", "all", []), {"a", "b", "c", "d"}),  # every list, not documents without one
    (Cond("tags", "is_empty"), {"c", "e"}),
    (Cond("color", "is_empty"), {"d", "e"}),
    (Cond("empty", "is_empty"), set(DOCS)),
    (Cond("flag", "eq", True), {"a"}),
    (Cond("flag", "eq", False), {"b"}),
    (Cond("n", "eq", 1.0), {"a"}),
    (Cond("missing", "eq", "x"), set()),
    (And((Cond("color", "eq", "red"), Cond("n", "gt", 2))), {"c"}),
    (Or((Cond("color", "eq", "blue"), Cond("tags", "contains", "z"))), {"b", "d"}),
    (Not(Cond("color", "eq", "red")), {"b", "d", "e"}),
    (Or((And((Cond("color", "eq", "red"), Not(Cond("n", "eq", 1)))), Cond("n", "eq", "3"))), {"c", "d"}),
    (And(()), set(DOCS)),
    (Or(()), set(DOCS)),  # an empty group places no restriction
]


@pytest.mark.parametrize("where, expected", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_every_filter_operator_gives_exact_ids(store, where, expected):
    hits = store.search(vecs(1, seed=9), k=10, where=where)[0]
    assert {r.id for r, _ in hits} == expected
    assert {r.id for r in store.records(where)} == expected


def test_filter_applies_before_top_k(store):
    x = vecs(5)
    # the query is document "a" itself; with a filter excluding it, k=1 still returns a hit
    hits = store.search(x[0], k=1, where=Cond("color", "eq", "blue"))[0]
    assert [r.id for r, _ in hits] == ["b"]
    hits = store.search(x[0], k=2, where=Not(Cond("color", "eq", "red")))[0]
    assert len(hits) == 2 and {r.id for r, _ in hits} <= {"b", "d", "e"}
    assert [r.id for r, _ in store.search(x[0], k=3, ids=["c", "e", "zz"])[0]] in (["c", "e"], ["e", "c"])


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: Cond("k", "eq", {"a": 1}), TypeError),
        (lambda: Cond("k", "lt", True), TypeError),
        (lambda: Cond("k", "in", "abc"), TypeError),
        (lambda: Cond("k", "contains", ["a"]), TypeError),
        (lambda: Cond("k", "substring", 3), TypeError),
        (lambda: Cond("k", "eq", float("nan")), ValueError),
        (lambda: Cond("k", "like", "ends with \\"), ValueError),
        (lambda: Cond("k", "is_empty", "x"), TypeError),
        (lambda: Cond(1, "eq", "x"), TypeError),
        (lambda: And((Cond("k", "eq", 1), "k = 1")), TypeError),
        (lambda: "color = 'red'", TypeError),
    ],
)
def test_bad_filters_raise_and_change_nothing(store, make, error):
    with pytest.raises(error):
        where = make()
        store.search(vecs(1), k=3, where=where)
    with pytest.raises(error):
        store.delete_where(make())
    assert len(store) == 5


def test_unknown_operator_is_never_ignored():
    with pytest.raises(ValueError, match="Invalid operator: 'regex'"):
        Cond("k", "regex", ".*")


def test_records_round_trip_and_upsert_replaces(store):
    [a] = store.get(["a"])
    assert (a.id, a.text, a.metadata) == ("a", "text a", DOCS["a"])
    new = vecs(1, seed=5)
    store.upsert(["a"], new, ["new text"], [{"v": 2}])
    assert len(store) == 5 and len(store.index) == 5
    [a2] = store.get(["a"])
    assert (a2.text, a2.metadata) == ("new text", {"v": 2})
    assert store.search(new, k=1)[0][0][0].id == "a"
    assert [r.id for r in store.get(["e", "zz", "a"])] == ["e", "a"]


def test_delete_and_delete_where(store):
    assert store.delete(["a", "zz"]) == ["a"]
    assert store.delete_where(Cond("color", "eq", "red")) == 1
    assert {r.id for r in store.records()} == {"b", "d", "e"}
    assert len(store.index) == 3
    store.clear()
    assert len(store) == 0 and store.search(vecs(1), k=3) == [[]]


def test_bad_writes_raise_and_change_nothing(store):
    cases = [
        (["x"], vecs(2), ["t"], None, ValueError),
        (["x", "x"], vecs(2), ["t", "t"], None, ValueError),
        ([1], vecs(1), ["t"], None, TypeError),
        (["x"], vecs(1), [None], None, TypeError),
        (["x"], vecs(1), ["t"], [{"when": object()}], TypeError),
        (["x"], vecs(1, dim=8), ["t"], None, ValueError),
        (["x"], np.full((1, 16), np.nan, np.float32), ["t"], None, ValueError),
    ]
    for ids, v, texts, metas, error in cases:
        with pytest.raises(error):
            store.upsert(ids, v, texts, metas)
    assert len(store) == 5 and len(store.index) == 5


def test_dimension_comes_from_the_first_upsert():
    s = QuantizedStore()
    assert s.dim is None and s.search(vecs(2, dim=7), k=3) == [[], []]
    s.upsert(["a"], vecs(1, dim=7), ["t"])
    assert s.dim == 7


def test_persistent_store_reopens_with_everything(tmp_path):
    s = QuantizedStore(codec="int4", path=tmp_path / "st")
    x = vecs(50)
    ids = [f"doc-{i}" for i in range(50)]
    s.upsert(ids, x, [f"text {i}" for i in range(50)], [{"i": i} for i in range(50)])
    s.delete(["doc-3"])
    s.upsert(["doc-4"], vecs(1, seed=7), ["replaced"], [{"i": -4}])
    before = s.search(x[:5], k=5, where=Cond("i", "gte", 0))
    assert s.verify() == []
    with pytest.raises(RuntimeError, match="already open for writing"):
        QuantizedStore.open(tmp_path / "st")
    s.close()
    r = QuantizedStore.open(tmp_path / "st")
    assert len(r) == 49 and len(r.index) == 49 and r.dim == 16
    after = r.search(x[:5], k=5, where=Cond("i", "gte", 0))
    assert [[(a.id, a.metadata) for a, _ in row] for row in before] == [[(a.id, a.metadata) for a, _ in row] for row in after]
    assert r.get(["doc-4"])[0].text == "replaced"
    assert r.get(["doc-3"]) == []


def test_open_reconciles_a_write_interrupted_between_parts(tmp_path):
    s = QuantizedStore(codec="int4", path=tmp_path / "st")
    s.upsert(["a", "b"], vecs(2), ["A", "B"])
    s.index.add(vecs(1, seed=3))  # index rows SQLite never committed (crash after step 1)
    with s._db:
        s._db.execute("INSERT INTO docs VALUES (999, 'ghost', 'G', '{}')")  # a record without vectors
    assert s.verify() == ["1 records without vectors, 1 vectors without records"]
    s.close()
    r = QuantizedStore.open(tmp_path / "st")
    assert sorted(rec.id for rec in r.records()) == ["a", "b"]
    assert len(r.index) == 2 and r.verify() == []


def test_not_a_store_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedStore.open(tmp_path)
    (tmp_path / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedStore.open(tmp_path)
