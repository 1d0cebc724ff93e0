"""JSON API under /api/v1: predict, search, products (add, correct, delete), categories (see service/openapi.yaml)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from indexer.catalog import CategoryPathError, Product, check_category_path, parse_category_path
from indexer.categorizer import Neighbor, QueryKind, describe, explain, query_text
from indexer.store import DuplicateProduct, IndexDamaged, IndexStore, ProductNotFound, delete, kept_products, relabel

from . import metrics
from .auth import check_bearer
from .config import Config
from .crossmodal import encode_image_space, search_modality, zero_shot
from .errors import ApiError, storage_error
from .inputs import MAX_CATEGORY_CHARS, decode_image, parse_number, read_category_path, read_request
from .media import clean_orphans, image_file, stage_upload, thumbnail_jpeg
from .search import category_filter, encode_query, product_public, product_vectors, search
from .state import Loaded, NotReady, ServiceState

bp = Blueprint("api", __name__, url_prefix="/api/v1")

PRODUCT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
API_ACTOR = "api-token"  # who the audit trail says acted with the writers' API_TOKEN (never the token)


def state() -> ServiceState:
    return current_app.extensions["service_state"]


def config() -> Config:
    return current_app.config["SERVICE"]


def loaded() -> Loaded:
    try:
        live = state().current()
    except NotReady as exc:
        raise ApiError(503, f"index not loaded: {exc}", "Service Unavailable") from None
    metrics.set_index_size(live.store.product_count())
    return live


def image_url(product: Product, store: IndexStore, size: int | None = None) -> str | None:
    if image_file(product, store, config().data_dir) is None:
        return None
    args: dict[str, Any] = {"size": size} if size else {}
    return url_for("api.product_image", product_id=product.id, **args)


def find_row(store: IndexStore, product_id: str) -> int:
    row = store.row_of(product_id)
    if row is None:
        raise ApiError(404, f"no product with id {product_id!r}")
    return row


def names_upload(store: IndexStore, name: str) -> bool:
    """True when a product of `store` names the uploaded photo `name`. Uploads are named
    `<product id>.<ext>` (`stage_upload`), so this is one lookup by id: O(log N), no scan."""
    row = store.row_of(Path(name).stem)
    image = store.products[row].image if row is not None else None
    return bool(image) and Path(image or "").name == name


def hits_public(live: Loaded, hits: Sequence[Neighbor]) -> list[dict]:
    out = []
    for hit in hits:
        product = live.store.products[hit.row]
        item = product_public(product, image_url(product, live.store), description_chars=300)
        item.update(score=round(hit.score, 4), modality=hit.modality)
        out.append(item)
    return out


# ---- predict ---------------------------------------------------------------------------
def listing_kind(store: IndexStore, query: Any) -> QueryKind:
    """The kind of a seller's listing (channels, words, language, vocabulary coverage): it
    chooses the threshold of the decision (indexer.categorizer.kinds)."""
    text = query_text(store, query.title, query.description)
    coverage = float(store.lexical.coverage([text])[0]) if store.lexical is not None and text else None
    return describe(query.title, query.description, photo=query.image is not None, coverage=coverage)


@bp.post("/predict")
def predict() -> Response:
    t0 = time.perf_counter()
    query = read_request(request, config())
    live = loaded()
    encoded = encode_query(live, query, config().parallel_encode)
    t1 = time.perf_counter()
    kind = listing_kind(live.store, query)
    prediction = live.categorizer.predict_vectors(encoded.vectors, k=query.k, kinds=[kind])[0]
    t2 = time.perf_counter()
    body = prediction.public()
    body["kind"] = kind.public()
    # as the listings API: {code, text, params}, so a page can say them in its own language
    body["reasons"] = explain(prediction, live.categorizer)
    for neighbor in body["neighbors"]:
        product = live.store.products[find_row(live.store, neighbor["id"])]
        neighbor["image_url"] = image_url(product, live.store)
    timing = dict(encoded.timing_ms)
    timing["search"] = round((t2 - t1) * 1000, 2)
    timing["total"] = round((time.perf_counter() - t0) * 1000, 2)
    body.update(
        timing_ms=timing,
        threshold=live.categorizer.threshold_of(kind.name),
        index_version=live.version,
    )
    metrics.observe_stages(timing)
    return jsonify(body)


# ---- search ----------------------------------------------------------------------------
@bp.post("/search")
def search_products() -> Response:
    t0 = time.perf_counter()
    cfg = config()
    query = read_request(request, cfg)
    live = loaded()
    allowed = category_filter(live.store, query.category)
    if search_modality(query.fields) == "image":  # words -> the image space (clip profile only)
        encoded = encode_image_space(live, query)
    else:
        encoded = encode_query(live, query, config().parallel_encode)
    t1 = time.perf_counter()
    k = query.k or cfg.default_k
    hits = search(live.categorizer, encoded.vectors, k, allowed)
    timing = dict(encoded.timing_ms)
    timing["search"] = round((time.perf_counter() - t1) * 1000, 2)
    timing["total"] = round((time.perf_counter() - t0) * 1000, 2)
    return jsonify(
        results=hits_public(live, hits),
        k=k,
        category=query.category,
        modalities=sorted(encoded.vectors),
        timing_ms=timing,
        index_version=live.version,
    )


@bp.post("/zero-shot")
def zero_shot_categories() -> Response:
    """A photo scored against categories named in the request (clip profile only)."""
    return jsonify(zero_shot(loaded(), read_request(request, config())))


# ---- products --------------------------------------------------------------------------
@bp.get("/products/<product_id>")
def get_product(product_id: str) -> Response:
    live = loaded()
    product = live.store.products[find_row(live.store, product_id)]
    body = product_public(product, image_url(product, live.store))
    channels = product_vectors(live.store, find_row(live.store, product_id))
    body["modalities"] = sorted(m for m in channels if m in live.store.modalities)
    return jsonify(body)


@bp.get("/products/<product_id>/similar")
def similar_products(product_id: str) -> Response:
    from .inputs import parse_k

    cfg = config()
    live = loaded()
    row = find_row(live.store, product_id)
    k = parse_k(request.args.get("k"), cfg) or cfg.default_k
    allowed = category_filter(live.store, request.args.get("category"))
    vectors = product_vectors(live.store, row)
    modality = request.args.get("modality")
    if modality is not None:
        if modality not in live.store.modalities:
            raise ApiError(400, f"modality must be one of {', '.join(sorted(live.store.modalities))}")
        if modality not in vectors:
            raise ApiError(400, f"product {product_id} has no {modality} vector")
        # "text" keeps the lexical channel: both are the product's text
        vectors = {m: v for m, v in vectors.items() if m == modality or (modality == "text" and m == "lexical")}
    hits = search(live.categorizer, vectors, k, allowed, exclude_row=row)
    return jsonify(id=product_id, results=hits_public(live, hits), k=k, index_version=live.version)


@bp.get("/products/<product_id>/image")
def product_image(product_id: str) -> ResponseReturnValue:
    cfg = config()
    live = loaded()
    product = live.store.products[find_row(live.store, product_id)]
    raw = request.args.get("size", str(cfg.thumb_default))
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, f"size must be an integer, got {raw!r}") from None
    if not cfg.thumb_min <= size <= cfg.thumb_max:
        raise ApiError(400, f"size must be between {cfg.thumb_min} and {cfg.thumb_max}")
    path = image_file(product, live.store, cfg.data_dir)
    if path is None:
        raise ApiError(404, f"product {product_id} has no image")
    try:
        data = thumbnail_jpeg(path, size)
    except Exception as exc:  # ImageError or an unreadable file: the photo is unusable
        raise ApiError(404, f"image of product {product_id} cannot be read: {exc}") from None
    response = Response(data, mimetype="image/jpeg")
    response.set_etag(hashlib.sha256(data).hexdigest()[:32])
    response.cache_control.public = True
    response.cache_control.max_age = 86400
    return response.make_conditional(request)


def _check_token() -> None:
    check_bearer(config().api_token, "API_TOKEN", "writes are")


@bp.post("/products")
def add_product() -> Response:
    from indexer.pipeline import add_products

    _check_token()
    cfg = config()
    query = read_request(request, cfg)
    fields = query.fields
    if not query.title:
        raise ApiError(400, "a product needs a title")
    path = read_category_path(fields)
    brand = fields.get("brand")
    if brand is not None and (not isinstance(brand, str) or len(brand) > 1000):
        raise ApiError(400, "brand must be a string of at most 1000 characters")
    price = parse_number(fields.get("price"), "price", minimum=0.0)
    live = loaded()
    if query.image is not None:
        decode_image(query.image, live.encoder.image_size)  # 422 before anything is written
    product_id = (
        fields.get("id")
        or hashlib.sha256(
            b"\0".join(
                [query.image or b"", query.title.encode(), query.description.encode(), " >> ".join(path).encode()]
            )
        ).hexdigest()[:32]
    )
    if not isinstance(product_id, str) or not PRODUCT_ID.match(product_id):
        raise ApiError(400, "id must be 1-64 letters, digits, '-' or '_'")
    if live.store.row_of(product_id) is not None:
        raise ApiError(409, f"product {product_id} is already in the index", "Conflict")
    if current_app.extensions["listings"].queue.get(product_id) is not None:
        raise ApiError(409, f"id {product_id} belongs to a listing (GET /api/v1/review/{product_id})", "Conflict")
    index_dir = state().index_dir
    staged = final = None
    try:
        if query.image is not None:
            staged, final = stage_upload(index_dir, product_id, query.image)
        product = Product(
            id=product_id,
            name=query.title,
            description=query.description,
            brand=(brand or "").strip() or None,
            price=price,
            category_path=path,
            image=final.name if final else None,
            image_path=final,
        )

        def move_photo_into_place(winner: IndexStore) -> None:
            """Under the write lock, once this add is known to win: the photo takes its name, and
            photos no kept version names any more are removed."""
            if staged is not None and final is not None:
                os.replace(staged, final)
            held: list = []

            def referenced(name: str) -> bool:
                if name == product.image or names_upload(winner, name):
                    return True
                if not held:  # read the kept versions only when the live one does not name a photo
                    held.append(kept_products(index_dir))
                return bool(held[0](Path(name).stem))

            clean_orphans(index_dir, referenced)

        store, report = add_products(
            index_dir,
            [dataclasses.replace(product, image_path=staged)] if staged else [product],
            live.encoder,
            before_publish=move_photo_into_place,
            stored=[product],
            actor=API_ACTOR,
        )
    except DuplicateProduct as exc:  # another request added the same id first
        raise ApiError(409, str(exc), "Conflict") from None
    except IndexDamaged as exc:  # no writer builds on damage; reads go on from the version served
        raise ApiError(
            503,
            f"the index cannot take adds: {exc}; reads keep working from the version served",
            "Service Unavailable",
        ) from None
    except OSError as exc:
        problem = storage_error(exc, "the product was not added; nothing stored before was lost")
        if problem is None:
            raise
        raise problem from exc
    finally:
        if staged is not None:
            with contextlib.suppress(OSError):  # a read-only disk: the staged file could not be made anyway
                staged.unlink(missing_ok=True)  # still there only if this add lost or failed
    state().adopt(store)
    metrics.set_index_size(store.product_count())
    current_app.extensions["recalibrator"].changed()
    body = product_public(product, image_url(product, store))
    body["index_version"] = store.version
    body["issues"] = report.to_dict()["counts"]
    response = jsonify(body)
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_product", product_id=product_id)
    return response


def _new_category(body: object) -> tuple[str, ...]:
    """The new path of a PATCH, sent once: {"category": "A >> B >> C"} or {"category_path":
    ["A", "B", "C"]} (both, or neither: 400, as for POST /products). Stricter than the add:
    a blank level is refused, not dropped, since it changes a product already filed."""
    if not isinstance(body, dict):
        raise ApiError(400, 'send a JSON object: {"category": "A >> B >> C"}')
    unknown = sorted(set(body) - {"category", "category_path"})
    if unknown:
        raise ApiError(400, f"only the category can be changed; unknown fields: {', '.join(unknown[:5])}")
    if "category" in body and "category_path" in body:
        raise ApiError(400, "send the category once: either 'category' ('A >> B >> C') or 'category_path' (its levels)")
    raw = body.get("category")
    if isinstance(raw, str) and len(raw) > MAX_CATEGORY_CHARS:
        raise ApiError(400, f"category is {len(raw)} characters, over the {MAX_CATEGORY_CHARS}-character limit")
    try:
        if "category_path" in body:
            return check_category_path(body["category_path"])
        if "category" in body:
            return parse_category_path(raw)
    except CategoryPathError as exc:
        raise ApiError(400, f"malformed category: {exc}") from None
    raise ApiError(400, 'send the new category: {"category": "A >> B >> C"}')


@bp.patch("/products/<product_id>")
def relabel_product(product_id: str) -> Response:
    """Give a product a new category path (a path new to the index is allowed: it becomes a
    category). The next vote uses it. Recorded in the audit trail as the writers' token."""
    _check_token()
    if not request.is_json:
        raise ApiError(415, 'send application/json: {"category": "A >> B >> C"}')
    body = request.get_json(silent=True)
    live = loaded()
    find_row(live.store, product_id)  # an unknown product is 404 whatever the body says
    path = _new_category(body)
    try:
        store = relabel(live.store, {product_id: path}, actor=API_ACTOR)
    except ProductNotFound:  # deleted by another request meanwhile
        raise ApiError(404, f"no product with id {product_id!r}") from None
    if store is not live.store:
        state().adopt(store)
    product = store.products[find_row(store, product_id)]
    out = product_public(product, image_url(product, store))
    out["index_version"] = store.version
    return jsonify(out)


@bp.delete("/products/<product_id>")
def delete_product(product_id: str) -> Response:
    """Delete a product: from the next request on it is in no search, vote, similar products or
    category count, and its id answers 404. Recorded in the audit trail as the writers' token."""
    _check_token()
    live = loaded()
    find_row(live.store, product_id)
    try:
        store = delete(live.store, [product_id], actor=API_ACTOR)
    except ProductNotFound:  # deleted by another request meanwhile
        raise ApiError(404, f"no product with id {product_id!r}") from None
    state().adopt(store)
    metrics.set_index_size(store.product_count())
    return Response(status=204)


# ---- categories ------------------------------------------------------------------------
@bp.get("/categories")
def categories() -> Response:
    live = loaded()
    return jsonify(
        categories=live.store.category_index().counts(),
        total=live.store.product_count(),
        index_version=live.version,
    )
