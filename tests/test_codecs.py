"""Codecs against tiny numpy reference implementations written here (bit-exact packing)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from quant_retriever.codecs import CODEC_NAMES, CodecParams, _native, binary, floats, int4, int8, make_codec

DIMS = [7, 97, 384, 1024]


def ref_int4(x: np.ndarray, block: int) -> np.ndarray:
    """Reference INT4 packing, written from the layout table."""
    x = x.astype(np.float32)
    n, dim = x.shape
    p = -(-dim // block) * block
    nb = p // block
    norm = np.linalg.norm(x, axis=1).astype(np.float16)
    u = x / np.maximum(norm.astype(np.float32), np.float32(1e-12))[:, None]
    u = np.concatenate([u, np.repeat(u[:, -1:], p - dim, axis=1)], axis=1).reshape(n, nb, block)
    lo = u.min(axis=2).astype(np.float16)
    hi = u.max(axis=2)
    scale = np.maximum((hi - lo.astype(np.float32)) / np.float32(15), np.float32(2.0**-14)).astype(np.float16)
    q = np.rint((u - lo.astype(np.float32)[..., None]) / scale.astype(np.float32)[..., None])
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(n, p)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    meta = np.concatenate([scale, lo, norm[:, None]], axis=1).astype("<f2").view(np.uint8)
    row = np.concatenate([packed, meta], axis=1)
    pad = -row.shape[1] % 4
    return np.concatenate([row, np.zeros((n, pad), np.uint8)], axis=1)


def unit(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("block", [8, 64])
@pytest.mark.parametrize("n", [1, 33])
def test_int4_bit_exact_against_reference(dim, block, n):
    x = unit(n, dim) * 3.0  # not unit norm: the norm is kept separately
    codes = int4.encode(x, block)
    assert codes.dtype == torch.uint8 and codes.shape == (n, int4.row_bytes(dim, block))
    np.testing.assert_array_equal(codes.numpy(), ref_int4(x.numpy(), block))


@pytest.mark.parametrize("dim", DIMS)
def test_int4_round_trip_error_bound(dim):
    x = unit(50, dim)
    dec = int4.decode(int4.encode(x), dim)
    # error per element <= half a step of its block (+ FP16 rounding of scale/offset/norm)
    step = (x.view(50, -1).max(1).values - x.min(1).values) / 15
    assert ((dec - x).abs().max(dim=1).values <= step * 0.5 + 2e-3).all()
    assert torch.nn.functional.cosine_similarity(dec, x).min() > 0.98


def test_int4_constant_zero_and_out_of_range_blocks():
    x = torch.zeros(3, 70)
    x[1] = 0.25  # constant vector: every block has zero range
    x[2, :64] = torch.linspace(-5, 5, 64)
    codes = int4.encode(x, 64)
    dec = int4.decode(codes, 70)
    assert torch.isfinite(dec).all()
    assert torch.equal(dec[0], torch.zeros(70))  # zero vector: norm 0, nothing divides by zero
    torch.testing.assert_close(dec[1], x[1], atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(dec[2], x[2], atol=5 * 10 / 15 * 0.5 * 1.01 / 5, rtol=0.05)
    nibbles = codes[:, : int4.row_bytes(70, 64) - 16]
    assert int((nibbles & 15).max()) <= 15 and int((nibbles >> 4).max()) <= 15


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("nq", [1, 3, 9])  # fused kernel up to 4 queries, decoded kernel above
def test_int4_score_equals_decoded_dot(dim, nq, kernel_path):
    x, q = unit(200, dim, 1), unit(nq, dim, 2)
    codes = int4.encode(x)
    expected = q @ int4.decode(codes, dim).T
    torch.testing.assert_close(int4.score(q, codes, dim), expected, atol=1e-4, rtol=1e-4)
    strided = int4.encode(unit(400, dim, 1))[::2]  # rows of a non-contiguous view
    torch.testing.assert_close(int4.score(q, strided, dim), q @ int4.decode(strided, dim).T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dim", DIMS)
def test_binary_matches_numpy_packbits(dim):
    x = torch.randn(9, dim)
    x[0, :3] = 0.0  # zero is not positive: bit 0
    codes = binary.encode(x).numpy()
    ref = np.packbits(x.numpy() > 0, axis=1)
    assert codes.shape == (9, binary.row_bytes(dim))
    np.testing.assert_array_equal(codes[:, : ref.shape[1]], ref)
    assert not codes[:, ref.shape[1] :].any()
    np.testing.assert_array_equal(binary.decode(torch.from_numpy(codes), dim).numpy(), np.where(x.numpy() > 0, 1.0, -1.0))


@pytest.mark.parametrize("dim", DIMS)
def test_binary_hamming_and_asymmetric_score(dim, kernel_path):
    x, q = torch.randn(300, dim), torch.randn(2, dim)
    codes, qc = binary.encode(x), binary.encode(q)
    ref = ((x.numpy()[None] > 0) != (q.numpy()[:, None] > 0)).sum(axis=2)
    np.testing.assert_array_equal(binary.hamming(qc, codes).numpy(), ref)
    signs = np.where(x.numpy() > 0, 1.0, -1.0).astype(np.float32)
    np.testing.assert_allclose(binary.score(q, codes, dim).numpy(), q.numpy() @ signs.T, rtol=1e-5, atol=1e-4)
    per_query = codes.unsqueeze(0).expand(2, -1, -1)
    np.testing.assert_allclose(binary.score(q, per_query, dim).numpy(), q.numpy() @ signs.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dim", [7, 97, 384])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("nq", [1, 3, 9, 32])  # the kernel's plain loop below 4 queries, vector groups of 8 above
def test_binary_top_selects_the_smallest_distances(dim, masked, nq, kernel_path):
    x, q = torch.randn(500, dim), torch.randn(nq, dim)
    codec = make_codec("binary", CodecParams(dim))
    rows = codec.encode(x)
    valid = torch.rand(500, generator=torch.Generator().manual_seed(1)) > 0.5 if masked else None
    ref = ((x.numpy()[None] > 0) != (q.numpy()[:, None] > 0)).sum(axis=2)  # [nq, 500]
    if masked:
        ref = np.where(valid.numpy()[None], ref, 10**6)
    scores, pos = codec.top(q, rows, valid, 40)
    assert scores.shape == pos.shape == (nq, 40)
    np.testing.assert_array_equal(-scores.numpy(), np.sort(ref, axis=1)[:, :40])  # best first, exact distances
    np.testing.assert_array_equal(np.take_along_axis(ref, pos.numpy(), axis=1), -scores.numpy())
    assert all(len(set(p)) == 40 for p in pos.tolist())
    if kernel_path != "eager":  # dim 7 has many ties: the kernels keep the earlier rows
        np.testing.assert_array_equal(pos.numpy(), np.argsort(ref, axis=1, kind="stable")[:, :40])


@pytest.mark.parametrize("nq", [1, 12])
def test_binary_kernel_selection_is_the_same_for_any_thread_count(nq, kernel_path):
    if kernel_path == "eager":
        pytest.skip("the eager path is torch.topk")
    x = torch.randn(3000, 16)
    x[1000:2000] = x[0]  # a thousand ties, split across the threads' blocks
    rows, qc = binary.encode(x), binary.encode(torch.randn(nq, 16))
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3, 5):
            torch.set_num_threads(t)
            results.append([r.numpy() for r in _native.hamming_select(qc, rows, None, 700)])
    finally:
        torch.set_num_threads(threads)
    for dist, pos in results[1:]:
        np.testing.assert_array_equal(dist, results[0][0])
        np.testing.assert_array_equal(pos, results[0][1])


def test_binary_kernel_pads_with_invalid_rows_when_too_few_are_valid(kernel_path):
    x, q = torch.randn(100, 64), torch.randn(3, 64)
    codec = make_codec("binary", CodecParams(64))
    valid = torch.zeros(100, dtype=torch.bool)
    valid[[5, 50, 70]] = True
    scores, pos = codec.top(q, codec.encode(x), valid, 10)
    assert sorted(pos[:, :3].flatten().tolist()) == [5, 5, 5, 50, 50, 50, 70, 70, 70]
    ref = ((x.numpy()[None] > 0) != (q.numpy()[:, None] > 0)).sum(axis=2)
    np.testing.assert_array_equal(-scores[:, :3].numpy(), np.take_along_axis(ref, pos[:, :3].numpy(), axis=1))
    assert not valid[pos[:, 3:].flatten()].any()  # the rest are invalid rows, scored lowest
    assert (scores[:, 3:] < scores[:, 2:3]).all()
    if kernel_path != "eager":
        assert pos[:, 3:].tolist() == [[0, 1, 2, 3, 4, 6, 7]] * 3
        with pytest.raises(ValueError, match="keep"):
            _native.hamming_select(binary.encode(q), codec.encode(x), valid, 101)


def ref_int8(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scale = np.maximum((hi - lo) / np.float32(255), np.float32(1e-8))
    return (np.clip(np.rint((x - lo) / scale), 0, 255) - 128).astype(np.int8)


@pytest.mark.parametrize("dim", DIMS)
def test_int8_calibration_encoding_and_score(dim, kernel_path):
    x = unit(500, dim).numpy()
    x[:, dim // 2] = 1e-33  # a constant dimension, like MiniLM's dimension 127
    lo, scale = int8.calibrate(torch.from_numpy(x))
    np.testing.assert_array_equal(lo.numpy(), x.min(0))
    assert float(scale[dim // 2]) == pytest.approx(1e-8)
    codes = int8.encode(torch.from_numpy(x), lo, scale)
    np.testing.assert_array_equal(codes.numpy(), ref_int8(x, x.min(0), x.max(0)))
    dec = int8.decode(codes, lo, scale)
    assert np.abs(dec.numpy() - x).max() <= float(scale.max()) / 2 + 1e-6
    assert float(dec[0, dim // 2]) == pytest.approx(1e-33, abs=1e-12)
    q = torch.from_numpy(unit(4, dim, 3).numpy())
    torch.testing.assert_close(int8.score(q, codes, lo, scale), q @ dec.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dim", DIMS)
def test_float_codecs_score_exactly(dim, kernel_path):
    x, q = unit(300, dim, 4), unit(5, dim, 6)
    for dtype in (torch.float16, torch.float32):
        codes = floats.encode(x, dtype)
        assert codes.dtype == dtype
        torch.testing.assert_close(floats.score(q, codes), q @ codes.float().T, atol=1e-5, rtol=1e-5)


def test_int8_clamps_values_outside_the_calibrated_range():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]] * 40)
    lo, scale = int8.calibrate(x)
    codes = int8.encode(torch.tensor([[5.0, -5.0]]), lo, scale)
    assert codes.tolist() == [[127, -128]]  # clamped, not wrapped
    torch.testing.assert_close(int8.decode(codes, lo, scale), torch.tensor([[1.0, 0.0]]))


def test_int8_small_batch_gets_the_overall_range():
    x = torch.tensor([[0.1, -0.3, 0.2]])
    lo, scale = int8.calibrate(x)
    assert torch.all(lo == lo[0]) and torch.all(scale == scale[0])
    dec = int8.decode(int8.encode(x, lo, scale), lo, scale)
    torch.testing.assert_close(dec, x, atol=float(scale[0]), rtol=0)


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("dim", [7, 97])
def test_codecs_accept_noncontiguous_and_memmapped_input(name, dim, tmp_path):
    base = unit(40, dim * 2)
    x = base[:, ::2]  # non-contiguous view
    assert not x.is_contiguous()
    mm = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=(40, dim))
    mm[:] = x.numpy()
    lo, scale = int8.calibrate(x)
    codec = make_codec(name, CodecParams(dim, 8, lo, scale))
    a = codec.encode(x)
    b = codec.encode(torch.from_numpy(np.asarray(mm)))
    c = codec.encode(x.contiguous())
    assert a.shape == (40, codec.row_bytes) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(a, c)


def test_without_a_compiler_the_kernels_warn_once_and_fall_back(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(_native, "_state", {"lib": None, "tried": False})
    x, q = torch.randn(50, 70), torch.randn(2, 70)
    ref = ((x.numpy()[None] > 0) != (q.numpy()[:, None] > 0)).sum(axis=2)
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
        got = binary.hamming(binary.encode(q), binary.encode(x))
    np.testing.assert_array_equal(got.numpy(), ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        codes = int4.encode(x)
        torch.testing.assert_close(int4.score(q, codes, 70), q @ int4.decode(codes, 70).T, atol=1e-4, rtol=1e-4)


def test_loading_the_kernels_keeps_subnormal_floats():
    # a library linked with -ffast-math would switch the whole process to flush-to-zero
    if _native.kernels() is None:
        pytest.skip("no C compiler")
    tiny = np.float32(1e-40)
    assert tiny * np.float32(1.0) != 0 and torch.tensor(1e-40, dtype=torch.float32) * 1.0 != 0


def test_unknown_codec_lists_the_choices():
    with pytest.raises(ValueError, match="'int4', 'binary', 'int8', 'fp16', 'fp32'; got 'pq'"):
        make_codec("pq", CodecParams(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codecs_on_cuda_match_cpu(name):
    x, q = unit(100, 97), unit(2, 97, 5)
    lo, scale = int8.calibrate(x)
    cpu = make_codec(name, CodecParams(97, 8, lo, scale))
    gpu = make_codec(name, CodecParams(97, 8, lo.cuda(), scale.cuda()))
    codes = gpu.encode(x.cuda())
    assert codes.device.type == "cuda"
    assert torch.equal(codes.cpu(), cpu.encode(x))
    torch.testing.assert_close(gpu.score(q.cuda(), codes).cpu(), cpu.score(q, cpu.encode(x)), atol=1e-3, rtol=1e-3)
