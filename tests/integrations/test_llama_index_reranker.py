"""QuantizedRerank as ``node_postprocessors=[...]`` in LlamaIndex's own query engine and retriever
flows over the quantized LlamaIndex store, with the real all-MiniLM-L6-v2 embeddings and a
MockLLM, checked against the Reranker it wraps and against what LlamaIndex's
SentenceTransformerRerank does (top_n, node scores replaced, embed-mode content)."""

from __future__ import annotations

import copy

import pytest
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor import SentenceTransformerRerank
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from quant_retriever import _demo_corpus as corpus
from quant_retriever.llama_index import QuantizedEmbedding, QuantizedRerank, QuantizedVectorStore
from quant_retriever.models import load_reranker

QUESTION = "read rows from a CSV file"


@pytest.fixture(scope="module")
def index(minilm_path):
    Settings.llm = MockLLM(max_tokens=8)
    embed = QuantizedEmbedding(model_name=minilm_path, precision="int8", device="cpu")
    documents = [
        Document(text=d.text, id_=d.id, metadata={"module": d.id.split(".")[0]}) for d in corpus.stdlib_docstrings(150)
    ]
    store = QuantizedVectorStore(codec="int4")
    return VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )


@pytest.fixture(scope="module")
def reranker(tiny_cross_encoder):
    return load_reranker(tiny_cross_encoder, "int8", device="cpu")


def expected(reranker, hits: list[NodeWithScore], top_n: int):
    texts = [h.node.get_content(metadata_mode=MetadataMode.EMBED) for h in hits]
    result = reranker.rerank(QUESTION, texts, top_n=top_n)
    return [hits[i].node.node_id for i in result.indices], result.scores.tolist()


def test_query_engine_reranks_the_retrieved_nodes(index, reranker):
    first_stage = index.as_retriever(similarity_top_k=20).retrieve(QUESTION)
    engine = index.as_query_engine(
        similarity_top_k=20, node_postprocessors=[QuantizedRerank(top_n=5, reranker=reranker)]
    )
    response = engine.query(QUESTION)
    ids, scores = expected(reranker, first_stage, 5)
    assert [h.node.node_id for h in response.source_nodes] == ids
    assert [h.score for h in response.source_nodes] == pytest.approx(scores, abs=1e-6)
    assert str(response)  # MockLLM synthesised an answer from the kept nodes


async def test_async_query_and_retriever_flow(index, reranker):
    postprocessor = QuantizedRerank(top_n=3, reranker=reranker)
    response = await index.as_query_engine(similarity_top_k=10, node_postprocessors=[postprocessor]).aquery(QUESTION)
    hits = index.as_retriever(similarity_top_k=10).retrieve(QUESTION)
    kept = postprocessor.postprocess_nodes(hits, query_str=QUESTION)
    assert [h.node.node_id for h in response.source_nodes] == [h.node.node_id for h in kept]
    assert [h.node.node_id for h in kept] == expected(reranker, hits, 3)[0]
    again = await postprocessor.apostprocess_nodes(hits, query_bundle=QueryBundle(QUESTION))
    assert [(h.node.node_id, h.score) for h in again] == [(h.node.node_id, h.score) for h in kept]


def test_behaves_like_sentence_transformer_rerank(tiny_cross_encoder, reranker):
    """Same nodes, same order and same scores as LlamaIndex's own reranker on the same model
    at fp32, and the same reading of node content (embed-visible metadata included). Texts
    stay under 128 tokens: SentenceTransformerRerank asks for 512, ours reads the model's limit."""
    fp32 = load_reranker(tiny_cross_encoder, "fp32", device="cpu")
    theirs = SentenceTransformerRerank(top_n=4, model=tiny_cross_encoder, device="cpu")
    docs = corpus.stdlib_docstrings(12)
    hits = [
        NodeWithScore(node=TextNode(text=d.text[:200], id_=d.id, metadata={"module": d.id.split(".")[0]}), score=0.5)
        for d in docs
    ]
    hits[3].node.excluded_embed_metadata_keys = ["module"]
    ours = QuantizedRerank(top_n=4, reranker=fp32).postprocess_nodes(copy.deepcopy(hits), query_str=QUESTION)
    reference = theirs.postprocess_nodes(copy.deepcopy(hits), query_str=QUESTION)
    assert [h.node.node_id for h in ours] == [h.node.node_id for h in reference]
    assert [h.score for h in ours] == pytest.approx([float(h.score) for h in reference], abs=1e-6)


