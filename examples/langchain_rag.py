"""LangChain RAG over a real corpus, offline: INT8 MiniLM embeddings, an INT4 vector store with
INT8 rescoring, an LCEL retrieval chain with a fake chat model, next to LangChain's float32
``InMemoryVectorStore``.

    .venv/bin/python examples/langchain_rag.py [--limit 2000]
"""

from __future__ import annotations

import argparse
import time

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from quant_retriever._demo_corpus import stdlib_docstrings
from quant_retriever.bench import median_ms
from quant_retriever.langchain import QuantizedEmbeddings, QuantizedVectorStore
from quant_retriever.models.settings import minilm_path

QUESTION = "How do I compress bytes with gzip?"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=2000, help="docstrings to index")
    args = parser.parse_args(argv)

    docs = [
        Document(id=d.id, page_content=d.text, metadata={"module": d.id.split(".")[0], "source": d.source})
        for d in stdlib_docstrings(limit=args.limit)
    ]
    embeddings = QuantizedEmbeddings(model_name=minilm_path(), precision="int8", batch_size=64)
    store = QuantizedVectorStore(embeddings, codec="int4", rescore_multiplier=4)
    float32 = InMemoryVectorStore(embeddings)
    for name, vs in (("QuantizedVectorStore", store), ("InMemoryVectorStore", float32)):
        start = time.perf_counter()
        vs.add_documents(docs)
        print(f"{name}: embedded and added {len(docs)} stdlib docstrings in {time.perf_counter() - start:.1f} s")

    retriever = store.as_retriever(search_kwargs={"k": 3})
    prompt = ChatPromptTemplate.from_template("Answer from the context.\n\nContext:\n{context}\n\nQuestion: {question}")
    llm = FakeListChatModel(responses=["Use gzip.compress(data) (see the sources above)."])
    chain = (
        {"context": retriever | (lambda ds: "\n\n".join(d.page_content for d in ds)), "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    print(f"\nQ: {QUESTION}")
    for doc in retriever.invoke(QUESTION):
        print(f"   source: {doc.id:<40} {doc.page_content[:70]}")
    print(f"A: {chain.invoke(QUESTION)}")

    query = embeddings.embed_query(QUESTION)
    exact = [d.id for d in float32.similarity_search_by_vector(query, k=10)]
    ours = [d.id for d in store.similarity_search_by_vector(query, k=10)]
    mem = store.store.index.memory()
    print(f"\n{'store':<34} {'B/vector in RAM':>15} {'B/vector on disk':>16} {'search ms':>9}")
    exact_ms = median_ms(lambda: float32.similarity_search_by_vector(query, k=10))
    ours_ms = median_ms(lambda: store.similarity_search_by_vector(query, k=10))
    print(f"{'InMemoryVectorStore (float32)':<34} {4 * len(query):>15} {0:>16} {exact_ms:>9.2f}")
    label = "QuantizedVectorStore (int4+int8)"
    print(f"{label:<34} {mem.bytes_per_vector:>15} {mem.disk_bytes_per_vector:>16} {ours_ms:>9.2f}")
    print(f"top-10 overlap with float32: {len(set(exact) & set(ours))}/10")


if __name__ == "__main__":
    main()
