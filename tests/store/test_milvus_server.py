"""The service on a real Milvus server (VECTOR_STORE=milvus://127.0.0.1:PORT): the same answers
as on FAISS, concurrent writers, and a kill -9 of the server in the middle of adds.

The server is the session's (`milvus_server`, tests/conftest.py), started by the first test that
needs it; the kill test restarts it before it ends, so later tests find it up. Each test copies a
small fixture index (FakeEncoder, 3 categories) into a collection of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, make_dataset

from indexer.pipeline.build import build_index
from indexer.store import open_store, route
from indexer.store.milvus import IVF_BUILD, MilvusIndexStore, MilvusLocation, SearchMemo, copy_to_milvus, drop

pytestmark = pytest.mark.milvus_server
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t"


@pytest.fixture
def fixture_index(tmp_path) -> Path:
    """A small FAISS index (12 products, 3 categories, photos) built with the FakeEncoder."""
    data = make_dataset(tmp_path / "data", per_category=4)
    build_index(data["folder"], tmp_path / "faiss", encoder=FakeEncoder(), progress=False)
    return tmp_path / "faiss"


@pytest.fixture
def server_copy(request, fixture_index, milvus_server):
    """The fixture index copied into a collection of the session's server; dropped afterwards."""
    loc = MilvusLocation.parse(milvus_server.uri, f"svc_{request.node.name[5:30].replace('-', '_')}")
    copy_to_milvus(open_store(fixture_index), loc, replace=True)
    yield loc
    drop(loc)


def app_client(index_dir: Path, vector_store: str | None = None):
    from service.app import create_app
    from service.config import Config

    index_dir.mkdir(parents=True, exist_ok=True)
    config = Config.from_env(index_dir=str(index_dir), api_token=TOKEN, vector_store=vector_store)
    return create_app(config, encoder=FakeEncoder()).test_client()


def milvus_uri(loc: MilvusLocation) -> str:
    return loc.uri.replace("http://", "milvus://") + "/" + loc.collection


def test_service_on_the_server_answers_as_on_faiss(fixture_index, server_copy, tmp_path):
    """Every product's title (and title + description) predicts the same category, confidence,
    decision and neighbours through either store; filtered search and similar products agree."""
    local = tmp_path / "local"
    faiss_client = app_client(fixture_index)
    server_client = app_client(local, milvus_uri(server_copy))
    try:
        products = open_store(fixture_index).products
        for product in products:
            for body in ({"title": product.name}, {"title": product.name, "description": product.description}):
                a = faiss_client.post("/api/v1/predict", json=body)
                b = server_client.post("/api/v1/predict", json=body)
                assert a.status_code == b.status_code == 200, b.get_data(as_text=True)
                ja, jb = a.get_json(), b.get_json()
                for key in ("category", "confidence", "decision"):
                    assert ja[key] == jb[key], (key, body)
                assert [n["id"] for n in ja["neighbors"]] == [n["id"] for n in jb["neighbors"]]
        query = {"title": products[0].name, "category": products[5].category, "k": 3}
        a = faiss_client.post("/api/v1/search", json=query).get_json()["results"]
        b = server_client.post("/api/v1/search", json=query).get_json()["results"]
        assert [r["id"] for r in a] == [r["id"] for r in b] and {r["category"] for r in b} == {products[5].category}
    finally:
        route(local, None)


WRITER = r"""
import json, os, sys, time
from pathlib import Path
sys.path[:0] = [os.environ["ROOT"], os.path.join(os.environ["ROOT"], "tests")]
from fakes import FakeEncoder
from service.app import create_app
from service.config import Config

index_dir, uri, prefix, count, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
config = Config.from_env(index_dir=index_dir, api_token="t", vector_store=uri)
client = create_app(config, encoder=FakeEncoder()).test_client()
assert client.get("/readyz").status_code == 200
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
statuses = {}
for i in range(count):
    pid = f"{prefix}{i:03d}"
    response = client.post(
        "/api/v1/products",
        headers={"Authorization": "Bearer t"},
        json={"id": pid, "title": f"garden hose {prefix} {i}", "category": "Garden >> Hoses"},
    )
    statuses[pid] = response.status_code
print(json.dumps(statuses), flush=True)
"""


