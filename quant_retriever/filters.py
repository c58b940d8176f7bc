"""Metadata filters: a small tree (:class:`Cond`, :class:`And`, :class:`Or`, :class:`Not`) that
the adapters build from LangChain dicts or LlamaIndex ``MetadataFilters``, and
:func:`compile_filter`, which turns a tree into a predicate on one document's metadata dict.

The semantics, in one place (the README's filter table says the same):

- ``v = metadata.get(key)``: a missing key and a JSON ``null`` are the same (``None``) for
  every operator; only ``exists`` tells them apart. Keys are top-level keys compared as
  strings: dots, ``$``, quotes, backslashes, control characters and NUL have no meaning.
- Values have kinds: null, bool, number (int or float; never a bool), str, list, object.
  Equality needs the same kind (``True`` never equals ``1``; ``1`` equals ``1.0``).
- ``eq``/``ne``: ``v`` equals / does not equal a scalar (``None`` allowed).
  ``in``/``nin``: ``v`` equals one / none of a list of scalars (``[]``: no / every document).
- ``lt lte gt gte``: a number against numbers, a str against strs (code-point order); any
  other kind of ``v`` does not match.
- ``contains``: ``v`` is a list with an element equal to the scalar. ``any``/``all``: ``v``
  is a list holding at least one / every value of the list (``all []``: every list).
- ``like``/``ilike``: ``v`` is a str matching an SQL LIKE pattern (``%`` any run, ``_`` one
  character, ``\\`` escapes the next character; the whole string must match), ``ilike``
  after ``str.casefold()`` of both. ``substring``/``isubstring``: the value occurs in ``v``.
- ``is_empty``: ``v`` is ``None``, ``""`` or ``[]``. ``exists``: the key is present.
- ``And``/``Or``/``Not``: as in Python; an empty ``And`` or ``Or`` places no restriction.

A filter with a value of the wrong kind for its operator raises ``TypeError``/``ValueError``
when it is built; a compiled predicate never raises, whatever the metadata holds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union, get_args

__all__ = ["Cond", "And", "Or", "Not", "Filter", "Operator", "MAX_DEPTH", "compile_filter", "check_depth"]

Operator = Literal[
    "eq", "ne", "lt", "lte", "gt", "gte", "in", "nin", "contains", "any", "all",
    "like", "ilike", "substring", "isubstring", "is_empty", "exists",
]
OPERATORS: tuple[str, ...] = get_args(Operator)
MAX_DEPTH = 64  # filter nesting; deeper trees raise ValueError (never RecursionError)

_SCALAR_OPS = ("eq", "ne", "contains")
_LIST_OPS = ("in", "nin", "any", "all")
_TEXT_OPS = ("like", "ilike", "substring", "isubstring")
_ORDER_OPS = ("lt", "lte", "gt", "gte")


def _kind(v: Any) -> str:
    """The JSON kind of a value: null, bool, number, str, list, object (else "other")."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "list"
    return "object" if isinstance(v, dict) else "other"


def _check_scalar(value: Any, op: str) -> Any:
    kind = _kind(value)
    if kind not in ("null", "bool", "number", "str"):
        raise TypeError(f"operator {op!r} compares with a str, number, bool or None; got {type(value).__name__} {value!r}.")
    if kind == "number" and not math.isfinite(value):
        raise ValueError(f"operator {op!r} needs a finite number; got {value!r}.")
    return value


@dataclass(frozen=True)
class Cond:
    """``metadata.get(key) <op> value`` (see the module docstring for each operator).

    The value is checked here: a wrong kind raises ``TypeError``, a non-finite number or a
    malformed LIKE pattern ``ValueError``.
    """

    key: str
    op: Operator
    value: Any = None

    def __post_init__(self):
        if not isinstance(self.key, str):
            raise TypeError(f"filter keys must be strings; got {type(self.key).__name__} {self.key!r}.")
        op, value = self.op, self.value
        if op not in OPERATORS:
            raise ValueError(f"Invalid operator: {op!r}; expected one of {', '.join(OPERATORS)}.")
        if op in _SCALAR_OPS:
            _check_scalar(value, op)
        elif op in _LIST_OPS:
            if not isinstance(value, (list, tuple, set, frozenset)):
                raise TypeError(f"operator {op!r} needs a list of values; got {type(value).__name__} {value!r}.")
            object.__setattr__(self, "value", tuple(_check_scalar(x, op) for x in value))
        elif op in _ORDER_OPS:
            if _kind(value) not in ("number", "str"):
                raise TypeError(f"operator {op!r} compares numbers or strings; got {type(value).__name__} {value!r}.")
            _check_scalar(value, op)
        elif op in _TEXT_OPS:
            if not isinstance(value, str):
                raise TypeError(f"operator {op!r} needs a string; got {type(value).__name__} {value!r}.")
            if op in ("like", "ilike"):
                _like_regex(value, op == "ilike")  # raises on a malformed pattern
        elif value is not None:  # is_empty, exists
            raise TypeError(f"operator {op!r} takes no value; got {value!r}.")


