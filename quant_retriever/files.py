"""Small file helpers shared by the on-disk formats: atomic JSON, checked JSON reads, raw arrays."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np

__all__ = [
    "Field",
    "Int",
    "Bool",
    "OneOf",
    "Object",
    "write_json_atomic",
    "read_json",
    "read_raw",
    "append_raw",
    "fsync_dir",
    "DirectoryLock",
    "write_directory",
    "open_nofollow",
    "write_all",
    "check_new_directory",
    "prepare_new_directory",
    "OpenObjects",
    "replace_directory",
    "recover_replacement",
]

MAX_HEADER_BYTES = 64 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link as the last component (``ValueError``)."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if os.path.islink(path):
            raise ValueError(
                f"{path} is a symbolic link; quant_retriever never follows links in its directories."
            ) from None
        raise exc


def write_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset`` (short writes continue)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def check_new_directory(
    path: Path, hint: str, leftovers=lambda entry: False, ignore: tuple[str, ...] = (".lock", ".readers")
) -> list[Path]:
    """The one "new or empty directory" check: ``path`` must not exist, or be a directory
    (not a link) holding nothing but ``ignore`` (lock files) and entries for which
    ``leftovers(entry)`` is true; returns those leftovers. Anything else raises
    ``ValueError`` ending with ``hint``."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return []
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"path {path} must be a new or empty directory; it is a file or a link.")
    found = [p for p in path.iterdir() if p.name not in ignore]
    if not all(leftovers(p) for p in found):
        raise ValueError(f"path {path} must be a new or empty directory; {hint}.")
    return found


def prepare_new_directory(path: Path, what: str, reopen_hint: str, leftovers=lambda entry: False) -> DirectoryLock:
    """Lock ``path`` to create a new persistent ``what`` in it, and return the lock.

    ``path`` must not exist, be empty, or hold only what an interrupted creation leaves
    (``.lock`` and entries for which ``leftovers(path)`` is true; removed here, under the lock).
    Anything else raises ``ValueError`` pointing to ``reopen_hint``, before anything is written.
    """
    path = Path(path)
    check_new_directory(path, f"to reopen a {what}, use {reopen_hint}", leftovers)
    path.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(path)
    try:
        for p in check_new_directory(path, f"to reopen a {what}, use {reopen_hint}", leftovers):  # again, locked
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_with_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename (never half-written).

    The commit point of the on-disk formats. If anything fails after the rename (the directory
    fsync), the previous content is put back before the error propagates, so a call that
    raises leaves the last committed file, as far as a single I/O error allows.
    """
    path = Path(path)
    data = json.dumps(obj).encode("utf-8")
    try:
        fd = open_nofollow(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            previous = f.read(MAX_HEADER_BYTES + 1)
    except FileNotFoundError:
        previous = None
    _replace_with_bytes(path, data)
    try:
        fsync_dir(path.parent)
    except BaseException:
        try:
            if previous is None:
                os.unlink(path)
            else:
                _replace_with_bytes(path, previous)
            fsync_dir(path.parent)
        except OSError:
            pass
        raise


def _save_prefix(target: Path) -> str:
    return f".{target.name}.qr-save-"


def _remove_stale_saves(target: Path) -> None:
    """Remove the temporaries of saves to ``target`` that were interrupted (a kill, a power
    cut): hidden siblings whose writer's lock can be taken, i.e. nobody is writing them."""
    import fcntl

    for tmp in target.parent.glob(_save_prefix(target) + "*"):
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        try:
            fd = open_nofollow(tmp / ".lock", os.O_RDWR | os.O_CREAT)
        except (OSError, ValueError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a save in progress
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            os.close(fd)


def write_directory(path, fill) -> None:
    """Create the directory ``path`` (new or empty) with ``fill(tmp_dir)``: written into a
    locked temporary sibling and renamed into place, so a failure leaves nothing behind, and
    the temporaries of interrupted earlier saves to ``path`` are removed first."""
    target = Path(path)
    check_new_directory(target, "save into a new one", ignore=())
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_saves(target)
    tmp = Path(tempfile.mkdtemp(prefix=_save_prefix(target), dir=target.parent))
    lock = DirectoryLock(tmp)  # marks the temporary as in use (see _remove_stale_saves)
    try:
        fill(tmp)
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock.release()


class Field:
    """One field of a header schema: a check and what it expects (for the error message)."""

    def __init__(self, expects: str, check):
        self.expects, self.check = expects, check


def Int(lo: int = 0, hi: int = 2**63 - 1) -> Field:
    """An integer (never a bool or a float) in ``[lo, hi]``."""
    return Field(f"an integer in {lo}..{hi}", lambda v: type(v) is int and lo <= v <= hi)


def Bool() -> Field:
    return Field("true or false", lambda v: type(v) is bool)


def OneOf(*choices: str) -> Field:
    return Field(f"one of {', '.join(map(repr, choices))}", lambda v: type(v) is str and v in choices)


def Object() -> Field:
    """A JSON object whose keys are strings (its own schema is checked by the caller)."""
    return Field("an object", lambda v: type(v) is dict)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json(path: Path, fmt: str, version: int, schema: dict[str, Field] | None = None) -> dict:
    """Read a JSON header, check its ``format`` and ``version`` and, with ``schema``, that
    every field is present with the expected kind: any mismatch is a ``ValueError`` naming
    the file and the field. ``NaN``/``Infinity``, deep nesting and oversized files are refused."""
    path = Path(path)
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: not a quant_retriever directory.") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file.")
        raw = f.read(MAX_HEADER_BYTES + 1)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: header is larger than any valid header ({MAX_HEADER_BYTES} bytes).")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not a valid JSON header ({str(exc)[:200]}).") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise ValueError(f"{path}: expected a {fmt!r} header, found {str(obj)[:80]!r}.")
    found = obj.get("version")
    if type(found) is not int or found < 1:
        raise ValueError(f"{path}: invalid format version {found!r}.")
    if found > version:
        raise ValueError(
            f"{path}: written by a newer quant_retriever (format version {found}; this one reads up to {version})."
        )
    if found < version:
        raise ValueError(
            f"{path}: format version {found} is no longer read by this quant_retriever (it reads version {version}); "
            "re-create it from your documents (see the README's upgrade note)."
        )
    for name, spec in (schema or {}).items():
        if name not in obj:
            raise ValueError(f"{path}: field {name!r} is missing.")
        if not spec.check(obj[name]):
            raise ValueError(f"{path}: field {name!r} must be {spec.expects}; found {str(obj[name])[:80]!r}.")
    return obj


