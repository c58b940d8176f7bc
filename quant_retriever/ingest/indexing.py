"""Indexing documents into a store incrementally, and the embedding model recorded in it (see
the package docstring)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quant_retriever.ingest.documents import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_OVERLAP,
    Chunk,
    Document,
    check_sizes,
    chunk_documents_unchecked,
    read_documents,
)
from quant_retriever.store import StoreLike
from quant_retriever.store.keywords import DEFAULT_TOKENIZER

if TYPE_CHECKING:
    from quant_retriever.index import MemoryUsage
    from quant_retriever.models import Encoder

__all__ = ["IndexResult", "index_documents", "index_path", "load_store_encoder", "open_store"]

DEFAULT_CODEC = "int4"
#: Chunks embedded and written per step (one upsert each: an interrupted run keeps its steps).
STEP = 256
#: The store info that records the embedding model.
MODEL_INFO = "embedding"
#: Where stores written before the model was recorded in the store kept it (read once).
_LEGACY_SETTINGS = ("embedding.json", "quant_retriever.cli")


# --------------------------------------------------------------------------- indexing


@dataclass(frozen=True)
class IndexResult:
    """What an indexing run did, and the store after it: ``embedded`` new or changed chunks,
    ``unchanged`` ones skipped, ``removed`` stale ones; ``records`` in the store; the recorded
    ``model``, ``precision`` and ``dim``; the store's ``codec``, ``rescore`` (and its
    ``rescore_dtype``), ``device`` and ``memory``."""

    documents: int
    chunks: int
    embedded: int
    unchanged: int
    removed: int
    records: int
    model: str
    precision: str
    dim: int
    codec: str
    rescore: bool
    rescore_dtype: str
    device: str
    memory: MemoryUsage

    def __repr__(self) -> str:
        return (
            f"IndexResult({self.documents} documents -> {self.chunks} chunks: {self.embedded} embedded, "
            f"{self.unchanged} unchanged, {self.removed} stale removed; {self.records} records, "
            f"{self.model} {self.precision}, codec {self.codec})"
        )


def index_documents(
    store: StoreLike,
    encoder: Encoder | Callable[[], Encoder],
    documents: Sequence[Document],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 32,
    progress: bool = False,
) -> IndexResult:
    """Bring ``store`` in line with ``documents``: embed and upsert the chunks that are new or
    changed, delete the stale ones, and record the model in the store (see the module docstring).

    ``encoder`` is an :class:`~quant_retriever.models.Encoder`, or a function that loads one,
    called only when some chunk must be embedded or the store records no model yet.

    Raises ``ValueError`` before writing anything when the encoder's model is not the one the
    store records, or its dimension not the store's; ``TypeError``/``ValueError`` for bad
    arguments.
    """
    from quant_retriever.models.encoder import Encoder, check_batch_size

    if not isinstance(store, StoreLike):
        raise TypeError(f"store must be a QuantizedStore or a ShardedStore; got {type(store).__name__}.")
    if not (isinstance(encoder, Encoder) or callable(encoder)):
        raise TypeError(f"encoder must be an Encoder or a function that loads one; got {type(encoder).__name__}.")
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of Document; got {type(documents).__name__}.")
    seen: set[str] = set()
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise TypeError(f"documents[{i}] must be a Document; got {type(doc).__name__}.")
        if doc.id in seen:
            raise ValueError(f"documents[{i}]: duplicate document id {doc.id!r}.")
        seen.add(doc.id)
    check_sizes(chunk_size, overlap)
    check_batch_size(batch_size)
    return _index_documents(store, encoder, list(documents), chunk_size, overlap, batch_size, progress)


def _index_documents(store, encoder, documents, chunk_size, overlap, batch_size, progress) -> IndexResult:
    from quant_retriever.models.encoder import Encoder

    chunks = chunk_documents_unchecked(documents, chunk_size, overlap)
    if not chunks:
        raise ValueError("no document has any text: nothing to index.")
    recorded = _recorded_model(store)
    loaded = encoder if isinstance(encoder, Encoder) else None
    if loaded is not None:
        _check_encoder(store, loaded, recorded)
    todo = _changed_chunks(store, chunks)
    if loaded is None and (todo or recorded is None):
        loaded = encoder()
        _check_encoder(store, loaded, recorded)
    _embed_chunks(store, loaded, todo, batch_size, progress)
    removed = _drop_stale_chunks(store, chunks)
    if loaded is not None:
        recorded = {"model": _record_name(loaded.model_name), "precision": loaded.precision, "dim": loaded.dim}
    if store.get_info(MODEL_INFO) != recorded:
        store.set_info(MODEL_INFO, recorded)
    if store.path is not None:
        (store.path / _LEGACY_SETTINGS[0]).unlink(missing_ok=True)  # now recorded in the store
    info = store.settings
    return IndexResult(
        documents=len(documents),
        chunks=len(chunks),
        embedded=len(todo),
        unchanged=len(chunks) - len(todo),
        removed=removed,
        records=len(store),
        model=recorded["model"],
        precision=recorded["precision"],
        dim=store.dim,
        codec=info["codec"],
        rescore=info["rescore"],
        rescore_dtype=info["rescore_dtype"],
        device=str(info["device"]),
        memory=store.memory(),
    )


def index_path(
    source: str | os.PathLike[str],
    store_path: str | os.PathLike[str],
    *,
    model: str | None = None,
    precision: str | None = None,
    device: str | None = None,
    codec: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 32,
    progress: bool = False,
    shards: int | None = None,
    keywords: str | None = DEFAULT_TOKENIZER,
) -> IndexResult:
    """Index a folder of ``.txt``/``.md`` files, one such file or a ``.jsonl`` file (see
    :func:`read_documents`) into the persistent store at ``store_path``: reopened when it is
    one (its codec must be ``codec`` when given), created (``codec``, default int4) when the
    path is new or an empty directory, with a keyword index of tokenizer ``keywords`` (``None``:
    none; see ``QuantizedStore``). See :func:`index_documents`.

    ``shards=N`` makes (or reopens) a sharded store on Ray (``quant-retriever[ray]``) and
    embeds on a Ray Data actor pool; a store opened with a different count is refused.

    ``model``/``precision``: default to what the store records, else all-MiniLM-L6-v2 (the
    bundled copy when installed) and fp32; a ``model`` other than the recorded one is a
    ``ValueError``. The model is loaded only when some chunk must be embedded. A store this
    call created is removed again when the call fails before writing anything.
    """
    check_sizes(chunk_size, overlap)
    store, created = _open_or_create(Path(store_path), codec, shards, keywords)
    try:
        documents = read_documents(source)
        _store_model(store, model, precision)  # a clash with the recorded model fails before any load

        def load() -> Encoder:
            return load_store_encoder(store, model, precision, device)

        result = index_documents(
            store, load, documents, chunk_size=chunk_size, overlap=overlap, batch_size=batch_size, progress=progress
        )
    except BaseException:
        empty = created and len(store) == 0
        store.close()
        if empty:  # nothing was written: leave no half-made store behind
            shutil.rmtree(store_path, ignore_errors=True)
        raise
    store.close()
    return result


def load_store_encoder(
    store: StoreLike, model: str | None = None, precision: str | None = None, device: str | None = None
) -> Encoder:
    """The encoder for searching or extending ``store``: ``model``/``precision`` when given, else
    what the store records, else all-MiniLM-L6-v2 (the bundled copy when installed) and fp32.

    Raises ``ValueError`` when ``model`` is not the recorded one, when the model makes vectors
    of another dimension than the store's, or when it cannot be loaded (the message says why).
    """
    from quant_retriever.models import load_encoder

    name, precision = _store_model(store, model, precision)
    try:
        encoder = load_encoder(name, precision=precision, device=device)
    except (ValueError, ImportError):
        raise
    except Exception as exc:  # a missing model surfaces as OSError/HTTP errors from several libraries
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"could not load model {name!r}: {type(exc).__name__}: {detail}") from None
    _check_encoder(store, encoder, _recorded_model(store))
    return encoder


def open_store(path: str | os.PathLike[str], *, read_only: bool = False, shards: int | None = None):
    """The store at ``path``: a ``QuantizedStore``, or a ``ShardedStore`` (Ray) when ``path``
    holds a sharded one (``shards``, when given, must match its count). ``ValueError`` when
    there is neither."""
    path = Path(path)
    from quant_retriever.index import MANIFEST
    from quant_retriever.store import DB_FILE, QuantizedStore

    if QuantizedStore.exists(path) and shards is None:
        return QuantizedStore.open(path, read_only=read_only)
    if (path / MANIFEST).is_file() and not QuantizedStore.exists(path):
        from quant_retriever.distributed import ShardedStore

        return ShardedStore.open(path, shards=shards, read_only=read_only)
    kind = "sharded store" if shards else "store"
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{path} is not a quant_retriever {kind} (no {DB_FILE} or {MANIFEST} of one in it).")
    raise ValueError(f"no {kind} at {path}.")


def _open_or_create(path: Path, codec: str | None, shards: int | None = None, keywords: str | None = DEFAULT_TOKENIZER):
    """(store, created): a new store for a new path or an empty directory (sharded over
    ``shards`` Ray actors when given), else the store there."""
    from quant_retriever.store import QuantizedStore

    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if shards is not None:
            from quant_retriever.distributed import ShardedStore

            return ShardedStore(codec=codec or DEFAULT_CODEC, path=path, shards=shards, keywords=keywords), True
        return QuantizedStore(codec=codec or DEFAULT_CODEC, path=path, keywords=keywords), True
    store = open_store(path, shards=shards)  # a ValueError for anything that is not a store
    found = store.settings["codec"] if store.dim is not None else None
    if codec is not None and found is not None and found != codec:
        store.close()
        raise ValueError(f"store {path} uses codec {found!r}, not {codec!r}; leave out the codec or use a new store.")
    return store, False


def _record_name(model: str) -> str:
    """How a model is recorded: a local directory by its absolute path, the bundled
    all-MiniLM-L6-v2 by its hub name, anything else as given."""
    from quant_retriever.models.settings import portable_model_name

    return portable_model_name(os.path.abspath(model) if os.path.isdir(model) else model)


def _recorded_model(store: StoreLike) -> dict | None:
    """``{"model", "precision", "dim"}`` recorded in ``store``, else from the legacy settings
    file next to its files, else ``None``."""
    recorded = store.get_info(MODEL_INFO)
    if recorded is None and store.path is not None:
        recorded = _legacy_settings(store.path / _LEGACY_SETTINGS[0])
    if recorded is not None and not (
        isinstance(recorded, dict)
        and isinstance(recorded.get("model"), str)
        and isinstance(recorded.get("precision"), str)
    ):
        raise ValueError(f"the store's {MODEL_INFO!r} record is not a model record: {recorded!r}.")
    return recorded


def _legacy_settings(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON settings file ({exc}).") from None
    if not isinstance(obj, dict) or obj.get("format") != _LEGACY_SETTINGS[1] or not isinstance(obj.get("model"), str):
        raise ValueError(f"{path}: expected a {_LEGACY_SETTINGS[1]!r} settings file with a 'model'.")
    return {"model": _record_name(obj["model"]), "precision": str(obj.get("precision", "fp32")), "dim": obj.get("dim")}


def _store_model(store: StoreLike, model: str | None, precision: str | None) -> tuple[str, str]:
    """(model to load, precision): the arguments, else the store's record, else the defaults."""
    from quant_retriever.models.settings import DEFAULT_MODEL, DEFAULT_PRECISION, local_model_path

    recorded = _recorded_model(store)
    if recorded is not None and model is not None and _record_name(model) != recorded["model"]:
        raise ValueError(
            f"the store was indexed with model {recorded['model']!r}, not {model!r}; "
            "leave out the model or use a new store."
        )
    name = model or local_model_path(recorded["model"] if recorded else DEFAULT_MODEL)
    return name, precision or (recorded["precision"] if recorded else DEFAULT_PRECISION)


