"""Measuring cores of ``quant-retriever bench-index`` / ``bench-models`` and
``benchmarks/bench_index.py``: the method table, the evaluation, tables, result files and plots.

Index benchmark (:func:`run_index_benchmark`): every method searches the same vectors and
queries in one run.

============  ====================================================================
column        meaning
============  ====================================================================
recall        recall@k against exact FP32 inner-product search (torch ``topk``)
mrr, ndcg     MRR@10 and NDCG@10 (linear gain) over the queries that have judged
              relevant documents, when qrels are given; ``*_kept`` divides by exact
              FP32 search's value
B/vec         bytes per vector on the device (the codes searched first) and on
              disk (the INT8 rescore copy)
p50/p95 ms    latency of single-query searches (``n_single`` of them)
batch ms, q/s median latency of ``batch_size``-query batches and queries per second
build s       building the index from the vectors
============  ====================================================================

The first search of each method is a warm-up and is not timed (for ours it includes the
one-time compile of the native CPU kernels). Baselines run when installed: faiss
(``IndexFlatIP``, ``IndexBinaryFlat``, scalar quantizer 4 and 8 bit) and sentence-transformers'
``semantic_search_faiss`` (ubinary) / ``semantic_search_usearch`` (int8), both rescoring x4.

Qrels files (:func:`read_qrels`): one judgement per line, ``query_index<TAB>doc_index`` or
``query_index<TAB>doc_index<TAB>relevance`` (relevance a number, default 1; 0 means judged
not relevant); indices count from 0 in the query and vector arrays; blank lines and lines
starting with ``#`` are skipped; spaces work as separators too.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from quant_retriever.codecs import CODEC_NAMES
from quant_retriever.index import QuantizedIndex

if TYPE_CHECKING:
    from quant_retriever.embeddings import EncoderReport

__all__ = [
    "Method",
    "IndexRow",
    "IndexBenchmark",
    "DEFAULT_MULTIPLIERS",
    "index_methods",
    "split_queries",
    "read_qrels",
    "qrels_from_sources",
    "run_index_benchmark",
    "index_table",
    "encoder_table",
    "format_table",
    "median_ms",
    "write_results",
    "plot_index",
    "plot_encoders",
]

DEFAULT_MULTIPLIERS = (1, 2, 4, 10)
#: rank cut-off of MRR and NDCG (recall uses ``k``)
AT = 10
_INSTALL_BENCH = "pip install 'quant-retriever[bench]'"

Qrels = list  # list[dict[int, float]]: per query, doc index -> relevance


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


@dataclass(frozen=True)
class IndexRow:
    """One method's measurements (see the module docstring); ``None`` where not measured."""

    method: str
    group: str
    bytes_per_vector: float
    disk_bytes_per_vector: float
    recall: float
    mrr: float | None
    ndcg: float | None
    mrr_kept: float | None
    ndcg_kept: float | None
    p50_ms: float
    p95_ms: float
    batch_ms: float | None
    batch_qps: float | None
    build_s: float


