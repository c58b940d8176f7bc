"""Reporting benchmark results: tables of cells (:func:`index_table`, :func:`encoder_table`,
:func:`reranker_table`), plain aligned text (:func:`format_table`) and CSV + JSON files
(:func:`write_results`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from quant_retriever.bench.encoders import EncoderReport
    from quant_retriever.bench.rerankers import RerankerReport
    from quant_retriever.bench.run import IndexBenchmark

__all__ = ["index_table", "encoder_table", "reranker_table", "format_table", "write_results", "finite"]


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``None`` and numpy scalars as Python numbers (JSON-ready)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return finite(obj.item())
    return obj


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def index_table(bench: IndexBenchmark) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows of cells)`` of an index benchmark; the first column is left-aligned,
    the others are numbers."""
    headers = [
        "method",
        "B/vec dev",
        "B/vec disk",
        f"recall@{bench.k}",
        "MRR kept",
        "NDCG kept",
        "1q p50 ms",
        "1q p95 ms",
        f"{bench.batch_size}q ms",
        f"{bench.batch_size}q q/s",
        "build s",
    ]
    rows = [
        [
            r.method,
            _cell(r.bytes_per_vector, ".0f"),
            _cell(r.disk_bytes_per_vector, ".0f"),
            _cell(r.recall, ".3f"),
            _cell(r.mrr_kept, ".3f"),
            _cell(r.ndcg_kept, ".3f"),
            _cell(r.p50_ms, ".2f"),
            _cell(r.p95_ms, ".2f"),
            _cell(r.batch_ms, ".2f"),
            _cell(r.batch_qps, ".0f"),
            _cell(r.build_s, ".2f"),
        ]
        for r in bench.rows
    ]
    return headers, rows


def encoder_table(reports: Sequence[EncoderReport]) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows of cells)`` of ``evaluate_encoders`` reports, relative to the eager
    FP32 report when there is one; a skipped precision shows ``skipped`` and dashes."""
    fidelity = [
        ("mean cos", "mean_cosine", ".4f"),
        ("min cos", "min_cosine", ".4f"),
        ("top-10", "top10_overlap", ".3f"),
    ]
    return _precision_table(reports, ("texts/s", "texts_per_second"), fidelity)


def reranker_table(reports: Sequence[RerankerReport]) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows of cells)`` of ``evaluate_rerankers`` reports, as :func:`encoder_table`."""
    at = reports[0].at if reports else 5
    fidelity = [
        ("pearson", "pearson", ".4f"),
        ("spearman", "spearman", ".4f"),
        (f"NDCG@{at}", "ndcg", ".3f"),
        (f"MAP@{at}", "map", ".3f"),
    ]
    return _precision_table(reports, ("pairs/s", "pairs_per_second"), fidelity)


def _precision_table(
    reports: Sequence[Any], speed: tuple[str, str], fidelity: list[tuple[str, str, str]]
) -> tuple[list[str], list[list[str]]]:
    """Memory and speed (also as a share of the eager FP32 report), then the ``fidelity``
    columns, each ``(header, attribute, format)``."""
    fp32 = next((r for r in reports if r.applied_precision == "fp32" and not r.compiled and r.skipped is None), None)
    speed_header, speed_attr = speed
    headers = ["precision", "params MB", "% fp32", speed_header, "speed-up", *[h for h, _, _ in fidelity]]
    rows = []
    for r in reports:
        if r.skipped is not None:
            rows.append([r.label, "skipped", *["-"] * (len(headers) - 2)])
            continue
        rate = getattr(r, speed_attr)
        rows.append(
            [
                r.label,
                f"{r.parameter_bytes / 1e6:.1f}",
                f"{100 * r.parameter_bytes / fp32.parameter_bytes:.1f}%" if fp32 else "-",
                f"{rate:.1f}",
                f"{rate / getattr(fp32, speed_attr):.2f}x" if fp32 else "-",
                *[_cell(getattr(r, attr), fmt) for _, attr, fmt in fidelity],
            ]
        )
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


def write_results(
    records: Sequence[dict], directory: str | os.PathLike, stem: str, meta: dict | None = None
) -> dict[str, Path]:
    """Write ``records`` (flat dicts with the same keys) to ``<directory>/<stem>.csv`` and,
    with ``meta``, ``<stem>.json`` (``{**meta, "rows": records}``). Returns the paths by kind."""
    if not records:
        raise ValueError("records is empty: nothing to write.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"csv": directory / f"{stem}.csv", "json": directory / f"{stem}.json"}
    records = finite(list(records))
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    paths["json"].write_text(json.dumps(finite({**(meta or {}), "rows": records}), indent=1) + "\n", encoding="utf-8")
    return paths
