"""Unquantized FP16 / FP32 rows, for like-for-like comparisons.

=========  =====================================
tensor      shape
=========  =====================================
codes       [n, dim] float16 or float32 (as stored)
=========  =====================================
"""

from __future__ import annotations

import torch

__all__ = ["encode", "decode", "score"]


def encode(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[n, dim]`` -> ``[n, dim]`` of ``dtype`` (float16 or float32)."""
    return x.to(dtype).contiguous()


def decode(codes: torch.Tensor) -> torch.Tensor:
    """``[n, dim]`` float16/float32 -> float32."""
    return codes.float()


def score(queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[q, dim]`` x ``[n, dim]`` -> ``[q, n]`` float32 inner products (computed in float32)."""
    return queries.float() @ codes.float().T
