"""Loading a sentence-transformers model at one precision, for every model kind.

:func:`load_model` takes the name of a sentence-transformers model class
(``"SentenceTransformer"``, ``"CrossEncoder"``), applies one entry of the precision table
(:mod:`quant_retriever.models.settings`) with its loader, and returns a :class:`LoadedModel`.
The loaders: ``dtype`` loads the weights in a float dtype; ``int8`` swaps the linear layers for
:mod:`quant_retriever.models.int8` on a CPU (torchao's ``Int8DynamicActivationInt8WeightConfig``
on a GPU or where the torch build lacks oneDNN's INT8 ops; ``torch.ao`` dynamic quantization
when torchao is missing too); ``bnb`` loads with a bitsandbytes ``BitsAndBytesConfig``. The
integer precisions also store the token-embedding table as int8 rows, and leave a
cross-encoder's classification head (``pooler``, ``classifier``, ``score``) in float: it reads
one row per pair, so integer kernels gain nothing there, its output is the score itself, and
bitsandbytes' 4-bit CPU kernels cannot pack a layer with a single output.

Third-party libraries log harmless notes while loading and running quantized models (optional
kernels a CPU build cannot load, bitsandbytes' per-call notice that 8-bit CPU matmuls cast
their inputs); :func:`quiet_third_party` drops them for the duration of a call and nowhere else.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from quant_retriever.models import int8
from quant_retriever.models.attention import use_per_sequence_attention
from quant_retriever.models.memory import fp32_bytes, parameter_bytes
from quant_retriever.models.settings import (
    ENCODER_ENV,
    PRECISIONS,
    EnvNames,
    PrecisionSpec,
    device_setting,
    precision_setting,
)

__all__ = ["LoadedModel", "load_model", "transformer", "quiet_third_party", "import_or_hint"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install 'quant-retriever[{extra}]'"
#: The sentence-transformers model classes :func:`load_model` loads (an encoder, a reranker).
_MODEL_CLASSES = ("SentenceTransformer", "CrossEncoder")
#: Per model class, the names of the modules that the integer precisions leave in float (see above).
_FLOAT_HEADS = {"SentenceTransformer": (), "CrossEncoder": ("pooler", "classifier", "score")}
_MB = 1e6


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


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Drop the messages in ``_NOISE`` while the block runs; other records pass as usual."""
    filters = [(logging.getLogger(name), _DropMessages(patterns)) for name, patterns in _NOISE.items()]
    for log, drop in filters:
        log.addFilter(drop)
    try:
        yield
    finally:
        for log, drop in filters:
            log.removeFilter(drop)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedModel:
    """A model at one precision, as :func:`load_model` made it.

    ``precision`` is the one applied (after aliases and device fallbacks), ``fp32_bytes`` what
    the parameters take in float32, ``detail`` what the loader did (for the log line).
    """

    model: Any  # sentence-transformers SentenceTransformer or CrossEncoder
    name: str
    precision: str
    device: torch.device
    fp32_bytes: int
    detail: str
    compiled: bool

    def log(self, purpose: str, shape: str) -> None:
        """One INFO line: precision, what was done, device, model, ``shape``, memory."""
        method = "precision" if PRECISIONS[self.precision].method == "dtype" else "quantization"
        logger.info(
            "Using %s %s for %s (%s) on %s: %s, %s, %.1f MB -> %.1f MB parameters",
            self.precision,
            method,
            purpose,
            self.detail,
            self.device,
            self.name,
            shape,
            self.fp32_bytes / _MB,
            parameter_bytes(self.model) / _MB,
        )


