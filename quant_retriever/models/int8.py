"""INT8 pieces of a transformer: dynamic INT8 linear layers for the CPU, run by oneDNN's
integer GEMM, and an INT8 token-embedding table (inference only).

The scheme is torchao's ``Int8DynamicActivationInt8WeightConfig``: weights symmetric INT8
per output channel, inputs quantized symmetric INT8 per token at every call, the integer
product rescaled to float32. torchao runs it in eager mode as one pass over memory per step
(find the scales, divide, round, cast, matmul, rescale, add the bias), which on a CPU without
AMX costs more than the INT8 matmul saves. Here a layer (:class:`Int8Linear`) is three calls:
one native pass quantizes the input (``kernels/linear.c``), oneDNN's ``qlinear_pointwise``
multiplies (VNNI instructions where the CPU has them) straight into float32, and one native
pass rescales that output in place and adds the bias.

:func:`quantize_linear_layers` swaps every ``nn.Linear`` of a model and, for BERT-style
blocks, folds more into those passes: the GELU after ``intermediate.dense`` (and the
quantization of its output for ``output.dense``), the residual add and LayerNorm after each
``...Output.dense`` (:class:`Int8AddNorm`), and one quantization of the hidden states for
``query``, ``key`` and ``value`` (:class:`_LastInput`). Each saves a pass over memory and a
new tensor.

=============  ======================================================  =================
tensor         content                                                 shape
=============  ======================================================  =================
packed_weight  INT8 weights in oneDNN's blocked layout (opaque)        [out, in] logical
weight_scale   float32 per output channel: ``max|w_row| / 127``         [out]
bias           float32, or none                                        [out]
=============  ======================================================  =================

Inputs go to oneDNN as uint8 with zero point 128 (its fast path); results match a reference
``(round(x / sx) @ round(w / sw).T) * sx * sw + b`` to float rounding.

Massive activations: BERT-style encoders put one huge value (20-40x the row's RMS, always in
the same hidden dimension) in the hidden states of the tokens that every text has, [CLS] and
[SEP]. Quantized with one scale per token, such a row keeps that value and rounds the rest to
a few steps, and in a short text those two tokens are most of the mean-pooled embedding: an
empty string came out at cosine 0.984 to FP32 while texts of a few words reached 0.995 and
longer ones 0.998. So a row whose largest ``|x|`` exceeds ``SPIKE_RATIO`` (2) times the next
largest is quantized without it, at the scale of the next largest, and the taken-out value is
multiplied by its weight column in a second, small INT8 product over just those rows (the value
is exactly ``127 * |v| / 127``). It costs a few per cent of the rows of a batch and lifts the
empty string to 0.994, short texts to 0.998 and long ones to 0.999 (all-MiniLM-L6-v2).

The token-embedding table is a large share of a small encoder (all-MiniLM-L6-v2: 11.7M of its
22.7M parameters), and the linear-layer quantizers leave it alone, so the integer precisions
also store it as int8 rows with one float scale per row (:class:`Int8Embedding`,
:func:`quantize_token_embeddings`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Collection

import torch

from quant_retriever.kernels import linear as _native
from quant_retriever.kernels.linear import QuantizedRows

__all__ = [
    "Int8Linear",
    "Int8AddNorm",
    "Int8Embedding",
    "available",
    "quantize_linear_layers",
    "quantize_token_embeddings",
    "workspace",
]

logger = logging.getLogger(__name__)

#: A row's largest |x| above this many times the next largest is quantized apart (see above).
SPIKE_RATIO = 2.0


def _per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT8 rows: ``(q [out, in] int8, scale [out] float32)``."""
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).eps)
    return torch.clamp(torch.round(weight / scale[:, None]), -127, 127).to(torch.int8), scale


@functools.cache
def available() -> bool:
    """Whether this torch build has oneDNN's INT8 linear ops and they run here."""
    try:
        layer = Int8Linear(torch.nn.Linear(16, 8))
        layer(torch.randn(3, 16))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


class _Workspace(threading.local):
    """One thread's float32 buffers for :class:`Int8Linear` outputs while :func:`workspace` is
    active: ``(buffer, its storage use count when free)``."""

    def __init__(self) -> None:
        self.depth = 0
        self.buffers: list[tuple[torch.Tensor, int]] = []


_WORKSPACE = _Workspace()


def _use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


