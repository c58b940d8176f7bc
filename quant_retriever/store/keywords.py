"""The keyword index: an FTS5 table over the documents' texts, ranked by BM25.

The table ``keywords`` has external content (the texts stay once, in ``docs``; the index holds
only the inverted lists, ``rowid`` = the document's key) and one tokenizer from
:data:`TOKENIZERS` (default ``"porter unicode61"``: Unicode words, lower-cased, diacritics
folded, Porter-stemmed), recorded in the store's ``meta`` as ``keywords``. It is written in the
same SQLite transaction as the records, so records and keywords never disagree.

A user's query text is never FTS5 syntax: it is cut into words (letters and digits, at most
:data:`MAX_TERMS` distinct ones), each word quoted as a phrase; quotes, ``*``, ``NEAR``,
``AND``/``OR``/``NOT``, ``-``, ``:`` and column names are plain words or separators. A query
without a word finds nothing. A document matches when it holds any of the words; its score is
BM25 (FTS5's ``bm25()``, negated: higher is better, k1 = 1.2, b = 0.75), the sum over the words
of each word's share.

:class:`WordScores` computes that sum word by word: FTS5 scores the documents of one word
(``bm25()`` over a one-phrase query is that word's share, with the whole index's statistics),
the shares are cached per store version (a write changes every document's statistics), and
numpy adds them up and takes the top, rarest word first: once the words left cannot lift a
document none of the words so far holds past the ``n``-th best score (MaxScore), they are
added for the remaining candidates only. A frequent word costs FTS5 a ``bm25()`` call per
document it is in (about 1.5 microseconds each); from the cache it costs an addition.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from typing import Literal, get_args

import numpy as np

__all__ = [
    "Tokenizer",
    "TOKENIZERS",
    "DEFAULT_TOKENIZER",
    "MAX_TERMS",
    "CACHE_POSTINGS",
    "check_tokenizer",
    "create_table",
    "query_words",
    "WordScores",
    "DELETE",
    "INSERT",
]

Tokenizer = Literal[
    "porter unicode61",
    "unicode61",
    "porter unicode61 remove_diacritics 2",
    "unicode61 remove_diacritics 2",
    "porter ascii",
    "ascii",
    "trigram",
]
TOKENIZERS: tuple[str, ...] = get_args(Tokenizer)
DEFAULT_TOKENIZER = "porter unicode61"
#: Distinct words of a query that are searched (the rest are ignored).
MAX_TERMS = 64
_WORD = re.compile(r"[^\W_]+")

#: A document's terms leave the index (before its row leaves ``docs``: the text is read there).
DELETE = "INSERT INTO keywords(keywords, rowid, text) SELECT 'delete', key, text FROM docs WHERE key = ?"
#: A document's terms enter the index.
INSERT = "INSERT INTO keywords(rowid, text) VALUES (?, ?)"


def check_tokenizer(tokenizer: object) -> str:
    """``tokenizer`` if it is one of :data:`TOKENIZERS`, else ``ValueError`` listing them."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"keywords must be None or one of {', '.join(map(repr, TOKENIZERS))}; got {tokenizer!r}.")
    return tokenizer


def create_table(tokenizer: str) -> str:
    """The statement that creates the keyword table (``tokenizer`` checked: it is never text a
    user or a file supplied)."""
    return (
        "CREATE VIRTUAL TABLE keywords USING fts5(text, content='docs', content_rowid='key', "
        f"tokenize='{check_tokenizer(tokenizer)}')"
    )


def query_words(text: str) -> list[str]:
    """The distinct words of a query text, at most :data:`MAX_TERMS`, in order."""
    return list(dict.fromkeys(_WORD.findall(text)))[:MAX_TERMS]


#: One word's documents and its BM25 share in each, in key order (``bm25()`` of a one-phrase
#: query: that phrase's term of the sum).
WORD_SQL = "SELECT rowid, -bm25(keywords) FROM keywords WHERE keywords MATCH ?"
#: Postings (document, share) the word cache of a store holds in all: 16 bytes each.
CACHE_POSTINGS = 1 << 22


