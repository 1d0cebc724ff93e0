"""POST /api/v1/predict/batch on the real index (read-only): JSON lines or CSV in, one JSON line per
listing out, in order, streamed; each malformed line a problem of its own, the rest decided."""

from __future__ import annotations

import base64
import io
import json

import pytest
from service_support import photo_products

from indexer.store import open_store
from service.app import create_app
from service.config import Config

pytestmark = pytest.mark.integration

PROBLEM_KEYS = {"line", "id", "type", "title", "status", "detail"}


@pytest.fixture(scope="module")
def app(service_index, embedded_encoder, real_data_dir):
    config = Config(index_dir=str(service_index), data_dir=str(real_data_dir), batch_max_bytes=3_000_000, batch_size=4)
    return create_app(config, encoder=embedded_encoder)


@pytest.fixture(scope="module")
def photos(service_index):
    store = open_store(service_index)
    return [photo_products(store, 1, category=c)[0] for c in ("Watches", "Baby Care")]


def results(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/x-ndjson"
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_json_lines_get_one_answer_each_in_order(app, photos):
    (watch, watch_path), (baby, baby_path) = photos
    body = "\n".join(
        [
            json.dumps({"id": "t1", "title": "Sonata analog wrist watch for men, leather strap"}),
            json.dumps({"id": "p1", "image_base64": base64.b64encode(watch_path.read_bytes()).decode()}),
            "{this is not json",
            json.dumps({"id": "n1", "title": baby.name, "image": baby_path.name}),  # a photo already uploaded
            json.dumps({"id": "n2", "image": "no-such-photo.jpg"}),
            json.dumps({"id": "b1", "image_base64": base64.b64encode(b"not a photo").decode()}),
            "",
            json.dumps({"id": "e1", "description": "   "}),
            json.dumps({"id": "t2", "title": "cotton baby romper"}),
        ]
    )
    response = app.test_client().post("/api/v1/predict/batch", data=body, content_type="application/x-ndjson")
    assert response.is_streamed
    out = results(response)
    assert [r["line"] for r in out] == [1, 2, 3, 4, 5, 6, 8, 9]
    by_id = {r["id"]: r for r in out if r["id"]}
    assert by_id["t1"]["category"] == "Watches" and by_id["t2"]["category"] == "Baby Care"
    assert by_id["p1"]["category"] == watch.category and by_id["n1"]["category"] == baby.category
    assert all(r["reasons"] and r["decision"] in ("auto", "review") for r in by_id.values() if "status" not in r)
    problems = {r["line"]: r for r in out if "status" in r}
    assert {line: p["status"] for line, p in problems.items()} == {3: 400, 5: 404, 6: 422, 8: 400}
    assert all(set(p) == PROBLEM_KEYS and p["detail"] for p in problems.values())
    assert "no-such-photo.jpg" in problems[5]["detail"] and "/" not in problems[5]["detail"].replace("'", "")


def test_csv_is_read_with_its_header_and_line_numbers(app):
    body = (
        "id,title,description\n"
        "c1,Analog wrist watch,Black dial and leather strap\n"
        "c2,,\n"
        'c3,"Laptop battery, 6 cells","fits many\nlaptops"\n'
    )
    out = results(app.test_client().post("/api/v1/predict/batch", data=body, content_type="text/csv"))
    assert [(r["line"], r["id"]) for r in out] == [(2, "c1"), (3, "c2"), (4, "c3")]
    assert out[0]["category"] == "Watches" and out[2]["category"] == "Computers"
    assert out[1]["status"] == 400 and "title" in out[1]["detail"]


def test_bad_requests_are_refused_whole(app):
    client = app.test_client()
    response = client.post("/api/v1/predict/batch", json={"title": "x"})
    assert response.status_code == 415 and response.mimetype == "application/problem+json"
    big = (("{" + '"title": "' + "x" * 1000 + '"}\n') * 3100).encode()
    stream = io.BytesIO(big)
    response = client.post(
        "/api/v1/predict/batch",
        input_stream=stream,
        content_type="application/x-ndjson",
        headers={"Content-Length": str(len(big))},
    )
    assert response.status_code == 413 and "BATCH_MAX_BYTES" in response.get_json()["detail"]
    assert stream.tell() == len(big)  # read to its end: no reset for the front to turn into a 502
    response = client.post("/api/v1/predict/batch?k=0", data="{}", content_type="application/x-ndjson")
    assert response.status_code == 400 and "k must be" in response.get_json()["detail"]
    assert results(client.post("/api/v1/predict/batch", data="", content_type="text/csv")) == []
