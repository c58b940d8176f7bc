"""Shared fixtures: the real all-MiniLM-L6-v2 model (offline) and a real corpus embedded with it."""

from __future__ import annotations

import functools
import os
import platform
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from quant_retriever import _demo_corpus as corpus
from quant_retriever.kernels import linear, scans
from quant_retriever.models.settings import minilm_path as bundled_minilm_path


def pytest_addoption(parser):
    parser.addoption("--crash-trials", type=int, default=12, help="SIGKILL trials in test_crash.py (full run: 50)")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return bundled_minilm_path()


@pytest.fixture(scope="session")
def corpus_docs():
    """At least 5,000 real docstrings of the Python standard library."""
    docs = corpus.stdlib_docstrings()
    assert len(docs) >= 5000
    return docs


@pytest.fixture(scope="session")
def corpus_vectors(corpus_docs):
    """(docs [n, 384], queries [q, 384]) float32 unit vectors from the real MiniLM model."""
    queries = corpus.stdlib_queries(corpus_docs, 200)
    return corpus.embed_cached([d.text for d in corpus_docs]), corpus.embed_cached(queries)


@pytest.fixture
def rng():
    torch.manual_seed(0)
    return np.random.default_rng(0)


LIBRARIES = (scans.LIBRARY, linear.LIBRARY)


@functools.cache
def portable_kernels(library):
    """The same kernels built for baseline x86-64: no AVX-512, no F16C, so their fallbacks run."""
    return library.build("x86-64")


@pytest.fixture(params=["native", "portable", "eager"])
def kernel_path(request, monkeypatch):
    """Run a test through the native CPU kernels, their portable build and plain torch."""
    if request.param == "eager":
        monkeypatch.setenv("QUANT_RETRIEVER_NATIVE", "0")
    elif not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler: native kernels unavailable")
    elif request.param == "native":
        assert all(lib.get() is not None for lib in LIBRARIES), "a C compiler is here, so the kernels must build"
    elif platform.machine() not in {"x86_64", "AMD64"}:
        pytest.skip("the portable build targets x86-64")
    else:
        for lib in LIBRARIES:
            monkeypatch.setattr(lib, "_tried", True)
            monkeypatch.setattr(lib, "_lib", portable_kernels(lib))
    return request.param


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> str:
    """A small randomly initialised BERT cross-encoder (one score per pair, 3 blocks of 64
    dimensions, all-MiniLM-L6-v2's tokenizer cut at 128 tokens) saved as a Hugging Face model
    directory, for loading through the real loading code. Its weights are drawn wider than
    BERT's default (0.1, not 0.02), so that its scores spread out and orderings mean something."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny_cross_encoder")
    tokenizer = AutoTokenizer.from_pretrained(bundled_minilm_path())
    tokenizer.model_max_length = 128
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,  # as BERT: a caller that asks for 512 tokens gets them
        num_labels=1,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
