"""Demo and test data, not part of the API: a real corpus that needs no download, the
docstrings of the Python standard library.

Used by the examples, the tests, the benchmarks and the default texts of
``quant-retriever bench-models``. Docstrings are read with :mod:`ast` from the
standard library's source files (nothing is imported or executed), in sorted file order, so
the corpus is the same on every machine with the same Python version. Embeddings are cached
under ``.cache/`` (or ``$QUANT_RETRIEVER_CACHE``) as ``.npy`` files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Doc", "stdlib_docstrings", "stdlib_queries", "embed_cached"]

_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "ensurepip", "turtledemo", "__pycache__"}


@dataclass(frozen=True)
class Doc:
    """One docstring: ``id`` is its dotted location (``json.decoder.JSONDecoder.decode``)."""

    id: str
    text: str
    source: str


def _walk_docstrings(tree: ast.Module, module: str):
    doc = ast.get_docstring(tree)
    if doc:
        yield module, doc
    stack = [(module, node) for node in tree.body]
    while stack:
        prefix, node = stack.pop(0)
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                yield name, doc
            if isinstance(node, ast.ClassDef):
                stack.extend((name, child) for child in node.body)


def stdlib_docstrings(limit: int | None = None, min_chars: int = 40, max_chars: int = 2000) -> list[Doc]:
    """Unique docstrings of at least ``min_chars`` characters (cut at ``max_chars``), in a
    deterministic order; at most ``limit`` of them."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[Doc] = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for name, text in _walk_docstrings(tree, module):
            text = " ".join(text.split())
            if len(text) < min_chars or text in seen:
                continue
            seen.add(text)
            docs.append(Doc(name, text[:max_chars], str(rel)))
            if limit is not None and len(docs) >= limit:
                return docs
    return docs


def _cache_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".cache"
    return Path(os.environ.get("QUANT_RETRIEVER_CACHE", default))


def embed_cached(
    texts: list[str], model: str | None = None, precision: str = "fp32", batch_size: int = 64
) -> np.ndarray:
    """Embed ``texts`` with :func:`quant_retriever.load_encoder` (default: MiniLM), caching the
    ``[n, dim]`` float32 result under the cache directory keyed by model, precision and texts."""
    from quant_retriever.models import load_encoder
    from quant_retriever.models.settings import minilm_path

    model = model or minilm_path()
    key = hashlib.sha256(json.dumps([str(model), precision, texts]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"emb-{Path(model).name}-{precision}-{len(texts)}-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    vectors = load_encoder(model, precision=precision).encode(texts, batch_size=batch_size, show_progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    os.replace(tmp, path)
    return vectors


def stdlib_queries(docs: list[Doc], n: int = 200) -> list[str]:
    """``n`` short queries made from the dotted names of evenly spaced docs
    (``json.decoder.JSONDecoder.decode`` -> ``"json decoder JSONDecoder decode"``)."""
    step = max(1, len(docs) // n)
    return [" ".join(d.id.replace("_", " ").split(".")) for d in docs[::step][:n]]
