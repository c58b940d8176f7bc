"""Benchmarking embedding precisions: :func:`evaluate_encoders` measures what a precision costs in
fidelity and buys in memory and speed, side by side with FP32, on the same texts in one run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant_retriever.bench.sweep import Measured, check_repeats, precision_label, precision_runs, sweep
from quant_retriever.models.encoder import Encoder, check_batch_size, check_texts, load_encoder
from quant_retriever.models.settings import Precision, lookup_precision

__all__ = ["EncoderReport", "evaluate_encoders", "read_texts"]

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
        return precision_label(self.precision, self.applied_precision, self.compiled)

    def __repr__(self) -> str:
        if self.skipped is not None:
            return f"EncoderReport({self.label}: skipped, {self.skipped})"
        return (
            f"EncoderReport({self.label}: {self.parameter_bytes / _MB:.1f} MB, "
            f"{self.texts_per_second:.1f} texts/s, cosine mean {self.mean_cosine:.4f} "
            f"min {self.min_cosine:.4f}, top-10 overlap {self.top10_overlap:.3f})"
        )


def evaluate_encoders(
    model: str | os.PathLike[str],
    precisions: Sequence[Precision],
    texts: Sequence[str],
    batch_size: int = 64,
    device: str | None = None,
    *,
    repeats: int = 3,
    compiled: Sequence[Precision] = (),
    progress: bool = True,
) -> list[EncoderReport]:
    """Compare precisions of one model with FP32 on ``texts``, in one run.

    For each precision: parameter memory; texts per second (median of ``repeats`` timed
    passes after a warm-up; passes are interleaved across precisions so that a change in
    machine load hits all of them alike); mean and minimum cosine between each text's
    embedding and its FP32 embedding; and top-10 overlap, the mean share of each text's ten
    nearest other texts under FP32 that it also has under this precision. Precisions named
    in ``compiled`` are measured a second time with ``compile=True`` (reported after the
    others, compile time not included). All encoders stay loaded until the timing is done.
    ``progress`` shows tqdm bars on stderr.

    A precision that cannot load or run here (missing package, no GPU kernel) is reported
    with ``skipped`` set instead of raising.
    """
    runs = precision_runs(precisions, compiled)
    texts = check_texts(texts)
    if len(texts) < 2:
        raise ValueError(f"Need at least 2 texts to compare neighbours, got {len(texts)}.")
    return _evaluate(model, runs, texts, check_batch_size(batch_size), device, check_repeats(repeats), progress)


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
    progress: bool,
) -> list[EncoderReport]:
    reference_encoder = load_encoder(model, "fp32", device)
    reference = reference_encoder.encode(texts, batch_size)  # [n, dim]
    k = min(10, len(texts) - 1)

    def load(name: str, use_compile: bool) -> Encoder:
        if lookup_precision(name, "in precisions").name == "fp32" and not use_compile:
            return reference_encoder
        return load_encoder(model, name, device, compile=use_compile)

    measured = sweep(runs, load, lambda encoder: encoder.encode(texts, batch_size), repeats, progress)
    reports = []
    for (name, use_compile), run in zip(runs, measured):
        if not isinstance(run, Measured):
            reports.append(EncoderReport(name, None, None, None, None, None, None, run, use_compile))
            continue
        encoder, vectors = run.model, run.output
        cosines = np.einsum("nd,nd->n", vectors, reference)  # [n]
        reports.append(
            EncoderReport(
                precision=name,
                applied_precision=encoder.precision,
                parameter_bytes=encoder.parameter_bytes,
                texts_per_second=len(texts) / run.seconds,
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
