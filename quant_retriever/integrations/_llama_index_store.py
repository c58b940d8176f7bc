"""LlamaIndex vector store over :class:`~quant_retriever.store.QuantizedStore`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from typing_extensions import override

from quant_retriever.filters import And, Cond, Filter, Not, Or, check_depth
from quant_retriever.store import DEFAULT_TOKENIZER, QuantizedStore, Record, check_rescore_multiplier

__all__ = ["QuantizedVectorStore"]

_OPS = {
    "==": "eq",
    "!=": "ne",
    "<": "lt",
    "<=": "lte",
    ">": "gt",
    ">=": "gte",
    "in": "in",
    "nin": "nin",
    "any": "any",
    "all": "all",
    "contains": "contains",
    "text_match": "substring",
    "text_match_insensitive": "isubstring",
    "is_empty": "is_empty",
}
_PERSIST_NAME = "{namespace}__vector_store.json"  # what StorageContext.persist passes as persist_path


def filters_to_tree(filters: MetadataFilters, _depth: int = 1) -> Filter:
    """``MetadataFilters`` (nested, any ``FilterOperator`` and ``FilterCondition``) -> filter
    tree (the README's filter table). A ``MetadataFilters`` without filters places no
    restriction, whatever its condition, as in ``SimpleVectorStore``."""
    check_depth(_depth)
    items = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            items.append(filters_to_tree(f, _depth + 1))
        elif isinstance(f, MetadataFilter):
            op = f.operator.value if hasattr(f.operator, "value") else str(f.operator)
            if op not in _OPS:
                raise ValueError(f"Invalid operator: {f.operator}")
            items.append(Cond(f.key, _OPS[op], None if op == "is_empty" else f.value))
        else:
            raise TypeError(f"filters must hold MetadataFilter or MetadataFilters; got {type(f).__name__}.")
    if not items:
        return And(())
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return And(tuple(items))
    if condition == FilterCondition.OR:
        return Or(tuple(items))
    if condition == FilterCondition.NOT:  # as LlamaIndex: none of the filters match
        return Not(Or(tuple(items)))
    raise ValueError(f"Invalid filter condition: {condition}")


class QuantizedVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store on INT4/binary/INT8/FP16 codes with INT8 rescoring.

    ``dim`` is taken from the first ``add`` when not given. With a ``path``, every write is
    durable and constructing the store again with the same ``path`` (or
    :meth:`from_persist_dir`) reopens it. An in-memory store follows LlamaIndex's persistence
    idiom: ``storage_context.persist(persist_dir=d)`` writes it to ``d`` (atomically replacing
    an earlier copy) and :meth:`from_persist_dir` reopens it. Similarities are cosines in
    ``[-1, 1]`` (vectors are normalised on add), as ``SimpleVectorStore``'s. Query modes:
    ``DEFAULT``, ``MMR``, ``SPARSE``/``TEXT_SEARCH`` (BM25) and ``HYBRID`` (see :meth:`query`);
    ``keywords`` is a new store's keyword tokenizer (``None``: no keyword index). ``store=``
    wraps a store made elsewhere (a ``QuantizedStore`` or a sharded one) instead.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    codec: str = "int4"
    dim: int | None = None
    path: str | None = None
    rescore_multiplier: int = 4

    _store: QuantizedStore = PrivateAttr()

    def __init__(
        self,
        codec: str = "int4",
        dim: int | None = None,
        path: str | os.PathLike | None = None,
        rescore_multiplier: int = 4,
        *,
        rescore: bool | None = None,
        device: str | None = None,
        block_size: int = 64,
        rescore_dtype: str = "int8",
        read_only: bool = False,
        store: QuantizedStore | None = None,
        keywords: str | None = DEFAULT_TOKENIZER,
        **kwargs: Any,
    ) -> None:
        if store is not None and path is not None:
            raise ValueError("pass either store= or path=, not both (a store knows its own path).")
        path = store.path if store is not None else path
        rescore_multiplier = check_rescore_multiplier(rescore_multiplier)
        super().__init__(
            codec=codec,
            dim=dim,
            path=None if path is None else str(path),
            rescore_multiplier=rescore_multiplier,
            **kwargs,
        )
        if store is not None:
            self._store = store
        elif path is not None and QuantizedStore.exists(path):
            self._store = QuantizedStore.open(path, device=device, read_only=read_only)
            if dim is not None and self._store.dim not in (None, dim):
                raise ValueError(f"the store at {path} has dim {self._store.dim}; got dim={dim}.")
        else:
            if read_only:
                raise ValueError(f"read_only=True opens an existing store; there is none at {path}.")
            self._store = QuantizedStore(
                dim,
                codec=codec,
                path=path,
                rescore=rescore,
                device=device,
                block_size=block_size,
                rescore_dtype=rescore_dtype,
                metric="cosine",
                keywords=keywords,
            )
        self.dim = self._store.dim

    @classmethod
    def from_persist_dir(
        cls, persist_dir: str | os.PathLike, namespace: str = "default", fs: Any = None, **kwargs: Any
    ) -> QuantizedVectorStore:
        """Reopen a store: ``persist_dir`` is a store directory (a ``path=`` store), or the
        directory ``StorageContext.persist(persist_dir=...)`` wrote, whose vector store of
        ``namespace`` is in ``<namespace>__vector_store.json/``. ``kwargs`` go to the
        constructor (``device``, ``rescore_multiplier``). Local filesystems only."""
        _local_only(fs)
        directory = Path(persist_dir)
        if QuantizedStore.exists(directory):
            return cls(path=directory, **kwargs)
        persisted = directory / _PERSIST_NAME.format(namespace=namespace)
        if not QuantizedStore.exists(persisted):  # (one an interrupted persist left aside counts)
            raise ValueError(
                f"{directory} is not a quant_retriever store: no store.sqlite in it or in {persisted.name}/ "
                f"(write one with storage_context.persist(persist_dir=...) or QuantizedVectorStore(path=...))."
            )
        return cls(path=persisted, **kwargs)

    @classmethod
    @override
    def class_name(cls) -> str:
        return "QuantizedVectorStore"

    @property
    @override
    def client(self) -> QuantizedStore:
        return self._store

    def close(self) -> None:
        """Close the underlying store (releases a persistent store's directory lock)."""
        self._store.close()

    # ------------------------------------------------------------------ writes
    @override
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Add nodes with embeddings; a node id that already exists is replaced."""
        if not nodes:
            return []
        missing = [n.node_id for n in nodes if n.embedding is None]
        if missing:
            raise ValueError(f"nodes must carry embeddings; these have none: {missing[:5]}.")
        ids = self._store.upsert(
            [n.node_id for n in nodes],
            np.asarray([n.get_embedding() for n in nodes], dtype=np.float32),
            [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
            [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata) for n in nodes],
        )
        self.dim = self._store.dim
        return ids

    @override
    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id``."""
        if not isinstance(ref_doc_id, str):
            raise TypeError(f"ref_doc_id must be a str; got {type(ref_doc_id).__name__}.")
        self._store.delete_where(Cond("ref_doc_id", "eq", ref_doc_id))

    @override
    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete nodes by id and/or filter (both given: nodes matching both; neither: all)."""
        self._store.delete([r.id for r in self._records(node_ids, filters)])

    @override
    def clear(self) -> None:
        self._store.clear()

    def update_metadata(self, node_ids: Sequence[str], metadatas: Sequence[dict]) -> list[str]:
        """Replace the metadata of stored nodes (their text and embedding stay: nothing is
        embedded again); returns the node ids that existed. Filters see the change at once."""
        if isinstance(metadatas, dict) or len(metadatas) != len(node_ids):
            raise ValueError("metadatas must be a list with one dict per node id.")
        nodes = {r.id: self._to_node(r) for r in self._store.get(node_ids)}
        found = [(i, m) for i, m in zip(node_ids, metadatas) if i in nodes]
        for node_id, metadata in found:
            nodes[node_id].metadata = dict(metadata)
        stored = [node_to_metadata_dict(nodes[i], remove_text=True, flat_metadata=self.flat_metadata) for i, _ in found]
        return self._store.update_metadata([i for i, _ in found], stored)

    def count(self) -> int:
        """How many nodes the store holds."""
        return len(self._store)

    @override
    def persist(self, persist_path: str, fs: Any = None) -> None:
        """An in-memory store writes a copy to the directory ``persist_path`` (what
        ``StorageContext.persist`` passes: ``<persist_dir>/default__vector_store.json``),
        atomically replacing a copy persisted there before. A store made with ``path`` is
        already durable there, and this does nothing. Local filesystems only: another
        ``fs`` raises ``ValueError``."""
        _local_only(fs)
        if self.path is not None:
            return
        self._store.save_replacing(persist_path)

    # ------------------------------------------------------------------ reads
    def _records(self, node_ids: list[str] | None, filters: MetadataFilters | None) -> list[Record]:
        where = filters_to_tree(filters) if filters is not None else None
        if node_ids is not None:  # as SimpleVectorStore: None is no restriction, [] matches nothing
            wanted = {r.id for r in self._store.get(node_ids)}
            return [r for r in self._store.records(where) if r.id in wanted]
        return list(self._store.records(where))

    @override
    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        return [self._to_node(r) for r in self._records(node_ids, filters)]

    @staticmethod
    def _to_node(record: Record) -> BaseNode:
        return metadata_dict_to_node(record.metadata, text=record.text)

    @override
    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The best nodes of a query, in one of :data:`MODES`; ``filters``, ``doc_ids`` and
        ``node_ids`` restrict every branch before its top-k (an empty list means no restriction).

        - ``DEFAULT`` (and ``MMR``): dense, the top ``similarity_top_k`` of ``query_embedding``;
          similarities are cosines;
        - ``SPARSE`` / ``TEXT_SEARCH``: keyword (BM25), the top ``sparse_top_k`` (default
          ``similarity_top_k``) of ``query_str``; similarities are BM25 scores;
        - ``HYBRID``: both, the dense branch's top ``similarity_top_k`` and the keyword branch's
          top ``sparse_top_k`` fused, then the top ``hybrid_top_k`` (default
          ``similarity_top_k``). Without ``alpha``, reciprocal-rank fusion; with it,
          relative-score fusion, ``alpha`` weighing the dense branch (1: dense only, 0: keyword
          only). ``vector_store_kwargs`` may set ``fusion`` and ``rrf_k``.
        """
        if query.mode not in MODES:
            names = ", ".join(repr(m.value) for m in MODES)
            raise ValueError(f"QuantizedVectorStore supports query modes {names}; got {query.mode!r}.")
        parts = []
        if query.filters is not None:
            parts.append(filters_to_tree(query.filters))
        if query.doc_ids:
            parts.append(Cond("ref_doc_id", "in", list(query.doc_ids)))
        where = And(tuple(parts)) if parts else None
        ids = list(query.node_ids) if query.node_ids else None
        k = query.similarity_top_k
        if query.mode in (VectorStoreQueryMode.SPARSE, VectorStoreQueryMode.TEXT_SEARCH):
            hits = self._store.keyword_search([_query_text(query)], query.sparse_top_k or k, where, ids)[0]
            return _result([(self._to_node(r), r, s) for r, s in hits])
        if query.query_embedding is None:
            raise ValueError("query_embedding is required.")
        q = np.asarray(query.query_embedding, dtype=np.float32)
        if query.mode == VectorStoreQueryMode.HYBRID:
            fusion = kwargs.get("fusion", "rrf" if query.alpha is None else "relative")
            hits = self._store.hybrid_search(
                q,
                [_query_text(query)],
                query.hybrid_top_k or k,
                self.rescore_multiplier,
                where,
                ids,
                dense_top_k=k,
                sparse_top_k=query.sparse_top_k or k,
                fusion=fusion,
                rrf_k=kwargs.get("rrf_k", 60),
                alpha=query.alpha,
            )[0]
        elif query.mode == VectorStoreQueryMode.MMR:
            prefetch = kwargs.get("mmr_prefetch_k") or k * kwargs.get("mmr_prefetch_factor", 4)
            hits = self._store.search(q, prefetch, self.rescore_multiplier, where=where, ids=ids)[0]
            if hits:
                vectors = self._store.vectors([r for r, _ in hits])
                sims, chosen = get_top_k_mmr_embeddings(
                    q.tolist(),
                    vectors.tolist(),
                    similarity_top_k=k,
                    embedding_ids=list(range(len(hits))),
                    mmr_threshold=kwargs.get("mmr_threshold", query.mmr_threshold),
                )
                hits = [(hits[i][0], float(s)) for i, s in zip(chosen, sims)]
        else:
            hits = self._store.search(q, k, self.rescore_multiplier, where=where, ids=ids)[0]
        return _result([(self._to_node(r), r, s) for r, s in hits])


MODES = (
    VectorStoreQueryMode.DEFAULT,
    VectorStoreQueryMode.MMR,
    VectorStoreQueryMode.HYBRID,
    VectorStoreQueryMode.SPARSE,
    VectorStoreQueryMode.TEXT_SEARCH,
)


def _query_text(query: VectorStoreQuery) -> str:
    if not isinstance(query.query_str, str):
        raise ValueError(f"query mode {query.mode.value!r} needs query_str (the query's text).")
    return query.query_str


def _result(hits: list) -> VectorStoreQueryResult:
    return VectorStoreQueryResult(
        nodes=[node for node, _, _ in hits], similarities=[s for _, _, s in hits], ids=[r.id for _, r, _ in hits]
    )


def _local_only(fs: Any) -> None:
    """The store lives in local files (SQLite, memory maps): refuse any other fsspec filesystem."""
    if fs is None:
        return
    from fsspec.implementations.local import LocalFileSystem

    if type(fs) is not LocalFileSystem:
        raise ValueError(
            f"QuantizedVectorStore persists to the local filesystem only; got fs={type(fs).__name__} "
            f"(protocol {getattr(fs, 'protocol', '?')!r}). Persist locally and copy the directory."
        )
