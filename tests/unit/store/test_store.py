"""QuantizedStore: SQLite records + the index; filters with exact expected ids; persistence."""

from __future__ import annotations

import re

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
    assert QuantizedStore.open(tmp_path / "st") is s  # opened again in this process: shared
    s.close()
    s.close()
    r = QuantizedStore.open(tmp_path / "st")
    assert len(r) == 49 and len(r.index) == 49 and r.dim == 16
    after = r.search(x[:5], k=5, where=Cond("i", "gte", 0))
    assert [[(a.id, a.metadata) for a, _ in row] for row in before] == [
        [(a.id, a.metadata) for a, _ in row] for row in after
    ]
    assert r.get(["doc-4"])[0].text == "replaced"
    assert r.get(["doc-3"]) == []


def test_filters_read_keys_from_the_value_index_alone(store):
    plan = store._db.connection.execute(
        "EXPLAIN QUERY PLAN SELECT key FROM fields WHERE name = ? AND elem = 0 AND kind = 2 AND val = ?", ("i", 3)
    ).fetchall()
    assert "COVERING INDEX fields_by_value" in " ".join(str(step) for step in plan)


def test_a_store_from_the_first_format_2_release_opens_and_filters_alike(tmp_path):
    import sqlite3

    s = QuantizedStore(codec="int4", path=tmp_path / "st")
    x = vecs(60)
    s.upsert([f"d{i}" for i in range(60)], x, [f"t{i}" for i in range(60)], [{"g": i % 3} for i in range(60)])
    where = Or([Cond("g", "eq", 1), Not(Cond("g", "in", [0, 1]))])
    before = [[r.id for r, _ in row] for row in s.search(x[:4], k=50, where=where)]
    s.close()
    db = sqlite3.connect(tmp_path / "st" / "store.sqlite")  # the value index as that release wrote it
    with db:
        db.execute("DROP INDEX fields_by_value")
        db.execute("CREATE INDEX fields_by_value ON fields (name, elem, kind, val)")
    db.close()
    r = QuantizedStore.open(tmp_path / "st")
    assert [[rec.id for rec, _ in row] for row in r.search(x[:4], k=50, where=where)] == before
    assert all(len(row) == 40 for row in before)
    r.upsert(["new"], vecs(1, seed=5), ["n"], [{"g": 2}])  # and it stays writable
    assert "new" in [rec.id for rec, _ in r.search(vecs(1, seed=5), k=1, where=Cond("g", "eq", 2))[0]]
    r.close()
    db = sqlite3.connect(tmp_path / "st" / "store.sqlite")  # any other index is still refused
    with db:
        db.execute("DROP INDEX fields_by_value")
        db.execute("CREATE INDEX fields_by_value ON fields (name, val)")
    db.close()
    with pytest.raises(ValueError, match="schema differs"):
        QuantizedStore.open(tmp_path / "st")


def test_open_reconciles_a_write_interrupted_between_parts(tmp_path):
    s = QuantizedStore(codec="int4", path=tmp_path / "st")
    s.upsert(["a", "b"], vecs(2), ["A", "B"])
    s.index.add(vecs(1, seed=3))  # index rows SQLite never committed (crash after step 1)
    assert s.verify() == ["0 records without vectors, 1 vectors without records"]
    s.close()
    r = QuantizedStore.open(tmp_path / "st")
    assert sorted(rec.id for rec in r.records()) == ["a", "b"]
    assert len(r.index) == 2 and r.verify() == []


def tree_bytes(path) -> dict:
    """Every file's bytes but the coordination files a read-only open may create (``.readers``,
    SQLite's ``-shm``/``-wal`` while it reads)."""
    skip = (".readers", "-shm", "-wal")
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.endswith(skip)]
    return {str(p.relative_to(path)): p.read_bytes() for p in files}


def test_records_without_vectors_are_refused_not_deleted(tmp_path):
    """No crash leaves a record without its vector (vectors are committed first): such a store
    has a damaged or foreign index, and a writable open must not "repair" it by deleting the
    records; it refuses, changing no byte. Read-only, the other records stay searchable."""
    s = QuantizedStore(codec="int4", path=tmp_path / "st")
    s.upsert(["a", "b"], vecs(2), ["A", "B"])
    with s._db.connection:
        s._db.connection.execute("INSERT INTO docs VALUES (999, 'ghost', 'G', '{}')")  # a record without vectors
    assert s.verify()[0] == "1 records without vectors, 0 vectors without records"
    assert s.verify()[1].startswith("keyword index: it disagrees with the texts")  # written behind its back
    s.close()
    before = tree_bytes(tmp_path / "st")
    with pytest.raises(ValueError, match=r"1 of its 3 records have no vector in index/ \(keys \[999\]\).*Nothing was"):
        QuantizedStore.open(tmp_path / "st")
    assert tree_bytes(tmp_path / "st") == before
    r = QuantizedStore.open(tmp_path / "st", read_only=True)
    assert [h[0].id for h in r.search(vecs(2), k=3)[0]] != [] and len(r.search(vecs(2), k=3)[0]) == 2
    assert "ghost" not in {h[0].id for row in r.search(vecs(5, seed=9), k=3) for h in row}
    r.close()
    assert tree_bytes(tmp_path / "st") == before


