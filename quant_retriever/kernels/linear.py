"""ctypes wrappers of the encoder's INT8 linear-layer passes in ``linear.c`` (CPU tensors only).

Each returns ``None``/``False`` when the kernels are unavailable; callers then run eager torch.
"""

from __future__ import annotations

import torch

from quant_retriever.kernels.build import Library, signature

__all__ = ["LIBRARY", "quantize_rows_u8", "rescale_rows_", "rescale_add_layernorm_"]

LIBRARY = Library(
    "linear.c",
    {
        "quantize_rows_u8": signature("p", "i64", "i64", "p", "p", "i32"),
        "rescale_add_layernorm": signature("p", "i64", "i64", "p", "p", "p", "p", "p", "f32", "i32"),
        "rescale_rows": signature("p", "i64", "i64", "p", "p", "i32", "p", "p", "i32"),
    },
)


def _usable(*tensors: torch.Tensor):
    if any(t.device.type != "cpu" for t in tensors):
        return None
    return LIBRARY.get()


def quantize_rows_u8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row symmetric INT8 of contiguous float32 rows ``x [m, k]``: ``(q [m, k] uint8 =
    round(x / scale) + 128, scale [m] float32)``."""
    lib = _usable(x)
    if lib is None:
        return None
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.uint8)
    scale = torch.empty(m, dtype=torch.float32)
    lib.quantize_rows_u8(x.data_ptr(), m, k, q.data_ptr(), scale.data_ptr(), torch.get_num_threads())
    return q, scale


def rescale_rows_(
    y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False, quantize: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | bool:
    """``y [m, n] = y * scale[:, None] + bias`` in place (contiguous float32), then the erf
    GELU when ``gelu``. With ``quantize``, returns ``quantize_rows_u8`` of the result (one
    pass), else True. False, doing nothing, when the kernels are unavailable."""
    lib = _usable(y)
    if lib is None:
        return False
    m, n = y.shape
    q = torch.empty(m, n, dtype=torch.uint8) if quantize else None
    qscale = torch.empty(m, dtype=torch.float32) if quantize else None
    lib.rescale_rows(
        y.data_ptr(), m, n, scale.data_ptr(), None if bias is None else bias.data_ptr(), int(gelu),
        None if q is None else q.data_ptr(), None if qscale is None else qscale.data_ptr(), torch.get_num_threads(),
    )
    return (q, qscale) if quantize else True


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
        y.data_ptr(), m, n, scale.data_ptr(), None if bias is None else bias.data_ptr(), residual.data_ptr(),
        norm.weight.data_ptr(), norm.bias.data_ptr(), norm.eps, torch.get_num_threads(),
    )
    return True
