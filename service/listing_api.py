"""JSON API for listings and their review: POST /api/v1/listings (API_TOKEN), the review queue
GET /api/v1/review, GET/POST /api/v1/review/<id>, GET /api/v1/review/<id>/image (REVIEW_TOKEN).
The lifecycle itself is in service.listings; see service/openapi.yaml for the contract."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from indexer.categorizer import explain, top_choices
from indexer.store import DecisionConflict, Listing, ListingNotFound, ListingStatus

from .api import PRODUCT_ID, config, image_url, listing_kind, loaded
from .auth import check_bearer
from .errors import ApiError
from .inputs import parse_json_body, parse_number, read_request
from .listings import AlreadyIndexed, Listings
from .media import image_extension, image_file, thumbnail_jpeg
from .search import encode_query, split_path

bp = Blueprint("listings", __name__, url_prefix="/api/v1")

MAX_REVIEW_PAGE = 100


def listings() -> Listings:
    return current_app.extensions["listings"]


def _check_reviewer() -> None:
    check_bearer(config().review_token, "REVIEW_TOKEN", "reviews are")


# ---- listings --------------------------------------------------------------------------
def _brand_price(fields: Any) -> tuple[str | None, float | None]:
    brand = fields.get("brand")
    if brand is not None and (not isinstance(brand, str) or len(brand) > 1000):
        raise ApiError(400, "brand must be a string of at most 1000 characters")
    return (brand or "").strip() or None, parse_number(fields.get("price"), "price", minimum=0.0)


@bp.post("/listings")
def create_listing() -> Response:
    """Categorize a listing; file it in the index (auto) or queue it for a reviewer (review)."""
    check_bearer(config().api_token, "API_TOKEN", "writes are")
    cfg = config()
    query = read_request(request, cfg)
    fields = query.fields
    if not query.title:
        raise ApiError(400, "a listing needs a title")
    brand, price = _brand_price(fields)
    parts = [query.image or b"", query.title.encode(), query.description.encode(), (brand or "").encode()]
    content_key = hashlib.sha256(b"\0".join([*parts, repr(price).encode()])).hexdigest()
    listing_id = fields.get("id") or content_key[:32]
    if not isinstance(listing_id, str) or not PRODUCT_ID.match(listing_id):
        raise ApiError(400, "id must be 1-64 letters, digits, '-' or '_'")
    live = loaded()
    queue = listings().queue
    existing = queue.get(listing_id)
    if existing is None and live.store.row_of(listing_id) is not None:
        raise ApiError(409, f"product {listing_id} is already in the index", "Conflict")
    if existing is not None:  # a replay (same content) or a clash (409): nothing to predict
        body, created = listings().submit(Listing(id=listing_id, content_key=content_key, title=query.title), None)
    else:
        encoded = encode_query(live, query, cfg.parallel_encode)  # 422 for a photo that does not decode
        kind = listing_kind(live.store, query)  # as /predict: the kind chooses the threshold
        prediction = live.categorizer.predict_vectors(encoded.vectors, k=query.k, kinds=[kind])[0]
        threshold = live.categorizer.threshold_of(kind.name)
        auto = prediction.decision == "auto" and prediction.category is not None
        listing = Listing(
            id=listing_id,
            content_key=content_key,
            title=query.title,
            description=query.description,
            brand=brand,
            price=price,
            category=prediction.category,
            category_path=list(prediction.category_path),
            top=top_choices(prediction),
            reasons=explain(prediction, live.categorizer),
            neighbours=[n.public() for n in prediction.neighbors],
            prediction={
                "confidence": round(prediction.confidence, 4),
                "raw_confidence": round(prediction.raw_confidence, 4),
                "decision_score": None if prediction.decision_score is None else round(prediction.decision_score, 4),
                "threshold": threshold,
                "kind": kind.name,
                "model_id": live.store.manifest.get("model_id"),
                "index_version": live.version,
            },
            status=ListingStatus.FILING if auto else ListingStatus.WAITING,
        )
        extension = image_extension(query.image) if query.image is not None else "jpg"
        try:
            body, created = listings().submit(listing, query.image, extension)
        except AlreadyIndexed as exc:
            raise ApiError(409, str(exc), "Conflict") from None
    response = jsonify(body)
    response.status_code = 201 if created else 200
    if body["where"] == "index":
        response.headers["Location"] = url_for("api.get_product", product_id=listing_id)
    else:
        response.headers["Location"] = url_for("listings.get_review_item", listing_id=listing_id)
    return response


# ---- review ----------------------------------------------------------------------------
def _review_public(listing: Listing) -> dict[str, Any]:
    """A queued listing with links: its photo (reviewer token) and its neighbours' photos."""
    body = listing.public()
    body["image_url"] = (
        url_for("listings.review_image", listing_id=listing.id) if listings().queue.photo_file(listing) else None
    )
    store = loaded().store
    neighbours = []
    for item in body["neighbours"]:
        item = dict(item)
        row = store.row_of(item["id"])
        item["image_url"] = image_url(store.products[row], store) if row is not None else None
        neighbours.append(item)
    body["neighbours"] = neighbours
    return body


