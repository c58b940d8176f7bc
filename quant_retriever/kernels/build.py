"""Compiling the native C kernels, once per machine: a per-user cache of shared libraries.

Each ``.c`` file next to this module is one library (``scans.c``: the vector scans;
``linear.c``: the encoder's INT8 linear-layer passes). :class:`Library` compiles it with the
system C compiler (``$CC``, else ``cc``/``gcc``) the first time it is needed and keeps the
result in ``<cache>/kernels/``, where ``<cache>`` is ``$QUANT_RETRIEVER_CACHE_DIR``, else
``$XDG_CACHE_HOME/quant_retriever``, else ``~/.cache/quant_retriever``. A new process loads
the cached library instead of compiling again.

The cache key is a SHA-256 of the source, the compiler (resolved path, size and mtime), the
flags and the target (``-march``). A cached file is loaded only if it passes every check:

========================  =============================================================
check                     why
========================  =============================================================
not a symbolic link       never load through a link planted in the cache
regular file, ours         owned by this user, not writable by group or others
directory ours, private    same for ``<cache>/kernels`` itself
digest matches            ``<name>.so.sha256`` holds the SHA-256 of the library as
                          written; a truncated, damaged or swapped file is rebuilt
========================  =============================================================

When a check fails the library is rebuilt (into the cache when the cache directory is
trustworthy, else into a temporary directory). ``QUANT_RETRIEVER_NATIVE=0`` turns every
native kernel off; a machine without a compiler warns once and runs eager torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["Library", "cache_dir", "native_enabled"]

SOURCE_DIR = Path(__file__).resolve().parent

#: Reassociation lets the compiler vectorise the float reductions. Deliberately not
#: -ffast-math: linking a shared library with it sets flush-to-zero for the whole process.
MATH_FLAGS = ("-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-fno-math-errno")
CFLAGS = ("-O3", *MATH_FLAGS, "-fopenmp", "-shared", "-fPIC")


def native_enabled() -> bool:
    """False when ``QUANT_RETRIEVER_NATIVE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("QUANT_RETRIEVER_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def cache_dir() -> Path:
    """The per-user cache root (see the module docstring)."""
    explicit = os.environ.get("QUANT_RETRIEVER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "quant_retriever"


def _compiler() -> tuple[str, str]:
    """(compiler path, identity string for the cache key); ``RuntimeError`` if there is none."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    resolved = shutil.which(cc) if cc else None
    if not resolved:
        raise RuntimeError("no C compiler found (set $CC)")
    real = os.path.realpath(resolved)
    st = os.stat(real)
    return resolved, f"{real}:{st.st_size}:{st.st_mtime_ns}"


def _private_dir(path: Path) -> bool:
    """Whether ``path`` is a real directory owned by this user and writable by nobody else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _trusted_file(path: Path, digest_path: Path) -> bool:
    """Whether a cached library may be loaded (see the table in the module docstring)."""
    try:
        st = os.lstat(path)
        recorded = digest_path.read_text(encoding="ascii").strip() if not digest_path.is_symlink() else ""
    except (OSError, UnicodeDecodeError):
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    return len(recorded) == 64 and actual == recorded


class Library:
    """One C source file compiled to a shared library, loaded through ctypes.

    ``signatures`` maps each exported function to its ``argtypes``. :meth:`get` returns the
    loaded library (building or loading it from the cache once per process) or ``None`` when
    native kernels are off or cannot be built.
    """

    def __init__(self, source: str, signatures: dict[str, list]):
        self.source = source
        self.signatures = signatures
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._tried = False

    def get(self) -> ctypes.CDLL | None:
        """The library for this machine (``-march=native``), or ``None`` (warned once)."""
        if not native_enabled():
            return None
        if self._tried:  # set only once _lib holds the outcome: no lock on the search path
            return self._lib
        with self._lock:
            if not self._tried:
                try:
                    self._lib = self.build()
                except Exception as exc:  # no compiler, unsupported flags, ...
                    warnings.warn(
                        f"quant_retriever: native CPU kernels ({self.source}) unavailable ({exc}); using eager "
                        "torch, which is much slower.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                self._tried = True
            return self._lib

    def build(self, march: str = "native", cache: bool = True) -> ctypes.CDLL:
        """Compile (or load from the cache) for ``-march=<march>``; raises ``RuntimeError``."""
        code = (SOURCE_DIR / self.source).read_bytes()
        cc, identity = _compiler()
        flags = [*CFLAGS, f"-march={march}"]
        key = hashlib.sha256(b"\0".join([code, identity.encode(), " ".join(flags).encode(), sys.platform.encode()]))
        name = f"{Path(self.source).stem}-{march}-{key.hexdigest()[:32]}.so"
        directory = cache_dir() / "kernels"
        if cache:
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError:
                cache = False
            cache = cache and _private_dir(directory)
        if cache:
            lib_path, digest_path = directory / name, directory / (name + ".sha256")
            if _trusted_file(lib_path, digest_path):
                return self._load(lib_path)
        # built next to its cache entry (same file system, so the final rename is atomic)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=directory if cache else None) as tmp:
            out = Path(tmp) / name
            cmd = [cc, *flags, "-x", "c", "-", "-o", str(out), "-lm"]
            proc = subprocess.run(cmd, input=code, capture_output=True, timeout=300)
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace").strip()[:500]
                raise RuntimeError(f"{' '.join(cmd)} failed: {err}")
            lib = self._load(out)  # stays mapped after the file is moved or removed
            if cache:
                _install(out, directory, name)
            return lib

    def _load(self, path: Path) -> ctypes.CDLL:
        dll = ctypes.CDLL(str(path))
        for fn, argtypes in self.signatures.items():
            getattr(dll, fn).argtypes = argtypes
        return dll


def _install(built: Path, directory: Path, name: str) -> None:
    """Rename a freshly built library into the cache, then write its digest the same way: a
    pair torn by a concurrent build fails verification and is rebuilt by the next process."""
    digest = hashlib.sha256(built.read_bytes()).hexdigest()
    digest_tmp = built.with_suffix(".sha256")
    try:
        digest_tmp.write_text(digest + "\n", encoding="ascii")
        os.chmod(built, 0o755)
        os.replace(built, directory / name)
        os.replace(digest_tmp, directory / (name + ".sha256"))
    except OSError:  # a full or read-only cache only costs a compile next time
        pass


def signature(*kinds: str) -> list:
    """ctypes argtypes from short names: ``p`` pointer, ``i64``, ``i32``, ``f32``, ``f64``."""
    table: dict[str, Callable] = {
        "p": ctypes.c_void_p,
        "i64": ctypes.c_int64,
        "i32": ctypes.c_int,
        "f32": ctypes.c_float,
        "f64": ctypes.c_double,
    }
    return [table[k] for k in kinds]
