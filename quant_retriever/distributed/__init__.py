"""Scale-out on Ray: an index or store split over N Ray actors, and embedding on Ray Data.

:class:`ShardedIndex` and :class:`ShardedStore` have the public API of
:class:`~quant_retriever.index.QuantizedIndex` and :class:`~quant_retriever.store.QuantizedStore`;
each of their ``shards`` is one Ray actor owning one ``QuantizedIndex``/``QuantizedStore``.
:func:`embed_corpus` embeds texts with the quantized encoder on a Ray Data actor pool and writes
them into a store. :func:`shard_of` is the routing (a stable hash of each id). See
``docs/scale.md`` for sizing.

Needs the ``ray`` extra: ``pip install 'quant-retriever[ray]'``.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "quant_retriever.distributed needs Ray; install it with: pip install 'quant-retriever[ray]'"
    ) from exc

from quant_retriever.distributed.embed import EmbedReport, embed_corpus
from quant_retriever.distributed.index import ShardedIndex
from quant_retriever.distributed.routing import ROUTING, shard_of
from quant_retriever.distributed.shards import ShardError
from quant_retriever.distributed.store import ShardedStore

__all__ = ["ShardedIndex", "ShardedStore", "ShardError", "shard_of", "ROUTING", "embed_corpus", "EmbedReport"]
