"""Optional ``torch.compile`` of the hot CPU scan kernels, with a one-time eager fallback.

The kernels are plain torch; on CUDA (or anywhere compiling is disabled) they run eagerly.
On the CPU, inductor needs a C++ compiler at run time: if compiling fails for any reason the
kernel warns once and stays eager. ``QUANT_RETRIEVER_COMPILE=0`` disables compiling.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., torch.Tensor])


def compile_enabled() -> bool:
    return os.environ.get("QUANT_RETRIEVER_COMPILE", "1").lower() not in {"0", "false", "no", "off"}


def cpu_compiled(fn: F) -> F:
    """Wrap ``fn`` so CPU tensors go through ``torch.compile(fn)``; everything else is eager."""
    state: dict = {"compiled": None, "failed": False}

    @functools.wraps(fn)
    def wrapper(*args: torch.Tensor) -> torch.Tensor:
        if state["failed"] or not compile_enabled() or args[0].device.type != "cpu":
            return fn(*args)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=False)
        try:
            return state["compiled"](*args)
        except Exception as exc:  # no C++ compiler, unsupported op, ...
            state["failed"] = True
            warnings.warn(
                f"torch.compile of {fn.__name__} failed ({type(exc).__name__}: {exc}); "
                "falling back to eager torch, which is slower on the CPU.",
                RuntimeWarning,
                stacklevel=2,
            )
            return fn(*args)

    return wrapper  # type: ignore[return-value]