def load_model(
    model_class: str,
    model: str | os.PathLike[str],
    precision: str | None,
    device: str | torch.device | None,
    *,
    compile: bool,
    st_kwargs: dict[str, Any],
    env: EnvNames = ENCODER_ENV,
) -> LoadedModel:
    """Load ``model`` as ``sentence_transformers.<model_class>`` at ``precision`` on ``device``
    (``None``: the environment variables that ``env`` names, then the defaults; see
    :mod:`~quant_retriever.models.settings`).

    ``compile`` runs the transformer under ``torch.compile``; ``st_kwargs`` go to the model
    class (``revision=``, ``trust_remote_code=``, ``model_kwargs=`` without dtype or
    quantization settings). Raises ``ValueError`` for an unknown precision or unusable device,
    ``ImportError`` naming the extra to install for a missing optional dependency.
    """
    if model_class not in _MODEL_CLASSES:
        raise ValueError(f"model_class must be one of {', '.join(_MODEL_CLASSES)}; got {model_class!r}.")
    name = os.fspath(model)
    spec = precision_setting(precision, env)
    target = device_setting(device, env)
    if target.type == "cpu" and spec.cpu_substitute is not None:
        logger.warning(
            "%s was asked for on a CPU, where %s; using %s instead.",
            spec.name,
            spec.cpu_substitute_reason,
            spec.cpu_substitute,
        )
        spec = PRECISIONS[spec.cpu_substitute]
    with quiet_third_party():
        loaded, full_size, detail = _LOADERS[spec.method](model_class, name, spec, target, dict(st_kwargs))
    if spec.int8_token_embeddings and int8.quantize_token_embeddings(transformer(loaded, f"precision {spec.name!r}")):
        detail += ", INT8 token embeddings"
    if compile:
        # Compiled on the first call (about a minute on 2 CPU cores); dynamic shapes, so new
        # batch sizes and text lengths don't recompile. Fuses the elementwise passes between
        # matmuls (torchao's quantize/dequantize steps among them); Int8Linear stays opaque.
        inner = transformer(loaded, "compile=True")
        inner.forward = torch.compile(inner.forward, dynamic=True)
        detail += ", torch.compile"
    return LoadedModel(loaded, name, spec.name, target, full_size, detail, compile)


def import_or_hint(module: str, extra: str) -> Any:
    """``import module``, or an ``ImportError`` that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed here but is not installed; install it with: {_INSTALL_HINT.format(extra=extra)}"
        ) from exc


def _sentence_transformers_model(
    model_class: str, name: str, device: torch.device, model_kwargs: dict[str, Any], st_kwargs: dict[str, Any]
) -> Any:
    """Load with our ``model_kwargs`` merged into the caller's; a ``device_map`` places the model."""
    st = import_or_hint("sentence_transformers", "embeddings")
    user_model_kwargs = dict(st_kwargs.pop("model_kwargs", None) or {})
    clash = sorted(set(user_model_kwargs) & {"dtype", "torch_dtype", "quantization_config", "device_map"})
    if clash:
        raise ValueError(
            f"model_kwargs may not set {clash}: choose the precision with precision= and the device with device=."
        )
    placement = None if "device_map" in model_kwargs else str(device)
    cls = getattr(st, model_class)
    return cls(name, device=placement, model_kwargs={**user_model_kwargs, **model_kwargs}, **st_kwargs)


def transformer(model: Any, needed_by: str) -> torch.nn.Module:
    """The Hugging Face module inside a sentence-transformers model (``model[0].model``)."""
    inner = getattr(model[0], "model", None)
    if not isinstance(inner, torch.nn.Module):
        raise ValueError(
            f"{needed_by} needs a transformer, but this model's first module is "
            f"{type(model[0]).__name__}; use precision fp32, fp16 or bf16 without compile."
        )
    return inner


def _load_dtype(
    model_class: str, name: str, spec: PrecisionSpec, device: torch.device, st_kwargs: dict[str, Any]
) -> tuple[Any, int, str]:
    model = _sentence_transformers_model(model_class, name, device, {"dtype": getattr(torch, spec.dtype)}, st_kwargs)
    return model, fp32_bytes(model), spec.detail