@dataclass(frozen=True)
class IndexBenchmark:
    """A whole run: the data's shape, exact FP32 search's MRR/NDCG, and one row per method."""

    n_vectors: int
    dim: int
    n_queries: int
    k: int
    batch_size: int
    exact_mrr: float | None
    exact_ndcg: float | None
    rows: list[IndexRow]
    skipped: list[str] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1

    def to_dict(self) -> dict:
        """JSON-ready: the settings, then ``rows`` as a list of dicts (NaN -> ``None``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rows"}
        out["rows"] = [asdict(r) for r in self.rows]
        return _finite(out)

    def __repr__(self) -> str:
        best = max(self.rows, key=lambda r: r.recall).method if self.rows else "-"
        return f"IndexBenchmark({self.n_vectors} x {self.dim}, {self.n_queries} queries, k={self.k}, {len(self.rows)} methods, best recall: {best})"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


# --------------------------------------------------------------------------- methods


def _ours(codec: str, rescore: bool, mult: int = 1) -> Method:
    label = f"qr {codec}" + (f" +int8 x{mult}" if rescore else "")
    group = f"qr {codec}" if codec in ("int4", "binary") else label

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
        skipped.append(f"faiss baselines: faiss is not installed ({_INSTALL_BENCH})")
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
            "faiss IndexBinaryFlat", "faiss IndexBinaryFlat", binary_build,
            lambda i, q, k: i.search(np.packbits(q > 0, axis=1), k)[1], lambda i: i.code_size,
        ),
        Method("faiss SQ QT_4bit", "faiss SQ QT_4bit", sq(faiss.ScalarQuantizer.QT_4bit), search, lambda i: i.sa_code_size()),
        Method("faiss SQ QT_8bit", "faiss SQ QT_8bit", sq(faiss.ScalarQuantizer.QT_8bit), search, lambda i: i.sa_code_size()),
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
            skipped.append(f"{label}: {module} is not installed ({_INSTALL_BENCH})")
            continue
        out.append(_st_method(fn, precision, label, size, ranged, quantize_embeddings))
    return out


def _st_method(fn, precision: str, label: str, size, ranged: bool, quantize_embeddings) -> Method:
    def build(x):
        ranges = np.vstack([x[:10_000].min(0), x[:10_000].max(0)]) if ranged else None
        codes = quantize_embeddings(x, precision=precision, ranges=ranges)
        _, _, index = fn(
            x[:1], corpus_embeddings=codes, corpus_precision=precision, top_k=1, output_index=True,
            rescore=False, ranges=ranges,
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
    return _index_methods(multipliers, list(codecs), baselines, [] if skipped is None else skipped)


def _index_methods(multipliers: list[int], codecs: list[str], baselines: bool, skipped: list[str]) -> list[Method]:
    order = ["fp32", "fp16", "int8", "int4", "binary"]
    out = []
    for codec in sorted(codecs, key=order.index):
        out.append(_ours(codec, False))
        if codec in ("int4", "binary"):
            out.extend(_ours(codec, True, m) for m in multipliers)
    if baselines:
        out += _faiss_methods(skipped) + _sentence_transformers_methods(skipped)
    return out


# --------------------------------------------------------------------------- data


def _as_matrix(x: object, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array; got {type(x).__name__}.")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (n, dim); got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must hold floats; got dtype {x.dtype}.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values.")
    return x


def split_queries(vectors: np.ndarray, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``n_queries`` random rows of ``vectors`` as queries: ``(corpus [n - q, d],
    queries [q, d])``, the corpus without them."""
    vectors = _as_matrix(vectors, "vectors")
    if isinstance(n_queries, bool) or not isinstance(n_queries, int) or not 1 <= n_queries < len(vectors):
        raise ValueError(f"n_queries must be an int from 1 to {len(vectors) - 1} (fewer than the vectors); got {n_queries!r}.")
    picked = np.random.default_rng(seed).choice(len(vectors), n_queries, replace=False)
    keep = np.ones(len(vectors), dtype=bool)
    keep[picked] = False
    return vectors[keep], vectors[np.sort(picked)]


