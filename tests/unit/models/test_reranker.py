"""quant_retriever.models.reranker: a small randomly initialised BERT cross-encoder loaded through
the real loading code at every precision, checked against sentence-transformers' own
``CrossEncoder.predict`` and against itself at FP32, on real standard-library docstrings."""

from __future__ import annotations

import logging
import sys
from typing import get_args

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quant_retriever
from quant_retriever import _demo_corpus as corpus
from quant_retriever.bench import metrics
from quant_retriever.models import Precision, Reranker, RerankResult, load_encoder, load_reranker
from quant_retriever.models import int8 as int8_linear
from quant_retriever.models.reranker import check_top_n

ON_CUDA = torch.cuda.is_available()
QUERY = "decode a JSON document into Python objects"

# asked precision -> (applied precision on a CPU, floor for the score correlation with fp32,
# bounds on parameter memory as a share of fp32). The tiny model is mostly its token-embedding
# table (30522 x 64), which the integer precisions store as int8 rows.
EXPECTED = {
    "fp32": ("fp32", 1.0 - 1e-9, (1.0, 1.0)),
    "none": ("fp32", 1.0 - 1e-9, (1.0, 1.0)),
    "fp16": ("bf16", 0.995, (0.49, 0.51)),
    "bf16": ("bf16", 0.995, (0.49, 0.51)),
    "int8": ("int8", 0.99, (0.25, 0.35)),
    "bnb-int8": ("bnb-int8", 0.99, (0.25, 0.35)),
    "bnb-nf4": ("bnb-nf4", 0.97, (0.25, 0.35)),
    "int4": ("bnb-nf4", 0.97, (0.25, 0.35)),
    "bnb-fp4": ("bnb-fp4", 0.9, (0.25, 0.35)),
}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """40 real docstrings of the standard library, and 10 short cuts of them: lengths from a
    few tokens to the model's 128-token limit, so batches pad."""
    docs = [d.text for d in corpus.stdlib_docstrings(40)]
    return docs + [d[:30] for d in docs[:10]]


@pytest.fixture(scope="module")
def rerankers(tiny_cross_encoder):
    """Loads each precision once for the whole module: ``rerankers(precision) -> Reranker``."""
    cache: dict[str, Reranker] = {}

    def get(precision: str) -> Reranker:
        if precision not in cache:
            cache[precision] = load_reranker(tiny_cross_encoder, precision, device="cpu")
        return cache[precision]

    return get


@pytest.fixture(scope="module")
def reference(rerankers, texts) -> np.ndarray:
    """fp32 logits of ``(QUERY, text)``: [50]."""
    return rerankers("fp32").score(QUERY, texts, logits=True)


def test_expected_covers_every_precision_name():
    assert set(EXPECTED) == set(get_args(Precision))


@pytest.mark.parametrize("precision", list(EXPECTED))
def test_every_precision_loads_scores_close_to_fp32_and_shrinks(precision, rerankers, texts, reference):
    applied, floor, (low, high) = EXPECTED[precision]
    reranker = rerankers(precision)
    assert (reranker.precision, reranker.device) == (applied, "cpu")
    logits = reranker.score(QUERY, texts, batch_size=8, logits=True)
    assert logits.shape == (len(texts),) and logits.dtype == np.float32 and np.isfinite(logits).all()
    correlation = metrics.pearson(logits, reference)
    assert correlation >= floor, f"{precision}: correlation {correlation:.4f} < {floor}"
    share = reranker.parameter_bytes / rerankers("fp32").parameter_bytes
    assert low <= share <= high, f"{precision}: {share:.1%} of fp32"
    # rerank orders by the same scores, after the model's activation (a sigmoid)
    result = reranker.rerank(QUERY, texts, batch_size=8)
    scores = reranker.score(QUERY, texts, batch_size=8)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    np.testing.assert_array_equal(result.indices, np.argsort(-scores, kind="stable"))
    np.testing.assert_array_equal(result.scores, scores[result.indices])


