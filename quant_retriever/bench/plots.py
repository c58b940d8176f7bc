"""Plots of benchmark results, drawn on a bare matplotlib ``Figure`` (Agg canvas: no pyplot, no
GUI backend, no global state): :func:`plot_index`, :func:`plot_encoders` and :func:`plot_rerankers`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quant_retriever.bench.methods import INSTALL_BENCH

if TYPE_CHECKING:
    from quant_retriever.bench.encoders import EncoderReport
    from quant_retriever.bench.rerankers import RerankerReport
    from quant_retriever.bench.run import IndexBenchmark, IndexRow

__all__ = ["plot_index", "plot_encoders", "plot_rerankers"]


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plots need matplotlib: {INSTALL_BENCH}") from None
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
        style = dict(
            marker=markers[gi % len(markers)],
            markersize=6,
            label=group,
            linestyle="--" if baseline else "-",
            fillstyle="none" if baseline else "full",
        )
        for ax, attr in zip(axes, ("bytes_per_vector", "p50_ms")):
            ax.plot([getattr(r, attr) for r in rows], [r.recall for r in rows], **style)
            if len(rows) > 1:
                lines.append((rows, attr, ax))
    axes[0].set_xscale("log")
    sizes: list[float] = []  # ticks at the sizes measured, ours first; labels that would touch are left out
    for size in sorted(
        r.bytes_per_vector for r in bench.rows if r.bytes_per_vector > 0 and r.group.startswith("qr ")
    ) + sorted(r.bytes_per_vector for r in bench.rows if r.bytes_per_vector > 0):
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
    fig.suptitle(
        f"{bench.n_vectors:,} x {bench.dim} vectors, {bench.n_queries} queries, {bench.device}, "
        f"{bench.threads} threads; labels: INT8 rescore multiplier (x0: none)",
        fontsize=10,
    )
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
    panels = [
        ("parameters, MB", [r.parameter_bytes / 1e6 for r in ran], "{:.1f}", False),
        ("texts per second", [r.texts_per_second for r in ran], _speed_format(r.texts_per_second for r in ran), False),
        ("mean cosine to FP32", [r.mean_cosine for r in ran], "{:.3f}", True),
        ("top-10 neighbours kept", [r.top10_overlap for r in ran], "{:.2f}", True),
    ]
    return _plot_bars([r.label for r in ran], panels, Path(path), title)


def plot_rerankers(reports: Sequence[RerankerReport], path: str | os.PathLike, title: str | None = None) -> Path:
    """Bar charts of parameter memory, pairs/s, Spearman correlation with the FP32 scores and
    NDCG and MAP against the FP32 ordering, one bar per precision that ran. Writes a PNG to
    ``path`` and returns it."""
    ran = [r for r in reports if r.skipped is None]
    if not ran:
        raise ValueError("no precision ran, so there is nothing to plot.")
    at = ran[0].at
    panels = [
        ("parameters, MB", [r.parameter_bytes / 1e6 for r in ran], "{:.1f}", False),
        ("pairs per second", [r.pairs_per_second for r in ran], _speed_format(r.pairs_per_second for r in ran), False),
        ("Spearman to FP32 scores", [r.spearman for r in ran], "{:.3f}", True),
        (f"NDCG@{at} vs FP32 order", [r.ndcg for r in ran], "{:.3f}", True),
        (f"MAP@{at} vs FP32 order", [r.map for r in ran], "{:.3f}", True),
    ]
    return _plot_bars([r.label for r in ran], panels, Path(path), title)


def _speed_format(rates: Iterable[float]) -> str:
    return "{:.0f}" if min(rates) >= 100 else "{:.1f}"


_Panel = tuple[str, list[float], str, bool]  # (name, values, label format, near one)


def _plot_bars(labels: list[str], panels: list[_Panel], path: Path, title: str | None) -> Path:
    """One bar chart per panel ``(name, values, label format, near one)``, a bar per label;
    panels near one zoom in on how far below 1 their values fall."""
    fig = _figure(3 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels))
    for ax, (name, values, fmt, near_one) in zip(axes, panels):
        values = [float("nan") if v is None else v for v in values]
        bars = ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(values)), labels, rotation=35, ha="right", fontsize=8)
        ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=7, padding=1)
        ax.tick_params(axis="y", labelsize=8)
        finite = [v for v in values if np.isfinite(v)] or [1.0]
        if near_one:  # fidelity sits just below 1: zoom in on the differences (the axis does not start at 0)
            spread = max(1.0 - min(finite), 0.002)
            ax.set_ylim(1.0 - 1.6 * spread, 1.0 + 0.25 * spread)
        else:
            ax.set_ylim(0, max(finite) * 1.15)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.82 if title else 0.9, bottom=0.24, wspace=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
