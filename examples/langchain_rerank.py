"""Two-stage retrieval with LangChain, offline: an INT4 vector store (INT8 MiniLM embeddings)
retrieves 50 candidates and an INT8 cross-encoder keeps the best 5, inside LangChain's own
``ContextualCompressionRetriever``; then the same with the FP32 cross-encoder, for comparison.

    .venv/bin/python examples/langchain_rerank.py [--limit 2000] [--reranker NAME_OR_PATH]

Without ``--reranker`` the cross-encoder is all-MiniLM-L6-v2 under a fixed-seed random
classification head, built offline (``quant_retriever._demo_corpus.demo_cross_encoder``): its
order says nothing about relevance, only how closely INT8 follows FP32. A real cross-encoder
(``--reranker cross-encoder/ms-marco-MiniLM-L6-v2``) works the same way when you have it.
"""

from __future__ import annotations

import argparse
import time

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document

from quant_retriever._demo_corpus import demo_cross_encoder, stdlib_docstrings
from quant_retriever.bench import median_ms
from quant_retriever.langchain import QuantizedEmbeddings, QuantizedReranker, QuantizedVectorStore
from quant_retriever.models import load_reranker
from quant_retriever.models.settings import minilm_path

QUESTION = "How do I compress bytes with gzip?"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=2000, help="docstrings to index")
    parser.add_argument("--reranker", default=None, help="cross-encoder name or path (default: the MiniLM demo)")
    args = parser.parse_args(argv)

    docs = [
        Document(id=d.id, page_content=d.text, metadata={"module": d.id.split(".")[0], "source": d.source})
        for d in stdlib_docstrings(limit=args.limit)
    ]
    embeddings = QuantizedEmbeddings(model_name=minilm_path(), precision="int8", batch_size=64)
    store = QuantizedVectorStore(embeddings, codec="int4", rescore_multiplier=4)
    start = time.perf_counter()
    store.add_documents(docs)
    print(f"QuantizedVectorStore: embedded and added {len(docs)} docstrings in {time.perf_counter() - start:.1f} s")

    model = args.reranker or str(demo_cross_encoder())
    first_stage = store.as_retriever(search_kwargs={"k": 50})
    pipelines = {}
    for precision in ("int8", "fp32"):
        compressor = QuantizedReranker(reranker=load_reranker(model, precision), top_n=5)
        pipelines[precision] = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=first_stage)

    print(f"\nQ: {QUESTION}")
    print(f"first stage: {len(first_stage.invoke(QUESTION))} candidates; the INT8 reranker keeps:")
    kept = {name: pipeline.invoke(QUESTION) for name, pipeline in pipelines.items()}
    for doc in kept["int8"]:
        print(f"   {doc.metadata['relevance_score']:.4f}  {doc.id:<40} {doc.page_content[:50]}")

    print(f"\n{'reranker':<10} {'parameters MB':>13} {'50 pairs ms':>11}")
    for name, pipeline in pipelines.items():
        compressor = pipeline.base_compressor
        candidates = first_stage.invoke(QUESTION)
        ms = median_ms(lambda: compressor.compress_documents(candidates, QUESTION), runs=3)
        print(f"{name:<10} {compressor.reranker.parameter_bytes / 1e6:>13.1f} {ms:>11.0f}")
    int8_ids, fp32_ids = ([d.id for d in kept[name]] for name in ("int8", "fp32"))
    same = "same order" if int8_ids == fp32_ids else "another order"
    print(f"top-5 overlap of the INT8 reranker with FP32: {len(set(int8_ids) & set(fp32_ids))}/5 ({same})")
    if args.reranker is None:
        print("(demo cross-encoder: a random head on MiniLM, so this shows fidelity to FP32, not relevance)")


if __name__ == "__main__":
    main()
