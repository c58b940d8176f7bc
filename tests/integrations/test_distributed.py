"""ShardedIndex and ShardedStore on a real local Ray instance: differential against one
QuantizedIndex/QuantizedStore for every codec (with and without filters), routing, bad input,
persistence, and shards that die."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="the distributed tests need the 'ray' extra: pip install 'quant-retriever[ray]'"
)

from quant_retriever.distributed import ShardedIndex, ShardedStore, ShardError, shard_of  # noqa: E402
from quant_retriever.index import QuantizedIndex  # noqa: E402
from quant_retriever.store import And, Cond, Not, QuantizedStore  # noqa: E402

CODECS = ["int4", "binary", "int8", "fp16", "fp32"]
EXACT = {"int8", "fp16", "fp32"}  # first-stage scores are final: no candidate budget involved
DIM = 97  # odd: not a multiple of 8, of the int4 block or of a 64-bit word
SHARDS = 2


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def data(n: int, seed: int) -> np.ndarray:
    """Vectors of varied norms (every codec stores a norm)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x * rng.uniform(0.5, 2.0, size=(n, 1)).astype(np.float32)


def kill(sharded, shard: int) -> None:
    """SIGKILL the process of one shard's actor, as a crash would."""
    os.kill(ray.get(sharded.actors[shard].pid.remote()), signal.SIGKILL)


def reference_merge(results, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the best ``k`` of all shards' (id, score) pairs: score descending, id ascending."""
    ids, scores = [], []
    for i in range(results[0].ids.shape[0]):
        pairs = sorted(((s, j) for r in results for j, s in zip(r.ids[i], r.scores[i])), key=lambda p: (-p[0], p[1]))[
            :k
        ]
        ids.append([j for _, j in pairs])
        scores.append([s for s, _ in pairs])
    return np.array(ids, dtype=np.int64), np.array(scores, dtype=np.float32)


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------- routing
def test_routing_is_stable_and_documented():
    # the scheme, written out independently; a change would strand every existing directory
    def splitmix64(i: int) -> int:
        z = (i + 0x9E3779B97F4A7C15) & (2**64 - 1)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        return z ^ (z >> 31)

    strs = ["", "a", "doc-1", "ünïcode ✓", "x" * 1000, "guide/intro.md#3"]
    ints = [0, 1, 2, 12345, 2**62, 2**63 - 1]
    for shards in (1, 2, 3, 7, 64):
        want = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % shards for s in strs]
        assert shard_of(strs, shards).tolist() == want
        assert shard_of(ints, shards).tolist() == [splitmix64(i) % shards for i in ints]
        assert shard_of(np.array(ints, dtype=np.uint64), shards).tolist() == shard_of(ints, shards).tolist()
    # pinned: the same on every machine, forever
    assert shard_of(["doc-1", "a", "b", "guide/intro.md#3", "x", "y"], 7).tolist() == [4, 4, 0, 1, 2, 6]
    assert shard_of([0, 1, 2, 3, 12345, 2**63 - 1], 7).tolist() == [2, 2, 4, 2, 5, 2]
    # balanced enough for sequential ids and for typical string ids
    for ids in (np.arange(20000), [f"chunk-{i}" for i in range(20000)]):
        counts = np.bincount(shard_of(ids, 4), minlength=4)
        assert counts.min() > 0.9 * 5000 and counts.max() < 1.1 * 5000
    for bad, err in (("abc", TypeError), ([1, "a"], TypeError), ([1.5], TypeError), ([True], TypeError)):
        with pytest.raises(err):
            shard_of(bad, 2)
    with pytest.raises(ValueError):
        shard_of([1], 0)


