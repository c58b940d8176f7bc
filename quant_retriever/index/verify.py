"""``QuantizedIndex.verify``: every part of an index cross-checked (the id map, the alive mask
against the recorded deletions, the numbers of the codes and of the rescore copy, the files)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from quant_retriever.index.core import QuantizedIndex

__all__ = ["problems"]


def problems(index: QuantizedIndex) -> list[str]:
    """What disagrees in ``index`` (call with its lock held); ``[]`` when consistent."""
    snap, found = index._snap, []
    live = snap.live_rows()
    live_ids = snap.ids[live]
    if len(np.unique(live_ids)) != len(live_ids):
        found.append("live ids repeat")
    if len(live_ids) and not np.array_equal(snap.lookup(live_ids), live):
        found.append("id -> row map disagrees with ids and deletions")
    recorded, dead = index._files.n_deleted, snap.rows - snap.n_alive
    if not index._restricted and dead != recorded + sum(len(p) for p in index._pending):
        found.append(f"{dead} dead rows but {recorded} deletions recorded")
    if index.rescore and (snap.rescore is None or snap.rescore.count != snap.rows):
        found.append(f"rescore copy has {snap.rescore.count if snap.rescore else 0} rows; codes have {snap.rows}")
    elif index.rescore:
        try:
            snap.rescore.check()
            bad = snap.rescore.bad_rows(snap.rows)
            if len(bad):
                found.append(f"{snap.rescore.path.name}: rows {bad[:5].tolist()} hold NaN or infinities")
        except ValueError as exc:
            found.append(str(exc))
    bad = index.codec.bad_rows(snap.codes[: snap.rows])
    if len(bad):
        found.append(f"codes: rows {bad[:5].tolist()} hold NaN or infinities")
    if index.path is not None:
        found += index._files.verify(snap, index._pending, index._restricted)
    return found
