"""QuantizedStore.save_replacing: a saved store replaced atomically (the LlamaIndex persist
idiom writes the same directory again and again). Faults are injected at every step, the
fallback without a rename exchange is run, and a writer is killed with SIGKILL mid-replace."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import quant_retriever.files.directories as files_module
import quant_retriever.store as store_module
from quant_retriever.files import recover_replacement
from quant_retriever.store import QuantizedStore


def make(n: int, tag: str, seed: int = 0) -> QuantizedStore:
    s = QuantizedStore(codec="int4", metric="cosine")
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    s.upsert([f"{tag}-{i}" for i in range(n)], x, [tag] * n, [{"tag": tag, "i": i} for i in range(n)])
    return s


def content(path: Path) -> tuple[str, int]:
    """(the tag, the count) of the store saved at ``path``; it must open and verify."""
    s = QuantizedStore.open(path)
    try:
        assert s.verify() == []
        tags = {r.metadata["tag"] for r in s.records()}
        assert len(tags) == 1
        return tags.pop(), len(s)
    finally:
        s.close()


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_save_replacing_writes_new_and_replaces_old(tmp_path):
    target = tmp_path / "vs"
    make(3, "old").save_replacing(target)
    assert content(target) == ("old", 3)
    make(5, "new").save_replacing(target)
    assert content(target) == ("new", 5) and siblings(target) == []
    (tmp_path / "empty").mkdir()
    make(2, "e").save_replacing(tmp_path / "empty")
    assert content(tmp_path / "empty") == ("e", 2)


def test_save_replacing_refuses_what_is_not_a_saved_store(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    (tmp_path / "file").write_text("a file")
    for p in ("notes", "file"):
        with pytest.raises(ValueError, match="not a quant_retriever store; refusing to replace it"):
            make(1, "x").save_replacing(tmp_path / p)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    opened = QuantizedStore(codec="int8", path=tmp_path / "open")
    with pytest.raises(ValueError, match="open for writing in this process \\(a QuantizedStore\\); close it first"):
        make(1, "x").save_replacing(tmp_path / "open")
    with pytest.raises(ValueError, match="is this quant_retriever store's own directory: .* nothing to replace"):
        opened.save_replacing(tmp_path / "open")
    opened.close()
    make(1, "x").save_replacing(tmp_path / "open")
    assert content(tmp_path / "open") == ("x", 1)


@pytest.mark.parametrize("fail_at", ["save", "swap"])
def test_a_failure_before_the_swap_leaves_the_old_store_and_no_temporaries(tmp_path, monkeypatch, fail_at):
    target = tmp_path / "vs"
    make(3, "old").save_replacing(target)
    new = make(4, "new")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fail_at == "save":
        monkeypatch.setattr(QuantizedStore, "save", boom)
    else:
        monkeypatch.setattr(files_module, "_swap", boom)
    with pytest.raises(OSError, match="No space left"):
        new.save_replacing(target)
    assert content(target) == ("old", 3) and siblings(target) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_leftovers_of_an_interrupted_replace_are_removed_next_time(tmp_path, monkeypatch, exchange):
    target = tmp_path / "vs"
    make(3, "old").save_replacing(target)
    if not exchange:
        monkeypatch.setattr(files_module, "_rename_exchange", lambda a, b: False)
    monkeypatch.setattr(files_module.shutil, "rmtree", lambda *a, **k: None)  # a crash before the clean-up
    make(4, "new").save_replacing(target)
    monkeypatch.undo()
    assert content(target) == ("new", 4) and siblings(target) != []
    make(5, "newer").save_replacing(target)
    assert content(target) == ("newer", 5) and siblings(target) == []


def test_without_rename_exchange_a_crash_between_the_renames_restores_the_old_store(tmp_path, monkeypatch):
    target = tmp_path / "vs"
    make(3, "old").save_replacing(target)
    monkeypatch.setattr(files_module, "_rename_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if Path(dst) == target:  # the old store is already aside, the new one not yet in place
            raise KeyboardInterrupt("killed")
        real_rename(src, dst)

    monkeypatch.setattr(files_module.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        make(4, "new").save_replacing(target)
    monkeypatch.undo()
    assert not target.exists() and any(".qr-old-" in n for n in siblings(target))
    recover_replacement(target)  # what from_persist_dir and the next save_replacing do first
    assert content(target) == ("old", 3)
    make(4, "new").save_replacing(target)
    assert content(target) == ("new", 4) and siblings(target) == []


def test_the_fallback_path_replaces_too(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module, "_rename_exchange", lambda a, b: False)
    target = tmp_path / "vs"
    for i in range(3):
        make(i + 1, f"v{i}").save_replacing(target)
        assert content(target) == (f"v{i}", i + 1) and siblings(target) == []


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from quant_retriever.store import QuantizedStore

    target, n = sys.argv[1], 0
    stores = []
    for tag, size in (("A", 40), ("B", 70)):
        s = QuantizedStore(codec="int4")
        x = np.random.default_rng(size).standard_normal((size, 32)).astype(np.float32)
        s.upsert([f"{tag}{i}" for i in range(size)], x, [tag] * size, [{"tag": tag}] * size)
        stores.append(s)
    print("ready", flush=True)
    while True:
        stores[n % 2].save_replacing(target)
        n += 1
    """
)


def test_sigkill_during_replacing_leaves_the_old_or_the_new_store(tmp_path):
    target = tmp_path / "vs"
    make(1, "A").save_replacing(target)  # something to replace from the start
    env = {**os.environ, "PYTHONPATH": str(Path(store_module.__file__).parents[2])}
    rng = random.Random(0)
    interrupted = 0
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += bool(siblings(target))  # killed inside a replace: its temporaries are there
        recover_replacement(target)
        tag, n = content(target)
        assert (tag, n) in {("A", 40), ("B", 70), ("A", 1)}, (trial, tag, n)
    assert interrupted >= 3  # the kills did land inside replaces
    make(2, "C").save_replacing(target)  # and the next replace cleans every leftover
    assert content(target) == ("C", 2) and siblings(target) == []
