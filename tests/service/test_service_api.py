"""The HTTP API through Flask's test client, on the real index (read-only).

Every endpoint, and every error status the API promises: 400, 401, 403, 404, 405,
413, 415, 422, 503 - each as application/problem+json, none as a 500.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image
from service_support import jpeg_bytes, photo_products, say_reasons

from indexer.store import open_store
from service.app import create_app
from service.config import Config
from service.web import openapi_spec

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
LIMIT = 2_000_000


@pytest.fixture(scope="module")
def store(service_index):
    return open_store(service_index)


@pytest.fixture(scope="module")
def app(service_index, embedded_encoder, real_data_dir):
    config = Config(index_dir=str(service_index), data_dir=str(real_data_dir), api_token=None, max_upload_bytes=LIMIT)
    return create_app(config, encoder=embedded_encoder)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def watch(store):
    ((product, path),) = photo_products(store, 1, category="Watches")
    return product, path.read_bytes()


def assert_problem(response, status: int, detail_part: str | None = None):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status
    if detail_part:
        assert detail_part.lower() in body["detail"].lower(), body["detail"]
    return body


# ---- OpenAPI ------------------------------------------------------------------------------
def test_every_route_is_documented_in_openapi(app):
    paths = openapi_spec()["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint.rsplit(".", 1)[-1] == "static":  # files: the app's, and Swagger UI's for /docs
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in paths, f"{rule.rule} missing from service/openapi.yaml"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {rule.rule} missing from the spec"


def test_openapi_is_served_as_json(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/predict" in spec["paths"]


# ---- predict ------------------------------------------------------------------------------
def check_prediction(body, store):
    assert body["category"] in store.categories()
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["decision"] in ("auto", "review")
    assert body["category_path"][0] == body["category"]
    assert abs(sum(body["scores"].values()) - 1.0) < 1e-3
    assert max(body["scores"], key=body["scores"].get) == body["category"]
    assert set(body["timing_ms"]) >= {"decode", "encode_image", "encode_text", "search", "total"}
    assert body["neighbors"], "a prediction shows the neighbours it is based on"
    for n in body["neighbors"]:
        assert set(n) >= {"id", "name", "category", "score"}
    scores = [n["score"] for n in body["neighbors"]]
    assert scores == sorted(scores, reverse=True)


def test_predict_text_json(client, store):
    response = client.post(
        "/api/v1/predict",
        json={"title": "Sonata analog wrist watch for men", "description": "Black leather strap, water resistant"},
    )
    assert response.status_code == 200
    body = response.get_json()
    check_prediction(body, store)
    assert body["category"] == "Watches"
    assert "text" in body["modalities"] and "image" not in body["modalities"]
    assert body["timing_ms"]["encode_image"] == 0


def test_predict_image_multipart_finds_the_same_photo(client, store, watch):
    product, data = watch
    response = client.post(
        "/api/v1/predict", data={"image": (io.BytesIO(data), "watch.jpg")}, content_type="multipart/form-data"
    )
    assert response.status_code == 200
    body = response.get_json()
    check_prediction(body, store)
    assert body["category"] == product.category
    assert body["neighbors"][0]["id"] == product.id and body["neighbors"][0]["score"] > 0.99
    assert body["timing_ms"]["decode"] > 0 and body["timing_ms"]["encode_image"] > 0


def test_predict_image_and_text_base64(client, store, watch):
    product, data = watch
    response = client.post(
        "/api/v1/predict", json={"image_base64": base64.b64encode(data).decode(), "title": product.name, "k": 3}
    )
    assert response.status_code == 200
    body = response.get_json()
    check_prediction(body, store)
    assert {"image", "text"} <= set(body["modalities"])
    assert body["category"] == product.category
    assert len(body["neighbors"]) == 3
    assert body["neighbors"][0]["id"] == product.id


def test_predict_names_the_kind_and_gives_reasons(client, store, watch):
    """A watch photo titled as a coffee mug: the kind says photo + title, the photo and the text
    vote apart, and a review decision comes with plain reasons."""
    product, data = watch
    photo = base64.b64encode(data).decode()
    body = client.post(
        "/api/v1/predict", json={"image_base64": photo, "title": "Steel coffee mug with handle"}
    ).get_json()
    assert body["kind"]["name"] == "photo+title" and body["kind"]["channels"] == ["photo", "title"]
    assert body["kind"]["language"] == "en" and body["kind"]["words"] == 5
    assert set(body["channel_votes"]) == {"photo", "text"} and 0.0 <= body["disagreement"] <= 1.0
    assert max(body["channel_votes"]["photo"], key=body["channel_votes"]["photo"].get) == product.category
    assert body["decision"] in ("auto", "review") and body["reasons"]
    # structured as the listings API's: a code the pages translate, an English sentence, its numbers
    assert all(set(r) == {"code", "text", "params"} and r["text"] for r in body["reasons"])
    codes = [r["code"] for r in body["reasons"]]
    if body["decision"] == "review":
        assert set(codes) & {"photo_text_disagree", "weak_agreement", "low_confidence", "kind_not_automatic"}
        assert "confident" not in codes
    else:
        assert codes[0] == "confident"
    # the French seller page says each of them in French, none as the API's English sentence
    said = say_reasons(body["reasons"], "fr")
    assert all(fr != r["text"] for fr, r in zip(said, body["reasons"], strict=False))
    french = client.post("/api/v1/predict", json={"title": "Montre analogique pour homme, bracelet en cuir noir"})
    kind = french.get_json()["kind"]
    assert kind["name"] == "other-language text" and kind["language"] == "fr"
    assert 0.0 <= kind["vocabulary_coverage"] < 0.5  # the English vocabulary knows few of its words


def test_predict_k_changes_the_neighbourhood(client):
    small = client.post("/api/v1/predict", json={"title": "cotton baby romper", "k": 2}).get_json()
    large = client.post("/api/v1/predict", json={"title": "cotton baby romper", "k": 20}).get_json()
    assert len(small["neighbors"]) == 2 and len(large["neighbors"]) == 20


@pytest.mark.parametrize("payload", [{}, {"title": "", "description": "  "}, {"k": 3}])
def test_predict_without_image_or_text_is_400(client, payload):
    assert_problem(client.post("/api/v1/predict", json=payload), 400, "image")


def test_predict_empty_multipart_is_400(client):
    response = client.post("/api/v1/predict", data={"title": ""}, content_type="multipart/form-data")
    assert_problem(response, 400)


@pytest.mark.parametrize("k", ["zero", 0, -1, 101, 1.5, True])
def test_predict_bad_k_is_400(client, k):
    assert_problem(client.post("/api/v1/predict", json={"title": "mug", "k": k}), 400, "k must")


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[1, 2]", b'{"title": 5}', b'{"image_base64": "@@@"}', b'{"title": "' + b"x" * 1200 + b'"}'],
)
def test_predict_invalid_json_is_400(client, payload):
    assert_problem(client.post("/api/v1/predict", data=payload, content_type="application/json"), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None])
def test_predict_unsupported_media_is_415(client, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    assert_problem(client.post("/api/v1/predict", data=b"title=mug", **kwargs), 415)


def test_undecodable_images_are_422(client, watch):
    _, data = watch
    cases = {
        "text.jpg": b"this is not an image at all",
        "truncated.jpg": data[: len(data) // 3],
        "empty.jpg": b"",
    }
    for name, payload in cases.items():
        response = client.post(
            "/api/v1/predict", data={"image": (io.BytesIO(payload), name)}, content_type="multipart/form-data"
        )
        assert_problem(response, 422)
    response = client.post("/api/v1/predict", json={"image_base64": base64.b64encode(b"GIF89a-broken").decode()})
    assert_problem(response, 422)
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")  # 81 MP in a few kB
    response = client.post(
        "/api/v1/predict", data={"image": (io.BytesIO(bomb.getvalue()), "bomb.png")}, content_type="multipart/form-data"
    )
    assert_problem(response, 422, "MP")


def test_upload_over_the_limit_is_413(client):
    big = b"\xff" * (LIMIT + 1024)
    response = client.post(
        "/api/v1/predict", data={"image": (io.BytesIO(big), "big.jpg")}, content_type="multipart/form-data"
    )
    assert_problem(response, 413, "limit")
    response = client.post("/api/v1/predict", json={"image_base64": base64.b64encode(big).decode()})
    assert_problem(response, 413)


def test_a_body_over_the_limit_is_read_to_its_end_before_the_413(client):
    """Closing with bytes unread resets the connection, and the front then says 502 for the 413."""
    body = io.BytesIO(b"x" * (LIMIT + 10))
    response = client.post(
        "/api/v1/predict",
        input_stream=body,
        content_type="application/json",
        headers={"Content-Length": str(LIMIT + 10)},
    )
    assert_problem(response, 413, "limit")
    assert body.tell() == LIMIT + 10  # drained, not left in the socket


def test_odd_inputs_never_give_500(client):
    cases = [
        {"json": {"title": "\u0000\u202e\U0001f600" * 50}},
        {"json": {"title": "mug", "k": "10"}},
        {"json": {"title": ["a list"]}},
        {"json": {"image_base64": 12}},
        {"data": {"image": (io.BytesIO(bytes(range(256)) * 40), "noise.png")}, "content_type": "multipart/form-data"},
        {"data": {"image": (io.BytesIO(jpeg_bytes((1, 1))), "dot.jpg")}, "content_type": "multipart/form-data"},
        {"data": b"--x\r\nbroken multipart", "content_type": "multipart/form-data; boundary=x"},
    ]
    for kwargs in cases:
        response = client.post("/api/v1/predict", **kwargs)
        assert response.status_code < 500, (kwargs, response.get_data(as_text=True))


# ---- search -------------------------------------------------------------------------------
def test_search_text_ranked_and_bounded(client):
    response = client.post("/api/v1/search", json={"title": "analog wrist watch for men", "k": 5})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 5
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r["category"] == "Watches" for r in results[:3])


def test_search_category_filter(client, store):
    response = client.post(
        "/api/v1/search",
        data={"title": "baby blanket", "category": "Watches", "k": "7"},
        content_type="multipart/form-data",
    )
    results = response.get_json()["results"]
    assert len(results) == 7 and all(r["category"] == "Watches" for r in results)
    sub = next(p.category_path[:2] for p in store.products if len(p.category_path) > 1)
    response = client.post("/api/v1/search", json={"title": "gift", "category": " >> ".join(sub)})
    assert all(r["category_path"][:2] == list(sub) for r in response.get_json()["results"])


def test_search_unknown_category_is_404(client):
    assert_problem(client.post("/api/v1/search", json={"title": "mug", "category": "Spaceships"}), 404, "unknown")


def test_search_by_image_returns_the_photo_first(client, watch):
    product, data = watch
    response = client.post(
        "/api/v1/search", data={"image": (io.BytesIO(data), "w.jpg"), "k": "3"}, content_type="multipart/form-data"
    )
    first = response.get_json()["results"][0]
    assert first["id"] == product.id and first["modality"] == "image" and first["score"] > 0.99


# ---- products -----------------------------------------------------------------------------
def test_get_product(client, watch):
    product, _ = watch
    body = client.get(f"/api/v1/products/{product.id}").get_json()
    assert body["id"] == product.id and body["name"] == product.name
    assert body["category_path"] == list(product.category_path)
    assert body["image_url"].endswith(f"/api/v1/products/{product.id}/image")
    assert "image_path" not in body  # no server paths leak


def test_unknown_product_is_404(client):
    for url in ("/api/v1/products/nope", "/api/v1/products/nope/similar", "/api/v1/products/nope/image"):
        assert_problem(client.get(url), 404, "nope")


def test_similar_excludes_itself(client, watch):
    product, _ = watch
    body = client.get(f"/api/v1/products/{product.id}/similar?k=4").get_json()
    ids = [r["id"] for r in body["results"]]
    assert len(ids) == 4 and product.id not in ids
    body = client.get(f"/api/v1/products/{product.id}/similar?k=3&modality=image").get_json()
    assert all(r["modality"] == "image" for r in body["results"])
    assert (
        body["results"] != client.get(f"/api/v1/products/{product.id}/similar?k=3&modality=text").get_json()["results"]
    )
    assert_problem(client.get(f"/api/v1/products/{product.id}/similar?modality=smell"), 400)
    assert_problem(client.get(f"/api/v1/products/{product.id}/similar?k=0"), 400)


def test_thumbnail_is_bounded_jpeg_with_cache_headers(client, watch):
    product, _ = watch
    response = client.get(f"/api/v1/products/{product.id}/image?size=64")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    image = Image.open(io.BytesIO(response.data))
    assert image.format == "JPEG" and max(image.size) <= 64
    assert "max-age" in response.headers["Cache-Control"] and response.headers["ETag"]
    again = client.get(
        f"/api/v1/products/{product.id}/image?size=64", headers={"If-None-Match": response.headers["ETag"]}
    )
    assert again.status_code == 304
    for size in ("5000", "8", "big"):
        assert_problem(client.get(f"/api/v1/products/{product.id}/image?size={size}"), 400, "size")


def test_product_without_photo_has_no_image(client, store):
    missing = next(p for p in store.products if p.image_path is None)
    assert client.get(f"/api/v1/products/{missing.id}").get_json()["image_url"] is None
    assert_problem(client.get(f"/api/v1/products/{missing.id}/image"), 404)


def test_categories(client, store):
    body = client.get("/api/v1/categories").get_json()
    names = [c["name"] for c in body["categories"]]
    assert names == store.categories()
    assert sum(c["count"] for c in body["categories"]) == body["total"] == len(store.products)
    assert all(sum(s["count"] for s in c["subcategories"]) <= c["count"] for c in body["categories"])


# ---- writes refused here (the persistence tests do the writes, on a copy) ------------------
def test_writes_refused_without_configured_token(client):
    response = client.post(
        "/api/v1/products", json={"title": "x", "category": "Watches"}, headers={"Authorization": "Bearer anything"}
    )
    assert_problem(response, 403, "API_TOKEN")


def test_writes_need_the_right_token(service_index, embedded_encoder):
    app = create_app(Config(index_dir=str(service_index), api_token="s3cret"), encoder=embedded_encoder)
    client = app.test_client()
    payload = {"title": "x", "category": "Watches"}
    body = assert_problem(client.post("/api/v1/products", json=payload), 401)
    assert "Bearer" in body["detail"]
    assert client.post("/api/v1/products", json=payload).headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(client.post("/api/v1/products", json=payload, headers={"Authorization": "Bearer wrong"}), 401)
    assert_problem(client.post("/api/v1/products", json=payload, headers={"Authorization": "Basic s3cret"}), 401)


# ---- probes, metrics, page, generic errors --------------------------------------------------
def test_health_and_ready(client, store):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["products"] == len(store.products)


def test_not_ready_without_index(tmp_path, embedded_encoder):
    app = create_app(Config(index_dir=str(tmp_path / "none")), encoder=embedded_encoder)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert_problem(client.get("/readyz"), 503, "no index")
    assert_problem(client.post("/api/v1/predict", json={"title": "mug"}), 503)
    assert_problem(client.get("/api/v1/categories"), 503)


def test_metrics_count_requests_by_endpoint_and_status(client):
    def count(text, status):
        pattern = rf'http_requests_total\{{endpoint="/api/v1/predict",method="POST",status="{status}"\}} ([0-9.]+)'
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    before = client.get("/metrics").get_data(as_text=True)
    client.post("/api/v1/predict", json={"title": "steel water bottle"})
    client.post("/api/v1/predict", json={})
    after = client.get("/metrics").get_data(as_text=True)
    assert count(after, 200) == count(before, 200) + 1
    assert count(after, 400) == count(before, 400) + 1
    assert re.search(
        r'http_request_duration_seconds_bucket\{endpoint="/api/v1/predict",le="[0-9.]+",status="400"\}', after
    )


def test_seller_page(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'id="predict-form"' in html and 'id="search-form"' in html and 'lang="en"' in html
    assert client.get("/static/app.js").status_code == 200


def test_unknown_route_and_wrong_method_are_problems(client):
    assert_problem(client.get("/no/such/page"), 404)
    response = client.get("/api/v1/predict")
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_parallel_and_sequential_encoding_agree(client, service_index, embedded_encoder, watch):
    product, data = watch
    sequential = create_app(
        Config(index_dir=str(service_index), parallel_encode=False), encoder=embedded_encoder
    ).test_client()
    payload = {"image_base64": base64.b64encode(data).decode(), "title": "steel analog watch", "k": 5}
    a = client.post("/api/v1/predict", json=payload).get_json()
    b = sequential.post("/api/v1/predict", json=payload).get_json()
    assert a["scores"] == b["scores"]
    assert [n["id"] for n in a["neighbors"]] == [n["id"] for n in b["neighbors"]]
    assert a["timing_ms"]["encode_text"] > 0 and b["timing_ms"]["encode_text"] > 0


def test_set_threads_limits_blas_as_well_as_torch_and_faiss():
    """A worker's numpy BLAS runs the re-scoring matrix products: its threads count against the
    cores like torch's and FAISS's, so set_threads limits all three."""
    import faiss
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from service.state import set_threads

    np.ones((4, 4)) @ np.ones(4)  # BLAS loaded
    before = (torch.get_num_threads(), faiss.omp_get_max_threads())
    with threadpool_limits(limits=None):  # restores numpy's BLAS threads after the test
        try:
            set_threads(1)
            blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
            assert blas and all(n == 1 for n in blas)
            assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
        finally:
            torch.set_num_threads(before[0])
            faiss.omp_set_num_threads(before[1])
