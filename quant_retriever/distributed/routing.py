"""Which shard owns an id: a hash that is stable across processes, machines and Python
versions, recorded in every sharded manifest as :data:`ROUTING`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from quant_retriever.checks import int_at_least

__all__ = ["ROUTING", "shard_of", "split_by_shard"]

#: The hashing scheme, recorded in every manifest (see :func:`shard_of`).
ROUTING = "blake2b64-utf8/splitmix64"
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def route_ints(ids: np.ndarray, shards: int) -> np.ndarray:
    """splitmix64's finaliser of each int64 id, mod ``shards`` -> ``[n]`` int64."""
    z = ids.astype(np.int64).view(np.uint64) + _GOLDEN  # array arithmetic wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z % np.uint64(shards)).astype(np.int64)


def route_strs(ids: Sequence[str], shards: int) -> np.ndarray:
    """The first 8 bytes of BLAKE2b of each id's UTF-8, little-endian, mod ``shards``."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            % shards
            for i in ids
        ),
        dtype=np.int64,
        count=len(ids),
    )


def shard_of(ids, shards: int) -> np.ndarray:
    """The shard (``[n]`` int64 in ``0..shards-1``) that owns each id.

    String ids (documents): the first 8 bytes of BLAKE2b of the UTF-8 bytes, read as a
    little-endian integer, mod ``shards``. Integer ids (:class:`ShardedIndex`): splitmix64's
    finaliser of the int64, mod ``shards``. Stable across processes, machines and Python
    versions (unlike the salted built-in ``hash``); recorded in manifests as :data:`ROUTING`.
    """
    shards = int_at_least(shards, "shards")
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of ids; got a single {type(ids).__name__}.")
    if isinstance(ids, (np.ndarray, torch.Tensor)):
        arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
        if arr.ndim != 1 or (len(arr) and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer))):
            raise TypeError(f"ids must be a 1-D array of integers; got dtype {arr.dtype} with shape {arr.shape}.")
        return route_ints(arr, shards)
    items = list(ids)
    if all(isinstance(i, str) for i in items):
        return route_strs(items, shards)
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in items):
        return route_ints(np.array(items, dtype=np.int64), shards)
    raise TypeError("ids must be all strings (documents) or all integers (index ids).")


def split_by_shard(route: np.ndarray) -> dict[int, np.ndarray]:
    """``route [n]`` (the shard of each item) -> shard -> positions of its items, in order."""
    order = np.argsort(route, kind="stable")
    shards, starts = np.unique(route[order], return_index=True)
    return {int(s): part for s, part in zip(shards, np.split(order, starts[1:]))}
