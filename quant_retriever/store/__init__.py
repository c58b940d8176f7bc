"""``QuantizedStore``, one concern per module:

============= ====================================================================
module        holds
============= ====================================================================
core          the public ``QuantizedStore``: creation, the commit protocol of its
              writes, reads, lifecycle
documents     ``Record`` and the checks of documents and metadata
database      the SQLite schema, the identification of a store file, the checks
              of the directory's files, the connections and their reader pool
opening       opening a store: files checked, records against the index,
              reconciling an interrupted write; a read-only store's refresh
filter_cache  the key sets of recent filters, kept up to date by writes
search        the optimistic search (readers never lock out writers)
creation      creating a store atomically as a whole
protocol      ``StoreLike``: what ingestion and the adapters need of any store
============= ====================================================================
"""

from quant_retriever.checks import check_strings, int_at_least
from quant_retriever.filters import And, Cond, Filter, Not, Operator, Or
from quant_retriever.store.core import QuantizedStore, check_metric
from quant_retriever.store.database import DB_FILE, INDEX_DIR, METRICS, Metric, empty_store_problem
from quant_retriever.store.documents import MAX_METADATA_DEPTH, Record, check_documents, metadata_json
from quant_retriever.store.filter_cache import FilterCache
from quant_retriever.store.keywords import DEFAULT_TOKENIZER, TOKENIZERS, Tokenizer
from quant_retriever.store.protocol import StoreLike

__all__ = [
    "DEFAULT_TOKENIZER",
    "TOKENIZERS",
    "Tokenizer",
    "QuantizedStore",
    "StoreLike",
    "Record",
    "Cond",
    "And",
    "Or",
    "Not",
    "Filter",
    "Operator",
    "Metric",
    "METRICS",
    "FilterCache",
    "metadata_json",
    "check_documents",
    "check_metric",
    "check_rescore_multiplier",
    "check_strings",
    "empty_store_problem",
    "DB_FILE",
    "INDEX_DIR",
    "MAX_METADATA_DEPTH",
]


def check_rescore_multiplier(value: object) -> int:
    """``value`` as a rescore multiplier (an int >= 1); ``TypeError``/``ValueError`` otherwise.
    The one check, shared with the framework adapters that keep a default multiplier."""
    return int_at_least(value, "rescore_multiplier")
