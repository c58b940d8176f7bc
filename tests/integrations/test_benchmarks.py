"""The benchmark scripts stay runnable: each one imports against the package as it is now, and
``bench_paths.py`` (every search path of docs/benchmarks.md's table) runs end to end at a tiny size.

Benchmarks are timed by people, not by tests: nothing here checks a speed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


def _load(path: Path):
    sys.path.insert(0, str(BENCHMARKS))  # scripts import their neighbours (bench_encoders)
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_benchmark_is_found():
    assert {p.stem for p in SCRIPTS} >= {"bench_paths", "bench_sharded", "bench_rerank", "bench_encoders"}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_a_benchmark_imports_and_has_a_main(path):
    module = _load(path)
    assert callable(module.main) and module.__doc__


def test_bench_paths_runs_every_path_at_a_tiny_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUANT_RETRIEVER_CACHE", str(tmp_path))
    bench = _load(BENCHMARKS / "bench_paths.py")
    bench.main(
        ["--n-real", "300", "--n-random", "3000", "--runs", "70", "--embed-precision", "int8", "--thread-rounds", "1"]
    )
    out = capsys.readouterr().out
    for row in (
        "int4 store search, filter matching 1/5, after a write",
        "binary store search, filter matching 1/5, repeated",
        "int4 store, kernel threads 1",
        "one small query beside a 3,000-query batch",
        "faiss IndexBinaryFlat, 300 vectors",
        "fp16, 32 queries (per query)",
        "FP32 matmul + top-k in torch",
        "faiss SQ QT_4bit",
    ):
        assert row in out, row


def test_bench_hybrid_prints_every_table_at_a_tiny_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUANT_RETRIEVER_CACHE", str(tmp_path))
    bench = _load(BENCHMARKS / "bench_hybrid.py")
    bench.main(
        [
            "--docs",
            "300",
            "--queries",
            "20",
            "--n",
            "1200",
            "--rounds",
            "1",
            "--latency-queries",
            "4",
            "--embed-n",
            "20",
        ]
        + ["--no-sharded"]
    )
    out = capsys.readouterr().out
    for row in ("LangChain   int4   hybrid", "LlamaIndex  binary keyword", "name      copy < ", "porter unicode61"):
        assert row in out, row
    assert "bytes per document" in out and "4. two shards" not in out


def test_bench_peers_prints_every_method_at_a_tiny_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUANT_RETRIEVER_CACHE", str(tmp_path))
    bench = _load(BENCHMARKS / "bench_peers.py")
    bench.main(["--docs", "300", "--queries", "20", "--n-random", "3000", "--rounds", "1", "--multipliers", "2"])
    out = capsys.readouterr().out
    for row in (
        "ours rq2 + INT8 x2",
        "ours rq1",
        "ours binary + INT8 x2",
        "faiss RaBitQ 1-bit + SQ8 x2",
        "turbovec 2-bit",
    ):
        assert row in out, row
    assert "random: 3,000 unit vectors" in out


def test_interleaved_timings_alternate_their_calls():
    """Ratios in the benchmarks come from calls made in turn, so a burst of load falls on both."""
    from quant_retriever.bench import interleaved_ms

    calls: list[str] = []
    fast, slow = interleaved_ms(lambda: calls.append("a"), lambda: (calls.append("b"), time.sleep(0.002)), runs=9)
    assert calls == ["a", "b"] * 9
    assert fast < 1.0 <= 2.0 <= slow