@contextlib.contextmanager
def workspace():
    """Inside, this thread's :class:`Int8Linear` layers write their outputs into buffers kept
    across calls (one batch after another) instead of new allocations; they are released when
    the outermost ``with`` ends. Large activations otherwise go through the allocator at every
    layer of every batch, and glibc maps, page-faults and unmaps them each time (int8 MiniLM ran
    30-40% faster with a raised mmap threshold before this). A buffer is reused only when no
    tensor refers to it any more, so a tensor a caller keeps is never overwritten."""
    ws = _WORKSPACE
    ws.depth += 1
    try:
        yield
    finally:
        ws.depth -= 1
        if ws.depth == 0:
            ws.buffers.clear()


def _buffer(shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised ``shape`` view of a free workspace buffer (the smallest that fits, else a
    new one), or a new tensor outside :func:`workspace`."""
    ws = _WORKSPACE
    if ws.depth == 0:
        return torch.empty(shape, dtype=dtype)
    nbytes = shape[0] * shape[1] * dtype.itemsize
    free = [(b, c) for b, c in ws.buffers if b.numel() >= nbytes and _use_count(b) == c]
    if free:
        buf = min(free, key=lambda bc: bc[0].numel())[0]
    else:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        ws.buffers.append((buf, _use_count(buf)))
    return buf[:nbytes].view(dtype).view(shape)


class _LastInput:
    """The last input a group of :class:`Int8Linear` layers quantized, with its codes, so the
    next layer of the group that reads the very same tensor skips quantizing it again.

    Groups are only the layers known to read one tensor back to back, with nothing between
    that could change it in place: a BERT-style attention's ``query``, ``key`` and ``value``,
    and an ``intermediate.dense`` with its GELU folded in, whose output goes straight to
    ``output.dense`` (it quantizes that output in the pass that writes it). Identity is the
    test: inference-mode tensors carry no version counter.
    """

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: tuple[torch.Tensor, QuantizedRows] | None = None

    def get(self, x: torch.Tensor) -> QuantizedRows | None:
        entry = self.entry  # one read: another thread may replace it
        return entry[1] if entry is not None and entry[0] is x else None

    def put(self, x: torch.Tensor, rows: QuantizedRows) -> None:
        self.entry = (x, rows)


def quantize_rows(x: torch.Tensor, spike_ratio: float = SPIKE_RATIO) -> QuantizedRows:
    """Per-row symmetric INT8 of float32 rows ``x [m, k]`` with massive activations taken out
    (see the module docstring); the native pass, else the same steps in torch."""
    x = x.float().contiguous()
    done = _native.quantize_rows_u8(x, spike_ratio, _buffer)
    return done if done is not None else _quantize_rows_torch(x, spike_ratio)


def _quantize_rows_torch(x: torch.Tensor, spike_ratio: float) -> QuantizedRows:
    magnitude = x.abs()
    amax, col = magnitude.max(dim=1)  # [m], [m]
    # the next largest |x|: the largest of the rest (amax itself when amax occurs twice)
    rest = magnitude.scatter(1, col[:, None], -1.0).amax(dim=1) if x.shape[1] > 1 else amax
    spike = (amax > spike_ratio * rest) if spike_ratio > 0 else torch.zeros_like(amax, dtype=torch.bool)
    kept = torch.where(spike, rest, amax)
    scale = torch.where(kept > 0, kept / 127.0, 1.0)
    q = torch.round(x * (1.0 / scale)[:, None]) + 128
    rows = spike.nonzero().flatten()
    q[rows, col[rows]] = 128
    spike_col = torch.where(spike, col, -1).to(torch.int32)
    spike_val = torch.where(spike, x.gather(1, col[:, None])[:, 0], 0.0)
    return QuantizedRows(q.to(torch.uint8), scale, spike_col, spike_val, len(rows))


class Int8Linear(torch.nn.Module):
    """CPU stand-in for an ``nn.Linear`` (float32 in and out); see the module docstring."""

    def __init__(self, linear: torch.nn.Linear, gelu: bool = False, group: _LastInput | None = None) -> None:
        super().__init__()
        self.group = group
        weight = linear.weight.detach().float().cpu()
        q, scale = _per_channel(weight)
        self.out_features, self.in_features = weight.shape
        self.packed_weight = torch.ops.onednn.qlinear_prepack(q, None)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("_zero_point", torch.zeros(1, dtype=torch.int64), persistent=False)  # weights: symmetric
        bias = None if linear.bias is None else linear.bias.detach().float().cpu().contiguous()
        self.register_buffer("bias", bias)
        self.gelu = gelu

    def product(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The INT8 matmul of ``x [..., in]``: ``(out [m, out] float32 without the input scales,
        input scales [m])``, ``m`` the number of tokens; massive activations included."""
        rows = self.group.get(x) if self.group is not None else None
        if rows is None:
            rows = quantize_rows(x.reshape(-1, self.in_features))
            if self.group is not None:
                self.group.put(x, rows)
        out = self._matmul(rows.q)
        if rows.spikes:
            self._add_spikes(out, rows)
        return out, rows.scale

    def _matmul(self, q: torch.Tensor) -> torch.Tensor:
        """``q [m, in]`` uint8 (zero point 128) times the INT8 weights: ``[m, out]`` float32,
        the weight scales applied."""
        if _WORKSPACE.depth:  # oneDNN adds the product into a zeroed buffer ("sum" post-op)
            out = _buffer((q.shape[0], self.out_features), torch.float32).zero_()
            return torch.ops.onednn.qlinear_pointwise.binary(
                q, 1.0, 128, self.packed_weight, self.weight_scale, self._zero_point, out, None, 1.0, 0,
                torch.float32, 1.0, 0, "sum", 1.0, "none", [], "",
            )  # fmt: skip
        return torch.ops.onednn.qlinear_pointwise(
            q, 1.0, 128, self.packed_weight, self.weight_scale, self._zero_point, None, 1.0, 0,
            torch.float32, "none", [], "",
        )  # fmt: skip

    def _add_spikes(self, out: torch.Tensor, rows: QuantizedRows) -> None:
        """Add ``v * w[:, col]`` of each row's massive activation to ``out`` (in its units,
        before the input scale): ``v = sign(v) * 127 * (|v| / 127)``, one INT8 product over
        the rows that have one."""
        picked = (rows.spike_col >= 0).nonzero().flatten()  # [r]
        cols, values = rows.spike_col[picked].long(), rows.spike_val[picked]
        q = torch.full((len(picked), self.in_features), 128, dtype=torch.uint8)
        q[torch.arange(len(picked)), cols] = torch.where(values > 0, 255, 1).to(torch.uint8)
        step = values.abs() / 127.0 / rows.scale[picked]  # [r]
        out.index_add_(0, picked, self._matmul(q) * step[:, None])

    @torch.compiler.disable  # ctypes and oneDNN calls: opaque to torch.compile
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, scale = self.product(x)
        y = out.view(*x.shape[:-1], self.out_features)
        quantize = self.gelu and self.group is not None
        done = _native.rescale_rows_(
            out, scale, self.bias, self.gelu, quantize=quantize, spike_ratio=SPIKE_RATIO, empty=_buffer
        )
        if isinstance(done, QuantizedRows):
            self.group.put(y, done)
        elif not done:
            self.rescale_in_torch(out, scale)
            if self.gelu:
                torch.ops.aten.gelu.out(out, out=out)
        return y

    def rescale_in_torch(self, out: torch.Tensor, scale: torch.Tensor) -> None:
        """``out * scale[:, None] + bias`` in place: what the native passes start with."""
        out.mul_(scale[:, None])
        if self.bias is not None:
            out.add_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, int8 weights and inputs" + (", gelu" if self.gelu else "")
        )


