"""The store's keyword index and its three search modes, on real SQLite: BM25 against a
reference written here (FTS5's formula: k1 = 1.2, b = 0.75, IDF floored at 1e-6), hostile query
strings (property-based), filters and allowed ids in every mode against brute force, writes and
failed writes keeping records and the index in step, metadata updates, paging, tokenizers, and
stores written before the index existed."""

from __future__ import annotations

import logging
import math
import re
import sqlite3

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant_retriever.store import Cond, Not, QuantizedStore
from quant_retriever.store.fusion import fuse

DIM = 16
CORPUS = {
    "gzip": "The gzip module compresses and decompresses bytes with the gzip file format.",
    "zlib": "zlib compresses data; gzip and zip archives use its deflate algorithm.",
    "json": "json loads parses a JSON document into Python objects; json dumps writes one.",
    "csv": "The csv module reads and writes rows of comma separated values files.",
    "socket": "A socket sends and receives bytes over a network connection.",
    "near": "NEAR AND OR NOT are words here, as are quotes and column text names.",
    "heapq": "heapq keeps a heap: push and pop the smallest item of a list.",
    "bz2": "bz2 compresses bytes with bzip2; lzma and gzip are its siblings.",
}


def vec(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def make(tokenizer="unicode61", path=None, metric="cosine") -> QuantizedStore:
    store = QuantizedStore(DIM, codec="int8", path=path, metric=metric, keywords=tokenizer)
    ids = list(CORPUS)
    store.upsert(ids, np.stack([vec(i) for i in range(len(ids))]), list(CORPUS.values()), [{"i": i} for i in range(8)])
    return store


def words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[^\W_]+", text)]


def reference_bm25(texts: dict[str, str], query: str) -> dict[str, float]:
    """Okapi BM25 as FTS5's bm25() computes it, over unicode61 tokens (no stemming)."""
    docs = {i: words(t) for i, t in texts.items()}
    n, avg = len(docs), sum(map(len, docs.values())) / len(docs)
    terms = list(dict.fromkeys(words(query)))
    scores = {}
    for i, toks in docs.items():
        score, hit = 0.0, False
        for term in terms:
            f = toks.count(term)
            df = sum(term in d for d in docs.values())
            if not df:
                continue
            idf = max(math.log((n - df + 0.5) / (df + 0.5)), 1e-6)
            if f:
                hit = True
                score += idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len(toks) / avg))
        if hit:
            scores[i] = score
    return scores


@pytest.mark.parametrize("query", ["gzip bytes", "compresses", "json document", "the", "heap pop list", "zzz"])
def test_bm25_equals_the_reference(query):
    store = make()
    got = {r.id: s for r, s in store.keyword_search([query], k=10)[0]}
    expected = reference_bm25(CORPUS, query)
    assert set(got) == set(expected)
    for doc, score in expected.items():
        assert math.isclose(got[doc], score, rel_tol=1e-9), (doc, got[doc], score)
    ranking = [doc for doc, _ in sorted(expected.items(), key=lambda kv: (-kv[1], list(CORPUS).index(kv[0])))]
    assert [r.id for r, _ in store.keyword_search([query], k=10)[0]] == ranking


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    text=st.text(max_size=80)
    | st.text(st.characters(codec="ascii"), max_size=80)
    | st.sampled_from(['"', "*", "NEAR(", "a AND", "-x", "text:", "^", "(", "'", "\0", "OR OR", "gzip_json", "x*y"])
)
def test_any_query_text_is_words_and_never_syntax(text):
    hits = STORE.keyword_search([text], k=8)[0]  # never an error
    got = {r.id for r, _ in hits}
    if text.isascii():  # exactly the documents with one of its words
        assert got == set(reference_bm25(CORPUS, text))
    else:  # beyond ASCII, SQLite folds diacritics its own way: at least the ASCII words' documents
        ascii_words = " ".join(w for w in words(text) if w.isascii())
        assert got >= set(reference_bm25(CORPUS, ascii_words))
    assert all(math.isfinite(s) and s > 0 for _, s in hits)