# ---------------------------------------------------------------------------- index
def _bad_calls(n_live_id: int):
    """Calls that must fail on one index, each as (method, args, kwargs)."""
    x = data(3, seed=9)
    nan = x.copy()
    nan[1, 5] = np.nan
    return [
        ("add", (data(2, 1)[:, :50],), {}),
        ("add", (nan,), {}),
        ("add", (x,), {"ids": [900001, 900002]}),
        ("add", (x,), {"ids": [900001, 900001, 900002]}),
        ("add", (x,), {"ids": [900001, -5, 900002]}),
        ("add", (x,), {"ids": [1.5, 2.5, 3.5]}),
        ("add", (x,), {"ids": [900001, n_live_id, 900002]}),  # one id taken: nothing is added
        ("remove", ([n_live_id, 987654],), {}),  # one unknown: nothing is removed
        ("remove", ("ab",), {}),
        ("search", (x,), {"k": 0}),
        ("search", (x,), {"k": "3"}),
        ("search", (x,), {"rescore_multiplier": 0}),
        ("search", (x[:, :10],), {}),
        ("search", (x,), {"allowed_ids": "abc"}),
        ("search", (x,), {"allowed_ids": [0.5]}),
        ("get_vectors", ([987654],), {}),
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_index_matches_one_index(codec):
    x, q = data(1200, seed=1), data(6, seed=2)
    k = 10
    sharded = ShardedIndex(DIM, codec=codec, shards=SHARDS)
    single = QuantizedIndex(DIM, codec=codec)
    parts = [QuantizedIndex(DIM, codec=codec) for _ in range(SHARDS)]  # what each shard should hold

    def apply(op, ids, vectors=None):
        route = shard_of(ids, SHARDS)
        for s, part in enumerate(parts):
            mine = route == s
            if mine.any():
                part.add(vectors[mine], ids=ids[mine]) if op == "add" else part.remove(ids[mine])

    for batch in (x[:500], x[500:900]):  # automatic ids, in batches
        ids = sharded.add(batch)
        np.testing.assert_array_equal(ids, single.add(batch))
        apply("add", ids, batch)
    explicit = np.arange(10_000, 10_300) * 7
    np.testing.assert_array_equal(sharded.add(x[900:], ids=explicit), single.add(x[900:], ids=explicit))
    apply("add", explicit, x[900:])
    gone = np.concatenate([np.arange(0, 900, 5), explicit[::9]])
    sharded.remove(gone)
    single.remove(gone)
    apply("remove", gone)

    assert len(sharded) == len(single) == 1200 - len(gone)
    assert sharded.shard_sizes() == [len(p) for p in parts]
    np.testing.assert_array_equal(sharded.ids(), np.sort(single.ids()))
    probe = np.array([0, 1, 5, 899, 901, 70_000, int(explicit[1]), int(explicit[9])])
    np.testing.assert_array_equal(sharded.contains(probe), single.contains(probe))
    live = single.ids()[::37]
    np.testing.assert_array_equal(sharded.get_vectors(live), single.get_vectors(live))
    m_sharded, m_single = sharded.memory(), single.memory()
    assert (m_sharded.bytes_per_vector, m_sharded.disk_bytes_per_vector) == (
        m_single.bytes_per_vector,
        m_single.disk_bytes_per_vector,
    )
    assert m_sharded.disk_bytes == sum(p.memory().disk_bytes for p in parts)

    rng = np.random.default_rng(3)
    allowed = np.concatenate([rng.choice(single.ids(), 200, replace=False), gone[:20], [123_456_789]])
    for restrict in (None, allowed, allowed[:3], []):
        kw = {} if restrict is None else {"allowed_ids": restrict}
        got = sharded.search(q, k, **kw)
        # 1. exactly the merge of what one index per shard returns
        ids, scores = reference_merge([p.search(q, k, **kw) for p in parts], k)
        assert_same(got, type(got)(ids, scores))
        # 2. one index over all the data, with a candidate budget that covers every vector
        everything = len(single)
        assert_same(
            sharded.search(q, k, rescore_multiplier=everything, **kw),
            single.search(q, k, rescore_multiplier=everything, **kw),
        )
        # 3. at the default budget: exact codecs equal; int4 rescores a superset of the candidates
        one = single.search(q, k, **kw)
        assert got.ids.shape == one.ids.shape
        if codec in EXACT:
            assert_same(got, one)
        elif codec == "int4":
            assert (got.scores >= one.scores - 1e-4).all()
        if restrict is not None:
            assert set(got.ids.ravel()) <= set(np.asarray(restrict).tolist())

    # bad input: the same exception type as one index, and nothing changes
    before = sharded.search(q, k)
    for name, args, kwargs in _bad_calls(int(single.ids()[0])):
        with pytest.raises((ValueError, TypeError)) as one_error:
            getattr(single, name)(*args, **kwargs)
        with pytest.raises(one_error.type):
            getattr(sharded, name)(*args, **kwargs)
    assert len(sharded) == len(single)
    assert_same(sharded.search(q, k), before)
    assert sharded.verify() == []

    if codec == "int4":  # a shard of an in-memory index dies: every later call says so
        kill(sharded, 1)
        for call in (lambda: sharded.search(q, k), lambda: len(sharded), lambda: sharded.add(x[:2])):
            with pytest.raises(ShardError, match=r"shard 1.*in the actors' memory and is lost"):
                call()
        with pytest.raises(ShardError):
            sharded.restart()
    sharded.close()
    with pytest.raises(ValueError, match="closed"):
        sharded.search(q, k)


def test_persistent_index_reopens_and_rolls_back_a_failed_add(tmp_path):
    x = data(400, seed=4)
    path = tmp_path / "idx"
    index = ShardedIndex(DIM, codec="int4", path=path, shards=SHARDS)
    index.add(x[:300])
    index.remove(np.arange(250, 300))  # the highest ids: must not be handed out again
    with pytest.raises(RuntimeError, match="already open"):
        ShardedIndex.open(path)
    kill(index, 0)
    with pytest.raises(ShardError, match="shard 0"):
        index.add(x[300:])  # shard 1 took its part, then gave it back
    assert index.restart() == [0]
    assert len(index) == 250 and index.verify() == []
    index.close()

    index = ShardedIndex.open(path)
    assert len(index) == 250 and index.verify() == []
    ids = index.add(x[300:310])
    assert ids[0] >= 300  # automatic ids continue after every id ever reserved
    single = QuantizedIndex(DIM, codec="int4")
    single.add(x[:250], ids=np.arange(250))
    single.add(x[300:310], ids=ids)
    q = data(4, seed=5)
    assert_same(index.search(q, 5, rescore_multiplier=300), single.search(q, 5, rescore_multiplier=300))
    index.close()
    with pytest.raises(ValueError, match="created with 2 shards"):
        ShardedIndex.open(path, shards=3)
    with pytest.raises(ValueError, match="not a sharded store"):
        ShardedStore.open(path)


# ---------------------------------------------------------------------------- store
DOCS = {
    "a": {"color": "red", "n": 1, "tags": ["x", "y"]},
    "b": {"color": "blue", "n": 2, "tags": ["y"]},
    "c": {"color": "red", "n": 3.5, "tags": []},
    "d": {"n": "3", "tags": ["z"], "empty": None},
    "e": {},
}


def fill(store, n: int = 300, seed: int = 6) -> None:
    """Documents in batches, an upsert that replaces some, deletes by id and by filter."""
    x = data(n, seed)
    ids = [f"doc-{i}" for i in range(n)]
    metas = [dict(list(DOCS.values())[i % 5], i=i) for i in range(n)]
    for a, b in ((0, 120), (120, n)):
        store.upsert(ids[a:b], x[a:b], [f"text {i}" for i in range(a, b)], metas[a:b])
    again = slice(10, 60)
    store.upsert(
        ids[again],
        data(50, seed + 1),
        [f"new text {i}" for i in range(10, 60)],
        [{"color": "green", "i": i} for i in range(10, 60)],
    )
    store.delete(ids[::11] + ["never-there"])
    store.delete_where(Cond("i", "gte", n - 20))


FILTERS = [
    None,
    Cond("color", "eq", "red"),
    And((Cond("color", "ne", "red"), Cond("tags", "contains", "y"))),
    Not(Cond("color", "in", ["red", "green"])),
    Cond("color", "eq", "nobody"),
]


def check_bad_documents_change_nothing(store) -> None:
    """Bad input to a store: the same exception type as one QuantizedStore raises, before
    any shard writes (each bad batch spans both shards)."""
    x = data(4, seed=10)
    ids = ["p", "q", "r", "s"]
    assert set(shard_of(ids, SHARDS).tolist()) == {0, 1}
    store.upsert(ids, x, ["t"] * 4)
    bad = [
        (ids, x, ["t"] * 3, None),
        (ids, x, ["t"] * 4, [{"ok": 1}, {"ok": 2}, {"bad": object()}, {}]),
        (ids, x, ["t"] * 4, [{"ok": 1}, {"ok": 2}, {"nan": float("nan")}, {}]),
        (["p", "q", "r", 4], x, ["t"] * 4, None),
        (["p", "q", "p", "s"], x, ["t"] * 4, None),
        (ids, x[:, :40], ["t"] * 4, None),
        (ids, x[:3], ["t"] * 4, None),
    ]
    for args in bad:
        with pytest.raises((ValueError, TypeError)) as one_error:
            QuantizedStore(DIM).upsert(*args)
        with pytest.raises(one_error.type):
            store.upsert(*args)
    assert [r.text for r in store.get(ids)] == ["t"] * 4  # nothing was replaced
    assert store.search(x, 0) == [[] for _ in x]  # k=0: nothing, as QuantizedStore
    for call in (
        lambda: store.search(x, 2, where="color = 'red'"),
        lambda: store.delete_where("color = 'red'"),
        lambda: store.get("p"),
    ):
        with pytest.raises((ValueError, TypeError)):
            call()
    assert len(store) == 4


@pytest.mark.parametrize("codec", CODECS)
def test_store_matches_one_store(codec):
    sharded, single = ShardedStore(codec=codec, shards=SHARDS), QuantizedStore(codec=codec)
    fill(sharded)
    fill(single)
    assert len(sharded) == len(single)
    assert sum(sharded.shard_sizes()) == len(single)
    every = {r.id: (r.text, r.metadata) for r in single.records()}
    assert {r.id: (r.text, r.metadata) for r in sharded.records()} == every
    wanted = ["doc-12", "doc-0", "missing", "doc-299", "doc-12"]
    assert [(r.id, r.text, r.metadata) for r in sharded.get(wanted)] == [
        (r.id, r.text, r.metadata) for r in single.get(wanted)
    ]
    recs = single.get(["doc-3", "doc-40"])
    np.testing.assert_array_equal(sharded.vectors(sharded.get(["doc-3", "doc-40"])), single.vectors(recs))

    q = data(5, seed=8)
    allowed = [f"doc-{i}" for i in range(0, 300, 3)] + ["missing"]
    for where in FILTERS:
        for ids in (None, allowed, []):
            for mult in (len(single), 4):
                if mult == 4 and codec not in EXACT:
                    continue  # see test_index_matches_one_index for the default budget
                got = sharded.search(q, 7, mult, where=where, ids=ids)
                want = single.search(q, 7, mult, where=where, ids=ids)
                assert [[r.id for r, _ in row] for row in got] == [[r.id for r, _ in row] for row in want], (where, ids)
                np.testing.assert_allclose(
                    [[s for _, s in row] for row in got], [[s for _, s in row] for row in want], rtol=1e-5, atol=1e-4
                )
                assert all(r.text == every[r.id][0] and r.metadata == every[r.id][1] for row in got for r, _ in row)
    assert sharded.delete_where(Cond("color", "eq", "green")) == single.delete_where(Cond("color", "eq", "green"))
    assert len(sharded) == len(single)
    sharded.clear()
    assert len(sharded) == 0 and sharded.search(q, 3) == [[]] * 5
    check_bad_documents_change_nothing(sharded)
    assert sharded.verify() == []
    sharded.close()


def test_persistent_store_survives_a_dead_shard_and_reopens(tmp_path):
    path = tmp_path / "store"
    store = ShardedStore(path=path, shards=SHARDS)
    fill(store)
    q = data(3, seed=11)
    before = store.search(q, 5, where=Cond("color", "eq", "red"))
    records = sorted((r.id, r.text) for r in store.records())
    assert store.verify() == []
    assert json.loads((path / "manifest.json").read_text())["shards"] == SHARDS

    kill(store, 1)
    with pytest.raises(ShardError, match=r"shard 1.*restart\(\)") as err:
        store.search(q, 5)
    assert err.value.shards == [1]
    with pytest.raises(ShardError):
        len(store)
    with pytest.raises(ShardError):
        store.get(["doc-1"])
    assert store.restart() == [1]
    assert store.search(q, 5, where=Cond("color", "eq", "red")) == before

    # a write that reaches only one shard says so; repeating it once the shard is back is safe
    new_ids = ["late-1", "late-2", "late-3", "late-4"]
    assert set(shard_of(new_ids, SHARDS).tolist()) == {0, 1}
    kill(store, 0)
    with pytest.raises(ShardError, match=r"applied on shard\(s\) \[1\]"):
        store.upsert(new_ids, data(4, seed=12), ["late"] * 4)
    store.restart()
    store.upsert(new_ids, data(4, seed=12), ["late"] * 4)
    store.delete(new_ids)
    assert sorted((r.id, r.text) for r in store.records()) == records

    copy = tmp_path / "copy"
    store.save(copy)
    with pytest.raises(RuntimeError, match="already open"):
        ShardedStore.open(path)
    store.close()

    store = ShardedStore.open(path)
    assert store.search(q, 5, where=Cond("color", "eq", "red")) == before
    assert store.verify() == []
    store.close()
    # the copy: one ordinary QuantizedStore per shard, holding exactly its own ids
    copied = []
    for s in range(SHARDS):
        part = QuantizedStore.open(copy / f"shard-{s}")
        ids = [r.id for r in part.records()]
        assert set(shard_of(ids, SHARDS).tolist()) <= {s}
        copied += [(r.id, r.text) for r in part.records()]
        part.close()
    assert sorted(copied) == records

    with pytest.raises(ValueError, match="created with 2 shards"):
        ShardedStore.open(path, shards=4)
    with pytest.raises(ValueError, match="not a sharded index"):
        ShardedIndex.open(path)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "shards": 3}))
    with pytest.raises(ValueError, match="records 3 shards"):
        ShardedStore.open(copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "routing": "python-hash"}))
    with pytest.raises(ValueError, match="routing"):
        ShardedStore.open(copy)
    with pytest.raises(ValueError):
        ShardedStore.open(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="new or empty directory"):
        ShardedStore(path=path)


