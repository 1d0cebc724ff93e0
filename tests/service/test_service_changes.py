"""Correcting and deleting products through the API (PATCH / DELETE /api/v1/products/<id>):
the next request of every app instance sees the change, refused changes answer problem+json
and change nothing, and each change is in the audit trail as the writers' token.

A small fake index (no models), on the local FAISS store and on Milvus Lite."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeEncoder, make_dataset

from indexer.pipeline.build import build_index
from indexer.store import AuditLog, factory, open_store
from service.app import create_app
from service.config import Config

TOKEN = "change-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """A fake index built once (copied per test: the tests write to it)."""
    folder = tmp_path_factory.mktemp("changes")
    data = make_dataset(folder / "data", per_category=4)
    build_index(data["folder"], folder / "index", encoder=FakeEncoder(), progress=False)
    return folder / "index", data


@pytest.fixture()
def index_dir(built, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(built[0], tmp_path / "index"))


@pytest.fixture()
def rows(built) -> list[dict]:
    return built[1]["rows"]


def make_client(index_dir: Path, token: str | None = TOKEN, vector_store: str | None = None):
    config = Config(index_dir=str(index_dir), api_token=token, vector_store=vector_store)
    return create_app(config, encoder=FakeEncoder()).test_client()


def assert_problem(response, status: int, detail: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["detail"]
    if detail:
        assert detail.lower() in body["detail"].lower(), body["detail"]
    return body


def test_patch_moves_the_product_for_every_instance_at_once(index_dir, rows):
    writer, reader = make_client(index_dir), make_client(index_dir)
    pid, title = rows[0]["uniq_id"], rows[0]["product_name"]
    assert reader.get(f"/api/v1/products/{pid}").get_json()["category"] == "Watches"  # loaded before

    response = writer.patch(f"/api/v1/products/{pid}", json={"category": " Garden >> Hoses >>Green "}, headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["id"] == pid and body["category"] == "Garden" and body["category_path"] == ["Garden", "Hoses", "Green"]
    assert body["name"] == title and body["index_version"]

    for client in (writer, reader):  # the other instance notices the change on its next request
        assert client.get(f"/api/v1/products/{pid}").get_json()["category_path"] == ["Garden", "Hoses", "Green"]
        counts = {c["name"]: c["count"] for c in client.get("/api/v1/categories").get_json()["categories"]}
        assert counts == {"Baby Care": 4, "Computers": 4, "Garden": 1, "Watches": 3}
        found = client.post("/api/v1/search", json={"title": title, "category": "Garden", "k": 5}).get_json()
        assert [r["id"] for r in found["results"]] == [pid]
        predicted = client.post("/api/v1/predict", json={"title": title, "k": 10}).get_json()
        (mine,) = [n for n in predicted["neighbors"] if n["id"] == pid]
        assert mine["category"] == "Garden" and mine["category_path"] == ["Garden", "Hoses", "Green"]
    # the same path again: 200, nothing written
    deltas = open_store(index_dir).deltas
    again = writer.patch(f"/api/v1/products/{pid}", json={"category_path": ["Garden", "Hoses", "Green"]}, headers=AUTH)
    assert again.status_code == 200 and open_store(index_dir).deltas == deltas
    (event,) = AuditLog(index_dir).history(pid)
    assert event["action"] == "relabel" and event["actor"] == "api-token"
    assert event["before"]["category_path"][0] == "Watches" and event["after"]["category_path"][0] == "Garden"


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_delete_answers_204_then_the_product_is_gone_everywhere(index_dir, rows, tmp_path, backend):
    milvus = None
    if backend == "milvus":  # VECTOR_STORE: the service serves index_dir from a Milvus Lite copy
        pytest.importorskip("pymilvus")
        from indexer.store.milvus import copy_to_milvus

        milvus = str(tmp_path / "changes.db")
        copy_to_milvus(open_store(index_dir), milvus)
    pid, title = rows[1]["uniq_id"], rows[1]["product_name"]
    other = rows[2]["uniq_id"]  # same category, its nearest neighbour
    try:
        writer, reader = make_client(index_dir, vector_store=milvus), make_client(index_dir, vector_store=milvus)
        assert open_store(index_dir).backend == backend
        similar = reader.get(f"/api/v1/products/{other}/similar?k=20").get_json()["results"]
        assert pid in [r["id"] for r in similar]
        total = reader.get("/api/v1/categories").get_json()["total"]

        response = writer.delete(f"/api/v1/products/{pid}", headers=AUTH)
        assert response.status_code == 204 and response.get_data() == b""

        for client in (writer, reader):
            assert_problem(client.get(f"/api/v1/products/{pid}"), 404, pid)
            assert_problem(client.get(f"/api/v1/products/{pid}/similar"), 404)
            assert_problem(client.get(f"/api/v1/products/{pid}/image"), 404)
            assert_problem(client.patch(f"/api/v1/products/{pid}", json={"category": "A"}, headers=AUTH), 404)
            assert_problem(client.delete(f"/api/v1/products/{pid}", headers=AUTH), 404)
            similar = client.get(f"/api/v1/products/{other}/similar?k=20").get_json()["results"]
            assert len(similar) == total - 2 and pid not in [r["id"] for r in similar]
            found = client.post("/api/v1/search", json={"title": title, "k": 20}).get_json()["results"]
            assert pid not in [r["id"] for r in found] and len(found) == total - 1
            predicted = client.post("/api/v1/predict", json={"title": title, "k": 20}).get_json()
            assert pid not in [n["id"] for n in predicted["neighbors"]]
            assert client.get("/api/v1/categories").get_json()["total"] == total - 1
        assert [e["action"] for e in AuditLog(index_dir).history(pid)] == ["delete"]
        assert open_store(index_dir).row_of(pid) is None and open_store(index_dir).row_of(other) is not None
    finally:
        factory.route(index_dir, None)


@pytest.mark.parametrize(
    "method, body, headers, status, detail",
    [
        ("patch", {"category": "Garden"}, {}, 401, "bearer"),
        ("delete", None, {}, 401, "bearer"),
        ("patch", {"category": "Garden"}, {"Authorization": "Bearer wrong"}, 401, "invalid token"),
        ("delete", None, {"Authorization": "Bearer wrong"}, 401, "invalid token"),
        ("patch", {"category": " >> "}, AUTH, 400, "empty level"),
        ("patch", {"category": "Garden >>  >> Hoses"}, AUTH, 400, "empty level"),
        ("patch", {"category": ""}, AUTH, 400, "empty"),
        ("patch", {"category_path": ["Garden", 3]}, AUTH, 400, "strings"),
        ("patch", {"category_path": "Garden"}, AUTH, 400, "list of levels"),
        ("patch", {"category_path": [f"L{i}" for i in range(11)]}, AUTH, 400, "at most 10"),
        ("patch", {"category": "Garden", "name": "x"}, AUTH, 400, "only the category"),
        ("patch", {"category": "Garden", "category_path": ["Garden"]}, AUTH, 400, "once"),
        ("patch", {"category": "G" * 201}, AUTH, 400, "201 characters"),
        ("patch", {}, AUTH, 400, "send the new category"),
        ("patch", ["Garden"], AUTH, 400, "JSON object"),
        ("patch", "form", AUTH, 415, "application/json"),
    ],
)
def test_refused_changes_answer_problem_json_and_change_nothing(index_dir, rows, method, body, headers, status, detail):
    client = make_client(index_dir)
    pid = rows[0]["uniq_id"]
    before = open_store(index_dir)
    if body == "form":
        response = client.patch(f"/api/v1/products/{pid}", data={"category": "Garden"}, headers=headers)
    elif method == "patch":
        response = client.patch(f"/api/v1/products/{pid}", json=body, headers=headers)
    else:
        response = client.delete(f"/api/v1/products/{pid}", headers=headers)
    assert_problem(response, status, detail)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    after = open_store(index_dir)
    assert (after.version, after.deltas) == (before.version, before.deltas) and AuditLog(index_dir).history(pid) == []
    assert client.get(f"/api/v1/products/{pid}").get_json()["category"] == "Watches"


def test_unknown_ids_and_disabled_writes(index_dir):
    client = make_client(index_dir)
    assert_problem(client.patch("/api/v1/products/nope", json={"category": "A"}, headers=AUTH), 404, "nope")
    assert_problem(client.patch("/api/v1/products/nope", json={"category": " >> "}, headers=AUTH), 404)
    assert_problem(client.delete("/api/v1/products/nope", headers=AUTH), 404, "nope")
    response = client.put("/api/v1/products/nope", json={"category": "A"}, headers=AUTH)
    assert_problem(response, 405)
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "PATCH", "DELETE"}
    closed = make_client(index_dir, token=None)
    assert_problem(closed.delete("/api/v1/products/nope", headers=AUTH), 403, "API_TOKEN")
    assert_problem(closed.patch("/api/v1/products/nope", json={"category": "A"}, headers=AUTH), 403, "API_TOKEN")
    assert open_store(index_dir).deltas == ()
