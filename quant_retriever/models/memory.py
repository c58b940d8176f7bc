"""Memory of a model's parameters with quantized weights counted at their real size.

``parameters()`` and ``buffers()`` miss or misreport what quantizers keep: torchao's wrapper
tensors report the float dtype per element, bitsandbytes keeps block and row scales beside
the weight, ``torch.ao`` packs weights into opaque parameters and :class:`~quant_retriever.
models.int8.Int8Linear` into a oneDNN tensor. :func:`parameter_bytes` finds all of them and
counts each storage once. It reads the model as it is now: bitsandbytes repacks 4-bit
weights for its CPU kernel on the first forward, so a count taken before that goes stale.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["parameter_bytes", "fp32_bytes"]


def _leaf_tensors(tensor: Any) -> list[torch.Tensor]:
    """The plain tensors that hold ``tensor``'s data.

    torchao's quantized weights are wrapper subclasses whose own ``element_size()`` reports
    the logical float dtype; their storage is the inner tensors that ``__tensor_flatten__``
    names (``qdata`` int8, ``scale``, ...). A torch per-channel quantized tensor keeps its
    scales and zero points beside its int8 storage.
    """
    if not isinstance(tensor, torch.Tensor):
        return []
    if hasattr(tensor, "__tensor_flatten__"):
        inner_names, _ = tensor.__tensor_flatten__()
        if inner_names:
            return [leaf for n in inner_names for leaf in _leaf_tensors(getattr(tensor, n))]
    if tensor.is_quantized and tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return [tensor, tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points()]
    return [tensor]


def _side_tensors(module: torch.nn.Module) -> list[Any]:
    """Quantization state that lives outside ``parameters()``/``buffers()``.

    bitsandbytes keeps 4-bit block scales (``absmax``, nested for double quantization) and the
    code book in ``weight.quant_state``, and 8-bit row scales in ``weight.SCB`` or, after the
    first forward, ``module.state.SCB``. ``torch.ao`` dynamic quantization keeps its weights
    in ``_packed_params``, ``Int8Linear`` in ``packed_weight``.
    """
    found: list[Any] = []
    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    stack = [state] if state is not None else []
    while stack:  # QuantState may nest another QuantState (state2) for its absmax
        current = stack.pop()
        for value in vars(current).values():
            if hasattr(value, "absmax"):
                stack.append(value)
            else:
                found.append(value)
    found.append(getattr(weight, "SCB", None))
    found.append(getattr(getattr(module, "state", None), "SCB", None))
    packed = getattr(module, "_packed_params", None)
    if hasattr(packed, "_weight_bias"):
        found.extend(packed._weight_bias())
    found.append(getattr(module, "packed_weight", None))  # Int8Linear's oneDNN weights
    return found


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters, buffers and quantization state, each storage counted once."""
    # Unpacking torch.ao packed weights makes temporary tensors: keep them all alive until the
    # end, or a freed one's address could be reused and mistaken for a storage already seen.
    leaves = [
        leaf
        for module in model.modules()
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False), *_side_tensors(module))
        for leaf in _leaf_tensors(tensor)
    ]
    storages: dict[tuple[str, int], int] = {}
    for leaf in leaves:
        if leaf.device.type == "meta":
            continue
        if leaf.is_mkldnn:  # oneDNN's packed tensors hide their storage: count their elements
            storages["mkldnn", id(leaf)] = leaf.numel() * leaf.element_size()
        else:
            storage = leaf.untyped_storage()
            storages[str(leaf.device), storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def fp32_bytes(model: torch.nn.Module) -> int:
    """What ``model``'s parameters take in float32 (buffers at their real size).

    bitsandbytes 4-bit parameters are packed two values per byte: their logical size is in
    ``quant_state.shape``.
    """
    numel = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        numel += math.prod(state.shape) if state is not None else p.numel()
    return 4 * numel + sum(b.numel() * b.element_size() for b in model.buffers())
