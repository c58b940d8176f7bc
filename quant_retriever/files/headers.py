"""JSON headers (manifests): written atomically, read through one schema validator."""

from __future__ import annotations

import json
import os
from pathlib import Path

from quant_retriever.files.raw import create_temp_file, fsync_dir, open_file

__all__ = ["Field", "Int", "Bool", "OneOf", "Object", "read_json", "write_json_atomic", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 64 << 20


def _read_bytes(path: Path, limit: int) -> bytes:
    fd = open_file(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def _replace_with_bytes(path: Path, data: bytes) -> None:
    fd, tmp = create_temp_file(path.parent, path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename (never half-written).

    The commit point of the on-disk formats. If anything fails after the rename (the directory
    fsync), the previous content is put back before the error propagates, so a call that
    raises leaves the last committed file, as far as a single I/O error allows.
    """
    path = Path(path)
    data = json.dumps(obj).encode("utf-8")
    try:
        previous = _read_bytes(path, MAX_HEADER_BYTES + 1)
    except FileNotFoundError:
        previous = None
    _replace_with_bytes(path, data)
    try:
        fsync_dir(path.parent)
    except BaseException:
        try:
            if previous is None:
                os.unlink(path)
            else:
                _replace_with_bytes(path, previous)
            fsync_dir(path.parent)
        except OSError:
            pass
        raise


class Field:
    """One field of a header schema: a check and what it expects (for the error message)."""

    def __init__(self, expects: str, check):
        self.expects, self.check = expects, check


def Int(lo: int = 0, hi: int = 2**63 - 1) -> Field:
    """An integer (never a bool or a float) in ``[lo, hi]``."""
    return Field(f"an integer in {lo}..{hi}", lambda v: type(v) is int and lo <= v <= hi)


def Bool() -> Field:
    return Field("true or false", lambda v: type(v) is bool)


def OneOf(*choices: str) -> Field:
    return Field(f"one of {', '.join(map(repr, choices))}", lambda v: type(v) is str and v in choices)


def Object() -> Field:
    """A JSON object whose keys are strings (its own schema is checked by the caller)."""
    return Field("an object", lambda v: type(v) is dict)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json(
    path: Path, fmt: str, version: int, schema: dict[str, Field] | None = None, optional: dict[str, Field] | None = None
) -> dict:
    """Read a JSON header, check its ``format`` and ``version`` and, with ``schema``, that
    every field is present with the expected kind (``optional`` fields: when present): any
    mismatch is a ``ValueError`` naming the file and the field. ``NaN``/``Infinity``, deep
    nesting, oversized files and anything but a regular file are refused."""
    path = Path(path)
    try:
        raw = _read_bytes(path, MAX_HEADER_BYTES + 1)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: not a quant_retriever directory.") from None
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header is larger than any valid header ({MAX_HEADER_BYTES} bytes).")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not a valid JSON header ({str(exc)[:200]}).") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise ValueError(f"{path}: expected a {fmt!r} header, found {str(obj)[:80]!r}.")
    found = obj.get("version")
    if type(found) is not int or found < 1:
        raise ValueError(f"{path}: invalid format version {found!r}.")
    if found > version:
        raise ValueError(
            f"{path}: written by a newer quant_retriever (format version {found}; this one reads up to {version})."
        )
    if found < version:
        raise ValueError(
            f"{path}: format version {found} is no longer read by this quant_retriever (it reads version {version}); "
            "re-create it from your documents (see the README's upgrade note)."
        )
    for name, spec in (schema or {}).items():
        if name not in obj:
            raise ValueError(f"{path}: field {name!r} is missing.")
        if not spec.check(obj[name]):
            raise ValueError(f"{path}: field {name!r} must be {spec.expects}; found {str(obj[name])[:80]!r}.")
    for name, spec in (optional or {}).items():
        if name in obj and not spec.check(obj[name]):
            raise ValueError(f"{path}: field {name!r} must be {spec.expects}; found {str(obj[name])[:80]!r}.")
    return obj
