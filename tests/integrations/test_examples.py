"""The examples run end to end, offline, on a real corpus with the real MiniLM model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


#: What each RAG example promises: the question it asks, its chain's answer line (the fake
#: chat model's canned answer through LangChain's prompt; MockLLM's text through LlamaIndex's
#: query engine), and a word its first retrieved source must contain.
PROMISES = {
    "langchain_rag.py": (
        "How do I compress bytes with gzip?",
        r"^A: Use gzip\.compress\(data\) \(see the sources above\)\.$",
        "gzip",
    ),
    "llamaindex_query_engine.py": ("How do I read rows from a CSV file?", r"^A \(MockLLM\): '(text ?)+'$", "read"),
}


@pytest.mark.parametrize("script", sorted(PROMISES))
def test_example_retrieves_sources_and_compares_with_float32(script):
    question, answer, word = PROMISES[script]
    out = run_example(script, "--limit", "300")
    assert f"Q: {question}" in out and re.search(answer, out, flags=re.M), out
    sources = re.findall(r"^\s+(?:source: |\d\.\d{3}\s+)(\S+)\s+(.*)$", out, flags=re.M)
    assert len(sources) == 3, out
    assert word in sources[0][1].lower(), out  # the first source is about the question
    overlap = int(re.search(r"top-10 overlap with float32: (\d+)/10", out).group(1))
    assert overlap >= 7, out
    rows = re.findall(r"^(\w+VectorStore) .*?\s(\d+)\s+(\d+)\s+([\d.]+)$", out, flags=re.M)
    sizes = {name: int(ram) for name, ram, _, _ in rows}
    assert sizes["QuantizedVectorStore"] == 220 and min(sizes.values()) == 220, out


@pytest.mark.parametrize("script", ["langchain_rerank.py", "llamaindex_rerank.py"])
def test_two_stage_example_keeps_5_of_50_and_compares_with_fp32(script):
    out = run_example(script, "--limit", "300")
    assert re.search(r"^first stage: 50 (candidates|nodes);", out, flags=re.M), out
    kept = re.findall(r"^   (0\.\d{4})  (\S+)", out, flags=re.M)
    assert len(kept) == 5 and len({name for _, name in kept}) == 5, out
    scores = [float(s) for s, _ in kept]
    assert scores == sorted(scores, reverse=True), out
    memory = dict(re.findall(r"^(int8|fp32)\s+([\d.]+)\s+\d+$", out, flags=re.M))
    assert float(memory["int8"]) < 0.4 * float(memory["fp32"]), out
    overlap = int(re.search(r"top-5 overlap of the INT8 reranker with FP32: (\d)/5", out).group(1))
    assert overlap >= 3, out
