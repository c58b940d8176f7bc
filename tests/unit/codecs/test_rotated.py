"""The rotated codes (rq1, rq2, rq4) against a reference written here, and rq1's two stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant_retriever import QuantizedIndex
from quant_retriever.codecs import make_codec
from quant_retriever.codecs import rotated as rq
from quant_retriever.kernels import scans

#: Lloyd-Max levels of a standard normal (Max, 1960), restated for the reference.
GRID = {1: [0.7979], 2: [0.4528, 1.5104], 4: [0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6181, 2.0690, 2.7326]}


def reference(x: np.ndarray, q: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes as level indices [n, dim], estimated inner products [nq, n]) in float64 numpy:
    rotate by the seeded Q, round to the nearest level, score |x| <R q, xbar> / <xbar, R u>."""
    dim = x.shape[1]
    g = np.random.Generator(np.random.PCG64(rq.SEED)).standard_normal((dim, dim))
    qm, tri = np.linalg.qr(g)
    rot = (qm * np.where(np.diag(tri) < 0, -1.0, 1.0)).T
    half = np.array(GRID[bits])
    levels = np.concatenate([-half[::-1], half])
    norms = np.linalg.norm(x, axis=1)
    ru = (x / norms[:, None]) @ rot.T
    idx = np.abs(ru[:, :, None] * np.sqrt(dim) - levels).argmin(axis=2)
    xbar = levels[idx]
    est = (q @ rot.T) @ xbar.T * (norms / (xbar * ru).sum(axis=1))
    return idx, est


@pytest.mark.parametrize("name, bits", [("rq1", 1), ("rq2", 2), ("rq4", 4)])
@pytest.mark.parametrize("dim", [7, 64, 384])
def test_codes_and_scores_match_the_reference(name, bits, dim, kernel_path):
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((200, dim)) * rng.uniform(0.1, 10, (200, 1))
    q = rng.standard_normal((3, dim))
    codec = make_codec(name, dim)
    rows = codec.encode(torch.from_numpy(x.astype(np.float32)))
    want_idx, want = reference(x.astype(np.float32).astype(np.float64), q, bits)
    got_idx = codec.levels_of(rows[:, : codec.code_bytes])[:, :dim]
    levels = torch.tensor(rq.LEVELS[bits])
    same = (got_idx[:, :, None] == levels).int().argmax(dim=2).numpy() == want_idx
    assert same.mean() > 0.9999  # (the levels are rounded differently here: a tie may differ)
    np.testing.assert_allclose(codec.score(torch.from_numpy(q).float(), rows).numpy(), want, rtol=2e-3, atol=2e-3)
    assert codec.row_bytes == {1: -(-dim // 64) * 8, 2: -(-dim // 16) * 4, 4: -(-dim // 8) * 4}[bits] + 8


def test_hamming_select_reads_the_bits_at_the_start_of_wider_rows():
    """The strided Hamming pass (rq1 rows: bits, then 8 bytes of floats) equals the pass over
    the bits alone, copied out."""
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(rng.integers(0, 256, (3000, 56), dtype=np.uint8))
    q = torch.from_numpy(rng.integers(0, 256, (3, 48), dtype=np.uint8))
    valid = torch.from_numpy(rng.random(3000) > 0.2)
    strided = scans.hamming_select(q, rows, valid, 50, words=6)
    if strided is None:
        pytest.skip("no native kernels")
    alone = scans.hamming_select(q, rows[:, :48].contiguous(), valid, 50)
    for a, b in zip(strided, alone):
        assert torch.equal(a.sort(dim=1).values, b.sort(dim=1).values)
    with pytest.raises(ValueError, match="whole words"):
        scans.hamming_select(q, rows, valid, 50, words=7)


def test_rq1_candidates_take_the_hamming_pass(monkeypatch):
    """rq1 searches run two stages on the CPU (a spy proves the Hamming pass is taken), and
    their scores are the estimator's own for the rows returned."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 384)).astype(np.float32)
    q = x[:20] + 0.3 * rng.standard_normal((20, 384)).astype(np.float32)
    index = QuantizedIndex(384, codec="rq1", rescore=False)
    index.add(x)
    calls = []
    real = scans.hamming_select
    monkeypatch.setattr(scans, "hamming_select", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    res = index.search(q, k=10)
    if scans.LIBRARY.get() is None:
        pytest.skip("no native kernels")
    assert calls == [{"words": 6}]
    codec = index.codec
    estimator = codec.score(
        torch.from_numpy(q / np.linalg.norm(q, axis=1, keepdims=True)), codec.encode(torch.from_numpy(x))
    )
    got = np.take_along_axis(estimator.numpy(), res.ids, axis=1) * np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(res.scores, got, rtol=1e-4, atol=1e-4)
    assert (res.ids[:, 0] == np.arange(20)).mean() >= 0.95


def test_rq1_on_cuda_scans_every_row(monkeypatch):
    """With a Triton kernel for the rows' device, rq1 does not take the CPU's Hamming pass:
    its candidates come from the index's scan (the fused estimator kernel)."""
    from quant_retriever.kernels import triton as gpu

    codec = make_codec("rq1", 64)
    codes = codec.encode(torch.randn(100, 64))
    monkeypatch.setattr(gpu, "available", lambda device: True)
    got = codec.candidates(torch.randn(2, 64), codes, None, 100, 10, 5, lambda n: ("scanned", n))
    assert got == ("scanned", 10)


@pytest.mark.parametrize("name", ["rq1", "rq2", "rq4"])
def test_rows_no_encoder_writes_are_damaged(name):
    """A zero or negative ``dot`` (it divides every score) or a negative norm marks a row as
    damaged, as a NaN does: an index holding one refuses to open."""
    codec = make_codec(name, 64)
    rows = codec.encode(torch.randn(6, 64, generator=torch.Generator().manual_seed(0)))
    floats = rows.view(torch.float32)
    at = codec.code_bytes // 4
    floats[1, at + 1] = 0.0  # dot
    floats[3, at] = -1.0  # norm
    floats[4, at + 1] = float("nan")
    assert codec.bad_rows(rows).tolist() == [1, 3, 4]
    zero = codec.encode(torch.zeros(1, 64))
    assert codec.bad_rows(zero).tolist() == []  # a zero vector is stored with dot 1