def _load_int8(
    model_class: str, name: str, spec: PrecisionSpec, device: torch.device, st_kwargs: dict[str, Any]
) -> tuple[Any, int, str]:
    model = _sentence_transformers_model(model_class, name, device, {}, st_kwargs)
    full_size = fp32_bytes(model)
    inner = transformer(model, f"precision {spec.name!r}")
    # per-token scales round differently when padding moves a value by float noise: see attention.py
    unpadded = ", per-sequence attention" if use_per_sequence_attention(inner) else ""
    head = _float_head(inner, model_class)
    unpadded += ", float head" if head else ""
    linears = {n: m for n, m in inner.named_modules() if type(m) is torch.nn.Linear and n not in head}
    if device.type == "cpu" and int8.available():
        int8.quantize_linear_layers(inner, skip={id(m) for n, m in inner.named_modules() if n in head})
        return model, full_size, "oneDNN dynamic INT8 linear layers" + unpadded
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        if device.type != "cpu":
            raise ImportError(
                "precision 'int8' on a GPU needs torchao; install it with: " + _INSTALL_HINT.format(extra="int8")
            ) from None
        warnings.warn(
            "torchao is not installed, so int8 falls back to torch.ao.quantization.quantize_dynamic "
            "(per-channel weights; deprecated, lower fidelity). Install torchao with: "
            + _INSTALL_HINT.format(extra="int8"),
            stacklevel=5,  # the caller of load_encoder: _load_int8 < load_model < _load_encoder < load_encoder
        )
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its own deprecation notice, already covered above
            qconfigs = dict.fromkeys(linears, per_channel_dynamic_qconfig)
            quantize_dynamic(inner, qconfigs, dtype=torch.qint8, inplace=True)
        return model, full_size, "torch.ao per-channel dynamic INT8 linear layers" + unpadded
    # set_inductor_config=False: don't change torch.compile's global settings as a side effect.
    config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    quantize_(inner, config, filter_fn=lambda module, fqn: fqn in linears and linears[fqn] is module)
    return model, full_size, spec.detail + unpadded


def _load_bnb(
    model_class: str, name: str, spec: PrecisionSpec, device: torch.device, st_kwargs: dict[str, Any]
) -> tuple[Any, int, str]:
    import_or_hint("bitsandbytes", "bnb")
    import_or_hint("accelerate", "bnb")
    transformers = import_or_hint("transformers", "embeddings")
    options = dict(spec.bnb_options)
    if options.get("load_in_4bit"):
        # The 4-bit weights are dequantized to this dtype for each matmul. On a CPU float32 is
        # as faithful as bfloat16 and, without AVX512-BF16, about 10x faster; GPUs want 16 bits.
        if device.type == "cpu":
            options["bnb_4bit_compute_dtype"] = torch.float32
        else:
            options["bnb_4bit_compute_dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    last = _last_block_pattern(transformers, name, st_kwargs) if spec.keep_last_block else None
    heads = _FLOAT_HEADS[model_class]
    skip = [p for p in (last, heads and rf"(?:.*\.)?(?:{'|'.join(heads)})") if p]
    config = transformers.BitsAndBytesConfig(**options, llm_int8_skip_modules=skip or None)
    # An explicit device_map, or bitsandbytes puts the weights on the current GPU whatever
    # device= says.
    model = _sentence_transformers_model(
        model_class, name, device, {"quantization_config": config, "device_map": {"": str(device)}}, st_kwargs
    )
    inner = transformer(model, f"precision {spec.name!r}")
    head = _float_head(inner, model_class)
    kept = last is not None and any(type(m) is torch.nn.Linear for n, m in inner.named_modules() if n not in head)
    detail = spec.detail + (" (last block unquantized)" if kept else "")
    return model, fp32_bytes(model), detail + (", float head" if head else "")


def _float_head(inner: torch.nn.Module, model_class: str) -> set[str]:
    """Qualified names of ``inner``'s modules inside a head that stays in float (``_FLOAT_HEADS``)."""
    heads = _FLOAT_HEADS[model_class]
    return {name for name, _ in inner.named_modules() if name and any(part in heads for part in name.split("."))}


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
