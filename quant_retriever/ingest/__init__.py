"""Getting documents into a store: reading a folder of ``.txt``/``.md`` files or a JSONL file,
splitting it into overlapping chunks with deterministic ids, and indexing them incrementally
(:func:`index_documents`, :func:`index_path`; what ``quant-retriever index`` runs).

================  ==============================================================
input             documents
================  ==============================================================
folder            every ``.txt``/``.md`` file below it (recursively, hidden files
                  and folders skipped, sorted), UTF-8; id = path relative to the
                  folder (``guide/intro.md``)
one .txt/.md      that file; id = its name
.jsonl            one JSON object per line: ``text`` (string, required), ``id``
                  (string or integer, default ``<file name>:<line number>``),
                  ``metadata`` (object, optional); blank lines are skipped
================  ==============================================================

Chunk ids are ``<document id>#<chunk number>`` (from 0), so indexing the same input again
replaces chunks instead of adding copies. Chunk metadata: the document's own ``metadata``
(JSONL), then ``doc_id``, ``chunk`` and ``source`` (the file, relative to the input folder;
a JSONL ``metadata.source`` is kept as it is).

Splitting (:func:`split_text`) packs paragraphs (blank-line separated) into chunks of at most
``chunk_size`` characters; a paragraph that does not fit is split at sentence ends, then at
line breaks, then at spaces, and a single word longer than a chunk is cut. Each chunk after
the first of a document starts with the last ``overlap`` characters (from a word boundary) of
the one before, and the two together still fit in ``chunk_size``.

Indexing is incremental: only chunks that are new or whose text or metadata changed are
embedded; chunks past a document's new last chunk (it got shorter) are deleted; each step of
``STEP`` chunks is one upsert, so an interrupted run keeps the steps it finished. The model is
recorded in the store's own metadata (``store.get_info("embedding")``: ``model``, ``precision``,
``dim``), so a later run and ``quant-retriever query`` use the same one; the bundled copy of
all-MiniLM-L6-v2 is recorded by its hub name, so the record holds when the store moves to
another machine. A store written before the record moved there keeps it in ``embedding.json``
next to its files; that file is read when the store has no record, and replaced by the record
at the next indexing run.

Modules: ``documents`` (reading and chunking), ``indexing`` (incremental indexing into any
:class:`~quant_retriever.store.StoreLike` store, and the recorded model).
"""

from quant_retriever.ingest.documents import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_OVERLAP,
    SUFFIXES,
    Chunk,
    Document,
    chunk_documents,
    read_documents,
    split_text,
)
from quant_retriever.ingest.indexing import (
    DEFAULT_CODEC,
    MODEL_INFO,
    STEP,
    IndexResult,
    index_documents,
    index_path,
    load_store_encoder,
    open_store,
)

__all__ = [
    "Document",
    "Chunk",
    "IndexResult",
    "SUFFIXES",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_OVERLAP",
    "DEFAULT_CODEC",
    "MODEL_INFO",
    "STEP",
    "read_documents",
    "split_text",
    "chunk_documents",
    "index_documents",
    "index_path",
    "load_store_encoder",
    "open_store",
]
