"""What both sharded classes share: the routing hash, the shard actor, fan-out with failure
handling, and the directory (manifest, opening, restarting, closing).

A persistent sharded index or store is a directory:

==============  ===============================================================
entry           content
==============  ===============================================================
manifest.json   format, version (1), kind (``index``/``store``), shards,
                routing (:data:`ROUTING`), next_id (the next automatic index id);
                written last when the directory is created: the commit point
shard-0/ ...    one ``QuantizedIndex`` or ``QuantizedStore`` directory per shard
==============  ===============================================================

An id always lives on shard :func:`shard_of` ``(id, shards)``, so the shard count is part of
the format: opening with another count is refused (resharding is a rebuild).

Failures: a call that runs on several shards waits for all of them. A shard whose actor died
marks the object broken: that call and every later one raise :class:`ShardError` until
:meth:`restart` (persistent shards reopen from their directories) or :meth:`close`; no call
ever returns results with a shard missing. An exception raised inside a shard (bad input,
a full disk) is raised again on the driver with its own type and message.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import ray
from ray.exceptions import RayActorError, RayError

from quant_retriever.checks import int_at_least
from quant_retriever.distributed.routing import ROUTING, shard_of
from quant_retriever.files import (
    DirectoryLock,
    Int,
    OneOf,
    file_kind,
    prepare_new_directory,
    read_json,
    recover_replacement,
    write_directory,
    write_json_atomic,
)
from quant_retriever.index import MANIFEST, empty_index_problem
from quant_retriever.store import empty_store_problem

__all__ = ["ShardError"]

FORMAT = "quant_retriever.sharded"
VERSION = 1
MAX_SHARDS = 4096
_SHARD_DIR = re.compile(r"shard-(0|[1-9][0-9]*)")
_MANIFEST_SCHEMA = {
    "kind": OneOf("index", "store"),
    "shards": Int(1, MAX_SHARDS),
    "routing": OneOf(ROUTING),
    "next_id": Int(0, 2**63),
}
#: A call: (positional args, keyword args) for one shard.
Call = tuple[tuple, dict]


class ShardError(RuntimeError):
    """A shard is down (its Ray actor died) or a write reached only some shards. ``shards``:
    the shard numbers concerned."""

    def __init__(self, message: str, shards: Sequence[int]):
        super().__init__(message)
        self.shards = list(shards)


# ---------------------------------------------------------------------------- the actor
def _outcome(fn: Callable[[], Any]) -> tuple:
    """``("ok", value)`` or ``("error", module, type name, message)``: an exception raised in a
    shard travels back as data, so the driver can tell it from a dead actor."""
    try:
        return "ok", fn()
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the driver
        return "error", type(exc).__module__, type(exc).__name__, str(exc)


@ray.remote
class _ShardActor:
    """One shard: a ``QuantizedIndex`` or ``QuantizedStore`` living in this actor's process."""

    def __init__(self):
        self._obj = None

    def setup(self, kind: str, how: str, args: tuple, kwargs: dict) -> tuple:
        """Create (``how="new"``) or open the shard's object; returns its description."""

        def build() -> dict:
            from quant_retriever.index import QuantizedIndex
            from quant_retriever.store import QuantizedStore

            cls = QuantizedIndex if kind == "index" else QuantizedStore
            make = cls if how == "new" else cls.open
            self._obj = make(*args, **kwargs)
            index = self._obj if kind == "index" else self._obj.index
            info = {"dim": self._obj.dim, "metric": getattr(self._obj, "metric", None)}
            if index is not None:
                info.update(
                    codec=index.codec_name,
                    rescore=index.rescore,
                    rescore_dtype=index.rescore_dtype,
                    block_size=index.block_size,
                    device=str(index.device),
                )
            return info

        return _outcome(build)

    def call(self, name: str, args: tuple, kwargs: dict) -> tuple:
        """``obj.<name>(*args, **kwargs)``; ``"index.<name>"`` calls a store's index (``None``
        while the store has none). Generators come back as lists."""

        def run():
            target, attr = self._obj, name
            if attr.startswith("index."):
                target, attr = target.index, attr.removeprefix("index.")
                if target is None:
                    return None
            # arrays from Ray's object store are read-only views: the index gets its own copy
            own = tuple(a.copy() if isinstance(a, np.ndarray) and not a.flags.writeable else a for a in args)
            out = getattr(target, attr)(*own, **kwargs)
            return list(out) if isinstance(out, Iterator) else out

        return _outcome(run)

    def pid(self) -> int:
        return os.getpid()


