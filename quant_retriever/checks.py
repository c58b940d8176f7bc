"""The argument checks every public API shares: one function per kind of argument, each raising
a ``TypeError``/``ValueError`` that says what was expected and what came, and the type aliases
of the inputs they accept."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "VectorsLike",
    "IdsLike",
    "MAX_ID",
    "int_at_least",
    "as_vectors",
    "as_ids",
    "automatic_ids",
    "check_strings",
    "check_paired",
    "check_read_only",
    "keyword_only",
]

#: Float vectors ``[n, dim]`` (or one ``[dim]``): a numpy array, a torch tensor, or nested lists.
VectorsLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]] | Sequence[float]
#: Integer ids ``[n]``: a numpy array, a torch tensor or a sequence of ints (never a bare str).
IdsLike = np.ndarray | torch.Tensor | Sequence[int]

MAX_ID = 2**63 - 1
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def int_at_least(value: object, name: str, low: int = 1) -> int:
    """``value`` as an int ``>= low`` (numpy integers accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}.")
    if value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}.")
    return int(value)


def check_read_only(read_only: object) -> bool:
    if not isinstance(read_only, bool):
        raise TypeError(f"read_only must be True or False; got {read_only!r}.")
    return read_only


def _float_range_error(t: torch.Tensor, what: str) -> ValueError:
    if t.dtype != torch.float32 and bool(torch.isfinite(t).all()):
        return ValueError(f"{what} has values outside the float32 range (|x| > {_FLOAT32_MAX:.3e}).")
    return ValueError(f"{what} contains NaN or infinite values.")


def as_vectors(x: VectorsLike, dim: int | None, what: str) -> torch.Tensor:
    """Validate a float array/tensor ``[n, dim]`` (or ``[dim]``; any ``dim`` when ``None``)
    -> contiguous float32 tensor on its own device. Raises ``TypeError``/``ValueError``."""
    if type(x) is np.ndarray and x.dtype == np.float32 and 0 < x.ndim <= 2:  # the usual query: few checks
        arr = x.reshape(1, -1) if x.ndim == 1 else x
        if arr.shape[0] and arr.shape[1] and arr.shape[1] == (dim or arr.shape[1]) and np.isfinite(arr).all():
            return torch.from_numpy(np.ascontiguousarray(arr))
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided or x.device.type == "meta":
            raise TypeError(f"{what} must be a dense tensor with data; got layout {x.layout} on {x.device.type}.")
        t = x.detach()
    elif isinstance(x, (np.ndarray, list, tuple)):
        try:
            arr = np.asarray(x)
        except ValueError:
            raise TypeError(f"{what} must be a numeric array; got ragged input.") from None
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{what} must be a numeric array; got dtype {arr.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{what} must be a numpy array or torch tensor; got {type(x).__name__}.")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{what} must hold floats; got dtype {t.dtype}.")
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or (dim is not None and t.shape[1] != dim) or t.shape[1] == 0:
        raise ValueError(f"{what} must have shape (n, {dim or 'dim'}); got {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise ValueError(f"{what} is empty: expected at least one vector.")
    f = t.float()
    finite = np.isfinite(f.numpy()).all() if f.device.type == "cpu" else bool(torch.isfinite(f).all())
    if not finite:
        raise _float_range_error(t, what)
    return f.contiguous()


def as_ids(ids: IdsLike, n: int | None = None) -> np.ndarray:
    """Validate ids -> 1-D int64 numpy array (of length ``n`` when given), unique, in 0..2**63-1."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of integers; got a single {type(ids).__name__}.")
    arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional; got shape {arr.shape}.")
    if len(arr) and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"ids must be integers; got dtype {arr.dtype}.")
    if n is not None and len(arr) != n:
        raise ValueError(f"ids must have one id per vector. Got {len(arr)} ids and {n} vectors.")
    if len(arr) and arr.dtype == np.uint64 and int(arr.max()) > MAX_ID:
        raise ValueError(f"ids must be in 0..{MAX_ID}; got {int(arr.max())}.")
    arr = arr.astype(np.int64)
    if len(arr) and arr.min() < 0:
        raise ValueError(f"ids must be non-negative; got {int(arr.min())}.")
    if len(np.unique(arr)) != len(arr):
        raise ValueError("ids must be unique within one call; got duplicates.")
    return arr


def automatic_ids(n: int, next_id: int) -> np.ndarray:
    """``next_id, next_id + 1, ...``: the ids of ``n`` vectors added without ids."""
    if next_id + n - 1 > MAX_ID:
        raise ValueError(f"automatic ids are exhausted (the next would pass {MAX_ID}); pass ids explicitly.")
    return np.arange(next_id, next_id + n, dtype=np.int64)


def check_unicode(s: str, what: str) -> None:
    """SQLite stores UTF-8: a str with a lone surrogate cannot be stored, so refuse it clearly."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} is not valid Unicode (a lone surrogate at position {exc.start}): {s[:40]!r}."
        ) from None


def check_paired(texts: list[str], n_queries: int) -> list[str]:
    """``texts``, one per query vector (a hybrid search's two halves of each query)."""
    if len(texts) != n_queries:
        raise ValueError(f"texts must have one text per query. Got {len(texts)} texts and {n_queries} queries.")
    return texts


def check_strings(values, what: str) -> list[str]:
    """A list of strings from a sequence of them; a bare str/bytes is refused (it is not a
    list of ids: ``delete("abc")`` must not mean ``delete(["a", "b", "c"])``)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"{what} must be a list of strings; got the single {type(values).__name__} {values[:40]!r} "
            f"(wrap one in a list: [{values[:40]!r}])."
        )
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{what} must be strings; item {i} is {type(v).__name__} {v!r:.60}.")
        if not v.isascii():  # ASCII always encodes: only the rest is checked
            check_unicode(v, f"{what} item {i}")
    return values


def keyword_only(*names: str):
    """Make the arguments of ``__init__`` after the first keyword-only, while positional calls
    keep working for one release with a ``DeprecationWarning`` (``names``: the former positional
    order after the first argument)."""

    def decorate(init):
        @functools.wraps(init)
        def wrapper(self, *args, **kwargs):
            if len(args) > 1:
                if len(args) > len(names) + 1:
                    raise TypeError(f"{type(self).__name__}() takes at most {len(names) + 1} positional arguments.")
                given = dict(zip(names, args[1:]))
                clash = sorted(set(given) & set(kwargs))
                if clash:
                    raise TypeError(f"{type(self).__name__}() got multiple values for {', '.join(clash)}.")
                warnings.warn(
                    f"passing {', '.join(given)} of {type(self).__name__}() by position is deprecated; "
                    f"pass {', '.join(f'{n}=...' for n in given)} (positional calls stop working in the next release).",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs.update(given)
                args = args[:1]
            return init(self, *args, **kwargs)

        return wrapper

    return decorate
