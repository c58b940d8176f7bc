"""quant_retriever.models (and bench.evaluate_encoders) on the real all-MiniLM-L6-v2 model (offline, no mocks)."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import get_args

import numpy as np
import pytest
import torch

from quant_retriever import _demo_corpus as corpus
from quant_retriever.bench import EncoderReport, evaluate_encoders
from quant_retriever.models import Encoder, Precision, load_encoder
from quant_retriever.models import int8 as int8_linear
from quant_retriever.models.int8 import Int8Embedding
from quant_retriever.models.settings import PRECISIONS

ON_CUDA = torch.cuda.is_available()
FP32_BYTES = 90_861_056  # 22.7M float32 parameters + int64 position/token-type ids

# asked precision -> (applied precision, floor for the mean cosine to fp32)
FLOORS = {
    "fp32": ("fp32", 1.0 - 1e-6),
    "none": ("fp32", 1.0 - 1e-6),
    "bf16": ("bf16", 0.999),
    "fp16": ("fp16" if ON_CUDA else "bf16", 0.999),
    "int8": ("int8", 0.998),
    "bnb-int8": ("bnb-int8", 0.998),
    "bnb-nf4": ("bnb-nf4", 0.97),
    "int4": ("bnb-nf4", 0.97),
    "bnb-fp4": ("bnb-fp4", 0.94),
}
# applied precision -> bounds on parameter memory as a share of fp32
MEMORY_SHARE = {
    "fp32": (1.0, 1.0),
    "bf16": (0.49, 0.51),
    "fp16": (0.49, 0.51),
    "int8": (0.20, 0.40),
    "bnb-int8": (0.20, 0.40),
    "bnb-nf4": (0.15, 0.35),
    "bnb-fp4": (0.15, 0.35),
}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """40 real docstrings of the standard library."""
    return [d.text for d in corpus.stdlib_docstrings(40)]


@pytest.fixture(scope="module")
def encoders(minilm_path):
    """Loads each precision once for the whole module: ``encoders(precision) -> Encoder``."""
    cache: dict[str, Encoder] = {}

    def get(precision: str) -> Encoder:
        if precision not in cache:
            cache[precision] = load_encoder(minilm_path, precision, device="cpu")
        return cache[precision]

    return get


@pytest.fixture(scope="module")
def reference(encoders, texts) -> np.ndarray:
    """fp32 embeddings of ``texts``: [40, 384]."""
    return encoders("fp32").encode(texts)


def test_precision_table_matches_the_literal():
    assert set(PRECISIONS) == set(get_args(Precision))


@pytest.mark.parametrize("precision", list(FLOORS))
def test_precision_loads_and_stays_close_to_fp32(precision, encoders, texts, reference):
    applied, floor = FLOORS[precision]
    encoder = encoders(precision)
    vectors = encoder.encode(texts, batch_size=16)

    assert encoder.precision == applied
    assert encoder.dim == 384 and encoder.device == "cpu"
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.einsum("nd,nd->n", vectors, reference)
    assert cosines.mean() >= floor, f"{precision}: mean cosine {cosines.mean():.4f} < {floor}"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "bnb-int8", "bnb-nf4", "bnb-fp4"])
def test_parameter_memory_shrinks_as_expected(precision, encoders):
    low, high = MEMORY_SHARE[precision]
    share = encoders(precision).parameter_bytes / FP32_BYTES
    assert low <= share <= high, f"{precision}: {share:.1%} of fp32"


def test_int8_memory_counts_onednn_packed_weights(encoders):
    """Int8Linear keeps its int8 weights in an opaque oneDNN tensor, outside parameters()."""
    encoder = encoders("int8")
    model = encoder.model
    layers = [m for m in model.modules() if isinstance(m, int8_linear.Int8Linear)]
    assert len(layers) == 37  # 6 blocks x (q, k, v, attention out, 2 feed-forward) + pooler
    plain = sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
    packed = sum(m.in_features * m.out_features for m in layers)  # one byte per weight
    assert encoder.parameter_bytes == plain + packed


def test_int8_memory_counts_torchao_inner_tensors(minilm_path, monkeypatch):
    """Without oneDNN's INT8 ops, torchao: its Int8Tensor reports float32 per element; the
    real size is its qdata + scales."""
    monkeypatch.setattr(int8_linear, "available", lambda: False)
    encoder = load_encoder(minilm_path, "int8", device="cpu")
    model = encoder.model
    naive = sum(p.numel() * p.element_size() for p in model.parameters())
    naive += sum(b.numel() * b.element_size() for b in model.buffers())
    by_hand = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if hasattr(tensor, "qdata"):  # torchao Int8Tensor: int8 [out, in] + float32 [out, 1]
            assert tensor.qdata.dtype == torch.int8
            by_hand += tensor.qdata.nbytes + tensor.scale.nbytes
            by_hand += tensor.zero_point.nbytes if tensor.zero_point is not None else 0
        else:
            by_hand += tensor.nbytes
    assert by_hand < naive and not any(isinstance(m, int8_linear.Int8Linear) for m in model.modules())
    assert encoder.parameter_bytes == by_hand
    assert naive > 1.4 * by_hand  # the linear layers would count as float32


def test_int4_memory_counts_bitsandbytes_block_scales(encoders):
    """bitsandbytes keeps 4-bit block scales in ``weight.quant_state``, outside parameters()."""
    encoder = encoders("bnb-nf4")
    model = encoder.model
    plain = sum(p.nbytes for p in model.parameters()) + sum(b.nbytes for b in model.buffers())
    absmax = sum(
        m.weight.quant_state.absmax.nbytes + m.weight.quant_state.code.nbytes
        for m in model.modules()
        if hasattr(getattr(m, "weight", None), "quant_state")
    )
    assert absmax > 0
    assert encoder.parameter_bytes == plain + absmax


@pytest.mark.skipif(ON_CUDA, reason="the fallback applies on a CPU")
def test_fp16_on_cpu_falls_back_to_bf16_and_says_so(minilm_path, caplog):
    with caplog.at_level(logging.INFO, logger="quant_retriever.models"):
        encoder = load_encoder(minilm_path, "fp16", device="cpu")
    assert encoder.precision == "bf16"
    assert next(encoder.model.parameters()).dtype == torch.bfloat16
    fallbacks = [r for r in caplog.records if "using bf16 instead" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING


# precision -> (what the CUDA path runs: the weight dtype of a linear layer, or its module class)
CUDA_PATHS = {
    "fp16": "torch.float16",
    "int8": "torchao",
    "bnb-int8": "Linear8bitLt",
    "bnb-nf4": "Linear4bit",
    "bnb-fp4": "Linear4bit",
}


@pytest.mark.skipif(not ON_CUDA, reason="the CUDA paths need a CUDA device")
@pytest.mark.parametrize("precision", list(CUDA_PATHS))
def test_cuda_runs_each_precision_in_its_own_kernels(precision, minilm_path, texts, reference, caplog):
    """fp16 stays FP16 (no bf16 substitute), int8 is torchao's scheme, bitsandbytes uses its
    CUDA layers; the vectors stay as close to FP32 as on the CPU."""
    with caplog.at_level(logging.INFO, logger="quant_retriever.models"):
        encoder = load_encoder(minilm_path, precision, device="cuda")
    assert encoder.precision == precision and encoder.device.startswith("cuda")
    linears = [m for m in encoder.model.modules() if "Linear" in type(m).__name__]
    assert linears and all(p.device.type == "cuda" for m in linears for p in m.parameters())
    path = CUDA_PATHS[precision]
    if path == "torchao":
        assert any("torchao" in type(m.weight).__module__ for m in linears if hasattr(m, "weight"))
        assert any("torchao dynamic INT8" in r.getMessage() for r in caplog.records)
    elif path.startswith("torch."):
        assert all(m.weight.dtype == getattr(torch, path.split(".")[1]) for m in linears)
    else:
        assert any(type(m).__name__ == path for m in linears)
    vectors = encoder.encode(texts, batch_size=16)
    cosines = np.einsum("nd,nd->n", vectors, reference)
    assert cosines.mean() >= FLOORS[precision][1], f"{precision} on CUDA: mean cosine {cosines.mean():.4f}"


def test_load_logs_one_info_line(minilm_path, caplog):
    with caplog.at_level(logging.INFO, logger="quant_retriever.models"):
        encoder = load_encoder(minilm_path, "int8", device="cpu")
    infos = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("quant_retriever.models") and r.levelno == logging.INFO
    ]
    assert len(infos) == 1
    message = infos[0]
    assert message.startswith("Using int8 quantization for embeddings (oneDNN dynamic INT8 linear layers")
    assert "384-d" in message
    assert f"{FP32_BYTES / 1e6:.1f} MB -> {encoder.parameter_bytes / 1e6:.1f} MB parameters" in message


def test_int8_token_embeddings_replace_the_float_table(encoders):
    table = encoders("int8").model[0].model.get_input_embeddings()
    assert isinstance(table, Int8Embedding)
    assert table.qweight.dtype == torch.int8 and table.qweight.shape == (30522, 384)


def test_int8_embedding_rounds_within_half_a_step_and_survives_constant_rows():
    torch.manual_seed(0)
    table = torch.nn.Embedding(97, 33)
    with torch.no_grad():
        table.weight[3] = 0.0  # a constant row: the scale floor keeps it finite
        table.weight[5] = 2.5
    quantized = Int8Embedding(table)
    ids = torch.arange(97).reshape(1, 97)
    out = quantized(ids)[0]  # [97, 33]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    step = table.weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((out - table.weight).abs() <= step / 2 + 1e-7).all()
    assert (out[3] == 0).all() and torch.allclose(out[5], torch.full((33,), 2.5))


def test_environment_sets_precision_and_device(minilm_path, monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_PRECISION", "bf16")
    monkeypatch.setenv("QUANT_RETRIEVER_DEVICE", "cpu")
    encoder = load_encoder(minilm_path)
    assert (encoder.precision, encoder.device) == ("bf16", "cpu")


def test_explicit_arguments_win_over_environment(minilm_path, monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_PRECISION", "bf16")
    monkeypatch.setenv("QUANT_RETRIEVER_DEVICE", "no-such-device")
    encoder = load_encoder(minilm_path, precision="fp32", device="cpu")
    assert (encoder.precision, encoder.device) == ("fp32", "cpu")


def test_bad_environment_values_raise_clear_errors(minilm_path, monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_PRECISION", "int3")
    with pytest.raises(ValueError, match=r"'int3' \(from \$QUANT_RETRIEVER_PRECISION\).*bnb-nf4"):
        load_encoder(minilm_path)
    monkeypatch.setenv("QUANT_RETRIEVER_PRECISION", "fp32")
    monkeypatch.setenv("QUANT_RETRIEVER_DEVICE", "gpu0")
    with pytest.raises(ValueError, match=r"'gpu0' \(from \$QUANT_RETRIEVER_DEVICE\)"):
        load_encoder(minilm_path)


def test_unknown_precision_lists_the_valid_ones(minilm_path):
    with pytest.raises(
        ValueError, match="Unknown precision 'int3'.*fp32, fp16, bf16, int8, bnb-int8, bnb-nf4, bnb-fp4"
    ):
        load_encoder(minilm_path, "int3")


@pytest.mark.skipif(ON_CUDA, reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_value_error(minilm_path):
    with pytest.raises(ValueError, match="needs CUDA, which is not available here; usable here: cpu"):
        load_encoder(minilm_path, "fp32", device="cuda")


def test_encode_validates_its_input(encoders):
    encoder = encoders("fp32")
    with pytest.raises(TypeError, match="got a single str"):
        encoder.encode("one text")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        encoder.encode(["fine", 3])
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        encoder.encode(["fine"], batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        encoder.encode(["fine"], batch_size=2.0)
    empty = encoder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_missing_optional_dependencies_name_the_extra(minilm_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"pip install 'quant-retriever\[bnb\]'"):
        load_encoder(minilm_path, "bnb-nf4", device="cpu")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'quant-retriever\[embeddings\]'"):
        load_encoder(minilm_path, "fp32", device="cpu")


def test_int8_on_a_cpu_needs_no_torchao(minilm_path, monkeypatch, texts, reference):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder = load_encoder(minilm_path, "int8", device="cpu")
    assert type(encoder.model[0].model.encoder.layer[0].intermediate.dense) is int8_linear.Int8Linear
    assert np.einsum("nd,nd->n", encoder.encode(texts), reference).mean() >= 0.995


def test_int8_without_onednn_or_torchao_falls_back_to_per_channel_dynamic_quantization(
    minilm_path, monkeypatch, texts, reference
):
    monkeypatch.setattr(int8_linear, "available", lambda: False)
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.warns(UserWarning, match=r"torchao is not installed.*quant-retriever\[int8\]"):
        encoder = load_encoder(minilm_path, "int8", device="cpu")
    linear = encoder.model[0].model.encoder.layer[0].intermediate.dense
    assert type(linear).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert encoder.parameter_bytes <= 0.40 * FP32_BYTES  # packed int8 weights, counted
    cosines = np.einsum("nd,nd->n", encoder.encode(texts), reference)
    assert cosines.mean() >= 0.97


def test_prompts_prefix_queries_and_documents(minilm_path, encoders):
    encoder = load_encoder(minilm_path, "fp32", device="cpu", query_prompt="query: ", document_prompt="passage: ")
    text = ["how do I parse a JSON document"]
    plain = encoder.encode(text)
    query, document = encoder.encode_queries(text), encoder.encode_documents(text)
    assert np.abs(query - plain).max() > 1e-3 and np.abs(document - query).max() > 1e-3
    np.testing.assert_allclose(query, encoder.encode(["query: " + text[0]]), atol=1e-6)
    np.testing.assert_allclose(document, encoder.encode(["passage: " + text[0]]), atol=1e-6)
    # without prompts, queries and documents are the texts as they are
    np.testing.assert_allclose(encoders("fp32").encode_queries(text), plain, atol=1e-6)


def test_evaluate_encoders_reports_fidelity_memory_speed_and_skips(minilm_path, texts, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # bnb-nf4 cannot load "here"
    reports = evaluate_encoders(minilm_path, ["fp32", "int8", "bnb-nf4"], texts, batch_size=16, device="cpu", repeats=1)
    assert [r.precision for r in reports] == ["fp32", "int8", "bnb-nf4"]
    fp32, int8, nf4 = reports
    assert all(isinstance(r, EncoderReport) for r in reports)

    assert fp32.applied_precision == "fp32" and fp32.skipped is None
    assert fp32.mean_cosine == pytest.approx(1.0, abs=1e-6) and fp32.min_cosine == pytest.approx(1.0, abs=1e-6)
    assert fp32.top10_overlap == 1.0
    assert fp32.parameter_bytes == FP32_BYTES and fp32.texts_per_second > 0

    assert int8.applied_precision == "int8"
    assert 0.995 <= int8.mean_cosine <= 1.0 and int8.min_cosine <= int8.mean_cosine
    assert 0.7 <= int8.top10_overlap <= 1.0
    assert int8.parameter_bytes < 0.4 * fp32.parameter_bytes and int8.texts_per_second > 0

    assert nf4.skipped is not None and "quant-retriever[bnb]" in nf4.skipped
    assert nf4.applied_precision is None and nf4.mean_cosine is None
    assert repr(nf4).startswith("EncoderReport(bnb-nf4: skipped, ImportError")
    assert repr(int8).startswith("EncoderReport(int8: 23.6 MB, ") and "texts/s" in repr(int8)


@pytest.mark.filterwarnings("ignore:.*does not implement _stable_hash_for_caching")  # pytest resets our filter
def test_compile_runs_the_transformer_under_torch_compile(minilm_path, texts, reference, caplog):
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    with caplog.at_level(logging.INFO, logger="quant_retriever.models"):
        encoder = load_encoder(minilm_path, "int8", device="cpu", compile=True)
    assert encoder.compiled and "compiled" in repr(encoder)
    assert "torch.compile" in caplog.records[-1].getMessage()
    vectors = encoder.encode(texts, batch_size=16)
    assert counters["stats"]["unique_graphs"] > graphs_before
    # Inductor compiles the rest of the model around the opaque Int8Linear layers; the
    # fidelity to fp32 is the same.
    assert np.einsum("nd,nd->n", vectors, reference).mean() >= 0.995


def test_evaluate_encoders_validates_before_loading(minilm_path, texts):
    with pytest.raises(ValueError, match="Unknown precision 'int3'"):
        evaluate_encoders(minilm_path, ["fp32", "int3"], texts)
    with pytest.raises(ValueError, match="at least 2 texts"):
        evaluate_encoders(minilm_path, ["fp32"], texts[:1])
    with pytest.raises(TypeError, match="precisions must be a list"):
        evaluate_encoders(minilm_path, "fp32", texts)
    with pytest.raises(ValueError, match=r"'int3' \(in compiled\)"):
        evaluate_encoders(minilm_path, ["fp32"], texts, compiled=["int3"])


def test_the_old_module_is_a_deprecated_alias():
    sys.modules.pop("quant_retriever.embeddings", None)
    with pytest.warns(DeprecationWarning, match="quant_retriever.embeddings is deprecated"):
        import quant_retriever.embeddings as old
    assert old.load_encoder is load_encoder and old.Encoder is Encoder
    assert old.evaluate_encoders is evaluate_encoders and old.EncoderReport is EncoderReport
    import quant_retriever

    assert quant_retriever.load_encoder is load_encoder and quant_retriever.evaluate_encoders is evaluate_encoders


def test_importing_changes_no_logging_or_warning_filters():
    """Third-party noise is dropped only while a call that needs it runs (see quiet_third_party)."""
    import subprocess

    code = (
        "import logging, warnings\n"
        "import torch, torch._dynamo, numpy\n"  # they set filters of their own when imported
        "before = list(warnings.filters)\n"
        "import quant_retriever.models, quant_retriever.bench, quant_retriever.cli, quant_retriever.embeddings\n"
        "from quant_retriever.models.loading import _NOISE\n"
        "assert warnings.filters == before, 'warning filters changed'\n"
        "assert not any(logging.getLogger(n).filters for n in _NOISE), 'logging filters installed'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_third_party_noise_is_dropped_only_inside_the_calls_that_cause_it(caplog):
    from quant_retriever.models.loading import quiet_third_party

    noisy = logging.getLogger("bitsandbytes.autograd._functions")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.autograd._functions"):
        with quiet_third_party():
            noisy.warning("MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization")
            noisy.warning("something else that matters")
        noisy.warning("MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else that matters", messages[-1]] and messages[-1].startswith("MatMul8bitLt")
    assert not noisy.filters


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> str:
    """A Hugging Face sequence-classification model directory: a randomly initialised 2-layer
    BERT with one output, as a cross-encoder reranker is."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("cross_encoder")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(root / "model")
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(root / "model")
    return str(root / "model")


