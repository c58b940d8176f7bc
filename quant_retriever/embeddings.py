"""Sentence-embedding models at reduced precision: ``load_encoder`` and the precision table.

``load_encoder(model, precision=...)`` loads a sentence-transformers model and applies one
entry of ``_PRECISIONS``; the returned :class:`Encoder` turns texts into float32,
L2-normalised vectors whatever the precision inside. ``evaluate_encoders`` measures what a
precision costs in fidelity and buys in memory and speed, side by side with FP32.

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

The token-embedding table is a large share of a small encoder (all-MiniLM-L6-v2: 11.7M of its
22.7M parameters), and the linear-layer quantizers leave it alone, so the integer precisions
also store it as int8 rows with one float scale per row (``_Int8Embedding``).

``int8`` on a CPU runs :mod:`quant_retriever.int8_linear`: torchao's scheme (per-channel INT8
weights, per-token INT8 inputs) with oneDNN's integer GEMM and fused native passes around it.
Eager torchao, which on a CPU without AMX is slower than FP32 (each linear layer quantizes its
input and rescales its output in separate memory-bound passes), stays the path on GPUs and
where the torch build lacks oneDNN's INT8 ops. ``load_encoder(..., compile=True)`` runs the
transformer under ``torch.compile``.

Environment settings, read when the matching argument is ``None``:
``QUANT_RETRIEVER_PRECISION``, ``QUANT_RETRIEVER_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``,
``auto``) and, for the framework adapters, ``QUANT_RETRIEVER_MODEL``.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Sequence, get_args

import numpy as np
import torch

from quant_retriever import int8_linear

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["Precision", "Encoder", "EncoderReport", "load_encoder", "evaluate_encoders"]

logger = logging.getLogger(__name__)

Precision = Literal[
    "fp32", "fp16", "bf16", "int8", "bnb-int8", "bnb-nf4", "bnb-fp4", "none", "int4"
]

PRECISION_ENV = "QUANT_RETRIEVER_PRECISION"
DEVICE_ENV = "QUANT_RETRIEVER_DEVICE"
MODEL_ENV = "QUANT_RETRIEVER_MODEL"
DEFAULT_PRECISION = "fp32"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

_INSTALL_HINT = "pip install 'quant-retriever[{extra}]'"
_MB = 1e6


# --------------------------------------------------------------------------- precision table


@dataclass(frozen=True)
class _PrecisionSpec:
    """How to apply one precision. ``name`` is what ``Encoder.precision`` reports."""

    name: str
    method: Literal["dtype", "int8", "bnb"]
    detail: str  # for the log line
    dtype: str = "float32"  # torch dtype of the weights that stay floating point
    bnb_options: tuple[tuple[str, Any], ...] = ()  # BitsAndBytesConfig keyword arguments
    keep_last_block: bool = False  # leave the last transformer block unquantized
    int8_token_embeddings: bool = False
    cpu_substitute: str | None = None  # precision used instead when the device is a CPU
    cpu_substitute_reason: str = ""


_FP32 = _PrecisionSpec("fp32", "dtype", "float32 weights")
_BNB_NF4 = _PrecisionSpec(
    "bnb-nf4",
    "bnb",
    "bitsandbytes NF4 linear layers",
    bnb_options=(("load_in_4bit", True), ("bnb_4bit_quant_type", "nf4")),
    keep_last_block=True,
    int8_token_embeddings=True,
)
_PRECISIONS: dict[str, _PrecisionSpec] = {
    "fp32": _FP32,
    "fp16": _PrecisionSpec(
        "fp16",
        "dtype",
        "float16 weights",
        dtype="float16",
        cpu_substitute="bf16",
        cpu_substitute_reason="FP16 matmuls run about 4x slower than FP32",
    ),
    "bf16": _PrecisionSpec("bf16", "dtype", "bfloat16 weights", dtype="bfloat16"),
    "int8": _PrecisionSpec(
        "int8",
        "int8",
        "torchao dynamic INT8 linear layers",
        int8_token_embeddings=True,
    ),
    "bnb-int8": _PrecisionSpec(
        "bnb-int8",
        "bnb",
        "bitsandbytes LLM.int8() linear layers",
        bnb_options=(("load_in_8bit", True),),
        int8_token_embeddings=True,
    ),
    "bnb-nf4": _BNB_NF4,
    "bnb-fp4": _PrecisionSpec(
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


def _lookup_precision(name: object, source: str) -> _PrecisionSpec:
    """``name`` -> its spec; ``source`` says where the name came from, for the error."""
    spec = _PRECISIONS.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(
            f"Unknown precision {name!r} ({source}); expected one of: "
            f"{', '.join(get_args(Precision))}."
        )
    return spec


# --------------------------------------------------------------------------- settings


def _setting(explicit: str | None, env_name: str) -> tuple[str | None, str]:
    """An explicit argument wins over the environment; returns (value, where it came from)."""
    if explicit is not None:
        return explicit, "argument"
    value = os.environ.get(env_name, "").strip()
    return (value or None), f"from ${env_name}"


def _resolve_device(device: str | torch.device | None, source: str) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else the CPU; CUDA gets an explicit index."""
    if not isinstance(device, (str, torch.device, type(None))):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda:0', got {type(device).__name__}.")
    name = None if device is None else str(device).strip().lower()
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(
            f"Invalid device {device!r} ({source}); expected 'cpu', 'cuda', 'cuda:<index>' or 'auto'."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} ({source}) was asked for, but CUDA is not available here.")
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {device!r} ({source}) does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
        resolved = torch.device("cuda", index)
    return resolved


