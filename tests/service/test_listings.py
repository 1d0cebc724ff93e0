"""Listings and their review through the HTTP API (Flask test client, a writable copy of the
real index): auto listings filed and audited, unsure ones queued, reviewers' decisions applied
once, every bad input a clear 4xx problem+json, and each crash point finished by recovery."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from service_support import copy_index, edit_manifest, photo_products

from indexer.store import AuditLog, open_store
from indexer.store.review import DECIDING, DONE, FILED, FILING, WAITING
from service.app import create_app
from service.config import Config
from service.listings import Listings

pytestmark = pytest.mark.integration

WRITER, REVIEWER = "writer-token", "reviewer-token"
W = {"Authorization": f"Bearer {WRITER}"}
R = {"Authorization": f"Bearer {REVIEWER}"}
PROBLEM = "application/problem+json"


def noise_jpeg(seed: int, quality: int = 90, size: int = 96) -> bytes:
    """A photo like no catalogue product (seeded noise); another quality is its near-twin."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture()
def index_dir(service_index, tmp_path):
    """A fresh copy per test: decided listings (made-up words) would make later ones look familiar."""
    return copy_index(service_index, tmp_path / "index")


@pytest.fixture()
def app(index_dir, embedded_encoder, real_data_dir):
    config = Config(index_dir=str(index_dir), data_dir=str(real_data_dir), api_token=WRITER, review_token=REVIEWER)
    return create_app(config, encoder=embedded_encoder)


@pytest.fixture()
def client(app):
    return app.test_client()


