"""quant_retriever.models.int8: oneDNN INT8 linear layers against the scheme written out in
torch, and on a small randomly initialised BERT."""

from __future__ import annotations

import copy

import pytest
import torch

from quant_retriever.models import int8 as int8_linear
from quant_retriever.kernels import linear as _native
from quant_retriever.models.int8 import Int8AddNorm, Int8Linear, quantize_linear_layers

pytestmark = pytest.mark.skipif(not int8_linear.available(), reason="this torch build lacks oneDNN's INT8 ops")


def reference(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """Symmetric per-token INT8 inputs x per-channel INT8 weights, in float64 from the codes."""
    x = x.reshape(-1, linear.in_features).float()
    amax = x.abs().amax(dim=1)
    sx = torch.where(amax > 0, amax / 127, 1.0)
    qx = torch.round(x * (1.0 / sx)[:, None]).double()
    w = linear.weight.detach()
    sw = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).eps)
    qw = torch.clamp(torch.round(w / sw[:, None]), -127, 127).double()
    out = (qx @ qw.T) * sx.double()[:, None] * sw.double()
    return out if linear.bias is None else out + linear.bias.detach().double()


@pytest.mark.parametrize("shape", [(7, 5), (97, 33), (384, 1536)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", [False, True])
def test_int8_linear_computes_the_scheme(shape, bias, gelu, kernel_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(*shape, bias=bias)
    x = torch.randn(2, 3, 9, shape[0])[:, :, ::2]  # [2, 3, 5, in], not contiguous
    x[0, 0, 0] = 0.0  # a zero token: scale 1, output = bias
    layer = Int8Linear(linear, gelu=gelu)
    with torch.inference_mode():
        got = layer(x)
    assert got.shape == (2, 3, 5, shape[1]) and got.dtype == torch.float32
    want = reference(x, linear)
    if gelu:
        want = torch.nn.functional.gelu(want)
    torch.testing.assert_close(got.reshape(-1, shape[1]).double(), want, rtol=1e-5, atol=1e-5)
    zero = torch.nn.functional.gelu(linear.bias) if gelu and bias else (linear.bias if bias else torch.zeros(shape[1]))
    torch.testing.assert_close(got[0, 0, 0], zero.detach(), rtol=1e-6, atol=1e-6)
    # and close to the float layer it replaces
    full = linear(x) if not gelu else torch.nn.functional.gelu(linear(x))
    assert torch.nn.functional.cosine_similarity(got.flatten(), full.detach().flatten(), dim=0) > 0.999


def test_fused_gelu_and_quantize_match_torch(kernel_path):
    if kernel_path == "eager":
        pytest.skip("native kernels only")
    y = torch.linspace(-10, 10, 40_000).view(-1, 100).contiguous()
    ones = torch.ones(y.shape[0])
    fused = y.clone()
    q, scale = _native.rescale_rows_(fused, ones, None, gelu=True, quantize=True)
    torch.testing.assert_close(fused, torch.nn.functional.gelu(y), rtol=0, atol=2e-6)  # erf to ~1e-7
    q2, scale2 = _native.quantize_rows_u8(fused)
    assert torch.equal(q, q2) and torch.equal(scale, scale2)
    # scale and bias, then GELU
    bias = torch.randn(100)
    out = y.clone()
    assert _native.rescale_rows_(out, ones * 0.5, bias, gelu=True) is True
    torch.testing.assert_close(out, torch.nn.functional.gelu(y * 0.5 + bias), rtol=0, atol=2e-6)


def tiny_bert(act: str = "gelu"):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        hidden_act=act,
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def run(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_quantize_linear_layers_folds_gelu_add_norm_and_shares_quantized_inputs(kernel_path):
    fp32 = tiny_bert()
    model = copy.deepcopy(fp32)
    assert quantize_linear_layers(model) == 2 * 6 + 1  # per block q, k, v, out, 2 feed-forward; pooler
    block = model.encoder.layer[0]
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert isinstance(block.intermediate.intermediate_act_fn, torch.nn.Identity) and block.intermediate.dense.gelu
    attn = block.attention.self
    assert attn.query.group is attn.key.group is attn.value.group is not None
    assert block.intermediate.dense.group is block.output.dense.group is not None
    assert block.attention.output.dense.group is None and not block.output.dense.gelu
    assert isinstance(block.attention.output, Int8AddNorm) and isinstance(block.output, Int8AddNorm)

    ids = torch.randint(0, 100, (3, 17))
    got, want = run(model, ids), run(fp32, ids)
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.99
    # each block ends in a LayerNorm with weight 1 and bias 0 at initialisation
    torch.testing.assert_close(got.mean(dim=-1), torch.zeros(3, 17), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.std(dim=-1, unbiased=False), torch.ones(3, 17), atol=1e-3, rtol=0)
    # sharing quantized inputs changes nothing: the same codes, computed once
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m.group = None
    assert torch.equal(run(model, ids), got)


def test_other_activations_are_left_alone():
    model = tiny_bert("gelu_new")  # tanh approximation: not folded
    quantize_linear_layers(model)
    block = model.encoder.layer[0]
    assert not isinstance(block.intermediate.intermediate_act_fn, torch.nn.Identity)
    assert not block.intermediate.dense.gelu and block.intermediate.dense.group is None
    assert block.attention.self.query.group is not None
    ids = torch.randint(0, 100, (2, 9))
    assert torch.isfinite(run(model, ids)).all()
