"""A kill at every I/O event: store creation (with a dimension, and the index a dimension-less
store creates at its first upsert), ``save``, ``save_replacing`` (with and without rename
exchange) and compaction each run in a child process that is SIGKILLed just before its N-th
I/O event (every ``os`` call that writes, renames or removes, every file write, every SQLite
statement), for every N. After each kill the directory is opened every way a user opens it:
the store read-only and writable, its index, the LangChain and LlamaIndex adapters. Each must
show the old or the new state, the same through every way, with every part agreeing; a store
whose creation was killed is either no store (and can be created again) or a complete one.

SQLite's own steps inside one statement are not split further: its commit is atomic by its
own design (WAL, ``synchronous=FULL``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from harness import DIM, build_store, count_io_events, io_events, kill_at, observe, vectors
from langchain_core.embeddings import DeterministicFakeEmbedding

import quant_retriever.files.directories as directories
from quant_retriever import QuantizedIndex
from quant_retriever.langchain import QuantizedVectorStore as LangChainStore
from quant_retriever.llama_index import QuantizedVectorStore as LlamaIndexStore
from quant_retriever.store import QuantizedStore

NONE = "no store"
KILLS: dict[str, int] = {}


# ---------------------------------------------------------------- the operations (run in children)
def create(work: str) -> None:
    with io_events():
        QuantizedStore(DIM, codec="int4", path=Path(work) / "target", block_size=8).close()


def first_upsert(work: str) -> None:
    store = QuantizedStore.open(Path(work) / "target")
    with io_events():
        store.upsert([f"u{i}" for i in range(5)], vectors(5, 7), [f"u{i}" for i in range(5)])
    store.close()


def save(work: str) -> None:
    source = QuantizedStore.open(Path(work) / "source", read_only=True)
    with io_events():
        source.save(Path(work) / "target")


def save_replacing(work: str, exchange: bool = True) -> None:
    if not exchange:  # a filesystem without RENAME_EXCHANGE: two renames
        directories._rename_exchange = lambda a, b: False
    source = QuantizedStore.open(Path(work) / "source", read_only=True)
    with io_events():
        source.save_replacing(Path(work) / "target")


def save_replacing_by_renames(work: str) -> None:
    save_replacing(work, exchange=False)


def compact(work: str) -> None:
    store = QuantizedStore.open(Path(work) / "target")
    with io_events():
        store.compact()
    store.close()


# ---------------------------------------------------------------- set-up and checks
def prepare(work: Path, op) -> None:
    """The directory before ``op``: ``work/target`` (and ``work/source``, what a save copies)."""
    work.mkdir(parents=True, exist_ok=True)
    if op in (save, save_replacing, save_replacing_by_renames):
        build_store(work / "source", work / "material")
    if op in (save_replacing, save_replacing_by_renames):
        old = QuantizedStore(DIM, codec="int4", block_size=8)
        old.upsert(["old"], vectors(1, 5), ["old"])
        old.save(work / "target")
    elif op is first_upsert:
        QuantizedStore(None, codec="int4", path=work / "target", block_size=8).close()
    elif op is compact:
        build_store(work / "target", work / "material")


def state(path: Path, read_only: bool):
    """What opening the store at ``path`` shows (its records and the top hits of fixed queries),
    checking that every part agrees; ``NONE`` where there is no store."""
    if not QuantizedStore.exists(path):
        with pytest.raises(ValueError, match="not a quant_retriever store"):
            QuantizedStore.open(path, read_only=read_only)
        return NONE
    records, hits, problems = observe(path, read_only)
    assert problems == []
    return records, hits


def every_way(path: Path, allowed: list, op_name: str, n: int):
    """Open ``path`` every way; all must show one state among ``allowed``, the same one."""
    where = f"{op_name}, killed before event {n}"
    seen = state(path, read_only=True)
    assert seen in allowed, (where, seen)
    if seen == NONE:
        store = QuantizedStore(DIM, codec="int4", path=path, block_size=8)  # no store: it can be created again
        store.close()
        return
    if (path / "index" / "manifest.json").exists():  # (an interrupted first upsert's index may have none yet)
        index = QuantizedIndex.open(path / "index", read_only=True)
        assert index.verify() == [] and set(index.ids().tolist()) >= {key for _, _, key in seen[0]}, where
        index.close()
    assert state(path, read_only=False) == seen, where  # reconciles what the kill interrupted
    lc = LangChainStore.load(path, DeterministicFakeEmbedding(size=DIM))
    assert sorted(r.id for r in lc.store.records()) == sorted(r[0] for r in seen[0]), where
    lc.store.close()
    li = LlamaIndexStore(path=path)
    assert len(li.client) == len(seen[0]), where
    li.close()
    li = LlamaIndexStore.from_persist_dir(path)
    assert len(li.client) == len(seen[0]) and li.client.verify() == [], where
    li.close()


OPERATIONS = [create, first_upsert, save, save_replacing, save_replacing_by_renames, compact]


@pytest.mark.parametrize("op", OPERATIONS, ids=[op.__name__ for op in OPERATIONS])
def test_a_kill_at_every_io_event_leaves_the_old_or_the_new_state(tmp_path, op):
    before, after = tmp_path / "before", tmp_path / "after"
    prepare(before, op)
    shutil.copytree(before, after, symlinks=True)
    old = state(before / "target", read_only=True) if (before / "target").exists() else NONE
    events = count_io_events(op, str(after))
    new = state(after / "target", read_only=True)
    assert events > 0 and new != NONE
    if op is compact:
        assert new == old  # what compaction changes is invisible
    kills = 0
    for n in range(1, events + 1):
        work = tmp_path / f"kill-{n}"
        shutil.copytree(before, work, symlinks=True)
        kills += kill_at(n, op, str(work))
        every_way(work / "target", [old, new], op.__name__, n)
        shutil.rmtree(work)
    assert kills == events  # every kill landed before the operation finished
    KILLS[op.__name__] = kills
    print(f"\nkills at every I/O event: {op.__name__}: {kills} kills, each opened 6 ways")
