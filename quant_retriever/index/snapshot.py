"""What a search reads: an immutable :class:`Snapshot` of the codes, the id map and the alive
mask, which every write replaces whole (so readers never wait for writers), and
:class:`Selection`, a set of ids resolved to rows once per snapshot."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from quant_retriever.rescore import RescoreFile

__all__ = ["Snapshot", "Selection", "SUBSET_FRACTION", "on_device"]

#: A selection of fewer than 1/SUBSET_FRACTION of the rows is scanned as a gathered subset of
#: rows; larger ones as a mask over every row.
SUBSET_FRACTION = 16


def on_device(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """``host`` as a tensor on ``device`` (sharing its memory on the CPU)."""
    t = torch.from_numpy(host)
    return t if device.type == "cpu" else t.to(device)


def merge_order(snap: Snapshot, new_ids: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The id map after appending ``new_ids`` at rows ``start..``: still ``None`` while ids
    stay sorted (the common case: automatic ids), else sorted ``(ids, rows)`` arrays."""
    if snap.order is None:
        ordered = np.all(new_ids[1:] >= new_ids[:-1]) and (start == 0 or new_ids[0] >= snap.ids[start - 1])
        if ordered:
            return None
        keys, rows = snap.ids[:start], np.arange(start, dtype=np.int64)
    else:
        keys, rows = snap.order
    by = np.argsort(new_ids, kind="stable")
    add_keys, add_rows = new_ids[by], np.arange(start, start + len(new_ids), dtype=np.int64)[by]
    at = np.searchsorted(keys, add_keys, side="right")
    return np.insert(keys, at, add_keys), np.insert(rows, at, add_rows)


