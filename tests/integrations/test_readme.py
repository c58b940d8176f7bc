"""The README's two quickstarts run as written (offline: the hub name of all-MiniLM-L6-v2 is
replaced by the bundled copy's path) and print what their comments promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quant_retriever.models.settings import minilm_path

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"## Quickstart: {title}") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


@pytest.mark.parametrize(
    "title, promise",
    [("LangChain", r"^\[Document\(id='gzip', "), ("LlamaIndex", r"^gzip 0\.[78]\d$")],
)
def test_a_quickstart_runs_as_written(tmp_path, title, promise):
    code = quickstart(title).replace("sentence-transformers/all-MiniLM-L6-v2", minilm_path())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(promise, out.stdout, flags=re.M), out.stdout
    assert any(p.is_dir() for p in tmp_path.iterdir())  # the persistent store it made
