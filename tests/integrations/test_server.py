"""``quant-retriever serve`` as its users meet it: a real uvicorn in a subprocess on a free
loopback port, real stores on disk, the framework adapters over ``RemoteStore``, auth, limits,
and signals (SIGTERM drains, SIGKILL loses no acknowledged write)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'server' extra")
pytest.importorskip("uvicorn", reason="the server tests need the 'server' extra")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import VectorStoreIntegrationTests  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from quant_retriever import load_encoder  # noqa: E402
from quant_retriever.langchain import QuantizedEmbeddings  # noqa: E402
from quant_retriever.langchain import QuantizedVectorStore as LangChainStore  # noqa: E402
from quant_retriever.llama_index import QuantizedVectorStore as LlamaStore  # noqa: E402
from quant_retriever.server import RemoteStore  # noqa: E402
from quant_retriever.store import And, Cond, QuantizedStore  # noqa: E402

KEY = "k" * 8 + "-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(store: Path, *args: str, env: dict | None = None, model: bool = False, wait: float = 120.0):
    """A ``quant-retriever serve`` subprocess; yields ``(url, process)`` once ``/healthz`` answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "quant_retriever", "serve", "--store", str(store), "--port", str(port), *args]
    if not model:
        cmd.append("--no-model")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def remote(tmp_path_factory, name: str):
    with server(tmp_path_factory.mktemp(name) / "store") as (url, _):
        store = RemoteStore(url)
        yield store
        store.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server (MiniLM's 384 dimensions) for the tests that only need an empty store."""
    with remote(tmp_path_factory, "shared") as store:
        yield store


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    with remote(tmp_path_factory, "standard") as store:
        yield store


class TestRemoteLangChainStandard(VectorStoreIntegrationTests):
    """The langchain-tests suite against a running server, emptied before each test."""

    @pytest.fixture()
    def vectorstore(self, standard):
        standard.clear()
        yield LangChainStore(self.get_embeddings(), store=standard)


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return load_encoder(minilm_path, precision="fp32")


def test_langchain_round_trip_matches_an_in_process_store(shared, encoder, corpus_docs, tmp_path):
    """Documents added in batches through the LangChain store over HTTP are found as an
    in-process store finds them (same ids and scores), with filters and deletes."""
    shared.clear()
    emb = QuantizedEmbeddings(encoder=encoder)
    docs = [
        Document(id=f"d{i}", page_content=t, metadata={"i": i, "even": i % 2 == 0})
        for i, t in enumerate(d.text for d in corpus_docs[:120])
    ]
    remote = LangChainStore(emb, store=shared)
    local = LangChainStore(emb, path=tmp_path / "local")
    for i in range(0, len(docs), 50):
        remote.add_documents(docs[i : i + 50])
        local.add_documents(docs[i : i + 50])
    for query in ["parse a JSON document", "open a file", "random numbers"]:
        for flt in (None, {"even": True}, {"i": {"$lt": 30}}):
            got = remote.similarity_search_with_score(query, k=5, filter=flt)
            want = local.similarity_search_with_score(query, k=5, filter=flt)
            assert [d.id for d, _ in got] == [d.id for d, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-6)
    remote.delete(["d0", "d1"])
    assert remote.get_by_ids(["d0", "d2"])[0].id == "d2"
    assert len(remote.get_by_ids(["d0", "d1"])) == 0
    assert {d.id for d in remote.max_marginal_relevance_search("open a file", k=3)} <= {d.id for d in docs}
    hybrid = remote.hybrid_search("json decoder", k=3)
    assert len(hybrid) == 3


def test_llama_index_round_trip(shared, encoder, corpus_docs):
    shared.clear()
    texts = [d.text for d in corpus_docs[:60]]
    vectors = encoder.encode(texts)
    nodes = [
        TextNode(id_=f"n{i}", text=t, embedding=v.tolist(), metadata={"i": i})
        for i, (t, v) in enumerate(zip(texts, vectors))
    ]
    store = LlamaStore(store=shared)
    assert store.add(nodes) == [n.id_ for n in nodes]
    q = encoder.encode(["parse a JSON document"])[0].tolist()
    res = store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=4))
    assert len(res.ids) == 4 and res.nodes[0].text in texts
    filtered = store.query(
        VectorStoreQuery(
            query_embedding=q,
            similarity_top_k=4,
            filters=MetadataFilters(filters=[MetadataFilter(key="i", value=10, operator=FilterOperator.LT)]),
        )
    )
    assert all(n.metadata["i"] < 10 for n in filtered.nodes)
    store.delete_nodes(["n0", "n1"])
    assert shared.count() == 58


