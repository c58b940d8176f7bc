"""``quant-retriever serve`` under load, on loopback: requests/s and latency with 1, 4 and 16
concurrent clients mixing searches and writes, and the cost of HTTP over an in-process search.

    python benchmarks/bench_serve.py                       # 60,000 documents, 1/4/16 clients
    python benchmarks/bench_serve.py --docs 5000 --requests 100 --clients 1 4   # a quick check

The store: ``--docs`` documents (seeded random 384-d unit vectors, short texts, a small
metadata dict), int4 with the INT8 rescore copy, built in-process and then served by a
``quant-retriever serve --no-model`` subprocess on a free 127.0.0.1 port (clients send
vectors: the model's cost is not the server's). Each client is a thread with its own
keep-alive ``RemoteStore``; every tenth request is an upsert of 10 new documents, the rest
searches by vector (k=10, rescore x4). Bounded: ``--requests`` per client and ``--seconds``
per concurrency level at most; any error is counted and printed.

Overhead: one client, ``--overhead`` searches alternating, in this process, between
``QuantizedStore.search`` on the same store (opened read-only beside the server) and the same
search over HTTP; the table gives both medians and their difference. Client threads share
the two cores with the server: at 16 clients the client side is part of what is measured.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from quant_retriever.server import RemoteStore
from quant_retriever.store import QuantizedStore

DIM, K = 384, 10


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(path: Path, n: int) -> None:
    with QuantizedStore(path=path, metric="cosine") as store:
        for i in tqdm(range(0, n, 5000), desc="store", leave=False):
            m = min(5000, n - i)
            ids = [f"doc-{j}" for j in range(i, i + m)]
            store.upsert(
                ids,
                unit(m, i),
                [f"document {j} about topic {j % 97}" for j in range(i, i + m)],
                [{"topic": j % 97} for j in range(i, i + m)],
            )


def start(path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "quant_retriever", "serve", "--store", str(path), "--port", str(port), "--no-model"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def client(url: str, n: int, deadline: float, seed: int, out: dict) -> None:
    store = RemoteStore(url, timeout=60)
    queries = unit(64, 10_000 + seed)
    search, write, errors = [], [], []
    for i in range(n):
        if time.monotonic() > deadline:
            break
        try:
            t = time.perf_counter()
            if i % 10 == 9:
                ids = [f"w{seed}-{i}-{j}" for j in range(10)]
                store.upsert(ids, unit(10, seed * 100_000 + i), ids)
                write.append(time.perf_counter() - t)
            else:
                store.search(queries[i % 64], k=K, rescore_multiplier=4)
                search.append(time.perf_counter() - t)
        except Exception as exc:  # counted and shown: the benchmark's "no errors" check
            errors.append(f"{type(exc).__name__}: {exc}")
    store.close()
    out[seed] = (search, write, errors)


def load(url: str, clients: int, requests: int, seconds: float) -> dict:
    out: dict = {}
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(url, requests, deadline, c, out)) for c in range(clients)]
    start_t = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_t
    search = [x for s, _, _ in out.values() for x in s]
    write = [x for _, w, _ in out.values() for x in w]
    errors = [x for _, _, e in out.values() for x in e]
    ms = lambda xs, q: 1e3 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {
        "clients": clients,
        "requests": len(search) + len(write),
        "rps": (len(search) + len(write)) / wall,
        "search p50": ms(search, 50),
        "search p99": ms(search, 99),
        "write p50": ms(write, 50),
        "write p99": ms(write, 99),
        "errors": errors,
    }


def overhead(url: str, path: Path, n: int) -> tuple[float, float]:
    remote = RemoteStore(url)
    local = QuantizedStore.open(path, read_only=True)
    queries = unit(n, 777)
    a, b = [], []
    try:
        for i in tqdm(range(n), desc="overhead", leave=False):
            t = time.perf_counter()
            local.search(queries[i], k=K, rescore_multiplier=4)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            remote.search(queries[i], k=K, rescore_multiplier=4)
            b.append(time.perf_counter() - t)
    finally:
        local.close()
        remote.close()
    return 1e3 * float(np.median(a)), 1e3 * float(np.median(b))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=60_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=300, help="requests per client at most")
    parser.add_argument("--seconds", type=float, default=60.0, help="per concurrency level at most")
    parser.add_argument("--overhead", type=int, default=300, help="alternating searches for the overhead")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        build(path, args.docs)
        proc, url = start(path)
        try:
            local_ms, http_ms = overhead(url, path, args.overhead)
            rows = [load(url, c, args.requests, args.seconds) for c in tqdm(args.clients, desc="load", leave=False)]
        finally:
            proc.terminate()
            proc.wait(60)
    print(f"\n{args.docs:,} documents, int4 + INT8 rescore x4, k={K}, loopback; 9 searches to 1 upsert of 10")
    head = f"{'clients':>8}{'requests':>10}{'req/s':>9}{'search p50':>12}{'p99':>9}{'write p50':>11}{'p99':>9}"
    print(f"{head}{'errors':>8}")
    for r in rows:
        print(
            f"{r['clients']:>8}{r['requests']:>10}{r['rps']:>9.1f}{r['search p50']:>12.2f}{r['search p99']:>9.2f}"
            f"{r['write p50']:>11.2f}{r['write p99']:>9.2f}{len(r['errors']):>8}"
        )
    print(
        f"\none search by vector, median of {args.overhead} alternating calls: in process {local_ms:.3f} ms, "
        f"over HTTP {http_ms:.3f} ms, overhead {http_ms - local_ms:.3f} ms"
    )
    for r in rows:
        for e in r["errors"][:5]:
            print(f"error ({r['clients']} clients): {e}")


if __name__ == "__main__":
    main()