@dataclass(frozen=True)
class And:
    """Every item matches (an empty ``And`` matches every document)."""

    items: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "items", _items(self.items, "And"))


@dataclass(frozen=True)
class Or:
    """At least one item matches (an empty ``Or`` places no restriction either)."""

    items: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "items", _items(self.items, "Or"))


@dataclass(frozen=True)
class Not:
    """The item does not match."""

    item: Any

    def __post_init__(self):
        _items((self.item,), "Not")


Filter = Union[Cond, And, Or, Not]


def _items(items, name: str) -> tuple:
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{name} takes a list of filters; got {type(items).__name__}.")
    for x in items:
        if not isinstance(x, (Cond, And, Or, Not)):
            raise TypeError(f"filters must be Cond/And/Or/Not; got {type(x).__name__} in {name}.")
    return tuple(items)


def check_depth(depth: int) -> None:
    """Raise ``ValueError`` when a filter is nested deeper than :data:`MAX_DEPTH` (the
    adapters call this while translating, so no input reaches Python's recursion limit)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"filters may nest at most {MAX_DEPTH} levels deep.")


def _like_regex(pattern: str, fold: bool) -> re.Pattern:
    """An SQL LIKE pattern (``%``, ``_``, ``\\`` escapes; PostgreSQL's default) as a regex."""
    out, chars = [], iter(pattern)
    for c in chars:
        if c == "\\":
            c = next(chars, None)
            if c is None:
                raise ValueError(f"LIKE pattern must not end with the escape character \\: {pattern!r}.")
            out.append(re.escape(c.casefold() if fold else c))
        elif c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c.casefold() if fold else c))
    return re.compile("".join(out), re.DOTALL)


Predicate = Callable[[dict], bool]


def _same(a: Any, b: Any) -> bool:
    """JSON equality of a metadata value and a filter scalar: same kind and equal."""
    return _kind(a) == _kind(b) and a == b


def _is_empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (isinstance(v, list) and not v)


def _compile_cond(c: Cond) -> Predicate:
    key, op, value = c.key, c.op, c.value
    if op == "eq":
        return lambda m: _same(m.get(key), value)
    if op == "ne":
        return lambda m: not _same(m.get(key), value)
    if op in ("in", "nin"):
        hit = lambda m: any(_same(m.get(key), x) for x in value)  # noqa: E731
        return hit if op == "in" else (lambda m: not hit(m))
    if op in _ORDER_OPS:
        kind = _kind(value)
        test = {"lt": lambda v: v < value, "lte": lambda v: v <= value,
                "gt": lambda v: v > value, "gte": lambda v: v >= value}[op]
        return lambda m: _kind(v := m.get(key)) == kind and test(v)
    if op in ("contains", "any", "all"):
        wanted = (value,) if op == "contains" else value
        combine = all if op == "all" else any
        return lambda m: isinstance(v := m.get(key), list) and combine(any(_same(e, x) for e in v) for x in wanted)
    if op in ("like", "ilike"):
        fold = op == "ilike"
        rx = _like_regex(value, fold)
        return lambda m: isinstance(v := m.get(key), str) and rx.fullmatch(v.casefold() if fold else v) is not None
    if op == "substring":
        return lambda m: isinstance(v := m.get(key), str) and value in v
    if op == "isubstring":
        folded = value.casefold()
        return lambda m: isinstance(v := m.get(key), str) and folded in v.casefold()
    if op == "is_empty":
        return lambda m: _is_empty(m.get(key))
    if op == "exists":
        return lambda m: key in m
    raise ValueError(f"Invalid operator: {op!r}")  # unreachable: Cond checks its operator


def compile_filter(f: Filter) -> Predicate:
    """A filter tree -> a predicate on one document's metadata dict (never raises on
    metadata; raises ``TypeError``/``ValueError`` here for a malformed tree)."""

    def walk(node, depth: int) -> Predicate:
        check_depth(depth)
        if isinstance(node, Cond):
            return _compile_cond(node)
        if isinstance(node, (And, Or)):
            parts = [walk(x, depth + 1) for x in node.items]
            if not parts:
                return lambda m: True
            combine = all if isinstance(node, And) else any
            return lambda m: combine(p(m) for p in parts)
        if isinstance(node, Not):
            inner = walk(node.item, depth + 1)
            return lambda m: not inner(m)
        raise TypeError(f"filter must be Cond/And/Or/Not; got {type(node).__name__}.")

    return walk(f, 1)