STORE = make()


def test_fts_words_are_plain_words():
    store = make()
    for query in ("NEAR", "AND", "OR NOT", '"quotes"', "column:text", "names*"):
        assert [r.id for r, _ in store.keyword_search([query], k=3)[0]][:1] == ["near"], query
    assert store.keyword_search(["", "   ", "!!! ???"], k=3) == [[], [], []]


def brute(store, mode, query_vec, text, k, allowed):
    """What a mode must return when the restriction applies before top-k: computed over the
    allowed documents alone."""
    dense = sorted(
        ((r.key, float(np.dot(store.vectors([r])[0], query_vec))) for r in store.records() if r.id in allowed),
        key=lambda h: (-h[1], h[0]),
    )
    texts = {r.id: r.text for r in store.records() if r.id in allowed}
    kw_scores = reference_bm25(CORPUS, text)  # BM25's statistics are the whole corpus's
    keys = {r.id: r.key for r in store.records()}
    keyword = sorted(((keys[i], s) for i, s in kw_scores.items() if i in texts), key=lambda h: (-h[1], h[0]))
    if mode == "dense":
        return [key for key, _ in dense[:k]]
    if mode == "keyword":
        return [key for key, _ in keyword[:k]]
    ids = {r.key: r.id for r in store.records()}
    by_id = [[(ids[key], s) for key, s in hits[: 4 * k]] for hits in (dense, keyword)]  # fused ties: by id
    return [keys[i] for i, _ in fuse(by_id, (1.0, 1.0))[:k]]


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
@pytest.mark.parametrize(
    "where, ids", [(None, None), (Cond("i", "lt", 5), None), (Not(Cond("i", "eq", 0)), ["gzip", "zlib", "bz2", "csv"])]
)
def test_filters_and_ids_restrict_every_mode_before_top_k(mode, where, ids):
    store = make()
    q, text, k = vec(0), "compresses bytes gzip", 2
    allowed = {r.id for r in store.records(where)} & (set(ids) if ids is not None else set(CORPUS))
    if mode == "dense":
        hits = store.search(q, k, where=where, ids=ids)[0]
    elif mode == "keyword":
        hits = store.keyword_search([text], k, where=where, ids=ids)[0]
    else:
        hits = store.hybrid_search(q, [text], k, where=where, ids=ids)[0]
    assert {r.id for r, _ in hits} <= allowed
    assert [r.key for r, _ in hits] == brute(store, mode, q, text, k, allowed)


def test_writes_keep_the_keyword_index_in_step_and_verify_checks_it(tmp_path):
    store = make(path=tmp_path / "s")
    store.upsert(["gzip"], vec(20)[None], ["now about sqlite databases"], [{"i": 99}])  # replaced: old words leave
    store.delete(["json"])
    now = {**CORPUS, "gzip": "now about sqlite databases"}
    del now["json"]
    for query in ("gzip", "sqlite", "json", "compresses bytes json"):  # the statistics follow too
        got = {r.id: s for r, s in store.keyword_search([query], k=8)[0]}
        expected = reference_bm25(now, query)
        assert set(got) == set(expected), query
        assert all(math.isclose(got[i], expected[i], rel_tol=1e-9) for i in got), query
    assert store.verify() == []
    with sqlite3.connect(tmp_path / "s" / "store.sqlite") as db:  # damage the index behind the store's back
        db.execute("DELETE FROM keywords_docsize WHERE id = (SELECT MIN(id) FROM keywords_docsize)")
    assert any(p.startswith("keyword index") for p in store.verify())
    store.close()


