"""QuantizedEmbeddings against LangChain's standard embeddings test suites, on real MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from quant_retriever.langchain import QuantizedEmbeddings
from quant_retriever.models import load_encoder
from quant_retriever.models.settings import minilm_path

MINILM = minilm_path()  # a local path, so the suites construct the model offline


class TestQuantizedEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[QuantizedEmbeddings]:
        return QuantizedEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": MINILM, "precision": "fp32", "device": "cpu"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"QUANT_RETRIEVER_MODEL": MINILM, "QUANT_RETRIEVER_PRECISION": "bf16", "QUANT_RETRIEVER_DEVICE": "cpu"},
            {},
            {"model_name": MINILM, "precision": "bf16", "device": "cpu"},
        )


class TestQuantizedEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[QuantizedEmbeddings]:
        return QuantizedEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": MINILM, "precision": "int8", "device": "cpu"}


@pytest.fixture(scope="module")
def int8_encoder():
    return load_encoder(MINILM, "int8", device="cpu", query_prompt="query: ", document_prompt="passage: ")


def test_shared_encoder_and_prompts(int8_encoder):
    first, second = QuantizedEmbeddings(encoder=int8_encoder), QuantizedEmbeddings(encoder=int8_encoder, batch_size=2)
    assert first.encoder is second.encoder is int8_encoder
    assert (first.model_name, first.precision, first.device) == (MINILM, "int8", "cpu")
    docs = ["The json module encodes and decodes JSON.", "The csv module reads comma-separated files.", "x"]
    vectors = second.embed_documents(docs)
    assert len(vectors) == 3 and all(len(v) == 384 and isinstance(v[0], float) for v in vectors)
    # Same batches as the adapter's: int8 rounding makes a vector depend slightly (~1e-3) on
    # the padding of the batch it was in.
    expected = int8_encoder.encode(["passage: " + d for d in docs], batch_size=2)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    query = int8_encoder.encode(["query: parse json"], batch_size=1)[0]
    np.testing.assert_allclose(first.embed_query("parse json"), query, atol=1e-6)


def test_query_finds_the_matching_document(int8_encoder):
    embeddings = QuantizedEmbeddings(encoder=int8_encoder)
    docs = [
        "Paris is the capital and largest city of France.",
        "Photosynthesis turns light, water and carbon dioxide into sugar.",
        "The TCP handshake opens a connection with SYN, SYN-ACK and ACK.",
    ]
    scores = np.asarray(embeddings.embed_documents(docs)) @ np.asarray(
        embeddings.embed_query("How do plants make sugar from light?")
    )
    assert int(np.argmax(scores)) == 1


def test_adapter_rejects_bad_settings(int8_encoder):
    with pytest.raises(ValueError, match="either encoder= or the settings"):
        QuantizedEmbeddings(encoder=int8_encoder, precision="fp32")
    with pytest.raises(ValueError, match="precision"):
        QuantizedEmbeddings(model_name=MINILM, precision="int3")
    with pytest.raises(ValueError, match="batch_size"):
        QuantizedEmbeddings(encoder=int8_encoder, batch_size=0)
    with pytest.raises(TypeError, match="text must be a str"):
        QuantizedEmbeddings(encoder=int8_encoder).embed_query(["not", "a", "str"])


def test_model_name_may_be_a_path(int8_encoder):
    """Like QuantizedEmbedding (LlamaIndex) and load_encoder: any os.PathLike names a local model."""
    from pathlib import Path

    embeddings = QuantizedEmbeddings(model_name=Path(MINILM), precision="fp32", device="cpu")
    assert embeddings.model_name == MINILM and isinstance(embeddings.model_name, str)
    assert len(embeddings.embed_query("a path works")) == 384
