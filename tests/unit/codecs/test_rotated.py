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


def int8_reference(planes: np.ndarray, rows: torch.Tensor, codec) -> np.ndarray:
    """``rq8_scan``'s arithmetic restated in numpy: each query rounded to int8 on its own scale
    (max |q| / 127), each level to uint8 (level * 127 / max|level| + 128, so the dot subtracts
    128 * sum(q8)), integer dots, then the scales and the row's norm / dot, in float32."""
    f32 = np.float32
    levels = np.array(rq.LEVELS[codec.bits], dtype=f32)
    top = np.abs(levels).max()
    u8 = (np.rint(levels * f32(127) / top) + 128).astype(np.int64)
    sq = np.abs(planes).max(axis=1) / f32(127)
    q8 = np.rint(planes / sq[:, None]).astype(np.int64)
    xbar = codec.levels_of(rows[:, : codec.code_bytes]).numpy()  # float levels, plane layout below
    idx = np.abs(xbar[:, :, None] - levels).argmin(axis=2)
    per_byte = 8 // codec.bits
    idx = idx.reshape(len(idx), -1, per_byte).transpose(0, 2, 1).reshape(len(idx), -1)  # planes
    dots = q8 @ u8[idx].T - 128 * q8.sum(axis=1, keepdims=True)
    _, norms, dot = codec._fields(rows)
    return (dots.astype(f32) * (sq * (top / f32(127)))[:, None]) * (norms / dot).numpy()[None, :]


@pytest.mark.parametrize("name", ["rq1", "rq2", "rq4"])
@pytest.mark.parametrize("dim, nq", [(7, 1), (100, 1), (384, 1), (64, 2), (100, 3), (384, 7), (200, 33)])
def test_int8_scan_matches_its_reference(name, dim, nq):
    """The approximate INT8 scan (every tile shape: 1, 2 and 4 queries at a time; row counts
    not a multiple of 16 or 64; code bytes not a multiple of 64) computes exactly the rounding
    its reference states, and stays within 2% of the float estimator."""
    if not scans.rq8_available():
        pytest.skip("no AVX-512 VNNI/VBMI build here")
    rng = np.random.default_rng(dim + nq)
    codec = make_codec(name, dim)
    rows = codec.encode(torch.from_numpy(rng.standard_normal((1000 + dim, dim)).astype(np.float32)))
    planes = codec._planes(torch.from_numpy(rng.standard_normal((nq, dim)).astype(np.float32)))
    levels = codec._levels("cpu")
    got = scans.rq_scan(planes, rows, codec.code_bytes, codec.bits, levels, approx=True)
    np.testing.assert_allclose(got.numpy(), int8_reference(planes.numpy(), rows, codec), rtol=1e-5, atol=1e-5)
    exact = scans.rq_scan(planes, rows, codec.code_bytes, codec.bits, levels)
    assert not torch.equal(got, exact)  # the INT8 path ran
    assert ((got - exact).abs().amax(dim=1) <= 0.02 * exact.abs().amax(dim=1)).all()


@pytest.mark.parametrize("name", ["rq1", "rq2", "rq4"])
def test_top_takes_the_int8_scan_and_returns_exact_scores(name, monkeypatch):
    """Where the INT8 path is built, ``top`` takes it (a spy sees approx=True) and returns the
    float estimator's own scores for its rows, the same rows as the exact scan's top-n but for
    near-ties; invalid rows only when fewer valid ones than n are left."""
    rng = np.random.default_rng(3)
    codec = make_codec(name, 384)
    x = rng.standard_normal((3000, 384)).astype(np.float32)
    rows = codec.encode(torch.from_numpy(x))
    q = torch.from_numpy(x[:9] + 0.5 * rng.standard_normal((9, 384)).astype(np.float32))
    valid = torch.from_numpy(rng.random(3000) > 0.5)
    calls = []
    real = scans.rq_scan
    monkeypatch.setattr(scans, "rq_scan", lambda *a: calls.append(a[-1]) or real(*a))
    s, pos = codec.top(q, rows, valid, 40)
    if scans.LIBRARY.get() is None:
        pytest.skip("no native kernels")
    assert calls == [True]
    assert valid[pos].all()
    want = codec._score_eager(q, rows)
    np.testing.assert_allclose(s.numpy(), torch.gather(want, 1, pos).numpy(), rtol=1e-4, atol=1e-5)
    best = torch.topk(want.masked_fill(~valid, -torch.inf), 40, dim=1).indices
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 40 for a, b in zip(pos, best)])
    assert overlap >= 0.98
    few = torch.zeros(3000, dtype=torch.bool)
    few[[5, 17, 2999]] = True
    s, pos = codec.top(q, rows, few, 10)
    assert sorted(pos[0, :3].tolist()) == [5, 17, 2999]
    assert torch.isneginf(s[:, 3:]).all() and torch.isfinite(s[:, :3]).all()


def test_int8_scan_is_built_where_the_cpu_has_it():
    """A native build on a CPU with AVX-512 VNNI and VBMI has the INT8 path (so the tests above
    do not skip on such machines, and the fast path is not silently lost)."""
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if scans.LIBRARY.get() is None or not {"avx512_vnni", "avx512vbmi", "avx512bw"} <= flags:
        pytest.skip("no native build, or a CPU without AVX-512 VNNI/VBMI")
    assert scans.rq8_available()


@pytest.mark.parametrize("name", ["rq1", "rq2", "rq4"])
def test_error_bounds_are_calibrated(name):
    """The error of an estimate (unit queries) is close to normal with the standard deviation
    the bound assumes (bound / ERROR_EPS): P(|N(0,1)| <= 1.9) = 0.9426 of the estimates lie
    within the bound and all but a few in 1e5 within three times it; bounds shrink with more
    bits; zero vectors: 0."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 384)).astype(np.float32) * rng.uniform(0.1, 5, (3000, 1)).astype(np.float32)
    q = rng.standard_normal((30, 384)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    codec = make_codec(name, 384)
    rows = codec.encode(torch.from_numpy(x))
    err = np.abs(codec._score_eager(torch.from_numpy(q), rows).numpy() - q @ x.T)
    bounds = codec.error_bounds(rows).numpy()
    assert rq.ERROR_EPS == 1.9
    assert 0.93 <= (err <= bounds).mean() <= 0.955
    assert (err <= 3 * bounds).mean() >= 0.9999
    relative = np.median(bounds / np.linalg.norm(x, axis=1))
    assert relative < {1: 0.1, 2: 0.05, 4: 0.015}[codec.bits]
    assert codec.error_bounds(codec.encode(torch.zeros(2, 384))).tolist() == [0.0, 0.0]
