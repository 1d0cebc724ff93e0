"""Encode a query and search the index: shared by /predict, /search and /similar.

Search ranks products by the categorizer's modality weights applied to exact cosine
similarities: candidates come from each modality's FAISS index, then every candidate
is scored on every modality the query and the product both have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from indexer.catalog import CATEGORY_SEPARATOR, Product
from indexer.store import IndexStore

from .errors import ApiError
from .inputs import QueryInput, decode_image
from .state import Loaded


@dataclass
class Encoded:
    vectors: dict[str, np.ndarray]
    timing_ms: dict[str, float] = field(default_factory=dict)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def encode_query(loaded: Loaded, query: QueryInput) -> Encoded:
    """Vectors (1, dim) per modality present in the query; 400 when there is none."""
    text = query.text
    if query.image is None and not text:
        raise ApiError(400, "send an image and/or a title or description")
    encoder = loaded.encoder
    timing = {"decode": 0.0, "encode_image": 0.0, "encode_text": 0.0}
    vectors: dict[str, np.ndarray] = {}
    if query.image is not None:
        t0 = time.perf_counter()
        image = decode_image(query.image, encoder.image_size)
        t1 = time.perf_counter()
        if "image" in loaded.store.modalities:
            vectors["image"] = encoder.encode_images([image])
        t2 = time.perf_counter()
        timing["decode"], timing["encode_image"] = _ms(t1 - t0), _ms(t2 - t1)
    if text and "text" in loaded.store.modalities:
        t0 = time.perf_counter()
        vectors["text"] = encoder.encode_texts([text])
        timing["encode_text"] = _ms(time.perf_counter() - t0)
    if not vectors:
        raise ApiError(400, "the index holds no vectors for the modalities of this query")
    return Encoded(vectors, timing)


def split_path(category: str) -> list[str]:
    return [part.strip() for part in category.split(CATEGORY_SEPARATOR) if part.strip()]


def category_filter(store: IndexStore, category: str | None) -> np.ndarray | None:
    """Bool mask of product rows under `category` ("Top" or "Top >> Sub ..."); 400 if unknown."""
    if not category:
        return None
    path = split_path(category)
    mask = np.array([list(p.category_path[: len(path)]) == path for p in store.products], dtype=bool)
    if not mask.any():
        raise ApiError(400, f"unknown category {category!r}; see GET /api/v1/categories")
    return mask


def _positions(store: IndexStore, modality: str) -> np.ndarray:
    """Product row -> position in the modality's vector array (-1 when absent); cached per store."""
    cache = store.__dict__.setdefault("_service_positions", {})
    if modality not in cache:
        rows = store.modalities[modality].rows
        positions = np.full(len(store.products), -1, dtype=np.int64)
        positions[rows] = np.arange(len(rows))
        cache[modality] = positions
    return cache[modality]


def product_vectors(store: IndexStore, row: int) -> dict[str, np.ndarray]:
    """The stored vectors of one indexed product, as (1, dim) queries."""
    out = {}
    for modality, index in store.modalities.items():
        pos = _positions(store, modality)[row]
        if pos >= 0:
            out[modality] = index.vectors[pos : pos + 1]
    return out


@dataclass
class Hit:
    row: int
    score: float
    scores: dict[str, float]


def search(
    store: IndexStore,
    vectors: dict[str, np.ndarray],
    weights: dict[str, float],
    k: int,
    allowed: np.ndarray | None = None,
    exclude_row: int | None = None,
) -> list[Hit]:
    """Top-k products by weighted cosine over the query's modalities."""
    n = len(store.products)
    if n == 0:
        return []
    fetch = max(4 * k, 50) if allowed is None else max(20 * k, 1000)
    fetch += 1 if exclude_row is not None else 0
    candidates: set[int] = set()
    for modality, q in vectors.items():
        _, rows = store.modalities[modality].search(q, min(fetch, n))
        candidates.update(int(r) for r in rows[0] if r >= 0)
    if exclude_row is not None:
        candidates.discard(exclude_row)
    if allowed is not None:
        candidates = {r for r in candidates if allowed[r]}
    if not candidates:
        return []
    rows = np.fromiter(sorted(candidates), dtype=np.int64)
    total = np.zeros(len(rows))
    weight = np.zeros(len(rows))
    per_modality = {}
    for modality, q in vectors.items():
        pos = _positions(store, modality)[rows]
        has = pos >= 0
        sims = np.full(len(rows), np.nan)
        sims[has] = store.modalities[modality].vectors[pos[has]] @ q[0]
        w = float(weights.get(modality, 1.0))
        total[has] += w * sims[has]
        weight[has] += w
        per_modality[modality] = sims
    score = total / np.maximum(weight, 1e-12)
    order = np.argsort(-score, kind="stable")[:k]
    return [
        Hit(int(rows[i]), float(score[i]),
            {m: round(float(s[i]), 4) for m, s in per_modality.items() if not np.isnan(s[i])})
        for i in order
    ]


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