def test_not_a_store_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedStore.open(tmp_path)
    (tmp_path / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedStore.open(tmp_path)


# ------------------------------------------------------------------ odd and hostile input
import datetime as _dt  # noqa: E402
import enum  # noqa: E402
import json  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quant_retriever.store import MAX_METADATA_DEPTH  # noqa: E402

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
any_text = st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=8
)  # every code point SQLite can store, NUL too


def snapshot(s: QuantizedStore) -> list:
    return [(r.id, r.text, r.metadata) for r in s.records()]


@PROPERTY
@given(ids=st.lists(any_text, min_size=1, max_size=12, unique=True), data=st.data())
def test_any_string_id_round_trips_and_never_replaces_another(ids, data):
    """NUL, prefixes of other ids ("a" and "a\\0b"), quotes, newlines, any code point."""
    s = QuantizedStore(codec="int8")
    model = {}
    for batch in (ids[: len(ids) // 2], ids[len(ids) // 2 :]):
        if batch:
            texts = [f"text of {i!r}" for i in batch]
            s.upsert(batch, vecs(len(batch), seed=len(model)), texts, [{"id": i} for i in batch])
            model.update(zip(batch, texts))
    assert len(s) == len(model) and len(s.index) == len(model)
    assert {r.id: r.text for r in s.records()} == model
    assert [(r.id, r.text, r.metadata) for r in s.get(ids)] == [(i, model[i], {"id": i}) for i in ids]
    assert {r.id for r in s.records(Cond("id", "in", ids))} == set(ids)
    victims = data.draw(st.lists(st.sampled_from(ids), unique=True))
    assert s.delete(victims) == victims
    assert {r.id for r in s.records()} == set(ids) - set(victims) and s.verify() == []


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb"])
def test_strings_sqlite_cannot_store_are_refused_and_change_nothing(store, bad):
    before = snapshot(store)
    for ids, texts, metas in [
        ([bad], ["t"], None),
        (["x"], [bad], None),
        (["x"], ["t"], [{"k": bad}]),
        (["x"], ["t"], [{bad: 1}]),
    ]:
        with pytest.raises(ValueError, match="not valid Unicode"):
            store.upsert(ids, vecs(1), texts, metas)
    assert snapshot(store) == before and len(store.index) == 5


def test_a_bare_string_is_never_a_list_of_ids(store):
    for call in (store.delete, store.get, lambda x: store.search(vecs(1), ids=x)):
        with pytest.raises(TypeError, match="got the single str 'abc'"):
            call("abc")
    store.upsert(["x"], vecs(1), ["t"])
    with pytest.raises(TypeError, match="single str"):
        store.upsert("ab", vecs(2), ["t", "u"])
    with pytest.raises(TypeError, match="single str"):
        store.upsert(["p", "q"], vecs(2), "tu")
    with pytest.raises(TypeError, match="single dict"):
        store.upsert(["p"], vecs(1), ["t"], {"k": 1})
    assert sorted(r.id for r in store.records()) == ["a", "b", "c", "d", "e", "x"]


class Color(enum.IntEnum):
    RED = 1


class Tag(str, enum.Enum):
    NEW = "new"


ACCEPTED = [  # (value, what reads back): JSON data; subclasses of its types as the plain type
    (
        {"s": "x", "i": -(2**63), "f": 1.5, "b": True, "n": None},
        {"s": "x", "i": -(2**63), "f": 1.5, "b": True, "n": None},
    ),
    ({"l": (1, [2, {"k": ()}])}, {"l": [1, [2, {"k": []}]]}),
    ({"e": Color.RED, "t": Tag.NEW, "np": np.float64(0.25)}, {"e": 1, "t": "new", "np": 0.25}),
    ({"nul\0key": "nul\0value", 'q"': "\n"}, {"nul\0key": "nul\0value", 'q"': "\n"}),
]
REFUSED = [  # (value, error, what the message names)
    ({"when": _dt.datetime(2024, 1, 1)}, TypeError, "datetime"),
    ({"day": _dt.date(2024, 1, 1)}, TypeError, "date"),
    ({"raw": b"bytes"}, TypeError, "bytes"),
    ({"tags": {"a", "b"}}, TypeError, "set"),
    ({"n": np.int64(3)}, TypeError, "int64"),
    ({"b": np.bool_(True)}, TypeError, "bool"),
    ({"v": np.arange(3)}, TypeError, "ndarray"),
    ({"deep": [{"ok": 1, "x": object()}]}, TypeError, "metadata of item 1['deep'][0]['x'] is a object"),
    ({1: "one", "1": "uno"}, TypeError, "key 1 of type int"),
    ({"nested": {2.5: "x"}}, TypeError, "key 2.5"),
    ({"nan": float("nan")}, ValueError, "finite"),
    ({"inf": [float("inf")]}, ValueError, "finite"),
    ({"big": 2**63}, ValueError, "64 bits"),
]


@pytest.mark.parametrize("metadata, expected", ACCEPTED)
def test_metadata_json_data_round_trips(store, metadata, expected):
    store.upsert(["new"], vecs(1, seed=3), ["t"], [metadata])
    [r] = store.get(["new"])
    assert r.metadata == expected and json.dumps(r.metadata) == json.dumps(expected)


@pytest.mark.parametrize("metadata, error, named", REFUSED)
def test_non_json_metadata_is_refused_whole_and_changes_nothing(store, metadata, error, named):
    before = snapshot(store)
    with pytest.raises(error, match=re.escape(named)):
        store.upsert(["new", "a"], vecs(2, seed=3), ["t", "replaced"], [{"fine": 1}, metadata])
    assert snapshot(store) == before and len(store.index) == 5 and store.verify() == []


def test_deep_or_self_containing_metadata_raises_value_error(store):
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    loop: dict = {}
    loop["self"] = loop
    ok: list = []
    for _ in range(MAX_METADATA_DEPTH - 2):
        ok = [ok]  # with the metadata dict: exactly MAX_METADATA_DEPTH levels
    for bad in ({"deep": deep}, loop):
        with pytest.raises(ValueError, match=f"nested deeper than {MAX_METADATA_DEPTH} levels"):
            store.upsert(["new"], vecs(1), ["t"], [bad])
    assert len(store) == 5
    store.upsert(["new"], vecs(1), ["t"], [{"ok": ok}])
    assert store.get(["new"])[0].metadata == {"ok": ok}


@PROPERTY
@given(
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**64), 2**64),
            st.floats(),
            st.text(max_size=3),
            st.sampled_from(
                [_dt.date(2020, 1, 1), b"x", np.int32(1), np.float32(1.0), frozenset(), "lone \ud800", Color.RED]
            ),
        ),
        lambda kids: (
            st.lists(kids, max_size=3) | st.dictionaries(st.one_of(any_text, st.integers(0, 3)), kids, max_size=3)
        ),
        max_leaves=8,
    )
)
def test_metadata_is_stored_exactly_or_refused_whole(value):
    """One rule for every value: JSON data is stored as its plain JSON (and read back
    equal); anything else is refused with TypeError/ValueError, the store unchanged."""
    s = QuantizedStore(codec="fp16")
    s.upsert(["keep"], vecs(1), ["t"], [{"k": 1}])
    if json_data(value):
        s.upsert(["new"], vecs(1, seed=1), ["t"], [{"v": value}])
        assert s.get(["new"])[0].metadata == json.loads(json.dumps({"v": value}))
    else:
        with pytest.raises((TypeError, ValueError)):
            s.upsert(["new"], vecs(1, seed=1), ["t"], [{"v": value}])
        assert snapshot(s) == [("keep", "t", {"k": 1})] and len(s.index) == 1


