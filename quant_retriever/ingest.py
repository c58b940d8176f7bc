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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quant_retriever.index import MemoryUsage
    from quant_retriever.models import Encoder
    from quant_retriever.store import QuantizedStore

__all__ = [
    "Document",
    "Chunk",
    "IndexResult",
    "SUFFIXES",
    "read_documents",
    "split_text",
    "chunk_documents",
    "index_documents",
    "index_path",
    "load_store_encoder",
]

SUFFIXES = (".txt", ".md")
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_OVERLAP = 100
DEFAULT_CODEC = "int4"
#: Chunks embedded and written per step (one upsert each: an interrupted run keeps its steps).
STEP = 256
#: The store info that records the embedding model.
MODEL_INFO = "embedding"
#: Where stores written before the model was recorded in the store kept it (read once).
_LEGACY_SETTINGS = ("embedding.json", "quant_retriever.cli")
#: (pattern that splits, string that joins) from the coarsest level to the finest.
_LEVELS = (
    (re.compile(r"\n[ \t]*\n\s*"), "\n\n"),  # paragraphs
    (re.compile(r"(?<=[.!?])\s+"), " "),  # sentences
    (re.compile(r"\s*\n\s*"), "\n"),  # lines
    (re.compile(r"\s+"), " "),  # words
)


@dataclass(frozen=True)
class Document:
    """One input document: its ``id``, ``text``, ``metadata`` (JSONL only) and ``source``."""

    id: str
    text: str
    metadata: dict
    source: str


@dataclass(frozen=True)
class Chunk:
    """A piece of a document as stored: ``id`` = ``<doc id>#<number>``."""

    id: str
    text: str
    metadata: dict


def read_documents(path: str | Path) -> list[Document]:
    """Documents of a folder of ``.txt``/``.md`` files, one such file, or a ``.jsonl`` file.

    Raises ``ValueError`` for a missing path, another file type, a file that is not UTF-8,
    a JSONL line that is not an object with a string ``text`` (the message names the line),
    duplicate ids, or when no document has any text.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input {path} does not exist; expected a folder of .txt/.md files or a .jsonl file.")
    if path.is_file() and path.suffix.lower() not in (*SUFFIXES, ".jsonl"):
        kind = path.suffix or "suffix-less"
        raise ValueError(f"input {path} is a {kind} file; expected a folder, a .txt/.md file or a .jsonl file.")
    return _read_documents(path)


def _read_documents(path: Path) -> list[Document]:
    if path.is_file() and path.suffix.lower() == ".jsonl":
        docs = _read_jsonl(path)
        what = "JSONL lines with text"
    else:
        base = path.parent if path.is_file() else path
        rel = [f.relative_to(base).as_posix() for f in ([path] if path.is_file() else _text_files(path))]
        docs = [Document(r, _read_text(base / r), {}, r) for r in rel]
        what = f"{'/'.join(SUFFIXES)} files with text"
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError(f"empty corpus: found no {what} in {path}.")
    return docs


def _text_files(root: Path) -> list[Path]:
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).parts
        if f.is_file() and f.suffix.lower() in SUFFIXES and not any(p.startswith(".") for p in rel):
            out.append(f)
    return out


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{f}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None


def _read_jsonl(path: Path) -> list[Document]:
    docs: list[Document] = []
    first_line: dict[str, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path} line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where}: not UTF-8 text.") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
            docs.append(_jsonl_document(obj, where, f"{path.name}:{lineno}", path.name))
            if docs[-1].id in first_line:
                raise ValueError(f"{where}: duplicate id {docs[-1].id!r} (first on line {first_line[docs[-1].id]}).")
            first_line[docs[-1].id] = lineno
    return docs


def _jsonl_document(obj: object, where: str, default_id: str, source: str) -> Document:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object with a 'text' string; got {type(obj).__name__}.")
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError(
            f"{where}: expected a 'text' string; got {'no text' if text is None else type(text).__name__}."
        )
    doc_id = obj.get("id", default_id)
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
        raise ValueError(f"{where}: 'id' must be a non-empty string or an integer; got {doc_id!r}.")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: 'metadata' must be a JSON object; got {type(metadata).__name__}.")
    return Document(str(doc_id), text, metadata, source)


def split_text(text: str, chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_size`` characters on paragraph, sentence,
    line and word boundaries, each chunk after the first starting with up to ``overlap``
    characters of the previous one. Blank text gives ``[]``.

    ``chunk_size`` must be at least 20 and ``overlap`` below ``chunk_size // 2``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}.")
    _check_sizes(chunk_size, overlap)
    return _split_text(text, chunk_size, overlap)


def _check_sizes(chunk_size: object, overlap: object) -> None:
    for name, value in (("chunk_size", chunk_size), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int; got {type(value).__name__}.")
    if chunk_size < 20:
        raise ValueError(f"chunk_size must be at least 20 characters; got {chunk_size}.")
    if not 0 <= overlap < chunk_size // 2:
        raise ValueError(f"overlap must be between 0 and chunk_size // 2 - 1 = {chunk_size // 2 - 1}; got {overlap}.")


def _split_text(text: str, chunk_size: int, overlap: int) -> list[str]:
    room = chunk_size - overlap - (1 if overlap else 0)  # the tail and a space go in front
    pieces = _pack(text.strip(), room, 0) if text.strip() else []
    chunks = pieces[:1]
    for previous, piece in zip(pieces, pieces[1:]):
        tail = _tail(previous, overlap)
        chunks.append(f"{tail} {piece}" if tail else piece)
    return chunks


def _pack(text: str, size: int, level: int) -> list[str]:
    """Pieces of ``text``, each at most ``size`` characters, split at ``_LEVELS[level:]`` and
    greedily re-joined while they fit."""
    if len(text) <= size:
        return [text]
    if level == len(_LEVELS):
        return [text[i : i + size] for i in range(0, len(text), size)]
    pattern, joiner = _LEVELS[level]
    out: list[str] = []
    current = ""
    for part in (p.strip() for p in pattern.split(text)):
        if not part:
            continue
        for piece in _pack(part, size, level + 1):
            if current and len(current) + len(joiner) + len(piece) <= size:
                current += joiner + piece
            else:
                if current:
                    out.append(current)
                current = piece
    if current:
        out.append(current)
    return out


def _tail(chunk: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``chunk``, starting at a word boundary."""
    if overlap == 0:
        return ""
    tail = chunk[-overlap:]
    if len(chunk) > overlap and not chunk[-overlap - 1].isspace():
        cut = re.search(r"\s", tail)
        tail = tail[cut.end() :] if cut else ""
    return tail.strip()