class FailingCommit:
    def __init__(self, db):
        self._db = db

    def execute(self, sql, *args):
        if sql.strip().upper().startswith("COMMIT"):
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.mark.parametrize("write", ["upsert", "delete", "update_metadata"])
def test_a_write_that_fails_leaves_records_and_keywords_as_they_were(tmp_path, monkeypatch, write):
    store = make(path=tmp_path / "s")
    before = [store.keyword_search([w], k=8) for w in ("gzip", "json", "sqlite")], store.get(where=Cond("i", "gte", 0))
    monkeypatch.setattr(store._db, "connection", FailingCommit(store._db.connection))
    with pytest.raises(sqlite3.OperationalError):
        {
            "upsert": lambda: store.upsert(["gzip", "new"], np.stack([vec(30), vec(31)]), ["sqlite", "sqlite"]),
            "delete": lambda: store.delete(["json"]),
            "update_metadata": lambda: store.update_metadata(["gzip"], [{"i": -1}]),
        }[write]()
    monkeypatch.undo()
    after = [store.keyword_search([w], k=8) for w in ("gzip", "json", "sqlite")], store.get(where=Cond("i", "gte", 0))
    assert after == before and store.verify() == []


def test_update_metadata_changes_filters_at_once_and_nothing_else():
    store = make()
    where = Cond("i", "eq", 42)
    assert store.keyword_search(["gzip"], k=8, where=where) == [[]]  # the filter's key set is now cached
    text_before = store.get(["gzip"])[0].text
    assert store.update_metadata(["gzip", "missing"], [{"i": 42}, {"i": 1}]) == ["gzip"]
    assert [r.id for r, _ in store.keyword_search(["gzip"], k=8, where=where)[0]] == ["gzip"]
    assert [r.id for r, _ in store.search(vec(0), k=8, where=where)[0]] == ["gzip"]
    assert store.get(["gzip"])[0].text == text_before and store.verify() == []
    with pytest.raises(TypeError, match="metadata"):
        store.update_metadata(["csv"], [{"when": object()}])


def test_paging_through_records():
    store = make()
    everything = list(store.records())
    pages = [store.get(limit=3, offset=o) for o in range(0, 9, 3)]
    assert [r for page in pages for r in page] == everything
    where = Cond("i", "gte", 3)
    assert store.get(where=where, limit=2, offset=1) == list(store.records(where))[1:3]
    assert store.count() == 8 and store.count(where) == 5
    with pytest.raises(ValueError, match="offset must be >= 0"):
        store.get(offset=-1)
    with pytest.raises(TypeError, match="ids, or where"):
        store.get(["gzip"], limit=1)


@settings(max_examples=60, deadline=None)
@given(limit=st.one_of(st.none(), st.integers(0, 2**80)), offset=st.integers(0, 2**80), filtered=st.booleans())
def test_any_page_bounds_read_like_slices(limit, offset, filtered):
    """Any non-negative limit and offset, beyond SQLite's 64-bit integers too (the server's
    fuzzing found an OverflowError there), read as the same slice of the records."""
    store = _paging_store()
    where = Cond("i", "gte", 3) if filtered else None
    everything = list(store.records(where))
    want = everything[offset:] if limit is None else everything[offset : offset + limit]
    assert store.get(where=where, limit=limit, offset=offset) == want


_PAGING: list = []


def _paging_store() -> QuantizedStore:
    if not _PAGING:
        _PAGING.append(make())
    return _PAGING[0]


def test_tokenizers():
    trigram = make("trigram")
    assert [r.id for r, _ in trigram.keyword_search(["ompress"], k=8)[0]][:1]  # substrings match
    stemmed = make("porter unicode61")
    assert "bz2" in {r.id for r, _ in stemmed.keyword_search(["compressing"], k=8)[0]}  # stems match
    plain = make("unicode61")
    assert plain.keyword_search(["compressing"], k=8) == [[]]
    with pytest.raises(ValueError, match="keywords must be None or one of"):
        QuantizedStore(DIM, keywords="porter'); DROP TABLE docs; --")
    without = QuantizedStore(DIM, keywords=None)
    without.upsert(["a"], vec(1)[None], ["text"])
    with pytest.raises(ValueError, match="has no keyword index"):
        without.keyword_search(["text"])


