"""Many threads searching while one thread upserts and deletes: no exception, no deleted id
returned by a search that started after its delete returned, no torn rows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from quant_retriever.store import QuantizedStore


def vec(i: int, dim: int = 32) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("codec", ["int4", "binary"])
def test_readers_and_one_writer(tmp_path, persistent, codec):
    store = QuantizedStore(32, codec, tmp_path / "s" if persistent else None)
    store.upsert([f"d{i}" for i in range(200)], np.stack([vec(i) for i in range(200)]), [f"text {i}" for i in range(200)],
                 [{"i": i} for i in range(200)])
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

    store = QuantizedStore(8, "int4", tmp_path / "s")
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
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "already open for writing" in proc.stdout, proc.stderr[-2000:]
    store.close()
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