def chunk_documents(
    documents: list[Document], chunk_size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_OVERLAP
) -> list[Chunk]:
    """All chunks of ``documents`` in order, with ids ``<doc id>#<n>`` and metadata
    (see the module docstring)."""
    _check_sizes(chunk_size, overlap)
    return _chunk_documents(documents, chunk_size, overlap)


def _chunk_documents(documents: list[Document], chunk_size: int, overlap: int) -> list[Chunk]:
    chunks = []
    for doc in documents:
        for n, text in enumerate(_split_text(doc.text, chunk_size, overlap)):
            metadata = {**doc.metadata, "doc_id": doc.id, "chunk": n}
            metadata.setdefault("source", doc.source)
            chunks.append(Chunk(f"{doc.id}#{n}", text, metadata))
    return chunks


# --------------------------------------------------------------------------- indexing


@dataclass(frozen=True)
class IndexResult:
    """What an indexing run did, and the store after it: ``embedded`` new or changed chunks,
    ``unchanged`` ones skipped, ``removed`` stale ones; ``records`` in the store; the recorded
    ``model``, ``precision`` and ``dim``; the store's ``codec``, ``rescore``, ``device`` and
    ``memory``."""

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
    device: str
    memory: MemoryUsage

    def __repr__(self) -> str:
        return (
            f"IndexResult({self.documents} documents -> {self.chunks} chunks: {self.embedded} embedded, "
            f"{self.unchanged} unchanged, {self.removed} stale removed; {self.records} records, "
            f"{self.model} {self.precision}, codec {self.codec})"
        )


def index_documents(
    store: QuantizedStore,
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

    if not _is_store(store):
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
    _check_sizes(chunk_size, overlap)
    check_batch_size(batch_size)
    return _index_documents(store, encoder, list(documents), chunk_size, overlap, batch_size, progress)


def _index_documents(store, encoder, documents, chunk_size, overlap, batch_size, progress) -> IndexResult:
    from quant_retriever.models.encoder import Encoder

    chunks = _chunk_documents(documents, chunk_size, overlap)
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
    codec, rescore, device, memory = _layout(store)
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
        codec=codec,
        rescore=rescore,
        device=device,
        memory=memory,
    )


