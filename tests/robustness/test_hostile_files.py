"""Loading from an untrusted directory: never executes code, and every damaged file raises a
clear ValueError that names it."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from quant_retriever import QuantizedIndex
from quant_retriever.files import headers
from quant_retriever.store import QuantizedStore


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def saved(tmp_path):
    x = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    index = QuantizedIndex(16, codec="int4", path=tmp_path / "idx", block_size=8)
    index.add(x)
    index.remove([3])
    index.close()
    return tmp_path / "idx"


def damage(path, name, data: bytes):
    (path / name).write_bytes(data)


FILES = ["codes.0.u8", "ids.0.i64", "deleted.0.i64", "rescore.0.int8"]


@pytest.mark.parametrize("name", ["manifest.json", *FILES])
def test_pickle_payloads_are_never_loaded(saved, tmp_path, name):
    marker = tmp_path / "pwned"
    damage(saved, name, pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=name.replace(".", "\\.")):
        QuantizedIndex.open(saved)
    assert not marker.exists()


def test_truncated_files_name_the_file(saved):
    for name in FILES:
        data = (saved / name).read_bytes()
        damage(saved, name, data[: len(data) // 2])
        with pytest.raises(ValueError, match=name.replace(".", "\\.")):
            QuantizedIndex.open(saved)
        damage(saved, name, data)
    assert len(QuantizedIndex.open(saved)) == 19


def test_oversized_header(saved, monkeypatch):
    monkeypatch.setattr(headers, "MAX_HEADER_BYTES", 64)
    with pytest.raises(ValueError, match="manifest.json: header is larger than any valid header"):
        QuantizedIndex.open(saved)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"version": 3}, "newer quant_retriever"),
        ({"version": "1"}, "invalid format version"),
        ({"format": "something.else"}, "expected a 'quant_retriever.index' header"),
        ({"dim": "sixteen"}, "field 'dim' must be an integer"),
        ({"codec": "pq"}, "field 'codec' must be one of"),
        ({"codec_params": {"block_size": 16}}, "field 'row_bytes' is 20 but codec"),  # a wrong row width
        ({"row_bytes": 99}, "field 'row_bytes' is 99"),
        ({"count": -1}, "field 'count' must be an integer in 0"),
        ({"n_deleted": 5}, "deleted.0.i64: expected"),
        ({"generation": 1}, "codes.1.u8: missing"),
    ],
)
def test_inconsistent_manifests(saved, change, match):
    manifest = json.loads((saved / "manifest.json").read_text())
    (saved / "manifest.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(ValueError, match=match):
        QuantizedIndex.open(saved)


def without_checksums(path):
    """The manifest as the first format-2 releases wrote it (no checksums): the checks that
    follow the checksum are reached."""
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["checksums"]
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_bad_deleted_rows(saved):
    np.array([500], dtype=np.int64).tofile(saved / "deleted.0.i64")
    with pytest.raises(ValueError, match="deleted.0.i64: its first 8 bytes do not match the checksum"):
        QuantizedIndex.open(saved)
    without_checksums(saved)
    with pytest.raises(ValueError, match="deleted.0.i64: row numbers repeat or fall outside"):
        QuantizedIndex.open(saved)


def test_hostile_store_files(tmp_path):
    marker = tmp_path / "pwned"
    store = QuantizedStore(8, path=tmp_path / "st")
    store.upsert(["a"], np.ones((1, 8), np.float32), ["t"])
    store.close()
    with store_db(tmp_path / "st") as db:
        db.execute("UPDATE meta SET value = '9' WHERE name = 'version'")
    with pytest.raises(ValueError, match="newer quant_retriever"):
        QuantizedStore.open(tmp_path / "st")
    (tmp_path / "st" / "store.sqlite").write_bytes(pickle.dumps(Payload(marker)))
    for suffix in ("-wal", "-shm"):
        (tmp_path / "st" / f"store.sqlite{suffix}").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="store.sqlite"):
        QuantizedStore.open(tmp_path / "st")
    assert not marker.exists()


def store_db(path):
    import contextlib
    import sqlite3

    @contextlib.contextmanager
    def cm():
        db = sqlite3.connect(str(path / "store.sqlite"))
        try:
            with db:
                yield db
        finally:
            db.close()

    return cm()
