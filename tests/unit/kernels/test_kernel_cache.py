"""The per-user cache of compiled kernels: a new process loads instead of compiling, and a
damaged, foreign or linked cache file is never loaded."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quant_retriever.kernels import build, scans

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")

CHILD = """
import subprocess, sys, time
if sys.argv[1] == "forbid-compiling":
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although the cache was warm")
    subprocess.run = refuse
start = time.perf_counter()
from quant_retriever.kernels import scans
assert scans.LIBRARY.get() is not None
print(f"{time.perf_counter() - start:.4f}")
"""


def run_child(mode: str, cache: Path) -> float:
    env = {**os.environ, "QUANT_RETRIEVER_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip())


def cached_library(cache: Path) -> Path:
    (lib,) = [p for p in (cache / "kernels").iterdir() if p.name.startswith("scans-native-") and p.suffix == ".so"]
    return lib


def fresh_build(monkeypatch, cache: Path):
    monkeypatch.setenv("QUANT_RETRIEVER_CACHE_DIR", str(cache))
    return build.Library("scans.c", scans.LIBRARY.signatures).build()


def damage(lib: Path, data: bytes) -> None:
    """Put ``data`` in place of the cached library as a new file (a rename), as a full disk or
    another program would leave it. Never write the loaded file in place: this process has it
    mapped, and executing a page past a truncated end raises SIGBUS (see
    test_a_loaded_library_truncated_in_place_dies_of_sigbus_at_exit)."""
    tmp = lib.with_name(lib.name + ".damaged")
    tmp.write_bytes(data)
    os.replace(tmp, lib)


def works(lib) -> bool:
    rows = torch.full((50, 8), 0xFF, dtype=torch.uint8)
    query = torch.zeros(1, 8, dtype=torch.uint8)
    out = torch.empty(1, 50, dtype=torch.int32)
    lib.hamming_scan(rows.data_ptr(), 50, 1, query.data_ptr(), 1, out.data_ptr(), 1)
    return bool((out == 64).all())


def test_a_new_process_loads_the_cached_library_without_compiling(tmp_path):
    run_child("compile", tmp_path)
    lib = cached_library(tmp_path)
    digest = (lib.parent / (lib.name + ".sha256")).read_text().strip()
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == digest
    assert (os.stat(tmp_path / "kernels").st_mode & 0o777) == 0o700
    run_child("forbid-compiling", tmp_path)


def test_a_damaged_cache_file_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    fresh_build(monkeypatch, tmp_path)
    lib = cached_library(tmp_path)
    good = lib.read_bytes()
    damage(lib, good[: len(good) // 2])  # truncated, as by a full disk
    assert works(fresh_build(monkeypatch, tmp_path))
    assert lib.read_bytes() == good  # rebuilt (gcc is deterministic for the same input)


def test_a_foreign_file_with_a_stale_digest_is_rebuilt(tmp_path, monkeypatch):
    fresh_build(monkeypatch, tmp_path)
    lib = cached_library(tmp_path)
    damage(lib, Path(build.SOURCE_DIR / "scans.c").read_bytes())  # someone else's bytes
    loaded = fresh_build(monkeypatch, tmp_path)
    assert works(loaded)
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == (lib.parent / (lib.name + ".sha256")).read_text().strip()


def test_links_in_the_cache_are_never_followed(tmp_path, monkeypatch):
    fresh_build(monkeypatch, tmp_path)
    lib = cached_library(tmp_path)
    outside = tmp_path / "outside.so"
    shutil.copy(lib, outside)
    before = outside.read_bytes()
    lib.unlink()
    lib.symlink_to(outside)  # even a link to a genuine copy is refused
    assert works(fresh_build(monkeypatch, tmp_path))
    assert not lib.is_symlink() and outside.read_bytes() == before


def test_a_cache_directory_others_can_write_is_not_used(tmp_path, monkeypatch):
    (tmp_path / "kernels").mkdir(mode=0o700)
    os.chmod(tmp_path / "kernels", 0o777)
    assert works(fresh_build(monkeypatch, tmp_path))
    assert list((tmp_path / "kernels").iterdir()) == []  # compiled in a private temporary directory


def test_source_changes_get_their_own_cache_entry(tmp_path, monkeypatch):
    fresh_build(monkeypatch, tmp_path)
    monkeypatch.setattr(build, "CFLAGS", (*build.CFLAGS, "-DQR_TEST_VARIANT=1"))
    fresh_build(monkeypatch, tmp_path)
    assert len([p for p in (tmp_path / "kernels").iterdir() if p.suffix == ".so"]) == 2


SIGBUS_CHILD = """
import ctypes, os, shutil, sys
source, copy, how = sys.argv[1:]
shutil.copy(source, copy)
ctypes.CDLL(copy)
if how == "in place":
    os.truncate(copy, 0)  # what the damage above once did, writing the loaded file itself
else:
    open(copy + ".new", "wb").close()
    os.replace(copy + ".new", copy)  # a new file under the name: the loaded one stays intact
print("done", flush=True)
"""


@pytest.mark.parametrize("how", ["in place", "renamed"])
def test_a_loaded_library_truncated_in_place_dies_of_sigbus_at_exit(tmp_path, monkeypatch, how):
    """The cause of a SIGBUS once seen at the end of a full test run, after pytest's summary:
    two tests damaged the cached kernel library by writing it in place while this process had
    it loaded (mapped). At interpreter exit the library's destructors run from pages past the
    truncated end, and the process dies of SIGBUS. The tests now damage it through a rename."""
    fresh_build(monkeypatch, tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", SIGBUS_CHILD, str(cached_library(tmp_path)), str(tmp_path / "copy.so"), how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "done"  # every statement ran; the exit itself is what fails
    assert out.returncode == (-7 if how == "in place" else 0), (out.returncode, out.stderr[-500:])
