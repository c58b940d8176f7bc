"""The rescore copy: every vector again, in a finer format (INT8 or FP16 rows of
:mod:`quant_retriever.codecs`), in one append-only file read through a memory map.

The file holds ``count`` rows of ``codec.row_bytes`` bytes and nothing else; the owner (the
index manifest) records ``count`` and the CRC-32 of those bytes, so bytes past them (a torn
append) are ignored, and cut by the next :meth:`RescoreFile.append`. ``gather(rows)`` reads
only the requested rows.

The file is opened once, without following links, and the descriptor is kept: a search maps
that descriptor, so a file replaced or deleted behind the index's back is detected (the
inode under the path changed) instead of silently recreated, and a file truncated by another
process raises ``ValueError`` instead of faulting on the mapping.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import numpy as np
import torch

from quant_retriever.codecs import Codec
from quant_retriever.files import checksum, file_checksum, open_file, write_all

__all__ = ["RescoreFile"]


class RescoreFile:
    """Rows of ``codec`` in the file ``path`` (created empty when ``create``), ``count`` committed.
    ``durable``: fsync every append (a persistent index); off for an in-memory index's copy.
    ``crc``: the CRC-32 of the committed rows as the owner recorded it (``None``: not recorded);
    a file whose rows disagree raises ``ValueError`` (see :meth:`checksum`)."""

    def __init__(
        self,
        path: str | os.PathLike,
        codec: Codec,
        count: int = 0,
        *,
        create: bool = False,
        durable: bool = True,
        read_only: bool = False,
        crc: int | None = None,
    ):
        self.path = Path(path)
        self.codec = codec
        self.count = count
        self.durable = durable
        flags = os.O_RDONLY if read_only else os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        try:
            self._fd = open_file(self.path, flags)
        except FileNotFoundError:
            raise ValueError(f"{self.path}: missing; expected {self.nbytes} bytes ({count} rows).") from None
        self._ino = os.fstat(self._fd).st_ino
        self._map: tuple[int, np.ndarray, int] | None = None  # (rows mapped, [rows, row_bytes] uint8 view, address)
        self._map_lock = threading.Lock()
        size = os.fstat(self._fd).st_size
        if size < self.nbytes:
            os.close(self._fd)
            raise ValueError(
                f"{self.path}: expected at least {self.nbytes} bytes for {count} rows of {codec.row_bytes}; "
                f"found {size}."
            )
        try:
            #: CRC-32 of the committed rows (carried forward by appends)
            self.crc = 0 if create else file_checksum(self._fd, self.nbytes)
        except BaseException:
            os.close(self._fd)
            raise
        if crc is not None and crc != self.crc:
            os.close(self._fd)
            raise ValueError(
                f"{self.path}: its first {count} rows do not match the checksum the manifest recorded; the file "
                "was damaged, or comes from another index or generation."
            )

    @property
    def nbytes(self) -> int:
        """Bytes of committed rows."""
        return self.count * self.codec.row_bytes

    def check(self) -> None:
        """``ValueError`` if the file under ``path`` is no longer the one this object writes."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise ValueError(f"{self.path} was deleted while the index was open.") from None
        if st.st_ino != self._ino:
            raise ValueError(f"{self.path} was replaced while the index was open.")

    def append(self, x: torch.Tensor) -> int:
        """Encode float vectors ``[n, dim]`` and append them after the committed rows (fsynced).
        Returns the CRC-32 of the committed rows and these. ``count`` is not advanced: the
        owner calls :meth:`commit` once everything is written."""
        self.check()
        rows = self.codec.encode(x.detach().float().cpu()).numpy()
        os.ftruncate(self._fd, self.nbytes)
        write_all(self._fd, rows.tobytes(), self.nbytes)
        if self.durable:
            os.fsync(self._fd)
        return checksum(rows, self.crc)

    def commit(self, count: int, crc: int) -> None:
        self.count, self.crc = count, crc

    def checksum(self) -> int:
        """The CRC-32 of the committed rows as they are in the file now (reads them all)."""
        return file_checksum(self._fd, self.nbytes)

    def bad_rows(self, count: int | None = None) -> np.ndarray:
        """Row numbers (of the first ``count`` committed rows) holding non-finite numbers, which
        no encoder writes: a damaged file (see :meth:`Codec.bad_rows`)."""
        view, _ = self._mapped(count)
        count = self.count if count is None else count
        step = 65536
        found = [
            start + self.codec.bad_rows(torch.from_numpy(view[start : min(start + step, count)].copy()))
            for start in range(0, count, step)
        ]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _mapped(self, count: int | None) -> tuple[np.ndarray, int]:
        """``(rows [>= count, row_bytes] uint8, their address)``: the map of at least the first
        ``count`` committed rows (default all); ``ValueError`` if the file was truncated."""
        count = self.count if count is None else count
        size = os.fstat(self._fd).st_size
        if size < count * self.codec.row_bytes:
            raise ValueError(f"{self.path} was truncated by someone else: {size} bytes for {count} rows.")
        with self._map_lock:
            if self._map is None or self._map[0] < count:
                # map everything committed now; a later, longer snapshot remaps
                n = max(count, self.count)
                if n == 0:
                    return np.zeros((0, self.codec.row_bytes), dtype=np.uint8), 0
                mm = mmap.mmap(self._fd, n * self.codec.row_bytes, prot=mmap.PROT_READ)
                view = np.frombuffer(mm, dtype=np.uint8).reshape(n, self.codec.row_bytes)
                self._map = (n, view, view.ctypes.data)
            return self._map[1], self._map[2]

    def gather(self, rows: np.ndarray, count: int | None = None) -> torch.Tensor:
        """The given rows ``[len(rows), row_bytes]`` uint8 (a copy), of the first ``count``
        committed rows (default: all)."""
        return torch.from_numpy(self._mapped(count)[0][np.asarray(rows, dtype=np.int64)])

    def top(self, q: torch.Tensor, qnorm: float, rows: torch.Tensor, k: int, count: int | None = None):
        """One unit query ``q [1, dim]`` (CPU) against the given rows (int64), read in place:
        the best ``k`` as ``(scores [k] float32, times qnorm; positions [k] in rows)``, best
        first; ``None`` without a native kernel for this format."""
        view, address = self._mapped(count)  # the map stays alive while `view` does
        return self.codec.top_in_place(q, qnorm, (address, self.count if count is None else count), rows, k)

    def copy_rows(self, path: str | os.PathLike, rows: np.ndarray) -> int:
        """Write the given rows, in order, to a new file ``path`` (fsynced); returns their CRC-32."""
        fd = open_file(Path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        crc = 0
        try:
            offset = 0
            for start in range(0, len(rows), 65536):
                chunk = self.gather(rows[start : start + 65536]).numpy().tobytes()
                write_all(fd, chunk, offset)
                offset, crc = offset + len(chunk), checksum(chunk, crc)
            os.fsync(fd)
        finally:
            os.close(fd)
        return crc

    def close(self) -> None:
        with self._map_lock:
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