@pytest.mark.parametrize(
    "precision, layer",
    [("int8", "Int8Linear"), ("bnb-int8", "Linear8bitLt"), ("bnb-nf4", "Linear4bit"), ("bnb-fp4", "Linear4bit")],
)
def test_integer_precisions_quantize_the_encoder_and_keep_the_head_in_float(precision, layer, rerankers):
    """The pooler and classifier stay nn.Linear in float32 (one row per pair: nothing to gain,
    and the classifier's output is the score); the encoder's linear layers are quantized."""
    inner = rerankers(precision).model[0].model
    modules = dict(inner.named_modules())
    for name in ("bert.pooler.dense", "classifier"):
        assert type(modules[name]) is torch.nn.Linear, f"{name} is {type(modules[name]).__name__}"
        assert modules[name].weight.dtype == torch.float32
    quantized = [n for n, m in modules.items() if type(m).__name__ == layer]
    assert any(n.startswith("bert.encoder.layer.0.") for n in quantized), quantized


CUDA_PRECISIONS = {  # on a GPU: fp16 stays fp16, int8 runs through torchao, bitsandbytes on CUDA
    "fp16": "fp16",
    "bf16": "bf16",
    "int8": "int8",
    "bnb-int8": "bnb-int8",
    "bnb-nf4": "bnb-nf4",
    "bnb-fp4": "bnb-fp4",
}


@pytest.mark.skipif(not ON_CUDA, reason="CUDA-only: fp16 without the bf16 fallback, torchao INT8, bitsandbytes on CUDA")
@pytest.mark.parametrize("precision", list(CUDA_PRECISIONS))
def test_every_precision_on_cuda_scores_close_to_fp32(precision, tiny_cross_encoder, texts, reference):
    reranker = load_reranker(tiny_cross_encoder, precision, device="cuda")
    assert reranker.precision == CUDA_PRECISIONS[precision] and reranker.device.startswith("cuda")
    logits = reranker.score(QUERY, texts, batch_size=8, logits=True)
    assert metrics.pearson(logits, reference) >= EXPECTED[precision][1]


def test_fp16_on_a_cpu_falls_back_to_bf16_and_says_so(tiny_cross_encoder, caplog):
    with caplog.at_level(logging.INFO, logger="quant_retriever.models"):
        reranker = load_reranker(tiny_cross_encoder, "fp16", device="cpu")
    assert reranker.precision == "bf16"
    assert next(reranker.model.parameters()).dtype == torch.bfloat16
    fallbacks = [r for r in caplog.records if "using bf16 instead" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING


@pytest.mark.parametrize(
    "precision, detail",
    [
        ("fp32", "fp32 precision for reranker (float32 weights)"),
        (
            "int8",
            "int8 quantization for reranker (oneDNN dynamic INT8 linear layers, per-sequence attention, "
            "float head, INT8 token embeddings)",
        ),
        (
            "bnb-nf4",
            "bnb-nf4 quantization for reranker (bitsandbytes NF4 linear layers (last block unquantized), "
            "float head, INT8 token embeddings)",
        ),
    ],
)
def test_load_logs_one_applied_line(precision, detail, tiny_cross_encoder, caplog):
    with caplog.at_level(logging.INFO, logger="quant_retriever.models"):
        reranker = load_reranker(tiny_cross_encoder, precision, device="cpu")
    infos = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("quant_retriever.models") and r.levelno == logging.INFO
    ]
    assert len(infos) == 1, infos
    fp32_mb = load_reranker(tiny_cross_encoder, "fp32", device="cpu").parameter_bytes / 1e6
    assert infos[0] == (
        f"Using {detail} on cpu: {tiny_cross_encoder}, one score per pair, at most 128 tokens, "
        f"{fp32_mb:.1f} MB -> {reranker.parameter_bytes / 1e6:.1f} MB parameters"
    )


