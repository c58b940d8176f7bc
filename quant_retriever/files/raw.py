"""Opening files safely, and raw arrays in append-only files with their checksums.

Every file of an index or store directory is opened through :func:`open_file`: it never blocks
(a FIFO in a file's place), never follows a link as the last component, and only hands back a
regular file; anything else is a ``ValueError`` naming the path. Directories on the way are
checked by :func:`quant_retriever.files.directories.real_directory`.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "FILE_MODE",
    "open_file",
    "file_kind",
    "write_all",
    "read_raw",
    "append_raw",
    "checksum",
    "file_checksum",
    "create_temp_file",
    "fsync_dir",
]

#: New files: read and write for everyone the umask allows (the usual mode of created files).
FILE_MODE = 0o666
_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
#: Bytes read per step when a file is checksummed.
_CHUNK = 16 << 20


def file_kind(path: Path) -> str | None:
    """What is at ``path`` without following a link: ``"a regular file"``, ``"a directory"``,
    ``"a symbolic link"``, ``"a FIFO"``, ``"a socket"``, ``"a device"``; ``None`` if nothing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a device"


def _not_a_file(path: Path, kind: str) -> ValueError:
    return ValueError(
        f"{path} is {kind}, where quant_retriever expects a regular file (it never follows links or "
        "reads anything else in its directories)."
    )


def open_file(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open(path, flags)`` of a regular file only, that cannot block or follow a link
    (``O_NONBLOCK | O_NOFOLLOW``, then ``fstat``): a link, a directory, a FIFO or a device at
    ``path`` raises ``ValueError`` naming it. ``FileNotFoundError`` and permission errors
    propagate as they are."""
    try:
        fd = os.open(path, flags | _FLAGS, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        kind = file_kind(path)
        if kind not in (None, "a regular file"):
            raise _not_a_file(path, kind) from None
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # it changed under us
            raise _not_a_file(path, "not a regular file") from None
        raise  # permissions, a read-only file system, a full disk: as they are
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_a_file(path, file_kind(path) or "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset`` (short writes continue)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def checksum(data, start: int = 0) -> int:
    """CRC-32 of ``data`` (bytes or a contiguous array), continuing from ``start``: the checksum
    of a file that grows by appends is carried forward with the appended bytes alone."""
    return zlib.crc32(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data, start)


def file_checksum(fd: int, nbytes: int) -> int:
    """CRC-32 of the first ``nbytes`` of an open file (read in chunks, never all at once)."""
    crc, offset = 0, 0
    while offset < nbytes:
        chunk = os.pread(fd, min(_CHUNK, nbytes - offset), offset)
        if not chunk:
            break
        crc, offset = zlib.crc32(chunk, crc), offset + len(chunk)
    return crc


def read_raw(path: Path, dtype: np.dtype, count: int, width: int = 1) -> np.ndarray:
    """Read the first ``count`` rows of ``width`` items of ``dtype`` from a raw file (see
    :func:`open_file`; never modifying it). Bytes past them (an uncommitted append) are
    ignored: the next append overwrites them. A shorter file raises ``ValueError``."""
    path = Path(path)
    need = count * width * np.dtype(dtype).itemsize
    try:
        fd = open_file(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; expected {need} bytes ({count} rows).") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < need:
            raise ValueError(f"{path}: expected {need} bytes ({count} rows), found {size}.")
        data = np.frombuffer(f.read(need), dtype=dtype).copy() if need else np.zeros(0, dtype=dtype)
    return data.reshape(count, width) if width > 1 else data


def append_raw(path: Path, committed_bytes: int, data: np.ndarray) -> None:
    """Write ``data``'s bytes to ``path`` right after its first ``committed_bytes``, dropping
    anything after them first (fsynced; the file is created if absent; see :func:`open_file`)."""
    fd = open_file(Path(path), os.O_RDWR | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size < committed_bytes:
            raise ValueError(
                f"{path}: {size} bytes on disk but {committed_bytes} committed; it was truncated or replaced."
            )
        os.ftruncate(fd, committed_bytes)
        write_all(fd, np.ascontiguousarray(data).tobytes(), committed_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_temp_file(directory: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, empty file ``<directory>/<prefix><random><suffix>`` opened for writing, with the
    usual mode (``FILE_MODE`` less the umask; ``tempfile.mkstemp`` makes it private, which
    would lock other users' read-only openers out once it is renamed into place)."""
    for _ in range(100):
        path = Path(directory) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