def test_two_service_processes_adding_at_once_lose_nothing(server_copy, tmp_path):
    """Two service processes (one store each, one server) add 15 products each at the same
    moment: all 30 are acknowledged, all 30 are in the index at 30 distinct rows after the 12
    copied, and each process then sees the other's adds."""
    local, go, count = tmp_path / "local", tmp_path / "go", 15
    local.mkdir()
    env = dict(os.environ, ROOT=str(ROOT))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(local), milvus_uri(server_copy), prefix, str(count), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for prefix in ("a", "b")
    ]
    try:
        for writer in writers:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [writer.communicate(timeout=300) for writer in writers]
    finally:
        for writer in writers:
            writer.kill()
    statuses: dict[str, int] = {}
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err[-2000:]
        statuses.update(json.loads(out.strip().splitlines()[-1]))
    assert len(statuses) == 2 * count and set(statuses.values()) == {201}
    store = MilvusIndexStore.open(server_copy)
    rows = {pid: store.row_of(pid) for pid in statuses}
    assert sorted(rows.values()) == list(range(12, 12 + 2 * count))
    assert [p.id for p in store.products[12:]] == sorted(statuses, key=lambda pid: rows[pid])


def test_kill_9_during_adds_then_restart_loses_no_acknowledged_add(server_copy, milvus_server, tmp_path):
    """Adds run in a thread while the server is killed with SIGKILL, then restarted on the same
    ports and data. While it is away the service answers 503 problem+json; afterwards the same
    service (no restart of its own) answers again, every add it acknowledged (201) is in the
    index, and new adds go in."""
    local = tmp_path / "local"
    client = app_client(local, milvus_uri(server_copy))
    acknowledged: list[str] = []
    away: list[dict] = []
    stop = threading.Event()

    def add(i: int):
        pid = f"k{i:04d}"
        response = client.post(
            "/api/v1/products",
            headers={"Authorization": "Bearer t"},
            json={"id": pid, "title": f"garden hose {i}", "category": "Garden >> Hoses"},
        )
        if response.status_code == 201:
            acknowledged.append(pid)
        return response

    def adder():
        i = 0
        while not stop.is_set():
            response = add(i)
            if response.status_code != 201:
                away.append({**response.get_json(), "status": response.status_code, "mimetype": response.mimetype})
                time.sleep(0.2)
            i += 1

    thread = threading.Thread(target=adder, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acknowledged) >= 5, "no adds went in before the kill"
        milvus_server.kill()
        before = len(acknowledged)
        time.sleep(2)
        predicted = client.post("/api/v1/predict", json={"title": "garden hose"})
        assert predicted.status_code == 503 and predicted.mimetype == "application/problem+json"
        assert predicted.headers["Retry-After"] and "unavailable" in predicted.get_json()["detail"]
        assert len(acknowledged) <= before + 1  # at most the add in flight when the server died
        milvus_server.start(timeout=150, attempts=2)  # a supervisor's restart (tests/milvus_server.py)
        deadline = time.monotonic() + 180  # the server reloads its collections after a restart
        while time.monotonic() < deadline:
            if client.post("/api/v1/predict", json={"title": "garden hose"}).status_code == 200:
                break
            time.sleep(1)
        else:
            pytest.fail("the service did not answer again within 180 s of the server's restart")
        after = len(acknowledged)
        deadline = time.monotonic() + 120
        while len(acknowledged) < after + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(acknowledged) >= after + 3, "adds did not resume after the restart"
    finally:
        stop.set()
        thread.join(timeout=120)
        route(local, None)
        if milvus_server.pid is None:  # the later tests of the session share this server
            milvus_server.start(timeout=150, attempts=2)
    assert away and all(a["status"] == 503 and a["mimetype"] == "application/problem+json" for a in away), away[:3]
    assert all("127.0.0.1" not in a["detail"] for a in away)  # no internal address in the answer
    store = MilvusIndexStore.open(server_copy)
    missing = [pid for pid in acknowledged if store.row_of(pid) is None]
    assert not missing, f"acknowledged adds lost across the kill: {missing}"
    assert len(set(acknowledged)) == len(acknowledged)
    served = app_client(local, milvus_uri(server_copy))
    try:
        for pid in (acknowledged[0], acknowledged[-1]):
            assert served.get(f"/api/v1/products/{pid}").status_code == 200
    finally:
        route(local, None)


