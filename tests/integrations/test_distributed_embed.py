"""embed_corpus on a real local Ray instance: the real MiniLM model on a Ray Data actor pool,
written into a ShardedStore, compared with embedding in this process."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="the distributed tests need the 'ray' extra: pip install 'quant-retriever[ray]'"
)

from quant_retriever import _demo_corpus as corpus  # noqa: E402
from quant_retriever import load_encoder  # noqa: E402
from quant_retriever.distributed import ShardedStore, embed_corpus  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_data_embedding_matches_single_process(minilm_path, capfd):
    docs = corpus.stdlib_docstrings(limit=150)
    ids = [d.id for d in docs]
    texts = [d.text[:400] for d in docs]
    metadatas = [{"source": d.source, "n": i} for i, d in enumerate(docs)]
    store = ShardedStore(codec="fp32", shards=2)  # fp32 codes: the stored vectors are the embeddings
    # the two shard actors reserve one of the two CPUs; two embedding actors share the other
    report = embed_corpus(
        store, ids, texts, metadatas, model=minilm_path, precision="int8", batch_size=16, actors=2, actor_cpus=0.5
    )
    assert (report.texts, report.dim, report.actors) == (150, 384, 2) and report.texts_per_second > 0
    assert "embedding (ray): 100%" in capfd.readouterr().err  # one progress bar, ours

    assert len(store) == 150 and min(store.shard_sizes()) > 0
    records = store.get(ids)
    assert [(r.id, r.text, r.metadata) for r in records] == list(zip(ids, texts, metadatas))
    stored = store.vectors(records)
    encoder = load_encoder(minilm_path, precision="int8")
    # the actors embed batches of 16 texts taken in order of length: the same here, equal
    order = np.argsort([len(t) for t in texts], kind="stable")
    same_batches = np.zeros_like(stored)
    for a in range(0, 150, 16):
        same_batches[order[a : a + 16]] = encoder.encode_documents([texts[i] for i in order[a : a + 16]], 16)
    np.testing.assert_allclose(stored, same_batches, atol=1e-5)
    # INT8 activations depend on the padding within a batch, so other batches differ a little
    one_call = encoder.encode_documents(texts, batch_size=16)
    assert (np.sum(stored * one_call, axis=1) > 0.99).all()
    hits = store.search(one_call[:5], k=1)
    assert [h[0][0].id for h in hits] == ids[:5]

    # nothing to embed: no pool is started; bad input fails before any work
    assert embed_corpus(store, [], [], model=minilm_path).texts == 0
    for bad, err in (
        (dict(ids=["a", "b"], texts=["x"]), ValueError),
        (dict(ids=["a", "a"], texts=["x", "y"]), ValueError),
        (dict(ids=["a"], texts=["x"], batch_size=0), ValueError),
        (dict(ids=["a"], texts=["x"], model=3), TypeError),
    ):
        with pytest.raises(err):
            embed_corpus(store, **{"model": minilm_path, **bad})
    with pytest.raises(TypeError, match="ShardedStore or QuantizedStore"):
        embed_corpus({}, ["a"], ["x"], model=minilm_path)
    assert len(store) == 150
    store.close()


def test_the_cli_indexes_into_a_sharded_store_and_queries_it(tmp_path, minilm_path, capsys):
    """``quant-retriever index --ray --shards 2``, then ``query``: the same chunks and the same
    answers as a plain store built from the same files."""
    import json

    from quant_retriever import cli

    docs = tmp_path / "docs"
    docs.mkdir()
    for d in corpus.stdlib_docstrings(limit=40):
        (docs / f"{d.id}.txt").write_text(d.text, encoding="utf-8")
    runs = {}
    for name, extra in (("sharded", ["--ray", "--shards", "2"]), ("plain", [])):
        store = tmp_path / name
        args = ["index", str(docs), "--store", str(store), "--model", minilm_path, "--precision", "fp32", "--json"]
        assert cli.main(args + extra) == 0
        indexed = json.loads(capsys.readouterr().out)
        assert cli.main(["query", "json decoder", "--store", str(store), "-k", "3", "--json"]) == 0
        runs[name] = (indexed, json.loads(capsys.readouterr().out))
    sharded, plain = runs["sharded"], runs["plain"]
    assert sharded[0]["records"] == plain[0]["records"] == sharded[0]["embedded"] >= 40
    assert [h["id"] for h in sharded[1]["results"][0]["hits"]] == [h["id"] for h in plain[1]["results"][0]["hits"]]
    assert cli.main(args[:-1] + ["--shards", "3", "--json"]) != 0  # --shards without --ray
