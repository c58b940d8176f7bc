"""What travels between :class:`~quant_retriever.server.client.RemoteStore` and the server, as
JSON: filter trees and records.

A filter is the tree of :mod:`quant_retriever.filters`, written as it is built:

===========================================  ==========================================
JSON                                          filter
===========================================  ==========================================
``{"key": "year", "op": "gte", "value": 2020}``  ``Cond("year", "gte", 2020)``
``{"and": [f, ...]}`` / ``{"or": [f, ...]}``      ``And((f, ...))`` / ``Or((f, ...))``
``{"not": f}``                                 ``Not(f)``
===========================================  ==========================================

JSON keeps a value's kind (``true`` is not ``1``), so a filter reads back equal to the one
written. Parsing checks each node as the constructors do (``TypeError``/``ValueError`` with
what was expected) and refuses trees deeper than :data:`~quant_retriever.filters.MAX_DEPTH`
before recursing.
"""

from __future__ import annotations

from typing import Any

from quant_retriever.filters import And, Cond, Filter, Not, Or, check_depth
from quant_retriever.store.documents import Record

__all__ = ["filter_to_json", "filter_from_json", "record_to_json", "record_from_json"]

_COND_FIELDS = {"key", "op", "value"}


def filter_to_json(where: Filter) -> dict:
    """The JSON form of a filter tree (see the module docstring)."""
    if isinstance(where, Cond):
        value = list(where.value) if isinstance(where.value, tuple) else where.value
        return {"key": where.key, "op": where.op, "value": value}
    if isinstance(where, (And, Or)):
        return {type(where).__name__.lower(): [filter_to_json(x) for x in where.items]}
    if isinstance(where, Not):
        return {"not": filter_to_json(where.item)}
    raise TypeError(f"filter must be Cond/And/Or/Not; got {type(where).__name__}.")


def filter_from_json(spec: Any, _depth: int = 1) -> Filter:
    """A filter tree from its JSON form; ``TypeError``/``ValueError`` saying what was expected."""
    check_depth(_depth)
    if not isinstance(spec, dict):
        raise TypeError(f"a filter is a JSON object; got {type(spec).__name__}.")
    keys = set(spec)
    if keys in ({"and"}, {"or"}):
        (name,) = keys
        items = spec[name]
        if not isinstance(items, list):
            raise TypeError(f'"{name}" takes a list of filters; got {type(items).__name__}.')
        parts = tuple(filter_from_json(x, _depth + 1) for x in items)
        return And(parts) if name == "and" else Or(parts)
    if keys == {"not"}:
        return Not(filter_from_json(spec["not"], _depth + 1))
    if {"key", "op"} <= keys <= _COND_FIELDS:
        return Cond(spec["key"], spec["op"], spec.get("value"))
    raise ValueError(
        'a filter is {"key": ..., "op": ..., "value": ...}, {"and": [...]}, {"or": [...]} or {"not": ...}; '
        f"got an object with keys {sorted(map(str, keys))}."
    )


def record_to_json(record: Record) -> dict:
    return {"id": record.id, "text": record.text, "metadata": record.metadata}


def record_from_json(obj: dict) -> Record:
    """A record as the server sent it (``key``: -1, the server's own numbering stays there)."""
    return Record(obj["id"], obj["text"], obj["metadata"], -1)