# --------------------------------------------------------------------------- settings


def test_rerank_environment_wins_over_the_shared_one(tiny_cross_encoder, monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_PRECISION", "int8")
    monkeypatch.setenv("QUANT_RETRIEVER_DEVICE", "no-such-device")
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_PRECISION", "bf16")
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_DEVICE", "cpu")
    reranker = load_reranker(tiny_cross_encoder)
    assert (reranker.precision, reranker.device) == ("bf16", "cpu")


def test_shared_environment_applies_when_the_rerank_one_is_unset(tiny_cross_encoder, monkeypatch):
    monkeypatch.delenv("QUANT_RETRIEVER_RERANK_PRECISION", raising=False)
    monkeypatch.delenv("QUANT_RETRIEVER_RERANK_DEVICE", raising=False)
    monkeypatch.setenv("QUANT_RETRIEVER_PRECISION", "bf16")
    monkeypatch.setenv("QUANT_RETRIEVER_DEVICE", "cpu")
    reranker = load_reranker(tiny_cross_encoder)
    assert (reranker.precision, reranker.device) == ("bf16", "cpu")


def test_explicit_arguments_win_and_bad_settings_name_their_variable(tiny_cross_encoder, monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_PRECISION", "int3")
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_DEVICE", "no-such-device")
    reranker = load_reranker(tiny_cross_encoder, precision="fp32", device="cpu")
    assert (reranker.precision, reranker.device) == ("fp32", "cpu")
    with pytest.raises(ValueError, match=r"Unknown precision 'int3' \(from \$QUANT_RETRIEVER_RERANK_PRECISION\)"):
        load_reranker(tiny_cross_encoder, device="cpu")
    with pytest.raises(ValueError, match=r"QUANT_RETRIEVER_RERANK_DEVICE"):
        load_reranker(tiny_cross_encoder, precision="fp32")


def test_rerank_settings_do_not_reach_the_encoder(minilm_path, monkeypatch):
    monkeypatch.delenv("QUANT_RETRIEVER_PRECISION", raising=False)
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_PRECISION", "bf16")
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_DEVICE", "no-such-device")
    encoder = load_encoder(minilm_path, device="cpu")
    assert encoder.precision == "fp32"


# --------------------------------------------------------------------------- against sentence-transformers


def test_fp32_matches_cross_encoder_predict(tiny_cross_encoder, rerankers, texts):
    """Differential: the same scores and order as sentence-transformers' CrossEncoder on its
    own, across length buckets smaller than the candidate list."""
    from sentence_transformers import CrossEncoder

    plain = CrossEncoder(tiny_cross_encoder, device="cpu")
    expected = plain.predict([(QUERY, t) for t in texts], batch_size=64, show_progress_bar=False)
    result = rerankers("fp32").rerank(QUERY, texts, batch_size=7)
    np.testing.assert_allclose(result.scores, expected[result.indices], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.indices, np.argsort(-expected, kind="stable"))
    top = rerankers("fp32").rerank(QUERY, texts, top_n=5, batch_size=7)
    np.testing.assert_array_equal(top.indices, result.indices[:5])


def test_int8_scores_do_not_depend_on_batching_or_batch_mates(rerankers):
    """Per-sequence attention keeps a pair's INT8 rounding independent of the padding that its
    batch mates bring: alone, among all, or among others in another order, a pair's score moves
    by float noise only. (Without it, 4 of these 250 pairs move by up to 4e-3: a value that
    padding nudges across a rounding boundary of a per-token quantizer.)"""
    docs = [d.text for d in corpus.stdlib_docstrings(200)]
    texts = docs + [d[:30] for d in docs[:50]]
    reranker = rerankers("int8")
    together = reranker.score(QUERY, texts, batch_size=64, logits=True)
    alone = np.array([reranker.score(QUERY, [t], logits=True)[0] for t in texts])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    for batch_size in (3, 16):
        np.testing.assert_allclose(reranker.score(QUERY, texts, batch_size, logits=True), alone, rtol=0, atol=1e-6)
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = reranker.score(QUERY, [texts[i] for i in order], batch_size=8, logits=True)
    np.testing.assert_allclose(shuffled, alone[order], rtol=0, atol=1e-6)


def test_length_buckets_group_similar_lengths(rerankers, texts):
    reranker = rerankers("fp32")
    buckets = reranker._length_buckets(QUERY, texts, 8)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(len(texts)))
    assert all(len(b) == 8 for b in buckets[:-1])
    encoded = reranker.model.tokenizer([QUERY] * len(texts), texts, truncation=True, max_length=128)["input_ids"]
    lengths = [[len(encoded[i]) for i in b] for b in buckets]
    assert all(min(a) >= max(b) for a, b in zip(lengths, lengths[1:]))  # longest first, no overlap


# --------------------------------------------------------------------------- bad input


def test_empty_candidates_give_an_empty_result(rerankers):
    result = rerankers("int8").rerank(QUERY, [], top_n=5)
    assert len(result) == 0 and list(result) == []
    assert result.indices.dtype == np.int64 and result.scores.dtype == np.float32
    assert rerankers("fp32").score(QUERY, []).shape == (0,)


@pytest.mark.parametrize("top_n, kept", [(None, 6), (0, 0), (1, 1), (6, 6), (7, 6), (1000, 6), (np.int64(2), 2)])
def test_top_n_keeps_at_most_the_candidates(top_n, kept, rerankers, texts):
    result = rerankers("fp32").rerank(QUERY, texts[:6], top_n=top_n)
    assert len(result) == kept and sorted(result.indices.tolist()) == sorted(set(result.indices.tolist()))
    full = rerankers("fp32").rerank(QUERY, texts[:6])
    np.testing.assert_array_equal(result.indices, full.indices[:kept])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"top_n": -1}, ValueError, "top_n must be >= 0, got -1"),
        ({"top_n": 2.0}, TypeError, "top_n must be an int or None, got float"),
        ({"top_n": True}, TypeError, "top_n must be an int or None, got bool"),
        ({"top_n": "3"}, TypeError, "top_n must be an int or None, got str"),
        ({"texts": "one text"}, TypeError, "texts must be a list of strings, got a single str"),
        ({"texts": ["fine", 3]}, TypeError, r"texts\[1\] must be a str, got int"),
        ({"texts": ["fine", None]}, TypeError, r"texts\[1\] must be a str, got NoneType"),
        ({"texts": {"a": 1}}, TypeError, "texts must be a list of strings, got dict"),
        ({"query": None}, TypeError, "query must be a str, got NoneType"),
        ({"query": ["q"]}, TypeError, "query must be a str, got list"),
        ({"batch_size": 0}, ValueError, "batch_size must be positive, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int, got float"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, error, message, rerankers):
    call = {"query": QUERY, "texts": ["a text", "another"], "top_n": None, "batch_size": 32, **kwargs}
    with pytest.raises(error, match=message):
        rerankers("fp32").rerank(**call)