@pytest.mark.parametrize("kind", ["store", "index"])
def test_a_read_only_sharded_object_stays_read_only_through_a_restart(tmp_path, kind):
    """Read-only shards that die come back read-only: they never take the writer's lock (a
    writer elsewhere keeps working) and refuse writes."""
    path = tmp_path / kind
    if kind == "store":
        writer = ShardedStore(path=path, shards=SHARDS)
        fill(writer)
        opened, write = ShardedStore.open(path, read_only=True), lambda s: s.upsert(["x"], data(1, 3), ["x"])
    else:
        writer = ShardedIndex(DIM, codec="int4", path=path, shards=SHARDS)
        writer.add(data(50, seed=5))
        opened, write = ShardedIndex.open(path, read_only=True), lambda s: s.add(data(1, 3))
    count = len(opened)
    assert opened.read_only and count > 0
    kill(opened, 1)
    with pytest.raises(ShardError, match="shard 1"):
        len(opened)
    assert opened.restart() == [1]
    assert len(opened) == count and opened.verify() == []
    with pytest.raises(ValueError, match="read-only"):
        write(opened)
    write(writer)  # the writer still holds its lock: the restarted reader took none
    opened.close()
    writer.close()


# ---------------------------------------------------------------------------- keyword and hybrid
TEXTS = ["new text 17", "text 42 13 7", "nothing here", '"NEAR" AND (x* OR -y):']


