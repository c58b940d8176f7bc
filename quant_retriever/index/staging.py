"""The write protocol of an owner with a commit point of its own (the store, whose commit point
is a SQLite transaction), on top of a :class:`~quant_retriever.index.QuantizedIndex`:

1. ``staged = index.stage(vectors)`` writes the new rows and commits them in the index's
   files, without making them searchable: if a crash follows, they are rows the owner does not
   know, which it drops when it opens again (``index.stage(None)`` stages no rows);
2. the owner commits its own records, then ``staged.publish(dead)`` makes the rows searchable
   and the ids ``dead`` unsearchable, in memory and in one snapshot (it cannot fail); or, when
   the owner's commit failed, ``staged.discard()`` puts the index's manifest back;
3. ``index.record_deletions()`` records the published deletions in the files, best effort
   (an I/O error warns; the owner reconciles them when it opens again).

A read-only owner instead makes exactly its records' rows alive: ``index.restrict(ids)``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from quant_retriever.index.snapshot import Snapshot

if TYPE_CHECKING:
    from quant_retriever.index.core import QuantizedIndex

__all__ = ["Staged"]


class Staged:
    """Rows written and committed in an index's files but not yet searchable (see the module
    docstring). ``ids``: the staged rows' ids (``[n]`` int64). End it with exactly one of
    :meth:`publish` and :meth:`discard`."""

    def __init__(self, index: QuantizedIndex, snapshot: Snapshot, next_id: int, ids: np.ndarray, sums: dict):
        self._index, self._snapshot, self._next_id, self._sums = index, snapshot, next_id, sums
        self.ids = ids
        self._done = False

    def __repr__(self) -> str:
        return f"Staged({len(self.ids)} rows, {'ended' if self._done else 'pending'})"

    def publish(self, dead: np.ndarray | None = None) -> None:
        """Make the staged rows searchable and the ids ``dead`` (those not in the index are
        ignored) unsearchable, as one new snapshot; in memory only, so it cannot fail. The dead
        rows are recorded in the files by :meth:`QuantizedIndex.record_deletions`."""
        self._end()
        index = self._index
        snap = index._snap
        if len(self.ids):
            if self._snapshot.rescore is not None:
                self._snapshot.rescore.commit(self._snapshot.rows, self._sums["rescore"])
            snap, index._next_id = self._snapshot, self._next_id
            index._files.sums = {name: self._sums[name] for name in index._files.sums}
        if dead is not None and len(dead):
            rows = snap.lookup(np.asarray(dead, dtype=np.int64))
            rows = np.unique(rows[rows >= 0])
            if len(rows):
                snap = snap.without(rows)
                index._pending.append(rows)
        index._snap = snap

    def discard(self) -> None:
        """After the owner's commit failed: put the manifest back to the published state, best
        effort (rows it still names are dropped when the owner reconciles on opening)."""
        self._end()
        if len(self.ids):
            try:
                self._index._files.commit(self._index._snap, self._index._next_id)
            except OSError:
                pass

    def _end(self) -> None:
        if self._done:
            raise ValueError("this staged write was already published or discarded.")
        self._done = True


def record_deletions(index: QuantizedIndex) -> None:
    """Record published deletions in the index's files, then compact when worth it. Best
    effort: an I/O error (a full disk) only warns; the deletions stay in memory, are retried
    by the next write, and the owner reconciles them when it opens the index again."""
    try:
        if index._pending and not index._read_only:
            index._files.record_deletions(index._snap, index._next_id, np.concatenate(index._pending))
            index._pending = []
        index._compact_if_worth_it()
    except OSError as exc:
        warnings.warn(
            f"quant_retriever: could not record deletions in {index.path} ({exc}); they stay in effect in "
            "memory, are retried by the next write and are reconciled when the store is opened again.",
            RuntimeWarning,
            stacklevel=3,
        )
