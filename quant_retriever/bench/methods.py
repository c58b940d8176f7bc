"""The methods an index benchmark compares: our codecs with and without INT8 rescoring, and the
installed baselines (faiss ``IndexFlatIP``, ``IndexBinaryFlat``, scalar quantizer 4 and 8 bit;
sentence-transformers' ``semantic_search_faiss`` (ubinary) / ``semantic_search_usearch``
(int8), both rescoring x4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant_retriever.codecs import CODEC_NAMES, CODECS
from quant_retriever.index import QuantizedIndex

#: Codecs measured with the INT8 rescore copy at each multiplier too (the quantized ones).
RESCORED = tuple(name for name in CODEC_NAMES if not CODECS[name].exact)

__all__ = ["Method", "DEFAULT_MULTIPLIERS", "INSTALL_BENCH", "index_methods", "default_methods"]

DEFAULT_MULTIPLIERS = (1, 2, 4, 10)
INSTALL_BENCH = "pip install 'quant-retriever[bench]'"


def _no_disk(state: Any) -> float:
    return 0.0


@dataclass(frozen=True)
class Method:
    """A searchable method: ``build(vectors [n, d]) -> state``, ``search(state, queries [q, d],
    k) -> ids [q, k]``, and its bytes per vector on the device and on disk. ``group`` names
    the plot series it belongs to."""

    name: str
    group: str
    build: Callable[[np.ndarray], Any]
    search: Callable[[Any, np.ndarray, int], np.ndarray]
    bytes_per_vector: Callable[[Any], float]
    disk_bytes_per_vector: Callable[[Any], float] = _no_disk


def _ours(codec: str, rescore: bool, mult: int = 1) -> Method:
    label = f"qr {codec}" + (f" +int8 x{mult}" if rescore else "")
    group = f"qr {codec}" if codec in RESCORED else label

    def build(x: np.ndarray) -> QuantizedIndex:
        index = QuantizedIndex(x.shape[1], codec=codec, rescore=rescore)
        for start in range(0, len(x), 100_000):
            index.add(x[start : start + 100_000])
        return index

    return Method(
        label,
        group,
        build,
        lambda index, q, k: index.search(q, k=k, rescore_multiplier=mult).ids,
        lambda index: index.memory().bytes_per_vector,
        lambda index: index.memory().disk_bytes_per_vector,
    )


def _faiss_methods(skipped: list[str]) -> list[Method]:
    try:
        import faiss
    except ImportError:
        skipped.append(f"faiss baselines: faiss is not installed ({INSTALL_BENCH})")
        return []

    def sq(kind):
        def build(x):
            index = faiss.IndexScalarQuantizer(x.shape[1], kind, faiss.METRIC_INNER_PRODUCT)
            index.train(x[:100_000])
            index.add(x)
            return index

        return build

    def binary_build(x):
        index = faiss.IndexBinaryFlat(x.shape[1])
        index.add(np.packbits(x > 0, axis=1))
        return index

    def flat_build(x):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index

    def search(i, q, k):
        return i.search(q, k)[1]

    return [
        Method("faiss IndexFlatIP", "faiss IndexFlatIP", flat_build, search, lambda i: 4 * i.d),
        Method(
            "faiss IndexBinaryFlat",
            "faiss IndexBinaryFlat",
            binary_build,
            lambda i, q, k: i.search(np.packbits(q > 0, axis=1), k)[1],
            lambda i: i.code_size,
        ),
        Method(
            "faiss SQ QT_4bit",
            "faiss SQ QT_4bit",
            sq(faiss.ScalarQuantizer.QT_4bit),
            search,
            lambda i: i.sa_code_size(),
        ),
        Method(
            "faiss SQ QT_8bit",
            "faiss SQ QT_8bit",
            sq(faiss.ScalarQuantizer.QT_8bit),
            search,
            lambda i: i.sa_code_size(),
        ),
    ]


def _sentence_transformers_methods(skipped: list[str]) -> list[Method]:
    try:
        from sentence_transformers.util.quantization import (
            quantize_embeddings,
            semantic_search_faiss,
            semantic_search_usearch,
        )
    except ImportError:
        skipped.append("sentence-transformers baselines: sentence-transformers >= 6 is not installed")
        return []
    out = []
    for fn, precision, label, size, ranged, module in [
        (semantic_search_faiss, "ubinary", "st faiss ubinary x4", lambda d: d / 8, False, "faiss"),
        (semantic_search_usearch, "int8", "st usearch int8 x4", lambda d: d, True, "usearch"),
    ]:
        try:
            __import__(module)
        except ImportError:
            skipped.append(f"{label}: {module} is not installed ({INSTALL_BENCH})")
            continue
        out.append(_st_method(fn, precision, label, size, ranged, quantize_embeddings))
    return out


def _st_method(fn, precision: str, label: str, size, ranged: bool, quantize_embeddings) -> Method:
    def build(x):
        ranges = np.vstack([x[:10_000].min(0), x[:10_000].max(0)]) if ranged else None
        codes = quantize_embeddings(x, precision=precision, ranges=ranges)
        _, _, index = fn(
            x[:1],
            corpus_embeddings=codes,
            corpus_precision=precision,
            top_k=1,
            output_index=True,
            rescore=False,
            ranges=ranges,
        )
        return index, ranges, size(x.shape[1])

    def search(state, q, k):
        index, ranges, _ = state
        res = fn(q, corpus_index=index, corpus_precision=precision, top_k=k, rescore_multiplier=4, ranges=ranges)[0]
        return np.array([[hit["corpus_id"] for hit in hits] for hits in res])

    return Method(label, label, build, search, lambda state: state[2])


def index_methods(
    multipliers: Sequence[int] = DEFAULT_MULTIPLIERS,
    codecs: Sequence[str] = CODEC_NAMES,
    baselines: bool = True,
    skipped: list[str] | None = None,
) -> list[Method]:
    """Our codecs (``int4``/``binary`` without rescoring and with each INT8 rescore
    ``multipliers``; ``int8``/``fp16``/``fp32``, exact at INT8 precision, without), then the
    installed baselines. A baseline that is not installed is left out with a line appended to
    ``skipped``."""
    multipliers = list(multipliers)
    for m in multipliers:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise ValueError(f"rescore multipliers must be positive ints; got {m!r}.")
    for c in codecs:
        if c not in CODEC_NAMES:
            raise ValueError(f"unknown codec {c!r}; expected one of {', '.join(CODEC_NAMES)}.")
    return default_methods(multipliers, list(codecs), baselines, [] if skipped is None else skipped)


def default_methods(multipliers: list[int], codecs: list[str], baselines: bool, skipped: list[str]) -> list[Method]:
    order = ["fp32", "fp16", "int8", "int4", "binary", "rq4", "rq2", "rq1"]
    out = []
    for codec in sorted(codecs, key=lambda c: order.index(c) if c in order else len(order)):
        out.append(_ours(codec, False))
        if codec in RESCORED:
            out.extend(_ours(codec, True, m) for m in multipliers)
    if baselines:
        out += _faiss_methods(skipped) + _sentence_transformers_methods(skipped)
    return out
