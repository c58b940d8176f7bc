"""The index directory: the on-disk format of a persistent :class:`QuantizedIndex` and every
read and write of it (``G`` is the generation, which compaction advances):

================  ================================================================
file              content
================  ================================================================
manifest.json     format, version (2), dim, codec, codec_params, rescore,
                  row_bytes, rescore_dtype, generation, count (rows committed), n_deleted,
                  next_id, checksums (the CRC-32 of each file's committed bytes): the
                  commit point, rewritten atomically
codes.G.u8        ``count`` rows of ``row_bytes`` uint8 codes
ids.G.i64         ``count`` int64 ids, little-endian
deleted.G.i64     ``n_deleted`` int64 row numbers that were removed
rescore.G.<fmt>   the rescore copy (``int8`` or ``fp16`` rows), when rescoring
================  ================================================================

Files are append-only within a generation; bytes past what the manifest records (a torn
append) are ignored and overwritten by the next append. Opening checks every file the manifest
names (sizes, checksums, and that no stored number is NaN or infinite) before it changes
anything; only then does a writable open remove the files an interrupted compaction leaves
(generation ``G - 1`` or ``G + 1``) and manifest temporaries. A file that fails a check raises
``ValueError`` naming it, with every byte left as it was. Manifests without checksums (the first
format-2 releases) are checked for sizes and numbers only. Version 1 directories (per-dimension
INT8 calibration) are refused with a clear error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quant_retriever.codecs import CODEC_NAMES, RESCORE_DTYPES, Codec, make_codec
from quant_retriever.files import (
    Bool,
    DirectoryLock,
    Field,
    Int,
    Object,
    OneOf,
    append_raw,
    checksum,
    file_checksum,
    file_kind,
    open_file,
    read_json,
    read_raw,
    write_json_atomic,
)
from quant_retriever.index.snapshot import Snapshot
from quant_retriever.rescore import RescoreFile

__all__ = ["FORMAT", "VERSION", "MANIFEST", "MAX_DIM", "IndexFiles", "empty_index_problem", "discard_empty_index"]

FORMAT = "quant_retriever.index"
VERSION = 2
MANIFEST = "manifest.json"
MAX_DIM = 1 << 16
_MANIFEST_SCHEMA = {
    "dim": Int(1, MAX_DIM),
    "codec": OneOf(*CODEC_NAMES),
    "codec_params": Object(),
    "row_bytes": Int(1, 1 << 20),
    "rescore": Bool(),
    "rescore_dtype": OneOf(*RESCORE_DTYPES),
    "generation": Int(0, 2**53),
    "count": Int(0, 2**40),
    "n_deleted": Int(0, 2**40),
    "next_id": Int(0, 2**63),
}
_SUMMED = ("codes", "ids", "deleted", "rescore")
_OPTIONAL = {
    "checksums": Field(
        f"an object of CRC-32 values (keys among {', '.join(_SUMMED)})",
        lambda v: type(v) is dict and all(k in _SUMMED and type(c) is int and 0 <= c < 2**32 for k, c in v.items()),
    )
}
_DATA_FILE = re.compile(r"(codes|ids|deleted)\.(\d+)\.(u8|i64)|rescore\.(\d+)\.(int8|fp16)")
_MANIFEST_TEMP = re.compile(re.escape(MANIFEST) + r"\.[A-Za-z0-9_]+\.tmp")
_LOCKS = (".lock", ".readers")


def _generation_of(name: str) -> int | None:
    match = _DATA_FILE.fullmatch(name)
    return None if match is None else int(match.group(2) or match.group(4))


def is_creation_leftover(entry: Path) -> bool:
    """What an interrupted creation leaves (the manifest, its commit point, is missing): the
    empty data files of generation 0 and manifest temporaries, as regular files."""
    if file_kind(entry) != "a regular file" or os.path.lexists(entry.parent / MANIFEST):
        return False
    return _MANIFEST_TEMP.fullmatch(entry.name) is not None or (
        _generation_of(entry.name) == 0 and entry.lstat().st_size == 0
    )


def read_manifest(path: Path) -> dict:
    """The checked manifest of the index directory ``path`` (``ValueError`` naming the field)."""
    return read_json(path / MANIFEST, FORMAT, VERSION, _MANIFEST_SCHEMA, _OPTIONAL)


def codec_of(m: dict, where: Path) -> Codec:
    """The codec a manifest describes, checked against its ``codec_params`` and ``row_bytes``."""
    try:
        codec = make_codec(m["codec"], m["dim"], **m["codec_params"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: field 'codec_params' is invalid ({exc}).") from None
    if codec.params() != m["codec_params"]:
        raise ValueError(f"{where}: field 'codec_params' must be {codec.params()!r} for codec {m['codec']!r}.")
    if codec.row_bytes != m["row_bytes"]:
        raise ValueError(f"{where}: field 'row_bytes' is {m['row_bytes']} but codec {codec!r} has {codec.row_bytes}.")
    return codec


def empty_index_problem(path: Path) -> str | None:
    """Why ``path`` is not an index directory that provably holds no data (``None`` when it is
    one): only this format's files, as regular files, and a manifest, if any, committing no row."""
    if file_kind(path) != "a directory":
        return f"{path} is {file_kind(path) or 'missing'}, not an index directory"
    for entry in path.iterdir():
        known = (
            entry.name in (MANIFEST, *_LOCKS)
            or _MANIFEST_TEMP.fullmatch(entry.name) is not None
            or _generation_of(entry.name) is not None
        )
        if not known or file_kind(entry) != "a regular file":
            return f"{path} holds {entry.name!r}, which is not part of an empty index"
    if not os.path.lexists(path / MANIFEST):  # an interrupted creation: its data files are empty
        full = [e.name for e in path.iterdir() if _generation_of(e.name) is not None and e.lstat().st_size]
        return f"{path} has no manifest but data in {full[0]}" if full else None
    try:
        m = read_json(path / MANIFEST, FORMAT, VERSION, _MANIFEST_SCHEMA)
    except ValueError as exc:
        return str(exc)
    return f"{path / MANIFEST} commits {m['count']} rows" if m["count"] or m["n_deleted"] else None


