"""Two-stage retrieval with LlamaIndex, offline: ``VectorStoreIndex`` on an INT4 vector store
(INT8 MiniLM embeddings) retrieves 50 nodes and an INT8 cross-encoder keeps the best 5, as
``node_postprocessors=[...]`` of a query engine with ``MockLLM``; then the same with the FP32
cross-encoder, for comparison.

    .venv/bin/python examples/llamaindex_rerank.py [--limit 2000] [--reranker NAME_OR_PATH]

Without ``--reranker`` the cross-encoder is all-MiniLM-L6-v2 under a fixed-seed random
classification head, built offline (``quant_retriever._demo_corpus.demo_cross_encoder``): its
order says nothing about relevance, only how closely INT8 follows FP32. A real cross-encoder
(``--reranker cross-encoder/ms-marco-MiniLM-L6-v2``) works the same way when you have it.
"""

from __future__ import annotations

import argparse
import time

from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM

from quant_retriever._demo_corpus import demo_cross_encoder, stdlib_docstrings
from quant_retriever.bench import median_ms
from quant_retriever.llama_index import QuantizedEmbedding, QuantizedRerank, QuantizedVectorStore
from quant_retriever.models import load_reranker
from quant_retriever.models.settings import minilm_path

QUESTION = "How do I read rows from a CSV file?"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=2000, help="docstrings to index")
    parser.add_argument("--reranker", default=None, help="cross-encoder name or path (default: the MiniLM demo)")
    args = parser.parse_args(argv)

    Settings.llm = MockLLM(max_tokens=16)
    embed = QuantizedEmbedding(model_name=minilm_path(), precision="int8", embed_batch_size=64)
    documents = [
        Document(text=d.text, id_=d.id, metadata={"module": d.id.split(".")[0]})
        for d in stdlib_docstrings(limit=args.limit)
    ]
    start = time.perf_counter()
    index = VectorStoreIndex.from_documents(
        documents,
        storage_context=StorageContext.from_defaults(vector_store=QuantizedVectorStore(codec="int4")),
        embed_model=embed,
    )
    print(f"QuantizedVectorStore: indexed {len(documents)} stdlib docstrings in {time.perf_counter() - start:.1f} s")

    model = args.reranker or str(demo_cross_encoder())
    reranks = {p: QuantizedRerank(top_n=5, reranker=load_reranker(model, p)) for p in ("int8", "fp32")}
    engine = index.as_query_engine(similarity_top_k=50, node_postprocessors=[reranks["int8"]])
    response = engine.query(QUESTION)
    candidates = index.as_retriever(similarity_top_k=50).retrieve(QUESTION)
    print(f"\nQ: {QUESTION}")
    print(f"first stage: {len(candidates)} nodes; the INT8 reranker keeps:")
    for hit in response.source_nodes:
        print(f"   {hit.score:.4f}  {hit.node.ref_doc_id:<40} {hit.node.get_content()[:50]}")
    print(f"A (MockLLM): {str(response)[:80]!r}")

    print(f"\n{'reranker':<10} {'parameters MB':>13} {'50 nodes ms':>11}")
    kept = {}
    for name, rerank in reranks.items():
        kept[name] = [h.node.ref_doc_id for h in rerank.postprocess_nodes(candidates, query_str=QUESTION)]
        ms = median_ms(lambda: rerank.postprocess_nodes(candidates, query_str=QUESTION), runs=3)
        print(f"{name:<10} {rerank.reranker.parameter_bytes / 1e6:>13.1f} {ms:>11.0f}")
    same = "same order" if kept["int8"] == kept["fp32"] else "another order"
    print(f"top-5 overlap of the INT8 reranker with FP32: {len(set(kept['int8']) & set(kept['fp32']))}/5 ({same})")
    if args.reranker is None:
        print("(demo cross-encoder: a random head on MiniLM, so this shows fidelity to FP32, not relevance)")


if __name__ == "__main__":
    main()
