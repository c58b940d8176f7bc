"""Writer process for test_crash.py: opens (or creates) a persistent store and performs random
upserts, deletes and compactions forever (upserts and deletes also compact on their own once
replaced rows pass a quarter of the index), logging ``BEGIN <op>`` before and ``END`` after each one
(fsynced), until it is killed."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from quant_retriever.store import QuantizedStore

DIM = 24


def vector_for(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def main(path: str, log: str, seed: int) -> None:
    store_dir = Path(path)
    store = (
        QuantizedStore.open(store_dir)
        if (store_dir / "store.sqlite").exists()
        else QuantizedStore(DIM, codec="int4", path=store_dir)
    )
    rng = np.random.default_rng(seed)
    with open(log, "a") as out:

        def note(line: str) -> None:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

        note("READY")
        step = 0
        while True:
            step += 1
            ids = sorted({f"d{int(i)}" for i in rng.integers(0, 60, size=int(rng.integers(1, 8)))})
            if rng.random() < 0.1:
                note("BEGIN " + json.dumps({"op": "compact"}))
                store.compact()
            elif rng.random() < 0.3 and len(store):
                op = {"op": "delete", "ids": ids}
                note("BEGIN " + json.dumps(op))
                store.delete(ids)
            else:
                texts = [f"{i} s{seed} n{step}" for i in ids]
                op = {"op": "upsert", "ids": ids, "texts": texts}
                note("BEGIN " + json.dumps(op))
                store.upsert(ids, np.stack([vector_for(t) for t in texts]), texts, [{"step": step} for _ in ids])
            note("END")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
