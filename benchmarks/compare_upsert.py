"""Upsert throughput of this tree against an earlier commit, side by side in one run.

    python benchmarks/compare_upsert.py 05e0d89            # the commit before the keyword index
    python benchmarks/compare_upsert.py 05e0d89 --rounds 11 --n 60000

Each round runs, in fresh processes and in alternating order: the earlier commit (checked out
with ``git worktree`` into a temporary directory), this tree without a keyword index
(``keywords=None``) and this tree with the default one. Each process fills a new persistent
int4 store with ``--n`` documents (``bench_hybrid.big_corpus``: the stdlib corpus repeated,
MiniLM vectors given) in upserts of 1,000, after one untimed fill. Prints the median seconds
per setting and its throughput as a ratio to the earlier commit's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_FILL = """
import json, sys, tempfile, time
sys.path.insert(0, {benchmarks!r})
import bench_hybrid
from quant_retriever._demo_corpus import embed_cached
from quant_retriever.store import QuantizedStore

ids, texts, _ = bench_hybrid.build_corpus(10)
ids, texts, x, metas = bench_hybrid.big_corpus(ids, texts, embed_cached(texts, progress=False), {n})
extra = {extra}

def fill(path):
    store = QuantizedStore(x.shape[1], codec="int4", path=path, metric="cosine", **extra)
    start = time.perf_counter()
    for s in range(0, len(ids), 1000):
        store.upsert(ids[s : s + 1000], x[s : s + 1000], texts[s : s + 1000], metas[s : s + 1000])
    seconds = time.perf_counter() - start
    store.close()
    return seconds

with tempfile.TemporaryDirectory() as tmp:
    fill(tmp + "/warm")
    print(json.dumps(fill(tmp + "/timed")))
"""


def run_fill(library: Path, extra: dict, n: int) -> float:
    code = _FILL.format(benchmarks=str(HERE), n=n, extra=repr(extra))
    env = {**os.environ, "PYTHONPATH": str(library), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the earlier commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=60_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.revision], check=True)
        try:
            settings = {
                f"{args.revision} (earlier)": (old, {}),
                "this tree, keywords=None": (ROOT, {"keywords": None}),
                "this tree, keyword index": (ROOT, {}),
            }
            times: dict[str, list[float]] = {name: [] for name in settings}
            for r in tqdm(range(args.rounds), desc="rounds"):
                for name in list(settings) if r % 2 == 0 else list(settings)[::-1]:
                    library, extra = settings[name]
                    times[name].append(run_fill(library, extra, args.n))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    base = statistics.median(next(iter(times.values())))
    print(f"upsert of {args.n:,} documents in batches of 1,000, median of {args.rounds} alternating rounds")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<34}{median:>8.3f} s{args.n / median:>10,.0f} docs/s   ratio {base / median:.3f}")


if __name__ == "__main__":
    main()