def test_load_model_serves_a_cross_encoder_with_the_same_table(tiny_cross_encoder):
    """The loading layer is not specific to sentence embeddings: a CrossEncoder gets the same
    precisions, INT8 layers, per-sequence attention and memory accounting."""
    from quant_retriever.models.loading import load_model
    from quant_retriever.models.memory import parameter_bytes

    pairs = [("abc def", "abc"), ("a", "bcd efg hij klm"), ("", "x"), ("hello world", "world hello")]
    fp32 = load_model("CrossEncoder", tiny_cross_encoder, "fp32", "cpu", compile=False, st_kwargs={})
    int8 = load_model("CrossEncoder", tiny_cross_encoder, "int8", "cpu", compile=False, st_kwargs={})
    assert type(int8.model).__name__ == "CrossEncoder" and int8.precision == "int8"
    inner = int8.model[0].model
    assert any(isinstance(m, int8_linear.Int8Linear) for m in inner.modules())
    assert isinstance(inner.get_input_embeddings(), Int8Embedding)
    assert inner.config._attn_implementation == "quant_retriever_per_sequence"
    assert parameter_bytes(int8.model) < 0.6 * parameter_bytes(fp32.model)
    want, got = fp32.model.predict(pairs), int8.model.predict(pairs)
    np.testing.assert_allclose(got, want, atol=0.05)
    alone = np.array([int8.model.predict([pair])[0] for pair in pairs])
    np.testing.assert_allclose(got, alone, rtol=0, atol=1e-6)  # batch mates change nothing
    with pytest.raises(ValueError, match="model_class must be one of SentenceTransformer, CrossEncoder"):
        load_model("SparseEncoder", tiny_cross_encoder, "fp32", "cpu", compile=False, st_kwargs={})