def read_qrels(path: str | os.PathLike, n_queries: int, n_docs: int) -> Qrels:
    """Read a qrels file (format in the module docstring) -> per query a dict ``{doc index:
    relevance}``. Raises ``ValueError`` naming the line for a malformed line or an index out
    of range."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"qrels file {path} does not exist.")
    return _read_qrels(path, n_queries, n_docs)


def _read_qrels(path: Path, n_queries: int, n_docs: int) -> Qrels:
    qrels: Qrels = [{} for _ in range(n_queries)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file of 'query_index<TAB>doc_index[<TAB>relevance]' lines.") from None
    judged = 0
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        where = f"{path} line {lineno}"
        if len(parts) not in (2, 3):
            raise ValueError(f"{where}: expected 'query_index<TAB>doc_index[<TAB>relevance]'; got {line.strip()[:60]!r}.")
        try:
            q, d = int(parts[0]), int(parts[1])
            rel = float(parts[2]) if len(parts) == 3 else 1.0
        except ValueError:
            raise ValueError(f"{where}: indices must be integers and relevance a number; got {line.strip()[:60]!r}.") from None
        if not 0 <= q < n_queries:
            raise ValueError(f"{where}: query index {q} is out of range for {n_queries} queries.")
        if not 0 <= d < n_docs:
            raise ValueError(f"{where}: doc index {d} is out of range for {n_docs} vectors.")
        if not math.isfinite(rel) or rel < 0:
            raise ValueError(f"{where}: relevance must be a finite number >= 0; got {parts[2]!r}.")
        qrels[q][d] = rel
        judged += 1
    if not judged:
        raise ValueError(f"{path}: no judgements found; expected 'query_index<TAB>doc_index[<TAB>relevance]' lines.")
    return qrels


def qrels_from_sources(doc_indices: Sequence[int]) -> Qrels:
    """Qrels where query ``i`` has one relevant document, ``doc_indices[i]``."""
    return [{int(d): 1.0} for d in doc_indices]


# --------------------------------------------------------------------------- metrics


def _recall(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(ids, truth)]))


def _mrr(ids: np.ndarray, qrels: Qrels) -> float | None:
    values = []
    for row, rel in zip(ids, qrels):
        if any(r > 0 for r in rel.values()):
            ranks = [i for i, d in enumerate(row[:AT].tolist()) if rel.get(d, 0) > 0]
            values.append(1.0 / (ranks[0] + 1) if ranks else 0.0)
    return float(np.mean(values)) if values else None


def _ndcg(ids: np.ndarray, qrels: Qrels) -> float | None:
    values = []
    for row, rel in zip(ids, qrels):
        ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:AT]
        if ideal:
            dcg = sum(rel.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(row[:AT].tolist()))
            values.append(dcg / sum(r / math.log2(i + 2) for i, r in enumerate(ideal)))
    return float(np.mean(values)) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------- running


def _timed(fn: Callable[[Any], Any], runs) -> np.ndarray:
    times = []
    for run in runs:
        start = time.perf_counter()
        fn(run)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1e3  # ms


def median_ms(fn: Callable[[], Any], runs: int = 20) -> float:
    """Median wall time of ``runs`` calls of ``fn``, in milliseconds."""
    return float(np.median(_timed(lambda _: fn(), range(runs))))


def _evaluate(method: Method, x, q, truth, qrels, k, exact, n_single, n_batches, batch_size) -> IndexRow:
    k_search = max(k, AT) if qrels is not None else k
    k_search = min(k_search, len(x))
    t0 = time.perf_counter()
    state = method.build(x)
    build_s = time.perf_counter() - t0
    method.search(state, q[:1], k_search)  # warm-up
    ids = np.concatenate([method.search(state, q[i : i + 256], k_search) for i in range(0, len(q), 256)])
    mrr = ndcg = None
    if qrels is not None:
        mrr, ndcg = _mrr(ids, qrels), _ndcg(ids, qrels)
    single = _timed(lambda i: method.search(state, q[i : i + 1], k), range(min(n_single, len(q))))
    batches = [q[i : i + batch_size] for i in range(0, len(q) - batch_size + 1, batch_size)][:n_batches]
    batch = _timed(lambda b: method.search(state, b, k), batches) if batches else None
    batch_ms = float(np.median(batch)) if batch is not None else None
    return IndexRow(
        method=method.name,
        group=method.group,
        bytes_per_vector=float(method.bytes_per_vector(state)),
        disk_bytes_per_vector=float(method.disk_bytes_per_vector(state)),
        recall=_recall(ids, truth, k),
        mrr=mrr,
        ndcg=ndcg,
        mrr_kept=_ratio(mrr, exact[0]),
        ndcg_kept=_ratio(ndcg, exact[1]),
        p50_ms=float(np.median(single)) if len(single) else math.nan,
        p95_ms=float(np.percentile(single, 95)) if len(single) else math.nan,
        batch_ms=batch_ms,
        batch_qps=batch_size / batch_ms * 1e3 if batch_ms else None,
        build_s=build_s,
    )


def run_index_benchmark(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    qrels: Qrels | None = None,
    methods: Sequence[Method] | None = None,
    n_single: int = 50,
    n_batches: int = 5,
    batch_size: int = 32,
    progress: bool = False,
) -> IndexBenchmark:
    """Build and search every method on ``vectors`` ``[n, d]`` with ``queries`` ``[q, d]``.

    ``qrels`` (one dict per query, see :func:`read_qrels`) adds MRR@10 and NDCG@10;
    ``methods`` defaults to :func:`index_methods`. ``progress`` shows a tqdm bar on stderr.
    """
    vectors, queries = _as_matrix(vectors, "vectors"), _as_matrix(queries, "queries")
    if queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries must have the vectors' dimension {vectors.shape[1]}; got {queries.shape[1]}.")
    for name, value, low in (("k", k, 1), ("n_single", n_single, 0), ("n_batches", n_batches, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
    if k > len(vectors):
        raise ValueError(f"k must be at most the number of vectors ({len(vectors)}); got {k}.")
    if qrels is not None and len(qrels) != len(queries):
        raise ValueError(f"qrels must have one entry per query. Got {len(qrels)} entries and {len(queries)} queries.")
    skipped: list[str] = []
    methods = _index_methods(list(DEFAULT_MULTIPLIERS), list(CODEC_NAMES), True, skipped) if methods is None else list(methods)
    return _run_index_benchmark(vectors, queries, k, qrels, methods, skipped, n_single, n_batches, batch_size, progress)


def _run_index_benchmark(x, q, k, qrels, methods, skipped, n_single, n_batches, batch_size, progress) -> IndexBenchmark:
    from tqdm import tqdm

    # truth: [q, max(k, AT)] exact inner-product neighbours
    truth = torch.topk(torch.from_numpy(q) @ torch.from_numpy(x).T, min(max(k, AT), len(x)), dim=1).indices.numpy()
    exact = (_mrr(truth, qrels), _ndcg(truth, qrels)) if qrels is not None else (None, None)
    rows = []
    for method in tqdm(methods, desc="methods", unit="method", file=sys.stderr, disable=not progress):
        rows.append(_evaluate(method, x, q, truth[:, :k], qrels, k, exact, n_single, n_batches, batch_size))
    return IndexBenchmark(
        n_vectors=len(x),
        dim=x.shape[1],
        n_queries=len(q),
        k=k,
        batch_size=batch_size,
        exact_mrr=exact[0],
        exact_ndcg=exact[1],
        rows=rows,
        skipped=skipped,
        device="cuda" if torch.cuda.is_available() else "cpu",
        threads=torch.get_num_threads(),
    )


# --------------------------------------------------------------------------- tables


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def index_table(bench: IndexBenchmark) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows of cells)`` of an index benchmark; the first column is left-aligned,
    the others are numbers."""
    headers = [
        "method", "B/vec dev", "B/vec disk", f"recall@{bench.k}", "MRR kept", "NDCG kept",
        "1q p50 ms", "1q p95 ms", f"{bench.batch_size}q ms", f"{bench.batch_size}q q/s", "build s",
    ]
    rows = [
        [
            r.method, _cell(r.bytes_per_vector, ".0f"), _cell(r.disk_bytes_per_vector, ".0f"), _cell(r.recall, ".3f"),
            _cell(r.mrr_kept, ".3f"), _cell(r.ndcg_kept, ".3f"), _cell(r.p50_ms, ".2f"), _cell(r.p95_ms, ".2f"),
            _cell(r.batch_ms, ".2f"), _cell(r.batch_qps, ".0f"), _cell(r.build_s, ".2f"),
        ]
        for r in bench.rows
    ]
    return headers, rows


