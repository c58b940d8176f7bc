"""Metadata filters: a small tree (:class:`Cond`, :class:`And`, :class:`Or`, :class:`Not`) that
the adapters build from LangChain dicts or LlamaIndex ``MetadataFilters``, and its evaluation
into the set of matching document keys (:func:`matching_keys`), in SQLite over an indexed
table of every document's top-level metadata fields (:data:`FIELDS_SCHEMA`,
:func:`field_rows`): a filter costs indexed lookups and set operations on key arrays, never a
pass of Python over every document. Keys and values are always bound as SQL parameters.

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
when it is built; evaluating it (SQL over the indexed ``fields`` table, see
:func:`matching_keys`) never raises, whatever the metadata holds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

__all__ = [
    "Cond",
    "And",
    "Or",
    "Not",
    "Filter",
    "Operator",
    "MAX_DEPTH",
    "FIELDS_SCHEMA",
    "check_depth",
    "check_filter",
    "field_rows",
    "matching_keys",
    "matches",
]

Operator = Literal[
    "eq",
    "ne",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "nin",
    "contains",
    "any",
    "all",
    "like",
    "ilike",
    "substring",
    "isubstring",
    "is_empty",
    "exists",
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
        raise TypeError(
            f"operator {op!r} compares with a str, number, bool or None; got {type(value).__name__} {value!r}."
        )
    if kind == "number" and not math.isfinite(value):
        raise ValueError(f"operator {op!r} needs a finite number; got {value!r}.")
    return value


def _typed(value: Any) -> Any:
    """A value with the types of its parts: ``False``, ``0`` and ``0.0`` stay apart."""
    if isinstance(value, tuple):
        return tuple(_typed(x) for x in value)
    return type(value).__name__, value


@dataclass(frozen=True, eq=False)
class Cond:
    """``metadata.get(key) <op> value`` (see the module docstring for each operator).

    The value is checked here: a wrong kind raises ``TypeError``, a non-finite number or a
    malformed LIKE pattern ``ValueError``. Two conditions are equal only if their values have
    the same types too (``x == False`` and ``x == 0`` select different documents), so a filter
    is a safe cache key.
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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cond):
            return NotImplemented
        return (self.key, self.op, _typed(self.value)) == (other.key, other.op, _typed(other.value))

    def __hash__(self) -> int:
        return hash((self.key, self.op, _typed(self.value)))


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


Filter = Cond | And | Or | Not


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


#: One row per top-level metadata field of a document, plus one per scalar element of a list
#: field (``elem = 1``). ``kind``: 0 null, 1 bool, 2 number, 3 str, 4 list, 5 object; ``val``:
#: the value (bools 0/1, a list's length; NULL for null and objects). ``val`` has no type
#: affinity, so integers and floats compare as numbers and text as UTF-8 code points.
FIELDS_SCHEMA = """
CREATE TABLE fields (key INTEGER NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL, elem INTEGER NOT NULL, val);
CREATE INDEX fields_by_value ON fields (name, elem, kind, val, key);
CREATE INDEX fields_by_key ON fields (key);
"""
_KIND_CODE = {"null": 0, "bool": 1, "number": 2, "str": 3, "list": 4, "object": 5}
_SCALARS = ("null", "bool", "number", "str")
_SQL_ORDER = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _code_and_val(v: Any) -> tuple[int, Any]:
    kind = _kind(v)
    if kind == "bool":
        return 1, int(v)
    if kind == "list":
        return 4, len(v)
    if kind == "number" and isinstance(v, int) and not -(2**63) <= v < 2**63:
        return 2, float(v)  # SQLite integers are 64-bit; metadata never holds larger ones
    return _KIND_CODE[kind], v if kind in ("number", "str") else None


#: The ``fields`` kind code of a scalar of exactly this type (the common case, without _kind).
_SCALAR_CODE = {str: 3, int: 2, float: 2, type(None): 0}


def field_rows(key: int, metadata: dict) -> list[tuple]:
    """The ``fields`` rows ``(key, name, kind, elem, val)`` of one document's metadata."""
    rows = []
    for name, v in metadata.items():
        code = _SCALAR_CODE.get(type(v))
        if code is not None and (type(v) is not int or -(2**63) <= v < 2**63):
            rows.append((key, name, code, 0, v))
            continue
        code, val = _code_and_val(v)
        rows.append((key, name, code, 0, val))
        if isinstance(v, list):
            rows += [(key, name, _code_and_val(e)[0], 1, _code_and_val(e)[1]) for e in v if _kind(e) in _SCALARS]
    return rows


Execute = Callable[[str, tuple], list]


