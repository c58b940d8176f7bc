"""quant_retriever.models.int8: oneDNN INT8 linear layers against the scheme written out in
float64 here, the native quantizer against its torch twin bit for bit, and a small randomly
initialised BERT."""

from __future__ import annotations

import copy

import pytest
import torch

from quant_retriever.kernels import linear as _native
from quant_retriever.models import int8 as int8_linear
from quant_retriever.models.int8 import SPIKE_RATIO, Int8AddNorm, Int8Linear, quantize_linear_layers, quantize_rows

pytestmark = pytest.mark.skipif(not int8_linear.available(), reason="this torch build lacks oneDNN's INT8 ops")


def reference_rows(x: torch.Tensor, ratio: float = SPIKE_RATIO) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Symmetric per-row INT8 of ``x [m, k]``, row by row in plain Python: (q [m, k] float64,
    scale [m] float32, [(column, value) or None per row]). A row's largest |x| above ``ratio``
    times the next largest is taken out and the row quantized without it."""
    x = x.float()
    qs, scales, spikes = [], [], []
    for row in x:
        mags = sorted(row.abs().tolist(), reverse=True)
        amax, nxt = mags[0], (mags[1] if len(mags) > 1 else mags[0])
        spike = None
        if ratio > 0 and amax > ratio * nxt:
            col = int(row.abs().argmax())
            spike, amax = (col, float(row[col])), nxt
        scale = torch.tensor(amax / 127 if amax > 0 else 1.0, dtype=torch.float32)
        q = torch.round(row * (1.0 / scale)).double()
        if spike is not None:
            q[spike[0]] = 0
        qs.append(q)
        scales.append(scale)
        spikes.append(spike)
    return torch.stack(qs), torch.stack(scales), spikes


def reference(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """INT8 inputs (as above) x per-channel INT8 weights, in float64 from the codes; a taken-out
    value meets the dequantized weights exactly."""
    qx, sx, spikes = reference_rows(x.reshape(-1, linear.in_features))
    w = linear.weight.detach()
    sw = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).eps)
    qw = torch.clamp(torch.round(w / sw[:, None]), -127, 127).double()
    out = (qx @ qw.T) * sx.double()[:, None] * sw.double()
    for i, spike in enumerate(spikes):
        if spike is not None:
            out[i] += spike[1] * qw[:, spike[0]] * sw.double()
    return out if linear.bias is None else out + linear.bias.detach().double()


def rows_with_every_case(k: int, seed: int) -> torch.Tensor:
    """Random rows plus the cases that matter: a massive value (positive and negative), two
    equal largest values, one nonzero value, a zero row, and a largest value just under and
    just over the spike ratio."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, k, generator=g)
    x[1, k // 2] = 40.0
    x[2, 0] = -35.0
    x[3, :] = 0.1
    x[3, 1] = x[3, k - 1] = 9.0  # tied largest: no spike
    x[4, :] = 0.0
    x[4, k - 1] = 3.0  # the only nonzero value: a spike, the rest quantizes to 0
    x[5, :] = 0.0
    x[6, :] = 1.0
    x[6, 2 % k] = 1.999  # just under 2x the next largest
    x[7, :] = 1.0
    x[7, 2 % k] = 2.001  # just over
    return x


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


@pytest.mark.parametrize("k", [3, 16, 33, 384, 1536])
def test_quantize_rows_matches_the_reference_bit_for_bit(k, kernel_path):
    x = rows_with_every_case(k, seed=k)
    got = quantize_rows(x)
    q, scale, spikes = reference_rows(x)
    assert torch.equal(got.q.double() - 128, q) and torch.equal(got.scale, scale)
    assert got.spike_col.tolist() == [-1 if s is None else s[0] for s in spikes]
    assert got.spike_val.tolist() == [0.0 if s is None else s[1] for s in spikes]
    assert got.spikes == sum(s is not None for s in spikes) >= 4
    assert spikes[1] == (k // 2, 40.0) and spikes[2] == (0, -35.0) and spikes[4] == (k - 1, 3.0)
    assert spikes[3] is None and spikes[5] is None and spikes[6] is None and spikes[7] is not None
    assert torch.equal(got.q[4], torch.full((k,), 128, dtype=torch.uint8))  # nothing left but the spike
    # ratio 0 turns the decomposition off
    plain = quantize_rows(x, spike_ratio=0.0)
    assert plain.spikes == 0 and (plain.spike_col == -1).all()
    assert torch.equal(plain.scale, reference_rows(x, ratio=0.0)[1])


def test_a_massive_activation_no_longer_drowns_its_row(kernel_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 64)
    x = torch.randn(8, 384)
    x[:, 99] = 40.0  # as BERT's [CLS] token carries in one hidden dimension
    layer = Int8Linear(linear)
    with torch.inference_mode():
        got = layer(x)
        full = linear(x)
        quantized = quantize_rows(x, spike_ratio=0.0)  # the old scheme, one scale for the whole row
        old = layer._matmul(quantized.q) * quantized.scale[:, None] + linear.bias
    error, old_error = (got - full).norm(dim=1), (old - full).norm(dim=1)
    assert (error < old_error / 4).all(), (error, old_error)


def test_fused_gelu_and_quantize_match_torch(kernel_path):
    if kernel_path == "eager":
        pytest.skip("native kernels only")
    y = torch.linspace(-10, 10, 40_000).view(-1, 100).contiguous()
    y[::7, 3] = 500.0  # massive activations in some rows
    ones = torch.ones(y.shape[0])
    fused = y.clone()
    done = _native.rescale_rows_(fused, ones, None, gelu=True, quantize=True, spike_ratio=SPIKE_RATIO)
    torch.testing.assert_close(fused, torch.nn.functional.gelu(y), rtol=0, atol=2e-6)  # erf to ~1e-7
    alone = quantize_rows(fused)
    assert done.spikes == alone.spikes > 0
    assert all(torch.equal(a, b) for a, b in zip(done[:4], alone[:4]))
    # scale and bias, then GELU
    bias = torch.randn(100)
    out = y.clone()
    assert _native.rescale_rows_(out, ones * 0.5, bias, gelu=True) is True
    torch.testing.assert_close(out, torch.nn.functional.gelu(y * 0.5 + bias), rtol=0, atol=2e-6)


def tiny_bert(act: str = "gelu"):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
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


def test_workspace_gives_the_same_results_and_never_overwrites_a_kept_tensor():
    """Inside ``workspace()`` layer outputs come from reused buffers: the values are those of
    fresh allocations, a tensor the caller still holds is never written again, and the buffers
    are let go when the outermost ``with`` ends."""
    torch.manual_seed(0)
    layer = Int8Linear(torch.nn.Linear(48, 96))
    xs = [torch.randn(n, 48) for n in (40, 17, 40, 3)]
    expected = [layer(x).clone() for x in xs]
    with int8_linear.workspace():
        kept = [layer(x) for x in xs]  # all held at once: none may share memory
        assert len({t.untyped_storage().data_ptr() for t in kept}) == len(kept)
        for got, want in zip(kept, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        del kept
        first = layer(xs[0])
        ptr = first.untyped_storage().data_ptr()
        del first
        again = layer(xs[2])  # a free buffer is reused, not a new one
        assert again.untyped_storage().data_ptr() == ptr
        torch.testing.assert_close(again, expected[2], rtol=0, atol=0)
        with int8_linear.workspace():  # nested: the outer one owns the buffers
            pass
        assert int8_linear._WORKSPACE.buffers
    assert not int8_linear._WORKSPACE.buffers


def test_workspace_buffers_are_per_thread():
    import threading

    layer = Int8Linear(torch.nn.Linear(32, 64))
    x = torch.randn(20, 32)
    want = layer(x).clone()
    seen = []

    def work():
        with int8_linear.workspace():
            seen.append(len(int8_linear._WORKSPACE.buffers))
            torch.testing.assert_close(layer(x), want, rtol=0, atol=0)

    with int8_linear.workspace():
        held = layer(x)
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        torch.testing.assert_close(held, want, rtol=0, atol=0)
    assert seen == [0]  # the other thread started with none of this thread's buffers