def _resolve_model_name(model_name: str | os.PathLike[str] | None) -> str:
    """The adapters' model: the argument, else ``$QUANT_RETRIEVER_MODEL``, else MiniLM."""
    if model_name is not None:
        return os.fspath(model_name)
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


# --------------------------------------------------------------------------- third-party noise


class _DropMessages(logging.Filter):
    """Drops records whose message contains every fragment of one of ``patterns``."""

    def __init__(self, patterns: tuple[tuple[str, ...], ...]) -> None:
        super().__init__()
        self._patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(all(fragment in message for fragment in p) for p in self._patterns)


# Harmless messages: optional CUDA/.so kernels that a CPU build of torchao cannot load, torch's
# deprecation note about torchao's enum registration, bitsandbytes' per-call note that 8-bit
# CPU matmuls cast inputs to float16, and its optional 4-bit CPU kernel download.
_NOISE: dict[str, tuple[tuple[str, ...], ...]] = {
    "torchao": (("Failed to load", ".so"),),
    "torchao.kernel.intmm": (("Detected no triton",),),
    "torch.utils._pytree": (("is an Enum subclass", "register_constant"),),
    "bitsandbytes.autograd._functions": (("MatMul8bitLt: inputs will be cast",),),
    "bitsandbytes.backends.cpu.ops": (("Failed to load CPU gemm_4bit_forward",),),
}
for _name, _patterns in _NOISE.items():
    logging.getLogger(_name).addFilter(_DropMessages(_patterns))
# torch.compile's cache asks tensor subclasses for a hash that torchao's don't implement yet.
warnings.filterwarnings("ignore", message=r".*does not implement _stable_hash_for_caching")


# --------------------------------------------------------------------------- memory accounting


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


def _parameter_bytes(model: torch.nn.Module) -> int:
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


def _fp32_bytes(model: torch.nn.Module) -> int:
    """What ``model``'s parameters take in float32 (buffers at their real size).

    bitsandbytes 4-bit parameters are packed two values per byte: their logical size is in
    ``quant_state.shape``.
    """
    numel = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        numel += math.prod(state.shape) if state is not None else p.numel()
    return 4 * numel + sum(b.numel() * b.element_size() for b in model.buffers())


# --------------------------------------------------------------------------- loading


class _Loaded(NamedTuple):
    model: SentenceTransformer
    fp32_bytes: int
    detail: str


def _import_or_hint(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed here but is not installed; install it with: "
            f"{_INSTALL_HINT.format(extra=extra)}"
        ) from exc


