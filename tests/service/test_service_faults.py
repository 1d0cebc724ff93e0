"""Faults and bad input through the real app (Flask test client, real index copy):
a race of two adds of one id, orphan photos, damaged index versions of every file kind,
a corrupt embedding cache, and the bad inputs that used to give 500s or wrong statuses.
Each was a fault found by an adversarial probe (issue 9)."""

from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from pathlib import Path

import pytest
from fakes import damage, publish_copy
from service_support import copy_index, jpeg_bytes, photo_products

from indexer.store import open_store
from indexer.store.local.index import VERSIONS, IndexStore, list_versions, read_current
from service.app import create_app
from service.config import Config
from service.media import STAGING_PREFIX, UPLOADS

pytestmark = pytest.mark.integration

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
DAMAGES = ("truncated", "flipped", "empty")
FILE_KINDS = (
    "products.sqlite",
    "paths.npy",
    "text.npy",
    "text.rows.npy",
    "text.faiss",
    "image.npy",
    "image.rows.npy",
    "image.faiss",
    "lexical.data.npy",
    "lexical.postings.indices.npy",
    "lexical.idf.npy",
    "lexical.rows.npy",
    "lexical.vocab.json",
)


def publish_damaged(index_dir: Path, name: str, how: str, base: str | None = None) -> str:
    """A copy of a good version as the next version number, one file damaged, made live."""
    base = base or read_current(index_dir)
    version = f"{int(max(list_versions(index_dir))) + 1:06d}"
    publish_copy(index_dir, base, version)  # sealed and pointed at, as a publish would
    damage(index_dir / VERSIONS / version / name, how)
    return version


def make_app(index_dir: Path, encoder, **overrides):
    config = Config(index_dir=str(index_dir), api_token=TOKEN, retry_load_seconds=0.0, **overrides)
    return create_app(config, encoder=encoder)


@pytest.fixture()
def index_dir(service_index, tmp_path):
    return copy_index(service_index, tmp_path / "index")


@pytest.fixture(scope="module")
def photos(service_index):
    store = open_store(service_index)
    return [path.read_bytes() for _, path in photo_products(store, 2, category="Watches")]


