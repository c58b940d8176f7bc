"""QuantizedIndex: add / search / remove / persistence / bad input, on real files."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

import quant_retriever.index.directory as index_mod
from quant_retriever import QuantizedIndex, SearchResult
from quant_retriever.codecs import CODEC_NAMES
from quant_retriever.devices import resolve_device
from quant_retriever.kernels import scans


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(params=CODEC_NAMES)
def codec(request):
    return request.param


def test_add_assigns_ids_and_search_finds_each_vector_itself(codec):
    x = unit(500, 97)
    index = QuantizedIndex(97, codec=codec, block_size=16)
    ids = index.add(x[:300])
    np.testing.assert_array_equal(ids, np.arange(300))
    np.testing.assert_array_equal(index.add(x[300:]), np.arange(300, 500))
    assert len(index) == 500
    res = index.search(x[:50], k=5)
    assert isinstance(res, SearchResult)
    assert res.ids.shape == (50, 5) and res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    np.testing.assert_array_equal(res.ids[:, 0], np.arange(50))
    assert np.all(np.diff(res.scores, axis=1) <= 1e-6)  # best first
    exact = (x[:50] @ x.T)[np.arange(50)[:, None], res.ids]
    np.testing.assert_allclose(res.scores, exact, atol=0.05 if codec != "binary" or index.rescore else 10)


def test_custom_ids_and_single_query_vector(codec):
    x = unit(20, 8)
    index = QuantizedIndex(8, codec=codec)
    index.add(x, ids=np.arange(100, 120))
    res = index.search(x[3], k=1)  # a 1-d query is one query
    assert res.ids.tolist() == [[103]]
    assert index.add(unit(1, 8, 9)).tolist() == [120]  # auto ids continue after the largest


@pytest.mark.parametrize("rescore_dtype", ["int8", "fp16"])
def test_one_query_path_equals_the_batch_path(codec, rescore_dtype, kernel_path):
    """One query takes its own path (rescored in place by one native call on the CPU); its
    ids and scores are those of the same query in a batch: with deletions, a selection, odd
    norms, k larger than what is left, and a rescore copy of either precision."""
    x = unit(900, 97, 3) * np.random.default_rng(4).uniform(0.1, 40, (900, 1)).astype(np.float32)
    x[500:520] = x[5]  # equal scores
    index = QuantizedIndex(97, codec=codec, block_size=16, rescore_dtype=rescore_dtype)
    index.add(x)
    index.remove(np.arange(0, 900, 7))
    q = np.concatenate([unit(12, 97, 5) * 3, x[5:6] * 1e30, x[600:601]])
    allowed = np.arange(3, 900, 3)
    for kwargs in ({"k": 10}, {"k": 10, "allowed_ids": allowed}, {"k": 10, "allowed_ids": allowed[:5]}, {"k": 5000}):
        batch = index.search(q, **kwargs)
        for i in range(len(q)):
            one = index.search(q[i], **kwargs)
            tol = 1e-5 * np.abs(batch.scores[i]).max()
            np.testing.assert_allclose(one.scores[0], batch.scores[i], rtol=1e-5, atol=tol)
            # the same ids in the same order, up to near-ties (a batch sums in another order)
            of_batch = dict(zip(batch.ids[i].tolist(), batch.scores[i].tolist()))
            for j in np.flatnonzero(one.ids[0] != batch.ids[i]):
                near = of_batch.get(int(one.ids[0, j]), batch.scores[i, -1])
                assert abs(near - one.scores[0, j]) <= 2 * tol, (kwargs, i, j)
            assert (one.ids[0] == batch.ids[i]).mean() > 0.95
            assert not np.isin(one.ids, np.arange(0, 900, 7)).any()


def test_k_is_capped_and_filters_apply_before_top_k(codec):
    x = unit(200, 16)
    index = QuantizedIndex(16, codec=codec, block_size=8)
    index.add(x)
    assert index.search(x[:2], k=500).ids.shape == (2, 200)
    allowed = np.arange(150, 200)
    res = index.search(x[:3], k=10, allowed_ids=allowed)
    assert res.ids.shape == (3, 10)
    assert np.isin(res.ids, allowed).all()
    one = index.search(x[:2], k=10, allowed_ids=[7, 9999])
    assert one.ids.tolist() == [[7], [7]]
    assert index.search(x[:2], k=10, allowed_ids=[]).ids.shape == (2, 0)


def test_remove_hides_ids_and_allows_re_adding(codec):
    x = unit(100, 24)
    index = QuantizedIndex(24, codec=codec, block_size=8)
    index.add(x)
    index.remove([0, 5])
    assert len(index) == 98
    res = index.search(x[:10], k=100)
    assert not np.isin(res.ids, [0, 5]).any() and res.ids.shape == (10, 98)
    index.add(x[5:6], ids=[5])
    assert index.search(x[5], k=1).ids.tolist() == [[5]]
    np.testing.assert_array_equal(np.sort(index.ids()), np.delete(np.arange(100), 0))


def test_chunked_scan_matches_a_single_chunk(codec, monkeypatch):
    x, q = unit(1000, 40, 1), unit(7, 40, 2)
    big = QuantizedIndex(40, codec=codec, block_size=8)
    small = QuantizedIndex(40, codec=codec, block_size=8)
    small._pipeline.chunk = 64  # 16 chunks, merged top-k across chunks
    for start in range(0, 1000, 100):  # many small adds grow the storage
        big.add(x[start : start + 100])
        small.add(x[start : start + 100])
    small.remove([3])
    big.remove([3])
    steps = []
    real_top = type(small.codec).top
    monkeypatch.setattr(type(small.codec), "top", lambda self, *a: steps.append(len(a[1])) or real_top(self, *a))
    for nq in (1, 7):  # fused kernel for few queries, decoded kernel for batches
        a, b = big.search(q[:nq], k=10), small.search(q[:nq], k=10)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    if codec not in ("binary", "rq1") or not scans.available(torch.device("cpu")):  # (native 1-bit: a Hamming pass)
        assert steps.count(64) >= 2 * 15  # the small index did scan in steps of 64 rows


def test_rescoring_returns_int8_scores_and_beats_codes_alone():
    x, q = unit(4000, 64, 3), unit(50, 64, 4)
    exact = exact_top(q, x, 10)
    # isotropic random vectors are the hard case for binary codes; real embeddings: test_recall
    for codec, floor in (("int4", 0.9), ("binary", 0.6)):
        plain = QuantizedIndex(64, codec=codec, rescore=False, block_size=16)
        rescored = QuantizedIndex(64, codec=codec, rescore=True, block_size=16)
        plain.add(x)
        rescored.add(x)

        def recall(res):
            return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res.ids, exact)])

        r_plain, r_res = recall(plain.search(q, k=10)), recall(rescored.search(q, k=10, rescore_multiplier=10))
        assert r_res > r_plain + 0.05 and r_res >= floor, (codec, r_plain, r_res)
        res = rescored.search(q, k=10)
        np.testing.assert_allclose(res.scores, (q @ x.T)[np.arange(50)[:, None], res.ids], atol=0.01)


def test_memory_reports_device_and_disk_bytes():
    x = unit(1000, 384)
    sizes = {}
    for codec in ("int4", "binary", "int8", "fp32"):
        index = QuantizedIndex(384, codec=codec)
        index.add(x)
        sizes[codec] = index.memory()
    assert sizes["int4"].bytes_per_vector == 220 and sizes["binary"].bytes_per_vector == 48
    assert sizes["int4"].disk_bytes == 1000 * 392 and sizes["int4"].disk_bytes_per_vector == 392  # INT8 + norm, scale
    assert sizes["fp32"].bytes_per_vector == 384 * 4 + 4 and sizes["fp32"].disk_bytes == 0
    assert all(m.host_bytes >= 1000 * 8 and m.host_bytes <= 1600 * 8 for m in sizes.values())  # the id array
    assert sizes["binary"].device_bytes >= 1000 * 48


def test_save_load_round_trip_compacts_deleted_rows(codec, tmp_path):
    x, q = unit(300, 33), unit(5, 33, 1)
    index = QuantizedIndex(33, codec=codec, block_size=8)
    index.add(x, ids=np.arange(1000, 1300))
    index.remove(np.arange(1000, 1100))
    before = index.search(q, k=8)
    index.save(tmp_path / "saved")
    loaded = QuantizedIndex.open(tmp_path / "saved")
    assert (loaded.dim, loaded.codec_name, loaded.rescore, len(loaded)) == (33, codec, index.rescore, 200)
    after = loaded.search(q, k=8)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-6)
    manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())
    assert manifest["count"] == 200 and manifest["n_deleted"] == 0
    assert loaded.add(unit(1, 33, 7)).tolist() == [1300]


def test_persistent_index_keeps_every_add_and_remove(codec, tmp_path):
    x, q = unit(120, 20), unit(4, 20, 1)
    index = QuantizedIndex(20, codec=codec, path=tmp_path / "idx", block_size=8)
    index.add(x[:60])
    index.add(x[60:], ids=np.arange(500, 560))
    index.remove([3, 501])
    expected = index.search(q, k=6)
    assert QuantizedIndex.open(tmp_path / "idx") is index  # opened again in this process: shared
    index.close()
    index.close()
    reopened = QuantizedIndex.open(tmp_path / "idx")
    assert len(reopened) == 118
    got = reopened.search(q, k=6)
    np.testing.assert_array_equal(expected.ids, got.ids)
    new = unit(1, 20, 9)
    reopened.add(new, ids=[3])
    assert reopened.verify() == []
    reopened.close()
    again = QuantizedIndex.open(tmp_path / "idx")
    assert again.search(new, k=1).ids.tolist() == [[3]]
    assert len(again) == 119


def test_load_ignores_an_uncommitted_tail(tmp_path):
    index = QuantizedIndex(16, codec="int4", path=tmp_path / "idx", block_size=8)
    index.add(unit(10, 16))
    index.close()
    with open(tmp_path / "idx" / "codes.0.u8", "ab") as f:  # a torn append past the manifest's count
        f.write(b"\x01" * 7)
    with open(tmp_path / "idx" / "rescore.0.int8", "ab") as f:
        f.write(b"\x02" * 5)
    reopened = QuantizedIndex.open(tmp_path / "idx")  # opening reads, never writes
    assert len(reopened) == 10 and reopened.verify() == []
    reopened.add(unit(1, 16, 5))  # the next append overwrites the torn bytes
    assert (tmp_path / "idx" / "codes.0.u8").stat().st_size == 11 * reopened.memory().bytes_per_vector
    assert (tmp_path / "idx" / "rescore.0.int8").stat().st_size == 11 * reopened.memory().disk_bytes_per_vector
    assert reopened.verify() == []
    assert reopened.search(unit(10, 16)[4], k=1).ids.tolist() == [[4]]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"dim": 0}, ValueError),
        ({"dim": 8.0}, TypeError),
        ({"dim": 8, "codec": "pq"}, ValueError),
        ({"dim": 8, "block_size": 12}, ValueError),
        ({"dim": 8, "rescore": "yes"}, TypeError),
        ({"dim": 8, "device": "tpu:0"}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs, error):
    with pytest.raises(error):
        QuantizedIndex(**kwargs)


def test_bad_input_raises_and_leaves_the_index_unchanged(codec, tmp_path):
    x = unit(50, 12)
    index = QuantizedIndex(12, codec=codec, path=tmp_path / "idx", block_size=8)
    index.add(x, ids=np.arange(50))
    before = index.search(x[:3], k=5)
    bad_adds = [
        (unit(3, 13), None, ValueError, "shape \\(n, 12\\)"),
        (np.full((2, 12), np.nan, np.float32), None, ValueError, "NaN"),
        (np.full((2, 12), np.inf, np.float32), None, ValueError, "infinite"),
        (np.zeros((0, 12), np.float32), None, ValueError, "empty"),
        (np.ones((2, 12), np.int64), None, TypeError, "floats"),
        ("not an array", None, TypeError, "numpy array"),
        (unit(2, 12), [1], ValueError, "Got 1 ids and 2 vectors"),
        (unit(2, 12), [60, 60], ValueError, "duplicates"),
        (unit(2, 12), [7, 60], ValueError, "already in the index"),
        (unit(2, 12), [-1, 60], ValueError, "non-negative"),
        (unit(2, 12), [1.5, 60.0], TypeError, "integers"),
    ]
    for vectors, ids, error, match in bad_adds:
        with pytest.raises(error, match=match):
            index.add(vectors, ids=ids)
    for kwargs, error in [({"k": 0}, ValueError), ({"k": 2.5}, TypeError), ({"rescore_multiplier": 0}, ValueError)]:
        with pytest.raises(error):
            index.search(x[:1], **kwargs)
    with pytest.raises(ValueError, match="shape"):
        index.search(unit(1, 11))
    with pytest.raises(ValueError, match="not in the index"):
        index.remove([1, 999])
    assert len(index) == 50 and index.verify() == []
    after = index.search(x[:3], k=5)
    np.testing.assert_array_equal(before.ids, after.ids)
    index.close()
    reopened = QuantizedIndex.open(tmp_path / "idx")
    assert len(reopened) == 50
    np.testing.assert_array_equal(reopened.search(x[:3], k=5).ids, before.ids)


def test_failed_write_rolls_back(tmp_path, monkeypatch):
    x = unit(30, 16)
    index = QuantizedIndex(16, codec="int4", path=tmp_path / "idx", block_size=8)
    index.add(x[:20])
    real = index_mod.append_raw

    def failing(path, committed, data):
        if path.name == "ids.0.i64":
            raise OSError("disk full")
        return real(path, committed, data)

    monkeypatch.setattr(index_mod, "append_raw", failing)
    with pytest.raises(OSError, match="disk full"):
        index.add(x[20:])
    monkeypatch.undo()
    assert len(index) == 20 and index._snap.rescore.count == 20 and index.verify() == []
    assert index.search(x[25], k=30).ids.shape == (1, 20)
    index.add(x[20:])
    assert index.verify() == []
    index.close()
    reopened = QuantizedIndex.open(tmp_path / "idx")
    assert len(reopened) == 30
    assert reopened.search(x[25], k=1).ids.tolist() == [[25]]


def test_paths_that_are_not_indexes_are_refused(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file.txt").write_text("hello")
    with pytest.raises(ValueError, match="new or empty directory"):
        QuantizedIndex(8, path=tmp_path / "full")
    with pytest.raises(ValueError, match="not a quant_retriever directory"):
        QuantizedIndex.open(tmp_path / "full")
    index = QuantizedIndex(8, path=tmp_path / "idx")
    index.add(unit(5, 8))
    with pytest.raises(ValueError, match="new or empty"):
        index.save(tmp_path / "full")
    index.close()
    manifest = tmp_path / "idx" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(ValueError, match="newer quant_retriever"):
        QuantizedIndex.open(tmp_path / "idx")
    manifest.write_text(json.dumps({**data, "count": 6}))
    with pytest.raises(ValueError, match="codes.0.u8: expected"):
        QuantizedIndex.open(tmp_path / "idx")


def test_a_pickle_payload_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('pwned')",))

    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "manifest.json").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="manifest.json"):
        QuantizedIndex.open(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()


def test_default_device_is_cuda_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert QuantizedIndex(8).device.type == expected
    assert resolve_device(None).type == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_matches_cpu_index(codec):
    x, q = unit(3000, 97), unit(8, 97, 1)
    cpu, gpu = QuantizedIndex(97, codec=codec, device="cpu"), QuantizedIndex(97, codec=codec, device="cuda")
    cpu.add(x)
    gpu.add(x)
    assert gpu._codes.device.type == "cuda"
    a, b = cpu.search(q, k=10), gpu.search(q, k=10)
    assert np.mean(a.ids == b.ids) > 0.95
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)


# ---------------------------------------------------------------------------- index core v2


@pytest.mark.parametrize(
    "codec, rescore",
    [
        ("int4", True),
        ("binary", True),
        ("int8", False),
        ("fp16", False),
        ("fp32", False),
        ("rq1", True),
        ("rq4", False),
    ],
)
@pytest.mark.parametrize("norm", [1e-38, 1e-20, 1e-9, 1.0, 7e4, 1e15, 1e30])
def test_any_finite_norm_finds_itself(codec, rescore, norm):
    """The FP16 norm of index v1 overflowed above 65504 and vanished near 1e-9."""
    x = unit(300, 48) * np.float32(norm)
    index = QuantizedIndex(48, codec=codec, rescore=rescore, block_size=16)
    index.add(x)
    res = index.search(x[:40], k=3)
    assert (res.ids[:, 0] == np.arange(40)).mean() >= 0.95
    assert np.isfinite(res.scores).all()
    expected = float(norm) ** 2  # the score of a vector with itself
    if expected > 3.4e38:  # inner products past float32's range are clamped to its largest value
        assert (res.scores[:, 0] == np.finfo(np.float32).max).all()
    elif expected > 1e-36:  # (and ones below its normal range round towards 0, as float32 does)
        np.testing.assert_allclose(res.scores[:, 0], expected, rtol=0.05)


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_zero_vectors_and_queries_work(codec):
    x = unit(20, 16)
    x[[3, 7]] = 0.0
    index = QuantizedIndex(16, codec=codec, block_size=8)
    index.add(x)
    res = index.search(np.zeros(16, np.float32), k=20)
    assert res.ids.shape == (1, 20) and (res.scores == 0).all()
    res = index.search(x[0], k=20)
    assert res.ids[0, 0] == 0 and np.isfinite(res.scores).all()
    zero_rows = np.isin(res.ids[0], [3, 7])
    assert (res.scores[0][zero_rows] == 0).all()


def test_mixed_norms_rank_by_inner_product():
    x = unit(200, 32)
    scales = np.logspace(-6, 6, 200).astype(np.float32)
    index = QuantizedIndex(32, codec="fp32")
    index.add(x * scales[:, None])
    q = unit(5, 32, 1) * np.float32(1e-7)
    expected = exact_top(q, x * scales[:, None], 10)
    np.testing.assert_array_equal(index.search(q, k=10).ids, expected)


def test_rescore_dtype_fp16_and_bad_choices(tmp_path):
    x = unit(400, 40)
    index = QuantizedIndex(40, codec="int4", block_size=8, rescore_dtype="fp16", path=tmp_path / "idx")
    index.add(x)
    assert index.memory().disk_bytes_per_vector == 40 * 2 + 4 and index.memory().disk_bytes == 400 * 84
    assert (tmp_path / "idx" / "rescore.0.fp16").stat().st_size == 400 * 84
    res = index.search(x[:30], k=5)
    np.testing.assert_array_equal(res.ids, exact_top(x[:30], x, 5))
    np.testing.assert_allclose(res.scores, np.sort(-(x[:30] @ x.T), axis=1)[:, :5] * -1, atol=2e-3)
    index.close()
    reopened = QuantizedIndex.open(tmp_path / "idx")
    assert reopened.rescore_dtype == "fp16"
    np.testing.assert_array_equal(reopened.search(x[:30], k=5).ids, res.ids)
    for bad in ("int4", "float16", None, 8):
        with pytest.raises(ValueError, match="rescore_dtype must be one of 'int8', 'fp16'"):
            QuantizedIndex(8, rescore_dtype=bad)


def test_a_version_1_index_is_refused_with_a_clear_error(tmp_path):
    index = QuantizedIndex(8, codec="int4", block_size=8, path=tmp_path / "idx")
    index.add(unit(5, 8))
    index.close()
    manifest = tmp_path / "idx" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "version": 1, "int8": {"lo": [0.0] * 8, "scale": [1.0] * 8}}))
    with pytest.raises(ValueError, match="format version 1 is no longer read.*re-create"):
        QuantizedIndex.open(tmp_path / "idx")


@pytest.mark.parametrize(
    "field, value",
    [
        ("rescore", "false"),
        ("dim", 16.7),
        ("count", 50.9),
        ("count", True),
        ("dim", None),
        ("dim", [8]),
        ("codec", "pq"),
        ("codec_params", {"block_size": 2**40}),
        ("codec_params", {"block_size": 8.0}),
        ("codec_params", {"block_size": 8, "extra": 1}),
        ("codec_params", []),
        ("generation", -1),
        ("next_id", 2**64),
        ("n_deleted", 99),
        ("rescore_dtype", "int4"),
    ],
)
def test_manifest_values_of_the_wrong_kind_name_the_file_and_field(tmp_path, field, value):
    index = QuantizedIndex(8, codec="int4", block_size=8, path=tmp_path / "idx")
    index.add(unit(5, 8))
    index.close()
    manifest = tmp_path / "idx" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, field: value}))
    with pytest.raises(ValueError, match=f"manifest.json: .*{field if field != 'n_deleted' else 'n_deleted'}"):
        QuantizedIndex.open(tmp_path / "idx")


@pytest.mark.parametrize("text", ['{"format": Infinity}', '{"dim": NaN}', "[" * 100000 + "]" * 100000, "\xff\xfe"])
def test_manifest_that_is_not_plain_json_is_refused(tmp_path, text):
    index = QuantizedIndex(8, path=tmp_path / "idx")
    index.close()
    (tmp_path / "idx" / "manifest.json").write_bytes(
        text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe"
    )
    with pytest.raises(ValueError, match="manifest.json"):
        QuantizedIndex.open(tmp_path / "idx")


def test_an_interrupted_creation_can_be_created_again(tmp_path):
    """SIGKILL while creating leaves data files but no manifest: that is not an index yet."""
    d = tmp_path / "idx"
    d.mkdir()
    for name in (".lock", "codes.0.u8", "ids.0.i64", "manifest.json.abc.tmp"):
        (d / name).write_bytes(b"")
    with pytest.raises(ValueError, match="not a quant_retriever directory"):
        QuantizedIndex.open(d)
    index = QuantizedIndex(8, codec="int8", path=d)
    index.add(unit(3, 8))
    assert sorted(p.name for p in d.iterdir()) == [".lock", "codes.0.u8", "deleted.0.i64", "ids.0.i64", "manifest.json"]


def test_bad_tensors_and_ids_get_clear_errors():
    index = QuantizedIndex(4, codec="fp32")
    with pytest.raises(TypeError, match="dense tensor"):
        index.add(torch.eye(4).to_sparse())
    with pytest.raises(TypeError, match="dense tensor"):
        index.add(torch.empty(2, 4, device="meta"))
    with pytest.raises(ValueError, match="outside the float32 range"):
        index.add(np.full((1, 4), 1e300))
    with pytest.raises(TypeError, match="single str"):
        index.add(unit(3, 4), ids="abc")
    with pytest.raises(TypeError, match="integers"):
        index.add(unit(2, 4), ids=np.array([True, False]))
    with pytest.raises(ValueError, match="0..9223372036854775807"):
        index.add(unit(1, 4), ids=np.array([2**63], dtype=np.uint64))
    index.add(unit(1, 4), ids=[2**63 - 1])
    with pytest.raises(ValueError, match="automatic ids are exhausted"):
        index.add(unit(1, 4))
    assert len(index) == 1


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("n_allowed", [3, 60, 900])  # gathered subsets below 1/16 of the rows, masks above
def test_restricted_search_equals_an_index_of_only_those_vectors(codec, n_allowed):
    x, q = unit(2000, 40), unit(7, 40, 1)
    ids = np.arange(10_000, 12_000)
    allowed = np.sort(np.random.default_rng(n_allowed).choice(ids, n_allowed, replace=False))
    index = QuantizedIndex(40, codec=codec, block_size=8)
    index.add(x, ids=ids)
    reference = QuantizedIndex(40, codec=codec, block_size=8)
    reference.add(x[allowed - 10_000], ids=allowed)
    for k in (1, 10, n_allowed + 5):
        assert_same_ranking(index.search(q, k=k, allowed_ids=allowed), reference.search(q, k=k))
    sel = index.selection(list(allowed) + [5, 99_999])  # unknown ids are ignored
    assert_same_ranking(index.search(q, k=10, allowed_ids=sel), reference.search(q, k=10))


def assert_same_ranking(got, want, tol: float = 1e-5) -> None:
    """Equal scores; equal ids except where two candidates tie within float noise (BLAS sums
    in a different order for a different number of rows)."""
    np.testing.assert_allclose(got.scores, want.scores, rtol=tol, atol=tol)
    for qi, pos in np.argwhere(got.ids != want.ids):
        tied = np.abs(want.scores[qi] - want.scores[qi, pos]) <= tol
        at_the_cut = abs(want.scores[qi, -1] - want.scores[qi, pos]) <= tol  # the tie may extend past k
        assert got.ids[qi, pos] in want.ids[qi][tied] or at_the_cut, (qi, pos)


def test_a_selection_follows_writes():
    x = unit(500, 16)
    index = QuantizedIndex(16, codec="int8")
    index.add(x[:400])
    sel = index.selection(np.arange(0, 500, 2))
    first = index.search(x[10], k=1, allowed_ids=sel)
    assert first.ids.tolist() == [[10]]
    index.remove([10])
    assert index.search(x[10], k=1, allowed_ids=sel).ids.tolist() != [[10]]
    index.add(x[400:], ids=np.arange(400, 500))
    assert index.search(x[450], k=1, allowed_ids=sel).ids.tolist() == [[450]]
    assert index.search(x[451], k=1, allowed_ids=sel).ids.tolist() != [[451]]  # odd: not selected
    with pytest.raises(TypeError, match="integers"):
        index.selection(["a"])
    with pytest.raises(TypeError, match="string"):
        index.search(x[0], allowed_ids="12")


# ---------------------------------------------------------------------------- opening


def test_opening_the_same_directory_again_in_one_process_shares_it(tmp_path):
    """A notebook cell run twice, a web app reloading: the second open works."""
    created = QuantizedIndex(16, codec="int8", path=tmp_path / "idx")
    created.add(unit(10, 16))
    again = QuantizedIndex.open(tmp_path / "idx")
    assert again is created
    again.add(unit(2, 16, 1))
    created.close()  # one close per open: the other handle still works
    assert len(again) == 12 and again.search(unit(1, 16, 1)[0], k=1).ids.tolist() == [[10]]
    again.close()
    with pytest.raises(ValueError, match="closed"):
        again.add(unit(1, 16))
    reopened = QuantizedIndex.open(tmp_path / "idx")
    assert reopened is not created and len(reopened) == 12
    reopened.close()


def test_another_process_gets_the_lock_error_but_may_read(tmp_path):
    import subprocess
    import sys

    index = QuantizedIndex(16, codec="int8", path=tmp_path / "idx")
    index.add(unit(10, 16))
    code = (
        "import sys; from quant_retriever import QuantizedIndex\n"
        "try:\n    QuantizedIndex.open(sys.argv[1])\nexcept RuntimeError as e:\n    print('locked:', e)\n"
        "r = QuantizedIndex.open(sys.argv[1], read_only=True); print('read', len(r))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "idx")], capture_output=True, text=True, timeout=120
    )
    assert "locked:" in out.stdout and "read_only=True" in out.stdout and "read 10" in out.stdout, out.stderr


def test_read_only_sees_the_state_at_open_until_refresh(tmp_path):
    x = unit(300, 16)
    writer = QuantizedIndex(16, codec="int4", block_size=8, path=tmp_path / "idx")
    writer.add(x[:200])
    reader = QuantizedIndex.open(tmp_path / "idx", read_only=True)
    assert reader.read_only and reader is not writer and len(reader) == 200
    writer.add(x[200:])
    writer.remove(np.arange(0, 120))  # compacts: the reader's generation's files are deleted
    assert len(reader) == 200 and reader.search(x[5], k=1).ids.tolist() == [[5]]  # still its state
    assert reader.refresh() is True and reader.refresh() is False
    assert len(reader) == 180 and reader.search(x[250], k=1).ids.tolist() == [[250]]
    for call in (lambda: reader.add(x[:1]), lambda: reader.remove([200]), reader.compact):
        with pytest.raises(ValueError, match="read-only"):
            call()
    assert reader.verify() == []


def test_read_only_needs_no_write_permission_and_writes_nothing(tmp_path):
    index = QuantizedIndex(16, codec="int4", block_size=8, path=tmp_path / "idx")
    index.add(unit(50, 16))
    index.close()
    (tmp_path / "idx" / ".readers").unlink(missing_ok=True)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "idx").iterdir()}
    os.chmod(tmp_path / "idx", 0o555)
    try:
        if os.geteuid() == 0:  # root ignores permissions: at least nothing may change
            reader = QuantizedIndex.open(tmp_path / "idx", read_only=True)
        else:
            with pytest.raises(ValueError, match="read_only=True"):
                QuantizedIndex.open(tmp_path / "idx")
            reader = QuantizedIndex.open(tmp_path / "idx", read_only=True)
        assert len(reader) == 50 and reader.verify() == []
        reader.close()
    finally:
        os.chmod(tmp_path / "idx", 0o755)
    after = {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (tmp_path / "idx").iterdir() if p.name != ".readers"
    }
    assert after == before
