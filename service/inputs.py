"""Read a query (image and/or text, k, category) from a multipart or JSON request.

All validation lives here so that every endpoint rejects bad input the same way:
400 for missing/invalid fields, 415 for other content types. Images are only read
as bytes here; decoding (422 on failure) happens in `decode_image`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from flask import Request

from indexer.images import ImageError, ImageLimits, load_image

from .config import Config
from .errors import ApiError

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass
class QueryInput:
    title: str = ""
    description: str = ""
    image: bytes | None = None
    k: int | None = None
    category: str | None = None
    fields: dict = field(default_factory=dict)


def _str_field(data, name: str, limit: int) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"field '{name}' must be a string")
    if len(value) > limit:
        raise ApiError(400, f"field '{name}' is {len(value)} characters, over the {limit}-character limit")
    return value.strip()


def parse_k(raw, config: Config) -> int | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ApiError(400, f"k must be an integer, got {raw!r}")
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"k must be an integer, got {raw!r}") from None
    if not 1 <= k <= config.max_k:
        raise ApiError(400, f"k must be between 1 and {config.max_k}, got {k}")
    return k


def read_request(request: Request, config: Config) -> QueryInput:
    """The query fields of a multipart/form or JSON request (415 for anything else)."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        data = request.get_json(silent=True)
        if data is None and request.get_data(cache=True):
            raise ApiError(400, "request body is not valid JSON")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ApiError(400, "JSON body must be an object")
        image = None
        encoded = data.get("image_base64")
        if encoded not in (None, ""):
            if not isinstance(encoded, str):
                raise ApiError(400, "image_base64 must be a base64 string")
            if encoded.startswith("data:") and "," in encoded:  # tolerate data: URLs
                encoded = encoded.split(",", 1)[1]
            try:
                image = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "image_base64 is not valid base64") from None
        fields = data
    elif mimetype in FORM_TYPES:
        fields = request.form
        image = None
        upload = request.files.get("image")
        if upload is not None:
            image = upload.read() or None  # a form with no file chosen sends an empty part
            if image is None and upload.filename:
                raise ApiError(422, f"uploaded image {upload.filename!r} is empty (0 bytes)", "Unprocessable image")
    else:
        shown = mimetype or "none"
        raise ApiError(415, f"send multipart/form-data or application/json (got content type {shown})")
    category = fields.get("category")
    if category is not None and not isinstance(category, str):
        raise ApiError(400, "category must be a string")
    return QueryInput(
        title=_str_field(fields, "title", config.max_title_chars),
        description=_str_field(fields, "description", config.max_description_chars),
        image=image,
        k=parse_k(fields.get("k"), config),
        category=(category or "").strip() or None,
        fields=fields,
    )


def decode_image(data: bytes, draft_size: int | None):
    """RGB image from uploaded bytes, or 422 with indexer.images' reason."""
    try:
        return load_image(data, draft_size=draft_size, limits=ImageLimits.from_env())
    except ImageError as exc:
        raise ApiError(422, str(exc), "Unprocessable image") from None
