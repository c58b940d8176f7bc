"""Directories of indexes and stores: checked components, creation over the leftovers of an
interrupted one, saves into a new directory, and atomic replacement of a saved one.

The rule of every function here: delete only what is proven to be garbage (a temporary of
ours that nobody holds the lock of, or what the caller's ``leftovers`` check vouches for), and
only after the state that is kept has been checked; otherwise refuse with ``ValueError`` and
leave every byte as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from quant_retriever.files.locks import DirectoryLock, lock_is_free, open_in_process
from quant_retriever.files.raw import file_kind, fsync_dir

__all__ = [
    "real_directory",
    "make_temp_dir",
    "check_new_directory",
    "prepare_new_directory",
    "write_directory",
    "replace_directory",
    "replacement_of",
    "recover_replacement",
]

DIR_MODE = 0o777


def real_directory(path: Path, what: str = "directory") -> Path:
    """``path`` if it is a directory itself, not a link to one: every component inside an index
    or store directory is checked this way before anything under it is read or written.
    ``FileNotFoundError`` if it is missing, ``ValueError`` naming what is there otherwise."""
    path = Path(path)
    kind = file_kind(path)
    if kind is None:
        raise FileNotFoundError(f"{path} does not exist")
    if kind != "a directory":
        raise ValueError(
            f"{path} is {kind}, where quant_retriever expects a {what} (it never follows links in its directories)."
        )
    return path


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new directory ``<parent>/<prefix><time><random>``, with the usual mode (the umask
    decides; ``tempfile.mkdtemp``'s private mode would lock other users out of a saved copy
    renamed into place). Names sort by creation time."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{time.time_ns():020d}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path, DIR_MODE)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent}")


def check_new_directory(
    path: Path, hint: str, leftovers=lambda entry: False, ignore: tuple[str, ...] = (".lock", ".readers")
) -> list[Path]:
    """The one "new or empty directory" check: ``path`` must not exist, or be a directory
    (not a link) holding nothing but ``ignore`` (lock files) and entries for which
    ``leftovers(entry)`` is true; returns those leftovers. Anything else raises
    ``ValueError`` ending with ``hint``."""
    path = Path(path)
    kind = file_kind(path)
    if kind is None:
        return []
    if kind != "a directory":
        raise ValueError(f"path {path} must be a new or empty directory; it is {kind}.")
    found = [p for p in path.iterdir() if p.name not in ignore]
    if not all(leftovers(p) for p in found):
        raise ValueError(f"path {path} must be a new or empty directory; {hint}.")
    return found


def prepare_new_directory(path: Path, what: str, reopen_hint: str, leftovers=lambda entry: False) -> DirectoryLock:
    """Lock ``path`` to create a new persistent ``what`` in it, and return the lock.

    ``path`` must not exist, be empty, or hold only what an interrupted creation leaves
    (``.lock`` and entries for which ``leftovers(path)`` is true; removed here, under the lock:
    files, and directories the check vouched for). A replacement that a crash interrupted is
    recovered first, so an existing ``what`` is never taken for a new directory. Anything else
    raises ``ValueError`` pointing to ``reopen_hint``, before anything is written.
    """
    path = recover_replacement(Path(path))
    hint = f"to reopen a {what}, use {reopen_hint}"
    check_new_directory(path, hint, leftovers)
    path.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(path)
    try:
        for p in check_new_directory(path, hint, leftovers):  # again, locked
            shutil.rmtree(p) if file_kind(p) == "a directory" else p.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def _save_prefix(target: Path) -> str:
    return f".{target.name}.qr-save-"


def _remove_stale_saves(target: Path) -> None:
    """Remove the temporaries of saves to ``target`` that were interrupted (a kill, a power
    cut): hidden siblings of ours whose writer's lock is free, i.e. nobody is writing them."""
    for tmp in target.parent.glob(_save_prefix(target) + "*"):
        if file_kind(tmp) == "a directory" and (tmp / ".lock").exists() and lock_is_free(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_directory(path, fill: Callable[[Path], None]) -> None:
    """Create the directory ``path`` (new or empty) with ``fill(tmp_dir)``: written into a
    locked temporary sibling and renamed into place, so a failure leaves nothing behind, and
    the temporaries of interrupted earlier saves to ``path`` are removed first."""
    target = Path(path)
    check_new_directory(target, "save into a new one", ignore=())
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_saves(target)
    tmp = make_temp_dir(target.parent, _save_prefix(target))
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


def _check_not_open_here(target: Path, source: object, what: str) -> None:
    holder = open_in_process(target)
    if holder is None:
        return
    if holder is source:
        raise ValueError(
            f"{target} is this {what}'s own directory: a persistent {what} is always saved there, so there is "
            "nothing to replace; to make a copy, save to another path."
        )
    raise ValueError(
        f"{target} is open for writing in this process (a {type(holder).__name__}); close it first, then replace it."
    )


def replace_directory(target: Path, save, is_ours, what: str, source: object = None) -> None:
    """``save(path)`` (which writes a new directory) to ``target``, atomically replacing what
    is there: a copy is written to a hidden temporary sibling and swapped in with one rename
    exchange (two renames where there is none, see :func:`recover_replacement`), so a crash at
    any moment leaves the old or the new copy at ``target``, never a mix; temporaries an
    interrupted call left behind are removed. ``target`` must be missing, empty, or pass
    ``is_ours`` (a ``what``) and not be open for writing (here: ``ValueError`` saying so, or
    that it is ``source``'s own directory; in another process: ``RuntimeError``)."""
    target = recover_replacement(target)
    _check_not_open_here(target, source, what)
    if not target.exists() or (file_kind(target) == "a directory" and not any(target.iterdir())):
        save(target)
        return
    if file_kind(target) != "a directory" or not is_ours(target):
        raise ValueError(f"{target} exists and is not a {what}; refusing to replace it.")
    lock = DirectoryLock(target)  # raises while the copy there is open for writing
    try:
        for leftover in _replacement_temporaries(target):
            shutil.rmtree(leftover)
        new = make_temp_dir(target.parent, f".{target.name}.qr-new-")
        try:
            save(new)
            _swap(new, target)  # the commit point; ``new`` now holds the old copy
        finally:
            shutil.rmtree(new, ignore_errors=True)
    finally:
        lock.release()


def _replacement_temporaries(target: Path) -> list[Path]:
    """Hidden siblings :func:`replace_directory` writes (and ``save``'s own temporaries inside
    them): ``.<name>.qr-new-*``, ``.<name>.qr-old-*``, ``..<name>.qr-*``, oldest first."""
    prefixes = (f".{target.name}.qr-", f"..{target.name}.qr-")
    if file_kind(target.parent) != "a directory":
        return []
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes) and file_kind(p) == "a directory")