def assert_problem(response, status: int, detail: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    if detail:
        assert detail.lower() in body["detail"].lower(), body["detail"]
    assert "/tmp" not in response.get_data(as_text=True) and "Traceback" not in body["detail"]
    return body


def add(client, pid: str, photo: bytes):
    return client.post(
        "/api/v1/products",
        headers=AUTH,
        content_type="multipart/form-data",
        data={
            "id": pid,
            "title": "Race watch",
            "category": "Watches >> Wrist Watches",
            "image": (io.BytesIO(photo), "w.jpg"),
        },
    )


# ---- adds: the loser of a race never touches the winner's photo ---------------------------------
def test_losing_add_of_the_same_id_keeps_the_winners_photo(index_dir, embedded_encoder, photos, monkeypatch):
    first = make_app(index_dir, embedded_encoder).test_client()
    second = make_app(index_dir, embedded_encoder)
    second_client = second.test_client()
    # the second instance has not noticed the first add yet: its own check lets the id through
    monkeypatch.setattr(IndexStore, "is_stale", lambda self: False)
    assert add(first, "race-1", photos[0]).status_code == 201
    assert_problem(add(second_client, "race-1", photos[1]), 409, "already in the index")
    uploads = sorted(p.name for p in (index_dir / UPLOADS).iterdir())
    assert uploads == ["race-1.jpg"]
    assert (index_dir / UPLOADS / "race-1.jpg").read_bytes() == photos[0]


def test_two_adds_of_one_id_at_once(index_dir, embedded_encoder, photos):
    """Both requests in flight together: one 201, one 409, the photo is the winner's."""
    client = make_app(index_dir, embedded_encoder).test_client()
    barrier = threading.Barrier(2, timeout=60)
    results: dict[int, object] = {}

    def run(i: int) -> None:
        barrier.wait()
        results[i] = add(client, "race-2", photos[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(r.status_code for r in results.values())
    assert statuses == [201, 409]
    winner = next(i for i, r in results.items() if r.status_code == 201)
    assert (index_dir / UPLOADS / "race-2.jpg").read_bytes() == photos[winner]
    assert sorted(p.name for p in (index_dir / UPLOADS).iterdir()) == ["race-2.jpg"]


def test_orphan_photos_are_cleaned_by_the_next_add(index_dir, embedded_encoder, photos):
    uploads = index_dir / UPLOADS
    uploads.mkdir()
    (uploads / "killed-add.jpg").write_bytes(photos[0])  # moved into place, never published
    old = uploads / f"{STAGING_PREFIX}dead.jpg"
    old.write_bytes(photos[0])
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = uploads / f"{STAGING_PREFIX}in-flight.jpg"
    young.write_bytes(photos[0])
    client = make_app(index_dir, embedded_encoder).test_client()
    assert add(client, "after-crash", photos[1]).status_code == 201
    assert sorted(p.name for p in uploads.iterdir()) == sorted(["after-crash.jpg", young.name])


def test_corrupt_cache_does_not_block_an_add(index_dir, embedded_encoder, photos):
    (index_dir / "cache.sqlite").write_bytes(b"\x00garbage" * 4096)
    client = make_app(index_dir, embedded_encoder).test_client()
    assert add(client, "cache-gone", photos[0]).status_code == 201
    assert list(index_dir.glob("cache.sqlite.corrupt-*"))


# ---- damaged versions: keep serving the last good one ----------------------------------------
def test_damaged_new_versions_are_refused_and_the_good_one_served(index_dir, embedded_encoder):
    app = make_app(index_dir, embedded_encoder)
    client = app.test_client()
    good = read_current(index_dir)
    expected = client.post("/api/v1/predict", json={"title": "analog wrist watch"}).get_json()
    tried = served = 0
    for name in FILE_KINDS:
        for how in DAMAGES:
            version = publish_damaged(index_dir, name, how, base=good)
            tried += 1
            response = client.post("/api/v1/predict", json={"title": "analog wrist watch"})
            assert response.status_code == 200, (name, how, response.get_data(as_text=True))
            body = response.get_json()
            served += body["index_version"] != good
            assert body["category"] == expected["category"] and body["neighbors"] == expected["neighbors"]
            ready = client.get("/readyz").get_json()
            assert ready["index_version"] == good
            assert ready["refused"]["version"] == version and ready["refused"]["file"] == f"{version}/{name}"
            assert "/tmp" not in ready["refused"]["reason"]
    assert (tried, served) == (len(FILE_KINDS) * len(DAMAGES), 0)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert re.search(r"index_version_refused \d+", metrics) and f"index_version_refused {float(version)}" in metrics
    assert re.search(r"index_version_refusals_total [1-9]", metrics)


def test_fresh_start_serves_the_newest_version_that_verifies(index_dir, embedded_encoder):
    good = read_current(index_dir)
    publish_damaged(index_dir, "text.faiss", "truncated")
    client = make_app(index_dir, embedded_encoder).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["index_version"] == good
    assert ready.get_json()["refused"]["file"].endswith("text.faiss")


def test_fresh_start_with_no_good_version_exits_naming_the_file(index_dir, embedded_encoder):
    version = read_current(index_dir)
    damage(index_dir / VERSIONS / version / "text.rows.npy", "flipped")
    with pytest.raises(SystemExit, match=r"text\.rows\.npy"):
        make_app(index_dir, embedded_encoder)


# ---- bad input: 4xx problem+json with a clear detail, never a 500 ----------------------------------
RAW_JSON = {"Content-Type": "application/json"}
BAD_INPUTS = [
    ("POST", "/api/v1/predict", b'{"title": "\\ud800 mug"}', 400, "not valid unicode"),
    ("POST", "/api/v1/search", b'{"description": "cup \\udfff"}', 400, "not valid unicode"),
    ("POST", "/api/v1/predict", b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper"),
    ("POST", "/api/v1/predict", b'{"a": ' * 40 + b"1" + b"}" * 40, 400, "nested deeper"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches", "price": NaN}', 400, "NaN"),
    ("POST", "/api/v1/predict", b'{"title": "mug", "k": 1e400}', 400, "finite"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches", "price": "nan"}', 400, "finite"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches", "price": "inf"}', 400, "finite"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches", "price": 1e400}', 400, "finite"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches", "price": Infinity}', 400, "Infinity"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches", "price": -5}', 400, "at least 0"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches", "brand": "\\ud800"}', 400, "brand"),
    ("POST", "/api/v1/products", b'{"title": "mug", "category": "Watches\\udc00"}', 400, "category"),
    ("GET", "/api/v1/products/x?" + "q=" + "a" * 5000, None, 414, "over the 4096-byte limit"),
    ("GET", "/api/v1/categories?" + "a" * 4100, None, 414, "URL"),
]


@pytest.mark.parametrize("method,path,body,status,detail", BAD_INPUTS)
def test_bad_input_is_a_clear_4xx(index_dir, embedded_encoder, method, path, body, status, detail):
    client = make_app(index_dir, embedded_encoder).test_client()
    version = read_current(index_dir)
    response = client.open(path, method=method, data=body, headers={**RAW_JSON, **AUTH})
    assert_problem(response, status, detail)
    assert read_current(index_dir) == version  # nothing stored


def test_form_price_must_be_finite_and_not_negative(index_dir, embedded_encoder):
    client = make_app(index_dir, embedded_encoder).test_client()
    for price in ("nan", "inf", "-1", "1e400"):
        response = client.post(
            "/api/v1/products",
            headers=AUTH,
            content_type="multipart/form-data",
            data={"title": "mug", "category": "Watches", "price": price},
        )
        assert_problem(response, 400, "price")


def test_empty_modality_is_refused(index_dir, embedded_encoder):
    client = make_app(index_dir, embedded_encoder).test_client()
    pid = open_store(index_dir).products[0].id
    assert_problem(client.get(f"/api/v1/products/{pid}/similar?modality="), 400, "modality must be one of")


def test_500_handler_answers_problem_json_without_internals(index_dir, embedded_encoder):
    app = make_app(index_dir, embedded_encoder)

    @app.get("/boom")
    def boom():
        raise RuntimeError(f"secret internals at {index_dir}")

    body = assert_problem(app.test_client().get("/boom"), 500)
    assert body["title"] == "Internal Server Error" and "secret" not in body["detail"]
    # the handler itself answers (it used to raise TypeError and leave the answer to Flask's fallback)
    handler = app._find_error_handler(RuntimeError("x"), [])
    with app.test_request_context("/boom"):
        response = handler(RuntimeError("secret"))
    assert response.status_code == 500 and response.get_json()["title"] == "Internal Server Error"


def test_not_ready_detail_shows_no_absolute_path(tmp_path, embedded_encoder):
    client = create_app(Config(index_dir=str(tmp_path / "none")), encoder=embedded_encoder).test_client()
    body = assert_problem(client.get("/readyz"), 503, "no index at $INDEX_DIR")
    assert str(tmp_path) not in str(body)


def test_added_price_is_served_as_valid_json(index_dir, embedded_encoder):
    client = make_app(index_dir, embedded_encoder).test_client()
    response = client.post(
        "/api/v1/products", headers=AUTH, json={"id": "priced", "title": "mug", "category": "Watches", "price": 12.5}
    )
    assert response.status_code == 201
    raw = client.get("/api/v1/products/priced").get_data(as_text=True)
    assert "NaN" not in raw and '"price":12.5' in raw.replace(" ", "")


def test_base64_image_add_is_staged_too(index_dir, embedded_encoder, photos):
    client = make_app(index_dir, embedded_encoder).test_client()
    response = client.post(
        "/api/v1/products",
        headers=AUTH,
        json={"id": "b64", "title": "w", "category": "Watches", "image_base64": base64.b64encode(photos[0]).decode()},
    )
    assert response.status_code == 201
    assert sorted(p.name for p in (index_dir / UPLOADS).iterdir()) == ["b64.jpg"]
    assert jpeg_bytes() != photos[0]
