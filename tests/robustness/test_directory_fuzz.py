"""A directory fuzzer: a real store (and a real index) with a history, each of its files in turn
(and, property-based, several at once) replaced by a FIFO, a directory, a link inside or
outside, an empty file, random bytes, a truncated copy or an older generation's copy; then
opened read-only and writable, each in a child process under a timeout.

Every case must open correctly (every part agrees and the user sees the original state, or
the older one an older database describes) or raise ``ValueError`` leaving every byte as it
was; it must never hang, crash or raise anything else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from harness import assert_unchanged, build_store, in_child, observe, tree, vectors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_retriever import QuantizedIndex

MUTATIONS = ("fifo", "directory", "link-inside", "link-outside", "empty", "random", "truncated", "older")
STORE_TARGETS = (
    ".lock",
    "store.sqlite",
    "store.sqlite-wal",
    "index",
    "index/.lock",
    "index/manifest.json",
    "index/codes.1.u8",
    "index/ids.1.i64",
    "index/deleted.1.i64",
    "index/rescore.1.int8",
)
INDEX_TARGETS = (".lock", "manifest.json", "codes.1.u8", "ids.1.i64", "deleted.1.i64", "rescore.1.int8")
#: Where a file's older copy comes from (``material/``, generation 0 and its database).
OLDER = {"store.sqlite": "store.sqlite", "manifest.json": "manifest.json"} | {
    f"{kind}.1.{ext}": f"{kind}.0.{ext}" for kind, ext in (("codes", "u8"), ("ids", "i64"), ("deleted", "i64"))
}
OLDER["rescore.1.int8"] = "rescore.0.int8"
STATS = {"cases": 0, "opened": 0, "refused": 0}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\ndirectory fuzzer: {STATS['cases']} cases; opens: {STATS['opened']} succeeded, {STATS['refused']} refused")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A store with a history (see ``harness.build_store``), its generation-0 material beside
    it, and a standalone index of the same history (``s/index`` copied out, with its material)."""
    root = tmp_path_factory.mktemp("fuzz")
    build_store(root / "s", root / "material")
    shutil.copytree(root / "s" / "index", root / "idx", symlinks=True)
    return root


def mutate(root: Path, top: Path, target: str, how: str, seed: int) -> bool:
    """Apply one mutation to ``top/target``; ``False`` when it does not apply there."""
    path = top / target
    rng = np.random.default_rng(seed)
    is_dir = path.is_dir() and not path.is_symlink()
    original = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    if how in ("empty", "random", "truncated", "older") and is_dir:
        if how != "random":
            return False
    if how == "older" and path.name not in OLDER:
        return False
    if how == "truncated" and not original:
        return False
    outside = top.parent / f"outside-{top.name}-{target.replace('/', '_')}"
    if os.path.lexists(path):
        shutil.rmtree(path) if is_dir else path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"x")
    elif how == "link-inside":
        path.symlink_to(top / ("store.sqlite" if (top / "store.sqlite").exists() else "manifest.json"))
    elif how == "link-outside":  # to an intact copy: only the link is wrong
        if is_dir:
            shutil.copytree(root / "s" / "index", outside)
        else:
            outside.write_bytes(original)
        path.symlink_to(outside)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "random":
        path.write_bytes(rng.integers(0, 256, size=max(len(original), 64), dtype=np.uint8).tobytes())
    elif how == "truncated":
        path.write_bytes(original[: int(rng.integers(0, len(original)))])
    elif how == "older":
        shutil.copy(root / "material" / OLDER[path.name], path)
    return True


def open_store_both_ways(path: str) -> tuple:
    """Read-only first (it must change nothing), then writable: what each sees, or the error."""
    out = []
    for read_only in (True, False):
        try:
            out.append(("ok", observe(Path(path), read_only)))
        except ValueError as exc:
            out.append(("ValueError", str(exc)))
    return tuple(out)