def _sentence_transformer(
    name: str, device: torch.device, model_kwargs: dict[str, Any], st_kwargs: dict[str, Any]
) -> SentenceTransformer:
    """Load with our ``model_kwargs`` merged into the caller's; a ``device_map`` places the model."""
    st = _import_or_hint("sentence_transformers", "embeddings")
    user_model_kwargs = dict(st_kwargs.pop("model_kwargs", None) or {})
    clash = sorted(set(user_model_kwargs) & {"dtype", "torch_dtype", "quantization_config", "device_map"})
    if clash:
        raise ValueError(
            f"model_kwargs may not set {clash}: choose the precision with precision= and the "
            f"device with device=."
        )
    placement = None if "device_map" in model_kwargs else str(device)
    return st.SentenceTransformer(
        name, device=placement, model_kwargs={**user_model_kwargs, **model_kwargs}, **st_kwargs
    )


def _transformer(model: SentenceTransformer, needed_by: str) -> torch.nn.Module:
    """The Hugging Face module inside a sentence-transformers model (``model[0].model``)."""
    inner = getattr(model[0], "model", None)
    if not isinstance(inner, torch.nn.Module):
        raise ValueError(
            f"{needed_by} needs a transformer, but this model's first module is "
            f"{type(model[0]).__name__}; use precision fp32, fp16 or bf16 without compile."
        )
    return inner


def _load_dtype(name: str, spec: _PrecisionSpec, device: torch.device, st_kwargs: dict[str, Any]) -> _Loaded:
    model = _sentence_transformer(name, device, {"dtype": getattr(torch, spec.dtype)}, st_kwargs)
    return _Loaded(model, _fp32_bytes(model), spec.detail)