def _limit(raw: str | None) -> int:
    if raw in (None, ""):
        return 20
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"limit must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_REVIEW_PAGE:
        raise ApiError(400, f"limit must be between 1 and {MAX_REVIEW_PAGE}, got {value}")
    return value


@bp.get("/review")
def review_queue() -> Response:
    """Listings waiting for a reviewer, oldest first."""
    _check_reviewer()
    listings().recover()
    limit = _limit(request.args.get("limit"))
    category = split_path(request.args.get("category") or "")
    queue = listings().queue
    items = queue.waiting(limit, category or None)
    return jsonify(
        listings=[_review_public(item) for item in items],
        waiting=queue.count(ListingStatus.WAITING),
        limit=limit,
        category=" >> ".join(category) or None,
    )


def _find(listing_id: str) -> Listing:
    listing = listings().queue.get(listing_id)
    if listing is None:
        raise ApiError(404, f"no listing with id {listing_id!r}")
    return listing


@bp.get("/review/<listing_id>")
def get_review_item(listing_id: str) -> Response:
    _check_reviewer()
    return jsonify(_review_public(_find(listing_id)))


@bp.get("/review/<listing_id>/image")
def review_image(listing_id: str) -> ResponseReturnValue:
    """The listing's photo as a JPEG thumbnail (reviewers only: it is not a product yet)."""
    _check_reviewer()
    cfg = config()
    listing = _find(listing_id)
    raw = request.args.get("size", str(cfg.thumb_default))
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, f"size must be an integer, got {raw!r}") from None
    if not cfg.thumb_min <= size <= cfg.thumb_max:
        raise ApiError(400, f"size must be between {cfg.thumb_min} and {cfg.thumb_max}")
    path = listings().queue.photo_file(listing)
    if path is None:  # decided listings' photos have moved to the product (or were dropped)
        store = loaded().store
        row = store.row_of(listing_id)
        path = image_file(store.products[row], store, cfg.data_dir) if row is not None else None
    if path is None:
        raise ApiError(404, f"listing {listing_id} has no photo")
    response = Response(thumbnail_jpeg(path, size), mimetype="image/jpeg")
    response.cache_control.private = True
    return response


def _decision(body: Any) -> tuple[dict, bool]:
    """({"category_path": [...]} or {"reject": True}, new_category) from a decision body; 400 otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, 'send a JSON object: {"category": "A >> B >> C"} or {"reject": true}')
    unknown = set(body) - {"category", "category_path", "reject", "new_category"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    new_category = body.get("new_category", False)
    if not isinstance(new_category, bool):
        raise ApiError(400, "new_category must be true or false")
    reject = body.get("reject")
    if body.get("category") is not None and body.get("category_path") is not None:
        raise ApiError(400, "send category or category_path, not both")
    has_category = body.get("category") is not None or body.get("category_path") is not None
    if reject is not None and reject is not True:
        raise ApiError(400, "reject must be true (or leave it out and send a category)")
    if reject and has_category:
        raise ApiError(400, "send a category or reject, not both")
    if reject:
        return {"reject": True}, new_category
    listed = body.get("category_path")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise ApiError(400, "category_path must be a list of strings")
        path = [p.strip() for p in listed]
        if any(not p for p in path):
            raise ApiError(400, "category_path holds a blank level")
    else:
        raw = body.get("category")
        if raw is not None and not isinstance(raw, str):
            raise ApiError(400, "category must be a string like 'A >> B >> C'")
        path = split_path(raw or "")
    if not path:
        raise ApiError(400, 'send {"category": "A >> B >> C"} (a category path) or {"reject": true}')
    if len(path) > 10 or any(len(p) > 200 for p in path):
        raise ApiError(400, "a category path holds at most 10 levels of at most 200 characters")
    return {"category_path": path}, new_category


@bp.post("/review/<listing_id>")
def decide(listing_id: str) -> Response:
    """Record a reviewer's decision and apply it: the listing becomes a labelled product, or is dropped."""
    _check_reviewer()
    listings().recover()
    if request.mimetype != "application/json":
        raise ApiError(415, f"send application/json (got content type {request.mimetype or 'none'})")
    body = parse_json_body(request.get_data(cache=True), config().max_json_depth)
    decision, new_category = _decision(body)
    listing = _find(listing_id)
    path = decision.get("category_path")
    same_again = listing.decision is not None and listing.decision == decision
    if path and not new_category and not same_again and loaded().store.category_index().filter(path) is None:
        raise ApiError(
            422,
            f"category {' >> '.join(path)!r} does not exist in the index yet; pick an existing one "
            '(GET /api/v1/categories) or send "new_category": true to create it',
            "Unknown category",
        )
    try:
        result = listings().decide(listing_id, decision)
    except ListingNotFound:
        raise ApiError(404, f"no listing with id {listing_id!r}") from None
    except DecisionConflict as exc:
        raise ApiError(409, str(exc), "Conflict", decision=exc.listing.decision) from None
    except AlreadyIndexed as exc:
        raise ApiError(409, f"{exc}; the listing waits again", "Conflict") from None
    return jsonify(result)
