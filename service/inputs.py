"""Read a query (image and/or text, k, category) from a multipart or JSON request.

All validation lives here so that every endpoint rejects bad input the same way:
400 for missing/invalid fields (including NaN/Infinity and numbers out of range, text that
is not valid Unicode, JSON nested deeper than MAX_JSON_DEPTH), 415 for other content
types. Images are only read as bytes here; decoding (422 on failure) happens in `decode_image`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Request, current_app

from indexer.catalog import CATEGORY_SEPARATOR, DecodeBudget, DecodeBusy, ImageError, ImageLimits, load_image

from .config import Config
from .errors import ApiError

if TYPE_CHECKING:
    from PIL import Image

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_PATH_LEVELS = 10
MAX_CATEGORY_CHARS = 200
_NAMES_SOMETHING = re.compile(r"[^\s>]")  # the spec's pattern for `category`


@dataclass
class QueryInput:
    title: str = ""
    description: str = ""
    image: bytes | None = None
    k: int | None = None
    category: str | None = None
    fields: dict = field(default_factory=dict)


def _str_field(data: Mapping[str, Any], name: str, limit: int) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"field '{name}' must be a string")
    if len(value) > limit:
        raise ApiError(400, f"field '{name}' is {len(value)} characters, over the {limit}-character limit")
    return value.strip()


def _reject_constant(name: str) -> float:
    """json.loads' parse_constant: NaN / Infinity / -Infinity are refused, not parsed."""
    raise ApiError(400, f"JSON number {name} is not allowed: send a finite number")


def check_unicode(value: str, name: str) -> str:
    """`value` if it encodes as UTF-8; 400 naming the field for a lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"field '{name}' is not valid Unicode (lone surrogate at character {exc.start})") from None
    return value


def check_json(value: Any, max_depth: int) -> None:
    """Walk a parsed JSON value once (O(nodes), no recursion): 400 if it nests deeper than
    `max_depth`, holds a non-finite number (1e400 parses as inf) or a lone surrogate."""
    stack = [(value, 1, "body")]
    while stack:
        node, depth, name = stack.pop()
        if depth > max_depth:
            raise ApiError(400, f"JSON body is nested deeper than {max_depth} levels")
        if isinstance(node, dict):
            for key, item in node.items():
                check_unicode(key, "(a key)")
                stack.append((item, depth + 1, key if depth == 1 else name))
        elif isinstance(node, list):
            stack.extend((item, depth + 1, name) for item in node)
        elif isinstance(node, str):
            check_unicode(node, name)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ApiError(400, f"field '{name}' must be a finite number")


def parse_json_body(raw: bytes, max_depth: int) -> Any:
    """The JSON value of a request body; 400 for invalid JSON, NaN/Infinity, over-deep nesting."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, f"JSON body is nested deeper than {max_depth} levels") from None
    except ValueError:  # includes UnicodeDecodeError
        raise ApiError(400, "request body is not valid JSON") from None
    check_json(data, max_depth)
    return data


def parse_number(raw: Any, name: str, minimum: float = 0.0) -> float | None:
    """A finite number >= `minimum` from JSON or a form string; None when absent or empty."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ApiError(400, f"{name} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be a finite number, got {raw!r}")
    if value < minimum:
        raise ApiError(400, f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def parse_k(raw: str | int | float | None, config: Config) -> int | None:
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
        raw = request.get_data(cache=True)
        data = parse_json_body(raw, config.max_json_depth) if raw.strip() else {}
        if not isinstance(data, dict):
            raise ApiError(400, "JSON body must be an object")
        image = None
        encoded = data.get("image_base64")
        if encoded is not None:
            if not isinstance(encoded, str):
                raise ApiError(400, "image_base64 must be a base64 string")
            if not encoded.strip():
                raise ApiError(400, "image_base64 is empty: send the image, or leave the field out")
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


def split_path(category: str) -> list[str]:
    """The levels of an 'A >> B >> C' category string (blank levels dropped)."""
    return [part.strip() for part in category.split(CATEGORY_SEPARATOR) if part.strip()]


def read_category_path(fields: Mapping[str, Any]) -> tuple[str, ...]:
    """The category of a labeled product, from exactly one of two fields (400 otherwise):

    * `category`: the path as one string, 'A >> B >> C' (JSON or form);
    * `category_path`: its levels, a JSON array or repeated form fields; every level holds
      a non-space character (an empty list or a blank level is refused, not skipped).

    Both at once is refused rather than one silently winning; service/openapi.yaml says
    the same (ProductFields: oneOf)."""
    getlist = getattr(fields, "getlist", None)
    has_path = bool(getlist("category_path")) if getlist else "category_path" in fields
    has_category = "category" in fields
    if has_path and has_category:
        raise ApiError(400, "send the category once: either 'category' ('A >> B >> C') or 'category_path' (its levels)")
    if has_path:
        listed = getlist("category_path") if getlist else fields["category_path"]
        if not (isinstance(listed, list) and all(isinstance(p, str) for p in listed)):
            raise ApiError(400, "category_path must be a list of strings (its levels, top first)")
        if not 1 <= len(listed) <= MAX_PATH_LEVELS or any(len(p) > MAX_CATEGORY_CHARS for p in listed):
            raise ApiError(
                400, f"category_path holds 1 to {MAX_PATH_LEVELS} levels of at most {MAX_CATEGORY_CHARS} characters"
            )
        blank = [i + 1 for i, p in enumerate(listed) if not p.strip()]
        if blank:
            raise ApiError(400, f"category_path level {blank[0]} is blank: every level needs a name")
        return tuple(p.strip() for p in listed)
    raw = fields.get("category")
    if raw is not None and not isinstance(raw, str):
        raise ApiError(400, "category must be a string like 'A >> B >> C'")
    if raw is not None and len(raw) > MAX_CATEGORY_CHARS:
        raise ApiError(400, f"category is {len(raw)} characters, over the {MAX_CATEGORY_CHARS}-character limit")
    path = split_path(raw or "")
    if not any(_NAMES_SOMETHING.search(level) for level in path):
        raise ApiError(
            400,
            "a labeled product needs a category: 'category' ('Watches >> Wrist Watches') "
            "or 'category_path' (its levels)",
        )
    return tuple(path)


def check_url(environ: dict, config: Config) -> None:
    """414 problem+json when the request target (path + query) is over MAX_URL_BYTES."""
    target = environ.get("RAW_URI") or (environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", ""))
    if len(target) > config.max_url_bytes:
        raise ApiError(
            414, f"request URL is {len(target)} bytes, over the {config.max_url_bytes}-byte limit", "URI Too Long"
        )


def decode_budget(config: Config) -> DecodeBudget:
    """The app's decode budget: one per worker process (gunicorn forks the app before any request)."""
    return DecodeBudget(config.decode_budget_pixels, config.decode_wait_seconds)


