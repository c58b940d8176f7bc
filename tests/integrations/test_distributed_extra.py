"""Ray is an optional dependency: the package works without it, and the distributed module
says which extra to install."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["ray"] = None  # as if ray were not installed
import quant_retriever, quant_retriever.store
assert quant_retriever.QuantizedIndex(8).dim == 8
try:
    import quant_retriever.distributed
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("imported without ray")
"""


def test_without_ray_the_import_names_the_extra():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "pip install 'quant-retriever[ray]'" in out.stdout
