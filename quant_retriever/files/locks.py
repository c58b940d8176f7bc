"""Who has a directory open: the writer's and readers' ``flock`` files, and the objects this
process has open for writing (so that opening a directory again shares the open object)."""

from __future__ import annotations

import errno
import os
import threading
import weakref
from pathlib import Path

from quant_retriever.files.raw import open_file

__all__ = ["DirectoryLock", "OpenObjects", "open_in_process", "lock_is_free"]

#: Errors that mean "this process may not write here" (no permission, a read-only mount).
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class DirectoryLock:
    """An advisory ``flock`` on a persistent index or store directory.

    A writer holds ``LOCK_EX`` on ``<directory>/.lock``, so a second writer (another process)
    gets a clear error instead of interleaving appends. A read-only opener holds ``LOCK_SH`` on
    ``<directory>/.readers`` (created when the directory is writable; without write permission,
    or on a read-only mount, and without that file, it takes no lock): readers never block or
    wait for the writer, and a tool that must be alone can take ``LOCK_EX`` on both. Released by
    :meth:`release` or when the object is garbage collected. A lock file that is not a regular
    file (a link, a FIFO, a directory) raises ``ValueError``.
    """

    def __init__(self, directory: Path, shared: bool = False):
        import fcntl

        self._fd: int | None = None
        self.path = Path(directory) / (".readers" if shared else ".lock")
        try:
            fd = open_file(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE:
                raise
            if not shared:
                raise ValueError(
                    f"{directory} is not writable ({os.strerror(exc.errno)}); open it with read_only=True."
                ) from None
            try:
                fd = open_file(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(
                f"{directory} is already open for writing by another process; close it there first, "
                "or open it with read_only=True."
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self):
        self.release()


def lock_is_free(directory: Path) -> bool:
    """Whether nobody holds ``<directory>/.lock`` (no writer, no save or replacement in
    progress there); a directory without a usable lock file counts as free."""
    import fcntl

    try:
        fd = open_file(Path(directory) / ".lock", os.O_RDONLY)
    except (OSError, ValueError):
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


_REGISTRIES: weakref.WeakSet = weakref.WeakSet()


class OpenObjects:
    """The persistent objects (indexes, stores) open for writing in this process, one per
    directory, so that opening a directory again (a notebook cell run twice, a reloaded web
    app) shares the open object instead of failing on the directory lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[str, weakref.ref] = {}
        _REGISTRIES.add(self)

    def lock(self) -> threading.Lock:
        return self._lock

    def get(self, path: Path):
        """The live, unclosed object open on ``path`` (call with :meth:`lock` held), or ``None``."""
        ref = self._open.get(os.path.realpath(path))
        obj = ref() if ref is not None else None
        return obj if obj is not None and not getattr(obj, "_closed", True) else None

    def put(self, path: Path, obj) -> None:
        self._open[os.path.realpath(path)] = weakref.ref(obj)


def open_in_process(path: Path):
    """The object of any registry this process has open for writing on ``path``, or ``None``."""
    for registry in list(_REGISTRIES):
        with registry.lock():
            obj = registry.get(path)
        if obj is not None:
            return obj
    return None
