"""LangChain vector store and retriever over :class:`~quant_retriever.store.QuantizedStore`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from pydantic import ConfigDict, Field
from typing_extensions import override

from quant_retriever.codecs import CodecName, RescoreDtype
from quant_retriever.filters import And, Cond, Filter, Not, Or, check_depth
from quant_retriever.store import (
    DEFAULT_TOKENIZER,
    QuantizedStore,
    Record,
    Tokenizer,
    check_rescore_multiplier,
    check_strings,
)

__all__ = ["QuantizedVectorStore", "QuantizedRetriever", "RetrievalMode"]

RetrievalMode = Literal["dense", "keyword", "hybrid"]
RETRIEVAL_MODES = ("dense", "keyword", "hybrid")

_OPS = {
    "$eq": "eq",
    "$ne": "ne",
    "$lt": "lt",
    "$lte": "lte",
    "$gt": "gt",
    "$gte": "gte",
    "$in": "in",
    "$nin": "nin",
    "$contains": "contains",
    "$any": "any",
    "$all": "all",
    "$like": "like",
    "$ilike": "ilike",
    "$substring": "substring",
    "$isubstring": "isubstring",
}
_FLAGS = {"$is_empty": "is_empty", "$exists": "exists"}  # {"$is_empty": True/False}
LangChainFilter = dict | Callable[[Document], bool]


def filter_from_dict(spec: dict, _depth: int = 1) -> Filter:
    """LangChain-style dict filter -> filter tree (the README's filter table).

    ``{"k": v}`` is equality; ``{"k": {"$gt": 1, "$lt": 5}}`` applies each operator
    (``$eq $ne $lt $lte $gt $gte $in $nin $contains $any $all $like $ilike $substring
    $isubstring``, and ``$is_empty``/``$exists`` with ``True`` or ``False``);
    ``{"$and": [...]}``, ``{"$or": [...]}``, ``{"$not": {...}}`` combine; several keys are ANDed.
    Any other key is a metadata key, even one starting with ``$`` (then only with a scalar or
    an operator dict: ``{"$x": [...]}`` reads as a misspelt logical operator and raises).
    """
    check_depth(_depth)
    if not isinstance(spec, dict):
        raise TypeError(f"filter must be a dict or a callable; got {type(spec).__name__}.")
    items = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise TypeError(f"filter keys must be strings; got {type(key).__name__} {key!r}.")
        if key in ("$and", "$or"):
            if not isinstance(value, list):
                raise TypeError(f"{key} needs a list of filters; got {type(value).__name__}.")
            parts = tuple(filter_from_dict(v, _depth + 1) for v in value)
            items.append(And(parts) if key == "$and" else Or(parts))
        elif key == "$not":
            items.append(Not(filter_from_dict(value, _depth + 1)))
        elif key.startswith("$") and isinstance(value, list):  # a key like "$x" is a metadata key, but not with a list
            raise ValueError(f"Invalid operator: {key!r} at the top level of a filter; expected $and, $or or $not.")
        elif isinstance(value, dict):
            if not value:
                raise ValueError(f"the filter on {key!r} has no operator; expected {{operator: value}}.")
            for op, operand in value.items():
                if op in _FLAGS:
                    if not isinstance(operand, bool):
                        raise TypeError(f"{op} takes True or False; got {operand!r}.")
                    cond = Cond(key, _FLAGS[op])
                    items.append(cond if operand else Not(cond))
                elif op in _OPS:
                    items.append(Cond(key, _OPS[op], operand))
                else:
                    raise ValueError(f"Invalid operator: {op!r}; expected one of {', '.join([*_OPS, *_FLAGS])}.")
        else:
            items.append(Cond(key, "eq", value))
    return items[0] if len(items) == 1 else And(tuple(items))


def _to_document(record: Record) -> Document:
    return Document(id=record.id, page_content=record.text, metadata=record.metadata)


class QuantizedVectorStore(VectorStore):
    """A LangChain ``VectorStore`` on INT4/binary/INT8/FP16 codes with INT8 rescoring, and a
    keyword (BM25) index beside them.

    ``retrieval_mode`` (as in langchain-qdrant) is what ``similarity_search`` does:
    ``"dense"`` (the default), ``"keyword"`` or ``"hybrid"`` (both, fused by reciprocal rank;
    see :meth:`hybrid_search`). Dense scores are cosine similarities in ``[-1, 1]``, as
    ``InMemoryVectorStore``'s (a new store normalises every vector on add, so embeddings need
    not be unit length), and relevance scores map them to ``[0, 1]`` as ``(1 + score) / 2``;
    keyword scores are BM25, hybrid ones the fusion's. ``keywords``: the keyword index's tokenizer
    for a new store (``None``: no keyword index, only dense retrieval). Filters: a dict in the common LangChain
    ``$``-operator style (see :func:`filter_from_dict`) or a callable on ``Document``
    (evaluated over all stored documents before top-k); every mode applies them before top-k.
    """

    def __init__(
        self,
        embedding: Embeddings,
        codec: CodecName = "int4",
        rescore_multiplier: int = 4,
        path: str | os.PathLike | None = None,
        *,
        rescore: bool | None = None,
        device: str | None = None,
        block_size: int = 64,
        rescore_dtype: RescoreDtype = "int8",
        store: QuantizedStore | None = None,
        retrieval_mode: RetrievalMode = "dense",
        keywords: Tokenizer | None = DEFAULT_TOKENIZER,
    ):
        if retrieval_mode not in RETRIEVAL_MODES:
            raise ValueError(
                f"retrieval_mode must be one of {', '.join(map(repr, RETRIEVAL_MODES))}; got {retrieval_mode!r}."
            )
        if not isinstance(embedding, Embeddings):
            raise TypeError(f"embedding must be a LangChain Embeddings; got {type(embedding).__name__}.")
        rescore_multiplier = check_rescore_multiplier(rescore_multiplier)
        if store is None and path is not None and QuantizedStore.exists(path):
            raise ValueError(
                f"{path} already holds a store; reopen it with QuantizedVectorStore.load(path, embedding)."
            )
        self.embedding = embedding
        self.rescore_multiplier = rescore_multiplier
        self.retrieval_mode = retrieval_mode
        self.store = (
            store
            if store is not None
            else QuantizedStore(
                None,
                codec=codec,
                path=path,
                rescore=rescore,
                device=device,
                block_size=block_size,
                rescore_dtype=rescore_dtype,
                metric="cosine",
                keywords=keywords,
            )
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        embedding: Embeddings,
        rescore_multiplier: int = 4,
        device: str | None = None,
        *,
        read_only: bool = False,
        retrieval_mode: RetrievalMode = "dense",
    ):
        """Reopen a persistent store written with ``path=...``; ``read_only=True`` needs no
        write permission and may sit beside a writer in another process (see
        :meth:`QuantizedStore.open`)."""
        store = QuantizedStore.open(path, device=device, read_only=read_only)
        return cls(embedding, rescore_multiplier=rescore_multiplier, store=store, retrieval_mode=retrieval_mode)

    @property
    @override
    def embeddings(self) -> Embeddings:
        return self.embedding

    def close(self) -> None:
        """Close the underlying store (releases a persistent store's directory lock)."""
        self.store.close()

    # ------------------------------------------------------------------ writes
    @override
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add texts; an id that already exists is replaced (upsert)."""
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of strings; got a single str (wrap it in a list).")
        texts = list(texts)
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"ids must be the same length as texts. Got {len(ids)} ids and {len(texts)} texts.")
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(
                f"metadatas must be the same length as texts. Got {len(metadatas)} metadatas and {len(texts)} texts."
            )
        if not texts:
            return []
        ids = [i if i is not None else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        vectors = np.asarray(self.embedding.embed_documents(texts), dtype=np.float32)
        return self.store.upsert(ids, vectors, texts, [dict(m) if m else {} for m in (metadatas or [{}] * len(texts))])

    @override
    def delete(self, ids: list[str] | None = None, filter: LangChainFilter | None = None, **kwargs: Any) -> bool:
        """Delete by a list of ids (unknown ids are ignored; a bare string is refused with
        ``TypeError``, never split into characters) and/or a ``filter`` (both: the ids that
        match it); neither deletes everything."""
        if filter is None:
            self.store.clear() if ids is None else self.store.delete(ids)
            return True
        matching = {r.id for r in self._records(filter)}
        chosen = sorted(matching) if ids is None else [i for i in check_strings(ids, "ids") if i in matching]
        self.store.delete(chosen)
        return True

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict]) -> list[str]:
        """Replace the metadata of stored documents without embedding them again (filters see
        the change at once); returns the ids that existed."""
        return self.store.update_metadata(ids, metadatas)

    def count(self, filter: LangChainFilter | None = None) -> int:
        """How many documents the store holds (matching ``filter``)."""
        return len(self.store) if filter is None else len(self._records(filter))

    def get(
        self,
        ids: Sequence[str] | None = None,
        filter: LangChainFilter | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Document]:
        """Documents by id (in the order asked), or a page of those matching ``filter``: ``limit``
        of them (``None``: all) from the ``offset``-th on, in insertion order."""
        if ids is not None:
            docs = [_to_document(r) for r in self.store.get(ids)]
            if filter is not None:
                keep = {r.id for r in self._records(filter)}
                docs = [d for d in docs if d.id in keep]
            return docs
        if callable(filter):
            docs = [d for d in (_to_document(r) for r in self.store.records()) if filter(d)]
            return docs[offset : None if limit is None else offset + limit]
        where = None if filter is None else filter_from_dict(filter)
        return [_to_document(r) for r in self.store.get(where=where, limit=limit, offset=offset)]

    def _records(self, filter: LangChainFilter) -> list[Record]:
        if callable(filter):
            return [r for r in self.store.records() if filter(_to_document(r))]
        return list(self.store.records(filter_from_dict(filter)))

    @override
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_to_document(r) for r in self.store.get(ids)]

    # ------------------------------------------------------------------ search
    def _restriction(self, filter: LangChainFilter | None) -> tuple[Filter | None, list[str] | None]:
        """A filter as the store takes it: a dict as a filter tree, a callable as allowed ids."""
        if callable(filter):
            return None, [r.id for r in self.store.records() if filter(_to_document(r))]
        return (None if filter is None else filter_from_dict(filter)), None

    def _search(self, vector: Sequence[float], k: int, filter: LangChainFilter | None) -> list[tuple[Record, float]]:
        where, allowed = self._restriction(filter)
        return self.store.search(
            np.asarray(vector, dtype=np.float32), k, self.rescore_multiplier, where=where, ids=allowed
        )[0]

    def keyword_search_with_score(
        self, query: str, k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Keyword (BM25) search: ``(document, BM25 score)``, best first; the query's words are
        matched as words, never as query syntax."""
        where, allowed = self._restriction(filter)
        return [(_to_document(r), s) for r, s in self.store.keyword_search([query], k, where, allowed)[0]]

    def keyword_search(
        self, query: str, k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.keyword_search_with_score(query, k, filter)]

    def hybrid_search_with_score(
        self, query: str, k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Hybrid search: the dense and the keyword branch (each ``4 * k`` candidates unless
        ``dense_top_k`` / ``sparse_top_k`` say otherwise) fused by reciprocal rank (``fusion``,
        ``rrf_k``, ``weights``, ``alpha``: see ``QuantizedStore.hybrid_search``); scores are the
        fusion's."""
        where, allowed = self._restriction(filter)
        vector = np.asarray(self.embedding.embed_query(query), dtype=np.float32)
        hits = self.store.hybrid_search(vector, [query], k, self.rescore_multiplier, where, allowed, **kwargs)[0]
        return [(_to_document(r), s) for r, s in hits]

    def hybrid_search(
        self, query: str, k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.hybrid_search_with_score(query, k, filter, **kwargs)]

    async def akeyword_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.keyword_search, query, k, **kwargs)

    async def ahybrid_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await run_in_executor(None, self.hybrid_search, query, k, **kwargs)

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return [(_to_document(r), s) for r, s in self._search(embedding, k, filter)]

    @override
    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    @override
    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The store's ``retrieval_mode``: dense (cosines), keyword (BM25) or hybrid (fused)."""
        if self.retrieval_mode == "keyword":
            return self.keyword_search_with_score(query, k, filter)
        if self.retrieval_mode == "hybrid":
            return self.hybrid_search_with_score(query, k, filter, **kwargs)
        return self.similarity_search_with_score_by_vector(self.embedding.embed_query(query), k, filter)

    @override
    def similarity_search(
        self, query: str, k: int = 4, filter: LangChainFilter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    @override
    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # scores are cosines in [-1, 1] (a store made with metric="ip" gives inner products:
        # meaningful here only for unit vectors, hence the clamp)
        if self.retrieval_mode != "dense":
            raise ValueError(
                "relevance scores in [0, 1] are those of dense retrieval; this store's retrieval_mode is "
                f"{self.retrieval_mode!r}: use similarity_search_with_score."
            )
        return lambda score: min(1.0, max(0.0, (1.0 + score) / 2.0))

    @override
    def as_retriever(self, **kwargs: Any) -> BaseRetriever:
        """LangChain's retriever; ``search_type="hybrid"`` or ``"keyword"`` give a
        :class:`QuantizedRetriever` of that type (``search_kwargs``: ``k``, ``filter``, and for
        hybrid the options of :meth:`hybrid_search`: ``alpha``, ``sparse_top_k``, ...)."""
        if kwargs.get("search_type") in ("hybrid", "keyword"):
            search = dict(kwargs.get("search_kwargs") or {})
            return QuantizedRetriever(
                vectorstore=self,
                search_type=kwargs["search_type"],
                k=search.pop("k", 4),
                filter=search.pop("filter", None),
                hybrid_kwargs=search,
            )
        return super().as_retriever(**kwargs)

    @override
    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: LangChainFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """MMR over the top ``fetch_k`` hits, using their INT8-copy vectors."""
        hits = self._search(embedding, max(fetch_k, k), filter)
        if not hits:
            return []
        vectors = self.store.vectors([r for r, _ in hits])
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32), vectors, lambda_mult=lambda_mult, k=k
        )
        return [_to_document(hits[i][0]) for i in chosen]

    @override
    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: LangChainFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, filter
        )

    @classmethod
    @override
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> QuantizedVectorStore:
        """Create a store (``kwargs`` go to the constructor) and add ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


class QuantizedRetriever(BaseRetriever):
    """A retriever with a top-level ``k`` (``QuantizedRetriever(vectorstore=store, k=3)``).

    ``search_type``: ``"similarity"`` (the store's retrieval mode), ``"hybrid"``,
    ``"keyword"``, ``"similarity_score_threshold"`` (needs ``score_threshold``, a relevance
    score in ``[0, 1]``) or ``"mmr"`` (``fetch_k``, ``lambda_mult``). ``invoke(query, k=...)``
    overrides ``k`` for one call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    vectorstore: QuantizedVectorStore
    k: int = 4
    search_type: Literal["similarity", "hybrid", "keyword", "similarity_score_threshold", "mmr"] = "similarity"
    score_threshold: float | None = None
    fetch_k: int = 20
    lambda_mult: float = 0.5
    filter: Any = None
    hybrid_kwargs: dict[str, Any] = Field(default_factory=dict)

    @override
    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None, **kwargs: Any
    ) -> list[Document]:
        k = self.k if k is None else k
        store = self.vectorstore
        if self.search_type == "similarity":
            return store.similarity_search(query, k=k, filter=self.filter)
        if self.search_type == "hybrid":
            return store.hybrid_search(query, k=k, filter=self.filter, **self.hybrid_kwargs)
        if self.search_type == "keyword":
            return store.keyword_search(query, k=k, filter=self.filter)
        if self.search_type == "mmr":
            return store.max_marginal_relevance_search(query, k, self.fetch_k, self.lambda_mult, filter=self.filter)
        if self.score_threshold is None:
            raise ValueError("search_type 'similarity_score_threshold' needs score_threshold.")
        hits = store.similarity_search_with_relevance_scores(query, k=k, filter=self.filter)
        return [d for d, s in hits if s >= self.score_threshold]