def fetch_refused(*args, **kwargs):
    raise AssertionError("a candidate's vector was fetched: the scoring search did not return it")


def test_indexed_copies_are_built_and_searched_with_their_own_parameters(milvus_server, tmp_path, monkeypatch):
    """The approximate index types `to-milvus --index-type` offers (HNSW; IVF_SQ8, a quarter of
    the memory, the 1M choice) are built over every sealed segment, searched with their own knob
    (MILVUS_EF, MILVUS_NPROBE), and find what exact search finds: each product's own vector first.
    Both copies are made before either is waited for (the server builds indexes in the background)."""
    from fakes import publish_fake

    knobs = {"HNSW": ("ef", 40), "IVF_SQ8": ("nprobe", 16)}
    monkeypatch.setenv("MILVUS_EF", "40")
    monkeypatch.setenv("MILVUS_NPROBE", "16")
    publish_fake(tmp_path / "faiss", n=2_400)  # image on every other product: 1,200 and 2,400 vectors
    faiss_store = open_store(tmp_path / "faiss")
    locs = {kind: MilvusLocation.parse(milvus_server.uri, f"indexed_{kind.lower()}") for kind in knobs}
    try:
        for kind, loc in locs.items():
            copy_to_milvus(faiss_store, loc, index_type=kind, replace=True)
        for kind, loc in locs.items():
            store = MilvusIndexStore.open(loc)
            client = store.modalities["text"].client
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                infos = [client.describe_index(loc.channel(m), "vector") for m in store.modalities]
                if all(int(i["indexed_rows"]) >= int(i["total_rows"]) > 0 for i in infos):
                    break
                time.sleep(1)
            assert [i["index_type"] for i in infos] == [kind] * len(infos), infos
            if kind == "IVF_SQ8":
                assert {int(i["nlist"]) for i in infos} == {IVF_BUILD["nlist"]}, infos
            assert [int(i["indexed_rows"]) for i in infos] == [c.ntotal for c in store.modalities.values()]
            assert store.manifest["store"]["index_type"] == kind
            knob, value = knobs[kind]
            for name, channel in store.modalities.items():
                assert channel.search_params == {"metric_type": "IP", "params": {knob: value}}
                positions = np.arange(0, channel.ntotal, channel.ntotal // 50)
                queries = np.asarray(faiss_store.modalities[name].vectors[positions], np.float32)
                _, rows = channel.search(queries, 10)
                want = np.asarray(faiss_store.modalities[name].rows)[positions]
                assert np.mean(rows[:, 0] == want) >= 0.95, (kind, name, rows[:, 0], want)
                # scoring candidates probes every list (EVERY_LIST, clamped to the index's nlist):
                # every asked row comes back from the server, none is fetched and scored here
                channel.memo = SearchMemo()
                monkeypatch.setattr(channel.vectors.source, "get", fetch_refused)
                asked = np.arange(0, channel.ntotal, 23)
                stored = np.asarray(faiss_store.modalities[name].vectors[asked], np.float32) @ queries[1]
                np.testing.assert_allclose(channel.similarity(queries[1], asked), stored, atol=0.03)
    finally:
        for loc in locs.values():
            drop(loc)
