"""The Triton scan kernels against the eager-torch references, bit-exact (Hamming) or within
float32 rounding (INT4), with the same top-k.

With CUDA the kernels compile (``libdevice.popc``, tensor cores) and run here, and the
``cuda_only`` tests add full-size launches. Without CUDA they run on the CPU in Triton's
interpreter, which must be switched on (``TRITON_INTERPRET=1``) before anything imports
triton; other libraries of the suite import it early (sentence-transformers, bitsandbytes), so
``test_triton_cpu.py`` runs this module in a child process with the variable set, and
nothing else in the session sees it. The interpreter is slow: shapes are small, and tiles of
32-64 rows with several programs per query make every code path run (ragged last tiles,
programs' lists merged, query blocks padded).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need triton (pip install 'quant-retriever[gpu]')")

from quant_retriever.codecs import binary, int4, make_codec  # noqa: E402
from quant_retriever.kernels import scans  # noqa: E402
from quant_retriever.kernels import triton as tk  # noqa: E402
from quant_retriever.kernels.triton import _common, _hamming, _int4, _rotated  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
INT32_MAX = 2**31 - 1
#: The kernels can run in this process: compiled for CUDA, or in the interpreter.
RUN_HERE = CUDA or _common.INTERPRETED

pytestmark = pytest.mark.skipif(not RUN_HERE, reason="no CUDA: test_triton_cpu.py runs these in the interpreter")
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (compiled kernels, libdevice.popc)")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def valid_mask(n: int, kind: str | None, seed: int) -> torch.Tensor | None:
    """None, about half the rows, or only a few (fewer than the test's ``keep``)."""
    if kind is None:
        return None
    if kind == "half":
        return torch.rand(n, generator=gen(seed)) < 0.5
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen(seed))[:3]] = True
    return mask


def to(device, *ts):
    return [None if t is None else t.to(device) for t in ts]


# ---------------------------------------------------------------------------------- Hamming
def hamming_reference(qcodes, codes, valid, keep):
    """The smallest (distance, row) pairs, sorted; invalid rows last with INT32_MAX."""
    d = binary._hamming_eager(qcodes, codes).long()
    if valid is not None:
        d[:, ~valid] = INT32_MAX
    dist, rows = torch.sort(d, dim=1, stable=True)
    return dist[:, :keep].int(), rows[:, :keep]


def hamming_case(n, dim, nq, seed, dup=0):
    x = torch.randn(n, dim, generator=gen(seed))
    if dup:  # a block of identical rows: heavy ties at one distance
        x[n // 3 : n // 3 + dup] = x[n // 3].clone()
    q = torch.randn(nq, dim, generator=gen(seed + 1))
    q[0] = x[n // 3]  # distance 0 to every duplicate
    return binary.encode(q), binary.encode(x)


@pytest.mark.parametrize(
    "dim, n, nq, keep, kind, exact",
    [
        (97, 301, 1, 10, None, False),  # odd dim (padding bits), ragged last tile
        (384, 517, 3, 40, "half", False),
        (384, 517, 3, 40, "half", True),
        (64, 200, 16, 7, None, True),  # one word per row
        (130, 201, 33, 25, "half", False),  # three query blocks, the last padded
        (200, 150, 2, 20, "few", False),  # fewer valid rows than keep: padding
        (200, 150, 2, 20, "few", True),
    ],
)
def test_hamming_matches_eager(dim, n, nq, keep, kind, exact):
    qcodes, codes = hamming_case(n, dim, nq, seed=dim + nq)
    valid = valid_mask(n, kind, seed=n)
    want = hamming_reference(qcodes, codes, valid, keep)
    qc, c, v = to(DEVICE, qcodes, codes, valid)
    got = _hamming.topk(qc, c, v, keep, block_rows=64, split=128, exact=exact)
    assert got[0].dtype == torch.int32 and got[1].dtype == torch.int64
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1].cpu(), want[1], rtol=0, atol=0)
    # the same contract as the C kernel (which returns its selection unsorted)
    c_dist, c_rows = scans.hamming_select(qcodes, codes, valid, keep)
    c_dist, order = torch.sort(c_dist, dim=1, stable=True)
    assert torch.equal(c_dist, want[0]) and torch.equal(c_rows.gather(1, order), want[1])


