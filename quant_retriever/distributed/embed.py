"""Embedding a corpus on Ray Data: a pool of actors, each holding one quantized encoder, and
the vectors written into a store as they arrive."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ray
from ray.exceptions import RayError
from tqdm import tqdm

from quant_retriever.checks import int_at_least
from quant_retriever.distributed.store import ShardedStore
from quant_retriever.store import QuantizedStore, check_documents

__all__ = ["EmbedReport", "embed_corpus"]

#: Documents per store write (the driver re-batches the pool's output to this size).
WRITE_BATCH = 1024


@dataclass(frozen=True)
class EmbedReport:
    """``texts`` embedded and written, the store's ``dim``, the ``actors`` in the pool, and
    wall-clock ``seconds`` (model loading included)."""

    texts: int
    dim: int | None
    actors: int
    seconds: float

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    def __repr__(self) -> str:
        return (
            f"EmbedReport(texts={self.texts}, dim={self.dim}, actors={self.actors}, "
            f"seconds={self.seconds:.1f}, texts_per_second={self.texts_per_second:.1f})"
        )


class _Embedder:
    """One Ray Data actor: loads the encoder once, then embeds ``{"row", "text"}`` batches
    into ``{"row", "vector" [n, dim]}``."""

    def __init__(
        self,
        model: str,
        precision: str | None,
        device: str | None,
        document_prompt: str | None,
        batch_size: int,
        threads: int,
    ):
        import torch

        from quant_retriever.models import load_encoder

        torch.set_num_threads(threads)
        self._encoder = load_encoder(model, precision=precision, device=device, document_prompt=document_prompt)
        self._batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self._encoder.encode_documents([str(t) for t in batch["text"]], batch_size=self._batch_size)
        return {"row": batch["row"], "vector": vectors}


def _cause(exc: Exception) -> str:
    """The last ``SomeError: message`` line of a Ray error's text (the original exception)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    found = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    return found[-1] if found else next((line for line in lines if line), type(exc).__name__)


def _pool(actors: int | None, actor_cpus: float | None, actor_gpus: float | None) -> tuple[int, dict]:
    """Pool size and per-actor resources: one actor per free GPU when the cluster has one,
    else one per free CPU (what the shard actors have not reserved)."""
    free = ray.available_resources()
    gpus = (1.0 if free.get("GPU", 0.0) >= 1 else 0.0) if actor_gpus is None else float(actor_gpus)
    cpus = min(1.0, free.get("CPU", 0.0)) if actor_cpus is None else float(actor_cpus)
    if cpus <= 0 and gpus <= 0:
        raise ValueError(
            "the Ray cluster has no free CPU or GPU for embedding actors; pass actor_cpus= (e.g. 0.5) or add nodes."
        )
    if actors is None:
        actors = max(1, int(free.get("GPU", 0.0) // gpus) if gpus else int(free.get("CPU", 0.0) // cpus))
    return int_at_least(actors, "actors"), {"num_cpus": cpus, "num_gpus": gpus}


def embed_corpus(
    store: ShardedStore | QuantizedStore,
    ids: Sequence[str],
    texts: Sequence[str],
    metadatas: Sequence[dict | None] | None = None,
    *,
    model: str | os.PathLike,
    precision: str | None = None,
    device: str | None = None,
    document_prompt: str | None = None,
    batch_size: int = 64,
    actors: int | None = None,
    actor_cpus: float | None = None,
    actor_gpus: float | None = None,
    show_progress: bool = True,
) -> EmbedReport:
    """Embed ``texts`` on a Ray Data actor pool and upsert them into ``store`` with their
    ``ids`` and ``metadatas`` (one per text).

    Each of the ``actors`` loads :func:`quant_retriever.load_encoder` ``(model, precision,
    device, document_prompt=...)`` once and embeds ``batch_size`` texts at a time
    (``encode_documents``); the driver writes the vectors into ``store`` (a
    :class:`ShardedStore`, whose shards each take their documents, or a ``QuantizedStore``)
    :data:`WRITE_BATCH` at a time, with a tqdm bar. Defaults: one actor per free GPU, else
    per free CPU; ``actor_cpus``/``actor_gpus`` set each actor's share. ``model`` must be a
    name or a path every node can load.

    Texts are embedded, and written, in order of length (as one process's ``encode`` batches
    them), so a batch pads to a length close to its own texts'. Ids that exist are replaced, so
    an interrupted run can simply be repeated. Starts a local Ray instance when none is running.
    """
    check_documents(ids, texts, metadatas)  # refused whole, before any work
    ids, texts = list(ids), list(texts)
    metadatas = [None] * len(ids) if metadatas is None else list(metadatas)
    if not isinstance(store, (ShardedStore, QuantizedStore)):
        raise TypeError(f"store must be a ShardedStore or QuantizedStore; got {type(store).__name__}.")
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path; got {type(model).__name__}.")
    batch_size = int_at_least(batch_size, "batch_size")
    if not texts:
        return EmbedReport(0, store.dim, 0, 0.0)
    started = time.perf_counter()
    if not ray.is_initialized():
        ray.init()
    n_actors, resources = _pool(actors, actor_cpus, actor_gpus)
    encoder = dict(model=str(model), precision=precision, device=device, document_prompt=document_prompt)
    _embed(store, ids, texts, metadatas, encoder, batch_size, n_actors, resources, show_progress)
    return EmbedReport(len(texts), store.dim, n_actors, time.perf_counter() - started)


def _embed(
    store,
    ids: list[str],
    texts: list[str],
    metadatas: list,
    encoder: dict,
    batch_size: int,
    n_actors: int,
    resources: dict,
    show_progress: bool,
) -> None:
    import pyarrow as pa

    # texts in order of length, so that a batch pads to a length close to its texts' own (one
    # process's encode sorts the same way); blocks of whole batches, at least two per actor and
    # at most 4 batches each: the pool stays busy and the bar moves
    order = np.argsort(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), kind="stable")
    n_batches = -(-len(texts) // batch_size)
    block = batch_size * min(4, max(1, -(-n_batches // (2 * n_actors))))
    tables = [
        pa.table({"row": order[a : a + block], "text": [texts[r] for r in order[a : a + block]]})
        for a in range(0, len(texts), block)
    ]
    embedder = dict(encoder, batch_size=batch_size, threads=max(1, int(resources["num_cpus"])))
    vectors = ray.data.from_arrow(tables).map_batches(
        _Embedder,
        fn_constructor_kwargs=embedder,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        **resources,
    )
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars = context.print_on_execution_start = False  # one bar: ours
    written = 0
    try:
        with tqdm(total=len(texts), desc="embedding (ray)", unit="text", disable=not show_progress) as bar:
            for batch in vectors.iter_batches(batch_size=WRITE_BATCH, batch_format="numpy"):
                rows = batch["row"].tolist()
                store.upsert(
                    [ids[r] for r in rows], batch["vector"], [texts[r] for r in rows], [metadatas[r] for r in rows]
                )
                written += len(rows)
                bar.update(len(rows))
    except RayError as exc:  # an embedding actor failed (a model that does not load, out of memory)
        raise RuntimeError(
            f"embedding on Ray Data failed after {written} of {len(texts)} texts were written ({_cause(exc)}); "
            "what was written stays, and running the call again replaces it."
        ) from exc
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
