"""The one device resolver, shared by the index, the stores and the models."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "usable_devices"]


def usable_devices() -> list[str]:
    """The device names this machine can run: ``cpu``, and ``cuda:N`` for each CUDA device."""
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu", *cuda]


def resolve_device(device: object, source: str = "argument") -> torch.device:
    """``None``/``"auto"`` -> the first CUDA device when there is one, else the CPU; ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device``) -> that device, with an explicit CUDA index.

    Anything else (``"mps"``, ``"meta"``, a CUDA device this machine lacks, a malformed string)
    raises ``ValueError`` naming the devices usable here; a non-string ``TypeError``. ``source``
    says where the value came from (for the message), e.g. ``"from $QUANT_RETRIEVER_DEVICE"``.
    """
    if not isinstance(device, (str, torch.device, type(None))):
        raise TypeError(
            f"device must be a str such as 'cpu' or 'cuda:0', or a torch.device; got {type(device).__name__}."
        )
    name = None if device is None else str(device).strip().lower()
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    usable = ", ".join(usable_devices())
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} ({source}) is not supported; usable here: {usable}.")
    if resolved.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} ({source}) needs CUDA, which is not available here; usable here: {usable}."
        )
    index = torch.cuda.current_device() if resolved.index is None else resolved.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} ({source}) does not exist; usable here: {usable}.")
    return torch.device("cuda", index)