def assert_problem(response, status: int, part: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["detail"]
    if part:
        assert part.lower() in body["detail"].lower(), body["detail"]
    return body


SYLLABLES = ("zor", "blax", "qui", "nfe", "ep", "vad", "rul", "ox", "tem", "pli", "gru", "mek", "sna", "fiv")


def nonsense(seed: int) -> str:
    """Three made-up words (seeded): text that points at no category."""
    rng = np.random.default_rng(seed)
    return " ".join("".join(rng.choice(SYLLABLES, 3)) for _ in range(3)).capitalize()


def list_unsure(client, lid: str, seed: int, photo: bool = False) -> dict:
    """A listing the vote is unsure about: made-up words (and a noise photo), queued for review."""
    data = {"id": lid, "title": nonsense(seed)}
    if photo:
        data["image"] = (io.BytesIO(noise_jpeg(seed)), "p.jpg")
    response = client.post("/api/v1/listings", data=data, headers=W, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["decision"] == "review" and body["where"] == "review", body
    return body


# ---- listings ------------------------------------------------------------------------------
@pytest.fixture()
def calibrated(service_index, embedded_encoder, real_data_dir, tmp_path):
    """An app whose index decides a photo + title + description listing automatically from a
    combined confidence of 0.9 (the real catalogue's own fit may leave a kind without threshold)."""
    index_dir = copy_index(service_index, tmp_path / "calibrated")
    edit_manifest(index_dir, lambda m: m["categorizer"]["kinds"]["photo+text"].update(threshold=0.9))
    config = Config(index_dir=str(index_dir), data_dir=str(real_data_dir), api_token=WRITER, review_token=REVIEWER)
    return create_app(config, encoder=embedded_encoder), index_dir


def test_a_confident_listing_is_filed_with_the_model_and_threshold_that_decided(calibrated):
    app, index_dir = calibrated
    client = app.test_client()
    store = open_store(index_dir)
    ((product, path),) = photo_products(store, 1, category="Watches")
    data = {
        "id": "auto-1",
        "title": product.name,
        "description": product.description,
        "image": (io.BytesIO(path.read_bytes()), "w.jpg"),
    }
    response = client.post("/api/v1/listings", data=data, headers=W, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["id"], body["decision"], body["where"], body["category"]) == ("auto-1", "auto", "index", "Watches")
    assert [r["code"] for r in body["reasons"]] == ["confident"]
    assert response.headers["Location"].endswith("/api/v1/products/auto-1")
    filed = client.get("/api/v1/products/auto-1").get_json()
    assert filed["category_path"] == body["category_path"] and filed["image_url"]
    (entry,) = AuditLog(index_dir).history("auto-1")
    live = app.extensions["service_state"].current()
    assert (entry["action"], entry["actor"]) == ("auto-listing", "api-token")
    decided_by = entry["after"]["decided_by"]
    assert decided_by["model_id"] == live.store.manifest["model_id"] and decided_by["kind"] == "photo+text"
    assert decided_by["threshold"] == live.categorizer.threshold_of("photo+text") == 0.9
    assert decided_by["decision_score"] >= decided_by["threshold"]


def test_an_unsure_listing_waits_with_what_a_reviewer_needs(client):
    body = list_unsure(client, "unsure-1", seed=1, photo=True)
    review_rules = {"low_confidence", "kind_not_automatic", "photo_text_disagree", "weak_agreement"}
    assert body["status"] == WAITING and review_rules & {r["code"] for r in body["reasons"]}
    assert 1 <= len(body["top"]) <= 3 and body["top"][0]["path"][0] == body["category"]
    queued = client.get("/api/v1/review?limit=100", headers=R).get_json()
    item = next(x for x in queued["listings"] if x["id"] == "unsure-1")
    assert item["title"] == nonsense(1) and item["reasons"] == body["reasons"]
    assert item["neighbours"] and all(n["image_url"] or n["image_url"] is None for n in item["neighbours"])
    assert any(n["image_url"] for n in item["neighbours"])
    photo = client.get(item["image_url"] + "?size=64", headers=R)
    assert photo.status_code == 200 and photo.mimetype == "image/jpeg" and photo.data[:2] == b"\xff\xd8"
    assert client.get("/api/v1/products/unsure-1").status_code == 404  # not in the index before a decision


def test_the_queue_is_oldest_first_and_filters_by_predicted_category(client):
    first = list_unsure(client, "order-1", seed=11)
    list_unsure(client, "order-2", seed=12)
    ids = [x["id"] for x in client.get("/api/v1/review?limit=100", headers=R).get_json()["listings"]]
    assert ids.index("order-1") < ids.index("order-2")
    query = {"category": first["category"], "limit": 100}
    only = client.get("/api/v1/review", query_string=query, headers=R).get_json()
    assert "order-1" in [x["id"] for x in only["listings"]]
    assert all(x["category_path"][0] == first["category"] for x in only["listings"])
    assert client.get("/api/v1/review?limit=1", headers=R).get_json()["limit"] == 1


def test_a_replayed_listing_gets_its_first_answer_and_a_clashing_id_is_409(client):
    data = lambda: {"id": "replay-1", "title": nonsense(3), "image": (io.BytesIO(noise_jpeg(3)), "p.jpg")}  # noqa: E731
    first = client.post("/api/v1/listings", data=data(), headers=W, content_type="multipart/form-data")
    again = client.post("/api/v1/listings", data=data(), headers=W, content_type="multipart/form-data")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json() == first.get_json()
    other = {"id": "replay-1", "title": "Another gadget entirely"}
    assert_problem(client.post("/api/v1/listings", json=other, headers=W), 409, "another listing")


# ---- decisions -----------------------------------------------------------------------------
def test_a_decision_becomes_a_labelled_product_used_by_the_very_next_vote(client, index_dir):
    listed = list_unsure(client, "twin-1", seed=5, photo=True)
    target = "Watches >> Wrist Watches" if listed["category"] != "Watches" else "Baby Care"

    def predict_near_twin() -> dict:  # the same words, the photo saved at another JPEG quality
        data = {"title": nonsense(5), "image": (io.BytesIO(noise_jpeg(5, quality=70)), "t.jpg")}
        return client.post("/api/v1/predict", data=data, content_type="multipart/form-data").get_json()

    assert predict_near_twin()["category"] != target.split(" >> ")[0]
    decided = client.post("/api/v1/review/twin-1", json={"category": target}, headers=R)
    assert decided.status_code == 200, decided.get_json()
    result = decided.get_json()
    assert (result["where"], result["category_path"]) == ("index", target.split(" >> "))
    after = predict_near_twin()
    assert after["category"] == target.split(" >> ")[0]
    assert after["neighbors"][0]["id"] == "twin-1"
    product = client.get("/api/v1/products/twin-1").get_json()
    assert product["category_path"] == target.split(" >> ") and product["image_url"]
    assert not any((index_dir / "listings").glob("twin-1-*")), "the photo moved to the product"


def test_the_same_decision_twice_changes_nothing_and_another_is_409(client, index_dir):
    listed = list_unsure(client, "idem-1", seed=6)
    path = " >> ".join(listed["top"][0]["path"])
    n_before = len(open_store(index_dir).products)
    first = client.post("/api/v1/review/idem-1", json={"category": path}, headers=R)
    second = client.post("/api/v1/review/idem-1", json={"category_path": listed["top"][0]["path"]}, headers=R)
    assert (first.status_code, second.status_code) == (200, 200) and first.get_json() == second.get_json()
    assert len(open_store(index_dir).products) == n_before + 1
    body = assert_problem(client.post("/api/v1/review/idem-1", json={"reject": True}, headers=R), 409, "another")
    assert body["decision"] == {"category_path": listed["top"][0]["path"]}
    assert [e["action"] for e in AuditLog(index_dir).history("idem-1")] == ["review"]
    assert client.get("/api/v1/review/idem-1", headers=R).get_json()["status"] == DONE


def test_a_rejected_listing_is_dropped(client, index_dir):
    list_unsure(client, "reject-1", seed=7)
    response = client.post("/api/v1/review/reject-1", json={"reject": True}, headers=R)
    assert response.status_code == 200 and response.get_json()["where"] == "dropped"
    assert client.get("/api/v1/products/reject-1").status_code == 404
    assert "reject-1" not in [x["id"] for x in client.get("/api/v1/review?limit=100", headers=R).get_json()["listings"]]
    assert not any((index_dir / "listings").glob("reject-1-*"))
    assert [e["action"] for e in AuditLog(index_dir).history("reject-1")] == ["reject"]


def test_a_category_that_does_not_exist_yet_needs_new_category(client):
    list_unsure(client, "newcat-1", seed=8)
    body = {"category": "Garden >> Hoses"}
    assert_problem(client.post("/api/v1/review/newcat-1", json=body, headers=R), 422, "does not exist")
    assert client.get("/api/v1/review/newcat-1", headers=R).get_json()["status"] == WAITING
    created = client.post("/api/v1/review/newcat-1", json={**body, "new_category": True}, headers=R)
    assert created.status_code == 200 and created.get_json()["category_path"] == ["Garden", "Hoses"]
    assert client.post("/api/v1/review/newcat-1", json=body, headers=R).status_code == 200  # now it exists


def test_the_reviewer_page_can_create_a_category(client):
    """The page's "new category" box sends what the API needs to create one; without it the page
    gets the 422 it turns into a hint (review.js), and nothing is filed."""
    page = client.get("/review").get_data(as_text=True)
    form = page[page.index('<form id="other-form"') : page.index("</form>", page.index('<form id="other-form"'))]
    assert 'type="checkbox" id="other-new"' in form and 'data-text="other_new"' in form
    list_unsure(client, "newcat-page", seed=9)
    typed = {"category": "Garden >> Watering Cans"}  # what the page sends, box unticked
    assert client.post("/api/v1/review/newcat-page", json=typed, headers=R).status_code == 422
    ticked = client.post("/api/v1/review/newcat-page", json={**typed, "new_category": True}, headers=R)
    assert ticked.status_code == 200 and ticked.get_json()["category_path"] == ["Garden", "Watering Cans"]


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,status,part",
    [
        ({}, 400, "category"),
        ({"category": "  >>  "}, 400, "category"),
        ({"reject": False}, 400, "reject must be true"),
        ({"reject": True, "category": "Watches"}, 400, "not both"),
        ({"category": 3}, 400, "string"),
        ({"category_path": "Watches"}, 400, "list of strings"),
        ({"category": "Watches", "colour": "red"}, 400, "unknown field"),
        ({"category": "Watches", "category_path": ["Watches"]}, 400, "not both"),
        ({"category_path": ["Watches", " "]}, 400, "blank level"),
        ({"category": "Watches", "new_category": "yes"}, 400, "true or false"),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_malformed_decisions_are_400(client, body, status, part):
    assert_problem(client.post("/api/v1/review/bad-1", json=body, headers=R), status, part)


def test_bad_requests_are_clear_problems(client, app, index_dir):
    assert_problem(client.post("/api/v1/review/no-such-id", json={"reject": True}, headers=R), 404, "no listing")
    assert_problem(client.get("/api/v1/review/no-such-id", headers=R), 404)
    assert_problem(client.post("/api/v1/review/x", data="reject", headers=R, content_type="text/plain"), 415)
    assert_problem(client.get("/api/v1/review?limit=0", headers=R), 400, "limit")
    assert_problem(client.get("/api/v1/review?limit=many", headers=R), 400, "limit")
    assert_problem(client.post("/api/v1/listings", json={"description": "no title"}, headers=W), 400, "title")
    assert_problem(client.post("/api/v1/listings", json={"title": "x", "id": "a/b"}, headers=W), 400, "id must")
    taken = open_store(index_dir).products[0].id
    assert_problem(client.post("/api/v1/listings", json={"title": "x", "id": taken}, headers=W), 409, "already")
    bad_photo = {"title": "x", "image": (io.BytesIO(b"not an image"), "x.jpg")}
    response = client.post("/api/v1/listings", data=bad_photo, headers=W, content_type="multipart/form-data")
    assert_problem(response, 422)
    list_unsure(client, "waiting-id", seed=10)
    add = {"title": "x", "category": "Watches", "id": "waiting-id"}
    assert_problem(client.post("/api/v1/products", json=add, headers=W), 409, "belongs to a listing")


def test_tokens_are_distinct_and_required(client, service_index, embedded_encoder, tmp_path):
    tmp_path = tmp_path / "no-reviews"
    assert_problem(client.get("/api/v1/review"), 401, "Bearer")
    assert_problem(client.get("/api/v1/review", headers=W), 401, "REVIEW_TOKEN")  # a writer cannot review
    assert_problem(client.post("/api/v1/review/x", json={"reject": True}, headers=W), 401)
    assert_problem(client.post("/api/v1/listings", json={"title": "x"}, headers=R), 401, "API_TOKEN")
    assert_problem(client.post("/api/v1/listings", json={"title": "x"}), 401)
    no_reviews = create_app(
        Config(index_dir=str(copy_index(service_index, tmp_path / "i")), api_token=WRITER), encoder=embedded_encoder
    )
    assert_problem(no_reviews.test_client().get("/api/v1/review", headers=R), 403, "REVIEW_TOKEN")
    with pytest.raises(SystemExit, match="must differ"):
        Config(api_token="same", review_token="same")


# ---- crash points --------------------------------------------------------------------------
def restarted(app) -> Listings:
    """What a fresh worker process holds: a new Listings on the same state (recover runs once per process)."""
    return Listings(app.extensions["service_state"])


def test_a_decision_recorded_before_a_kill_is_applied_by_the_next_process(client, app, index_dir):
    list_unsure(client, "crash-1", seed=21)
    listings = app.extensions["listings"]
    listings.queue.record_decision("crash-1", {"category_path": ["Watches", "Wrist Watches"]}, "review-token")
    assert listings.queue.get("crash-1").status == DECIDING  # killed here: recorded, not applied
    assert restarted(app).recover() == 1
    assert listings.queue.get("crash-1").status == DONE
    assert client.get("/api/v1/products/crash-1").get_json()["category_path"] == ["Watches", "Wrist Watches"]
    assert restarted(app).recover() == 0
    again = client.post("/api/v1/review/crash-1", json={"category": "Watches >> Wrist Watches"}, headers=R)
    assert again.status_code == 200 and again.get_json()["where"] == "index"
    assert [e["action"] for e in AuditLog(index_dir).history("crash-1")] == ["review"]


def test_an_add_done_before_a_kill_is_not_applied_twice(client, app, index_dir):
    list_unsure(client, "crash-2", seed=22)
    listings = app.extensions["listings"]
    listing = listings.queue.record_decision("crash-2", {"category_path": ["Baby Care"]}, "review-token")
    # killed here: the product is indexed and in the audit trail, the row still says deciding
    listings._add(listing, ["Baby Care"], "review", "review-token", {})
    n = len(open_store(index_dir).products)
    assert restarted(app).recover() == 1
    assert len(open_store(index_dir).products) == n
    assert listings.queue.get("crash-2").status == DONE
    assert [e["action"] for e in AuditLog(index_dir).history("crash-2")] == ["review"]


def test_an_auto_listing_recorded_before_a_kill_is_filed_by_the_next_process(client, app, index_dir):
    from indexer.store import Listing

    listings = app.extensions["listings"]
    row = Listing(
        id="crash-3",
        content_key="k3",
        title=nonsense(23),
        category="Watches",
        category_path=["Watches", "Wrist Watches"],
        prediction={"model_id": "m", "threshold": 0.5},
        status=FILING,
    )
    listings.queue.submit(row)  # killed here: recorded, not filed
    assert restarted(app).recover() == 1
    assert listings.queue.get("crash-3").status == FILED
    assert client.get("/api/v1/products/crash-3").get_json()["category"] == "Watches"
    assert [e["action"] for e in AuditLog(index_dir).history("crash-3")] == ["auto-listing"]
