"""Faults, by class: writes that fail at every step, a full disk and a file-size
limit for real, an EIO on the directory fsync, interrupted creation and saves, files changed
behind an open index, links out of a store directory, hostile SQLite files, odd device
strings. After every fault: a call that raised changed nothing, in the open object and after
reopening, and the directory opens in its last committed state."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import quant_retriever.files.directories as directories_mod
import quant_retriever.files.headers as headers_mod
import quant_retriever.index.directory as index_mod
from quant_retriever import QuantizedIndex
from quant_retriever.devices import resolve_device
from quant_retriever.store import QuantizedStore

DIM = 16


def vecs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def state(store: QuantizedStore) -> tuple:
    """Everything a user can observe: records, and the top hits of a few fixed queries."""
    records = [(r.id, r.text, r.metadata) for r in store.records()]
    hits = [[(r.id, round(s, 4)) for r, s in row] for row in store.search(vecs(4, 99), k=5)] if records else []
    return records, hits


def make_store(path: Path, codec: str = "int4") -> QuantizedStore:
    store = QuantizedStore(DIM, codec=codec, path=path, block_size=8)
    store.upsert([f"d{i}" for i in range(30)], vecs(30), [f"t{i}" for i in range(30)], [{"i": i} for i in range(30)])
    store.delete(["d3", "d4"])
    return store


def enospc(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------- writes that fail


class FailingConnection:
    """The store's real SQLite connection, except that one statement fails as a full disk would."""

    def __init__(self, db: sqlite3.Connection, fail_on: str):
        self._db, self._fail_on = db, fail_on

    def execute(self, sql, *args):
        if sql.strip().upper().startswith(self._fail_on):
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


UPSERT_STEPS = ["rescore", "codes", "ids", "manifest", "BEGIN", "COMMIT"]
CASES = [(op, step) for op in ("upsert-new", "upsert-replace") for step in UPSERT_STEPS] + [
    ("delete", "BEGIN"),
    ("delete", "COMMIT"),  # a delete writes nothing before its transaction
]


@pytest.mark.parametrize("op, step", CASES)
def test_a_write_that_fails_at_any_step_changes_nothing(tmp_path, monkeypatch, op, step):
    store = make_store(tmp_path / "s")
    before = state(store)
    if step in ("BEGIN", "COMMIT"):
        monkeypatch.setattr(store._db, "connection", FailingConnection(store._db.connection, step))
    elif step == "rescore":
        monkeypatch.setattr(index_mod.RescoreFile, "append", enospc)
    elif step == "manifest":
        monkeypatch.setattr(index_mod, "write_json_atomic", enospc)
    else:
        real = index_mod.append_raw
        monkeypatch.setattr(
            index_mod, "append_raw", lambda p, c, d: enospc() if Path(p).name.startswith(step) else real(p, c, d)
        )
    call = {
        "upsert-new": lambda: store.upsert(["n1", "n2"], vecs(2, 5), ["new", "new"], [{"i": 100}, {"i": 101}]),
        "upsert-replace": lambda: store.upsert(["d1", "n1"], vecs(2, 6), ["repl", "new"], [{"i": -1}, {}]),
        "delete": lambda: store.delete(["d1", "d2"]),
    }[op]
    with pytest.raises((OSError, sqlite3.Error)):
        call()
    monkeypatch.undo()
    assert state(store) == before and store.verify() == []
    store.close()
    reopened = QuantizedStore.open(tmp_path / "s")
    assert state(reopened) == before and reopened.verify() == []
    call = {  # and the store still works
        "upsert-new": lambda: reopened.upsert(["n1"], vecs(1, 5), ["new"]),
        "upsert-replace": lambda: reopened.upsert(["d1"], vecs(1, 6), ["repl"]),
        "delete": lambda: reopened.delete(["d1"]),
    }[op]
    call()
    assert reopened.verify() == []


