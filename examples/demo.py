"""Demo: index a real corpus (the Python standard library's docstrings) with the real
all-MiniLM-L6-v2 model, offline, and search it with INT4 and binary codes rescored from the
INT8 copy on disk, next to exact float32 search.

    ./run.sh demo
"""

from __future__ import annotations

from quant_retriever import QuantizedIndex, load_encoder
from quant_retriever._demo_corpus import embed_cached, stdlib_docstrings
from quant_retriever.bench import median_ms
from quant_retriever.models.settings import minilm_path

QUESTIONS = [
    "parse a JSON document from a string",
    "compress bytes with gzip",
    "run a shell command and capture its output",
    "read rows from a CSV file",
]


def main() -> None:
    docs = stdlib_docstrings()
    print(f"corpus: {len(docs)} docstrings of the Python standard library")
    vectors = embed_cached([d.text for d in docs])  # cached under .cache/ after the first run
    encoder = load_encoder(minilm_path(), precision="fp32")
    queries = encoder.encode(QUESTIONS)

    indexes = {
        "fp32 (exact)": QuantizedIndex(384, codec="fp32"),
        "int4 + int8 rescore": QuantizedIndex(384, codec="int4"),
        "binary + int8 rescore": QuantizedIndex(384, codec="binary"),
    }
    for index in indexes.values():
        index.add(vectors)
        index.search(queries[:1], k=5)  # warm-up (compiles the native CPU kernels once)

    exact = indexes["fp32 (exact)"].search(queries, k=5)
    for name, index in indexes.items():
        if name == "fp32 (exact)":
            continue
        res = index.search(queries, k=5)
        print(f"\n== {name} ==")
        for question, ids, scores, truth in zip(QUESTIONS, res.ids, res.scores, exact.ids):
            print(f"Q: {question}   (top-5 overlap with exact: {len(set(ids) & set(truth))}/5)")
            for doc_id, score in zip(ids[:3], scores[:3]):
                d = docs[doc_id]
                print(f"   {score:.3f}  {d.id:<45} {d.text[:70]}")

    print(f"\n{'index':<24} {'device B/vector':>15} {'disk B/vector':>13} {'1-query ms':>10}")
    for name, index in indexes.items():
        mem = index.memory()
        ms = median_ms(lambda: index.search(queries[:1], k=5))
        print(f"{name:<24} {mem.bytes_per_vector:>15} {mem.disk_bytes_per_vector:>13} {ms:>10.2f}")


if __name__ == "__main__":
    main()
