"""Adding products through the API: persisted, seen by every app instance, survives restart,
and a refused add (bad token, bad image, missing label, duplicate) changes nothing."""

from __future__ import annotations

import base64
import io

import pytest
from service_support import copy_index, photo_products

from indexer.store import open_store
from indexer.store.local.index import read_current
from service.app import create_app
from service.config import Config

pytestmark = pytest.mark.integration

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def index_dir(service_index, tmp_path):
    return copy_index(service_index, tmp_path / "index")


def make_app(index_dir, encoder, data_dir=None):
    config = Config(index_dir=str(index_dir), api_token=TOKEN, data_dir=str(data_dir) if data_dir else None)
    return create_app(config, encoder=encoder)


@pytest.fixture()
def photo(service_index):
    store = open_store(service_index)
    ((product, path),) = photo_products(store, 1, category="Kitchen & Dining")
    return product, path.read_bytes()


def test_added_product_is_seen_by_other_instances_and_survives_restart(index_dir, embedded_encoder, photo):
    source, data = photo
    writer = make_app(index_dir, embedded_encoder).test_client()
    reader = make_app(index_dir, embedded_encoder).test_client()  # loaded before the add
    before = len(open_store(index_dir).products)

    response = writer.post(
        "/api/v1/products",
        headers=AUTH,
        content_type="multipart/form-data",
        data={
            "image": (io.BytesIO(data), "mug.jpg"),
            "title": "Seller test mug, ceramic, 300 ml",
            "description": "A new ceramic coffee mug added by a seller.",
            "category": "Kitchen & Dining >> Coffee Mugs >> Seller Mugs",
            "brand": "TestBrand",
            "price": "199",
        },
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    added = response.get_json()
    pid = added["id"]
    assert response.headers["Location"].endswith(f"/api/v1/products/{pid}")
    assert added["category_path"] == ["Kitchen & Dining", "Coffee Mugs", "Seller Mugs"]
    uploads = list((index_dir / "uploads").iterdir())
    assert [p.name for p in uploads] == [f"{pid}.jpg"] and uploads[0].read_bytes() == data

    # the other instance notices the new version on its next request
    got = reader.get(f"/api/v1/products/{pid}")
    assert got.status_code == 200 and got.get_json()["brand"] == "TestBrand"
    assert got.get_json()["modalities"] == ["image", "text"]
    assert reader.get("/api/v1/categories").get_json()["total"] == before + 1
    hits = reader.post("/api/v1/search", json={"title": "Seller test mug, ceramic, 300 ml", "k": 3}).get_json()
    assert hits["results"][0]["id"] == pid
    thumb = reader.get(f"/api/v1/products/{pid}/image?size=32")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"

    # a restarted service still has it
    restarted = make_app(index_dir, embedded_encoder).test_client()
    body = restarted.post(
        "/api/v1/predict", data={"image": (io.BytesIO(data), "q.jpg")}, content_type="multipart/form-data"
    ).get_json()
    assert {source.id, pid} <= {n["id"] for n in body["neighbors"][:2]}
    assert open_store(index_dir).products[-1].id == pid


def test_json_add_with_base64_and_path_list(index_dir, embedded_encoder, photo):
    _, data = photo
    client = make_app(index_dir, embedded_encoder).test_client()
    response = client.post(
        "/api/v1/products",
        headers=AUTH,
        json={
            "id": "seller-json-1",
            "title": "Blue ceramic mug",
            "image_base64": base64.b64encode(data).decode(),
            "category_path": ["Kitchen & Dining", "Coffee Mugs"],
        },
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    assert client.get("/api/v1/products/seller-json-1").get_json()["category"] == "Kitchen & Dining"
    again = client.post(
        "/api/v1/products",
        headers=AUTH,
        json={"id": "seller-json-1", "title": "Blue ceramic mug", "category": "Kitchen & Dining"},
    )
    assert again.status_code == 409 and again.mimetype == "application/problem+json"


def test_text_only_product(index_dir, embedded_encoder):
    client = make_app(index_dir, embedded_encoder).test_client()
    response = client.post(
        "/api/v1/products",
        headers=AUTH,
        json={"title": "Handmade brass diya for Diwali", "category": "Home Decor & Festive Needs"},
    )
    assert response.status_code == 201
    body = client.get(response.headers["Location"]).get_json()
    assert body["image_url"] is None and body["modalities"] == ["text"]


@pytest.mark.parametrize(
    "headers,payload,status",
    [
        ({}, {"title": "t", "category": "Watches"}, 401),
        ({"Authorization": "Bearer nope"}, {"title": "t", "category": "Watches"}, 401),
        (AUTH, {"title": "t"}, 400),
        (AUTH, {"category": "Watches"}, 400),
        (AUTH, {"title": "t", "category": "Watches", "price": "cheap"}, 400),
        (AUTH, {"title": "t", "category": "Watches", "id": "../../etc/passwd"}, 400),
        (AUTH, {"title": "t", "category": "Watches", "image_base64": base64.b64encode(b"not an image").decode()}, 422),
    ],
)
def test_refused_adds_change_nothing(index_dir, embedded_encoder, headers, payload, status):
    client = make_app(index_dir, embedded_encoder).test_client()
    version = read_current(index_dir)
    response = client.post("/api/v1/products", headers=headers, json=payload)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert read_current(index_dir) == version
    assert not (index_dir / "uploads").exists() or not any((index_dir / "uploads").iterdir())


def test_writes_forbidden_when_no_token_is_configured(index_dir, embedded_encoder):
    client = create_app(Config(index_dir=str(index_dir), api_token=None), encoder=embedded_encoder).test_client()
    version = read_current(index_dir)
    response = client.post("/api/v1/products", headers=AUTH, json={"title": "t", "category": "Watches"})
    assert response.status_code == 403
    assert read_current(index_dir) == version