class _Walked(dict):
    """A dict subclass: :func:`metadata_json` takes its full walk for it, never the flat path."""


@PROPERTY
@given(
    st.dictionaries(
        st.one_of(st.text(max_size=3), st.integers(0, 2)),
        st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=3)),
        max_size=4,
    )
)
def test_flat_metadata_fast_path_agrees_with_the_full_walk(metadata):
    """Differential: a flat dict's JSON (or its refusal) is the same on the one-pass fast path
    (plain dicts) as on the full walk (a dict subclass), and the fast path is taken exactly for
    flat dicts of ASCII keys whose values pass every check."""
    from quant_retriever.store import documents

    def outcome(m):
        try:
            return documents.metadata_json(m)
        except (TypeError, ValueError) as e:
            return type(e)

    assert outcome(metadata) == outcome(_Walked(metadata))
    if isinstance(outcome(metadata), str):  # the stored JSON is json.dumps's, to the byte
        assert outcome(metadata) == json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    ok = documents._flat_and_valid(metadata)
    assert ok == (
        all(isinstance(k, str) and k.isascii() for k in metadata)
        and json_data(metadata)
        and all(v is None or type(v) in (bool, int, float) or v.isascii() for v in metadata.values())
    )


def test_flat_metadata_takes_the_fast_path(monkeypatch):
    from quant_retriever.store import documents

    taken = []
    real = documents._flat_and_valid
    monkeypatch.setattr(documents, "_flat_and_valid", lambda m: taken.append(real(m)) or taken[-1])
    s = QuantizedStore(codec="fp16")
    s.upsert(["a", "b"], vecs(2), ["t", "u"], [{"k": 1, "s": "x", "f": 0.5}, {"l": [1]}])
    assert taken == [True, False, False] and [r.metadata for r in s.get(["a", "b"])] == [
        {"k": 1, "s": "x", "f": 0.5},
        {"l": [1]},
    ]