def test_a_classifier_with_two_labels_is_refused(tmp_path, caplog):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from quant_retriever.models.settings import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="quant_retriever.models"):
        with pytest.raises(ValueError, match=r"has 2 outputs per pair; a reranker needs .* \(num_labels=1\)"):
            load_reranker(tmp_path, "fp32", device="cpu")
    assert not [r for r in caplog.records if r.getMessage().startswith("Using ")]  # nothing claimed as applied


def test_load_reranker_checks_its_arguments(tiny_cross_encoder):
    with pytest.raises(TypeError, match="model must be a name or a path, got int"):
        load_reranker(3)
    with pytest.raises(TypeError, match="compile must be True or False, got str"):
        load_reranker(tiny_cross_encoder, "fp32", "cpu", compile="yes")
    with pytest.raises(ValueError, match="Unknown precision 'int3' \\(argument\\)"):
        load_reranker(tiny_cross_encoder, "int3", "cpu")


def test_check_top_n_accepts_numpy_integers():
    assert check_top_n(np.int32(4)) == 4 and type(check_top_n(np.int32(4))) is int
    assert check_top_n(None) is None


def test_result_iterates_python_numbers_and_has_a_short_repr(rerankers, texts):
    result = rerankers("fp32").rerank(QUERY, texts, top_n=10)
    pairs = list(result)
    assert len(pairs) == 10 and all(type(i) is int and type(s) is float for i, s in pairs)
    assert repr(result).startswith("RerankResult(indices=[") and repr(result).endswith(", ...])")
    assert "precision='int8'" in repr(rerankers("int8")) and "MB" in repr(rerankers("int8"))


