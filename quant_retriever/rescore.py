"""The INT8 rescore copy: an append-only memory-mapped file of INT8 rows plus a JSON header.

Directory layout (``<dir>`` is the index directory, or a temporary one):

=================  =====================================================================
file               content
=================  =====================================================================
``rescore.int8``    ``count`` rows of ``dim`` int8 codes, row-major, nothing else
``rescore.json``    ``{"format", "version", "dim", "count", "lo": [dim], "scale": [dim]}``
=================  =====================================================================

Rows are only ever appended. ``count`` in the header is the commit point: bytes past
``count * dim`` (a torn append) are cut off when the file is opened. ``gather(rows)`` reads
just the requested rows through the memory map and dequantizes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from quant_retriever.codecs import int8
from quant_retriever.files import append_raw, read_json, write_json_atomic

__all__ = ["RescoreStore"]

FORMAT = "quant_retriever.int8_rescore"
VERSION = 1
DATA_FILE = "rescore.int8"
HEADER_FILE = "rescore.json"


class RescoreStore:
    """INT8 copy of every vector, on disk. Calibrated (per-dimension ranges) at creation."""

    DATA_FILE = DATA_FILE

    def __init__(self, directory: str | os.PathLike, dim: int, lo: torch.Tensor, scale: torch.Tensor):
        """Create an empty store in ``directory`` with the given calibration ``lo``/``scale`` ``[dim]``."""
        self.directory = Path(directory)
        self.dim = dim
        self.lo = lo.detach().float().cpu()
        self.scale = scale.detach().float().cpu()
        self.count = 0
        self._map: np.memmap | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / DATA_FILE).write_bytes(b"")
        self._write_header()

    @classmethod
    def open(cls, directory: str | os.PathLike, count: int | None = None) -> "RescoreStore":
        """Open an existing store. ``count`` (the owner's committed row count) wins over the
        header's when given; a data file shorter than that raises ``ValueError``."""
        directory = Path(directory)
        header = read_json(directory / HEADER_FILE, FORMAT, VERSION)
        try:
            dim = int(header["dim"])
            lo = torch.tensor(header["lo"], dtype=torch.float32)
            scale = torch.tensor(header["scale"], dtype=torch.float32)
            stored = int(header["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{directory / HEADER_FILE}: malformed header ({exc}).") from None
        if dim <= 0 or lo.shape != (dim,) or scale.shape != (dim,) or not bool((scale > 0).all()):
            raise ValueError(f"{directory / HEADER_FILE}: dim/lo/scale are inconsistent.")
        count = stored if count is None else count
        data = directory / DATA_FILE
        size = data.stat().st_size if data.exists() else -1
        if size < count * dim:
            raise ValueError(
                f"{data}: expected at least {count * dim} bytes for {count} rows of {dim}; found {max(size, 0)}."
            )
        if size > count * dim:  # a torn or uncommitted append: drop it
            os.truncate(data, count * dim)
        store = cls.__new__(cls)
        store.directory, store.dim, store.lo, store.scale = directory, dim, lo, scale
        store.count, store._map = count, None
        if stored != count:
            store._write_header()
        return store

    @property
    def nbytes(self) -> int:
        """Bytes of INT8 rows on disk."""
        return self.count * self.dim

    def append(self, x: torch.Tensor) -> None:
        """Quantize ``x: [n, dim]`` with the stored calibration and append it (fsynced)."""
        codes = int8.encode(x.detach().float().cpu(), self.lo, self.scale).numpy()
        append_raw(self.directory / DATA_FILE, self.nbytes, codes)
        self.count += len(codes)
        self._map = None
        self._write_header()

    def truncate(self, count: int) -> None:
        """Forget rows past ``count`` (used to roll back a failed add)."""
        os.truncate(self.directory / DATA_FILE, count * self.dim)
        self.count = count
        self._map = None
        self._write_header()

    def gather(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dequantized rows ``[len(rows), dim]`` float32 on ``device``; reads only those rows."""
        if self._map is None:
            self._map = np.memmap(self.directory / DATA_FILE, dtype=np.int8, mode="r", shape=(self.count, self.dim))
        codes = torch.from_numpy(np.ascontiguousarray(self._map[rows])).to(device)
        return int8.decode(codes, self.lo.to(device), self.scale.to(device))

    def copy_to(self, directory: str | os.PathLike, rows: np.ndarray | None = None) -> None:
        """Write the given rows (default: all), in order, as a new store in ``directory``."""
        directory = Path(directory)
        rows = np.arange(self.count) if rows is None else np.asarray(rows, dtype=np.int64)
        data = np.memmap(self.directory / DATA_FILE, dtype=np.int8, mode="r", shape=(self.count, self.dim)) if self.count else None
        with open(directory / DATA_FILE, "wb") as dst:
            for start in range(0, len(rows), 65536):
                dst.write(np.ascontiguousarray(data[rows[start : start + 65536]]).tobytes())
            dst.flush()
            os.fsync(dst.fileno())
        write_json_atomic(directory / HEADER_FILE, {**self._header(), "count": len(rows)})

    def _header(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.dim,
            "count": self.count,
            "lo": self.lo.tolist(),
            "scale": self.scale.tolist(),
        }

    def _write_header(self) -> None:
        write_json_atomic(self.directory / HEADER_FILE, self._header())
