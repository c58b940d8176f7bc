"""Fusion of ranked lists, against references written here from the formulas: reciprocal-rank
fusion (Cormack et al., ranks from 1) and LlamaIndex's relative-score fusion (min-max scaling;
a list of equal scores scales to 1, or 0 when they are not positive)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_retriever.store.fusion import fuse


def reference_rrf(lists, weights, k):
    scores = {}
    for hits, w in zip(lists, weights):
        for rank, (key, _) in enumerate(hits, start=1):
            scores[key] = scores.get(key, 0.0) + w / (k + rank)
    return scores


def reference_relative(lists, weights):
    scores = {}
    for hits, w in zip(lists, weights):
        values = [s for _, s in hits]
        for key, s in hits:
            lo, hi = min(values), max(values)
            scaled = (1.0 if hi > 0 else 0.0) if hi == lo else (s - lo) / (hi - lo)
            scores[key] = scores.get(key, 0.0) + w * scaled
    return scores


ranked = st.lists(
    st.tuples(st.integers(0, 30), st.floats(-5, 5, allow_nan=False)), max_size=12, unique_by=lambda h: h[0]
).map(lambda hits: sorted(hits, key=lambda h: -h[1]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    lists=st.lists(ranked, min_size=1, max_size=3),
    weights=st.lists(st.floats(0, 3, allow_nan=False), min_size=3, max_size=3),
    rrf_k=st.floats(0, 100, allow_nan=False),
    fusion=st.sampled_from(["rrf", "relative"]),
)
def test_fusion_equals_the_reference(lists, weights, rrf_k, fusion):
    fused = fuse(lists, weights, fusion, rrf_k)
    expected = reference_rrf(lists, weights, rrf_k) if fusion == "rrf" else reference_relative(lists, weights)
    assert {key for key, _ in fused} == set(expected)
    for key, score in fused:
        assert math.isclose(score, expected[key], rel_tol=1e-12, abs_tol=1e-12)
    assert [key for key, _ in fused] == sorted(expected, key=lambda key: (-expected[key], key))


def test_rrf_of_the_paper():
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    keyword = [(3, 12.0), (1, 4.0)]
    fused = fuse([dense, keyword], (1.0, 1.0))
    assert [key for key, _ in fused] == [1, 3, 2]
    assert [s for _, s in fused] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])


def test_alpha_one_is_dense_only_and_zero_keyword_only():
    dense = [(1, 0.9), (2, 0.5), (3, 0.1)]
    keyword = [(3, 9.0), (2, 1.0)]
    assert [key for key, _ in fuse([dense, keyword], (1.0, 0.0), "relative")] == [1, 2, 3]
    assert [key for key, _ in fuse([dense, keyword], (0.0, 1.0), "relative")][0] == 3
