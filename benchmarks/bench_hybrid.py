"""Hybrid search: retrieval quality of dense, keyword (BM25) and hybrid (RRF) retrieval through
both framework adapters, and what the keyword index costs.

    python benchmarks/bench_hybrid.py                      # everything (about 10 minutes on 2 cores)
    python benchmarks/bench_hybrid.py --queries 200 --n 6000 --rounds 1 --no-sharded   # a quick check

The corpus is the standard library's docstrings (``_demo_corpus.stdlib_docstrings``, real text,
no download), embedded with all-MiniLM-L6-v2 (fp32, cached). A docstring whose first sentence
is followed by at least 40 more characters is stored without that sentence; two query sets
have one relevant document each:

- ``sentence``: a docstring's first sentence, whose document is the rest of that docstring (a
  summary asking for its details);
- ``name``: a dotted name cut into words (``json decoder JSONDecoder decode``), whose document
  is that object's docstring (identifiers: what small embedding models miss).

Tables (medians; the timings interleave the settings they compare, round by round):

1. quality: MRR@10 and hit@10 per query set, for dense, keyword and hybrid at int4 and binary
   (and exact float32 dense), through the LangChain ``QuantizedVectorStore``
   (``retrieval_mode``) and the LlamaIndex ``QuantizedVectorStore`` (query modes);
2. latency of one query (k=10) at ``--n`` documents (the corpus repeated, each copy's vectors
   moved by a little noise): dense, keyword and hybrid, with and without a filter;
3. indexing throughput with and without the keyword index: ``upsert`` of ``--n`` documents
   (vectors given) in batches of 1,000 into a persistent store, and what a user runs,
   ``ingest.index_documents`` (chunking, embedding with MiniLM at INT8, upserts) of
   ``--embed-n`` documents; and the keyword index's bytes per document (the database's files
   with it minus without it, after closing);
4. with ``--sharded`` (default; needs ``ray``): a 2-shard store against one store, whose BM25
   statistics are per shard: mean top-10 overlap and MRR@10 of keyword and hybrid retrieval.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from quant_retriever._demo_corpus import embed_cached, stdlib_docstrings
from quant_retriever.store import Cond, QuantizedStore

K = 10
MODES = ("dense", "keyword", "hybrid")
_FIRST = re.compile(r"(.{20,}?[.!?])\s+(.*)", re.S)


def build_corpus(n_queries: int, limit: int | None = None):
    """(ids, texts, query sets {name: [(query, relevant id)]}) of the stdlib corpus."""
    ids, texts, sentence, name = [], [], [], []
    for doc in stdlib_docstrings(limit):
        ids.append(doc.id)
        m = _FIRST.match(doc.text)
        if m and len(m.group(2)) >= 40:
            texts.append(m.group(2))
            sentence.append((m.group(1), doc.id))
        else:
            texts.append(doc.text)
        if doc.id.count(".") >= 1:
            name.append((" ".join(doc.id.replace("_", " ").split(".")), doc.id))
    spaced = {k: v[:: max(1, len(v) // n_queries)][:n_queries] for k, v in (("sentence", sentence), ("name", name))}
    return ids, texts, spaced


def scores(ranked: list[list[str]], relevant: list[str]) -> tuple[float, float]:
    """(MRR@10, hit@10)."""
    ranks = [r[:K].index(rel) + 1 if rel in r[:K] else 0 for r, rel in zip(ranked, relevant)]
    return float(np.mean([1 / r if r else 0.0 for r in ranks])), float(np.mean([r > 0 for r in ranks]))


# ------------------------------------------------------------------------------------ quality
def langchain_runs(ids, texts, vectors, query_sets, codecs):
    from langchain_core.embeddings import Embeddings

    from quant_retriever.langchain import QuantizedVectorStore

    class Precomputed(Embeddings):  # the MiniLM vectors embedded once, looked up by text
        def __init__(self, table):
            self.table = table

        def embed_documents(self, batch):
            return [self.table[t] for t in batch]

        def embed_query(self, text):
            return self.table[text]

    table = dict(zip(texts, vectors.tolist()))
    for queries, qv in query_sets.values():
        table.update(zip([q for q, _ in queries], qv.tolist()))
    for codec in codecs:
        store = QuantizedVectorStore(Precomputed(table), codec=codec)
        for s in tqdm(range(0, len(ids), 1000), desc=f"LangChain {codec}: add", leave=False):
            store.add_texts(texts[s : s + 1000], ids=ids[s : s + 1000])
        for mode in MODES if codec != "fp32" else ("dense",):
            store.retrieval_mode = mode
            for set_name, (queries, _) in query_sets.items():
                ranked = [[d.id for d in store.similarity_search(q, k=K)] for q, _ in queries]
                yield ("LangChain", codec, mode, set_name, *scores(ranked, [rel for _, rel in queries]))
        store.close()


def llama_index_runs(ids, texts, vectors, query_sets, codecs):
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

    from quant_retriever.llama_index import QuantizedVectorStore

    modes = {
        "dense": VectorStoreQueryMode.DEFAULT,
        "keyword": VectorStoreQueryMode.TEXT_SEARCH,
        "hybrid": VectorStoreQueryMode.HYBRID,
    }
    for codec in codecs:
        store = QuantizedVectorStore(codec=codec)
        for s in tqdm(range(0, len(ids), 1000), desc=f"LlamaIndex {codec}: add", leave=False):
            chunk = range(s, min(s + 1000, len(ids)))
            store.add([TextNode(id_=ids[i], text=texts[i], embedding=vectors[i].tolist()) for i in chunk])
        for mode in MODES if codec != "fp32" else ("dense",):
            for set_name, (queries, qv) in query_sets.items():
                ranked = []
                for (q, _), v in zip(queries, qv):
                    query = VectorStoreQuery(
                        query_embedding=v.tolist(), query_str=q, similarity_top_k=K, mode=modes[mode]
                    )
                    ranked.append(store.query(query).ids)
                yield ("LlamaIndex", codec, mode, set_name, *scores(ranked, [rel for _, rel in queries]))
        store.close()


# ------------------------------------------------------------------------------------ cost
def big_corpus(ids, texts, vectors, n):
    """``n`` documents: the corpus repeated, each copy's vectors moved by noise (unit length)."""
    rng = np.random.default_rng(0)
    rows = np.arange(n) % len(ids)
    x = vectors[rows] + rng.standard_normal((n, vectors.shape[1]), dtype=np.float32) * 0.02
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    big_ids = [f"{i // len(ids)}/{ids[r]}" for i, r in enumerate(rows)]
    return big_ids, [texts[r] for r in rows], x, [{"copy": i // len(ids)} for i in range(n)]


def fill(path, keywords, docs, progress=False) -> float:
    """Seconds to upsert ``docs`` into a new persistent store (batches of 1,000)."""
    ids, texts, x, metas = docs
    store = QuantizedStore(x.shape[1], codec="int4", path=path, metric="cosine", keywords=keywords)
    start = time.perf_counter()
    for s in tqdm(range(0, len(ids), 1000), desc="upsert", leave=False, disable=not progress):
        store.upsert(ids[s : s + 1000], x[s : s + 1000], texts[s : s + 1000], metas[s : s + 1000])
    seconds = time.perf_counter() - start
    store.close()
    return seconds


def embed_and_index(path, keywords, texts, encoder) -> float:
    """Seconds of ``ingest.index_documents`` (chunk, embed, upsert) of ``texts`` into a new store."""
    from quant_retriever.ingest import Document, index_documents

    documents = [Document(f"d{i}", t, {}, "bench") for i, t in enumerate(texts)]
    store = QuantizedStore(None, codec="int4", path=path, metric="cosine", keywords=keywords)
    start = time.perf_counter()
    index_documents(store, encoder, documents, batch_size=64)
    seconds = time.perf_counter() - start
    store.close()
    return seconds


def latency(store, queries, qv, rounds, half):
    """Median ms of one query per mode, with and without the filter ``half``, interleaved."""
    calls = {
        "dense": lambda i, w: store.search(qv[i : i + 1], K, where=w),
        "keyword": lambda i, w: store.keyword_search([queries[i]], K, where=w),
        "hybrid": lambda i, w: store.hybrid_search(qv[i : i + 1], [queries[i]], K, where=w),
    }
    times = {(m, w is not None): [] for m in MODES for w in (None, half)}
    for r in tqdm(range(rounds), desc="latency rounds", leave=False):
        for i in range(len(queries)):
            order = MODES[i % 3 :] + MODES[: i % 3]
            for mode in order:
                for where in (None, half):
                    start = time.perf_counter()
                    calls[mode](i, where)
                    if r or i >= 3:  # the first calls warm up
                        times[(mode, where is not None)].append(time.perf_counter() - start)
    return {key: float(np.median(t) * 1e3) for key, t in times.items()}


def sharded_overlap(ids, texts, vectors, query_sets):
    import ray

    from quant_retriever.distributed import ShardedStore

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    one, two = QuantizedStore(codec="int4", metric="cosine"), ShardedStore(codec="int4", metric="cosine", shards=2)
    for store in (one, two):
        store.upsert(ids, vectors, texts)
    rows = []
    for set_name, (queries, qv) in query_sets.items():
        q = [t for t, _ in queries]
        relevant = [rel for _, rel in queries]
        for mode in ("keyword", "hybrid"):
            got = {}
            for name, store in (("one", one), ("two", two)):
                hits = store.keyword_search(q, K) if mode == "keyword" else store.hybrid_search(qv, q, K)
                got[name] = [[r.id for r, _ in row] for row in hits]
            overlap = np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(got["one"], got["two"])])
            rows.append(
                (set_name, mode, float(overlap), scores(got["one"], relevant)[0], scores(got["two"], relevant)[0])
            )
    two.close()
    ray.shutdown()
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=2000, help="queries per query set")
    parser.add_argument("--docs", type=int, default=None, help="docstrings in the corpus (default: all)")
    parser.add_argument("--codecs", nargs="+", default=["int4", "binary"])
    parser.add_argument("--n", type=int, default=60_000, help="documents for the latency and indexing tables")
    parser.add_argument("--embed-n", type=int, default=1000, help="documents embedded for table 3's second part")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the latency and indexing tables")
    parser.add_argument("--no-sharded", action="store_true", help="leave out table 4 (Ray)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)

    ids, texts, sets = build_corpus(args.queries, args.docs)
    vectors = embed_cached(texts)
    query_sets = {name: (queries, embed_cached([q for q, _ in queries])) for name, queries in sets.items()}
    sizes = ", ".join(f"{len(v)} {k}" for k, v in sets.items())
    print(f"corpus: {len(ids):,} stdlib docstrings; queries: {sizes}; MiniLM fp32; k={K}\n")

    rows = [
        *langchain_runs(ids, texts, vectors, query_sets, ["fp32", *args.codecs]),
        *llama_index_runs(ids, texts, vectors, query_sets, ["fp32", *args.codecs]),
    ]
    print("1. retrieval quality (one relevant document per query)")
    print(f"{'adapter':<12}{'codec':<7}{'mode':<9}" + "".join(f"{s + ' MRR@10':>17}{s + ' hit@10':>17}" for s in sets))
    for key in dict.fromkeys(r[:3] for r in rows):
        cells = {r[3]: r[4:] for r in rows if r[:3] == key}
        print(
            f"{key[0]:<12}{key[1]:<7}{key[2]:<9}" + "".join(f"{cells[s][0]:>17.3f}{cells[s][1]:>17.3f}" for s in sets)
        )

    docs = big_corpus(ids, texts, vectors, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        seconds, size = {None: [], "porter unicode61": []}, {}
        for r in tqdm(range(args.rounds), desc="indexing rounds", leave=False):
            for keywords in (None, "porter unicode61") if r % 2 == 0 else ("porter unicode61", None):
                path = Path(tmp) / f"{keywords}-{r}"
                seconds[keywords].append(fill(path, keywords, docs))
                size[keywords] = sum(f.stat().st_size for f in path.glob("store.sqlite*"))
        from quant_retriever.models import load_encoder
        from quant_retriever.models.settings import minilm_path

        encoder, embedded = load_encoder(minilm_path(), precision="int8"), {None: [], "porter unicode61": []}
        for r in tqdm(range(args.rounds), desc="embed + index rounds", leave=False):
            for keywords in (None, "porter unicode61") if r % 2 == 0 else ("porter unicode61", None):
                embedded[keywords].append(
                    embed_and_index(Path(tmp) / f"e{keywords}-{r}", keywords, texts[: args.embed_n], encoder)
                )
        store = QuantizedStore.open(Path(tmp) / f"porter unicode61-{args.rounds - 1}", read_only=True)
        half = Cond("copy", "lt", max(1, args.n // len(ids) // 2))
        ms = {}
        for set_name, (queries, qv) in query_sets.items():
            q = [t for t, _ in queries[: args.latency_queries]]
            ms[set_name] = latency(store, q, qv[: args.latency_queries], args.rounds, half)
        store.close()
    print(f"\n2. latency of one query, {args.n:,} documents, int4 + INT8 rescore x4, k={K} (median ms)")
    print(f"{'queries':<10}{'filter':<24}" + "".join(f"{m:>10}" for m in MODES) + f"{'hybrid/dense':>14}")
    for set_name in query_sets:
        for filtered, label in ((False, "none"), (True, f"copy < {half.value} (half)")):
            cells = [ms[set_name][(m, filtered)] for m in MODES]
            print(
                f"{set_name:<10}{label:<24}" + "".join(f"{c:>10.3f}" for c in cells) + f"{cells[2] / cells[0]:>14.2f}"
            )

    rate = {k: args.n / float(np.median(v)) for k, v in seconds.items()}
    print(f"\n3. indexing {args.n:,} documents (upsert, batches of 1,000; median of {args.rounds})")
    print(f"{'keyword index':<22}{'docs/s':>10}{'ratio':>8}{'store.sqlite MB':>17}")
    for keywords in (None, "porter unicode61"):
        ratio = rate[keywords] / rate[None]
        print(f"{str(keywords):<22}{rate[keywords]:>10.0f}{ratio:>8.3f}{size[keywords] / 1e6:>17.1f}")
    e_rate = {k: args.embed_n / float(np.median(v)) for k, v in embedded.items()}
    print(
        f"\n   embedding and indexing {args.embed_n:,} documents "
        f"(ingest.index_documents, MiniLM int8, median of {args.rounds})"
    )
    for keywords in (None, "porter unicode61"):
        print(f"{str(keywords):<22}{e_rate[keywords]:>10.1f}{e_rate[keywords] / e_rate[None]:>8.3f}")
    per_doc = (size["porter unicode61"] - size[None]) / args.n
    print(
        f"keyword index: {per_doc:.0f} bytes per document (texts of {np.mean([len(t) for t in texts]):.0f} characters)"
    )

    if not args.no_sharded:
        rows = sharded_overlap(ids, texts, vectors, query_sets)
        print("\n4. two shards (BM25 statistics per shard) against one store, int4")
        print(f"{'queries':<10}{'mode':<9}{'top-10 overlap':>16}{'MRR@10 one':>12}{'MRR@10 two':>12}")
        for set_name, mode, overlap, one, two in rows:
            print(f"{set_name:<10}{mode:<9}{overlap:>16.3f}{one:>12.3f}{two:>12.3f}")


if __name__ == "__main__":
    main()