def decode_image(data: bytes, draft_size: int | None) -> Image.Image:
    """RGB image from uploaded bytes, or 422 with indexer.catalog.images' reason; 503 with
    Retry-After when the worker's decode budget stays full (a burst of huge images)."""
    budget = current_app.extensions.get("decode_budget")
    try:
        return load_image(data, draft_size=draft_size, limits=ImageLimits.from_env(), budget=budget)
    except ImageError as exc:
        raise ApiError(422, str(exc), "Unprocessable image") from None
    except DecodeBusy as exc:
        raise ApiError(503, str(exc), "Service Unavailable", retry_after=exc.retry_after) from None


class _DeadlineStream:
    """wsgi.input that turns a body cut short by `BodyDeadline` into 408; cancels the
    deadline once the whole body has arrived (`length` bytes, or the end of a chunked body)."""

    def __init__(
        self, stream: Any, length: int | None, expired: threading.Event, done: Callable[[], None], seconds: float
    ) -> None:
        self._stream = stream
        self._left = length
        self._expired = expired
        self._done = done
        self._seconds = seconds

    def _after(self, data: bytes, asked: int | None = None) -> bytes:
        if self._left is not None:
            self._left -= len(data)
            finished = self._left <= 0
        else:  # chunked: the stream says b"" at the end of the body
            finished = not data and asked != 0
        if finished:
            self._done()
        elif self._expired.is_set():
            raise _timeout(self._seconds)
        return data

    def read(self, *args: int) -> bytes:
        try:
            return self._after(self._stream.read(*args), args[0] if args else None)
        except Exception:
            if self._expired.is_set():
                raise _timeout(self._seconds) from None
            raise

    def readinto(self, buffer: bytearray) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, *args: int) -> bytes:
        try:
            return self._after(self._stream.readline(*args))
        except Exception:
            if self._expired.is_set():
                raise _timeout(self._seconds) from None
            raise

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def __getattr__(self, name: str) -> Any:  # anything else a server's stream offers
        return getattr(self._stream, name)


def _timeout(seconds: float) -> Exception:
    from werkzeug.exceptions import RequestTimeout

    return RequestTimeout(f"request body not received within {seconds:g} s (BODY_TIMEOUT)")


class BodyDeadline:
    """WSGI middleware bounding how long a request may take to send its body (under gunicorn).

    A timer shuts the connection's read side once `body_timeout` seconds have passed
    without the whole body; the blocked read returns, the client gets 408 problem+json and
    the connection is closed. So a client trickling bytes (or sending nothing) holds a
    request thread for at most `body_timeout` seconds, chunked or not. One timer per request
    with a body. Behind the front (service/front.py) only bodies larger than its buffer
    arrive here still in flight; with FRONT=none, every one does."""

    def __init__(self, app: Callable[..., Iterable[bytes]], body_timeout: float) -> None:
        self.app = app
        self.body_timeout = body_timeout

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        try:
            length: int | None = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            length = None  # chunked: no length, the deadline ends with the body
        if sock is None or self.body_timeout <= 0 or length == 0:
            return self.app(environ, start_response)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)

        timer = threading.Timer(self.body_timeout, expire)
        timer.daemon = True
        environ["wsgi.input"] = _DeadlineStream(environ["wsgi.input"], length, expired, timer.cancel, self.body_timeout)
        timer.start()
        try:
            return self.app(environ, start_response)
        finally:
            timer.cancel()
