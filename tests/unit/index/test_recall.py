"""Recall@10 of every codec against exact FP32 search, on real MiniLM embeddings of >= 5,000
real documents (Python standard-library docstrings; see quant_retriever._demo_corpus)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant_retriever import QuantizedIndex

# (codec, rescore, multiplier) -> recall@10 floor. The targets: int4 alone >= 0.92,
# int4 + INT8 rescore x2 >= 0.985, binary + rescore x4 >= 0.94; the rotated codes: rq4 alone
# >= 0.95, rq2 alone >= 0.85 and x4 >= 0.99, rq1 x4 >= 0.97.
FLOORS = [
    ("fp32", False, 1, 0.999),
    ("fp16", False, 1, 0.99),
    ("int8", False, 1, 0.95),
    ("int4", False, 1, 0.92),
    ("int4", True, 2, 0.985),
    ("int4", True, 4, 0.985),  # the INT8 copy itself is the ceiling (int8 alone: ~0.99)
    ("binary", False, 1, 0.70),
    ("binary", True, 4, 0.94),
    ("rq4", False, 1, 0.95),
    ("rq4", True, 2, 0.99),
    ("rq2", False, 1, 0.85),
    ("rq2", True, 4, 0.99),
    ("rq1", False, 1, 0.70),
    ("rq1", True, 4, 0.97),
]


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))


@pytest.fixture(scope="module")
def exact(corpus_vectors):
    docs, queries = corpus_vectors
    return torch.topk(torch.from_numpy(queries) @ torch.from_numpy(docs).T, 10).indices.numpy()


@pytest.mark.parametrize("codec, rescore, mult, floor", FLOORS)
def test_recall_against_exact_fp32_on_minilm(corpus_vectors, exact, codec, rescore, mult, floor):
    docs, queries = corpus_vectors
    assert docs.shape[0] >= 5000 and docs.shape[1] == 384
    index = QuantizedIndex(384, codec=codec, rescore=rescore)
    index.add(docs[:1000])
    index.add(docs[1000:])
    res = index.search(queries, k=10, rescore_multiplier=mult)
    recall = recall_at_10(res.ids, exact)
    print(f"{codec} rescore={rescore} x{mult}: recall@10 = {recall:.4f}")
    assert recall >= floor, f"{codec} rescore={rescore} x{mult}: recall@10 {recall:.4f} < {floor}"


BATCHINGS = [
    ("int4", True, 2, "int8"),
    ("int4", True, 4, "fp16"),
    ("int4", False, 1, "int8"),
    ("binary", True, 4, "int8"),
    ("binary", False, 1, "int8"),
    ("rq1", True, 4, "int8"),
    ("rq2", True, 4, "int8"),
    ("rq4", False, 1, "int8"),
    ("int8", False, 1, "int8"),
    ("fp16", False, 1, "int8"),
    ("fp32", False, 1, "int8"),
]


@pytest.mark.parametrize("codec, rescore, mult, rescore_dtype", BATCHINGS)
def test_recall_does_not_depend_on_how_the_corpus_was_batched(
    corpus_vectors, exact, codec, rescore, mult, rescore_dtype
):
    """LangChain's indexing API adds 100 documents at a time; nothing may be learned from the
    first batch. Batches of 1, 16, 64 and all at once give the same codes, so the same results."""
    docs, queries = corpus_vectors
    results = {}
    for batch in (len(docs), 1, 16, 64):
        index = QuantizedIndex(384, codec=codec, rescore=rescore, rescore_dtype=rescore_dtype)
        for start in range(0, len(docs), batch):
            index.add(docs[start : start + batch])
        results[batch] = index.search(queries, k=10, rescore_multiplier=mult)
    one = recall_at_10(results[len(docs)].ids, exact)
    for batch, res in results.items():
        assert abs(recall_at_10(res.ids, exact) - one) <= 0.005, (batch, one)
        np.testing.assert_array_equal(res.ids, results[len(docs)].ids)
        np.testing.assert_array_equal(res.scores, results[len(docs)].scores)


def test_fp16_rescoring_is_nearly_exact(corpus_vectors, exact):
    docs, queries = corpus_vectors
    index = QuantizedIndex(384, codec="int4", rescore_dtype="fp16")
    index.add(docs)
    assert index.memory().disk_bytes_per_vector == 384 * 2 + 4
    assert recall_at_10(index.search(queries, k=10, rescore_multiplier=2).ids, exact) >= 0.995


def test_minilm_dead_dimension_is_handled(corpus_vectors):
    docs, _ = corpus_vectors
    spread = docs.max(0) - docs.min(0)
    assert spread.min() < 1e-6  # all-MiniLM-L6-v2's constant dimension is really there
    index = QuantizedIndex(384, codec="int8")
    index.add(docs)
    rebuilt = index.get_vectors(np.arange(10))
    assert np.isfinite(rebuilt).all()
    np.testing.assert_allclose(rebuilt, docs[:10], atol=0.01)


def test_rescoring_improves_int4_and_binary(corpus_vectors, exact):
    docs, queries = corpus_vectors
    for codec in ("int4", "binary"):
        plain = QuantizedIndex(384, codec=codec, rescore=False)
        rescored = QuantizedIndex(384, codec=codec, rescore=True)
        plain.add(docs)
        rescored.add(docs)
        r0 = recall_at_10(plain.search(queries, k=10).ids, exact)
        r1 = recall_at_10(rescored.search(queries, k=10, rescore_multiplier=4).ids, exact)
        assert r1 > r0, (codec, r0, r1)
