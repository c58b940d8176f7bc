"""Many threads searching while one thread upserts and deletes: no exception, no deleted id
returned by a search that started after its delete returned, no torn rows."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest

from quant_retriever.store import Cond, QuantizedStore


def vec(i: int, dim: int = 32) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("codec", ["int4", "binary"])
def test_readers_and_one_writer(tmp_path, persistent, codec):
    store = QuantizedStore(32, codec=codec, path=tmp_path / "s" if persistent else None)
    store.upsert(
        [f"d{i}" for i in range(200)],
        np.stack([vec(i) for i in range(200)]),
        [f"text {i}" for i in range(200)],
        [{"i": i} for i in range(200)],
    )
    deleted_at: dict[str, float] = {}
    errors: list[BaseException] = []
    observations: list[tuple[float, list]] = []
    stop = threading.Event()

    def writer():
        try:
            for i in range(200, 400):
                store.upsert([f"d{i}"], vec(i)[None], [f"text {i}"], [{"i": i}])
                victim = f"d{i - 200}"
                store.delete([victim])
                deleted_at[victim] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                i = int(rng.integers(0, 400))
                started = time.monotonic()
                hits = store.search(vec(i), k=5)[0]
                observations.append((started, [(r.id, r.text, r.metadata, s) for r, s in hits]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(observations) > 50
    for started, hits in observations:
        for doc_id, text, metadata, score in hits:
            i = int(doc_id[1:])
            assert text == f"text {i}" and metadata == {"i": i}  # never a torn record
            assert not (doc_id in deleted_at and deleted_at[doc_id] < started), f"{doc_id} returned after its delete"
            assert -1.01 <= score <= 1.01
    assert store.verify() == []
    assert {r.id for r in store.records()} == {f"d{i}" for i in range(200, 400)}


def test_a_second_process_cannot_open_a_store_for_writing(tmp_path):
    import subprocess
    import sys

    store = QuantizedStore(8, codec="int4", path=tmp_path / "s")
    store.upsert(["a"], vec(1, 8)[None], ["t"])
    code = (
        "import sys\n"
        "from quant_retriever.store import QuantizedStore\n"
        "try:\n"
        "    QuantizedStore.open(sys.argv[1])\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3 and "already open for writing" in proc.stdout, proc.stderr[-2000:]
    store.close()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("persistent", [False, True])
def test_a_small_search_never_waits_for_a_big_batch(tmp_path, persistent):
    """Searches take no lock for their scan: one small query beside a long batch finishes
    while the batch is still running."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60_000, 64)).astype(np.float32)
    store = QuantizedStore(64, codec="int8", path=tmp_path / "s" if persistent else None)
    for start in range(0, len(x), 20_000):
        ids = [f"d{i}" for i in range(start, start + 20_000)]
        store.upsert(
            ids, x[start : start + 20_000], ["t"] * 20_000, [{"g": i % 5} for i in range(start, start + 20_000)]
        )
    batch = rng.standard_normal((20_000, 64)).astype(np.float32)
    ended: list[float] = []

    def big():  # one call: with a store-wide lock the small searches would wait for its end
        store.search(batch, k=10, where=Cond("g", "eq", 1))
        ended.append(time.monotonic())

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.3)  # the batch is running
    finished = []
    for i in range(5):
        assert store.search(x[i], k=1)[0][0][0].id == f"d{i}"
        finished.append(time.monotonic())
    thread.join()
    assert max(finished) < ended[0], "a small search waited for the batch"


def test_a_write_between_two_identical_filtered_searches_changes_the_result():
    store = QuantizedStore(32, codec="int4")
    store.upsert(
        [f"d{i}" for i in range(100)],
        np.stack([vec(i) for i in range(100)]),
        ["t"] * 100,
        [{"color": "red" if i % 2 else "blue"} for i in range(100)],
    )
    red = Cond("color", "eq", "red")
    first = [r.id for r, _ in store.search(vec(7), k=3, where=red)[0]]
    assert first[0] == "d7"
    store.upsert(["new"], vec(7)[None], ["t"], [{"color": "red"}])  # an identical vector, now red too
    assert {r.id for r, _ in store.search(vec(7), k=2, where=red)[0]} == {"d7", "new"}
    store.upsert(["d7"], vec(7)[None], ["t"], [{"color": "blue"}])  # d7 is no longer red
    assert [r.id for r, _ in store.search(vec(7), k=1, where=red)[0]] == ["new"]
    store.delete(["new"])
    assert "new" not in {r.id for r, _ in store.search(vec(7), k=5, where=red)[0]}
    assert [r.id for r, _ in store.search(vec(7), k=1, where=Cond("color", "eq", "blue"))[0]] == ["d7"]