def json_data(v) -> bool:
    """The documented rule, restated for this test."""
    if v is None or isinstance(v, (bool, str)):
        return not isinstance(v, str) or all(not 0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, int):
        return -(2**63) <= v < 2**63
    if isinstance(v, float):
        return np.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(json_data(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and json_data(k) and json_data(x) for k, x in v.items())
    return False


# ------------------------------------------------------------------ k and the cosine metric


def test_k_zero_returns_empty_rows_and_bad_k_raises(store):
    assert store.search(vecs(3), k=0) == [[], [], []]
    with pytest.raises(ValueError, match="k must be >= 0"):
        store.search(vecs(1), k=-1)
    with pytest.raises(TypeError, match="k must be an int"):
        store.search(vecs(1), k=True)
    with pytest.raises(TypeError, match="k must be an int"):
        store.search(vecs(1), k=2.0)


@pytest.mark.parametrize("codec", ["int4", "binary", "int8", "fp16"])
def test_cosine_metric_scores_cosines_of_unnormalised_vectors(codec):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 32)).astype(np.float32) * rng.uniform(0.01, 50, (200, 1)).astype(np.float32)
    q = rng.standard_normal((5, 32)).astype(np.float32) * 7
    s = QuantizedStore(codec=codec, metric="cosine")
    s.upsert([str(i) for i in range(200)], x, ["t"] * 200)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    for row, qv in zip(s.search(q, k=10), qn):
        exact = xn @ qv
        for rec, score in row:
            assert -1.0 <= score <= 1.0
            assert score == pytest.approx(exact[int(rec.id)], abs=0.02 if codec != "binary" else 0.05)
    # a self-match scores at most 1, as a cosine must (int4 alone reports 1.0002 unclamped)
    self_hits = s.search(x[:20], k=1)
    assert all(row[0][1] <= 1.0 for row in self_hits)
    assert sum(row[0][0].id == str(i) for i, row in enumerate(self_hits)) >= 18


def test_inner_product_metric_keeps_raw_scores():
    x = vecs(4) * 3.0
    s = QuantizedStore(codec="fp16")
    s.upsert(list("abcd"), x, ["t"] * 4)
    [(rec, score)] = s.search(x[0], k=1)[0]
    assert rec.id == "a" and score == pytest.approx(9.0, rel=1e-3)


def test_zero_vectors_never_give_nan_under_cosine():
    s = QuantizedStore(codec="int4", metric="cosine")
    x = np.vstack([np.zeros((1, 16), np.float32), vecs(3)])
    s.upsert(["zero", "a", "b", "c"], x, ["t"] * 4)
    for q in (np.zeros(16, np.float32), vecs(1, seed=4)[0]):
        row = s.search(q, k=4)[0]
        assert len(row) == 4 and all(np.isfinite(score) and -1 <= score <= 1 for _, score in row)
    assert dict((r.id, sc) for r, sc in s.search(np.zeros(16, np.float32), k=4)[0]) == {
        "zero": 0.0,
        "a": 0.0,
        "b": 0.0,
        "c": 0.0,
    }
    assert dict((r.id, sc) for r, sc in s.search(vecs(1, seed=4)[0], k=4)[0])["zero"] == 0.0


def test_metric_is_recorded_and_kept_on_reopen_and_copies(tmp_path):
    with pytest.raises(ValueError, match="metric must be one of 'ip', 'cosine'; got 'l2'"):
        QuantizedStore(metric="l2")
    s = QuantizedStore(codec="int8", path=tmp_path / "st", metric="cosine")
    s.upsert(["a"], vecs(1) * 5, ["t"])
    s.save(tmp_path / "copy")
    s.close()
    for p in ("st", "copy"):
        r = QuantizedStore.open(tmp_path / p)
        assert r.metric == "cosine"
        r.upsert(["b"], vecs(1, seed=2) * 9, ["u"])
        assert np.linalg.norm(r.vectors(r.get(["b"]))) == pytest.approx(1.0, abs=0.02)
        r.close()
    plain = QuantizedStore(path=tmp_path / "ip")
    plain.close()
    assert QuantizedStore.open(tmp_path / "ip").metric == "ip"
