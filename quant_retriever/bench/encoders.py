"""Benchmarking embedding precisions: :func:`evaluate_encoders` measures what a precision costs in
fidelity and buys in memory and speed, side by side with FP32, on the same texts in one run.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant_retriever.models.encoder import Encoder, check_batch_size, check_texts, load_encoder
from quant_retriever.models.settings import Precision, lookup_precision

__all__ = ["EncoderReport", "evaluate_encoders", "read_texts"]

logger = logging.getLogger(__name__)

_MB = 1e6


@dataclass(frozen=True)
class EncoderReport:
    """One precision measured against FP32 on the same texts.

    ``applied_precision`` and the numbers are ``None`` when the precision could not load or
    run on this machine; ``skipped`` then says why. ``compiled``: measured with
    ``load_encoder(..., compile=True)``.
    """

    precision: str
    applied_precision: str | None
    parameter_bytes: int | None
    texts_per_second: float | None
    mean_cosine: float | None  # to the FP32 embedding of the same text
    min_cosine: float | None
    top10_overlap: float | None  # mean share of each text's 10 nearest texts kept
    skipped: str | None = None
    compiled: bool = False

    @property
    def label(self) -> str:
        """``"int8"``, ``"fp16 (bf16)"`` when a fallback applied, ``"+compile"`` appended."""
        applied = self.applied_precision
        label = self.precision if applied in (None, self.precision) else f"{self.precision} ({applied})"
        return label + ("+compile" if self.compiled else "")

    def __repr__(self) -> str:
        if self.skipped is not None:
            return f"EncoderReport({self.label}: skipped, {self.skipped})"
        return (
            f"EncoderReport({self.label}: {self.parameter_bytes / _MB:.1f} MB, "
            f"{self.texts_per_second:.1f} texts/s, cosine mean {self.mean_cosine:.4f} "
            f"min {self.min_cosine:.4f}, top-10 overlap {self.top10_overlap:.3f})"
        )


# Errors that mean "this precision cannot run here" (a missing package, a kernel the hardware
# lacks, a device it cannot use, no compiler for torch.compile), as opposed to a bug.
_CANNOT_RUN_HERE = (ImportError, RuntimeError, NotImplementedError, OSError, ValueError)


def evaluate_encoders(
    model: str | os.PathLike[str],
    precisions: Sequence[Precision],
    texts: Sequence[str],
    batch_size: int = 64,
    device: str | None = None,
    *,
    repeats: int = 3,
    compiled: Sequence[Precision] = (),
) -> list[EncoderReport]:
    """Compare precisions of one model with FP32 on ``texts``, in one run.

    For each precision: parameter memory; texts per second (median of ``repeats`` timed
    passes after a warm-up; passes are interleaved across precisions so that a change in
    machine load hits all of them alike); mean and minimum cosine between each text's
    embedding and its FP32 embedding; and top-10 overlap, the mean share of each text's ten
    nearest other texts under FP32 that it also has under this precision. Precisions named
    in ``compiled`` are measured a second time with ``compile=True`` (reported after the
    others, compile time not included). All encoders stay loaded until the timing is done.

    A precision that cannot load or run here (missing package, no GPU kernel) is reported
    with ``skipped`` set instead of raising.
    """
    runs: list[tuple[str, bool]] = []
    for what, group, flag in (("precisions", precisions, False), ("compiled", compiled, True)):
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise TypeError(f"{what} must be a list of precision names, got {type(group).__name__}.")
        for name in group:
            lookup_precision(name, f"in {what}")
            runs.append((name, flag))
    texts = check_texts(texts)
    if len(texts) < 2:
        raise ValueError(f"Need at least 2 texts to compare neighbours, got {len(texts)}.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}.")
    return _evaluate(model, runs, texts, check_batch_size(batch_size), device, repeats)


def _top_k_neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    # vectors: [n, dim] unit rows -> [n, k] indices of each row's nearest other rows
    scores = vectors @ vectors.T  # [n, n]
    np.fill_diagonal(scores, -np.inf)
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _neighbour_overlap(reference: np.ndarray, other: np.ndarray, k: int) -> float:
    ref_nn, other_nn = _top_k_neighbours(reference, k), _top_k_neighbours(other, k)
    shared = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref_nn, other_nn)]
    return float(np.mean(shared)) / k


def _evaluate(
    model: str | os.PathLike[str],
    runs: list[tuple[str, bool]],
    texts: list[str],
    batch_size: int,
    device: str | None,
    repeats: int,
) -> list[EncoderReport]:
    from tqdm.auto import tqdm

    reference_encoder = load_encoder(model, "fp32", device)
    reference = reference_encoder.encode(texts, batch_size)  # [n, dim]
    k = min(10, len(texts) - 1)
    loaded: dict[int, tuple[Encoder, np.ndarray]] = {}
    skipped: dict[int, str] = {}
    for i, (name, use_compile) in enumerate(tqdm(runs, desc="Loading and warming up", unit="precision")):
        try:
            if lookup_precision(name, "in precisions").name == "fp32" and not use_compile:
                encoder = reference_encoder
            else:
                encoder = load_encoder(model, name, device, compile=use_compile)
            loaded[i] = (encoder, encoder.encode(texts, batch_size))  # also the warm-up pass
        except _CANNOT_RUN_HERE as exc:
            skipped[i] = f"{type(exc).__name__}: {exc}"
            logger.warning("Skipping precision %s: %s", name, skipped[i])
    seconds: dict[int, list[float]] = {i: [] for i in loaded}
    for _ in tqdm(range(repeats), desc="Timing", unit="round"):
        for i, (encoder, _vectors) in loaded.items():
            start = time.perf_counter()
            encoder.encode(texts, batch_size)
            seconds[i].append(time.perf_counter() - start)
    reports = []
    for i, (name, use_compile) in enumerate(runs):
        if i in skipped:
            reports.append(EncoderReport(name, None, None, None, None, None, None, skipped[i], use_compile))
            continue
        encoder, vectors = loaded[i]
        cosines = np.einsum("nd,nd->n", vectors, reference)  # [n]
        reports.append(
            EncoderReport(
                precision=name,
                applied_precision=encoder.precision,
                parameter_bytes=encoder.parameter_bytes,
                texts_per_second=len(texts) / statistics.median(seconds[i]),
                mean_cosine=float(cosines.mean()),
                min_cosine=float(cosines.min()),
                top10_overlap=_neighbour_overlap(reference, vectors, k),
                compiled=use_compile,
            )
        )
    return reports


def read_texts(path: str | os.PathLike | None, limit: int) -> list[str]:
    """The first ``limit`` texts of a file with one text per line, or of a ``.jsonl`` file with
    a ``text`` per line; ``None``: the standard library's docstrings (the demo corpus).
    ``ValueError`` for a missing file, one that is not UTF-8, or fewer than 2 texts."""
    from quant_retriever import ingest

    if path is None:
        from quant_retriever._demo_corpus import stdlib_docstrings

        return [d.text for d in stdlib_docstrings(limit)]
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"texts file {p} does not exist.")
    if p.suffix.lower() == ".jsonl":
        texts = [d.text for d in ingest.read_documents(p)]
    else:
        try:
            texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ValueError(f"{p}: not UTF-8 text; expected one text per line or a .jsonl file.") from None
    texts = texts[:limit]
    if len(texts) < 2:
        raise ValueError(f"{p} has {len(texts)} text(s); need at least 2 (one per line, or a .jsonl with 'text').")
    return texts
