"""Crash safety: a writer process is killed with SIGKILL at random moments; after every kill
the store must reopen, verify, hold every acknowledged write, and hold the interrupted write
either wholly or not at all, with codes, INT8 copy and SQLite agreeing.

The trial count is ``--crash-trials`` (default 12 in the suite; 50+ for the full run:
``./run.sh test tests/robustness/test_crash.py --crash-trials 50``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from quant_retriever.store import QuantizedStore

sys.path.insert(0, str(Path(__file__).parent))
from crash_writer import vector_for  # noqa: E402

WRITER = Path(__file__).parent / "crash_writer.py"


def apply(state: dict[str, str], op: dict) -> dict[str, str]:
    new = dict(state)
    if op["op"] == "compact":
        return new
    if op["op"] == "delete":
        for i in op["ids"]:
            new.pop(i, None)
    else:
        new.update(zip(op["ids"], op["texts"]))
    return new


def read_log(log: Path) -> tuple[list[dict], dict | None]:
    """(acknowledged ops, the op in flight when killed or None)."""
    done, pending = [], None
    for line in log.read_text().splitlines():
        if line.startswith("BEGIN "):
            pending = json.loads(line[6:])
        elif line == "END" and pending is not None:
            done.append(pending)
            pending = None
    return done, pending


def wait_for_ready(log: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "READY" in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("writer did not start")


def test_sigkill_at_random_points_loses_nothing(tmp_path, request):
    trials = request.config.getoption("--crash-trials")
    rng = np.random.default_rng(1234)
    path = tmp_path / "store"
    state: dict[str, str] = {}
    kills = survived = interrupted_applied = interrupted_absent = interrupted_compactions = 0
    ops_acknowledged = 0
    for trial in range(trials):
        log = tmp_path / f"log{trial}.txt"
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(log), str(trial)],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_ready(log, proc)
        time.sleep(float(rng.uniform(0.0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        done, pending = read_log(log)
        ops_acknowledged += len(done)
        interrupted_compactions += pending is not None and pending["op"] == "compact"
        for op in done:
            state = apply(state, op)

        store = QuantizedStore.open(path)  # must never fail
        assert store.verify() == [], f"trial {trial}: {store.verify()}"
        actual = {r.id: r.text for r in store.records()}
        if pending is not None and actual == apply(state, pending) and actual != state:
            interrupted_applied += 1
            state = actual
        elif pending is not None:
            interrupted_absent += 1
        assert actual == state, f"trial {trial}: acknowledged writes lost or partial write visible"
        # codes, INT8 copy and SQLite agree row by row
        records = list(store.records())
        if records:
            expected = np.stack([vector_for(r.text) for r in records])
            np.testing.assert_allclose(store.vectors(records), expected, atol=0.02)
            hits = store.search(expected, k=1)
            assert [h[0][0].id for h in hits] == [r.id for r in records]
        store.close()
        survived += 1
    print(
        f"\ncrash test: {trials} trials, {kills} SIGKILLs, {survived} reopened and verified, "
        f"{ops_acknowledged} acknowledged ops, 0 lost; interrupted op applied {interrupted_applied}x, "
        f"absent {interrupted_absent}x; killed inside an explicit compaction {interrupted_compactions}x"
    )
    assert survived == trials
