"""QuantizedEmbedding inside a real LlamaIndex VectorStoreIndex, on real MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding

from quant_retriever.llama_index import QuantizedEmbedding
from quant_retriever.models import load_encoder

DOCS = {
    "france": "Paris is the capital and largest city of France, on the river Seine.",
    "plants": "Photosynthesis lets plants turn light, water and carbon dioxide into sugar and oxygen.",
    "tcp": "A TCP connection opens with a three-way handshake: SYN, SYN-ACK and ACK.",
    "violin": "The violin is a bowed string instrument with four strings tuned in fifths.",
    "python": "Python's json module encodes Python objects as JSON text and decodes them back.",
}


@pytest.fixture(scope="module")
def int8_embedding(minilm_path):
    return QuantizedEmbedding(model_name=minilm_path, precision="int8", device="cpu", embed_batch_size=4)


def test_is_a_llama_index_embedding(int8_embedding, minilm_path):
    assert isinstance(int8_embedding, BaseEmbedding)
    assert (int8_embedding.model_name, int8_embedding.precision, int8_embedding.device) == (minilm_path, "int8", "cpu")
    assert int8_embedding.class_name() == "QuantizedEmbedding"


def test_vector_store_index_retrieves_the_matching_document(int8_embedding):
    documents = [Document(text=text, id_=key) for key, text in DOCS.items()]
    index = VectorStoreIndex.from_documents(documents, embed_model=int8_embedding)
    retriever = index.as_retriever(similarity_top_k=1)
    for query, expected in [
        ("How do plants make sugar from sunlight?", "plants"),
        ("What is the capital city of France?", "france"),
        ("How does a TCP handshake work?", "tcp"),
    ]:
        (hit,) = retriever.retrieve(query)
        assert hit.node.ref_doc_id == expected and hit.node.get_content() == DOCS[expected]


def test_batched_text_embeddings_equal_one_at_a_time(minilm_path):
    # fp32: a quantized model's rounding makes vectors depend slightly on their batch's padding
    embedding = QuantizedEmbedding(model_name=minilm_path, precision="fp32", device="cpu", embed_batch_size=3)
    texts = list(DOCS.values())
    batched = embedding.get_text_embedding_batch(texts)
    assert len(batched) == 5 and all(len(v) == 384 and isinstance(v[0], float) for v in batched)
    np.testing.assert_allclose(batched, [embedding.get_text_embedding(t) for t in texts], atol=1e-5)


async def test_async_embeddings_match_sync(int8_embedding):
    query = await int8_embedding.aget_query_embedding("capital of France")
    assert len(query) == 384 and isinstance(query[0], float)
    np.testing.assert_allclose(query, int8_embedding.get_query_embedding("capital of France"), atol=1e-6)
    text = await int8_embedding.aget_text_embedding(DOCS["violin"])
    np.testing.assert_allclose(text, int8_embedding.get_text_embedding(DOCS["violin"]), atol=1e-6)
    batch = await int8_embedding.aget_text_embedding_batch(list(DOCS.values()))
    assert len(batch) == 5


def test_shared_encoder_and_prompts(minilm_path):
    encoder = load_encoder(minilm_path, "fp32", device="cpu", query_prompt="query: ", document_prompt="passage: ")
    embedding = QuantizedEmbedding(encoder=encoder)
    assert embedding.encoder is encoder and embedding.query_prompt == "query: "
    np.testing.assert_allclose(embedding.get_query_embedding("json"), encoder.encode(["query: json"])[0], atol=1e-6)
    np.testing.assert_allclose(embedding.get_text_embedding("json"), encoder.encode(["passage: json"])[0], atol=1e-6)
    with pytest.raises(ValueError, match="either encoder= or the settings"):
        QuantizedEmbedding(encoder=encoder, model_name=minilm_path)