def test_store_keyword_and_hybrid_modes_merge_each_branch_then_fuse_once():
    """Keyword search finds the same documents as one store (which documents match does not
    depend on BM25's statistics; the scores use each shard's own), and a hybrid search equals
    fusing the sharded store's own two branches, merged: each branch across the shards first,
    then one fusion (equal fused scores by shard, then key), with filters and allowed ids in
    both branches."""
    from quant_retriever.store.fusion import fuse_hits

    sharded, single = ShardedStore(codec="int4", shards=SHARDS), QuantizedStore(codec="int4")
    fill(sharded)
    fill(single)
    q = data(len(TEXTS), seed=8)
    allowed = [f"doc-{i}" for i in range(0, 300, 3)] + ["missing"]
    for where in FILTERS:
        for ids in (None, allowed, []):
            got = sharded.keyword_search(TEXTS, 400, where, ids)
            want = single.keyword_search(TEXTS, 400, where, ids)
            assert [{r.id for r, _ in row} for row in got] == [{r.id for r, _ in row} for row in want], (where, ids)
            hybrid = sharded.hybrid_search(q, TEXTS, 5, 300, where, ids, dense_top_k=12, sparse_top_k=9)
            dense = sharded.search(q, 12, 300, where, ids)
            keyword = sharded.keyword_search(TEXTS, 9, where, ids)
            by_shard = lambda r: (int(shard_of([r.id], SHARDS)[0]), r.key)  # noqa: E731  equal fused scores
            expected = [fuse_hits([d, s], 5, key=by_shard) for d, s in zip(dense, keyword)]
            assert [[(r.id, s) for r, s in row] for row in hybrid] == [[(r.id, s) for r, s in row] for row in expected]
    assert sharded.hybrid_search(q, TEXTS, 0) == [[]] * len(TEXTS)
    with pytest.raises(ValueError, match="one text per query"):
        sharded.hybrid_search(q, TEXTS[:1])
    with pytest.raises(ValueError, match="alpha must be"):
        sharded.hybrid_search(q, TEXTS, alpha=2)
    sharded.close()


