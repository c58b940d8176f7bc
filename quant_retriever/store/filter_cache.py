"""The key sets of the last filters a store searched with, so a repeated filter costs nothing
until the store changes, and a write costs only the test of its own documents.

A filter's key set is computed once (by the store's SQL, ``matching``) and kept with the store
version it is true at. Each published write is remembered with its dead and added keys; a key
set older than the store is brought up to date from the writes in between: their dead keys
leave it, and their added documents alone are tested (``matching(where, within=added)``). A
key set behind writes that were forgotten (more than ``writes_kept`` of them) or that touched
more than ``catch_up_max`` documents, is computed again in full.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

import numpy as np

from quant_retriever.filters import Filter
from quant_retriever.index import QuantizedIndex, Selection

__all__ = ["FilterCache", "FILTER_CACHE", "WRITES_KEPT", "CATCH_UP_MAX"]

#: Filters whose key sets are kept; writes remembered; the most documents a catch-up tests.
FILTER_CACHE = 16
WRITES_KEPT = 64
CATCH_UP_MAX = 10_000
#: SQLite with ``json_each`` built in, which the catch-up's restricted statements use.
_JSON_EACH = sqlite3.sqlite_version_info >= (3, 38, 0)


def sorted_member(x: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``x``'s entries that are in ``sorted_keys`` (sorted), as a bool mask: one binary search
    each, so a short ``sorted_keys`` costs next to nothing against a long ``x``."""
    if not len(sorted_keys) or not len(x):
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, x), len(sorted_keys) - 1)
    return sorted_keys[pos] == x


_EMPTY = np.zeros(0, dtype=np.int64)


class FilterCache:
    """Key sets of filters (and of allowed ids) per store version (see the module docstring).

    ``matching(where, within=None)``: the sorted keys matching ``where`` (among ``within``);
    ``keys_of(ids)``: ``{id: key}`` of document ids. ``lock``: the store's publish lock, under
    which :meth:`remember` is called as each write is published.
    """

    def __init__(
        self,
        matching: Callable[..., np.ndarray],
        keys_of: Callable[[list[str]], dict[str, int]],
        lock: threading.Lock,
        *,
        size: int = FILTER_CACHE,
        writes_kept: int = WRITES_KEPT,
        catch_up_max: int = CATCH_UP_MAX,
        catch_up: bool = _JSON_EACH,
    ):
        self._matching, self._keys_of, self._lock = matching, keys_of, lock
        self._size, self._catch_up_max, self._catch_up = size, catch_up_max, catch_up
        self._sets: OrderedDict = OrderedDict()  # (filter, ids) -> (version, Selection)
        self._sets_lock = threading.Lock()
        self._writes: deque = deque(maxlen=writes_kept)  # (version, dead, added, changed keys)

    def __len__(self) -> int:
        return len(self._sets)

    def selection(
        self, where: Filter | None, ids: Sequence[str] | None, version: int, index: QuantizedIndex
    ) -> Selection | None:
        """The index selection for a filter and/or document ids at store ``version`` (``None``
        for neither): cached, brought up to date, or computed."""
        if where is None and ids is None:
            return None
        key = (where, None if ids is None else tuple(ids))
        try:
            cached = self._sets.get(key)
        except TypeError:  # an unhashable value inside the filter: no caching
            key, cached = None, None
        if cached is not None and cached[0] == version:
            return cached[1]
        keys = None
        if cached is not None and ids is None:
            keys = self._caught_up(where, cached[1].ids, cached[0], version)
        if keys is None:
            keys = self._matching(where) if where is not None else None
        if ids is not None:
            wanted = np.unique(np.fromiter(self._keys_of(list(ids)).values(), dtype=np.int64))
            keys = wanted if keys is None else np.intersect1d(keys, wanted, assume_unique=True)
        selection = index.selection(keys)
        if key is not None:
            with self._sets_lock:
                self._sets[key] = (version, selection)
                self._sets.move_to_end(key)
                while len(self._sets) > self._size:
                    self._sets.popitem(last=False)
        return selection

    def remember(
        self, version: int, dead: np.ndarray = _EMPTY, added: np.ndarray = _EMPTY, changed: np.ndarray = _EMPTY
    ) -> None:
        """Record the write that made ``version`` (call under the publish lock): keys that died,
        were added, or stayed with new metadata; a write too large to catch up with is recorded
        without its keys."""
        small = len(dead) + len(added) + len(changed) <= self._catch_up_max
        self._writes.append((version, *((dead, added, changed) if small else (None, None, None))))

    def forget_writes(self) -> None:
        """Writes this process did not see (a read-only store moved on): start over."""
        self._writes.clear()

    def _caught_up(self, where: Filter, keys: np.ndarray, since: int, version: int) -> np.ndarray | None:
        """The keys matching ``where`` at ``version``, from ``keys`` (those at ``since``) and the
        writes in between: their dead keys leave, their added and changed documents alone are
        tested. ``None`` when those writes are not all remembered or touched too many documents."""
        with self._lock:
            writes = [w for w in self._writes if since < w[0] <= version]
        if not self._catch_up or len(writes) != version - since or any(w[1] is None for w in writes):
            return None
        dead, added, changed = (np.sort(np.concatenate([w[i] for w in writes] + [_EMPTY])) for i in (1, 2, 3))
        tested = np.union1d(added, changed)
        tested = tested[~sorted_member(tested, dead)]
        if len(dead) + len(tested) > self._catch_up_max:
            return None
        keys = keys[~(sorted_member(keys, dead) | sorted_member(keys, changed))]
        fresh = self._matching(where, within=tested) if len(tested) else tested
        fresh = fresh[~sorted_member(fresh, keys)]  # already there if the key set was newer than `since`
        return np.insert(keys, np.searchsorted(keys, fresh), fresh)
