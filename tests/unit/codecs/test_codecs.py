"""Each format against a tiny numpy reference implementation written here (bit-exact packing),
through the native kernels, their portable build and eager torch. The contract every
registered codec shares is in test_codec_contract.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from quant_retriever.codecs import binary, int4, int8, make_codec
from quant_retriever.kernels import scans

DIMS = [7, 97, 384, 1024]


def ref_int4(x: np.ndarray, block: int) -> np.ndarray:
    """Reference INT4 packing, written from the layout table."""
    x = x.astype(np.float32)
    n, dim = x.shape
    p = -(-dim // block) * block
    nb = p // block
    norm64 = np.linalg.norm(x.astype(np.float64), axis=1)
    norm = norm64.astype(np.float32)
    u = (x / np.where(norm64 > 0, norm64, 1)[:, None]).astype(np.float32)
    u = np.concatenate([u, np.repeat(u[:, -1:], p - dim, axis=1)], axis=1).reshape(n, nb, block)
    lo = u.min(axis=2).astype(np.float16)
    hi = u.max(axis=2)
    scale = np.maximum((hi - lo.astype(np.float32)) / np.float32(15), np.float32(2.0**-14)).astype(np.float16)
    q = np.rint((u - lo.astype(np.float32)[..., None]) / scale.astype(np.float32)[..., None])
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(n, p)
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    meta = np.concatenate([scale, lo], axis=1).astype("<f2").view(np.uint8)
    return np.concatenate([packed, meta, norm[:, None].astype("<f4").view(np.uint8)], axis=1)


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
    nibbles = codes[:, : int4.row_bytes(70, 64) - 12]
    assert int((nibbles & 15).max()) <= 15 and int((nibbles >> 4).max()) <= 15


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("nq", [1, 2, 3, 4, 9, 33])  # fused kernel up to 4 queries, decoded kernel above
@pytest.mark.parametrize("block", [16, 32, 64])  # the fused kernel's AVX-512 loop takes blocks of 32k
def test_int4_score_equals_decoded_dot(dim, nq, block, kernel_path):
    x, q = unit(200, dim, 1), unit(nq, dim, 2)
    codes = int4.encode(x, block)
    expected = q @ int4.decode(codes, dim, block).T
    torch.testing.assert_close(int4.score(q, codes, dim, block), expected, atol=1e-4, rtol=1e-4)
    strided = int4.encode(unit(400, dim, 1), block)[::2]  # rows of a non-contiguous view
    got = int4.score(q, strided, dim, block)
    torch.testing.assert_close(got, q @ int4.decode(strided, dim, block).T, atol=1e-4, rtol=1e-4)
    valid = torch.arange(200) % 3 != 0
    masked = int4.score(q, strided, dim, block, valid)
    torch.testing.assert_close(masked[:, valid], got[:, valid])


@pytest.mark.parametrize("dim", DIMS)
def test_binary_matches_numpy_packbits(dim):
    x = torch.randn(9, dim)
    x[0, :3] = 0.0  # zero is not positive: bit 0
    codes = binary.encode(x).numpy()
    assert np.array_equal(codes, binary._encode_torch(x).numpy())  # the device path, run here on the CPU
    ref = np.packbits(x.numpy() > 0, axis=1)
    assert codes.shape == (9, binary.row_bytes(dim))
    np.testing.assert_array_equal(codes[:, : ref.shape[1]], ref)
    assert not codes[:, ref.shape[1] :].any()
    np.testing.assert_array_equal(
        binary.decode(torch.from_numpy(codes), dim).numpy(), np.where(x.numpy() > 0, 1.0, -1.0)
    )


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
    codec = make_codec("binary", dim)
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
def test_binary_kernel_selection_is_the_same_for_any_thread_count(nq, kernel_path, monkeypatch):
    monkeypatch.setattr(scans, "PARALLEL_MIN_WORK", 0)  # split even small scans across threads
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
            results.append([r.numpy() for r in scans.hamming_select(qc, rows, None, 700)])
    finally:
        torch.set_num_threads(threads)
    for dist, pos in results[1:]:
        np.testing.assert_array_equal(dist, results[0][0])
        np.testing.assert_array_equal(pos, results[0][1])


def test_binary_kernel_pads_with_invalid_rows_when_too_few_are_valid(kernel_path):
    x, q = torch.randn(100, 64), torch.randn(3, 64)
    codec = make_codec("binary", 64)
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
            scans.hamming_select(binary.encode(q), codec.encode(x), valid, 101)


def ref_int8(x: np.ndarray) -> np.ndarray:
    """Reference INT8 rows, written from the layout table in codecs/int8.py."""
    n, dim = x.shape
    norm64 = np.linalg.norm(x.astype(np.float64), axis=1)
    u = (x / np.where(norm64 > 0, norm64, 1)[:, None]).astype(np.float32)
    scale = np.maximum(np.abs(u).max(axis=1) / np.float32(127), np.float32(1e-30)).astype(np.float32)
    codes = np.clip(np.rint(u / scale[:, None]), -127, 127).astype(np.int8).view(np.uint8)
    pad = np.zeros((n, -dim % 4), np.uint8)
    tail = np.stack([norm64.astype(np.float32), scale], axis=1).astype("<f4").view(np.uint8)
    return np.concatenate([codes, pad, tail], axis=1)


@pytest.mark.parametrize("dim", DIMS)
def test_int8_bit_exact_against_reference(dim, kernel_path):
    x = unit(500, dim) * 7.0
    x[:, dim // 2] = 1e-33  # a constant dimension, like MiniLM's dimension 127
    rows = int8.encode(x)
    assert rows.shape == (500, int8.row_bytes(dim))
    np.testing.assert_array_equal(rows.numpy(), ref_int8(x.numpy()))
    u, norms = int8.decode_unit(rows, dim)
    dec = u * norms[:, None]
    step = norms * (x.abs().max(1).values / norms) / 127  # half a step per element at most
    assert ((dec - x).abs().max(1).values <= step / 2 * 1.001 + 1e-6).all()
    q = unit(4, dim, 3)
    torch.testing.assert_close(int8.score(q, rows, dim), q @ dec.T, atol=1e-4, rtol=1e-4)


def test_int8_codes_never_wrap():
    x = torch.tensor([[5.0, -5.0, 0.0], [1e-3, -1.0, 1e30]])
    rows = int8.encode(x)
    codes = rows[:, :3].view(torch.int8)
    assert codes.tolist() == [[127, -127, 0], [0, 0, 127]]


@pytest.mark.parametrize("name", ["fp16", "fp32"])
@pytest.mark.parametrize("dim", DIMS)
def test_float_codecs_store_direction_and_norm(name, dim, kernel_path):
    codec = make_codec(name, dim)
    x, q = unit(300, dim, 4) * 1e5, unit(5, dim, 6)  # 1e5 overflows FP16 if stored raw
    rows = codec.encode(x)
    dtype = torch.float16 if name == "fp16" else torch.float32
    width = -(-dim * dtype.itemsize // 4) * 4
    u = rows[:, : dim * dtype.itemsize].view(dtype)
    norms = rows[:, width:].view(torch.float32)[:, 0]
    torch.testing.assert_close(u, (x / x.norm(dim=1, keepdim=True)).to(dtype))
    torch.testing.assert_close(norms, x.norm(dim=1))
    expected = (q @ u.float().T) * norms
    torch.testing.assert_close(codec.score(q, rows), expected, atol=1e-5 * 1e5, rtol=1e-5)


def test_without_a_compiler_the_kernels_warn_once_and_fall_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("QUANT_RETRIEVER_CACHE_DIR", str(tmp_path))  # nothing cached to load
    monkeypatch.setattr(scans.LIBRARY, "_lib", None)
    monkeypatch.setattr(scans.LIBRARY, "_tried", False)
    x, q = torch.randn(50, 70), torch.randn(2, 70)
    ref = ((x.numpy()[None] > 0) != (q.numpy()[:, None] > 0)).sum(axis=2)
    with pytest.warns(RuntimeWarning, match="native CPU kernels .* unavailable"):
        got = binary.hamming(binary.encode(q), binary.encode(x))
    np.testing.assert_array_equal(got.numpy(), ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        codes = int4.encode(x)
        torch.testing.assert_close(int4.score(q, codes, 70), q @ int4.decode(codes, 70).T, atol=1e-4, rtol=1e-4)


def test_loading_the_kernels_keeps_subnormal_floats():
    # a library linked with -ffast-math would switch the whole process to flush-to-zero
    if scans.LIBRARY.get() is None:
        pytest.skip("no C compiler")
    tiny = np.float32(1e-40)
    assert tiny * np.float32(1.0) != 0 and torch.tensor(1e-40, dtype=torch.float32) * 1.0 != 0


def test_unknown_codec_lists_the_choices():
    with pytest.raises(ValueError, match="'int4', 'binary', 'int8', 'fp16', 'fp32', 'rq1', 'rq2', 'rq4'; got 'pq'"):
        make_codec("pq", 8)


@pytest.mark.parametrize("dim", [7, 97, 384])
@pytest.mark.parametrize("nq", [1, 3, 9])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("width", [200, 520])
def test_binary_candidates_kernel_matches_the_two_torch_stages(dim, nq, masked, width):
    """The CPU kernel runs Hamming selection and the +-1 re-rank in one call; here the two
    stages run apart (the kernel's selection, then the re-rank in torch, a stable sort).
    Same rows in the same order, same scores. Both re-rank paths: masked adds of the query
    (AVX-512, fewer than 512 rows) and the per-byte table."""
    if scans.LIBRARY.get() is None:
        pytest.skip("no C compiler")
    codec = make_codec("binary", dim)
    x, q = unit(700, dim, 3), unit(nq, dim, 4)
    rows = codec.encode(x)
    valid = (torch.arange(700) % 4 != 1) if masked else None
    n_valid = int(valid.sum()) if masked else 700
    k = width // binary.WIDEN  # the kernel's Hamming pass is WIDEN * k rows wide
    scores, picked = codec.candidates(q, rows, valid, n_valid, 40, k, lambda n: codec.top(q, rows, valid, n))
    _, first = codec.top(q, rows, valid, width)  # Hamming order, ties to the lower row
    signs = binary.decode(rows, dim)
    second = torch.einsum("qd,qcd->qc", q, signs[first])
    order = torch.sort(second, dim=1, descending=True, stable=True).indices[:, :40]
    torch.testing.assert_close(scores, torch.gather(second, 1, order), atol=1e-4, rtol=1e-5)
    assert torch.equal(picked, torch.gather(first, 1, order))
    if masked:
        assert valid[picked.flatten()].all()


@pytest.mark.parametrize("fmt", ["int8", "fp16"])
@pytest.mark.parametrize("dim", DIMS)
def test_dense_top_reads_picked_rows_in_place_like_score_then_a_stable_sort(fmt, dim):
    """The one-query rescoring kernel against its reference: the codec's scores of the
    gathered rows, a stable descending sort, times the query norm in float64, clipped."""
    if scans.LIBRARY.get() is None:
        pytest.skip("no C compiler")
    codec = make_codec(fmt, dim)
    x = unit(300, dim, 5) * torch.rand(300, 1, generator=torch.Generator().manual_seed(2)) * 10
    x[100:110] = x[7]  # equal scores: ties keep the earlier pick
    rows = codec.encode(x).numpy()
    q = unit(1, dim, 6)
    gen = torch.Generator().manual_seed(dim)
    pick = torch.cat([torch.arange(100, 110), torch.tensor([7]), torch.randperm(300, generator=gen)[:60]])
    for k, qnorm in [(1, 1.0), (10, 3.5), (len(pick), 1e38)]:
        scores, pos = scans.dense_top(q, qnorm, (rows.ctypes.data, *rows.shape), pick, k, dim, *codec.dense_layout())
        ref = codec.score(q, torch.from_numpy(rows[pick.numpy()]))[0]
        order = torch.sort(ref, descending=True, stable=True).indices[:k].numpy()
        np.testing.assert_array_equal(pos, order)
        expect = np.clip(ref.numpy()[order].astype(np.float64) * qnorm, -3.4028234663852886e38, 3.4028234663852886e38)
        np.testing.assert_allclose(scores, expect.astype(np.float32), rtol=1e-5, atol=1e-5 * qnorm)
        assert np.isfinite(scores).all()
    for bad in (torch.tensor([0, 300]), torch.tensor([-1, 2])):
        with pytest.raises(ValueError, match="picked rows"):
            scans.dense_top(q, 1.0, (rows.ctypes.data, *rows.shape), bad, 1, dim, *codec.dense_layout())


@pytest.mark.parametrize("fmt", ["int4", "int8", "fp16"])
@pytest.mark.parametrize("nq", [8, 16, 17, 40])
@pytest.mark.parametrize("n", [1, 7, 203])
def test_batch_scans_tile_rows_and_queries_exactly_like_decoded_dots(fmt, nq, n, kernel_path):
    """From 8 queries the CPU kernels score tiles of 8 rows against 16 or 32 queries at once:
    any row count (partial tiles), any query count (partial vectors), masked rows -inf."""
    codec = make_codec(fmt, 97)
    x, q = unit(n, 97, 8) * 3, unit(nq, 97, 9)
    rows = codec.encode(x)
    valid = torch.arange(n) % 5 != 2
    expected = q @ codec.decode(rows).T
    torch.testing.assert_close(codec.score(q, rows), expected, atol=1e-4, rtol=1e-4)
    masked = codec.score(q, rows, valid)
    torch.testing.assert_close(masked[:, valid], expected[:, valid], atol=1e-4, rtol=1e-4)
    if kernel_path != "eager":  # the kernels mark rows they skip; eager leaves that to the caller
        assert (masked[:, ~valid] == -float("inf")).all()


@pytest.mark.parametrize("fmt", ["int4", "int8", "fp16"])
@pytest.mark.parametrize("nq", [1, 3, 4, 8, 33])  # int4: fused up to 4 queries; from 8: tiles
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_scans_keep_the_best_rows_like_scores_then_a_stable_sort(fmt, nq, threads, kernel_path, monkeypatch):
    """``top`` keeps each query's best rows while scanning (the CPU kernels hold no score per
    row): the rows and scores of scoring every row then sorting, ties to the lower row for
    any thread count, rows outside ``valid`` last (only when too few are valid)."""
    monkeypatch.setattr(scans, "PARALLEL_MIN_WORK", 0)  # split even small scans across threads
    codec = make_codec(fmt, 97)
    x, q = unit(300, 97, 3), unit(nq, 97, 4)
    x[150:290] = x[:140]  # identical codes: ties, in both halves' blocks
    rows = codec.encode(x)
    valid = torch.arange(300) % 4 != 1
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for mask, keep in [(None, 1), (None, 57), (valid, 57), (None, 300), (valid, 240)]:
            scores, pos = codec.top(q, rows, mask, keep)
            full = codec.score(q, rows)
            if mask is not None:
                full = full.masked_fill(~mask, -float("inf"))
            order = np.argsort(-full.numpy(), axis=1, kind="stable")[:, :keep]
            if kernel_path == "eager":  # torch.topk: any order among equal scores, masked rows lowest
                real = keep if mask is None else min(keep, 225)
                torch.testing.assert_close(scores[:, :real], torch.gather(full, 1, torch.from_numpy(order))[:, :real])
                continue
            np.testing.assert_array_equal(pos.numpy(), order)
            np.testing.assert_array_equal(scores.numpy(), np.take_along_axis(full.numpy(), order, axis=1))
            if keep == 240:  # 225 valid rows, then invalid ones by row
                assert valid[pos[:, :225].flatten()].all() and not valid[pos[:, 225:].flatten()].any()
    finally:
        torch.set_num_threads(saved)
    if kernel_path != "eager":
        with pytest.raises(ValueError, match="keep"):
            codec.top(q, rows, None, 301)


def test_scans_rank_nan_scores_last(kernel_path):
    """A row whose stored factor is NaN (a damaged file) ranks below every real score."""
    if kernel_path == "eager":
        pytest.skip("eager ranking is torch.topk's")
    codec = make_codec("int8", 32)
    x, q = unit(200, 32, 5), unit(2, 32, 6)
    rows = codec.encode(x)
    rows.view(torch.float32)[:10, -1] = float("nan")  # the scale of rows 0..9
    scores, pos = codec.top(q, rows, None, 195)
    assert not np.isin(pos[:, :190].numpy(), np.arange(10)).any()
    assert (scores[:, 190:] == -float("inf")).all() and (pos[:, 190:] == torch.arange(10)[:5]).all()


def test_a_scan_with_long_kept_lists_runs_on_fewer_threads(kernel_path, monkeypatch):
    """Each thread keeps its own lists: a large batch with a large keep runs on fewer threads
    rather than multiply its memory, with the same result."""
    if kernel_path == "eager":
        pytest.skip("no kept lists in eager torch")
    monkeypatch.setattr(scans, "PARALLEL_MIN_WORK", 0)
    codec = make_codec("int4", 64)
    x, q = unit(2000, 64, 7), unit(9, 64, 8)
    rows = codec.encode(x)
    saved = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        expected = codec.top(q, rows, None, 500)
        assert scans._threads(2000, 9, 500) == 4
        monkeypatch.setattr(scans, "KEPT_BYTES_MAX", 12 * 9 * 500 * 2)  # room for two threads' lists
        assert scans._threads(2000, 9, 500) == 2 and scans._threads(2000, 9, 5000) == 1
        got = codec.top(q, rows, None, 500)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