def test_one_shard_ranks_keyword_and_hybrid_exactly_as_one_store():
    """With one shard BM25's statistics are the whole corpus's: the scores equal one store's.
    Every match is asked for, so no tie is cut differently (a store orders BM25 ties by key,
    the driver by id); fused ties are ordered by id on both sides."""
    sharded, single = ShardedStore(codec="int8", shards=1), QuantizedStore(codec="int8")
    fill(sharded)
    fill(single)
    q = data(len(TEXTS), seed=8)
    for where in FILTERS[:3]:
        got, want = sharded.keyword_search(TEXTS, 400, where), single.keyword_search(TEXTS, 400, where)
        assert [by_score(row) for row in got] == [by_score(row) for row in want], where
        got = sharded.hybrid_search(q, TEXTS, 6, 300, where, dense_top_k=300, sparse_top_k=400)
        want = single.hybrid_search(q, TEXTS, 6, 300, where, dense_top_k=300, sparse_top_k=400)
        assert [[r.id for r, _ in row] for row in got] == [[r.id for r, _ in row] for row in want], where
        for a, b in zip(got, want):
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-6)
    sharded.close()


def by_score(row) -> list[tuple[float, list[str]]]:
    """A ranking as its scores (best first), each with the ids that share it."""
    groups: dict[float, list[str]] = {}
    for record, score in row:
        groups.setdefault(round(score, 9), []).append(record.id)
    return [(score, sorted(ids)) for score, ids in groups.items()]