def order_of(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The id map of rows holding ``ids``: ``None`` when they are sorted, else ``(sorted ids,
    their rows)``."""
    if len(ids) < 2 or np.all(ids[1:] >= ids[:-1]):
        return None
    by = np.argsort(ids, kind="stable")
    return ids[by], by.astype(np.int64)


@dataclass(frozen=True)
class Snapshot:
    """What a search reads, published whole by each write. Arrays are never modified at
    positions below ``rows`` once published (writes copy them), so a reader needs no lock."""

    codes: torch.Tensor  # [capacity, row_bytes] uint8 on the device; rows [0, rows) valid
    ids: np.ndarray  # [capacity] int64: row -> id
    alive_host: np.ndarray | None  # [capacity] bool, None while no row is dead
    alive: torch.Tensor | None  # the same on the device (shares memory on the CPU)
    order: tuple[np.ndarray, np.ndarray] | None  # (ids sorted, their rows); None: ids[:rows] sorted
    rows: int
    n_alive: int
    rescore: RescoreFile | None

    @classmethod
    def empty(cls, row_bytes: int, device: torch.device, rescore: RescoreFile | None) -> Snapshot:
        codes = torch.zeros(0, row_bytes, dtype=torch.uint8, device=device)
        return cls(codes, np.zeros(0, dtype=np.int64), None, None, None, 0, 0, rescore)

    @classmethod
    def of(
        cls, codes: torch.Tensor, ids: np.ndarray, alive_host: np.ndarray | None, rescore: RescoreFile | None
    ) -> Snapshot:
        """All of ``codes`` (on their device) and ``ids``, dead where ``alive_host`` is False."""
        n_alive = len(ids) if alive_host is None else int(alive_host.sum())
        alive = None if alive_host is None else on_device(alive_host, codes.device)
        return cls(codes, ids, alive_host, alive, order_of(ids), len(ids), n_alive, rescore)

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64 array), -1 for ids not (or no longer) in the index."""
        keys, rows_of = (self.ids[: self.rows], None) if self.order is None else self.order
        pos = np.searchsorted(keys, ids, side="right") - 1  # a re-added id's live row is its last
        safe = np.maximum(pos, 0)
        hit = (pos >= 0) & (keys[safe] == ids) if len(keys) else np.zeros(len(ids), dtype=bool)
        rows = np.where(hit, safe if rows_of is None else rows_of[safe], -1)
        if self.alive_host is not None:
            rows[hit] = np.where(self.alive_host[rows[hit]], rows[hit], -1)
        return rows

    def live_rows(self) -> np.ndarray:
        if self.alive_host is None:
            return np.arange(self.rows, dtype=np.int64)
        return np.flatnonzero(self.alive_host[: self.rows])

    def without(self, rows: np.ndarray) -> Snapshot:
        """This snapshot with ``rows`` dead (a copy of the alive mask: published masks never change)."""
        alive_host = np.ones(len(self.ids), dtype=bool) if self.alive_host is None else self.alive_host.copy()
        alive_host[rows] = False
        alive = on_device(alive_host, self.codes.device)
        return replace(self, alive_host=alive_host, alive=alive, n_alive=self.n_alive - len(rows))

    def only(self, ids: np.ndarray) -> Snapshot:
        """This snapshot with exactly the rows of ``ids`` alive, whatever was dead before."""
        alive_host = np.zeros(len(self.ids), dtype=bool)
        alive_host[: self.rows] = np.isin(self.ids[: self.rows], ids)
        alive = on_device(alive_host, self.codes.device)
        return replace(self, alive_host=alive_host, alive=alive, n_alive=int(alive_host.sum()))

    def grown(self, rows: int) -> Snapshot:
        """This snapshot with storage for ``rows`` rows: the same arrays when they fit, else new
        ones grown by half (amortised O(1) per row); only positions past ``rows`` differ."""
        cap = self.codes.shape[0]
        if rows <= cap:
            return self
        new_cap = max(rows, cap + cap // 2, 16)
        codes = torch.zeros(new_cap, self.codes.shape[1], dtype=torch.uint8, device=self.codes.device)
        codes[: self.rows] = self.codes[: self.rows]
        ids = np.zeros(new_cap, dtype=np.int64)
        ids[: self.rows] = self.ids[: self.rows]
        alive_host = alive = None
        if self.alive_host is not None:
            alive_host = np.zeros(new_cap, dtype=bool)
            alive_host[: self.rows] = self.alive_host[: self.rows]
            alive = on_device(alive_host, self.codes.device)
        return replace(self, codes=codes, ids=ids, alive_host=alive_host, alive=alive)

    def appended(self, codes: torch.Tensor, ids: np.ndarray) -> Snapshot:
        """This snapshot with ``codes`` and ``ids`` as new rows: written into storage past
        ``rows`` (which no published snapshot reads), grown when it is full."""
        start, n = self.rows, len(ids)
        grown = self.grown(start + n)
        grown.codes[start : start + n] = codes
        grown.ids[start : start + n] = ids
        if grown.alive_host is not None:
            grown.alive_host[start : start + n] = True
            if grown.alive.device.type != "cpu":
                grown.alive[start : start + n] = True
        return replace(grown, rows=start + n, n_alive=self.n_alive + n, order=merge_order(self, ids, start))


class Selection:
    """A set of ids to restrict searches to (see :meth:`QuantizedIndex.selection`), with its
    rows cached per index snapshot: a filter evaluated once costs nothing on later searches
    until the index changes. Ids not in the index are ignored."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self._cached: tuple[Snapshot, np.ndarray, torch.Tensor | None] | None = None

    @classmethod
    def of(cls, ids) -> Selection:
        """``ids`` (a sequence, array or tensor of ints; a :class:`Selection` as it is) checked
        and sorted: ``TypeError`` for anything but integers."""
        if isinstance(ids, Selection):
            return ids
        if isinstance(ids, (str, bytes)):
            raise TypeError("allowed ids must be a sequence of integers; got a string.")
        arr = (
            ids.cpu().numpy()
            if isinstance(ids, torch.Tensor)
            else np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        )
        if len(arr) and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"allowed ids must be integers; got dtype {arr.dtype}.")
        arr = arr.astype(np.int64).reshape(-1)
        return cls(arr if (arr[1:] > arr[:-1]).all() else np.unique(arr))  # filters give sorted keys

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Selection({len(self.ids)} ids)"

    def resolve(self, snap: Snapshot, device: torch.device) -> tuple[np.ndarray, torch.Tensor | None]:
        """``(rows, mask)`` for ``snap``: the live rows of the ids (sorted), and a ``[rows]``
        bool mask on ``device`` unless the rows are few enough to be scanned as a subset."""
        cached = self._cached
        if cached is not None and cached[0] is snap:
            return cached[1], cached[2]
        rows = snap.lookup(self.ids)
        rows = np.sort(rows[rows >= 0])
        mask = None
        if len(rows) * SUBSET_FRACTION > snap.rows:
            host = np.zeros(snap.rows, dtype=bool)
            host[rows] = True
            mask = on_device(host, device)
        self._cached = (snap, rows, mask)
        return rows, mask
