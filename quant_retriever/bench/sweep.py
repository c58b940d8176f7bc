"""Measuring the precisions of one model side by side, whatever the model kind: the machinery
that :func:`~quant_retriever.bench.evaluate_encoders` and
:func:`~quant_retriever.bench.evaluate_rerankers` share.

:func:`sweep` loads each precision (reporting the ones that cannot run here instead of
raising), runs the work once as a warm-up and keeps that output for the fidelity measures,
then times ``repeats`` rounds interleaved across precisions, so that a change in machine load
hits all of them alike. Every model stays loaded until the timing is done.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from quant_retriever.models.settings import lookup_precision

__all__ = ["CANNOT_RUN_HERE", "Measured", "precision_runs", "check_repeats", "precision_label", "sweep"]

logger = logging.getLogger(__name__)

M = TypeVar("M")

# Errors that mean "this precision cannot run here" (a missing package, a kernel the hardware
# lacks, a device it cannot use, no compiler for torch.compile), as opposed to a bug.
CANNOT_RUN_HERE = (ImportError, RuntimeError, NotImplementedError, OSError, ValueError)


@dataclass(frozen=True)
class Measured(Generic[M]):
    """One precision that ran: the loaded model, the output of its warm-up pass and the median
    seconds of its timed passes."""

    model: M
    output: Any
    seconds: float


def precision_runs(precisions: Sequence[str], compiled: Sequence[str] = ()) -> list[tuple[str, bool]]:
    """``(precision, compile)`` for each precision, then for each one in ``compiled``; a
    ``TypeError`` for a lone string and a ``ValueError`` naming an unknown precision."""
    runs: list[tuple[str, bool]] = []
    for what, group, flag in (("precisions", precisions, False), ("compiled", compiled, True)):
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise TypeError(f"{what} must be a list of precision names, got {type(group).__name__}.")
        for name in group:
            lookup_precision(name, f"in {what}")
            runs.append((name, flag))
    return runs


def check_repeats(repeats: object) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}.")
    return repeats


def precision_label(precision: str, applied: str | None, compiled: bool) -> str:
    """``"int8"``, ``"fp16 (bf16)"`` when a fallback applied, ``"+compile"`` appended."""
    label = precision if applied in (None, precision) else f"{precision} ({applied})"
    return label + ("+compile" if compiled else "")


def sweep(
    runs: Sequence[tuple[str, bool]],
    load: Callable[[str, bool], M],
    work: Callable[[M], Any],
    repeats: int,
    progress: bool = True,
) -> list[Measured[M] | str]:
    """For each ``(precision, compile)`` run: ``load(precision, compile)``, ``work(model)`` once
    (warm-up; its output is kept), then ``repeats`` timed rounds of ``work`` over all loaded
    models. Returns, per run, a :class:`Measured` or the reason it could not run here.
    ``progress`` shows tqdm bars on stderr."""
    from tqdm.auto import tqdm

    loaded: dict[int, tuple[M, Any]] = {}
    skipped: dict[int, str] = {}
    bar = tqdm(runs, desc="Loading and warming up", unit="precision", disable=not progress)
    for i, (name, use_compile) in enumerate(bar):
        try:
            model = load(name, use_compile)
            loaded[i] = (model, work(model))
        except CANNOT_RUN_HERE as exc:
            skipped[i] = f"{type(exc).__name__}: {exc}"
            logger.warning("Skipping precision %s: %s", name, skipped[i])
    seconds: dict[int, list[float]] = {i: [] for i in loaded}
    for _ in tqdm(range(repeats), desc="Timing", unit="round", disable=not progress):
        for i, (model, _output) in loaded.items():
            start = time.perf_counter()
            work(model)
            seconds[i].append(time.perf_counter() - start)
    return [
        skipped[i] if i in skipped else Measured(loaded[i][0], loaded[i][1], statistics.median(seconds[i]))
        for i in range(len(runs))
    ]
