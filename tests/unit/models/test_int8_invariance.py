"""INT8 embeddings of the real all-MiniLM-L6-v2: a text's vector does not depend on its batch
mates, and the shortest texts (empty, whitespace, a word) stay close to sentence-transformers'
FP32. Property-based: random texts, random batch compositions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant_retriever import _demo_corpus as corpus
from quant_retriever.models import load_encoder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DOCS = [d.text for d in corpus.stdlib_docstrings(300)]
WORDS = sorted({w.strip(".,:;()") for d in DOCS[:100] for w in d.split()} - {""})
BLANK = ["", " ", "   ", "\n", "\t \n  ", "\u3000", "\u00a0\u2003"]  # what the tokenizer sees as nothing

texts_strategy = st.one_of(
    st.sampled_from(DOCS),  # real docstrings, 10 to several hundred tokens (cut at 256)
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join),
    st.sampled_from(BLANK),
    st.text(max_size=40),  # any unicode, control characters included
)


@pytest.fixture(scope="module")
def int8(minilm_path):
    return load_encoder(minilm_path, "int8", device="cpu")


@pytest.fixture(scope="module")
def solo(int8):
    """``solo(text)``: the text's vector embedded alone, cached."""
    cache: dict[str, np.ndarray] = {}

    def get(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = int8.encode([text])[0]
        return cache[text]

    return get


@pytest.fixture(scope="module")
def reference(minilm_path):
    """sentence-transformers' own FP32 model, normalised embeddings."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(minilm_path, device="cpu")
    return lambda texts: model.encode(texts, normalize_embeddings=True, batch_size=32)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(texts_strategy, min_size=1, max_size=12), batch_size=st.integers(1, 16), seed=st.integers(0, 99))
def test_a_vector_does_not_depend_on_its_batch_mates(int8, solo, texts, batch_size, seed):
    random.Random(seed).shuffle(texts)
    batched = int8.encode(texts, batch_size=batch_size)
    for text, vector in zip(texts, batched):
        np.testing.assert_allclose(vector, solo(text), rtol=0, atol=1e-5, err_msg=repr(text[:60]))


@pytest.fixture(scope="module")
def short_and_long(int8) -> tuple[str, str]:
    """A docstring of about 60 tokens and the longest one."""
    tokenizer = int8.model.tokenizer
    lengths = {d: len(tokenizer(d)["input_ids"]) for d in DOCS}
    return next(d for d, n in lengths.items() if 55 <= n <= 65), max(DOCS, key=lengths.get)


def test_a_60_token_text_next_to_a_long_one(int8, solo, short_and_long):
    """The case reported: a ~60-token text batched with a longer one moved by 9.4e-3."""
    short, longest = short_and_long
    for batch in ([short, longest], [longest, short], [short, longest, short]):
        vectors = int8.encode(batch, batch_size=len(batch))
        for text, vector in zip(batch, vectors):
            assert np.abs(vector - solo(text)).max() <= 1e-5


def test_the_adapters_give_a_text_the_same_vector_alone_and_in_a_batch(int8, short_and_long):
    from quant_retriever.langchain import QuantizedEmbeddings
    from quant_retriever.llama_index import QuantizedEmbedding

    text, mates = short_and_long[0], [short_and_long[1], *DOCS[:4]]
    langchain, llama_index = QuantizedEmbeddings(encoder=int8), QuantizedEmbedding(encoder=int8)
    alone = np.asarray(langchain.embed_query(text))
    for vector in (
        langchain.embed_documents([*mates, text])[-1],
        llama_index.get_text_embedding_batch([text, *mates])[0],
        llama_index.get_query_embedding(text),
    ):
        assert np.abs(np.asarray(vector) - alone).max() <= 1e-5


def test_blank_texts_are_as_close_to_fp32_as_other_short_texts(int8, reference):
    """A blank text is [CLS] [SEP] alone: the two tokens whose hidden states carry a massive
    activation. Quantized with one scale per token, they rounded to cosine 0.984."""
    rng = random.Random(0)
    short = [" ".join(rng.sample(WORDS, rng.randint(1, 4))) for _ in range(60)] + ["?", "a", "OK"]
    texts = BLANK + short
    cosines = np.einsum("nd,nd->n", int8.encode(texts), reference(texts))
    blank, words = cosines[: len(BLANK)], cosines[len(BLANK) :]
    np.testing.assert_allclose(blank, blank[0], atol=1e-6)  # all the same two tokens
    assert blank[0] >= 0.993, blank[0]
    assert words.min() >= 0.993 and words.mean() >= 0.998, (words.min(), words.mean())
    assert blank[0] >= words.min() - 0.001  # not an outlier among texts of a few words


def test_long_texts_stay_within_a_thousandth_of_fp32(int8, reference):
    texts = DOCS[:120]
    cosines = np.einsum("nd,nd->n", int8.encode(texts), reference(texts))
    assert cosines.mean() >= 0.999 and cosines.min() >= 0.998, (cosines.mean(), cosines.min())
