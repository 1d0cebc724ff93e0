"""Cross-modal search and zero-shot categories: what only a profile with a joint
image-text space (the `clip` profile's `encode_image_queries`) can answer.

* `POST /api/v1/search` with `modality: image`: the query's words go through the CLIP
  text tower into the *image* space and search the image index (a photo, if sent, is
  added to the same image-space query).
* `POST /api/v1/zero-shot`: a photo scored against categories given by name only, from
  prompts built from each name, so a category with no labelled product works on day one.

The embedded profile has no such space: both answer 409 problem+json (the request is valid,
the index's state cannot serve it; an index built with the clip profile can) naming that
profile. Cost: one text-tower pass per prompt (len(PROMPTS) x categories) and one image
pass per request; the search itself is the image index's k-NN.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from indexer.categorizer import query_text
from indexer.encoders import Encoder, l2_normalize

from .errors import ApiError
from .inputs import QueryInput, decode_image
from .search import Encoded
from .state import Loaded

CROSS_MODAL_PROFILE = "clip"
SEARCH_MODALITIES = ("image",)
PROMPTS = ("a photo of {}.", "a product photo of {}, sold online.", "{}")
LOGIT_SCALE = 100.0  # CLIP's trained temperature: softmax over 100 x cosine
MAX_CATEGORIES = 200


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def require_cross_modal(loaded: Loaded, what: str) -> Encoder:
    """The encoder, if it maps text into the image space; else a 409 naming the profile that does."""
    encoder = loaded.encoder
    if not callable(getattr(encoder, "encode_image_queries", None)):
        raise ApiError(
            409,
            f"{what} needs an index built with the {CROSS_MODAL_PROFILE!r} profile (a joint image-text space); "
            f"this index uses the {loaded.store.profile!r} profile, which has none. "
            f"Rebuild with: python -m indexer build --profile {CROSS_MODAL_PROFILE}",
            "Not available with this profile",
            profile=loaded.store.profile,
            required_profile=CROSS_MODAL_PROFILE,
        )
    return encoder


def search_modality(fields: Mapping) -> str | None:
    """The `modality` field of a search request: absent (all channels) or "image"."""
    raw = fields.get("modality")
    if raw in (None, ""):
        return None
    if raw not in SEARCH_MODALITIES:
        raise ApiError(
            400, f"modality must be one of {', '.join(SEARCH_MODALITIES)} (or omitted for every channel), got {raw!r}"
        )
    return str(raw)


def encode_image_space(loaded: Loaded, query: QueryInput) -> Encoded:
    """One image-space query from the words (CLIP text tower) and/or the photo (image tower)."""
    encoder = require_cross_modal(loaded, "searching the image space")
    if "image" not in loaded.store.modalities:
        raise ApiError(400, "this index holds no image vectors to search")
    text = query_text(loaded.store, query.title, query.description)
    if query.image is None and not text:
        raise ApiError(400, "send a title or description (and/or an image) to search the image space")
    parts, timing = [], {}
    if text:
        t0 = time.perf_counter()
        parts.append(encoder.encode_image_queries([text]))  # type: ignore[attr-defined]
        timing["encode_text"] = _ms(time.perf_counter() - t0)
    if query.image is not None:
        t0 = time.perf_counter()
        parts.append(encoder.encode_images([decode_image(query.image, encoder.image_size)]))
        timing["encode_image"] = _ms(time.perf_counter() - t0)
    return Encoded({"image": l2_normalize(np.sum(parts, axis=0))}, timing)


def requested_categories(fields: Mapping, default: Sequence[str]) -> list[str]:
    """`categories` of a request: a JSON list, or form fields (repeated and/or one per line);
    `default` (the index's categories) when absent. Duplicates dropped, order kept."""
    raw: object = fields.get("categories")
    if hasattr(fields, "getlist"):
        raw = [line for value in fields.getlist("categories") for line in str(value).splitlines()]
    if raw is not None and not (isinstance(raw, list) and all(isinstance(c, str) for c in raw)):
        raise ApiError(400, "categories must be a list of category names")
    names = list(dict.fromkeys(c.strip() for c in raw or [] if c.strip())) or list(default)  # blank: ignored
    if not names:
        raise ApiError(400, "no categories to score: the index has none and the request gave none")
    if len(names) > MAX_CATEGORIES:
        raise ApiError(400, f"at most {MAX_CATEGORIES} categories per request, got {len(names)}")
    return names


def category_vectors(encoder: Encoder, names: Sequence[str]) -> np.ndarray:
    """Per category, the normalised mean of its prompts' image-space vectors (prompt ensembling)."""
    prompts = [template.format(name) for name in names for template in PROMPTS]
    vectors = encoder.encode_image_queries(prompts)  # type: ignore[attr-defined]
    return l2_normalize(vectors.reshape(len(names), len(PROMPTS), -1).mean(axis=1))


def zero_shot(loaded: Loaded, query: QueryInput) -> dict:
    """Scores of the photo for each named category: softmax of LOGIT_SCALE x cosine to its prompts."""
    if query.image is None:
        raise ApiError(400, "send the product photo (image or image_base64) to score categories zero-shot")
    known = set(loaded.store.categories())
    names = requested_categories(query.fields, sorted(known))  # bad input is a 400 on any profile
    encoder = require_cross_modal(loaded, "zero-shot categories")
    t0 = time.perf_counter()
    image = encoder.encode_images([decode_image(query.image, encoder.image_size)])[0]
    t1 = time.perf_counter()
    logits = LOGIT_SCALE * (category_vectors(encoder, names) @ image)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")
    return {
        "category": names[int(order[0])],
        "scores": {names[i]: round(float(probabilities[i]), 6) for i in order},
        "labelled_in_index": {name: name in known for name in names},
        "prompts": list(PROMPTS),
        "profile": loaded.store.profile,
        "timing_ms": {"encode_image": _ms(t1 - t0), "encode_prompts": _ms(time.perf_counter() - t1)},
    }