class Int8AddNorm(torch.nn.Module):
    """A BERT block's output: ``LayerNorm(dropout(dense(h)) + input_tensor)`` at inference
    (dropout off), the rescale, bias, residual and normalisation in one pass after the INT8
    matmul. Keeps the names ``dense`` and ``LayerNorm`` of the module it replaces."""

    def __init__(self, dense: Int8Linear, norm: torch.nn.LayerNorm) -> None:
        super().__init__()
        self.dense, self.LayerNorm = dense, norm

    @torch.compiler.disable
    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        out, scale = self.dense.product(hidden_states)
        residual = input_tensor.reshape(out.shape).float().contiguous()
        if not _native.rescale_add_layernorm_(out, scale, self.dense.bias, residual, self.LayerNorm):
            self.dense.rescale_in_torch(out, scale)
            out = self.LayerNorm(out.add_(residual))
        return out.view(*hidden_states.shape[:-1], self.dense.out_features)


def _is_add_norm(module: torch.nn.Module) -> bool:
    """A BERT-style ``...Output`` block: exactly ``dense``, ``LayerNorm`` (float32, affine) and
    ``dropout``, called as ``forward(hidden_states, input_tensor)``."""
    children = dict(module.named_children())
    norm = children.get("LayerNorm")
    return (
        type(module).__name__.endswith("Output")
        and children.keys() == {"dense", "LayerNorm", "dropout"}
        and type(children["dense"]) is torch.nn.Linear
        and type(norm) is torch.nn.LayerNorm
        and isinstance(children["dropout"], torch.nn.Dropout)
        and norm.weight is not None
        and norm.bias is not None
        and norm.weight.dtype == torch.float32
        and len(norm.normalized_shape) == 1
        and type(module).forward.__code__.co_varnames[1:3] == ("hidden_states", "input_tensor")
    )