def test_failing_to_record_deletions_after_the_commit_does_not_fail_the_call(tmp_path, monkeypatch):
    """The SQLite commit is the commit point: what follows is best effort and reconciled."""
    store = make_store(tmp_path / "s")
    real = index_mod.append_raw
    monkeypatch.setattr(
        index_mod, "append_raw", lambda p, c, d: enospc() if Path(p).name.startswith("deleted") else real(p, c, d)
    )
    with pytest.warns(RuntimeWarning, match="could not record deletions"):
        store.upsert(["d1"], vecs(1, 7), ["replaced"], [{"i": -1}])
    monkeypatch.undo()
    after = state(store)
    assert store.get(["d1"])[0].text == "replaced" and store.verify() == []
    store.close()
    reopened = QuantizedStore.open(tmp_path / "s")  # the unrecorded deletion is reconciled
    assert state(reopened) == after and reopened.verify() == []
    reopened.upsert(["d2"], vecs(1, 8), ["again"])  # and recorded by the next write
    assert reopened.verify() == [] and not reopened.index._pending


def test_an_eio_on_the_directory_fsync_after_the_manifest_rename(tmp_path, monkeypatch):
    index = QuantizedIndex(DIM, codec="int4", block_size=8, path=tmp_path / "idx")
    index.add(vecs(10))
    before = (index.ids().copy(), index.search(vecs(2, 3), k=3).ids)
    calls = []

    def fsync_dir(directory):
        calls.append(directory)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(headers_mod, "fsync_dir", fsync_dir)
    with pytest.raises(OSError, match="Input/output"):
        index.add(vecs(2, 1))
    monkeypatch.undo()
    assert np.array_equal(index.ids(), before[0]) and index.verify() == []
    index.close()
    reopened = QuantizedIndex.open(tmp_path / "idx")  # the previous manifest was put back
    assert np.array_equal(reopened.ids(), before[0])
    assert np.array_equal(reopened.search(vecs(2, 3), k=3).ids, before[1])


# ---------------------------------------------------------------- a real full disk, a real size limit


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_fails_writes_cleanly_and_still_opens(small_disk):
    store = make_store(small_disk / "s")
    before = state(store)
    filler = fill(small_disk)
    for attempt in range(5):  # the first failures may land in different steps
        with pytest.raises((OSError, sqlite3.Error)):
            store.upsert([f"x{attempt}" for _ in range(1)], vecs(1, attempt), ["big" * 20000])
        assert state(store) == before
    store.close()
    reopened = QuantizedStore.open(small_disk / "s")  # opening needs no free space
    assert state(reopened) == before and reopened.verify() == []
    filler.unlink()
    reopened.upsert(["x"], vecs(1, 9), ["fits now"])
    assert reopened.get(["x"])[0].text == "fits now" and reopened.verify() == []


WRITER = """
import resource, signal, sys
import numpy as np
from quant_retriever.store import QuantizedStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = QuantizedStore.open(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
rng = np.random.default_rng(0)
for i in range(100000):
    v = rng.standard_normal((1, 16)).astype(np.float32)
    try:
        store.upsert([f"w{i}"], v, ["x" * 2000])
    except Exception as exc:
        print("FAILED", i, type(exc).__name__, exc, flush=True)
        break
    print("OK", i, flush=True)
"""


def test_a_file_size_limit_in_another_process_loses_nothing(tmp_path):
    store = make_store(tmp_path / "s")
    store.close()
    limit = max(p.stat().st_size for p in (tmp_path / "s").rglob("*") if p.is_file()) + 40_000
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path / "s"), str(limit)], capture_output=True, text=True, timeout=600
    )
    done = [line for line in out.stdout.splitlines() if line.startswith("OK")]
    assert "FAILED" in out.stdout, (out.stdout[-500:], out.stderr[-2000:])
    reopened = QuantizedStore.open(tmp_path / "s")
    assert reopened.verify() == []
    written = {r.id for r in reopened.records() if r.id.startswith("w")}
    assert written == {f"w{i}" for i in range(len(done))}  # every acknowledged upsert, nothing else


