"""Small file helpers shared by the on-disk formats: atomic JSON, checked JSON reads, raw arrays."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["write_json_atomic", "read_json", "read_raw", "append_raw", "fsync_dir", "DirectoryLock", "write_directory"]

MAX_HEADER_BYTES = 64 << 20


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_directory(path, fill) -> None:
    """Create the directory ``path`` (new or empty) with ``fill(tmp_dir)``: written into a
    temporary sibling and renamed into place, so a failure leaves nothing behind."""
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"save path {target} must be a new or empty directory.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: Path, fmt: str, version: int) -> dict:
    """Read a JSON header and check its ``format`` and ``version``; clear ``ValueError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist: not a quant_retriever directory.")
    if path.stat().st_size > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header is {path.stat().st_size} bytes, larger than any valid header.")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON header ({exc}).") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise ValueError(f"{path}: expected a {fmt!r} header, found {str(obj)[:80]!r}.")
    found = obj.get("version")
    if not isinstance(found, int) or found < 1:
        raise ValueError(f"{path}: invalid format version {found!r}.")
    if found > version:
        raise ValueError(
            f"{path}: written by a newer quant_retriever (format version {found}; this one reads up to {version})."
        )
    return obj


def read_raw(path: Path, dtype: np.dtype, count: int, width: int = 1) -> np.ndarray:
    """Read ``count`` rows of ``width`` items of ``dtype`` from a raw file; cut a longer file's
    tail (an uncommitted append), raise ``ValueError`` if it is shorter."""
    path = Path(path)
    itemsize = np.dtype(dtype).itemsize
    need = count * width * itemsize
    size = path.stat().st_size if path.is_file() else -1
    if size < need:
        raise ValueError(f"{path}: expected {need} bytes ({count} rows), found {max(size, 0)}.")
    if size > need:
        os.truncate(path, need)
    data = np.fromfile(path, dtype=dtype, count=count * width)
    return data.reshape(count, width) if width > 1 else data


def append_raw(path: Path, committed_bytes: int, data: np.ndarray) -> None:
    """Append ``data``'s bytes to ``path`` after its first ``committed_bytes`` (fsynced)."""
    with open(path, "ab") as f:
        f.truncate(committed_bytes)
        f.write(np.ascontiguousarray(data).tobytes())
        f.flush()
        os.fsync(f.fileno())


class DirectoryLock:
    """An exclusive advisory lock (``flock``) on ``<directory>/.lock``, held while a persistent
    index or store is open for writing, so a second writer (another process, or a second open
    in this one) gets a clear error instead of interleaving appends. Released by
    :meth:`release` or when the object is garbage collected."""

    def __init__(self, directory: Path):
        import fcntl

        self._fd: int | None = None
        self.path = Path(directory) / ".lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(
                f"{directory} is already open for writing (by another process or another open "
                "object in this one); close it first."
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self):
        self.release()
