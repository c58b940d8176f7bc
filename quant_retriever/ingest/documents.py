"""Reading documents and splitting them into chunks with deterministic ids (see the package
docstring for the inputs, the ids and how text is split)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Document", "Chunk", "SUFFIXES", "read_documents", "split_text", "chunk_documents", "check_sizes"]


SUFFIXES = (".txt", ".md")
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_OVERLAP = 100
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
    check_sizes(chunk_size, overlap)
    return _split_text(text, chunk_size, overlap)


def check_sizes(chunk_size: object, overlap: object) -> None:
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
    check_sizes(chunk_size, overlap)
    return chunk_documents_unchecked(documents, chunk_size, overlap)


def chunk_documents_unchecked(documents: list[Document], chunk_size: int, overlap: int) -> list[Chunk]:
    chunks = []
    for doc in documents:
        for n, text in enumerate(_split_text(doc.text, chunk_size, overlap)):
            metadata = {**doc.metadata, "doc_id": doc.id, "chunk": n}
            metadata.setdefault("source", doc.source)
            chunks.append(Chunk(f"{doc.id}#{n}", text, metadata))
    return chunks