# ---------------------------------------------------------------- interrupted creation and saves


CREATOR = """
import sys
from quant_retriever.store import QuantizedStore
from quant_retriever import QuantizedIndex
import numpy as np
print("READY", flush=True)
if sys.argv[2] == "store":
    s = QuantizedStore(16, "int4", sys.argv[1], block_size=8)
    s.upsert(["a"], np.ones((1, 16), np.float32), ["A"])
else:
    i = QuantizedIndex(16, path=sys.argv[1], block_size=8)
    i.add(np.ones((1, 16), np.float32))
print("DONE", flush=True)
"""


@pytest.mark.parametrize("kind", ["store", "index"])
def test_creation_killed_at_random_moments_leaves_a_directory_that_opens_or_is_created_again(tmp_path, kind):
    rng = np.random.default_rng(3)
    for trial in range(6):
        path = tmp_path / f"{kind}{trial}"
        proc = subprocess.Popen([sys.executable, "-c", CREATOR, str(path), kind], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        opener = QuantizedStore.open if kind == "store" else QuantizedIndex.open
        try:
            opened = opener(path)
        except ValueError as exc:  # not created yet: it must be possible to create it now
            assert "not a quant_retriever" in str(exc), exc
            opened = (
                QuantizedStore(16, codec="int4", path=path, block_size=8)
                if kind == "store"
                else QuantizedIndex(16, path=path, block_size=8)
            )
        assert opened.verify() == []
        opened.close()


def test_an_interrupted_save_leaves_no_temporaries_after_the_next_save(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s")
    real = index_mod.append_raw

    def crash(path, committed, data):
        if Path(path).name.startswith("ids"):
            raise KeyboardInterrupt  # like a kill: no cleanup code after this point runs
        return real(path, committed, data)

    monkeypatch.setattr(directories_mod.shutil, "rmtree", lambda *a, **k: None)  # what a SIGKILL skips
    monkeypatch.setattr(index_mod, "append_raw", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(tmp_path / "saved")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".saved.")]  # the leftover
    store.save(tmp_path / "saved")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".saved.")]
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [".lock", "index", "store.sqlite"]
    assert state(QuantizedStore.open(tmp_path / "saved")) == state(store)


# ---------------------------------------------------------------- files changed behind an open index


def test_a_rescore_file_deleted_under_an_open_index_is_detected(tmp_path):
    index = QuantizedIndex(DIM, codec="int4", block_size=8, path=tmp_path / "idx")
    index.add(vecs(20))
    (tmp_path / "idx" / "rescore.0.int8").unlink()
    with pytest.raises(ValueError, match="deleted while the index was open"):
        index.add(vecs(2, 1))
    assert len(index) == 20
    assert any("deleted" in p for p in index.verify())


def test_a_rescore_file_truncated_by_another_process_raises_instead_of_crashing(tmp_path):
    index = QuantizedIndex(DIM, codec="int4", block_size=8, path=tmp_path / "idx")
    index.add(vecs(200))
    index.search(vecs(1), k=3)  # the file is mapped now
    os.truncate(tmp_path / "idx" / "rescore.0.int8", 100)
    with pytest.raises(ValueError, match="truncated"):
        index.search(vecs(1), k=3)


# ---------------------------------------------------------------- links out of a directory


@pytest.mark.parametrize("name", ["codes.0.u8", "ids.0.i64", "deleted.0.i64", "rescore.0.int8", "manifest.json"])
def test_links_out_of_an_index_directory_are_never_followed(tmp_path, name):
    index = QuantizedIndex(DIM, codec="int4", block_size=8, path=tmp_path / "idx")
    index.add(vecs(5))
    index.close()
    outside = tmp_path / "outside"
    outside.write_bytes((tmp_path / "idx" / name).read_bytes() + b"tail")
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    (tmp_path / "idx" / name).unlink()
    (tmp_path / "idx" / name).symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link|missing|does not exist"):
        QuantizedIndex.open(tmp_path / "idx")
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == digest


