"""Opening a store or an index never destroys, never hangs, never follows a link: one test per
class of failure that outsiders found, each on real files (the directory fuzzer and the kills
at every I/O event are in test_directory_fuzz.py and test_kills.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import assert_unchanged, build_store, in_child, observe, tree, vectors

import quant_retriever.files.directories as directories
import quant_retriever.index.directory as index_mod
from quant_retriever import QuantizedIndex
from quant_retriever.store import QuantizedStore

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def store_dir(tmp_path) -> Path:
    build_store(tmp_path / "s", tmp_path / "material")
    return tmp_path / "s"


def make_index(path: Path, n: int = 100, **kwargs) -> QuantizedIndex:
    index = QuantizedIndex(8, codec="int4", block_size=8, path=path, **kwargs)
    index.add(vectors(n))
    return index


# ---------------------------------------------------------------- 1. opening destroys data
def test_a_manifest_restored_from_before_a_compaction_is_refused_and_every_byte_kept(tmp_path):
    p = tmp_path / "idx"
    make_index(p).close()
    backup = (p / "manifest.json").read_text()  # generation 0
    index = QuantizedIndex.open(p)
    index.remove([0])
    index.compact()  # generation 1
    index.close()
    (p / "manifest.json").write_text(backup)
    before = tree(p)
    for read_only in (False, True):
        with pytest.raises(ValueError, match=r"codes\.0\.u8: missing"):
            QuantizedIndex.open(p, read_only=read_only)
        assert_unchanged(p, before)
    assert {"codes.1.u8", "ids.1.i64", "deleted.1.i64", "rescore.1.int8"} <= set(before)


def test_a_store_whose_index_manifest_was_restored_from_a_backup_is_refused_untouched(store_dir, tmp_path):
    shutil.copy(tmp_path / "material" / "manifest.json", store_dir / "index" / "manifest.json")
    before = tree(store_dir)
    for read_only in (False, True):
        with pytest.raises(ValueError, match=r"codes\.0\.u8: missing"):
            QuantizedStore.open(store_dir, read_only=read_only)
        assert_unchanged(store_dir, before)


def test_a_new_index_never_takes_data_files_for_leftovers(tmp_path):
    """An interrupted creation leaves empty files: data in files without a manifest is a damaged
    index, which a creation in the same directory must refuse, not clear."""
    p = tmp_path / "idx"
    make_index(p).close()
    (p / "manifest.json").unlink()
    before = tree(p)
    with pytest.raises(ValueError, match="must be a new or empty directory"):
        QuantizedIndex(8, codec="int4", block_size=8, path=p)
    assert tree(p) == before
    for name in ("codes.0.u8", "ids.0.i64", "deleted.0.i64", "rescore.0.int8"):
        (p / name).write_bytes(b"")  # what a kill during creation leaves: empty files
    (p / "manifest.json.a1b2c3.tmp").write_text("{")
    assert len(QuantizedIndex(8, codec="int4", block_size=8, path=p)) == 0


# ---------------------------------------------------------------- 2. a FIFO hangs the open
def open_store(path: str, read_only: bool):
    QuantizedStore.open(path, read_only=read_only).close()


def open_index(path: str, read_only: bool):
    QuantizedIndex.open(path, read_only=read_only).close()


STORE_FILES = ["store.sqlite", "store.sqlite-wal", "store.sqlite-shm", ".lock", "index/.lock"] + [
    f"index/{n}" for n in ("manifest.json", "codes.1.u8", "ids.1.i64", "deleted.1.i64", "rescore.1.int8")
]


@pytest.mark.parametrize("name", STORE_FILES)
@pytest.mark.parametrize("read_only", [False, True])
def test_a_fifo_in_a_files_place_is_refused_without_blocking(store_dir, name, read_only):
    target = store_dir / name
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    before = tree(store_dir)
    result = in_child(open_store, str(store_dir), read_only, timeout=30)
    if read_only and name.endswith(".lock"):  # a reader never touches the writer's lock
        assert result[0] == "ok", result
    else:
        assert result[:2] == ("raised", "ValueError") and Path(name).name in result[2], result
    assert_unchanged(store_dir, before)


@pytest.mark.parametrize("name", ["manifest.json", "codes.1.u8", "ids.1.i64", "deleted.1.i64", "rescore.1.int8"])
def test_a_directory_in_a_files_place_is_a_value_error(store_dir, name):
    target = store_dir / "index" / name
    target.unlink()
    target.mkdir()
    for read_only in (False, True):
        with pytest.raises(ValueError, match=f"{name} is a directory"):
            QuantizedIndex.open(store_dir / "index", read_only=read_only)


# ---------------------------------------------------------------- 3. a linked index/ is followed
@pytest.mark.parametrize("read_only", [False, True])
def test_a_linked_index_directory_is_refused(store_dir, tmp_path, read_only):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(store_dir / "index", elsewhere)
    shutil.rmtree(store_dir / "index")
    (store_dir / "index").symlink_to(elsewhere)
    before, outside = tree(store_dir), tree(elsewhere)
    with pytest.raises(ValueError, match="index is a symbolic link"):
        QuantizedStore.open(store_dir, read_only=read_only)
    assert_unchanged(store_dir, before)
    assert tree(elsewhere) == outside


def test_a_link_inside_the_index_directory_is_refused(store_dir):
    ids = store_dir / "index" / "ids.1.i64"
    shutil.copy(ids, store_dir.parent / "ids.copy")
    ids.unlink()
    ids.symlink_to(store_dir.parent / "ids.copy")  # the same bytes: only the link is wrong
    with pytest.raises(ValueError, match=r"ids\.1\.i64 is a symbolic link"):
        QuantizedStore.open(store_dir)


# ---------------------------------------------------------------- 4. creation killed half-way
def test_a_store_killed_between_its_index_and_its_dimension_opens_and_works(tmp_path):
    """What the previous release left when killed inside a first upsert: the index created, the
    dimension not yet recorded. The store is complete (a store without a dimension); its first
    upsert replaces the empty index, and a new store in the same place is refused."""
    p = tmp_path / "s"
    QuantizedStore(None, codec="int4", path=p).close()
    QuantizedIndex(8, codec="int4", path=p / "index").close()  # the interrupted first upsert's index
    with pytest.raises(ValueError, match="must be a new or empty directory"):
        QuantizedStore(8, codec="int4", path=p)
    store = QuantizedStore.open(p)
    assert store.dim is None and len(store) == 0
    store.upsert(["a"], np.ones((1, 16), np.float32), ["A"])
    assert store.dim == 16 and store.verify() == []
    store.close()
    assert [r.id for r in QuantizedStore.open(p).records()] == ["a"]


def test_a_creation_killed_before_its_database_was_in_place_is_not_a_store(tmp_path):
    p = tmp_path / "s"
    store = QuantizedStore(8, codec="int4", path=p)
    store.close()
    os.rename(p / "store.sqlite", p / "store.sqlite.creating")  # killed just before the commit point
    assert not QuantizedStore.exists(p)
    with pytest.raises(ValueError, match="not a quant_retriever store"):
        QuantizedStore.open(p)
    store = QuantizedStore(8, codec="int4", path=p)  # created again, over the leftovers
    store.close()
    assert sorted(e.name for e in p.iterdir()) == [".lock", "index", "store.sqlite"]
    assert QuantizedStore.open(p).verify() == []


# ---------------------------------------------------------------- 5. an interrupted replacement
def interrupt_a_replacement(monkeypatch, target: Path, new: QuantizedStore) -> None:
    monkeypatch.setattr(directories, "_rename_exchange", lambda a, b: False)
    real = os.rename

    def rename(src, dst):
        if Path(dst) == target:  # the old store is aside, the new one not yet in place
            raise KeyboardInterrupt("killed")
        real(src, dst)

    monkeypatch.setattr(directories.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        new.save_replacing(target)
    monkeypatch.undo()
    assert not os.path.lexists(target)


def small_store(tag: str, n: int) -> QuantizedStore:
    store = QuantizedStore(8, codec="int4")
    store.upsert([f"{tag}{i}" for i in range(n)], vectors(n), [tag] * n)
    return store


def count_and_close(store: QuantizedStore) -> int:
    try:
        return len(store)
    finally:
        store.close()


def test_every_way_of_opening_recovers_an_interrupted_replacement(tmp_path, monkeypatch):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from quant_retriever.langchain import QuantizedVectorStore as LangChainStore
    from quant_retriever.llama_index import QuantizedVectorStore as LlamaIndexStore

    target = tmp_path / "vs"
    small_store("old", 3).save_replacing(target)
    openers = {
        "exists": lambda: QuantizedStore.exists(target) and 3,
        "read-only": lambda: count_and_close(QuantizedStore.open(target, read_only=True)),
        "store": lambda: count_and_close(QuantizedStore.open(target)),
        "langchain": lambda: count_and_close(LangChainStore.load(target, DeterministicFakeEmbedding(size=8)).store),
        "llama-index": lambda: count_and_close(LlamaIndexStore(path=target).client),
        "llama-index persist dir": lambda: count_and_close(LlamaIndexStore.from_persist_dir(target).client),
    }
    for name, opener in openers.items():
        interrupt_a_replacement(monkeypatch, target, small_store("new", 4))
        assert opener() == 3, name
        assert [r.text for r in QuantizedStore.open(target, read_only=True).records()] == ["old"] * 3, name
    interrupt_a_replacement(monkeypatch, target, small_store("new", 4))
    with pytest.raises(ValueError, match="to reopen a store, use QuantizedStore.open"):
        QuantizedStore(8, codec="int4", path=target)  # a new store never takes the place of one put aside
    assert count_and_close(QuantizedStore.open(target)) == 3


# ---------------------------------------------------------------- 6. a write that raised after removing
def test_remove_never_raises_after_its_commit_point(tmp_path, monkeypatch):
    """The deletion is committed before compaction runs; a compaction that fails on a full disk
    must not make the call raise, since the ids are gone (a call that raised changed nothing)."""
    index = make_index(tmp_path / "idx", n=200)
    real_append = index_mod.append_raw

    def append(path, committed, data):
        if ".1." in Path(path).name:  # the next generation's files: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(path, committed, data)

    monkeypatch.setattr(index_mod, "append_raw", append)
    with pytest.warns(RuntimeWarning, match="compaction of .* postponed"):
        index.remove(np.arange(100))  # half the rows dead: compaction runs, and fails
    monkeypatch.undo()
    assert len(index) == 100 and not index.contains([0, 99]).any() and index.verify() == []
    index.close()
    reopened = QuantizedIndex.open(tmp_path / "idx")
    assert len(reopened) == 100 and not reopened.contains([0, 99]).any()


# ---------------------------------------------------------------- 7. read-only as another user
NOBODY = 65534


def read_as_nobody(store_path: str, index_path: str):
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    records, hits, problems = observe(Path(store_path), read_only=True)
    index = QuantizedIndex.open(index_path, read_only=True)
    found = index.search(vectors(2), k=3).ids.tolist()
    index.close()
    return records, hits, problems, found


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user")
def test_read_only_opening_as_another_user(tmp_path):
    shared = Path(os.environ.get("TMPDIR", "/tmp")) / f"qr-shared-{os.getpid()}"
    shutil.rmtree(shared, ignore_errors=True)
    old_umask = os.umask(0o022)
    try:
        shared.mkdir(mode=0o755)
        build_store(shared / "s", shared / "material")
        make_index(shared / "idx").close()
        small_store("x", 3).save(shared / "saved")  # a saved copy: renamed into place from a temporary
        for path in [shared / "s", shared / "idx", shared / "saved"]:
            for entry in [path, *path.rglob("*")]:
                mode = entry.lstat().st_mode & 0o777
                assert mode & 0o044 == 0o044, (entry, oct(mode))  # everyone may read
        expected = observe(shared / "s", read_only=True)
        result = in_child(read_as_nobody, str(shared / "s"), str(shared / "idx"))
        assert result[0] == "ok", result
        assert result[1][:3] == expected and len(result[1][3]) == 2
        assert in_child(open_store, str(shared / "saved"), True)[0] == "ok"
    finally:
        os.umask(old_umask)
        shutil.rmtree(shared, ignore_errors=True)


# ---------------------------------------------------------------- 8. read-only on a read-only mount
@pytest.fixture
def read_only_mount(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to mount a filesystem")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_read_only_opening_on_a_read_only_mount(read_only_mount):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from quant_retriever.langchain import QuantizedVectorStore as LangChainStore
    from quant_retriever.llama_index import QuantizedVectorStore as LlamaIndexStore

    build_store(read_only_mount / "s", read_only_mount / "material")
    make_index(read_only_mount / "idx").close()
    expected = observe(read_only_mount / "s", read_only=True)
    remount = subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], capture_output=True)
    assert remount.returncode == 0, remount.stderr
    assert observe(read_only_mount / "s", read_only=True) == expected
    assert len(QuantizedIndex.open(read_only_mount / "idx", read_only=True)) == 100
    assert len(LangChainStore.load(read_only_mount / "s", DeterministicFakeEmbedding(size=8), read_only=True).store)
    assert len(LlamaIndexStore(path=read_only_mount / "s", read_only=True).client) == len(expected[0])
    with pytest.raises(ValueError, match="not writable"):
        QuantizedStore.open(read_only_mount / "s")


# ---------------------------------------------------------------- 9. damaged numbers rank first
def damage_rescore_row(path: Path, row: int, dtype: str, what: str) -> None:
    """Put an infinity into one row's norm, or a NaN into its scale (int8) or a value (fp16)."""
    codec = index_mod.make_codec(dtype, 8)
    raw = bytearray((path / f"rescore.0.{dtype}").read_bytes())
    start = row * codec.row_bytes
    if dtype == "int8":  # 8 int8 values, then the float32 norm and scale (see codecs/int8.py)
        offset, value = start + 8 + (0 if what == "norm" else 4), np.float32(np.inf if what == "norm" else np.nan)
    else:  # 8 float16 values, then the float32 norm (see codecs/floats.py)
        offset, value = (start + 16, np.float32(np.inf)) if what == "norm" else (start + 2, np.float16(np.nan))
    raw[offset : offset + value.nbytes] = value.tobytes()
    (path / f"rescore.0.{dtype}").write_bytes(bytes(raw))