def replacement_of(target: Path) -> Path | None:
    """Where the copy at ``target`` is while a replacement on a filesystem without rename
    exchange is interrupted between its two renames (``target`` missing, the old copy aside
    as ``.<name>.qr-old-*``); ``None`` when there is nothing to recover, or when the
    replacement is still under way (its lock is held)."""
    target = Path(target)
    if os.path.lexists(target):
        return None
    old = [p for p in _replacement_temporaries(target) if p.name.startswith(f".{target.name}.qr-old-")]
    if not old or not lock_is_free(old[-1]):
        return None
    return old[-1]


def recover_replacement(target: str | os.PathLike, writable: bool = True) -> Path:
    """The directory to open for ``target``: ``target`` itself, after renaming back the copy
    an interrupted replacement left aside (see :func:`replacement_of`); a read-only opener
    (``writable=False``) renames nothing and gets the aside copy's path instead."""
    target = Path(target)
    aside = replacement_of(target)
    if aside is None:
        return target
    if not writable:
        return aside
    os.rename(aside, target)
    fsync_dir(target.parent)
    return target


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
    rename exchange where there is one; elsewhere two renames, with the old copy aside as
    ``.<name>.qr-old-*`` in between (:func:`recover_replacement` renames it back)."""
    if not _rename_exchange(new, target):
        aside = make_temp_dir(target.parent, f".{target.name}.qr-old-")
        os.rename(target, aside)  # replaces the empty ``aside``
        os.rename(new, target)
        os.rename(aside, new)
    fsync_dir(target.parent)