def test_hamming_heavy_ties_fall_back_to_exact(monkeypatch):
    """300 identical rows at distance 0, keep 10: a coarse threshold bin holding more than
    ``keep + COARSE_EXTRA`` rows reruns exactly; ties go to the lowest rows either way."""
    qcodes, codes = hamming_case(700, 96, 2, seed=5, dup=300)
    modes = []
    plan = _hamming._plan
    monkeypatch.setattr(_hamming, "_plan", lambda hist, keep, exact: modes.append(exact) or plan(hist, keep, exact))
    monkeypatch.setattr(_hamming, "COARSE_EXTRA", 16)
    want = hamming_reference(qcodes, codes, None, 10)
    qc, c = to(DEVICE, qcodes, codes)
    got = _hamming.topk(qc, c, None, 10, block_rows=64, split=128)
    assert modes == [False, True]
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    assert torch.equal(want[1][0], torch.arange(700 // 3, 700 // 3 + 10))  # the lowest duplicates


def test_hamming_public_function_and_validation():
    qcodes, codes = hamming_case(90, 64, 2, seed=9)
    valid = valid_mask(90, "half", seed=1)
    qc, c, v = to(DEVICE, qcodes, codes, valid)
    dist, rows = tk.hamming_topk(qc, c, v, 5)
    want = hamming_reference(qcodes, codes, valid, 5)
    assert torch.equal(dist.cpu(), want[0]) and torch.equal(rows.cpu(), want[1])
    assert torch.equal(tk.hamming_topk(qc, c, v, np.int64(5))[1], rows)  # any integer type
    assert tk.hamming_topk(qc[:0], c, None, 5)[0].shape == (0, 5)
    with pytest.raises(ValueError, match="0 < keep <= rows"):
        tk.hamming_topk(qc, c, None, 91)
    with pytest.raises(ValueError, match="0 < keep <= rows"):
        tk.hamming_topk(qc, c, None, 0)
    with pytest.raises(TypeError, match="keep must be an int"):
        tk.hamming_topk(qc, c, None, 2.0)
    with pytest.raises(ValueError, match="multiple of 8"):
        tk.hamming_topk(qc[:, :4], c[:, :4], None, 5)
    with pytest.raises(ValueError, match="8 bytes per row"):
        tk.hamming_topk(qc, c[:, :4], None, 5)
    with pytest.raises(TypeError, match="uint8"):
        tk.hamming_topk(qc, c.view(torch.int64), None, 5)
    with pytest.raises(TypeError, match=r"valid must be None or a bool tensor of shape \(90,\)"):
        tk.hamming_topk(qc, c, v[:10], 5)
    with pytest.raises(ValueError, match="one device"):
        tk.hamming_topk(qc.to("meta"), c, None, 5)


# ---------------------------------------------------------------------------------- INT4
def int4_reference(q, codes, valid, dim, block):
    """Eager scores ``[nq, n]`` (float64 for the comparison; masked rows at -inf) and the
    sum of the magnitudes of each score's products ``[nq, n]``, which rounding errors scale
    with."""
    p = -(-dim // block) * block
    qp = torch.nn.functional.pad(q.float(), (0, p - dim))
    s = int4._score_eager(qp, codes, dim, block).double()
    if valid is not None:
        s[:, ~valid] = float("-inf")
    nibbles, scales, offsets, norms = int4._fields(codes, dim, block)
    n = codes.shape[0]
    terms = (int4._unpack(nibbles).view(n, -1, block) * scales.float().abs().unsqueeze(2)).view(n, p)
    terms = terms + offsets.float().abs().repeat_interleave(block, dim=1)
    return s, (qp.abs().double() @ terms.double().T) * norms.double().abs()


def assert_same_top(scores, rows, reference, keep, valid):
    """``rows``/``scores`` are the reference top ``keep``, sorted: each score within float32
    rounding of the eager one and as good as the reference's at its rank. Rounding, relative
    to the sum of the products' magnitudes: 2**-17 on the tensor-core path (from 16 queries),
    the product of the low halves it leaves out (scale: 2**-6, query: 2**-11); 2**-20 on the
    multiply-add path (float32 sums)."""
    ref, magnitude = reference
    scores, rows = scores.cpu().double(), rows.cpu()
    nq, n = ref.shape
    rel = 2.0**-17 if nq >= _int4.DOT_MIN_QUERIES else 2.0**-20
    tol = rel * magnitude.gather(1, rows)
    assert rows.shape == scores.shape == (nq, keep)
    assert all(len(set(r.tolist())) == keep for r in rows), "a row came twice"
    n_valid = n if valid is None else int(valid.sum())
    got = ref.gather(1, rows)
    real = min(keep, n_valid)
    assert torch.isfinite(got[:, :real]).all(), "a masked row came before a valid one"
    assert ((scores[:, :real] - got[:, :real]).abs() <= tol[:, :real]).all()
    want, _ = torch.sort(ref, dim=1, descending=True, stable=True)
    slack = 2 * rel * magnitude.amax(dim=1, keepdim=True)
    assert ((got[:, :real] - want[:, :real]).abs() <= slack).all(), "not the reference's top-k"
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "not sorted best first"
    if real < keep:  # padding: the first masked rows, in row order, at the lowest score
        pad = torch.nonzero(~valid)[: keep - real, 0]
        assert torch.equal(rows[:, real:], pad.expand(nq, -1))
        assert (scores[:, real:] == torch.finfo(torch.float32).min).all()


def int4_case(n, dim, block, nq, seed, scale=1.0):
    x = torch.randn(n, dim, generator=gen(seed)) * torch.rand(n, 1, generator=gen(seed + 2)) * 3
    q = torch.nn.functional.normalize(torch.randn(nq, dim, generator=gen(seed + 1)), dim=1) * scale
    return q, int4.encode(x, block)


@pytest.mark.parametrize(
    "dim, block, n, nq, keep, kind",
    [
        (97, 8, 150, 1, 5, None),  # odd dim, the smallest block, one query
        (97, 24, 171, 3, 9, "half"),  # a block size that is no power of two
        (384, 64, 200, 3, 12, None),  # the default layout (220-byte rows)
        (384, 64, 203, 16, 12, "half"),  # tensor cores from 16 queries
        (64, 32, 130, 33, 6, None),  # three query blocks, the last padded
        (40, 16, 90, 2, 20, "few"),  # fewer valid rows than keep: padding
        (40, 16, 90, 17, 20, "few"),
    ],
)
def test_int4_matches_eager(dim, block, n, nq, keep, kind):
    q, codes = int4_case(n, dim, block, nq, seed=dim + nq)
    valid = valid_mask(n, kind, seed=n)
    qd, c, v = to(DEVICE, q, codes, valid)
    scores, rows = _int4.topk(qd, c, v, keep, -(-dim // block) * block, block, block_rows=32, split=64)
    assert scores.dtype == torch.float32 and rows.dtype == torch.int64
    assert_same_top(scores, rows, int4_reference(q, codes, valid, dim, block), keep, valid)


@pytest.mark.parametrize("nq", [3, 16])
def test_int4_ties_go_to_the_lower_row(nq):
    """Identical rows score identically on every path; the lower rows come first."""
    x = torch.nn.functional.normalize(torch.randn(120, 48, generator=gen(3)), dim=1)
    x[[0, 90, 10, 50, 111, 70]] = x[0] * 10  # every query's best, by far
    q = torch.nn.functional.normalize(x[:1] + 0.1 * torch.randn(nq, 48, generator=gen(4)), dim=1)
    codes = int4.encode(x, 16)
    qd, c = to(DEVICE, q, codes)
    scores, rows = _int4.topk(qd, c, None, 4, 48, 16, block_rows=32, split=64)
    assert torch.equal(rows.cpu(), torch.tensor([[0, 10, 50, 70]] * nq))
    assert (scores == scores[:, :1]).all()


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_int4_query_norms_far_from_one(scale):
    """The tensor-core path scales each query by a power of two before its FP16 halves, so
    tiny and huge queries keep float32 accuracy."""
    q, codes = int4_case(64, 40, 8, 16, seed=11, scale=scale)
    qd, c = to(DEVICE, q, codes)
    scores, rows = _int4.topk(qd, c, None, 5, 40, 8, block_rows=32, split=64)
    assert_same_top(scores, rows, int4_reference(q, codes, None, 40, 8), 5, None)


def test_int4_every_key_path_and_chunked_launches(monkeypatch):
    """``keep`` above the per-program list size writes every key; a small key budget splits
    the rows into several launches whose lists are merged."""
    q, codes = int4_case(150, 33, 8, 3, seed=4)
    valid = valid_mask(150, "half", seed=2)
    ref = int4_reference(q, codes, valid, 33, 8)
    qd, c, v = to(DEVICE, q, codes, valid)
    want = _int4.topk(qd, c, v, 7, 40, 8, block_rows=32, split=64)
    assert_same_top(*want, ref, 7, valid)
    monkeypatch.setattr(_int4, "KEY_BUDGET", 3 * 32)
    got = _int4.topk(qd, c, v, 7, 40, 8, block_rows=32, split=64, max_kp=4)  # 8 > 4: every key
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    got = _int4.topk(qd, c, v, 7, 40, 8, block_rows=32, split=32)  # two launches of four splits
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_int4_public_function_unaligned_and_strided_inputs():
    """A slice of rows that starts 4 bytes past an 8-byte boundary and a strided query give
    the results of their contiguous copies."""
    q, codes = int4_case(81, 50, 8, 2, seed=6)  # rows of 28 + 28 + 4 = 60 bytes
    rb = codes.shape[1]
    assert rb % 8 == 4
    qd, c = to(DEVICE, q, codes)
    q_strided = torch.stack([qd, qd], dim=2)[:, :, 0]
    assert not q_strided.is_contiguous() and torch.equal(q_strided, qd)
    got = tk.int4_topk(q_strided, c[1:], None, 6, 50, 8)
    want = tk.int4_topk(qd, c[1:].clone(), None, 6, 50, 8)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert_same_top(*got, int4_reference(q, codes[1:], None, 50, 8), 6, None)
    with pytest.raises(ValueError, match="block_size must be a positive multiple of 8"):
        tk.int4_topk(qd, c, None, 6, 50, 12)
    with pytest.raises(TypeError, match=r"shape \(nq, 50\)"):
        tk.int4_topk(qd[:, :49], c, None, 6, 50, 8)
    with pytest.raises(ValueError, match=f"{rb} bytes per row"):
        tk.int4_topk(qd, c[:, :-4], None, 6, 50, 8)
    with pytest.raises(ValueError, match="0 < keep <= rows"):
        tk.int4_topk(qd, c, None, 82, 50, 8)


# ---------------------------------------------------------------------------------- rotated
@pytest.mark.parametrize(
    "name, dim, n, nq, keep, kind",
    [
        ("rq4", 97, 150, 1, 5, None),
        ("rq4", 384, 130, 3, 12, "half"),
        ("rq2", 97, 171, 9, 9, "half"),  # two query blocks, the last padded
        ("rq2", 40, 90, 2, 20, "few"),  # fewer valid rows than keep: padding
        ("rq1", 384, 140, 3, 7, None),
        ("rq1", 70, 100, 1, 6, "half"),
    ],
)
def test_rotated_matches_eager(name, dim, n, nq, keep, kind):
    codec = make_codec(name, dim)
    x = torch.randn(n, dim, generator=gen(dim)) * torch.rand(n, 1, generator=gen(dim + 1)) * 3
    q = torch.nn.functional.normalize(torch.randn(nq, dim, generator=gen(dim + 2)), dim=1)
    codes = codec.encode(x)
    valid = valid_mask(n, kind, seed=n)
    ref = codec._score_eager(q, codes).double()
    if valid is not None:
        ref[:, ~valid] = float("-inf")
    magnitude = (codec.rotate(q).abs() @ codec.levels_of(codes[:, : codec.code_bytes]).abs().T).double()
    magnitude = magnitude * (codec._fields(codes)[1] / codec._fields(codes)[2]).abs().double()
    qd, c, v = to(DEVICE, codec.rotate(q), codes, valid)
    scores, rows = _rotated.topk(qd, c, v, keep, codec.bits, codec._levels(DEVICE), block_rows=32, split=64)
    assert_same_top(scores, rows, (ref, magnitude), keep, valid)


def test_rotated_public_function_checks_its_input():
    codec = make_codec("rq2", 40)
    codes = codec.encode(torch.randn(50, 40, generator=gen(1)))
    qr = codec.rotate(torch.randn(2, 40, generator=gen(2)))
    qd, c = to(DEVICE, qr, codes)
    scores, rows = tk.rq_topk(qd, c, None, 5, 2, codec._levels(DEVICE))
    want = torch.topk(codec._score_eager(torch.randn(2, 40, generator=gen(2)), codes), 5, dim=1)
    torch.testing.assert_close(scores.cpu(), want.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(rows.cpu(), want.indices)
    with pytest.raises(ValueError, match="bits must be 1, 2 or 4"):
        tk.rq_topk(qd, c, None, 5, 3, codec._levels(DEVICE))
    with pytest.raises(ValueError, match="bytes per row"):
        tk.rq_topk(qd, c[:, :-4], None, 5, 2, codec._levels(DEVICE))
    with pytest.raises(TypeError, match="whole 16-element words"):
        tk.rq_topk(qd[:, :7], c, None, 5, 2, codec._levels(DEVICE))


# ---------------------------------------------------------------------------------- dispatch
def test_available_only_for_cuda_devices(monkeypatch):
    assert not tk.available("cpu")  # the C kernels serve the CPU, even under the interpreter
    assert tk.available("cuda") == (CUDA and torch.cuda.get_device_capability() >= tk.MIN_CAPABILITY)
    for off in ["0", "false", "OFF", " no "]:
        monkeypatch.setenv("QUANT_RETRIEVER_TRITON", off)
        assert not tk.enabled() and not tk.available("cuda")
    monkeypatch.setenv("QUANT_RETRIEVER_TRITON", "1")
    assert tk.enabled()


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(_common, "INTERPRETED", False)
    qcodes, codes = hamming_case(20, 64, 1, seed=0)
    with pytest.raises(ValueError, match="CUDA tensors"):
        tk.hamming_topk(qcodes, codes, None, 3)


# ---------------------------------------------------------------------------------- CUDA only
@cuda_only
@pytest.mark.parametrize("nq", [1, 32])
def test_cuda_full_size_launches_match_eager(nq):
    """Default tiles and splits (many programs per query), libdevice popcount, tensor cores."""
    n, dim = 300_000, 384
    x = torch.randn(n, dim, generator=gen(0))
    q = torch.nn.functional.normalize(torch.randn(nq, dim, generator=gen(1)), dim=1)
    valid = torch.rand(n, generator=gen(2)) < 0.9
    qcodes, codes = binary.encode(q), binary.encode(x)
    dist, rows = tk.hamming_topk(qcodes.cuda(), codes.cuda(), valid.cuda(), 200)
    want = hamming_reference(qcodes, codes, valid, 200)
    assert torch.equal(dist.cpu(), want[0]) and torch.equal(rows.cpu(), want[1])
    codes4 = int4.encode(x)
    scores, rows = tk.int4_topk(q.cuda(), codes4.cuda(), valid.cuda(), 40, dim, 64)
    assert_same_top(scores, rows, int4_reference(q, codes4, valid, dim, 64), 40, valid)


@cuda_only
def test_cuda_available_and_switch(monkeypatch):
    assert tk.available(torch.device("cuda")) == (torch.cuda.get_device_capability() >= tk.MIN_CAPABILITY)
    monkeypatch.setenv("QUANT_RETRIEVER_TRITON", "off")
    assert not tk.available("cuda")


# ---------------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize("codec", ["int4", "binary", "rq4", "rq1"])
def test_the_index_dispatches_to_the_kernels_and_gets_the_c_results(codec, monkeypatch):
    """Through ``QuantizedIndex`` and the codec objects, as on a GPU (here: the interpreter on
    CPU tensors), with deletions and a selection: the same ids as the C kernels."""
    from quant_retriever import QuantizedIndex

    x = torch.nn.functional.normalize(torch.randn(300, 40, generator=gen(1)), dim=1)
    q = torch.nn.functional.normalize(torch.randn(3, 40, generator=gen(2)), dim=1)
    index = QuantizedIndex(40, codec=codec, block_size=8, device=DEVICE)
    index.add(x)
    index.remove(np.arange(0, 300, 7))
    allowed = np.arange(0, 300, 2)
    if codec == "rq1":  # on the CPU a Hamming pass first; on CUDA the estimator over every row, as here
        from quant_retriever.codecs import Codec

        monkeypatch.setattr(type(index.codec), "candidates", Codec.candidates)
    expected = [index.search(q, k=5), index.search(q, k=5, allowed_ids=allowed)]
    calls = []
    for name in ("hamming_topk", "int4_topk", "rq_topk"):
        real = getattr(tk, name)
        monkeypatch.setattr(tk, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    monkeypatch.setattr(tk, "available", lambda device: True)
    got = [index.search(q, k=5), index.search(q, k=5, allowed_ids=allowed)]
    assert calls, "the codec did not call the Triton kernel"
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e.ids, g.ids)
        np.testing.assert_allclose(e.scores, g.scores, rtol=1e-5, atol=1e-5)