def _check_encoder(store: StoreLike, encoder: Encoder, recorded: dict | None) -> None:
    if recorded is not None and _record_name(encoder.model_name) != recorded["model"]:
        raise ValueError(f"the store was indexed with model {recorded['model']!r}, not {encoder.model_name!r}.")
    if store.dim is not None and store.dim != encoder.dim:
        raise ValueError(
            f"the store holds {store.dim}-dimensional vectors but model {encoder.model_name!r} makes "
            f"{encoder.dim}-dimensional ones; use the model the store was built with or a new store."
        )


def _changed_chunks(store: StoreLike, chunks: list[Chunk]) -> list[Chunk]:
    """The chunks that are new or whose text or metadata differ from the stored ones."""
    existing = {r.id: (r.text, r.metadata) for r in store.get([c.id for c in chunks])}
    return [c for c in chunks if existing.get(c.id) != (c.text, c.metadata)]


def _embed_chunks(store: StoreLike, encoder: Encoder | None, chunks: list[Chunk], batch_size: int, progress: bool):
    """Embed and upsert ``chunks``, ``STEP`` at a time, with a progress bar on stderr; into a
    sharded store on a Ray Data actor pool (one copy of the model per actor)."""
    from tqdm import tqdm

    if chunks and store.settings["shards"]:  # a sharded store: embedded on Ray
        from quant_retriever.distributed import embed_corpus

        embed_corpus(
            store,
            [c.id for c in chunks],
            [c.text for c in chunks],
            [c.metadata for c in chunks],
            model=encoder.model_name,
            precision=encoder.precision,
            device=str(encoder.device),
            batch_size=batch_size,
            show_progress=progress,
        )
        return

    with tqdm(
        total=len(chunks), desc="embedding", unit="chunk", file=sys.stderr, disable=not progress or not chunks
    ) as bar:
        for start in range(0, len(chunks), STEP):
            step = chunks[start : start + STEP]
            vectors = encoder.encode([c.text for c in step], batch_size=batch_size)  # [len(step), dim]
            store.upsert([c.id for c in step], vectors, [c.text for c in step], [c.metadata for c in step])
            bar.update(len(step))


def _drop_stale_chunks(store: StoreLike, chunks: list[Chunk]) -> int:
    """Delete the stored chunks past each document's new last chunk (the document got
    shorter); returns how many. A document's chunks are numbered without gaps, so probing
    ``<doc>#<n>``, ``<doc>#<n + 1>``, ... until one is missing finds them all."""
    next_chunk: dict[str, int] = {}  # doc id -> first chunk number past its end
    for c in chunks:
        next_chunk[c.metadata["doc_id"]] = c.metadata["chunk"] + 1
    removed = 0
    while next_chunk:
        probe = {f"{doc}#{n}": doc for doc, n in next_chunk.items()}
        found = store.delete(list(probe))
        removed += len(found)
        next_chunk = {probe[i]: next_chunk[probe[i]] + 1 for i in found}
    return removed