def test_inputs_are_not_changed_and_retrieval_scores_can_be_kept(reranker):
    docs = corpus.stdlib_docstrings(8)
    hits = [
        NodeWithScore(node=TextNode(text=d.text, id_=d.id, metadata={"n": i}), score=i / 10) for i, d in enumerate(docs)
    ]
    before = copy.deepcopy(hits)
    kept = QuantizedRerank(top_n=None, reranker=reranker, keep_retrieval_score=True).postprocess_nodes(
        hits, query_str=QUESTION
    )
    assert [(h.node.node_id, h.score, h.node.metadata) for h in hits] == [
        (h.node.node_id, h.score, h.node.metadata) for h in before
    ]
    by_id = {h.node.node_id: h.score for h in hits}
    assert len(kept) == len(hits)
    assert all(h.node.metadata["retrieval_score"] == by_id[h.node.node_id] for h in kept)
    plain = QuantizedRerank(top_n=2, reranker=reranker).postprocess_nodes(hits, query_str=QUESTION)
    assert all("retrieval_score" not in h.node.metadata for h in plain)
    assert plain[0].node is next(h.node for h in hits if h.node.node_id == plain[0].node.node_id)


def test_edges_and_bad_input(reranker):
    rerank = QuantizedRerank(reranker=reranker)
    assert rerank.top_n == 2  # SentenceTransformerRerank's default
    assert rerank.postprocess_nodes([], query_str=QUESTION) == []
    hits = [NodeWithScore(node=TextNode(text=d.text), score=0.1) for d in corpus.stdlib_docstrings(3)]
    assert len(QuantizedRerank(top_n=10, reranker=reranker).postprocess_nodes(hits, query_str=QUESTION)) == 3
    with pytest.raises(ValueError, match="needs the query"):
        rerank.postprocess_nodes(hits)
    with pytest.raises(TypeError, match=r"nodes\[0\] must be a NodeWithScore, got TextNode"):
        rerank.postprocess_nodes([hits[0].node], query_str=QUESTION)
    with pytest.raises(ValueError, match="top_n must be >= 0"):
        QuantizedRerank(top_n=-1, reranker=reranker)
    with pytest.raises(TypeError, match="top_n must be an int or None, got float"):
        QuantizedRerank(top_n=2.5, reranker=reranker)
    with pytest.raises(ValueError, match=r"Pass either reranker= or the settings .* \['device'\]"):
        QuantizedRerank(reranker=reranker, device="cpu")


def test_loads_from_settings_and_reports_the_reranking_event(tiny_cross_encoder, monkeypatch):
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_MODEL", tiny_cross_encoder)
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_PRECISION", "bnb-nf4")
    monkeypatch.setenv("QUANT_RETRIEVER_RERANK_DEVICE", "cpu")
    debug = LlamaDebugHandler()
    rerank = QuantizedRerank(top_n=1, callback_manager=CallbackManager([debug]))
    assert (rerank.model_name, rerank.precision, rerank.device) == (tiny_cross_encoder, "bnb-nf4", "cpu")
    assert rerank.class_name() == "QuantizedRerank" and rerank.to_dict()["top_n"] == 1
    hits = [NodeWithScore(node=TextNode(text=d.text), score=0.1) for d in corpus.stdlib_docstrings(3)]
    kept = rerank.postprocess_nodes(hits, query_str=QUESTION)
    events = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(events) == 1 and len(kept) == 1