def test_a_linked_lock_file_is_not_followed(tmp_path):
    index = QuantizedIndex(DIM, path=tmp_path / "idx")
    index.close()
    (tmp_path / "idx" / ".lock").unlink()
    (tmp_path / "idx" / ".lock").symlink_to(tmp_path / "created-outside")
    with pytest.raises(ValueError, match="symbolic link"):
        QuantizedIndex.open(tmp_path / "idx")
    assert not (tmp_path / "created-outside").exists()


def test_a_linked_store_database_is_refused(tmp_path):
    store = make_store(tmp_path / "s")
    store.close()
    os.rename(tmp_path / "s" / "store.sqlite", tmp_path / "elsewhere.sqlite")
    (tmp_path / "s" / "store.sqlite").symlink_to(tmp_path / "elsewhere.sqlite")
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedStore.open(tmp_path / "s")


# ---------------------------------------------------------------- hostile SQLite files


def hostile(tmp_path: Path, sql: str) -> Path:
    store = make_store(tmp_path / "s")
    store.close()
    db = sqlite3.connect(tmp_path / "s" / "store.sqlite")
    db.executescript(sql)
    db.close()
    return tmp_path / "s" / "store.sqlite"


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE pwned (x); CREATE TRIGGER t AFTER DELETE ON docs BEGIN INSERT INTO pwned VALUES (1); END;",
        "CREATE VIEW v AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c;",
        "CREATE INDEX extra ON docs (text);",
        "DROP INDEX fields_by_key;",
        "UPDATE meta SET value = '{\"codec\": 7}' WHERE name = 'settings';",
        "UPDATE meta SET value = 'nope' WHERE name = 'metric';",
        "DELETE FROM meta WHERE name = 'format';",
    ],
)
def test_a_store_file_that_is_not_exactly_ours_is_refused_untouched(tmp_path, sql):
    db_file = hostile(tmp_path, sql)
    digest = hashlib.sha256(db_file.read_bytes()).hexdigest()
    start = time.monotonic()
    with pytest.raises(ValueError, match="store.sqlite"):
        QuantizedStore.open(tmp_path / "s")
    assert time.monotonic() - start < 10  # a recursive view never runs
    assert hashlib.sha256(db_file.read_bytes()).hexdigest() == digest


def test_another_applications_database_is_never_written(tmp_path):
    (tmp_path / "s").mkdir()
    db = sqlite3.connect(tmp_path / "s" / "store.sqlite")
    db.executescript("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
    db.close()
    digest = hashlib.sha256((tmp_path / "s" / "store.sqlite").read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedStore.open(tmp_path / "s")
    with pytest.raises(ValueError, match="new or empty directory"):
        QuantizedStore(DIM, path=tmp_path / "s")
    assert hashlib.sha256((tmp_path / "s" / "store.sqlite").read_bytes()).hexdigest() == digest
    tables = sqlite3.connect(tmp_path / "s" / "store.sqlite").execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("users",)]


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps", "xla", "meta", "hpu", "tpu:0", "cpu:x", "", "gpu"])
def test_device_strings_get_a_value_error_naming_usable_devices(device):
    if torch.cuda.is_available() and device.startswith("cuda"):
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="usable here: cpu"):
        resolve_device(device)
    with pytest.raises(ValueError, match="usable here: cpu"):
        QuantizedIndex(DIM, device=device)
    with pytest.raises(ValueError, match="usable here: cpu"):
        QuantizedStore(DIM, device=device)


def test_device_of_the_wrong_type():
    for bad in (0, 1.0, ["cpu"], b"cpu"):
        with pytest.raises(TypeError, match="device must be"):
            resolve_device(bad)
