"""Runs ``test_triton_kernels.py`` on the CPU in Triton's interpreter, in a child process.

The interpreter must be on (``TRITON_INTERPRET=1``) before triton is first imported, and
libraries the rest of the suite imports (sentence-transformers, bitsandbytes) import it early;
a child process keeps the variable away from everything else. With CUDA the kernel tests run
compiled in this process instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need triton (pip install 'quant-retriever[gpu]')")

import quant_retriever  # noqa: E402

#: Cases of test_triton_kernels.py that run without CUDA (the cuda_only ones skip).
MIN_CASES = 20


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, test_triton_kernels.py runs compiled in this process")
def test_kernels_in_the_interpreter():
    root = Path(quant_retriever.__file__).resolve().parents[1]
    path = [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).with_name("test_triton_kernels.py"))],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the interpreter run failed:\n{out[-8000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= MIN_CASES, f"the interpreter run passed too few cases:\n{out[-3000:]}"
