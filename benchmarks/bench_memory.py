"""Peak memory of a large INT4 index: build N x 384 vectors in batches (never holding the float
corpus), then search; prints the RSS after building and the peak RSS while searching.

    python benchmarks/bench_memory.py --n 1000000
"""

from __future__ import annotations

import argparse
import resource

import numpy as np
from tqdm import tqdm

from quant_retriever import QuantizedIndex


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--codec", default="int4")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    index = QuantizedIndex(384, codec=args.codec)
    start_rss = rss_mb()
    for _ in tqdm(range(0, args.n, 100_000), desc="adding"):
        x = rng.standard_normal((min(100_000, args.n - len(index)), 384), dtype=np.float32)
        index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
    mem = index.memory()
    built_rss, built_peak = rss_mb(), peak_mb()
    q = rng.standard_normal((32, 384), dtype=np.float32)
    for i in tqdm(range(64), desc="searching"):
        index.search(q[i % 32], k=10) if i % 2 else index.search(q, k=10)
    print(
        f"{args.n} x 384 {args.codec}: codes {mem.device_bytes / 2**20:.1f} MiB allocated "
        f"({mem.bytes_per_vector} B/vector), INT8 copy on disk {mem.disk_bytes / 2**20:.1f} MiB"
    )
    print(
        f"RSS before adding {start_rss:.0f} MiB; after building {built_rss:.0f} MiB (peak so far {built_peak:.0f} MiB)"
    )
    print(
        f"peak RSS over 64 searches (1 and 32 queries): {peak_mb():.0f} MiB; "
        f"search working set above the built index: {max(0.0, peak_mb() - built_peak):.0f} MiB"
    )


if __name__ == "__main__":
    main()