def _rebuild(shard: int, module: str, name: str, message: str) -> Exception:
    """An exception raised in ``shard``, raised again here: built-in types keep their type and
    message (``ValueError`` for bad input stays a ``ValueError``); others become ``RuntimeError``."""
    cls = getattr(builtins, name, None) if module == "builtins" else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except Exception:  # noqa: BLE001 - a type whose constructor wants more than a message
            pass
    return RuntimeError(f"shard {shard}: {name}: {message}")


def _death_reason(exc: RayError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "dead because" in line:
            return line
    return lines[0] if lines else type(exc).__name__


def default_actor_options(shards: int) -> dict:
    """Ray options of each shard actor: one GPU each when the cluster has a GPU per shard (a
    fraction of one when it has fewer), and together at most half the cluster's CPUs, so
    embedding and other work still find room. Shards are spread over nodes."""
    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    options: dict[str, Any] = {"num_cpus": _quantity(cpus / (2 * shards)), "scheduling_strategy": "SPREAD"}
    if gpus > 0:
        options["num_gpus"] = 1 if gpus >= shards else _quantity(gpus / shards)
    return options


def _quantity(x: float) -> float:
    """A Ray resource amount: at least, and a multiple of, 0.0001."""
    return max(int(x * 1e4), 1) / 1e4


def _is_leftover(entry: Path) -> bool:
    """What an interrupted creation leaves (its manifest, the commit point, missing): manifest
    temporaries, and shard folders that provably hold no data (empty indexes or stores). A
    shard folder with data is a sharded directory whose manifest was lost: never cleared."""
    if entry.name.startswith(MANIFEST + "."):
        return file_kind(entry) == "a regular file"
    return _SHARD_DIR.fullmatch(entry.name) is not None and (
        empty_index_problem(entry) is None or empty_store_problem(entry) is None
    )


def read_manifest(path: Path) -> dict:
    """The checked manifest of a sharded directory, after checking its shard folders."""
    m = read_json(path / MANIFEST, FORMAT, VERSION, _MANIFEST_SCHEMA)
    found = {}
    for entry in path.iterdir():
        match = _SHARD_DIR.fullmatch(entry.name)
        if match:
            found[int(match.group(1))] = entry
    if sorted(found) != list(range(m["shards"])):
        raise ValueError(
            f"{path}: the manifest records {m['shards']} shards but the directory holds shard folders "
            f"{sorted(found)}; it was changed by hand or by another program."
        )
    for entry in found.values():
        if entry.is_symlink() or not entry.is_dir():
            raise ValueError(f"{entry} is not a directory (links are never followed).")
    return m


# ---------------------------------------------------------------------------- the base class
class Sharded:
    """Actors, fan-out and lifecycle shared by :class:`ShardedIndex` and :class:`ShardedStore`."""

    _KIND: ClassVar[str]  # "index" or "store": what each shard holds
    _OPEN: ClassVar[str]  # the name of the classmethod that reopens a directory

    def _setup(self, shards, path, device, actor_options: dict | None) -> None:
        shards = int_at_least(shards, "shards")
        if shards > MAX_SHARDS:
            raise ValueError(f"shards must be at most {MAX_SHARDS}; got {shards}.")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options must be a dict of Ray actor options; got {type(actor_options).__name__}.")
        self.shards = shards
        #: The directory of a persistent object (``None`` in memory); every shard actor must see it.
        self.path = None if path is None else Path(path).absolute()
        self._device = device
        self._actor_options = dict(actor_options) if actor_options is not None else default_actor_options(shards)
        self._actors: list = []
        self._dead: dict[int, str] = {}  # shard -> why it is down
        self._closed = False
        self._lock = threading.RLock()  # writes and the lifecycle; searches take none
        self._dir_lock: DirectoryLock | None = None
        self._next_id = 0
        self._info: dict = {}
        self._read_only = False

    def _shard_path(self, i: int) -> str | None:
        return None if self.path is None else str(self.path / f"shard-{i}")

    def _spawn(self, i: int, how: str, args: tuple, kwargs: dict):
        actor = _ShardActor.options(**self._actor_options).remote()
        if i < len(self._actors):
            self._actors[i] = actor
        else:
            self._actors.append(actor)
        return actor.setup.remote(self._KIND, how, args, kwargs)

    def _create(self, shard_call: Callable[[str | None], Call]) -> None:
        """Start every shard with a new object (``shard_call(shard_path)``); with a path, the
        manifest is written last."""
        if self.path is not None:
            reopen = f"{type(self).__name__}.{self._OPEN}"
            self._dir_lock = prepare_new_directory(self.path, f"sharded {self._KIND}", reopen, _is_leftover)
        try:
            self._start("new", shard_call)
            if self.path is not None:
                write_json_atomic(self.path / MANIFEST, self._manifest())  # the commit point
        except BaseException:
            self._shutdown()
            if self.path is not None:
                for i in range(self.shards):
                    shutil.rmtree(self._shard_path(i), ignore_errors=True)
            raise

    @classmethod
    def _open(cls, path, shards: int | None, device, actor_options: dict | None, read_only: bool = False):
        path = recover_replacement(Path(path), writable=not read_only)
        m = read_manifest(path)
        if m["kind"] != cls._KIND:
            raise ValueError(f"{path} holds a sharded {m['kind']}, not a sharded {cls._KIND}.")
        if shards is not None and shards != m["shards"]:
            raise ValueError(
                f"{path} was created with {m['shards']} shards; got shards={shards}. Ids are routed by "
                "shard count, so changing it means rebuilding into a new directory."
            )
        self = cls.__new__(cls)
        self._setup(m["shards"], path, device, actor_options)
        self._next_id = m["next_id"]
        self._read_only = read_only
        self._dir_lock = DirectoryLock(self.path, shared=read_only)
        try:
            self._start("open", lambda p: ((p,), {"device": device, "read_only": read_only}))
        except BaseException:
            self._shutdown()
            raise
        return self

    def _start(self, how: str, shard_call: Callable[[str | None], Call]) -> None:
        refs = {i: self._spawn(i, how, *shard_call(self._shard_path(i))) for i in range(self.shards)}
        infos = self._raise_failures(*self._gather(refs))
        merged: dict = {}
        for key in infos[0]:
            values = {info.get(key) for info in infos.values()} - {None}
            if len(values) > 1:
                raise ValueError(
                    f"the shards disagree on {key}: {sorted(map(str, values))}; they belong to different stores."
                )
            merged[key] = values.pop() if values else None
        self._info = merged

    def _manifest(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self._KIND,
            "shards": self.shards,
            "routing": ROUTING,
            "next_id": self._next_id,
        }

    # ------------------------------------------------------------------ fan-out
    @property
    def read_only(self) -> bool:
        return self._read_only

    def _check_writable(self) -> None:
        self._check_usable()
        if self._read_only:
            raise ValueError(f"{self.path} was opened read-only; open it without read_only=True to change it.")

    def _check_usable(self) -> None:
        if self._closed:
            name = type(self).__name__
            raise ValueError(
                f"this {name} was closed; open it again with {name}.{self._OPEN}(path) if it was persistent."
            )
        if self._dead:
            raise self._dead_error()

    def _dead_error(self) -> ShardError:
        down = "; ".join(f"shard {i}: {why}" for i, why in sorted(self._dead.items()))
        if self.path is not None:
            hint = (
                f"call restart() to reopen them from {self.path}/shard-N, or close() and "
                f"{type(self).__name__}.{self._OPEN}({str(self.path)!r})"
            )
        else:
            hint = (
                "their data lived in the actors' memory and is lost: close() and rebuild "
                "(a path makes shards persistent)"
            )
        return ShardError(
            f"{len(self._dead)} of {self.shards} shards are down ({down}). No partial results are returned; {hint}.",
            sorted(self._dead),
        )

    def _every(self, *args, **kwargs) -> dict[int, Call]:
        return {i: (args, kwargs) for i in range(self.shards)}

    def _send(self, name: str, calls: dict[int, Call], *, check: bool = True) -> dict:
        if check:
            self._check_usable()
        return {i: self._actors[i].call.remote(name, args, kwargs) for i, (args, kwargs) in calls.items()}

    def _gather(self, refs: dict) -> tuple[dict[int, Any], dict[int, Exception]]:
        """Wait for every shard: (results, failures), each by shard. A dead actor marks its shard
        down; its failure is the :class:`ShardError` that names every shard down."""
        done: dict[int, Any] = {}
        failed: dict[int, Exception | None] = {}
        for i, ref in refs.items():
            try:
                out = ray.get(ref)
            except RayActorError as exc:
                self._dead[i] = _death_reason(exc)
                failed[i] = None
                continue
            except RayError as exc:
                failed[i] = RuntimeError(f"shard {i}: {_death_reason(exc)}")
                continue
            if out[0] == "ok":
                done[i] = out[1]
            else:
                failed[i] = _rebuild(i, *out[1:])
        dead = self._dead_error() if self._dead else None
        return done, {i: dead if exc is None else exc for i, exc in failed.items()}

    @staticmethod
    def _raise_failures(done: dict, failed: dict) -> dict:
        if failed:
            raise failed[min(failed)]
        return done

    def _read(self, name: str, calls: dict[int, Call] | None = None) -> dict[int, Any]:
        """Run ``name`` on the shards of ``calls`` (default: every shard, no arguments);
        results by shard, or the first failure raised."""
        return self._raise_failures(*self._gather(self._send(name, self._every() if calls is None else calls)))

    def _write(self, name: str, calls: dict[int, Call] | None = None) -> dict[int, Any]:
        """:meth:`_read` for a write: when some shards applied it and others failed, the
        :class:`ShardError` says which."""
        self._check_writable()
        done, failed = self._gather(self._send(name, self._every() if calls is None else calls))
        if failed and done:
            first = failed[min(failed)]
            raise ShardError(
                f"{name} was applied on shard(s) {sorted(done)} but failed on shard(s) {sorted(failed)}: {first} "
                "Writes by id are idempotent: repeat the call once every shard is up.",
                sorted(failed),
            ) from first
        return self._raise_failures(done, failed)

    # ------------------------------------------------------------------ lifecycle
    @property
    def actors(self) -> list:
        """The Ray actor handles, one per shard (for monitoring; calls go through this object)."""
        return list(self._actors)

    def restart(self) -> list[int]:
        """Replace the actors of dead shards with new ones that reopen the shards' directories;
        returns the shards restarted (``[]`` when none was down). Shards in memory cannot come
        back: their data died with the actor (:class:`ShardError`)."""
        with self._lock:
            if self._closed:
                self._check_usable()
            if not self._dead:
                return []
            if self.path is None:
                raise self._dead_error()
            down = sorted(self._dead)
            for i in down:
                ray.kill(self._actors[i], no_restart=True)  # in case it only looked dead
            reopen = {"device": self._device, "read_only": self._read_only}  # as the shards were opened
            refs = {i: self._spawn(i, "open", (self._shard_path(i),), reopen) for i in down}
            for i in down:
                del self._dead[i]
            _, failed = self._gather(refs)
            for i, exc in failed.items():
                self._dead.setdefault(i, f"reopening failed: {exc}")
            if failed:
                raise self._dead_error()
            return down

    def _shutdown(self) -> None:
        """Close the live shards (what they hold is already durable) and end every actor."""
        refs = [a.call.remote("close", (), {}) for i, a in enumerate(self._actors) if i not in self._dead]
        for ref in refs:
            try:
                ray.get(ref, timeout=120)
            except RayError:
                pass  # a shard that died while closing has nothing left to close
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._closed = True
        if self._dir_lock is not None:
            self._dir_lock.release()

    def close(self) -> None:
        """Close every shard and end the actors; later calls raise ``ValueError``. Also works
        on an object with dead shards. Everything written is already durable."""
        with self._lock:
            if not self._closed:
                self._shutdown()

    def save(self, path) -> None:
        """Write a compacted copy to ``path`` (a new or empty directory, reachable from every
        shard's node: the shards write their own parts), via a temporary sibling and a rename,
        so a failure leaves nothing behind."""
        target = Path(path).absolute()
        if self.path is not None and target.resolve() == self.path.resolve():
            return  # a persistent object is always saved

        def fill(tmp: Path) -> None:
            self._read("save", {i: ((str(tmp / f"shard-{i}"),), {}) for i in range(self.shards)})
            write_json_atomic(tmp / MANIFEST, self._manifest())

        with self._lock:
            self._check_usable()
            write_directory(target, fill)

    def verify(self) -> list[str]:
        """Cross-check every shard (its own ``verify``), that each id lives on the shard it
        routes to, and the manifest; returns the problems found, ``[]`` when consistent."""
        with self._lock:
            problems = [f"shard {i}: {p}" for i, found in sorted(self._read("verify").items()) for p in found]
            for i, ids in sorted(self._shard_ids().items()):
                wrong = np.flatnonzero(shard_of(ids, self.shards) != i)
                if len(wrong):
                    problems.append(
                        f"shard {i}: {len(wrong)} ids belong to other shards, e.g. {[ids[j] for j in wrong[:3]]!r}"
                    )
            if self.path is not None:
                try:
                    if read_manifest(self.path) != self._manifest():
                        problems.append(f"{self.path / MANIFEST} disagrees with the open object")
                except ValueError as exc:
                    problems.append(str(exc))
            return problems

    def _shard_ids(self) -> dict[int, Any]:
        """Every id each shard holds (for :meth:`verify`)."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
