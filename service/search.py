"""Encode a query and search the index: shared by /predict, /search and /similar.

Queries are encoded by indexer.categorizer.vote.query_channels and ranked by Categorizer.neighbors,
so search shows exactly the neighbourhood the category vote is based on.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from indexer.catalog import Product
from indexer.categorizer import Categorizer, Neighbor, query_channels, query_text, stored_queries
from indexer.store import IndexStore, RowFilter

from .errors import ApiError
from .inputs import QueryInput, decode_image, split_path
from .state import Loaded


@dataclass
class Encoded:
    vectors: dict
    timing_ms: dict[str, float] = field(default_factory=dict)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


_pool: tuple[int, ThreadPoolExecutor] | None = None
# one forward pass per model at a time in a process: with gthread workers several request
# threads share one encoder, and a tokenizer is not safe to call from two threads at once
_model_locks = {"image": threading.Lock(), "text": threading.Lock()}


def _executor() -> ThreadPoolExecutor:
    """One helper thread per process, created after fork (threads do not survive a fork)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode-text"))
    return _pool[1]


def encode_query(loaded: Loaded, query: QueryInput, parallel: bool = True) -> Encoded:
    """Every channel's (1, dim) query (image, text, lexical) via indexer.categorizer.vote.query_channels;
    400 when the query has neither an image nor text.

    With both an image and text, the text is encoded on a helper thread while this one
    decodes and encodes the image: torch releases the GIL, so on two cores a request
    costs about max(image, text) instead of their sum.
    """
    store, encoder = loaded.store, loaded.encoder
    text = query_text(store, query.title, query.description)
    if query.image is None and not text:
        raise ApiError(400, "send an image and/or a title or description")
    timing = {"decode": 0.0, "encode_image": 0.0, "encode_text": 0.0}
    vectors: dict = {}

    def encode_text() -> tuple[dict[str, Any], float]:
        t0 = time.perf_counter()
        with _model_locks["text"]:
            channels = query_channels(store, encoder, texts=[text])  # dense text + lexical
        return channels, _ms(time.perf_counter() - t0)

    pending = None
    if parallel and text and query.image is not None:
        pending = _executor().submit(encode_text)
    try:
        if query.image is not None:
            t0 = time.perf_counter()
            image = decode_image(query.image, encoder.image_size)
            t1 = time.perf_counter()
            with _model_locks["image"]:
                vectors.update(query_channels(store, encoder, images=[image]))
            timing["decode"], timing["encode_image"] = _ms(t1 - t0), _ms(time.perf_counter() - t1)
    finally:
        if pending is not None:
            channels, timing["encode_text"] = pending.result()
            vectors.update(channels)
    if text and pending is None:
        channels, timing["encode_text"] = encode_text()
        vectors.update(channels)
    return Encoded(vectors, timing)


def category_filter(store: IndexStore, category: str | None) -> RowFilter | None:
    """The rows under `category` ("Top" or "Top >> Sub ...") as a filter the search applies
    inside each channel; 404 if the index has no such category (the filter names something
    that does not exist, the query is valid). O(1): the store groups rows by category once per
    loaded version and caches the filter."""
    if not category:
        return None
    row_filter = store.category_index().filter(split_path(category))
    if row_filter is None:
        raise ApiError(404, f"unknown category {category!r}; see GET /api/v1/categories")
    return row_filter


def product_vectors(store: IndexStore, row: int) -> dict:
    """The stored vectors of one indexed product as (1, dim) queries, per channel it has."""
    return {c: q for c, q in stored_queries(store, [row]).items() if store.positions(c)[row] >= 0}


def search(
    categorizer: Categorizer,
    vectors: dict,
    k: int,
    allowed: RowFilter | None = None,
    exclude_row: int | None = None,
) -> list[Neighbor]:
    """Top-k products by the categorizer's own fused similarity (the ranking its vote uses),
    `allowed` applied inside the search and `exclude_row` (the query product) skipped:
    no per-request work over the catalogue."""
    if exclude_row is not None:
        allowed = (allowed or RowFilter(categorizer.store, None)).without([exclude_row])
    return categorizer.neighbors(vectors, k=k, allowed=allowed)[0]


def product_public(product: Product, image_url: str | None, description_chars: int | None = None) -> dict:
    """A product as the API shows it (no server paths)."""
    description = product.description or ""
    if description_chars is not None and len(description) > description_chars:
        description = description[:description_chars].rstrip() + "…"
    return {
        "id": product.id,
        "name": product.name,
        "description": description,
        "brand": product.brand,
        "price": product.price,
        "category": product.category,
        "category_path": list(product.category_path),
        "image_url": image_url,
    }
