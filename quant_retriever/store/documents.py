"""The documents a store keeps: a :class:`Record` (framework id, text, metadata, index key),
and the checks a batch passes before anything is written (:func:`check_documents`), metadata
included (:func:`metadata_json`: JSON data only, refused whole and never converted silently)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from quant_retriever.checks import check_strings, check_unicode

__all__ = ["Record", "MAX_METADATA_DEPTH", "check_documents", "metadata_json"]

MAX_METADATA_DEPTH = 100  # lists/dicts nested deeper raise ValueError (never RecursionError)


@dataclass(frozen=True)
class Record:
    """A stored document: framework ``id``, ``text``, ``metadata`` and the index ``key``."""

    id: str
    text: str
    metadata: dict
    key: int


def check_documents(ids, texts, metadatas) -> tuple[list[str], list[str], list[str], list[dict]]:
    """``(ids, texts, metadata JSON, metadata as it reads back)`` of documents about to be
    upserted: every check an upsert makes before it writes (lengths, unique ids, strings,
    :func:`metadata_json`), so callers that split a batch (the sharded store) refuse it whole,
    before any part is written."""
    ids, texts = check_strings(ids, "ids"), check_strings(texts, "texts")
    if metadatas is None:
        metadatas = [None] * len(ids)
    elif isinstance(metadatas, dict):
        raise TypeError("metadatas must be a list with one dict per document; got a single dict.")
    metadatas = list(metadatas)
    if not (len(ids) == len(texts) == len(metadatas)):
        raise ValueError(
            f"ids, texts and metadatas must have the same length. Got {len(ids)} ids, {len(texts)} texts "
            f"and {len(metadatas)} metadatas."
        )
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique within one call; got duplicates.")
    stored, read_back = [], []
    for i, m in enumerate(metadatas):
        if type(m) is dict and _flat_and_valid(m):  # the common case: one pass, kept as it is
            stored.append(_ENCODE(m))
            read_back.append(m)
        else:
            stored.append(metadata_json(m, f"metadata of item {i}"))
            read_back.append(stored_metadata(m, stored[-1]))
    return ids, texts, stored, read_back


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _where(what: str, path: tuple) -> str:
    """Where a value sits in a document's metadata (``metadata of item 3['tags'][0]``), made
    only for an error message."""
    return what + "".join(f"[{p!r}]" for p in path)


_PLAIN = {str, int, float, bool, type(None)}


def stored_metadata(metadata: dict | None, stored: str) -> dict:
    """The metadata as it reads back from its JSON ``stored`` (checked by :func:`metadata_json`):
    ``metadata`` itself when JSON keeps it as it is (plain dicts, lists and scalars), else the
    JSON parsed (a tuple becomes a list, a float subclass a float, ...)."""
    return metadata if metadata is not None and _plain(metadata) else json.loads(stored)


def _plain(value: Any) -> bool:
    t = type(value)
    if t is dict:
        return all(_plain(v) for v in value.values())
    if t is list:
        return all(_plain(v) for v in value)
    return t in _PLAIN


def metadata_json(metadata: Any, what: str = "metadata") -> str:
    """The JSON stored for one document's metadata (``None`` is ``{}``).

    The one rule: metadata is JSON data. A dict with ``str`` keys whose values are ``str``,
    ``int`` (64-bit), finite ``float``, ``bool``, ``None``, lists/tuples or such dicts, nested
    at most :data:`MAX_METADATA_DEPTH` deep. Subclasses of these are stored as the plain type
    (a tuple reads back as a list, an ``IntEnum`` as an int, ``numpy.float64`` as a float).
    Anything else (datetime, bytes, sets, numpy integers and arrays, non-``str`` keys such as
    ``{1: ..}``, which JSON would merge with ``{"1": ..}``) raises ``TypeError`` naming where it
    is; NaN, infinity and integers beyond 64 bits raise ``ValueError``. Nothing is converted
    silently and nothing is stored when any value is refused.
    """
    if metadata is None:
        return "{}"
    if type(metadata) is dict and _flat_and_valid(metadata):
        return _ENCODE(metadata)
    if not isinstance(metadata, dict):
        raise TypeError(f"{what} must be a dict; got {type(metadata).__name__}.")
    stack = [(metadata, (), 1)]
    while stack:  # iterative, so no input reaches Python's recursion limit
        value, path, depth = stack.pop()
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            if not value.isascii():
                check_unicode(value, _where(what, path))
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"{_where(what, path)} is an integer beyond 64 bits: {value}.")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"{_where(what, path)} is {value!r}; metadata numbers must be finite.")
        elif isinstance(value, (dict, list, tuple)):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"{what} is nested deeper than {MAX_METADATA_DEPTH} levels (or contains itself).")
            if isinstance(value, dict):
                for k, v in value.items():
                    if not isinstance(k, str):
                        raise TypeError(
                            f"{_where(what, path)} has the key {k!r} of type {type(k).__name__}; "
                            "metadata keys must be str."
                        )
                    if not k.isascii():
                        check_unicode(k, f"{_where(what, path)} key")
                    stack.append((v, (*path, k), depth + 1))
            else:
                stack.extend((v, (*path, i), depth + 1) for i, v in enumerate(value))
        else:
            raise TypeError(
                f"{_where(what, path)} is a {_type_name(value)} ({value!r:.60}); metadata values must be "
                "JSON data: str, int, float, bool, None, lists or dicts with str keys (convert it first, e.g. "
                "str(x), x.isoformat(), x.tolist() or x.item())."
            )
    return _ENCODE(metadata)


def _not_json(value: Any):
    raise TypeError(f"{_type_name(value)} is not JSON data")  # never reached: values are checked first


def _encoder():
    """``json.dumps(value, ensure_ascii=False, allow_nan=False)`` of checked metadata: the C
    encoder made once (``JSONEncoder.encode`` makes one a call), else the pure-Python one."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    encode = make(None, _not_json, json.encoder.encode_basestring, None, ": ", ", ", False, False, False)
    return lambda value: "".join(encode(value, 0))


_ENCODE = _encoder()


def _flat_and_valid(metadata: dict) -> bool:
    """Whether a dict is flat (ASCII ``str`` keys, scalar values) and passes every check of
    :func:`metadata_json` (the common case, checked in one pass; anything else takes the full
    walk, which names what is wrong)."""
    for k, v in metadata.items():
        if type(k) is not str or not k.isascii():
            return False
        t = type(v)
        if t is str:
            if not v.isascii():
                return False
        elif t is int:
            if not -(2**63) <= v < 2**63:
                return False
        elif t is float:
            if not math.isfinite(v):
                return False
        elif t is not bool and v is not None:
            return False
    return True