def _is_store(store: object) -> bool:
    from quant_retriever.store import QuantizedStore

    if isinstance(store, QuantizedStore):
        return True
    sharded = sys.modules.get("quant_retriever.distributed.store")  # only when ray is in use
    return sharded is not None and isinstance(store, sharded.ShardedStore)


def _sharded(store: object) -> bool:
    from quant_retriever.store import QuantizedStore

    return not isinstance(store, QuantizedStore)


def _layout(store) -> tuple[str, bool, str, MemoryUsage]:
    """(codec, rescore, device, memory) of a store or a sharded one."""
    if _sharded(store):
        info = store.settings
        return info["codec"], info["rescore"], str(info["device"]), store.memory()
    index = store.index
    return index.codec_name, index.rescore, str(index.device), index.memory()


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
) -> IndexResult:
    """Index a folder of ``.txt``/``.md`` files, one such file or a ``.jsonl`` file (see
    :func:`read_documents`) into the persistent store at ``store_path``: reopened when it is
    one (its codec must be ``codec`` when given), created (``codec``, default int4) when the
    path is new or an empty directory. See :func:`index_documents`.

    ``shards=N`` makes (or reopens) a sharded store on Ray (``quant-retriever[ray]``) and
    embeds on a Ray Data actor pool; a store opened with a different count is refused.

    ``model``/``precision``: default to what the store records, else all-MiniLM-L6-v2 (the
    bundled copy when installed) and fp32; a ``model`` other than the recorded one is a
    ``ValueError``. The model is loaded only when some chunk must be embedded. A store this
    call created is removed again when the call fails before writing anything.
    """
    _check_sizes(chunk_size, overlap)
    store, created = _open_or_create(Path(store_path), codec, shards)
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
    store: QuantizedStore, model: str | None = None, precision: str | None = None, device: str | None = None
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


def _open_or_create(path: Path, codec: str | None, shards: int | None = None):
    """(store, created): a new store for a new path or an empty directory (sharded over
    ``shards`` Ray actors when given), else the store there."""
    from quant_retriever.store import QuantizedStore

    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if shards is not None:
            from quant_retriever.distributed import ShardedStore

            return ShardedStore(codec=codec or DEFAULT_CODEC, path=path, shards=shards), True
        return QuantizedStore(codec=codec or DEFAULT_CODEC, path=path), True
    store = open_store(path, shards=shards)  # a ValueError for anything that is not a store
    found = _layout(store)[0] if store.dim is not None else None
    if codec is not None and found is not None and found != codec:
        store.close()
        raise ValueError(f"store {path} uses codec {found!r}, not {codec!r}; leave out the codec or use a new store.")
    return store, False


def _record_name(model: str) -> str:
    """How a model is recorded: a local directory by its absolute path, the bundled
    all-MiniLM-L6-v2 by its hub name, anything else as given."""
    from quant_retriever.models.settings import portable_model_name

    return portable_model_name(os.path.abspath(model) if os.path.isdir(model) else model)


def _recorded_model(store: QuantizedStore) -> dict | None:
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


def _store_model(store: QuantizedStore, model: str | None, precision: str | None) -> tuple[str, str]:
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


def _check_encoder(store: QuantizedStore, encoder: Encoder, recorded: dict | None) -> None:
    if recorded is not None and _record_name(encoder.model_name) != recorded["model"]:
        raise ValueError(f"the store was indexed with model {recorded['model']!r}, not {encoder.model_name!r}.")
    if store.dim is not None and store.dim != encoder.dim:
        raise ValueError(
            f"the store holds {store.dim}-dimensional vectors but model {encoder.model_name!r} makes "
            f"{encoder.dim}-dimensional ones; use the model the store was built with or a new store."
        )


def _changed_chunks(store: QuantizedStore, chunks: list[Chunk]) -> list[Chunk]:
    """The chunks that are new or whose text or metadata differ from the stored ones."""
    existing = {r.id: (r.text, r.metadata) for r in store.get([c.id for c in chunks])}
    return [c for c in chunks if existing.get(c.id) != (c.text, c.metadata)]


def _embed_chunks(store: QuantizedStore, encoder: Encoder | None, chunks: list[Chunk], batch_size: int, progress: bool):
    """Embed and upsert ``chunks``, ``STEP`` at a time, with a progress bar on stderr; into a
    sharded store on a Ray Data actor pool (one copy of the model per actor)."""
    from tqdm import tqdm

    if chunks and _sharded(store):
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


def _drop_stale_chunks(store: QuantizedStore, chunks: list[Chunk]) -> int:
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
