"""Unquantized FP16 / FP32 rows, for like-for-like comparisons.

=========  =====================================
tensor      shape
=========  =====================================
codes       [n, dim] float16 or float32 (as stored)
=========  =====================================
"""

from __future__ import annotations

import torch

from quant_retriever.codecs import _native

__all__ = ["encode", "decode", "score"]


def encode(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[n, dim]`` -> ``[n, dim]`` of ``dtype`` (float16 or float32)."""
    return x.to(dtype).contiguous()


def decode(codes: torch.Tensor) -> torch.Tensor:
    """``[n, dim]`` float16/float32 -> float32."""
    return codes.float()


def score(queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[q, dim]`` x ``[n, dim]`` -> ``[q, n]`` float32 inner products (computed in float32;
    FP16 rows through the native CPU kernel when there is one)."""
    if codes.dtype == torch.float16:
        out = _native.dense_scan(queries, codes)
        if out is not None:
            return out
    return queries.float() @ codes.float().T