def _load_int8(name: str, spec: _PrecisionSpec, device: torch.device, st_kwargs: dict[str, Any]) -> _Loaded:
    model = _sentence_transformer(name, device, {}, st_kwargs)
    fp32_bytes = _fp32_bytes(model)
    inner = _transformer(model, f"precision {spec.name!r}")
    if device.type == "cpu" and int8_linear.available():
        int8_linear.quantize_linear_layers(inner)
        return _Loaded(model, fp32_bytes, "oneDNN dynamic INT8 linear layers")
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        if device.type != "cpu":
            raise ImportError(
                "precision 'int8' on a GPU needs torchao; install it with: "
                + _INSTALL_HINT.format(extra="int8")
            ) from None
        warnings.warn(
            "torchao is not installed, so int8 falls back to torch.ao.quantization.quantize_dynamic "
            "(per-channel weights; deprecated, lower fidelity). Install torchao with: "
            + _INSTALL_HINT.format(extra="int8"),
            stacklevel=4,
        )
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its own deprecation notice, already covered above
            quantize_dynamic(inner, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
        return _Loaded(model, fp32_bytes, "torch.ao per-channel dynamic INT8 linear layers")
    # set_inductor_config=False: don't change torch.compile's global settings as a side effect.
    quantize_(inner, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    return _Loaded(model, fp32_bytes, spec.detail)


def _load_bnb(name: str, spec: _PrecisionSpec, device: torch.device, st_kwargs: dict[str, Any]) -> _Loaded:
    _import_or_hint("bitsandbytes", "bnb")
    _import_or_hint("accelerate", "bnb")
    transformers = _import_or_hint("transformers", "embeddings")
    options = dict(spec.bnb_options)
    if options.get("load_in_4bit"):
        # The 4-bit weights are dequantized to this dtype for each matmul. On a CPU float32 is
        # as faithful as bfloat16 and, without AVX512-BF16, about 10x faster; GPUs want 16 bits.
        if device.type == "cpu":
            options["bnb_4bit_compute_dtype"] = torch.float32
        else:
            options["bnb_4bit_compute_dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    skip = _last_block_pattern(transformers, name, st_kwargs) if spec.keep_last_block else None
    config = transformers.BitsAndBytesConfig(**options, llm_int8_skip_modules=skip and [skip])
    # An explicit device_map, or bitsandbytes puts the weights on the current GPU whatever
    # device= says.
    model = _sentence_transformer(
        name, device, {"quantization_config": config, "device_map": {"": str(device)}}, st_kwargs
    )
    inner = _transformer(model, f"precision {spec.name!r}")
    kept = skip is not None and any(type(m) is torch.nn.Linear for m in inner.modules())
    return _Loaded(model, _fp32_bytes(model), spec.detail + (" (last block unquantized)" if kept else ""))


def _last_block_pattern(transformers: Any, name: str, st_kwargs: dict[str, Any]) -> str | None:
    """A ``llm_int8_skip_modules`` pattern for the last transformer block, if it can be named.

    BERT-style models call their blocks ``encoder.layer.<i>``, others ``layers.<i>``;
    transformers matches the pattern as a regex from the start of each module name.
    """
    options = {k: st_kwargs[k] for k in ("revision", "trust_remote_code", "token") if k in st_kwargs}
    try:
        config = transformers.AutoConfig.from_pretrained(name, **options)
    except (OSError, ValueError) as exc:
        logger.debug("No config for %s (%s); every block is quantized.", name, exc)
        return None
    layers = getattr(config, "num_hidden_layers", None)
    return rf"(?:.*\.)?layers?\.{layers - 1}" if isinstance(layers, int) and layers > 1 else None


_LOADERS = {"dtype": _load_dtype, "int8": _load_int8, "bnb": _load_bnb}


class _Int8Embedding(torch.nn.Module):
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


def _quantize_token_embeddings(model: SentenceTransformer, precision: str) -> bool:
    """Swap the transformer's token-embedding table for ``_Int8Embedding``; False if it can't."""
    inner = _transformer(model, f"precision {precision!r}")
    get, put = getattr(inner, "get_input_embeddings", None), getattr(inner, "set_input_embeddings", None)
    try:
        table = get() if callable(get) else None
    except NotImplementedError:
        table = None
    if not isinstance(table, torch.nn.Embedding) or not callable(put):
        logger.debug("Token embeddings of %s are not an nn.Embedding; left as they are.", type(inner).__name__)
        return False
    put(_Int8Embedding(table))
    return True


def _load_encoder(
    model: str | os.PathLike[str],
    precision: str | None,
    device: str | None,
    query_prompt: str | None,
    document_prompt: str | None,
    use_compile: bool,
    st_kwargs: dict[str, Any],
) -> Encoder:
    name = os.fspath(model)
    asked, source = _setting(precision, PRECISION_ENV)
    spec = _PRECISIONS[DEFAULT_PRECISION] if asked is None else _lookup_precision(asked, source)
    target = _resolve_device(*_setting(device, DEVICE_ENV))
    if target.type == "cpu" and spec.cpu_substitute is not None:
        logger.warning(
            "%s was asked for on a CPU, where %s; using %s instead.",
            spec.name,
            spec.cpu_substitute_reason,
            spec.cpu_substitute,
        )
        spec = _PRECISIONS[spec.cpu_substitute]
    loaded = _LOADERS[spec.method](name, spec, target, dict(st_kwargs))
    detail = loaded.detail
    if spec.int8_token_embeddings and _quantize_token_embeddings(loaded.model, spec.name):
        detail += ", INT8 token embeddings"
    if use_compile:
        # Compiled on the first encode (about a minute on 2 CPU cores); dynamic shapes, so new
        # batch sizes and text lengths don't recompile. Fuses the elementwise passes between
        # matmuls (torchao's quantize/dequantize steps among them); Int8Linear stays opaque.
        inner = _transformer(loaded.model, "compile=True")
        inner.forward = torch.compile(inner.forward, dynamic=True)
        detail += ", torch.compile"
    encoder = Encoder(
        loaded.model,
        model_name=name,
        precision=spec.name,
        device=str(target),
        parameter_bytes=_parameter_bytes(loaded.model),
        query_prompt=query_prompt,
        document_prompt=document_prompt,
        compiled=use_compile,
    )
    logger.info(
        "Using %s %s for embeddings (%s) on %s: %s, %d-d, %.1f MB -> %.1f MB parameters",
        spec.name,
        "precision" if spec.method == "dtype" else "quantization",
        detail,
        encoder.device,
        name,
        encoder.dim,
        loaded.fp32_bytes / _MB,
        encoder.parameter_bytes / _MB,
    )
    return encoder


# --------------------------------------------------------------------------- the encoder


def _check_texts(texts: object, what: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, got a single {type(texts).__name__}; wrap it in a list.")
    if not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(text).__name__}.")
    return list(texts)


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}.")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    return batch_size


def _check_prompt(prompt: object, what: str) -> str | None:
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"{what} must be a str or None, got {type(prompt).__name__}.")
    return prompt


class Encoder:
    """A sentence-embedding model at one precision; build it with :func:`load_encoder`.

    Attributes:
        model_name: the name or path it was loaded from.
        precision: the precision applied (after aliases and device fallbacks).
        device: where the model runs, e.g. ``"cpu"`` or ``"cuda:0"``.
        dim: embedding dimension.
        parameter_bytes: memory of parameters, buffers and quantization state, quantized
            weights counted at their real size.
        query_prompt, document_prompt: prefixes that ``encode_queries`` and
            ``encode_documents`` put before each text (e5: ``"query: "``/``"passage: "``).
        compiled: whether the transformer runs under ``torch.compile``.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        model_name: str,
        precision: str,
        device: str,
        parameter_bytes: int,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        compiled: bool = False,
    ) -> None:
        self._model = model
        self.model_name = model_name
        self.precision = precision
        self.device = device
        self.parameter_bytes = parameter_bytes
        self.query_prompt = _check_prompt(query_prompt, "query_prompt")
        self.document_prompt = _check_prompt(document_prompt, "document_prompt")
        self.compiled = compiled
        self.dim: int = model.get_embedding_dimension()

    @property
    def model(self) -> SentenceTransformer:
        """The underlying sentence-transformers model."""
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` as they are.

        Returns:
            ``[len(texts), dim]`` float32, each row of unit L2 norm (an empty list gives
            shape ``(0, dim)``). ``show_progress`` shows a tqdm bar over batches.
        """
        return self._encode(None, _check_texts(texts), _check_batch_size(batch_size), show_progress)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed search queries, each as ``query_prompt + text``: ``[len(texts), dim]`` float32."""
        return self._encode(self.query_prompt, _check_texts(texts), _check_batch_size(batch_size), show_progress)

    def encode_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Embed documents, each as ``document_prompt + text``: ``[len(texts), dim]`` float32."""
        return self._encode(self.document_prompt, _check_texts(texts), _check_batch_size(batch_size), show_progress)

    def _encode(self, prompt: str | None, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if prompt:
            texts = [prompt + text for text in texts]
        with torch.inference_mode():
            # vectors: [n, dim] in the model's dtype, on its device
            vectors = self._model.encode(
                texts,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=bool(show_progress),
            )
            vectors = torch.nn.functional.normalize(vectors.float(), p=2.0, dim=-1)
        return vectors.cpu().numpy()

    def __repr__(self) -> str:
        return (
            f"Encoder({self.model_name!r}, precision={self.precision!r}, device={self.device!r}, "
            f"dim={self.dim}, parameters={self.parameter_bytes / _MB:.1f} MB"
            + (", compiled)" if self.compiled else ")")
        )


def load_encoder(
    model: str | os.PathLike[str],
    precision: Precision | None = None,
    device: str | None = None,
    query_prompt: str | None = None,
    document_prompt: str | None = None,
    *,
    compile: bool = False,
    **kwargs: Any,
) -> Encoder:
    """Load a sentence-transformers model at ``precision``.

    Args:
        model: a local path or a Hugging Face model name.
        precision: one of ``Precision``; ``None`` reads ``$QUANT_RETRIEVER_PRECISION``,
            else ``"fp32"``. ``fp16`` on a CPU becomes ``bf16`` (logged).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; ``None`` reads
            ``$QUANT_RETRIEVER_DEVICE``, else CUDA when available, else the CPU.
        query_prompt, document_prompt: prefixes for ``encode_queries``/``encode_documents``.
        compile: run the transformer under ``torch.compile`` (needs a C++ compiler on a CPU).
            The first ``encode`` then compiles, which takes about a minute on 2 CPU cores. It
            pays off where the eager model runs many separate memory-bound passes, as torchao's
            INT8 does (see ``docs/embeddings.md``).
        **kwargs: passed to ``SentenceTransformer`` (``revision=``, ``trust_remote_code=``,
            ``model_kwargs=`` without dtype or quantization settings).

    Raises:
        ValueError: unknown precision or unusable device (argument or environment).
        ImportError: an optional dependency is missing; the message names the extra.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(model).__name__}.")
    _check_prompt(query_prompt, "query_prompt")
    _check_prompt(document_prompt, "document_prompt")
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {type(compile).__name__}.")
    return _load_encoder(model, precision, device, query_prompt, document_prompt, compile, kwargs)


def _adapter_encoder(
    encoder: Encoder | None,
    model_name: str | None,
    precision: str | None,
    device: str | None,
    query_prompt: str | None,
    document_prompt: str | None,
) -> Encoder:
    """The encoder behind a framework adapter: the one passed in, or one loaded from settings."""
    if encoder is None:
        return load_encoder(_resolve_model_name(model_name), precision, device, query_prompt, document_prompt)
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be an Encoder from load_encoder(), got {type(encoder).__name__}.")
    given = {
        "model_name": model_name,
        "precision": precision,
        "device": device,
        "query_prompt": query_prompt,
        "document_prompt": document_prompt,
    }
    clash = sorted(k for k, v in given.items() if v is not None)
    if clash:
        raise ValueError(
            f"Pass either encoder= or the settings to load one, not both; got encoder= and {clash}. "
            f"Prompts belong to the encoder: load_encoder(..., query_prompt=...)."
        )
    return encoder


# --------------------------------------------------------------------------- fidelity report


@dataclass(frozen=True)
class EncoderReport:
    """One precision measured against FP32 on the same texts.

    ``applied_precision`` and the numbers are ``None`` when the precision could not load or
    run on this machine; ``skipped`` then says why. ``compiled``: measured with
    ``load_encoder(..., compile=True)``.
    """

    precision: str
    applied_precision: str | None
    parameter_bytes: int | None
    texts_per_second: float | None
    mean_cosine: float | None  # to the FP32 embedding of the same text
    min_cosine: float | None
    top10_overlap: float | None  # mean share of each text's 10 nearest texts kept
    skipped: str | None = None
    compiled: bool = False

    @property
    def label(self) -> str:
        """``"int8"``, ``"fp16 (bf16)"`` when a fallback applied, ``"+compile"`` appended."""
        applied = self.applied_precision
        label = self.precision if applied in (None, self.precision) else f"{self.precision} ({applied})"
        return label + ("+compile" if self.compiled else "")

    def __repr__(self) -> str:
        if self.skipped is not None:
            return f"EncoderReport({self.label}: skipped, {self.skipped})"
        return (
            f"EncoderReport({self.label}: {self.parameter_bytes / _MB:.1f} MB, "
            f"{self.texts_per_second:.1f} texts/s, cosine mean {self.mean_cosine:.4f} "
            f"min {self.min_cosine:.4f}, top-10 overlap {self.top10_overlap:.3f})"
        )


# Errors that mean "this precision cannot run here" (a missing package, a kernel the hardware
# lacks, a device it cannot use, no compiler for torch.compile), as opposed to a bug.
_CANNOT_RUN_HERE = (ImportError, RuntimeError, NotImplementedError, OSError, ValueError)


def evaluate_encoders(
    model: str | os.PathLike[str],
    precisions: Sequence[Precision],
    texts: Sequence[str],
    batch_size: int = 64,
    device: str | None = None,
    *,
    repeats: int = 3,
    compiled: Sequence[Precision] = (),
) -> list[EncoderReport]:
    """Compare precisions of one model with FP32 on ``texts``, in one run.

    For each precision: parameter memory; texts per second (median of ``repeats`` timed
    passes after a warm-up; passes are interleaved across precisions so that a change in
    machine load hits all of them alike); mean and minimum cosine between each text's
    embedding and its FP32 embedding; and top-10 overlap, the mean share of each text's ten
    nearest other texts under FP32 that it also has under this precision. Precisions named
    in ``compiled`` are measured a second time with ``compile=True`` (reported after the
    others, compile time not included). All encoders stay loaded until the timing is done.

    A precision that cannot load or run here (missing package, no GPU kernel) is reported
    with ``skipped`` set instead of raising.
    """
    runs: list[tuple[str, bool]] = []
    for what, group, flag in (("precisions", precisions, False), ("compiled", compiled, True)):
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise TypeError(f"{what} must be a list of precision names, got {type(group).__name__}.")
        for name in group:
            _lookup_precision(name, f"in {what}")
            runs.append((name, flag))
    texts = _check_texts(texts)
    if len(texts) < 2:
        raise ValueError(f"Need at least 2 texts to compare neighbours, got {len(texts)}.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}.")
    return _evaluate(model, runs, texts, _check_batch_size(batch_size), device, repeats)


def _top_k_neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    # vectors: [n, dim] unit rows -> [n, k] indices of each row's nearest other rows
    scores = vectors @ vectors.T  # [n, n]
    np.fill_diagonal(scores, -np.inf)
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _neighbour_overlap(reference: np.ndarray, other: np.ndarray, k: int) -> float:
    ref_nn, other_nn = _top_k_neighbours(reference, k), _top_k_neighbours(other, k)
    shared = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref_nn, other_nn)]
    return float(np.mean(shared)) / k


def _evaluate(
    model: str | os.PathLike[str],
    runs: list[tuple[str, bool]],
    texts: list[str],
    batch_size: int,
    device: str | None,
    repeats: int,
) -> list[EncoderReport]:
    from tqdm.auto import tqdm

    reference_encoder = load_encoder(model, "fp32", device)
    reference = reference_encoder.encode(texts, batch_size)  # [n, dim]
    k = min(10, len(texts) - 1)
    loaded: dict[int, tuple[Encoder, np.ndarray]] = {}
    skipped: dict[int, str] = {}
    for i, (name, use_compile) in enumerate(tqdm(runs, desc="Loading and warming up", unit="precision")):
        try:
            if _lookup_precision(name, "in precisions") is _FP32 and not use_compile:
                encoder = reference_encoder
            else:
                encoder = load_encoder(model, name, device, compile=use_compile)
            loaded[i] = (encoder, encoder.encode(texts, batch_size))  # also the warm-up pass
        except _CANNOT_RUN_HERE as exc:
            skipped[i] = f"{type(exc).__name__}: {exc}"
            logger.warning("Skipping precision %s: %s", name, skipped[i])
    seconds: dict[int, list[float]] = {i: [] for i in loaded}
    for _ in tqdm(range(repeats), desc="Timing", unit="round"):
        for i, (encoder, _vectors) in loaded.items():
            start = time.perf_counter()
            encoder.encode(texts, batch_size)
            seconds[i].append(time.perf_counter() - start)
    reports = []
    for i, (name, use_compile) in enumerate(runs):
        if i in skipped:
            reports.append(EncoderReport(name, None, None, None, None, None, None, skipped[i], use_compile))
            continue
        encoder, vectors = loaded[i]
        cosines = np.einsum("nd,nd->n", vectors, reference)  # [n]
        reports.append(
            EncoderReport(
                precision=name,
                applied_precision=encoder.precision,
                parameter_bytes=encoder.parameter_bytes,
                texts_per_second=len(texts) / statistics.median(seconds[i]),
                mean_cosine=float(cosines.mean()),
                min_cosine=float(cosines.min()),
                top10_overlap=_neighbour_overlap(reference, vectors, k),
                compiled=use_compile,
            )
        )
    return reports