def read_raw(path: Path, dtype: np.dtype, count: int, width: int = 1) -> np.ndarray:
    """Read the first ``count`` rows of ``width`` items of ``dtype`` from a raw file (never
    through a link, never modifying it). Bytes past them (an uncommitted append) are ignored:
    the next append overwrites them. A shorter file raises ``ValueError``."""
    path = Path(path)
    need = count * width * np.dtype(dtype).itemsize
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; expected {need} bytes ({count} rows).") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size < need:
            raise ValueError(f"{path}: expected {need} bytes ({count} rows), found {st.st_size}.")
        data = np.frombuffer(f.read(need), dtype=dtype).copy() if need else np.zeros(0, dtype=dtype)
    return data.reshape(count, width) if width > 1 else data


def append_raw(path: Path, committed_bytes: int, data: np.ndarray) -> None:
    """Write ``data``'s bytes to ``path`` right after its first ``committed_bytes``, dropping
    anything after them first (fsynced; never through a link; the file is created if absent)."""
    fd = open_nofollow(Path(path), os.O_RDWR | os.O_CREAT)
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


class DirectoryLock:
    """An advisory ``flock`` on a persistent index or store directory.

    A writer holds ``LOCK_EX`` on ``<directory>/.lock``, so a second writer (another process)
    gets a clear error instead of interleaving appends. A read-only opener holds ``LOCK_SH`` on
    ``<directory>/.readers`` (created when the directory is writable; without write permission
    and without that file, it takes no lock): readers never block or wait for the writer, and
    a tool that must be alone can take ``LOCK_EX`` on both. Released by :meth:`release` or
    when the object is garbage collected.
    """

    def __init__(self, directory: Path, shared: bool = False):
        import fcntl

        self._fd: int | None = None
        self.path = Path(directory) / (".readers" if shared else ".lock")
        try:
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT) if not shared else self._open_shared()
        except PermissionError:
            if not shared:
                raise ValueError(f"{directory} is not writable; open it with read_only=True.") from None
            fd = None
        if fd is None:
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

    def _open_shared(self) -> int | None:
        try:
            return open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        except PermissionError:
            try:
                return open_nofollow(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self):
        self.release()