def open_index_both_ways(path: str) -> tuple:
    out = []
    for read_only in (True, False):
        try:
            index = QuantizedIndex.open(path, read_only=read_only)
            try:
                seen = sorted(index.ids().tolist()), index.search(vectors(3, 99), k=4).ids.tolist()
                out.append(("ok", (*seen, index.verify())))
            finally:
                index.close()
        except ValueError as exc:
            out.append(("ValueError", str(exc)))
    return tuple(out)


def references(template: Path) -> list[tuple]:
    """The views a correct open may show: the store's; and, read-only, the one the older copy
    of its database describes over the same index (records whose vectors are still there, as a
    reader pinned before later writes sees them; a writable open refuses it, since some of its
    records lost their vectors). The older view's records are checked against that database,
    read with sqlite3 directly."""
    import sqlite3

    current, older = copy_of(template / "s", "current"), copy_of(template / "s", "older")
    shutil.copy(template / "material" / "store.sqlite", older / "store.sqlite")
    views = [tuple(observe(current, read_only=True)[:2]), tuple(observe(older, read_only=True)[:2])]
    db = sqlite3.connect(template / "material" / "store.sqlite")
    assert views[1][0] == sorted(db.execute("SELECT id, text, key FROM docs").fetchall())
    db.close()
    return views


def run_case(template: Path, work: Path, kind: str, mutations: list[tuple[str, str]], seed: int) -> None:
    case = work / f"case-{seed}"
    shutil.copytree(template / kind, case, symlinks=True)
    applied = [m for m in mutations if mutate(template, case, m[0], m[1], seed)]
    if not applied:
        shutil.rmtree(case)
        return
    before = tree(case)
    opener = open_store_both_ways if kind == "s" else open_index_both_ways
    result = in_child(opener, str(case), timeout=60)
    assert result[0] == "ok", (applied, result)  # no hang, no crash, nothing but ValueError
    STATS["cases"] += 1
    reference = None
    for mode, outcome in zip(("read-only", "writable"), result[1]):
        if outcome[0] == "ValueError":
            STATS["refused"] += 1
            assert_unchanged(case, before)
            continue
        STATS["opened"] += 1
        if reference is None:
            reference = references(template) if kind == "s" else [reference_index(template)]
        assert outcome[1][2] == [], (applied, mode, outcome)  # verify(): every part agrees
        assert tuple(outcome[1][:2]) in reference, (applied, mode, outcome)
        if tuple(outcome[1][:2]) != reference[0]:  # the older database's view: read-only only
            assert mode == "read-only" and ("store.sqlite", "older") in applied, (applied, mode, outcome)
    shutil.rmtree(case)


def reference_index(template: Path) -> tuple:
    index = QuantizedIndex.open(copy_of(template / "idx", "reference"), read_only=True)
    try:
        return sorted(index.ids().tolist()), index.search(vectors(3, 99), k=4).ids.tolist()
    finally:
        index.close()


def copy_of(path: Path, name: str) -> Path:
    copy = path.parent / f"{path.name}-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(path, copy, symlinks=True)
    return copy


@pytest.mark.parametrize("kind, targets", [("s", STORE_TARGETS), ("idx", INDEX_TARGETS)], ids=["store", "index"])
def test_every_file_mutated_every_way(template, tmp_path, kind, targets):
    seed = 0
    for target in targets:
        for how in MUTATIONS:
            seed += 1
            run_case(template, tmp_path, kind, [(target, how)], seed)


def _separate(mutations: list) -> bool:
    """One mutation per entry, none inside a directory another one replaces."""
    targets = [t for t, _ in mutations]
    return not any(a != b and b.startswith(a + "/") for a in targets for b in targets)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(STORE_TARGETS), st.sampled_from(MUTATIONS)),
        min_size=2,
        max_size=3,
        unique_by=lambda m: m[0],
    ).filter(_separate),
    seed=st.integers(1000, 10**6),
)
def test_several_files_mutated_at_once(template, tmp_path_factory, mutations, seed):
    run_case(template, tmp_path_factory.mktemp("multi"), "s", mutations, seed)
