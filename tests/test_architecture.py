"""The import rules of docs/architecture.md, checked on the source: each room imports only the
rooms below it (function-level imports included), the codecs and kernels import no I/O or
framework code, and the framework adapters do no torch math."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quant_retriever"

#: room -> the rooms (of quant_retriever) it may import; a room is a top-level module or package.
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "devices": set(),
    "checks": set(),
    "files": set(),
    "filters": set(),
    "codecs": {"kernels"},
    "rescore": {"codecs", "files"},
    "index": {"codecs", "rescore", "files", "devices", "checks"},
    "store": {"index", "codecs", "filters", "files", "checks"},
    "models": {"kernels", "devices"},
    "integrations": {"store", "filters", "codecs", "models", "files", "checks"},
    "langchain": {"integrations"},
    "llama_index": {"integrations"},
    "ingest": {"store", "index", "models", "distributed"},
    "distributed": {"store", "index", "filters", "files", "codecs", "models", "checks"},
    "bench": {"index", "store", "codecs", "kernels", "models", "ingest", "_demo_corpus"},
    "_demo_corpus": {"models"},
    "embeddings": {"models", "bench"},  # the deprecated alias
    "cli": {"ingest", "bench", "models", "store", "codecs", "index", "__init__"},
    "__main__": {"cli"},
    "__init__": {"index", "models", "bench"},
}
#: Rooms that must not import these third-party packages at all.
FORBIDDEN = {
    "codecs": {"langchain_core", "llama_index", "sqlite3", "json", "os", "sentence_transformers"},
    "kernels": {"langchain_core", "llama_index", "sqlite3", "sentence_transformers"},
    "integrations": {"torch"},  # adapters convert; the math lives below them
    "filters": {"torch"},
    "files": {"torch"},
    "checks": {"sqlite3", "langchain_core", "llama_index"},
}


def rooms() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def room_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> list[tuple[str, int]]:
    """Every imported module name (absolute), with its line, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            if node.module == "quant_retriever":  # from quant_retriever import bench, ...
                found += [(f"quant_retriever.{a.name}", node.lineno) for a in node.names]
    return found


def test_every_room_is_in_the_table():
    assert {room_of(p) for p in rooms()} <= set(ALLOWED), "add new modules to ALLOWED (and docs/architecture.md)"


@pytest.mark.parametrize("path", rooms(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_room_imports_only_the_rooms_below_it(path):
    room = room_of(path)
    for name, line in imports(path):
        parts = name.split(".")
        if parts[0] == "quant_retriever" and len(parts) > 1:
            target = "__init__" if parts[1].startswith("__") else parts[1]  # __version__ and the like
            assert target == room or target in ALLOWED[room], f"{path.name}:{line} ({room}) imports {name}"
        else:
            assert parts[0] not in FORBIDDEN.get(room, set()), f"{path.name}:{line} ({room}) imports {name}"


def test_the_architecture_doc_names_every_room():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        room
        for room in ALLOWED
        if room not in ("__init__", "__main__", "langchain", "llama_index") and f"`{room}" not in doc
    ]
    assert not missing, f"docs/architecture.md does not describe {missing}"