def test_package_exports():
    assert quant_retriever.load_reranker is load_reranker
    assert quant_retriever.Reranker is Reranker and quant_retriever.RerankResult is RerankResult


def test_int8_without_onednn_uses_torchao_with_the_head_in_float(tiny_cross_encoder, texts, reference, monkeypatch):
    """Where the torch build lacks oneDNN's INT8 ops, torchao quantizes the encoder; its filter
    leaves the head alone too."""
    monkeypatch.setattr(int8_linear, "available", lambda: False)
    reranker = load_reranker(tiny_cross_encoder, "int8", device="cpu")
    inner = reranker.model[0].model
    assert hasattr(inner.bert.encoder.layer[0].attention.self.query.weight, "qdata")  # a torchao Int8Tensor
    assert not hasattr(inner.classifier.weight, "qdata") and not hasattr(inner.bert.pooler.dense.weight, "qdata")
    assert metrics.pearson(reranker.score(QUERY, texts, logits=True), reference) >= 0.99


def test_bitsandbytes_missing_names_the_extra(tiny_cross_encoder, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"quant-retriever\[bnb\]"):
        load_reranker(tiny_cross_encoder, "bnb-nf4", device="cpu")


# --------------------------------------------------------------------------- properties

WORDS = st.sampled_from(["json", "socket", "decode", "file", "thread", "lock", "path", "", " ", "é", "\n"])
TEXTS = st.lists(st.one_of(st.lists(WORDS, max_size=30).map(" ".join), st.text(max_size=40)), min_size=0, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=TEXTS, top_n=st.one_of(st.none(), st.integers(0, 15)), batch_size=st.integers(1, 5))
def test_rerank_is_the_stable_descending_order_of_the_scores(rerankers, texts, top_n, batch_size):
    reranker = rerankers("fp32")
    result = reranker.rerank(QUERY, texts, top_n=top_n, batch_size=batch_size)
    scores = reranker.score(QUERY, texts, batch_size=len(texts) or 1)
    kept = len(texts) if top_n is None else min(top_n, len(texts))
    assert len(result) == kept and len(set(result.indices.tolist())) == kept
    np.testing.assert_allclose(result.scores, scores[result.indices], rtol=0, atol=1e-6)
    assert (np.diff(result.scores) <= 0).all()
    # ties keep the order of the texts
    ranked = list(zip(result.indices.tolist(), result.scores.tolist()))
    for (a, score_a), (b, score_b) in zip(ranked, ranked[1:]):
        if score_a == score_b:
            assert a < b


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=TEXTS.filter(bool), seed=st.integers(0, 2**16))
def test_int8_score_of_a_pair_ignores_the_other_candidates(rerankers, texts, seed):
    reranker = rerankers("int8")
    order = np.random.default_rng(seed).permutation(len(texts))
    kept = order[: max(1, len(order) // 2)]
    full = reranker.score(QUERY, texts, batch_size=4, logits=True)
    part = reranker.score(QUERY, [texts[i] for i in kept], batch_size=3, logits=True)
    np.testing.assert_allclose(part, full[kept], rtol=0, atol=1e-6)
