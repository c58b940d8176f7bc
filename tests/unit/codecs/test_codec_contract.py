"""The contract every registered codec must pass. A new format is one module plus one line in
``quant_retriever.codecs.CODECS``; this file then tests it with no further changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant_retriever.codecs import CODECS, Codec, make_codec

NAMES = list(CODECS)
#: Minimum cosine of a decoded vector to its original, per format (binary decodes to +-1).
FIDELITY = {
    "int4": 0.98,
    "binary": 0.5,
    "int8": 0.9995,
    "fp16": 0.99999,
    "fp32": 0.999999,
    "rq1": 0.6,
    "rq2": 0.9,
    "rq4": 0.99,
}


def unit(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def codec_for(name: str, dim: int) -> Codec:
    return make_codec(name, dim, block_size=8 if dim < 64 else 64)


def test_every_format_is_registered_under_its_own_name():
    assert NAMES == ["int4", "binary", "int8", "fp16", "fp32", "rq1", "rq2", "rq4"]
    for name, cls in CODECS.items():
        assert issubclass(cls, Codec) and cls.name == name
        assert name in FIDELITY, f"add {name!r} to FIDELITY so the contract covers it"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dim", [7, 97, 384])
def test_rows_are_uint8_and_4_byte_aligned(name, dim):
    codec = codec_for(name, dim)
    rows = codec.encode(unit(11, dim))
    assert rows.dtype == torch.uint8 and rows.shape == (11, codec.row_bytes)
    assert codec.row_bytes % 4 == 0
    assert make_codec(name, dim, **codec.params()) == codec  # params() round-trip
    assert name in repr(codec) or type(codec).__name__ in repr(codec)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dim", [7, 97, 384])
def test_a_code_never_depends_on_the_other_vectors_of_its_batch(name, dim):
    codec = codec_for(name, dim)
    x = unit(64, dim) * torch.logspace(-3, 3, 64).unsqueeze(1)  # mixed norms in one batch
    together = codec.encode(x)
    for i in (0, 17, 63):
        assert torch.equal(codec.encode(x[i : i + 1]), together[i : i + 1])
    assert torch.equal(codec.encode(x.flip(0)), together.flip(0))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dim", [7, 97, 384])
@pytest.mark.parametrize("nq", [1, 5, 9, 33])  # kernels: per-query dots below 8, blocks of 16 above
def test_decode_and_score_agree(name, dim, nq, kernel_path):
    codec = codec_for(name, dim)
    x, q = unit(300, dim, 1) * 3.0, unit(max(nq, 2), dim, 2)
    rows = codec.encode(x)
    dec = codec.decode(rows)
    assert dec.shape == (300, dim) and dec.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(dec, x)
    assert float(cos.min()) >= FIDELITY[name]
    s = codec.score(q, rows)
    assert s.shape == (len(q), 300)
    if name == "binary":  # minus the Hamming distance of the sign bits
        ref = ((x[None] > 0) != (q[:, None] > 0)).sum(2)
        assert torch.equal(s, -ref.to(s.dtype))
    else:
        torch.testing.assert_close(s, q @ dec.T, atol=2e-4 * 3, rtol=1e-4)
    # second stage / rescoring: each query against its own candidate rows
    cand = rows[torch.arange(20).view(2, 10) * 7]
    r = codec.rescore(q[:2], cand)
    expected = torch.einsum("qd,qcd->qc", q[:2], dec[torch.arange(20).view(2, 10) * 7])
    torch.testing.assert_close(r, expected, atol=1e-4 * 3, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("masked", [False, True])
def test_top_is_the_best_valid_rows(name, masked, kernel_path):
    codec = codec_for(name, 97)
    x, q = unit(400, 97, 3), unit(3, 97, 4)
    rows = codec.encode(x)
    valid = (torch.arange(400) % 3 != 0) if masked else None
    s, pos = codec.top(q, rows, valid, 25)
    assert s.shape == pos.shape == (3, 25)
    full = codec.score(q, rows)
    if masked:
        assert valid[pos.flatten()].all()
        full = full.masked_fill(~valid, torch.finfo(torch.float32).min if full.is_floating_point() else -(2**31))
    best = torch.sort(full, dim=1, descending=True).values[:, :25]
    torch.testing.assert_close(s.to(best.dtype), best)
    torch.testing.assert_close(torch.gather(full, 1, pos), best)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", [0.0, 1e-38, 1e-30, 1e-9, 1.0, 7e4, 1e20, 1e36])
def test_any_finite_norm_encodes_and_scores_finitely(name, norm):
    codec = codec_for(name, 97)
    x = unit(50, 97, 5) * norm
    rows = codec.encode(x)
    dec, s = codec.decode(rows), codec.score(unit(2, 97, 6), rows)
    assert torch.isfinite(dec).all() and torch.isfinite(s.float()).all()
    if name != "binary" and norm > 0:
        u, norms = codec.decode_unit(rows)
        torch.testing.assert_close(norms, x.double().norm(dim=1).float(), rtol=1e-6, atol=0)
        assert float(torch.nn.functional.cosine_similarity(u, x.double().float() / norm).min()) >= FIDELITY[name]
    if norm == 0:
        assert not dec.abs().any() or name == "binary"


@pytest.mark.parametrize("name", NAMES)
def test_noncontiguous_and_memmapped_input_encode_the_same(name, tmp_path):
    dim = 97
    x = unit(40, dim * 2)[:, ::2]
    assert not x.is_contiguous()
    mm = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=(40, dim))
    mm[:] = x.numpy()
    codec = codec_for(name, dim)
    a, b, c = codec.encode(x), codec.encode(torch.from_numpy(np.asarray(mm))), codec.encode(x.contiguous())
    assert torch.equal(a, b) and torch.equal(a, c)
    strided = torch.cat([a, a]).view(2, 40, -1)[:, ::2].reshape(-1, a.shape[1])  # rows of a gathered view
    torch.testing.assert_close(codec.score(unit(2, dim), strided), codec.score(unit(2, dim), strided.contiguous()))


@pytest.mark.parametrize("name", NAMES)
def test_formats_without_options_ignore_them_and_int4_validates_its_own(name):
    if name == "int4":
        for bad in (0, 7, -8, 1 << 40):
            with pytest.raises(ValueError, match="block_size"):
                make_codec(name, 16, block_size=bad)
        with pytest.raises(TypeError, match="block_size"):
            make_codec(name, 16, block_size=8.0)
    else:
        assert make_codec(name, 16, block_size=7).params() == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_codecs_on_cuda_match_cpu(name):
    codec = codec_for(name, 97)
    x, q = unit(100, 97), unit(2, 97, 5)
    codes = codec.encode(x.cuda())
    assert codes.device.type == "cuda"
    assert torch.equal(codes.cpu(), codec.encode(x))
    torch.testing.assert_close(
        codec.score(q.cuda(), codes).cpu(), codec.score(q, codec.encode(x)), atol=1e-3, rtol=1e-3
    )
