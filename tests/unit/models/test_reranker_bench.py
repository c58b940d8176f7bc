"""bench.evaluate_rerankers and its parts at tiny sizes: the fidelity metrics against reference
implementations, the report on a small random cross-encoder loaded through the real loading
code, the offline MiniLM demo cross-encoder, the pairs file reader, the table and the plot."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quant_retriever import _demo_corpus as corpus
from quant_retriever.bench import (
    RerankerReport,
    evaluate_rerankers,
    format_table,
    metrics,
    plot_rerankers,
    read_rerank_pairs,
    reranker_table,
)
from quant_retriever.models import load_reranker
from quant_retriever.models.settings import minilm_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- metrics

SCORES = arrays(np.float64, st.integers(2, 40), elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 3.0, 7.5]))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), a=SCORES)
def test_pearson_and_spearman_match_scipy_with_ties(data, a):
    stats = pytest.importorskip("scipy.stats")
    b = data.draw(arrays(np.float64, len(a), elements=st.floats(-5, 5, allow_nan=False, width=32)))
    for ours, theirs in ((metrics.pearson, stats.pearsonr), (metrics.spearman, stats.spearmanr)):
        value = ours(a, b)
        if np.ptp(a) == 0 or np.ptp(b) == 0 or (ours is metrics.spearman and len(set(b)) == 1):
            assert math.isnan(value)
        else:
            expected = theirs(a, b)[0]
            assert value == pytest.approx(expected, abs=1e-9)


def test_ndcg_and_map_of_an_ordering_against_a_reference():
    # reference top 3 of 5 candidates: 4 (gain 3), 0 (gain 2), 2 (gain 1)
    qrels = [{4: 3.0, 0: 2.0, 2: 1.0}]
    same = [np.array([4, 0, 2, 1, 3])]
    assert metrics.ndcg(same, qrels, at=3) == 1.0 and metrics.mean_average_precision(same, qrels, at=3) == 1.0
    swapped = [np.array([0, 4, 2, 1, 3])]  # the same set, first two swapped
    ideal = 3 + 2 / math.log2(3) + 1 / 2
    assert metrics.ndcg(swapped, qrels, at=3) == pytest.approx((2 + 3 / math.log2(3) + 1 / 2) / ideal)
    assert metrics.mean_average_precision(swapped, qrels, at=3) == 1.0
    missing = [np.array([4, 1, 0, 2, 3])]  # one outsider at rank 2
    assert metrics.ndcg(missing, qrels, at=3) == pytest.approx((3 + 2 / 2) / ideal)
    assert metrics.mean_average_precision(missing, qrels, at=3) == pytest.approx((1 + 2 / 3) / 3)
    # rows of different lengths, and a list shorter than the cut-off
    assert metrics.mean_average_precision([np.array([1]), *same], [{1: 1.0}, *qrels], at=3) == 1.0


# --------------------------------------------------------------------------- evaluate_rerankers


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[list[str]]]:
    """3 queries, each with 8 real docstrings (a different slice each)."""
    docs = [d.text for d in corpus.stdlib_docstrings(24)]
    queries = ["decode JSON documents", "open a socket connection", "compress bytes with gzip"]
    return queries, [docs[i * 8 : (i + 1) * 8] for i in range(3)]


def test_evaluate_rerankers_reports_fidelity_memory_speed_and_skips(tiny_cross_encoder, pairs, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # bnb-nf4 cannot load "here"
    queries, candidates = pairs
    reports = evaluate_rerankers(
        tiny_cross_encoder, ["fp32", "int8", "bnb-nf4", "fp16"], queries, candidates, batch_size=4, repeats=1, at=3
    )
    assert [r.precision for r in reports] == ["fp32", "int8", "bnb-nf4", "fp16"]
    fp32, int8, nf4, fp16 = reports
    assert all(isinstance(r, RerankerReport) and r.at == 3 for r in reports)

    assert (fp32.pearson, fp32.spearman, fp32.ndcg, fp32.map) == (1.0, 1.0, 1.0, 1.0)
    assert fp32.pairs_per_second > 0 and fp32.applied_precision == "fp32"
    assert fp32.parameter_bytes == load_reranker(tiny_cross_encoder, "fp32", "cpu").parameter_bytes

    # int8, against what the fp32 and int8 rerankers give on the same pairs
    ref, quant = (load_reranker(tiny_cross_encoder, p, "cpu") for p in ("fp32", "int8"))
    ref_scores = [ref.score(q, c) for q, c in zip(queries, candidates)]
    int8_scores = [quant.score(q, c) for q, c in zip(queries, candidates)]
    flat = np.concatenate(int8_scores), np.concatenate(ref_scores)
    assert int8.pearson == pytest.approx(np.corrcoef(*flat)[0, 1], abs=1e-6) and int8.pearson >= 0.98
    orders = [np.argsort(-s, kind="stable") for s in int8_scores]
    qrels = [{int(d): 3.0 - r for r, d in enumerate(np.argsort(-s, kind="stable")[:3])} for s in ref_scores]
    assert int8.ndcg == pytest.approx(metrics.ndcg(orders, qrels, 3), abs=1e-9)
    assert int8.map == pytest.approx(metrics.mean_average_precision(orders, qrels, 3), abs=1e-9)
    assert 0.5 <= int8.ndcg <= 1.0 and 0.0 <= int8.map <= 1.0
    assert int8.parameter_bytes < 0.4 * fp32.parameter_bytes

    assert nf4.skipped is not None and "quant-retriever[bnb]" in nf4.skipped and nf4.pearson is None
    assert repr(nf4).startswith("RerankerReport(bnb-nf4: skipped, ImportError")
    assert fp16.applied_precision == "bf16" and fp16.label == "fp16 (bf16)"
    assert repr(int8).startswith("RerankerReport(int8: ") and "pairs/s" in repr(int8) and "NDCG@3" in repr(int8)

    headers, rows = reranker_table(reports)
    assert headers == [
        "precision", "params MB", "% fp32", "pairs/s", "speed-up", "pearson", "spearman", "NDCG@3", "MAP@3",
    ]  # fmt: skip
    assert rows[0][2] == "100.0%" and rows[0][4] == "1.00x" and rows[0][5:] == ["1.0000", "1.0000", "1.000", "1.000"]
    assert rows[2] == ["bnb-nf4", "skipped", *["-"] * 7]
    assert "fp16 (bf16)" in format_table(headers, rows)


def test_package_exports():
    import quant_retriever

    assert quant_retriever.evaluate_rerankers is evaluate_rerankers


def test_evaluate_rerankers_validates_before_loading(pairs):
    queries, candidates = pairs
    missing = "/no/such/model"  # never loaded: every check comes first
    with pytest.raises(ValueError, match="Unknown precision 'int3'"):
        evaluate_rerankers(missing, ["fp32", "int3"], queries, candidates)
    with pytest.raises(TypeError, match="precisions must be a list"):
        evaluate_rerankers(missing, "fp32", queries, candidates)
    with pytest.raises(ValueError, match="one list per query; got 2 lists for 3 queries"):
        evaluate_rerankers(missing, ["fp32"], queries, candidates[:2])
    with pytest.raises(ValueError, match=r"candidates\[1\] are empty"):
        evaluate_rerankers(missing, ["fp32"], queries, [candidates[0], [], candidates[2]])
    with pytest.raises(TypeError, match=r"candidates\[0\]\[2\] must be a str"):
        evaluate_rerankers(missing, ["fp32"], queries, [[*candidates[0][:2], 5], *candidates[1:]])
    with pytest.raises(TypeError, match="queries must be a list of strings, got a single str"):
        evaluate_rerankers(missing, ["fp32"], "one query", candidates[:1])
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_rerankers(missing, ["fp32"], queries[:1], [candidates[0][:1]])
    with pytest.raises(ValueError, match="at must be a positive int"):
        evaluate_rerankers(missing, ["fp32"], queries, candidates, at=0)
    with pytest.raises(ValueError, match="repeats must be a positive int"):
        evaluate_rerankers(missing, ["fp32"], queries, candidates, repeats=0)


def test_plot_rerankers_draws_a_png(tmp_path, tiny_cross_encoder, pairs):
    queries, candidates = pairs
    reports = evaluate_rerankers(tiny_cross_encoder, ["fp32", "bf16"], queries, candidates, repeats=1, progress=False)
    path = plot_rerankers(reports, tmp_path / "plots" / "rerank.png", "tiny")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    skipped = RerankerReport("bnb-nf4", None, None, None, None, None, None, None, 5, "ImportError: no")
    with pytest.raises(ValueError, match="no precision ran"):
        plot_rerankers([skipped], tmp_path / "none.png")


# --------------------------------------------------------------------------- inputs


def test_read_rerank_pairs_from_a_jsonl_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [
        {"query": "q1", "passages": ["a", "b", "c"]},
        {"query": "q2", "passages": ["d"]},
        {"query": "q3", "passages": ["e"]},
    ]
    path.write_text(
        "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n", encoding="utf-8"
    )
    assert read_rerank_pairs(path, 2, 2) == (["q1", "q2"], [["a", "b"], ["d"]])
    assert read_rerank_pairs(path, 10, 10)[0] == ["q1", "q2", "q3"]
    for bad in ['{"query": "q"}', '{"query": 1, "passages": ["a"]}', '{"query": "q", "passages": []}', "[1, 2]", "{"]:
        path.write_text(json.dumps(lines[0]) + "\n" + bad + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=r"pairs.jsonl line 2: expected \{\"query\""):
            read_rerank_pairs(path, 5, 5)
    with pytest.raises(ValueError, match="does not exist"):
        read_rerank_pairs(tmp_path / "missing.jsonl", 5, 5)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_rerank_pairs(path, 5, 5)
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no pairs"):
        read_rerank_pairs(path, 5, 5)
    with pytest.raises(ValueError, match="n_queries must be a positive int"):
        read_rerank_pairs(None, 0, 5)


def test_stdlib_pairs_are_the_first_stage_candidates_of_minilm(corpus_docs):
    queries, candidates = read_rerank_pairs(None, 3, 4, corpus_size=30, progress=False)
    texts = [d.text for d in corpus_docs[:30]]
    assert len(queries) == 3 and all(q == " ".join(q.split()) and q for q in queries)
    vectors = corpus.embed_cached(texts, progress=False)
    for query, kept in zip(queries, candidates):
        scores = vectors @ corpus.embed_cached([query], progress=False)[0]
        assert kept == [texts[i] for i in np.argsort(-scores, kind="stable")[:4]]


def test_demo_cross_encoder_is_minilm_under_a_seeded_head(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("QUANT_RETRIEVER_CACHE", str(tmp_path / "cache"))
    path = corpus.demo_cross_encoder()
    assert path.parent == tmp_path / "cache" and [p.name for p in path.parent.iterdir()] == [path.name]
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert corpus.demo_cross_encoder() == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    weights = load_file(path / "model.safetensors")
    minilm = load_file(f"{minilm_path()}/model.safetensors")
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight", "pooler.dense.weight"):
        assert torch.equal(weights[f"bert.{name}"], minilm[name])
    head = torch.randn(1, 384, generator=torch.Generator().manual_seed(0)) / 384**0.5
    assert torch.equal(weights["classifier.weight"], head) and not weights["classifier.bias"].any()
    reranker = load_reranker(path, "fp32", device="cpu")
    assert reranker.model.num_labels == 1 and reranker.model.max_seq_length == corpus.DEMO_MAX_LENGTH
    scores = reranker.score("parse JSON", [d.text for d in corpus.stdlib_docstrings(5)])
    assert np.isfinite(scores).all() and np.ptp(scores) > 0
