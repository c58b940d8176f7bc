"""``QuantizedIndex``, one concern per module:

============ ======================================================================
module       holds
============ ======================================================================
core         the public ``QuantizedIndex``: reads, writes, compaction, lifecycle
snapshot     the immutable snapshot searches read, its id map, selections of ids
search       the search pipeline: first stage (chunked where a kernel cannot keep
             the best rows itself), candidates, rescoring, and its constants
staging      the write protocol of an owner with a commit point of its own
directory    the on-disk format: generations, manifest, appends, load and checks,
             the disk half of compaction
opening      opening a directory, and a read-only index's refresh
============ ======================================================================
"""

from quant_retriever.checks import as_ids, as_vectors
from quant_retriever.devices import resolve_device
from quant_retriever.index.core import COMPACT_FRACTION, COMPACT_MIN_DEAD, MemoryUsage, QuantizedIndex, check_settings
from quant_retriever.index.directory import MANIFEST, MAX_DIM, discard_empty_index, empty_index_problem
from quant_retriever.index.opening import READ_RETRIES
from quant_retriever.index.search import SearchResult
from quant_retriever.index.snapshot import Selection, Snapshot
from quant_retriever.index.staging import Staged

__all__ = [
    "QuantizedIndex",
    "SearchResult",
    "MemoryUsage",
    "Selection",
    "Snapshot",
    "Staged",
    "check_settings",
    "as_vectors",
    "as_ids",
    "resolve_device",
    "empty_index_problem",
    "discard_empty_index",
    "MANIFEST",
    "MAX_DIM",
    "READ_RETRIES",
    "COMPACT_FRACTION",
    "COMPACT_MIN_DEAD",
]