def test_a_repeated_filter_runs_no_sql_until_the_next_write():
    store = QuantizedStore(32, codec="int4")
    store.upsert(
        [f"d{i}" for i in range(200)],
        np.stack([vec(i) for i in range(200)]),
        ["t"] * 200,
        [{"n": i} for i in range(200)],
    )
    statements: list[str] = []
    store._db.connection.set_trace_callback(statements.append)
    where = Cond("n", "lt", 50)
    store.search(vec(1), k=5, where=where)
    first = [s for s in statements if "fields" in s]
    assert first  # the filter ran once
    statements.clear()
    hits = store.search(vec(2), k=5, where=Cond("n", "lt", 50))  # an equal filter, not the same object
    assert not [s for s in statements if "fields" in s]
    assert all(r.metadata["n"] < 50 for r, _ in hits[0])
    store.upsert(["x"], vec(3)[None], ["t"], [{"n": 1}])
    statements.clear()
    store.search(vec(2), k=5, where=where)
    assert [s for s in statements if "fields" in s]  # the write invalidated it


class PausedWrite:
    """The store's real SQLite connection, except that a write's last statement (its
    metadata fields) waits until released: the write held inside its open transaction, its
    documents already inserted and replaced ones deleted, uncommitted."""

    def __init__(self, db):
        self._db, self.reached, self.release = db, threading.Event(), threading.Event()

    def executemany(self, sql, *args):
        if sql.startswith("INSERT INTO fields"):
            self.reached.set()
            assert self.release.wait(60)
        return self._db.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


def finished_within(seconds: float, fn):
    """``fn()``'s result if it returns within ``seconds`` in another thread; else fails."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"still waiting after {seconds} s"
    return out[0]


@pytest.mark.parametrize("persistent", [False, True])
def test_searches_do_not_wait_for_a_write_inside_its_transaction(tmp_path, persistent, monkeypatch):
    """Searches read their hits' records through their own connections, not the writer's:
    a write held inside its transaction delays no search whose hits it does not touch, and is
    seen wholly or not at all."""
    store = QuantizedStore(32, codec="int4", path=tmp_path / "s" if persistent else None)
    store.upsert([f"d{i}" for i in range(50)], np.stack([vec(i) for i in range(50)]), [f"t{i}" for i in range(50)])
    paused = PausedWrite(store._db.connection)
    monkeypatch.setattr(store._db, "connection", paused)
    write = threading.Thread(  # adds "new" (as close to vec 7 as d7) and replaces d20
        target=lambda: store.upsert(["new", "d20"], np.stack([vec(7), vec(20)]), ["new", "replaced"], [{}, {"n": 2}])
    )
    write.start()
    assert paused.reached.wait(60)
    for i in (7, 33):
        hits = finished_within(10, lambda i=i: store.search(vec(i), k=2)[0])
        assert hits[0][0].id == f"d{i}" and "new" not in {r.id for r, _ in hits}
    replaced: list = []
    if persistent:  # the committed version, without waiting
        replaced.append(finished_within(10, lambda: store.search(vec(20), k=1)[0][0][0].text))
    else:  # the shared in-memory database shows the deletion uncommitted: the search waits it out
        waiter = threading.Thread(target=lambda: replaced.append(store.search(vec(20), k=1)[0][0][0].text))
        waiter.start()
    paused.release.set()
    write.join(60)
    if not persistent:
        waiter.join(60)
    assert replaced == ["t20" if persistent else "replaced"]
    assert store.search(vec(20), k=1)[0][0][0].text == "replaced"
    assert {r.id for r, _ in store.search(vec(7), k=2)[0]} == {"d7", "new"}
    assert store.verify() == []


@pytest.mark.parametrize("persistent", [False, True])
def test_closing_a_store_closes_the_connections_searches_used(tmp_path, persistent):
    store = QuantizedStore(32, codec="int4", path=tmp_path / "s" if persistent else None)
    store.upsert([f"d{i}" for i in range(50)], np.stack([vec(i) for i in range(50)]), ["t"] * 50)
    barrier = threading.Barrier(4)

    def search(i: int) -> None:
        barrier.wait()
        for j in range(20):
            assert store.search(vec(i + j), k=3)[0]

    threads = [threading.Thread(target=search, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    readers = list(store._db._readers)
    assert 1 <= len(readers) <= 4  # reused, at most one per concurrent search
    store.close()
    for db in readers:
        with pytest.raises(sqlite3.ProgrammingError):
            db.execute("SELECT 1")
    with pytest.raises(ValueError, match="closed"):
        store.search(vec(1), k=1)