def test_a_store_written_before_the_keyword_index_gains_it_on_a_writable_open(tmp_path, caplog):
    store = make(path=tmp_path / "s")
    expected = store.keyword_search(["gzip bytes"], k=8)
    store.close()
    with sqlite3.connect(tmp_path / "s" / "store.sqlite") as db:  # as the previous release wrote it
        db.execute("DROP TABLE keywords")
        db.execute("DELETE FROM meta WHERE name = 'keywords'")
    reader = QuantizedStore.open(tmp_path / "s", read_only=True)
    with pytest.raises(ValueError, match="open it once without read_only=True"):
        reader.keyword_search(["gzip"])
    assert len(reader.search(vec(0), k=3)[0]) == 3  # dense search works as before
    reader.close()
    with caplog.at_level(logging.WARNING, logger="quant_retriever"):
        store = QuantizedStore.open(tmp_path / "s")
    assert "built the keyword index" in caplog.text and "8 documents" in caplog.text
    assert [r.id for r, _ in store.keyword_search(["gzip bytes"], k=8)[0]] != []
    assert store.verify() == []
    store.close()
    assert [[(r.id, round(s, 9)) for r, s in row] for row in expected] == [
        [(r.id, round(s, 9)) for r, s in row]
        for row in QuantizedStore.open(tmp_path / "s").keyword_search(["gzip bytes"], k=8)
    ]


def test_hybrid_arguments_are_checked():
    store = make()
    q = vec(0)
    with pytest.raises(ValueError, match="fusion must be one of"):
        store.hybrid_search(q, ["x"], fusion="max")
    with pytest.raises(TypeError, match="weights or alpha"):
        store.hybrid_search(q, ["x"], weights=(1, 1), alpha=0.5)
    with pytest.raises(ValueError, match="alpha must be a number in"):
        store.hybrid_search(q, ["x"], alpha=1.5)
    with pytest.raises(ValueError, match="one text per query"):
        store.hybrid_search(np.stack([q, q]), ["x"])
    with pytest.raises(TypeError, match="texts must be a list of strings"):
        store.keyword_search("gzip")
    assert store.hybrid_search(q, ["gzip"], k=0) == [[]]
    assert len(store.hybrid_search(q, ["gzip"], k=3, dense_top_k=0)[0]) == 3  # keyword branch alone


def test_restricted_keyword_search_equals_brute_force():
    texts = {f"d{i}": f"alpha {'beta ' * (i % 5)}gamma{i % 11} doc{i}" for i in range(400)}
    store = QuantizedStore(DIM, codec="int8", keywords="unicode61")
    store.upsert(
        list(texts), np.stack([vec(i) for i in range(400)]), list(texts.values()), [{"i": i} for i in range(400)]
    )
    keys = {r.id: r.key for r in store.records()}
    scores = reference_bm25(texts, "alpha beta gamma3")
    for where in (
        Cond("i", "gte", 200),
        Cond("i", "lt", 8),
        Cond("i", "in", list(range(0, 400, 5))),
        Cond("i", "lt", 0),
    ):
        got = store.keyword_search(["alpha beta gamma3"], 5, where=where)[0]
        allowed = {r.id for r in store.records(where)}
        want = sorted(((keys[i], s) for i, s in scores.items() if i in allowed), key=lambda h: (-h[1], h[0]))[:5]
        assert [r.key for r, _ in got] == [k for k, _ in want], where
        assert all(math.isclose(s, w, rel_tol=1e-9) for (_, s), (_, w) in zip(got, want)), where


