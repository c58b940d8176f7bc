"""The import rules of docs/architecture.md, checked on the source: each room imports only the
rooms below it (function-level imports included), the codecs and kernels import no I/O or
framework code, and the framework adapters do no torch math."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "quant_retriever"

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
    "server": {"ingest", "store", "filters", "index"},
    "cli": {"ingest", "bench", "models", "store", "codecs", "index", "server", "__init__"},
    "__main__": {"cli"},
    "__init__": {"index", "models", "bench"},
}
#: Rooms that must not import these third-party packages at all.
FORBIDDEN = {
    "codecs": {"langchain_core", "llama_index", "sqlite3", "json", "os", "sentence_transformers"},
    "kernels": {"langchain_core", "llama_index", "sqlite3", "sentence_transformers"},
    "integrations": {"torch"},  # adapters convert; the math lives below them
    "server": {"torch", "langchain_core", "llama_index"},  # HTTP in, the store API out
    "filters": {"torch"},
    "files": {"torch"},
    "checks": {"sqlite3", "langchain_core", "llama_index"},
}


#: Inside a package, module -> the modules of the same package it may import (at run time:
#: imports under ``if TYPE_CHECKING`` are annotations only); the package's ``__init__``
#: imports its modules, and no module imports the ``__init__``.
INSIDE: dict[str, dict[str, set[str]]] = {
    "files": {"raw": set(), "headers": {"raw"}, "locks": {"raw"}, "directories": {"raw", "locks"}},
    "index": {
        "snapshot": set(),
        "search": {"snapshot"},
        "directory": {"snapshot"},
        "staging": {"snapshot"},
        "verify": set(),
        "opening": {"directory"},
        "core": {"snapshot", "search", "directory", "staging", "verify", "opening"},
    },
    "store": {
        "documents": set(),
        "keywords": set(),
        "fusion": set(),
        "database": {"keywords"},
        "filter_cache": set(),
        "protocol": {"documents"},
        "search": {"documents", "fusion", "keywords", "filter_cache"},
        "reads": {"documents", "fusion", "search"},
        "verify": set(),
        "creation": {"database"},
        "opening": {"database", "keywords"},
        "core": {
            "database",
            "documents",
            "filter_cache",
            "keywords",
            "reads",
            "search",
            "verify",
            "creation",
            "opening",
        },
    },
    "ingest": {"documents": set(), "indexing": {"documents"}},
    "cli": {
        "output": set(),
        "store_commands": {"output"},
        "bench_commands": {"output"},
        "parser": {"output", "store_commands", "bench_commands"},
    },
    "server": {"wire": set(), "client": {"wire"}, "app": {"wire"}, "run": {"app"}},
    "distributed": {
        "routing": set(),
        "shards": {"routing"},
        "index": {"routing", "shards"},
        "store": {"routing", "shards", "index"},
        "embed": {"store"},
    },
}
#: The size limits of the house: no module over MAX_MODULE lines (C sources aside), no class
#: over MAX_CLASS.
MAX_MODULE, MAX_CLASS = 500, 400


def rooms() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def room_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path, typing_too: bool = True) -> list[tuple[str, int]]:
    """Every imported module name (absolute), with its line, anywhere in the file (without
    ``typing_too``: not those under ``if TYPE_CHECKING``)."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set()
    if not typing_too:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


@pytest.mark.parametrize("package", sorted(INSIDE))
def test_inside_a_package_imports_only_point_down(package):
    directory = PACKAGE / package
    modules = {p.stem for p in directory.glob("*.py")} - {"__init__"}
    assert modules == set(INSIDE[package]), f"add {package}'s modules to INSIDE (and their rules)"
    for module in modules:
        for name, line in imports(directory / f"{module}.py", typing_too=False):
            parts = name.split(".")
            if parts[:2] != ["quant_retriever", package]:
                continue
            target = parts[2] if len(parts) > 2 else "__init__"
            assert target in INSIDE[package][module] | {module}, f"{package}/{module}.py:{line} imports {name}"


@pytest.mark.parametrize("path", rooms(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_or_class_is_too_large(path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE, f"{path.name}: {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS, f"{path.name}: class {node.name} has {size} lines"
