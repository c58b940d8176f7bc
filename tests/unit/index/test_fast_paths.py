"""Every fast path of a search is taken where it should be, counted by a spy: deleting one would
fail here, not only slow a benchmark (the results of each path are compared with the slow
paths in test_index.py and test_codecs.py)."""

from __future__ import annotations

import numpy as np
import pytest

import quant_retriever.index.search as search_mod
from quant_retriever import QuantizedIndex
from quant_retriever.codecs.base import Codec
from quant_retriever.index.snapshot import SUBSET_FRACTION
from quant_retriever.kernels import scans


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def spy(monkeypatch, owner, name: str) -> list:
    """Count the calls of ``owner.name`` (and keep their first argument after self)."""
    calls, real = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


needs_native = pytest.mark.skipif(not scans.available(__import__("torch").device("cpu")), reason="no native kernels")


@needs_native
def test_one_query_is_rescored_in_place_by_one_native_call(monkeypatch):
    index = QuantizedIndex(64, codec="int4")
    index.add(unit(2000, 64))
    native = spy(monkeypatch, scans, "dense_top")
    gathered = spy(monkeypatch, search_mod, "rescore")
    index.search(unit(1, 64, 1), k=10)
    assert len(native) == 1 and gathered == []
    index.search(unit(2, 64, 1), k=10)  # two queries: the gathered path
    assert len(native) == 1 and len(gathered) == 1


def test_without_native_kernels_one_query_is_gathered_and_rescored(monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_NATIVE", "0")
    index = QuantizedIndex(64, codec="int4")
    index.add(unit(500, 64))
    gathered = spy(monkeypatch, search_mod, "rescore")
    index.search(unit(1, 64, 1), k=10)
    assert len(gathered) == 1


def test_a_small_selection_scans_only_its_own_rows(monkeypatch):
    index = QuantizedIndex(32, codec="int8")
    index.add(unit(1600, 32))
    scanned = spy(monkeypatch, search_mod.Pipeline, "scan")
    small = np.arange(0, 1600, 50)  # 32 rows: fewer than 1/SUBSET_FRACTION of 1600
    assert len(small) * SUBSET_FRACTION <= 1600
    res = index.search(unit(1, 32, 2), k=5, allowed_ids=small)
    assert set(res.ids[0]) <= set(small.tolist())
    assert scanned[-1][1].shape[0] == len(small)  # the codes scanned: the selection's rows only
    large = np.arange(0, 1600, 2)
    index.search(unit(1, 32, 2), k=5, allowed_ids=large)
    assert scanned[-1][1].shape[0] == 1600  # a large one: every row, under a mask


def test_queries_sharing_candidates_are_rescored_all_pairs(monkeypatch):
    index = QuantizedIndex(32, codec="int4", block_size=8)
    index.add(unit(3000, 32))
    pairs = spy(monkeypatch, search_mod, "_all_pairs")
    own = spy(monkeypatch, search_mod, "_per_query")
    q = unit(1, 32, 3)
    index.search(np.repeat(q, 8, axis=0), k=10)  # the same candidates 8 times: one scan of them
    assert (len(pairs), len(own)) == (1, 0)
    index.search(unit(64, 32, 4), k=10)  # 64 different queries: each against its own
    assert (len(pairs), len(own)) == (1, 1)


@pytest.mark.parametrize("native", [True, False])
def test_a_first_stage_without_a_score_per_row_is_one_call_over_every_row(monkeypatch, native):
    """The native kernels keep the best rows while they scan: no chunks. The torch path
    decodes at most DECODED_PER_CHUNK floats a step: over 262,144 rows of dim 64, two steps."""
    if native and not scans.available(__import__("torch").device("cpu")):
        pytest.skip("no native kernels")
    if not native:
        monkeypatch.setenv("QUANT_RETRIEVER_NATIVE", "0")
    rows = search_mod.DECODED_PER_CHUNK // 64 + 1000
    index = QuantizedIndex(64, codec="int8")
    x = np.zeros((rows, 64), np.float32)
    x[:, 0] = 1.0
    x[rows - 1] = unit(1, 64, 5)[0]
    index.add(x)
    tops = spy(monkeypatch, Codec, "top")
    res = index.search(x[rows - 1], k=1)
    assert res.ids[0, 0] == rows - 1
    assert len(tops) == (1 if native else 2)