def encoder_table(reports: Sequence[EncoderReport]) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows of cells)`` of ``evaluate_encoders`` reports, relative to the eager
    FP32 report when there is one; a skipped precision shows ``skipped`` and dashes."""
    fp32 = next((r for r in reports if r.applied_precision == "fp32" and not r.compiled and r.skipped is None), None)
    headers = ["precision", "params MB", "% fp32", "texts/s", "speed-up", "mean cos", "min cos", "top-10"]
    rows = []
    for r in reports:
        if r.skipped is not None:
            rows.append([r.label, "skipped", *["-"] * 6])
            continue
        rows.append([
            r.label,
            f"{r.parameter_bytes / 1e6:.1f}",
            f"{100 * r.parameter_bytes / fp32.parameter_bytes:.1f}%" if fp32 else "-",
            f"{r.texts_per_second:.1f}",
            f"{r.texts_per_second / fp32.texts_per_second:.2f}x" if fp32 else "-",
            f"{r.mean_cosine:.4f}",
            f"{r.min_cosine:.4f}",
            f"{r.top10_overlap:.3f}",
        ])
    return headers, rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> str:
    """Plain aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells):
        return " ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    head = line(headers)
    out = ([title] if title else []) + [head, "-" * len(head)] + [line(r) for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- files


def write_results(records: Sequence[dict], directory: str | os.PathLike, stem: str, meta: dict | None = None) -> dict[str, Path]:
    """Write ``records`` (flat dicts with the same keys) to ``<directory>/<stem>.csv`` and,
    with ``meta``, ``<stem>.json`` (``{**meta, "rows": records}``). Returns the paths by kind."""
    if not records:
        raise ValueError("records is empty: nothing to write.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"csv": directory / f"{stem}.csv", "json": directory / f"{stem}.json"}
    records = _finite(list(records))
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    paths["json"].write_text(json.dumps(_finite({**(meta or {}), "rows": records}), indent=1) + "\n", encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plots need matplotlib: {_INSTALL_BENCH}") from None
    # A bare Figure renders with the Agg canvas: no pyplot, no GUI backend, no global state.
    return Figure(figsize=(width, height), dpi=100)


def plot_index(bench: IndexBenchmark, path: str | os.PathLike) -> Path:
    """Two panels, recall@k against device bytes per vector and against single-query p50
    latency, one series per method group (``int4``/``binary`` as lines over the rescore
    multipliers). Writes a PNG to ``path`` and returns it."""
    if not bench.rows:
        raise ValueError("the benchmark has no rows to plot.")
    return _plot_index(bench, Path(path))


def _plot_index(bench: IndexBenchmark, path: Path) -> Path:
    fig = _figure(11, 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    groups: dict[str, list[IndexRow]] = {}
    for r in bench.rows:
        groups.setdefault(r.group, []).append(r)
    markers = "os^Dv<>pPX*h"
    lines = []  # (rows, attr, axis) of the series with rescore multipliers, labelled below
    for gi, (group, rows) in enumerate(groups.items()):
        baseline = not group.startswith("qr ")
        style = dict(marker=markers[gi % len(markers)], markersize=6, label=group,
                     linestyle="--" if baseline else "-", fillstyle="none" if baseline else "full")
        for ax, attr in zip(axes, ("bytes_per_vector", "p50_ms")):
            ax.plot([getattr(r, attr) for r in rows], [r.recall for r in rows], **style)
            if len(rows) > 1:
                lines.append((rows, attr, ax))
    axes[0].set_xscale("log")
    sizes: list[float] = []  # ticks at the sizes measured, ours first; labels that would touch are left out
    for size in sorted(r.bytes_per_vector for r in bench.rows if r.bytes_per_vector > 0 and r.group.startswith("qr ")) + sorted(
        r.bytes_per_vector for r in bench.rows if r.bytes_per_vector > 0
    ):
        if all(max(size, s) / min(size, s) >= 1.25 for s in sizes):
            sizes.append(size)
    axes[0].set_xticks(sizes, [f"{s:g}" for s in sizes], fontsize=8)
    axes[0].minorticks_off()
    axes[0].set_xlabel("bytes per vector on the device (log)")
    axes[1].set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    axes[1].xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[1].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[1].xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    axes[1].tick_params(axis="x", labelsize=8)
    axes[1].set_xlabel("single-query latency p50, ms (log)")
    axes[0].set_ylabel(f"recall@{bench.k} vs exact FP32")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.autoscale_view()
    for rows, attr, ax in lines:
        _label_multipliers(ax, [(getattr(r, attr), r.recall, r.method) for r in rows])
    fig.suptitle(f"{bench.n_vectors:,} x {bench.dim} vectors, {bench.n_queries} queries, {bench.device}, "
                 f"{bench.threads} threads; labels: INT8 rescore multiplier (x0: none)", fontsize=10)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.91, bottom=0.27, wspace=0.06)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _label_multipliers(ax, points: list[tuple[float, float, str]]) -> None:
    """Write each point's rescore multiplier next to it; points within a few pixels of each
    other share one label (``x2/x4``)."""
    clusters: list[tuple[np.ndarray, tuple[float, float], list[str]]] = []  # (pixel, point, labels)
    for x, y, method in points:
        label = method.rsplit(" ", 1)[-1] if "+int8" in method else "x0"
        pixel = ax.transData.transform((x, y))
        near = next((c for c in clusters if np.hypot(*(c[0] - pixel)) < 9), None)
        if near is None:
            clusters.append((pixel, (x, y), [label]))
        else:
            near[2].append(label)
    for _, xy, labels in clusters:
        ax.annotate("/".join(labels), xy, textcoords="offset points", xytext=(5, -3), fontsize=7, va="top")


def plot_encoders(reports: Sequence[EncoderReport], path: str | os.PathLike, title: str | None = None) -> Path:
    """Bar charts of parameter memory, texts/s, mean cosine to FP32 and top-10 overlap, one
    bar per precision that ran. Writes a PNG to ``path`` and returns it."""
    ran = [r for r in reports if r.skipped is None]
    if not ran:
        raise ValueError("no precision ran, so there is nothing to plot.")
    return _plot_encoders(ran, Path(path), title)


def _plot_encoders(reports: list, path: Path, title: str | None) -> Path:
    fig = _figure(12, 3.4)
    axes = fig.subplots(1, 4)
    labels = [r.label for r in reports]
    speed_fmt = "{:.0f}" if min(r.texts_per_second for r in reports) >= 100 else "{:.1f}"
    panels = [
        ("parameters, MB", [r.parameter_bytes / 1e6 for r in reports], "{:.1f}", False),
        ("texts per second", [r.texts_per_second for r in reports], speed_fmt, False),
        ("mean cosine to FP32", [r.mean_cosine for r in reports], "{:.3f}", True),
        ("top-10 neighbours kept", [r.top10_overlap for r in reports], "{:.2f}", True),
    ]
    for ax, (name, values, fmt, near_one) in zip(axes, panels):
        bars = ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(values)), labels, rotation=35, ha="right", fontsize=8)
        ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=7, padding=1)
        ax.tick_params(axis="y", labelsize=8)
        if near_one:  # fidelity sits just below 1: zoom in on the differences (the axis does not start at 0)
            spread = max(1.0 - min(values), 0.002)
            ax.set_ylim(1.0 - 1.6 * spread, 1.0 + 0.25 * spread)
        else:
            ax.set_ylim(0, max(values) * 1.15)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.82 if title else 0.9, bottom=0.24, wspace=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