def test_word_shares_are_cached_per_version_within_a_budget():
    """The fast path: a word's shares come from the cache until a write changes the version
    (every share depends on the whole index's statistics), and the cache stays in its budget."""
    store = make()
    words = store._word_scores
    first = store.keyword_search(["gzip bytes json"], k=8)
    assert words.misses == 3 and len(words) == 3
    assert store.keyword_search(["json gzip bytes"], k=8) == first and words.misses == 3  # all cached
    store.upsert(["new"], vec(40)[None], ["gzip again"])
    expected = reference_bm25({**CORPUS, "new": "gzip again"}, "gzip bytes json")
    again = {r.id: s for r, s in store.keyword_search(["gzip bytes json"], k=9)[0]}
    assert words.misses == 6 and set(again) == set(expected)
    assert all(math.isclose(again[i], expected[i], rel_tol=1e-9) for i in again)
    small = make()
    small._word_scores.budget = 4  # postings: "gzip" (3 documents) fits, then leaves for "bytes" (3)
    small.keyword_search(["gzip"], k=8)
    assert list(small._word_scores._entries) == ["gzip"]
    small.keyword_search(["bytes"], k=8)
    assert list(small._word_scores._entries) == ["bytes"] and small._word_scores._size == 3
    small._word_scores.budget = 2  # a word with more documents than the budget is not kept
    small.keyword_search(["compresses"], k=8)
    assert "compresses" not in small._word_scores._entries


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    postings=st.lists(
        st.dictionaries(
            st.one_of(st.integers(0, 50), st.integers(2**40, 2**40 + 50)),
            st.floats(1e-6, 20, allow_nan=False),
            max_size=12,
        ),
        max_size=5,
    ),
    allowed=st.none() | st.lists(st.integers(0, 60), max_size=20) | st.just([2**40 + 1, 2**40 + 3]),
    n=st.integers(0, 12),
)
def test_adding_word_shares_equals_a_reference(postings, allowed, n):
    """Differential, both ways of adding up (by index for dense keys, sorted for sparse ones):
    the top ``n`` of the summed shares, ties by key, restricted to ``allowed``."""
    from quant_retriever.store.keywords import WordScores

    table = {f"w{i}": sorted(p.items()) for i, p in enumerate(postings)}
    text = " ".join(table)
    scores = WordScores()
    allowed_keys = None if allowed is None else np.unique(np.array(allowed, dtype=np.int64))
    got = scores.top(lambda sql, params: table[params[0].strip('"')], text, n, 0, allowed_keys)
    total: dict[int, float] = {}
    for rows in table.values():
        for key, share in rows:
            total[key] = total.get(key, 0.0) + share
    if allowed is not None:
        total = {k: v for k, v in total.items() if k in set(allowed)}
    assert_same_top(got, total, n)


def assert_same_top(got: list[tuple[int, float]], total: dict[int, float], n: int) -> None:
    """``got`` is the top ``n`` of ``total`` (ties by key), up to the rounding of a sum: its
    scores are the reference's, best first, and each key's score is that key's own."""
    want = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    assert len(got) == len(want)
    assert np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-12, atol=0)
    assert all(np.isclose(s, total[key], rtol=1e-12, atol=0) for key, s in got)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


@pytest.mark.parametrize("seed", range(60))
def test_pruned_adding_up_equals_the_full_sum(seed):
    """Differential on long posting lists, where the frequent words are looked up for the
    candidates only (MaxScore): the same top as adding every share."""
    check_pruned_case(seed)


def test_pruning_is_taken():
    assert sum(check_pruned_case(seed) for seed in range(60)) >= 15


def check_pruned_case(seed: int) -> int:
    """One random case of the test above; how many times it pruned (0 or 1)."""
    from quant_retriever.store.keywords import WordScores

    rng = np.random.default_rng(seed)
    n_docs = int(rng.integers(50, 5000))
    table = {}
    for w in range(int(rng.integers(2, 8))):
        count = int(min(n_docs, rng.choice([3, 20, 200, n_docs // 2, n_docs])))
        keys = np.sort(rng.choice(n_docs, count, replace=False))
        top = 20.0 / (1 + np.log1p(count))  # rare words weigh more, as IDF makes them
        table[f"w{w}"] = list(zip(keys.tolist(), rng.uniform(1e-6, top, count).tolist()))
    n = int(rng.integers(1, 30))
    allowed = None if seed % 3 else np.sort(rng.choice(n_docs, n_docs // 2, replace=False))
    scores = WordScores()
    got = scores.top(lambda sql, params: table[params[0].strip('"')], " ".join(table), n, 0, allowed)
    total: dict[int, float] = {}
    for rows in table.values():
        for key, share in rows:
            if allowed is None or key in set(allowed.tolist()):
                total[key] = total.get(key, 0.0) + share
    assert_same_top(got, total, n)
    return scores.pruned