def test_filters_and_records_cross_the_wire_unchanged(shared):
    """Metadata of every JSON kind, and filters of every shape, read back as written."""
    shared.clear()
    meta = [{"b": True, "n": 1, "f": 1.5, "s": "x", "l": [1, "a"], "o": {"k": [None]}, "z": None}, {"n": True}]
    shared.upsert(["a", "b"], np.eye(2, 384, dtype=np.float32), ["one", "two"], meta)
    assert [r.metadata for r in shared.get(["a", "b"])] == meta
    assert [r.id for r in shared.get(where=Cond("n", "eq", 1))] == ["a"]  # True is not 1
    assert [r.id for r in shared.get(where=Cond("n", "eq", True))] == ["b"]
    tree = And((Cond("l", "contains", "a"), Cond("s", "in", ["x", "y"])))
    assert shared.count(tree) == 1


def test_auth_is_required_and_refused(tmp_path):
    with server(tmp_path / "s", env={"QUANT_RETRIEVER_API_KEY": KEY}) as (url, _):
        assert httpx.get(f"{url}/healthz").status_code == 200
        for headers in ({}, {"api-key": "wrong"}, {"Authorization": "Bearer " + KEY[:-1]}):
            r = httpx.get(f"{url}/info", headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]
        assert httpx.get(f"{url}/info", headers={"api-key": KEY}).status_code == 200
        assert httpx.get(f"{url}/info", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        with pytest.raises(PermissionError):
            RemoteStore(url)
        assert RemoteStore(url, api_key=KEY).count() == 0


def test_binding_beyond_loopback_needs_a_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QUANT_RETRIEVER_API_KEY"}
    cmd = [sys.executable, "-m", "quant_retriever", "serve", "--store", str(tmp_path / "s"), "--host", "0.0.0.0"]
    out = subprocess.run(cmd + ["--no-model"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "needs an API key" in out.stderr
    assert not (tmp_path / "s").exists()  # refused before anything was created
    short = tmp_path / "key"
    short.write_text("short\n")
    out = subprocess.run(cmd + ["--api-key-file", str(short)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "at least 16" in out.stderr
    link = tmp_path / "link"
    link.symlink_to(short)
    out = subprocess.run(cmd + ["--api-key-file", str(link)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "not a regular file" in out.stderr


def test_limits_and_bad_requests_get_json_4xx_and_change_nothing(tmp_path):
    with server(tmp_path / "s", "--max-body-mb", "1", "--max-batch", "10", "--max-k", "50") as (url, _):
        ok = {"ids": ["a"], "texts": ["t"], "vectors": [[0.5] * 4]}
        assert httpx.post(f"{url}/documents", json=ok).status_code == 200
        bad = [
            ("POST", "/documents", {"ids": [str(i) for i in range(11)], "texts": ["t"] * 11}, 422),  # batch
            ("POST", "/search", {"vectors": [[1.0] * 4], "k": 51}, 422),  # k
            ("POST", "/search", {"vectors": [[1.0] * 4], "k": 1, "where": _deep(100)}, 400),  # filter depth
            ("POST", "/search", {"vectors": [[1.0] * 3]}, 400),  # dimension
            ("POST", "/search", {"vectors": [[1.0] * 4], "bogus": 1}, 422),  # unknown field
            ("POST", "/search", {"vectors": "nope"}, 422),
            ("POST", "/search", {"vectors": [[1.0] * 4], "where": {"key": "a", "op": "lt", "value": [1]}}, 400),
            ("POST", "/documents", {"ids": ["a", "a"], "texts": ["t", "u"], "vectors": [[1.0] * 4] * 2}, 400),
            ("POST", "/documents", {"ids": ["b"], "texts": ["t"], "vectors": [[1.0] * 5]}, 400),
            ("POST", "/documents/delete", {}, 400),
            ("GET", "/nothing", None, 404),
            ("PUT", "/info", None, 405),
        ]
        for method, path, body, status in bad:
            r = httpx.request(method, url + path, json=body)
            assert r.status_code == status, (path, body, r.text)
            assert isinstance(r.json()["error"], str) and "Traceback" not in r.text
        r = httpx.post(f"{url}/documents", content=b'{"ids": [' + b'"x",' * 300_000 + b'"y"]}')
        assert r.status_code == 413 and "limited" in r.json()["error"]
        r = httpx.post(f"{url}/search", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = httpx.post(f"{url}/documents", content=_chunks(2 << 20), headers={"content-type": "application/json"})
        assert r.status_code == 413  # no content-length: counted as it arrives
        assert RemoteStore(url).count() == 1  # nothing half-applied
        client = RemoteStore(url)  # pages and batches within this server's limit of 10
        ids = [f"b{i:02d}" for i in range(25)]
        assert client.upsert(ids, _rows(25, 4), ids) == ids
        assert len(httpx.post(f"{url}/documents/get", json={}).json()["records"]) == 10  # a bounded page
        assert [r.id for r in client.get()] == ["a", *ids]
        assert [r.id for r in client.get(ids[::-1])] == ids[::-1]
        assert client.vectors(client.get(ids)).shape == (25, 4)
        assert sorted(client.delete(ids[:12])) == ids[:12] and client.count() == 14


def _deep(depth: int) -> dict:
    node: dict = {"key": "a", "op": "eq", "value": 1}
    for _ in range(depth):
        node = {"not": node}
    return node


def _chunks(total: int):
    yield b'{"ids": ["'
    for _ in range(total // 65536):
        yield b"x" * 65536
    yield b'"], "texts": ["t"]}'


def test_read_only_server_refuses_writes(tmp_path):
    path = tmp_path / "s"
    with QuantizedStore(path=path) as s:
        s.upsert(["a"], np.ones((1, 4), np.float32), ["t"])
    with server(path, "--read-only") as (url, _):
        store = RemoteStore(url)
        assert store.read_only and store.count() == 1
        with pytest.raises(PermissionError, match="read-only"):
            store.upsert(["b"], np.ones((1, 4), np.float32), ["u"])
        with pytest.raises(PermissionError):
            store.delete(["a"])


def test_server_embeds_texts_with_the_stores_model(tmp_path, minilm_path):
    """Texts sent without vectors are embedded by the server's model (the store records it),
    and ``query --url`` asks the running server."""
    with server(tmp_path / "s", "--model", minilm_path, model=True) as (url, _):
        store = RemoteStore(url)
        assert store.server_info()["model"] is not None
        r = httpx.post(
            f"{url}/documents", json={"ids": ["j", "f"], "texts": ["parse a JSON document", "open a file on disk"]}
        )
        assert r.status_code == 200
        hits = httpx.post(f"{url}/search", json={"texts": ["json parsing"], "k": 1}).json()["results"]
        assert hits[0][0]["id"] == "j"
        out = subprocess.run(
            [sys.executable, "-m", "quant_retriever", "query", "--url", url, "reading files", "-k", "1", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert '"id": "f"' in out.stdout


def _rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _writer(url: str, acked: list, stop: threading.Event, prefix: str) -> None:
    store = RemoteStore(url, timeout=30)
    i = 0
    while not stop.is_set():
        ids = [f"{prefix}{i}-{j}" for j in range(20)]
        try:
            store.upsert(ids, _rows(20, 16, i), ids)
        except Exception:
            return  # the server went away: this batch was not acknowledged
        acked.extend(ids)
        i += 1


def test_sigterm_drains_writes_in_flight_and_closes_the_store(tmp_path):
    path = tmp_path / "s"
    with server(path) as (url, proc):
        acked: list[str] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_writer, args=(url, acked, stop, f"w{t}-")) for t in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        # a request in flight when the signal comes: its body half sent, the rest after the signal
        big = [f"big-{i}" for i in range(2000)]
        payload = json.dumps({"ids": big, "texts": big, "vectors": _rows(2000, 16).tolist()}).encode()
        started, resume, answer = threading.Event(), threading.Event(), {}

        def body():
            yield payload[: len(payload) // 2]
            started.set()
            resume.wait(30)
            yield payload[len(payload) // 2 :]

        slow = threading.Thread(
            target=lambda: answer.update(
                r=httpx.post(
                    f"{url}/documents", content=body(), headers={"content-type": "application/json"}, timeout=60
                )
            )
        )
        slow.start()
        assert started.wait(30)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        resume.set()
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        stop.set()
        for t in [*threads, slow]:
            t.join(60)
        output = proc.stdout.read()
    assert "store closed" in output and acked
    assert answer["r"].status_code == 200 and answer["r"].json()["ids"] == big  # answered, not cut
    with QuantizedStore.open(path) as store:  # closed cleanly: it opens for writing at once
        assert len(store.get(acked + big)) == len(acked) + len(big)
        assert store.verify() == []


def test_sigkill_loses_no_acknowledged_write(tmp_path):
    path = tmp_path / "s"
    acked: list[str] = []
    with server(path) as (url, proc):
        stop = threading.Event()
        threads = [threading.Thread(target=_writer, args=(url, acked, stop, f"k{t}-")) for t in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        stop.set()
        for t in threads:
            t.join(60)
    assert acked
    with server(path) as (url, _):  # a restart reconciles whatever the kill interrupted
        store = RemoteStore(url)
        assert {r.id for r in store.get(acked)} == set(acked)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A server with a few documents (8-d), and its OpenAPI schema as schemathesis reads it."""
    schemathesis = pytest.importorskip("schemathesis")
    path = tmp_path_factory.mktemp("fuzz") / "store"
    with QuantizedStore(path=path) as s:
        s.upsert(
            [f"d{i}" for i in range(20)], _rows(20, 8), [f"text {i}" for i in range(20)], [{"i": i} for i in range(20)]
        )
    with server(path, "--max-batch", "64", "--max-k", "100", "--max-body-mb", "1") as (url, _):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        schema.config.base_url = url
        yield schema


def test_api_fuzzed_from_its_schema(api):
    """Property-based requests, generated by schemathesis from the server's OpenAPI schema,
    for every operation: never a 5xx, every response (errors included) matches the schema,
    and requests outside the schema are refused. (Driven with hypothesis directly:
    schemathesis's pytest plugin does not load under this pytest.)"""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            # schema-valid is not always valid: mismatched lengths, a wrong dimension get a 400
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()


def test_a_slow_client_blocks_no_one_and_async_calls_work(shared):
    """While one client sends its body slowly (a write, paused half way), others search and
    read at once; the async methods of RemoteStore give what the sync ones give."""
    import asyncio

    shared.clear()
    shared.upsert(["a", "b"], np.eye(2, 384, dtype=np.float32), ["one", "two"])
    payload = json.dumps({"ids": ["slow"], "texts": ["t"], "vectors": np.ones((1, 384)).tolist()}).encode()
    started, resume, answer = threading.Event(), threading.Event(), {}

    def body():
        yield payload[:100]
        started.set()
        resume.wait(30)
        yield payload[100:]

    slow = threading.Thread(
        target=lambda: answer.update(
            r=httpx.post(f"{shared.url}/documents", content=body(), headers={"content-type": "application/json"})
        )
    )
    slow.start()
    assert started.wait(30)
    t0 = time.monotonic()
    hits = shared.search(np.eye(1, 384, dtype=np.float32), k=1)
    shared.upsert(["c"], np.eye(1, 384, k=2, dtype=np.float32), ["three"])  # a write, too, is not held up
    assert time.monotonic() - t0 < 5 and hits[0][0][0].id == "a"
    resume.set()
    slow.join(30)
    assert answer["r"].status_code == 200

    async def both():
        found = await shared.asearch(np.eye(1, 384, dtype=np.float32), k=2)
        got = await shared.aget(["b", "slow"])
        ids = await shared.aupsert(["d"], np.eye(1, 384, k=3, dtype=np.float32), ["four"])
        words = await shared.akeyword_search(["three"], k=1)
        await shared.aclose()
        return found, got, ids, words

    found, got, ids, words = asyncio.run(both())
    assert [r.id for r, _ in found[0]] == [r.id for r, _ in shared.search(np.eye(1, 384, dtype=np.float32), k=2)[0]]
    assert [r.id for r in got] == ["b", "slow"] and ids == ["d"] and words[0][0][0].id == "c"


def test_long_reads_come_in_pages_and_big_searches_are_bounded(shared):
    """A read of every record pages through the server's bounded pages (in order, nothing
    twice); a search asking for more hits than the limit (queries x k) gets a 400."""
    shared.clear()
    ids = [f"p{i:05d}" for i in range(2500)]
    shared.upsert(ids, _rows(2500, 384), ids, [{"i": i} for i in range(2500)])
    assert [r.id for r in shared.get()] == ids
    assert [r.id for r in shared.get(limit=1500, offset=100)] == ids[100:1600]
    assert [r.id for r in shared.get(where=Cond("i", "gte", 1000), offset=1)] == ids[1001:]
    assert len(list(shared.records())) == 2500
    with pytest.raises(ValueError, match="at most 100000 hits"):
        shared.search(_rows(20, 384), k=6000)