class OpenObjects:
    """The persistent objects (indexes, stores) open for writing in this process, one per
    directory, so that opening a directory again (a notebook cell run twice, a reloaded web
    app) shares the open object instead of failing on the directory lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[str, weakref.ref] = {}

    def lock(self) -> threading.Lock:
        return self._lock

    def get(self, path: Path):
        """The live, unclosed object open on ``path`` (call with :meth:`lock` held), or ``None``."""
        ref = self._open.get(os.path.realpath(path))
        obj = ref() if ref is not None else None
        return obj if obj is not None and not getattr(obj, "_closed", True) else None

    def put(self, path: Path, obj) -> None:
        self._open[os.path.realpath(path)] = weakref.ref(obj)


def replace_directory(target: Path, save, is_ours, what: str) -> None:
    """``save(path)`` (which writes a new directory) to ``target``, atomically replacing what
    is there: a copy is written to a hidden temporary sibling and swapped in with one rename
    exchange (two renames where there is none, see :func:`recover_replacement`), so a crash at
    any moment leaves the old or the new copy at ``target``, never a mix; temporaries an
    interrupted call left behind are removed. ``target`` must be missing, empty, or pass
    ``is_ours`` (a ``what``) and not be open for writing; anything else is refused."""
    recover_replacement(target)
    if not target.exists() or (target.is_dir() and not target.is_symlink() and not any(target.iterdir())):
        save(target)
        return
    if target.is_symlink() or not is_ours(target):
        raise ValueError(f"{target} exists and is not a {what}; refusing to replace it.")
    lock = DirectoryLock(target)  # raises while the copy there is open for writing
    try:
        for leftover in _replacement_temporaries(target):
            shutil.rmtree(leftover)
        new = Path(tempfile.mkdtemp(prefix=f".{target.name}.qr-new-", dir=target.parent))
        try:
            save(new)
            _swap(new, target)  # the commit point; ``new`` now holds the old copy
        finally:
            shutil.rmtree(new, ignore_errors=True)
    finally:
        lock.release()


def _replacement_temporaries(target: Path) -> list[Path]:
    """Hidden siblings :func:`replace_directory` writes (and ``save``'s own temporaries inside
    them): ``.<name>.qr-new-*``, ``.<name>.qr-old-*``, ``..<name>.qr-*``."""
    prefixes = (f".{target.name}.qr-", f"..{target.name}.qr-")
    if not target.parent.is_dir():
        return []
    return sorted(
        p for p in target.parent.iterdir() if p.name.startswith(prefixes) and p.is_dir() and not p.is_symlink()
    )


def recover_replacement(target: str | os.PathLike) -> None:
    """Finish what a crash interrupted inside :func:`replace_directory` on a
    filesystem without rename exchange: with ``target`` missing, the old store (renamed aside
    just before the crash) is renamed back."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        return
    old = [p for p in _replacement_temporaries(target) if p.name.startswith(f".{target.name}.qr-old-")]
    if old:
        os.rename(old[-1], target)
        fsync_dir(target.parent)


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; ``False`` where
    the platform or the filesystem cannot (then nothing was changed)."""
    import ctypes
    import errno

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap(new: Path, target: Path) -> None:
    """Put the directory ``new`` at ``target`` and the old ``target`` at ``new``: one atomic
    rename exchange where there is one; elsewhere two renames, with the old store aside as
    ``.<name>.qr-old-*`` in between (:func:`recover_replacement` renames it back)."""
    if not _rename_exchange(new, target):
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.qr-old-", dir=target.parent))
        os.rename(target, aside)  # replaces the empty ``aside``
        os.rename(new, target)
        os.rename(aside, new)
    fsync_dir(target.parent)
