"""ctypes wrappers of the encoder's INT8 linear-layer passes in ``linear.c`` (CPU tensors only).

Each returns ``None``/``False`` when the kernels are unavailable; callers then run eager torch.
A quantized input is a :class:`QuantizedRows`; see ``linear.c`` for the massive activations
that its ``spike_col``/``spike_val`` hold.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from quant_retriever.kernels.build import Library, signature

__all__ = ["LIBRARY", "QuantizedRows", "quantize_rows_u8", "rescale_rows_", "rescale_add_layernorm_"]

LIBRARY = Library(
    "linear.c",
    {
        "quantize_rows_u8": signature("p", "i64", "i64", "p", "p", "f32", "p", "p", "i32"),
        "rescale_add_layernorm": signature("p", "i64", "i64", "p", "p", "p", "p", "p", "f32", "i32"),
        "rescale_rows": signature("p", "i64", "i64", "p", "p", "i32", "p", "p", "f32", "p", "p", "i32"),
    },
)


class QuantizedRows(NamedTuple):
    """Float rows ``[m, k]`` as oneDNN's INT8 input: ``q`` uint8 ``[m, k]`` (``round(x / scale) +
    128``), ``scale`` float32 ``[m]``; a row's massive activation, taken out of ``q``, at column
    ``spike_col`` int32 ``[m]`` (-1: none) with value ``spike_val`` float32 ``[m]``;
    ``spikes`` rows have one."""

    q: torch.Tensor
    scale: torch.Tensor
    spike_col: torch.Tensor
    spike_val: torch.Tensor
    spikes: int


def _rows(m: int, k: int, empty=None) -> tuple[torch.Tensor, ...]:
    """Outputs of a quantizing pass; ``empty(shape, dtype)`` allocates the codes (default:
    ``torch.empty``)."""
    return (
        torch.empty((m, k), dtype=torch.uint8) if empty is None else empty((m, k), torch.uint8),
        torch.empty(m, dtype=torch.float32),
        torch.empty(m, dtype=torch.int32),
        torch.empty(m, dtype=torch.float32),
    )


def _usable(*tensors: torch.Tensor):
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return LIBRARY.get()


def quantize_rows_u8(x: torch.Tensor, spike_ratio: float, empty=None) -> QuantizedRows | None:
    """Per-row symmetric INT8 of contiguous float32 rows ``x [m, k]``, a row's largest value
    taken out when it exceeds ``spike_ratio`` times the next largest (0: never). ``empty(shape,
    dtype)`` allocates the codes (default: ``torch.empty``)."""
    lib = _usable(x)
    if lib is None:
        return None
    m, k = x.shape
    out = _rows(m, k, empty)
    spikes = lib.quantize_rows_u8(
        x.data_ptr(),
        m,
        k,
        *(t.data_ptr() for t in out[:2]),
        spike_ratio,
        *(t.data_ptr() for t in out[2:]),
        torch.get_num_threads(),
    )
    return QuantizedRows(*out, spikes)


def rescale_rows_(
    y: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    gelu: bool = False,
    quantize: bool = False,
    spike_ratio: float = 0.0,
    empty=None,
) -> QuantizedRows | bool:
    """``y [m, n] = y * scale[:, None] + bias`` in place (contiguous float32), then the erf
    GELU when ``gelu``. With ``quantize``, returns ``quantize_rows_u8(y, spike_ratio)`` of the
    result (one pass), else True. False, doing nothing, when the kernels are unavailable."""
    lib = _usable(y)
    if lib is None:
        return False
    m, n = y.shape
    out = _rows(m, n, empty) if quantize else (None,) * 4
    pointers = [None if t is None else t.data_ptr() for t in out]
    spikes = lib.rescale_rows(
        y.data_ptr(),
        m,
        n,
        scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        int(gelu),
        *pointers[:2],
        spike_ratio,
        *pointers[2:],
        torch.get_num_threads(),
    )
    return QuantizedRows(*out, spikes) if quantize else True


def rescale_add_layernorm_(
    y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, norm: torch.nn.LayerNorm
) -> bool:
    """``y [m, n] = norm(y * scale[:, None] + bias + residual)`` in place (contiguous float32,
    ``norm`` over the last dimension with float32 weight and bias); False, doing nothing, when
    the kernels are unavailable."""
    lib = _usable(y)
    if lib is None:
        return False
    m, n = y.shape
    lib.rescale_add_layernorm(
        y.data_ptr(),
        m,
        n,
        scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        residual.data_ptr(),
        norm.weight.data_ptr(),
        norm.bias.data_ptr(),
        norm.eps,
        torch.get_num_threads(),
    )
    return True
