"""Rescoring only the candidates a codec's error bounds cannot rule out (rotated codes): the
pruning rule against a brute-force statement of it, and searches with it against searches
without it (same results, fewer rows read from the rescore copy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quant_retriever.index.search as search_mod
from quant_retriever import QuantizedIndex
from quant_retriever.rescore import RescoreFile


@settings(max_examples=200, deadline=None)
@given(
    nq=st.integers(1, 4),
    c=st.integers(1, 30),
    k=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    tied=st.booleans(),
)
def test_prune_keeps_exactly_the_rows_that_can_still_reach_the_top_k(nq, c, k, seed, tied):
    k = min(k, c)
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((nq, c)).astype(np.float32)
    if tied:
        s = np.round(s, 1)
    b = rng.uniform(0, 0.5, (nq, c)).astype(np.float32)
    rows = rng.permutation(1000)[: nq * c].reshape(nq, c)
    got_s, got_r, pad = search_mod.prune(torch.from_numpy(s), torch.from_numpy(rows), torch.from_numpy(b), k)
    for i in range(nq):
        kth_lower = np.sort(s[i] - b[i])[::-1][k - 1]
        want = [j for j in range(c) if s[i, j] + b[i, j] >= kth_lower]  # in candidate order
        n = len(want)
        assert n >= k
        assert got_r[i, :n].tolist() == rows[i, want].tolist()
        assert got_s[i, :n].tolist() == s[i, want].tolist()
        padded = [] if pad is None else pad[i].tolist()
        assert padded == [] or padded == [False] * n + [True] * (got_r.shape[1] - n)
    assert got_r.shape[1] == max(
        sum(s[i, j] + b[i, j] >= np.sort(s[i] - b[i])[::-1][k - 1] for j in range(c)) for i in range(nq)
    )


def corpus(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors (nearest neighbours stand out, as in real embeddings) and queries near
    some of them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    q = x[rng.integers(0, n, 40)] + 0.5 * rng.standard_normal((40, dim)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("codec", ["rq4", "rq2", "rq1"])
@pytest.mark.parametrize("batch", [1, 40])
def test_pruned_searches_read_fewer_rows_and_find_the_same(codec, batch, tmp_path, monkeypatch):
    """With pruning (the default) a search rescores fewer rows per query than k * multiplier
    and returns what the search without it returns: a spy counts the rows each rescoring path
    receives (one query: in place; several: ``search.rescore``)."""
    x, q = corpus(4000, 128)
    index = QuantizedIndex(128, codec=codec, path=tmp_path / "i")
    index.add(x)
    seen = []
    if batch == 1:
        real = RescoreFile.top
        monkeypatch.setattr(
            RescoreFile, "top", lambda self, u, qn, rows, *a: seen.append(rows.shape[-1]) or real(self, u, qn, rows, *a)
        )
    else:
        real = search_mod.rescore
        monkeypatch.setattr(search_mod, "rescore", lambda *a: seen.append(a[-1].shape[1]) or real(*a))
    results = {}
    for prune in (True, False):
        index._pipeline.prune = prune
        seen.clear()
        found = [index.search(q[i : i + batch], k=10, rescore_multiplier=10) for i in range(0, len(q), batch)]
        results[prune] = (np.concatenate([r.ids for r in found]), np.concatenate([r.scores for r in found]), list(seen))
    (ids_p, sc_p, n_p), (ids_f, sc_f, n_f) = results[True], results[False]
    assert n_f == [100] * len(n_f)
    assert min(n_p) >= 10 and max(n_p) <= 100
    if batch == 1 or codec != "rq1":  # a batch rescores as many as its widest query keeps; rq1's
        assert np.mean(n_p) < 0.9 * 100  # bounds at 128-d are loose enough for one query to keep all
    same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_p, ids_f)])
    assert same >= 0.99
    np.testing.assert_allclose(np.sort(sc_p, axis=1), np.sort(sc_f, axis=1), atol=0.02)


def test_formats_without_bounds_rescore_every_candidate(tmp_path, monkeypatch):
    x, q = corpus(2000, 64)
    index = QuantizedIndex(64, codec="int4", path=tmp_path / "i")
    index.add(x)
    seen = []
    real = search_mod.rescore
    monkeypatch.setattr(search_mod, "rescore", lambda *a: seen.append(a[-1].shape[1]) or real(*a))
    index.search(q[:5], k=10, rescore_multiplier=4)
    assert seen == [40]