def _is_exact_gelu(module: object) -> bool:
    """transformers' ``GELUActivation`` (erf GELU), or ``nn.GELU()``."""
    if isinstance(module, torch.nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is torch.nn.functional.gelu


def quantize_linear_layers(model: torch.nn.Module, skip: Collection[int] = ()) -> int:
    """Replace every ``nn.Linear`` in ``model`` by :class:`Int8Linear`, in place; returns how
    many. A BERT-style ``dense`` layer followed by an erf-GELU ``intermediate_act_fn`` gets the
    GELU folded in (the activation becomes ``nn.Identity``), ``...Output`` blocks become
    :class:`Int8AddNorm`, and :class:`_LastInput` groups share quantized inputs. Modules whose
    ``id`` is in ``skip`` (and their children) stay as they are. For inference: dropout is
    taken to be off."""
    kept = {id(sub) for m in model.modules() if id(m) in skip for sub in m.modules()}
    is_linear = lambda m: type(m) is torch.nn.Linear and id(m) not in kept  # noqa: E731  (subclasses may do more)
    modules = list(model.modules())
    gelu_blocks = [
        m
        for m in modules
        if is_linear(getattr(m, "dense", None)) and _is_exact_gelu(getattr(m, "intermediate_act_fn", None))
    ]
    gelu_after = {id(m.dense) for m in gelu_blocks}
    groups: dict[int, _LastInput] = {}
    for module in modules:
        qkv = [getattr(module, n, None) for n in ("query", "key", "value")]
        if all(map(is_linear, qkv)):
            groups.update(dict.fromkeys(map(id, qkv), _LastInput()))
        ffn1 = getattr(getattr(module, "intermediate", None), "dense", None)
        ffn2 = getattr(getattr(module, "output", None), "dense", None)
        if id(ffn1) in gelu_after and is_linear(ffn2):
            groups.update(dict.fromkeys((id(ffn1), id(ffn2)), _LastInput()))
    for block in gelu_blocks:
        block.intermediate_act_fn = torch.nn.Identity()
    add_norms = [(parent, name, block) for parent in modules for name, block in parent.named_children()]
    add_norms = [(p, name, block) for p, name, block in add_norms if _is_add_norm(block) and id(block) not in kept]
    count = 0
    for module in modules:
        for name, child in list(module.named_children()):
            if is_linear(child):
                setattr(module, name, Int8Linear(child, gelu=id(child) in gelu_after, group=groups.get(id(child))))
                count += 1
    for parent, name, block in add_norms:
        setattr(parent, name, Int8AddNorm(block.dense, block.LayerNorm))
    return count


class Int8Embedding(torch.nn.Module):
    """``nn.Embedding`` stand-in: int8 rows, one float32 scale per row, dequantized on lookup.

    Symmetric per row: ``scale = max|row| / 127`` (floored), ``q = clamp(round(row / scale),
    -127, 127)``. Only the looked-up rows are dequantized.
    """

    # qweight: [num_embeddings, embedding_dim] int8;  scale: [num_embeddings, 1] float32

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        super().__init__()
        weight = embedding.weight.detach().float()
        scale = (weight.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=torch.finfo(torch.float32).eps)
        self.register_buffer("qweight", torch.clamp(torch.round(weight / scale), -127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = embedding.padding_idx
        self.output_dtype = embedding.weight.dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # rows: [..., embedding_dim] int8 -> float32, times their scales: [..., 1]
        rows = torch.nn.functional.embedding(input_ids, self.qweight).float()
        return (rows * torch.nn.functional.embedding(input_ids, self.scale)).to(self.output_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


def quantize_token_embeddings(transformer: torch.nn.Module) -> bool:
    """Swap a Hugging Face model's token-embedding table for :class:`Int8Embedding`, in place;
    False (nothing changed) when it has none that is an ``nn.Embedding``."""
    get, put = getattr(transformer, "get_input_embeddings", None), getattr(transformer, "set_input_embeddings", None)
    try:
        table = get() if callable(get) else None
    except NotImplementedError:
        table = None
    if not isinstance(table, torch.nn.Embedding) or not callable(put):
        logger.debug("Token embeddings of %s are not an nn.Embedding; left as they are.", type(transformer).__name__)
        return False
    put(Int8Embedding(table))
    return True
