"""The filter cache on its own: key sets per store version, brought up to date by the writes in
between (testing only the documents they wrote), computed again when writes were forgotten or
too large, against a reference that evaluates every filter in full. The ``matching`` here is
plain Python over a dict of documents (the store's is SQL; test_filters.py checks that one)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_retriever.index import QuantizedIndex
from quant_retriever.store import Cond, FilterCache


class Documents:
    """Documents (key -> group) written in versions, as a store would, with a full evaluator."""

    def __init__(self):
        self.groups: dict[int, int] = {}
        self.version = 0
        self.next_key = 0
        self.index = QuantizedIndex(4, codec="fp32")
        self.calls: list[np.ndarray | None] = []

    def matching(self, where: Cond, within: np.ndarray | None = None) -> np.ndarray:
        self.calls.append(within)
        keys = self.groups if within is None else [k for k in within.tolist() if k in self.groups]
        return np.array(sorted(k for k in keys if self.groups[k] == where.value), dtype=np.int64)

    def keys_of(self, ids: list[str]) -> dict[str, int]:
        return {i: int(i) for i in ids if int(i) in self.groups}

    def write(
        self, cache: FilterCache, add: list[int], remove: list[int], change: dict[int, int] | None = None
    ) -> None:
        """Remove keys, change the groups of kept ones (metadata updated) and add documents (with
        the given groups) as one published write."""
        dead = np.array(sorted({k for k in remove if k in self.groups}), dtype=np.int64)
        for k in dead.tolist():
            del self.groups[k]
        changed = np.array(sorted(k for k in (change or {}) if k in self.groups), dtype=np.int64)
        self.groups.update((k, change[k]) for k in changed.tolist())
        added = np.arange(self.next_key, self.next_key + len(add), dtype=np.int64)
        self.groups.update(zip(added.tolist(), add))
        self.index.add(np.ones((len(add), 4), np.float32), ids=added) if len(add) else None
        self.next_key += len(add)
        self.version += 1
        cache.remember(self.version, dead, added, changed)

    def expected(self, group: int) -> set[int]:
        return {k for k, g in self.groups.items() if g == group}


def make(docs: Documents, **kwargs) -> FilterCache:
    return FilterCache(docs.matching, docs.keys_of, threading.Lock(), **kwargs)


def selected(cache: FilterCache, docs: Documents, group: int) -> set[int]:
    return set(cache.selection(Cond("g", "eq", group), None, docs.version, docs.index).ids.tolist())


def test_a_repeated_filter_is_computed_once_per_version():
    docs = Documents()
    cache = make(docs)
    docs.write(cache, [0, 1, 0, 1], [])
    assert selected(cache, docs, 0) == {0, 2} and selected(cache, docs, 0) == {0, 2}
    assert docs.calls == [None]  # one full evaluation, then the cached key set


def test_a_write_tests_only_its_own_documents():
    docs = Documents()
    cache = make(docs)
    docs.write(cache, [0] * 50, [])
    assert len(selected(cache, docs, 0)) == 50
    docs.write(cache, [0, 1], [3, 4])
    assert selected(cache, docs, 0) == docs.expected(0)
    assert [c.tolist() if c is not None else None for c in docs.calls] == [None, [50, 51]]


def test_forgotten_or_large_writes_evaluate_again():
    docs = Documents()
    cache = make(docs, writes_kept=2, catch_up_max=3)
    docs.write(cache, [0, 1, 0], [])
    selected(cache, docs, 0)
    docs.write(cache, [0, 0, 0, 0], [])  # more than catch_up_max documents
    assert selected(cache, docs, 0) == docs.expected(0) and docs.calls[-1] is None
    for _ in range(3):  # three writes, two remembered
        docs.write(cache, [0], [])
    assert selected(cache, docs, 0) == docs.expected(0) and docs.calls[-1] is None
    docs.write(cache, [0], [])
    assert selected(cache, docs, 0) == docs.expected(0) and docs.calls[-1] is not None


def test_a_metadata_change_moves_a_kept_document_between_filters():
    docs = Documents()
    cache = make(docs)
    docs.write(cache, [0, 1, 0], [])
    assert selected(cache, docs, 0) == {0, 2} and selected(cache, docs, 1) == {1}
    docs.write(cache, [], [], {0: 1, 1: 1})
    assert selected(cache, docs, 0) == {2} and selected(cache, docs, 1) == {0, 1}
    assert [c.tolist() for c in docs.calls[2:]] == [[0, 1], [0, 1]]  # caught up by testing the two


def test_the_cache_keeps_the_last_filters_only():
    docs = Documents()
    cache = make(docs, size=2)
    docs.write(cache, [0, 1, 2], [])
    for group in (0, 1, 2, 0):
        selected(cache, docs, group)
    assert len(cache) == 2 and docs.calls == [None] * 4  # group 0 was evicted, then computed again


def test_allowed_ids_intersect_the_filter():
    docs = Documents()
    cache = make(docs)
    docs.write(cache, [0, 1, 0, 1, 0], [])
    selection = cache.selection(Cond("g", "eq", 0), ["0", "1", "4", "99"], docs.version, docs.index)
    assert selection.ids.tolist() == [0, 4]
    assert cache.selection(None, None, docs.version, docs.index) is None


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    writes=st.lists(
        st.tuples(
            st.lists(st.integers(0, 2), max_size=6),
            st.lists(st.integers(0, 40), max_size=4),
            st.dictionaries(st.integers(0, 40), st.integers(0, 2), max_size=4),
        ),
        max_size=12,
    ),
    kept=st.integers(1, 8),
    catch_up=st.integers(0, 8),
)
def test_cached_key_sets_equal_a_full_evaluation_after_any_writes(writes, kept, catch_up):
    """Differential: after every write (additions, deletions, metadata changes), each cached
    filter equals the full evaluation."""
    docs = Documents()
    cache = make(docs, writes_kept=kept, catch_up_max=catch_up)
    for add, remove, change in writes:
        docs.write(cache, add, remove, change)
        for group in (0, 1, 2):
            assert selected(cache, docs, group) == docs.expected(group)


@pytest.mark.parametrize("catch_up", [True, False])
def test_without_json_each_every_stale_set_is_computed_again(catch_up):
    docs = Documents()
    cache = make(docs, catch_up=catch_up)
    docs.write(cache, [0, 1], [])
    selected(cache, docs, 0)
    docs.write(cache, [0], [])
    assert selected(cache, docs, 0) == docs.expected(0)
    assert (docs.calls[-1] is None) is not catch_up