class _Keys:
    """Evaluates a tree to sorted unique int64 key arrays with ``execute(sql, params)``; with
    ``within`` (sorted keys), among those documents only: every statement is restricted to
    them (one JSON array parameter) and they are the universe."""

    def __init__(self, execute: Execute, universe: Callable[[], np.ndarray], within: np.ndarray | None = None):
        self._all = None
        self._within = None if within is None else json.dumps(within.tolist())
        if within is not None:
            universe = lambda: within  # noqa: E731
        self._execute, self._universe = execute, universe

    def execute(self, sql: str, params: tuple) -> list:
        if self._within is not None:  # every statement here ends with its WHERE clause
            sql, params = f"{sql} AND key IN (SELECT value FROM json_each(?))", (*params, self._within)
        return self._execute(sql, params)

    @property
    def universe(self) -> np.ndarray:
        """Every key, sorted: asked for once, and only by negations and null tests."""
        if self._all is None:
            self._all = np.asarray(self._universe(), dtype=np.int64)
        return self._all

    def rows(self, where: str, params: tuple) -> np.ndarray:
        # one string of keys from SQLite instead of a tuple per row; sorted and made distinct here
        (joined,) = self.execute(f"SELECT group_concat(key) FROM fields WHERE {where}", params)[0]
        if not joined:
            return np.zeros(0, dtype=np.int64)
        keys = np.sort(np.array(joined.split(","), dtype=np.int64))
        return keys[np.concatenate(([True], keys[1:] != keys[:-1]))]

    def eq(self, name: str, value: Any, elem: int = 0) -> np.ndarray:
        if value is None and not elem:  # metadata.get(name) is None: missing or null
            return np.setdiff1d(self.universe, self.rows("name = ? AND elem = 0 AND kind != 0", (name,)), True)
        code, val = _code_and_val(value)
        if val is None:
            return self.rows("name = ? AND elem = ? AND kind = ?", (name, elem, code))
        return self.rows("name = ? AND elem = ? AND kind = ? AND val = ?", (name, elem, code, val))

    def union(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def intersect(self, parts: list[np.ndarray]) -> np.ndarray:
        out = self.universe
        for p in parts:
            out = np.intersect1d(out, p, assume_unique=True)
        return out

    def text(self, name: str, test: Callable[[str], bool]) -> np.ndarray:
        found = self.execute("SELECT key, val FROM fields WHERE name = ? AND elem = 0 AND kind = 3", (name,))
        return np.unique(np.array([k for k, v in found if test(v)], dtype=np.int64))

    def cond(self, c: Cond) -> np.ndarray:
        key, op, value = c.key, c.op, c.value
        if op in ("eq", "ne"):
            hit = self.eq(key, value)
            return hit if op == "eq" else np.setdiff1d(self.universe, hit, True)
        if op in ("in", "nin"):
            hit = self.union([self.eq(key, x) for x in value])
            return hit if op == "in" else np.setdiff1d(self.universe, hit, True)
        if op in _ORDER_OPS:
            code, val = _code_and_val(value)
            return self.rows(f"name = ? AND elem = 0 AND kind = ? AND val {_SQL_ORDER[op]} ?", (key, code, val))
        if op == "contains":
            return self.eq(key, value, elem=1)
        if op in ("any", "all"):
            if op == "all" and not value:  # every list
                return self.rows("name = ? AND elem = 0 AND kind = 4", (key,))
            parts = [self.eq(key, x, elem=1) for x in value]
            return self.union(parts) if op == "any" else self.intersect(parts)
        if op in ("like", "ilike"):
            rx, fold = _like_regex(value, op == "ilike"), op == "ilike"
            return self.text(key, lambda v: rx.fullmatch(v.casefold() if fold else v) is not None)
        if op == "substring":
            return self.text(key, lambda v: value in v)
        if op == "isubstring":
            folded = value.casefold()
            return self.text(key, lambda v: folded in v.casefold())
        if op == "is_empty":
            return self.union(
                [
                    self.eq(key, None),
                    self.rows("name = ? AND elem = 0 AND kind = 3 AND val = ''", (key,)),
                    self.rows("name = ? AND elem = 0 AND kind = 4 AND val = 0", (key,)),
                ]
            )
        if op == "exists":
            return self.rows("name = ? AND elem = 0", (key,))
        raise ValueError(f"Invalid operator: {op!r}")  # unreachable: Cond checks its operator

    def walk(self, node, depth: int) -> np.ndarray:
        check_depth(depth)
        if isinstance(node, Cond):
            return self.cond(node)
        if isinstance(node, (And, Or)):
            parts = [self.walk(x, depth + 1) for x in node.items]
            if not parts:
                return self.universe
            return self.intersect(parts) if isinstance(node, And) else self.union(parts)
        if isinstance(node, Not):
            return np.setdiff1d(self.universe, self.walk(node.item, depth + 1), True)
        raise TypeError(f"filter must be Cond/And/Or/Not; got {type(node).__name__}.")


def check_filter(where: object) -> None:
    """``TypeError`` unless ``where`` is a filter tree, ``ValueError`` if it nests deeper than
    :data:`MAX_DEPTH` (checked without recursion, before anything runs)."""
    stack = [(where, 1)]
    while stack:
        node, depth = stack.pop()
        check_depth(depth)
        if isinstance(node, (And, Or)):
            stack.extend((x, depth + 1) for x in node.items)
        elif isinstance(node, Not):
            stack.append((node.item, depth + 1))
        elif not isinstance(node, Cond):
            raise TypeError(f"filter must be Cond/And/Or/Not; got {type(node).__name__}.")


def matching_keys(
    where: Filter, execute: Execute, universe: Callable[[], np.ndarray], within: np.ndarray | None = None
) -> np.ndarray:
    """The sorted keys of the documents matching ``where``, given ``execute(sql, params) ->
    rows`` on a database with :data:`FIELDS_SCHEMA` and ``universe() ->`` every key (sorted),
    called only when the filter needs it (a negation, a null test). ``within`` (sorted keys of
    existing documents): only those documents are tested (SQLite 3.38+, for ``json_each``)."""
    return _Keys(execute, universe, within).walk(where, 1)


def matches(where: Filter, metadata: dict) -> bool:
    """Whether one document's metadata matches ``where``: the same SQL evaluation, over a
    throwaway one-document database (for checks and tests, not for bulk use)."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    try:
        db.executescript(FIELDS_SCHEMA)
        db.executemany("INSERT INTO fields VALUES (?, ?, ?, ?, ?)", field_rows(1, metadata))
        return bool(len(matching_keys(where, lambda sql, p: db.execute(sql, p).fetchall(), lambda: np.array([1]))))
    finally:
        db.close()