class WordScores:
    """Each word's ``(keys, shares)`` at a store version, least recently used dropped first
    once the cache holds more than ``budget`` postings. Thread-safe."""

    def __init__(self, budget: int = CACHE_POSTINGS):
        self.budget = budget
        self._entries: OrderedDict[str, tuple[int, np.ndarray, np.ndarray]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.misses = 0  # words read from FTS5 (not from the cache)
        self.pruned = 0  # queries whose frequent words were looked up for candidates only

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query, word: str, version: int) -> tuple[np.ndarray, np.ndarray]:
        """The documents of ``word`` and its share in each (``query(sql, params)`` reads them
        when the cache has none for ``version``)."""
        with self._lock:
            hit = self._entries.get(word)
            if hit is not None and hit[0] == version:
                self._entries.move_to_end(word)
                return hit[1], hit[2]
        rows = query(WORD_SQL, ('"' + word.replace('"', '""') + '"',))
        self.misses += 1
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        shares = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
        if len(keys) > 1 and not (np.diff(keys) > 0).all():  # FTS5 gives them in key order
            order = np.argsort(keys, kind="stable")
            keys, shares = keys[order], shares[order]
        with self._lock:
            old = self._entries.pop(word, None)
            self._size -= 0 if old is None else len(old[1])
            if len(keys) <= self.budget:
                self._entries[word] = (version, keys, shares)
                self._size += len(keys)
            while self._size > self.budget:
                self._size -= len(self._entries.popitem(last=False)[1][1])
        return keys, shares

    def top(self, query, text: str, n: int, version: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The best ``n`` ``(key, BM25)`` of a query text (among the sorted keys ``allowed``),
        ties by key."""
        words = query_words(text)
        if not words or n == 0 or (allowed is not None and len(allowed) == 0):
            return []
        parts = [p for p in (self.get(query, w, version) for w in words) if len(p[0])]
        total = sum(len(k) for k, _ in parts)
        if not total:
            return []
        end = max(int(k[-1]) for k, _ in parts) + 1
        if end < 8 * total + 65536:  # keys dense enough to add up by index
            docs, scores = self._by_index(parts, n, end, allowed)
        else:
            keys, shares = np.concatenate([k for k, _ in parts]), np.concatenate([s for _, s in parts])
            docs, where = np.unique(keys, return_inverse=True)
            scores = np.bincount(where, weights=shares)
            if allowed is not None:
                inside = np.isin(docs, allowed, assume_unique=True)
                docs, scores = docs[inside], scores[inside]
        found = scores > 0  # every share is > 0 (FTS5 floors a word's IDF at 1e-6)
        docs, scores = docs[found], scores[found]
        if len(scores) > n:  # the candidates: the n best scores and any tied with the last
            cut = scores >= np.partition(scores, len(scores) - n)[len(scores) - n]
            docs, scores = docs[cut], scores[cut]
        order = np.lexsort((docs, -scores))[:n]
        return list(zip(docs[order].tolist(), scores[order].tolist()))

    def _by_index(self, parts, n: int, end: int, allowed) -> tuple[np.ndarray, np.ndarray]:
        """Candidate documents and their scores, added up in an array indexed by key, rarest
        word first. Once the words left could add at most ``rest`` (the sum of their largest
        shares) and the ``n``-th best score so far is above that, a document none of the words
        so far holds cannot reach the top ``n`` (MaxScore): the words left are then looked up
        for the candidates only, not added up over all their documents."""
        inside = None
        if allowed is not None:
            inside = np.zeros(end, dtype=bool)
            inside[allowed[allowed < end]] = True
        parts = sorted(parts, key=lambda p: len(p[0]))
        best = [float(s.max()) for _, s in parts]
        sums, touched, seen, i = np.zeros(end), np.zeros(end, dtype=bool), [], 0
        while True:
            keys, shares = parts[i]
            sums[keys] += shares  # a word's keys are distinct
            new = keys[~touched[keys]]
            touched[new] = True
            seen.append(new if inside is None else new[inside[new]])
            i += 1
            if i == len(parts) or sum(map(len, seen)) > len(parts[-1][0]):
                break  # the words left are as cheap to add up as to look up
            docs = np.concatenate(seen)
            if len(docs) < n:
                continue
            bar = np.partition(sums[docs], len(docs) - n)[len(docs) - n] * (1 - 1e-9)  # below the n-th best
            rest = math.fsum(best[i:])
            if rest < bar:
                docs = docs[sums[docs] + rest >= bar]
                wanted = np.zeros(end, dtype=bool)
                wanted[docs] = True
                for keys, shares in parts[i:]:
                    hit = wanted[keys]
                    sums[keys[hit]] += shares[hit]
                self.pruned += 1
                return docs, sums[docs]
        for keys, shares in parts[i:]:
            sums[keys] += shares
        docs = np.flatnonzero(sums) if inside is None else np.flatnonzero(inside & (sums > 0))
        return docs, sums[docs]