def test_store_records_api_matches_one_store():
    sharded, single = ShardedStore(codec="int4", shards=SHARDS), QuantizedStore(codec="int4")
    fill(sharded)
    fill(single)
    changed = ["doc-1", "doc-150", "missing", "doc-299"]
    metas = [{"color": "violet", "i": n} for n in range(len(changed))]
    assert sharded.update_metadata(changed, metas) == single.update_metadata(changed, metas)
    violet = Cond("color", "eq", "violet")
    assert sharded.count(violet) == single.count(violet) == 2 and sharded.count() == single.count()
    assert {r.id for r in sharded.get(where=violet)} == {r.id for r in single.get(where=violet)}
    assert sharded.keyword_search(["150"], 3, where=violet)[0][0][0].id == "doc-150"  # texts kept, filter sees it
    pages = [sharded.get(where=FILTERS[1], limit=7, offset=o) for o in range(0, 200, 7)]
    assert [r.id for page in pages for r in page] == [r.id for r in sharded.records(FILTERS[1])]
    with pytest.raises(TypeError, match="metadata"):
        sharded.update_metadata(["doc-2", "doc-3"], [{"ok": 1}, {"bad": object()}])  # nothing changed
    assert sharded.get(["doc-2"])[0].metadata == single.get(["doc-2"])[0].metadata
    assert sharded.settings["keywords"] == "porter unicode61" and sharded.verify() == []
    sharded.close()
