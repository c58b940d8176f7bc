"""LlamaIndex over a real corpus, offline: INT8 MiniLM embeddings, ``VectorStoreIndex`` on an
INT4 vector store with INT8 rescoring, a query engine with ``MockLLM``, next to LlamaIndex's
float32 ``SimpleVectorStore``.

    .venv/bin/python examples/llamaindex_query_engine.py [--limit 2000]
"""

from __future__ import annotations

import argparse
import time

from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.vector_stores import SimpleVectorStore

from quant_retriever._demo_corpus import stdlib_docstrings
from quant_retriever.bench import median_ms
from quant_retriever.llama_index import QuantizedEmbedding, QuantizedVectorStore
from quant_retriever.models.settings import minilm_path

QUESTION = "How do I read rows from a CSV file?"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=2000, help="docstrings to index")
    args = parser.parse_args(argv)

    Settings.llm = MockLLM(max_tokens=16)
    embed = QuantizedEmbedding(model_name=minilm_path(), precision="int8", embed_batch_size=64)
    documents = [
        Document(text=d.text, id_=d.id, metadata={"module": d.id.split(".")[0]})
        for d in stdlib_docstrings(limit=args.limit)
    ]
    indexes = {}
    for name, store in (
        ("QuantizedVectorStore (int4+int8)", QuantizedVectorStore(codec="int4")),
        ("SimpleVectorStore (float32)", SimpleVectorStore()),
    ):
        start = time.perf_counter()
        indexes[name] = VectorStoreIndex.from_documents(
            documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
        )
        print(f"{name}: indexed {len(documents)} stdlib docstrings in {time.perf_counter() - start:.1f} s")

    ours = indexes["QuantizedVectorStore (int4+int8)"]
    response = ours.as_query_engine(similarity_top_k=3).query(QUESTION)
    print(f"\nQ: {QUESTION}")
    for hit in response.source_nodes:
        print(f"   {hit.score:.3f}  {hit.node.ref_doc_id:<40} {hit.node.get_content()[:60]}")
    print(f"A (MockLLM): {str(response)[:80]!r}")

    print(f"\n{'vector store':<34} {'B/vector in RAM':>15} {'B/vector on disk':>16} {'retrieve ms':>11}")
    retrieved = {}
    for name, index in indexes.items():
        retriever = index.as_retriever(similarity_top_k=10)
        retrieved[name] = {h.node.ref_doc_id for h in retriever.retrieve(QUESTION)}
        if isinstance(index.vector_store, QuantizedVectorStore):
            mem = index.vector_store.client.index.memory()
            ram, disk = mem.bytes_per_vector, mem.disk_bytes_per_vector
        else:
            ram, disk = 4 * embed.encoder.dim, 0
        print(f"{name:<34} {ram:>15} {disk:>16} {median_ms(lambda: retriever.retrieve(QUESTION)):>11.2f}")
    a, b = retrieved.values()
    print(f"top-10 overlap with float32: {len(a & b)}/10 (retrieve includes embedding the question)")


if __name__ == "__main__":
    main()