def discard_empty_index(path: Path) -> None:
    """Remove the index directory ``path`` when it provably holds no data (see
    :func:`empty_index_problem`). An owner whose own commit point never referred to the index (a
    store killed before recording its dimension) calls this before creating one there.
    Anything else raises ``ValueError``, removing nothing."""
    problem = empty_index_problem(Path(path))
    if problem is not None:
        raise ValueError(f"{problem}; it was left as it is.")
    lock = DirectoryLock(path)
    try:
        for entry in Path(path).iterdir():
            entry.unlink()
        Path(path).rmdir()
    finally:
        lock.release()


@dataclass(frozen=True)
class Loaded:
    """The checked content of one generation (see :meth:`IndexFiles.load`)."""

    snapshot: Snapshot
    next_id: int


class IndexFiles:
    """The files of one index and what is committed in them: ``path`` (``None`` for an
    in-memory index, whose only file is the rescore copy in the private ``workdir``), the
    generation, how many deletions are recorded, and the CRC-32 of each file's committed bytes.
    Writes to a path are committed by the manifest; without one they only keep the counts."""

    def __init__(self, path: Path | None, workdir: Path, codec: Codec, rescore: bool, rescore_dtype: str):
        self.path, self.workdir = path, workdir
        self.codec, self.rescore, self.rescore_dtype = codec, rescore, rescore_dtype
        self.rescore_codec = make_codec(rescore_dtype, codec.dim)
        self.generation = 0
        self.n_deleted = 0
        self.sums = dict.fromkeys(("codes", "ids", "deleted"), 0)

    def name(self, kind: str, generation: int | None = None) -> str:
        g = self.generation if generation is None else generation
        return {"codes": f"codes.{g}.u8", "ids": f"ids.{g}.i64", "deleted": f"deleted.{g}.i64"}.get(
            kind, f"rescore.{g}.{self.rescore_dtype}"
        )

    # ------------------------------------------------------------------ the manifest
    def checksums(self, snap: Snapshot) -> dict:
        """The CRC-32 of every file's committed bytes, as ``snap`` has them."""
        return {**self.sums, **({"rescore": snap.rescore.crc} if snap.rescore is not None else {})}

    def manifest(self, snap: Snapshot, next_id: int, n_deleted: int, generation: int, sums: dict) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "dim": self.codec.dim,
            "codec": self.codec.name,
            "codec_params": self.codec.params(),
            "row_bytes": self.codec.row_bytes,
            "rescore": self.rescore,
            "rescore_dtype": self.rescore_dtype,
            "generation": generation,
            "count": snap.rows,
            "n_deleted": n_deleted,
            "next_id": next_id,
            "checksums": sums,
        }

    def commit(self, snap: Snapshot, next_id: int, *, n_deleted=None, generation=None, sums=None) -> None:
        """Write the manifest of ``snap`` (the commit point); nothing without a path."""
        if self.path is None:
            return
        n_deleted = self.n_deleted if n_deleted is None else n_deleted
        generation = self.generation if generation is None else generation
        sums = self.checksums(snap) if sums is None else sums
        write_json_atomic(self.path / MANIFEST, self.manifest(snap, next_id, n_deleted, generation, sums))

    # ------------------------------------------------------------------ writes
    def new_rescore(self) -> RescoreFile | None:
        if not self.rescore:
            return None
        durable = self.path is not None
        return RescoreFile(self.workdir / self.name("rescore"), self.rescore_codec, create=True, durable=durable)

    def create(self, snap: Snapshot, next_id: int) -> None:
        """The empty files of a new persistent index, then its manifest (the commit point)."""
        for kind in ("codes", "ids", "deleted"):
            append_raw(self.path / self.name(kind), 0, np.zeros(0, dtype=np.uint8))
        self.commit(snap, next_id)

    def append(self, snap: Snapshot, x: torch.Tensor, codes: torch.Tensor, ids: np.ndarray) -> dict:
        """Write new rows after ``snap``'s (the rescore copy from the float vectors ``x``), not
        yet committed; returns the checksums with them."""
        sums = self.checksums(snap)
        if snap.rescore is not None:
            sums["rescore"] = snap.rescore.append(x)
        if self.path is not None:
            host = codes.cpu().numpy()
            sums.update(codes=checksum(host, sums["codes"]), ids=checksum(ids, sums["ids"]))
            append_raw(self.path / self.name("codes"), snap.rows * self.codec.row_bytes, host)
            append_raw(self.path / self.name("ids"), snap.rows * 8, ids)
        return sums

    def record_deletions(self, snap: Snapshot, next_id: int, rows: np.ndarray) -> None:
        """Append dead row numbers to the deletions file and commit them with ``snap``."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if self.path is not None:
            crc = checksum(rows, self.sums["deleted"])
            append_raw(self.path / self.name("deleted"), self.n_deleted * 8, rows)
            n_deleted = self.n_deleted + len(rows)
            self.commit(snap, next_id, n_deleted=n_deleted, sums={**self.checksums(snap), "deleted": crc})
            self.sums["deleted"] = crc
        self.n_deleted += len(rows)

    def write_generation(
        self, directory: Path, generation: int, snap: Snapshot, live: np.ndarray, next_id: int, persistent: bool
    ) -> tuple[Snapshot, dict]:
        """The live rows of ``snap`` as generation ``generation`` in ``directory``: the rescore
        copy, and with ``persistent`` the codes, ids and deletions files, complete before the
        manifest that commits them. Compaction writes the next generation beside the current
        one (an in-memory index: its rescore copy only); a save writes generation 0 of a copy.
        Returns the new snapshot (its rescore file open) and its checksums; on failure the
        files it wrote are removed."""
        names = {kind: self.name(kind, generation) for kind in _SUMMED}
        live_t = torch.from_numpy(live).to(snap.codes.device)
        codes, ids = snap.codes[: snap.rows][live_t].contiguous(), snap.ids[live].copy()
        rescore, sums = None, {"codes": 0, "ids": 0, "deleted": 0}
        try:
            if snap.rescore is not None:
                sums["rescore"] = snap.rescore.copy_rows(directory / names["rescore"], live)
                rescore = RescoreFile(
                    directory / names["rescore"], self.rescore_codec, len(live), durable=persistent, crc=sums["rescore"]
                )
            new = Snapshot.of(codes, ids, None, rescore)
            if persistent:
                host = codes.cpu().numpy()
                sums.update(codes=checksum(host), ids=checksum(ids))
                append_raw(directory / names["codes"], 0, host)
                append_raw(directory / names["ids"], 0, ids)
                append_raw(directory / names["deleted"], 0, np.zeros(0, dtype=np.int64))
                write_json_atomic(directory / MANIFEST, self.manifest(new, next_id, 0, generation, sums))  # commit
        except BaseException:
            if rescore is not None:
                rescore.close()
            for name in names.values():
                (directory / name).unlink(missing_ok=True)
            raise
        return new, sums

    def remove_generation(self, generation: int) -> None:
        for kind in _SUMMED:  # readers of an older snapshot keep their descriptor
            (self.workdir / self.name(kind, generation)).unlink(missing_ok=True)

    def remove_garbage(self) -> None:
        """Remove what the write protocol provably leaves behind, once the files of the current
        generation ``G`` were checked: the other generation of an interrupted compaction
        (``G - 1``, killed after its commit; ``G + 1``, before it) and manifest temporaries, as
        regular files. Anything else is left alone."""
        for entry in self.path.iterdir():
            if file_kind(entry) != "a regular file":
                continue
            g = _generation_of(entry.name)
            if g in (self.generation - 1, self.generation + 1) or _MANIFEST_TEMP.fullmatch(entry.name):
                entry.unlink()

    # ------------------------------------------------------------------ reads
    def load(self, m: dict, device: torch.device, read_only: bool) -> Loaded:
        """Read and check every file ``m`` names; nothing changes, on disk or here, before every
        check passed (then the counts and checksums are this object's)."""
        path, generation = self.path, m["generation"]
        count, n_deleted = m["count"], m["n_deleted"]
        if n_deleted > count:
            raise ValueError(f"{path / MANIFEST}: n_deleted ({n_deleted}) is larger than count ({count}).")
        names = {kind: self.name(kind, generation) for kind in _SUMMED}
        sums = m.get("checksums", {})
        codes = read_raw(path / names["codes"], np.uint8, count, self.codec.row_bytes)
        ids = read_raw(path / names["ids"], np.int64, count)
        deleted = read_raw(path / names["deleted"], np.int64, n_deleted)
        for kind, data in (("codes", codes), ("ids", ids), ("deleted", deleted)):
            if kind in sums and checksum(data) != sums[kind]:
                raise ValueError(
                    f"{path / names[kind]}: its first {data.nbytes} bytes do not match the checksum in {MANIFEST}; "
                    "the file was damaged, or comes from another index or generation."
                )
        if len(deleted) and (deleted.min() < 0 or deleted.max() >= count or len(np.unique(deleted)) != len(deleted)):
            raise ValueError(f"{path / names['deleted']}: row numbers repeat or fall outside 0..{count - 1}.")
        alive_host = None
        if n_deleted:
            alive_host = np.ones(count, dtype=bool)
            alive_host[deleted] = False
        live_ids = ids if alive_host is None else ids[alive_host]
        if len(live_ids) and (live_ids.min() < 0 or len(np.unique(live_ids)) != len(live_ids)):
            raise ValueError(f"{path / names['ids']}: ids are negative or repeated.")
        codes_t = torch.from_numpy(codes.reshape(count, self.codec.row_bytes))
        bad = self.codec.bad_rows(codes_t)
        if len(bad):
            raise ValueError(
                f"{path / names['codes']}: rows {bad[:5].tolist()} hold NaN or infinite numbers, which no encoder "
                "writes; the file is damaged."
            )
        rescore = None
        if self.rescore:
            rescore = RescoreFile(
                path / names["rescore"], self.rescore_codec, count, read_only=read_only, crc=sums.get("rescore")
            )
        try:
            snap = Snapshot.of(codes_t.to(device), ids, alive_host, rescore)
        except BaseException:
            rescore is not None and rescore.close()
            raise
        self.generation, self.n_deleted = generation, n_deleted
        self.sums = {"codes": checksum(codes), "ids": checksum(ids), "deleted": checksum(deleted)}
        return Loaded(snap, max(m["next_id"], int(ids.max()) + 1 if count else 0))

    def verify(self, snap: Snapshot, pending: list[np.ndarray], restricted: bool) -> list[str]:
        """Problems of the files against ``snap``: sizes, checksums, the manifest, deletions."""
        problems = []
        expect = {"codes": snap.rows * self.codec.row_bytes, "ids": snap.rows * 8, "deleted": self.n_deleted * 8}
        if snap.rescore is not None:
            expect["rescore"] = snap.rescore.nbytes
        sums = self.checksums(snap)
        for kind, size in expect.items():
            name = self.name(kind)
            try:
                fd = open_file(self.path / name, os.O_RDONLY)
            except (OSError, ValueError) as exc:
                problems.append(f"{name}: {exc}")
                continue
            try:
                found = os.fstat(fd).st_size
                if found < size:
                    problems.append(f"{name}: {found} bytes on disk, {size} committed")
                elif file_checksum(fd, size) != sums[kind]:
                    problems.append(f"{name}: the committed bytes on disk do not match their checksum")
            finally:
                os.close(fd)
        try:
            on_disk = read_manifest(self.path)
            if on_disk.get("checksums", sums) != sums:
                problems.append("manifest.json records other checksums than the open index's")
            if (on_disk["count"], on_disk["n_deleted"], on_disk["generation"]) != (
                snap.rows,
                self.n_deleted,
                self.generation,
            ):
                problems.append("manifest.json disagrees with the open index")
            deleted = read_raw(self.path / self.name("deleted"), np.int64, self.n_deleted)
            alive = np.ones(snap.rows, dtype=bool)
            alive[np.concatenate([deleted, *pending])] = False
            live_now = snap.alive_host[: snap.rows] if snap.alive_host is not None else alive
            if not restricted and not np.array_equal(alive, live_now):
                problems.append("deleted rows on disk disagree with the open index")
        except (ValueError, IndexError) as exc:
            problems.append(str(exc))
        return problems