def drop_checksums(path: Path) -> None:
    """The manifest as the first format-2 releases wrote it: no checksums to catch damage."""
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["checksums"]
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("dtype", ["int8", "fp16"])
@pytest.mark.parametrize("what", ["norm", "value"])
def test_damaged_numbers_in_the_rescore_copy_rank_last_and_verify_finds_them(tmp_path, kernel_path, dtype, what):
    p = tmp_path / "idx"
    x = vectors(50)
    index = QuantizedIndex(8, codec="int4", block_size=8, path=p, rescore_dtype=dtype)
    index.add(x)
    index.close()
    damage_rescore_row(p, 7, dtype, what)
    with pytest.raises(ValueError, match=f"rescore.0.{dtype}: its first 50 rows do not match the checksum"):
        QuantizedIndex.open(p)
    drop_checksums(p)
    index = QuantizedIndex.open(p)
    assert any("rows [7] hold NaN or infinities" in problem for problem in index.verify())
    for queries in (x[7], x[5:9], np.repeat(x[7:8], 9, axis=0)):  # one query (native or not), and batches
        res = index.search(queries, k=50, rescore_multiplier=1)
        assert np.isfinite(res.scores).all()
        assert (res.ids[:, -1] == 7).all(), res.ids  # the damaged row last, whatever its query
        assert (np.diff(res.scores, axis=1) <= 0).all()
    assert torch.isfinite(torch.from_numpy(index.search(x[:3], k=5).scores)).all()


def test_a_sharded_creation_clears_only_shards_that_hold_no_data(tmp_path):
    """The shards of an interrupted sharded creation (no manifest yet) are empty stores or
    indexes; a shard folder with documents means the manifest was lost, and is never cleared."""
    from quant_retriever.distributed.shards import _is_leftover

    root = tmp_path / "sharded"
    QuantizedStore(8, codec="int4", path=root / "shard-0").close()
    QuantizedIndex(8, codec="int4", path=root / "shard-1").close()
    QuantizedStore(None, codec="int4", path=root / "shard-2").close()
    (root / "shard-3").mkdir()
    store = QuantizedStore(8, codec="int4", path=root / "shard-4")
    store.upsert(["a"], vectors(1), ["A"])
    store.close()
    make_index(root / "shard-5", n=3).close()
    assert [_is_leftover(root / f"shard-{i}") for i in range(6)] == [True, True, True, True, False, False]
    before = tree(root)
    with pytest.raises(ValueError, match="must be a new or empty directory"):
        directories.prepare_new_directory(root, "sharded store", "ShardedStore.open", _is_leftover)
    assert tree(root) == before
