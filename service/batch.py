"""POST /api/v1/predict/batch: a seller's file of listings (JSON lines or CSV) in, one JSON line per
listing out, streamed as each batch is decided (indexer.categorizer.bulk does the work).

The body is first spooled to a temporary file at network speed (BODY_TIMEOUT bounds how long it
may take to arrive, BATCH_MAX_BYTES how large it may be), then read back one listing at a time:
memory is O(BATCH_SIZE listings), not O(file). A malformed line answers a problem object on its
own line (with its line number); the others still go through.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from flask import Blueprint, Response, request, stream_with_context

from indexer.catalog import IMAGES_DIR
from indexer.categorizer import predict_listings, read_csv, read_json_lines

from .api import config, loaded
from .errors import ApiError, public
from .inputs import parse_k
from .media import UPLOADS
from .search import LockedEncoder

bp = Blueprint("batch", __name__, url_prefix="/api/v1")

JSON_LINES_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/json-lines")
CSV_TYPES = ("text/csv",)
CHUNK = 1 << 20


def _spool(limit: int) -> IO[bytes]:
    """The request body in a temporary file (deleted when closed); 413 past `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(
            413, f"batch body is {request.content_length} bytes, over the {limit}-byte limit (BATCH_MAX_BYTES)"
        )
    request.max_content_length = limit  # this view's own limit, not MAX_UPLOAD_BYTES
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the streaming generator, not here
    size = 0
    try:
        while chunk := _read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"batch body is over the {limit}-byte limit (BATCH_MAX_BYTES)")
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def _read(n: int) -> bytes:
    from werkzeug.exceptions import RequestEntityTooLarge

    try:
        return request.stream.read(n)
    except RequestEntityTooLarge:  # a chunked body past the limit
        limit = request.max_content_length
        raise ApiError(413, f"batch body is over the {limit}-byte limit (BATCH_MAX_BYTES)") from None


def _resolver(index_dir: Path, data_dirs: list[str]) -> Callable[[str], Path | None]:
    """Finds a named photo: an upload of the index (a product's photo), else the dataset's Images/."""
    folders = [index_dir / UPLOADS] + [Path(d) / IMAGES_DIR for d in data_dirs if d]

    def resolve(name: str) -> Path | None:
        for folder in folders:
            path = folder / name
            if path.is_file():
                return path
        return None

    return resolve


@bp.post("/predict/batch")
def predict_batch() -> Response:
    cfg = config()
    mimetype = request.mimetype
    if mimetype not in JSON_LINES_TYPES + CSV_TYPES:
        raise ApiError(
            415, f"send application/x-ndjson (JSON lines) or text/csv (got content type {mimetype or 'none'})"
        )
    k = parse_k(request.args.get("k"), cfg)
    live = loaded()
    spool = _spool(cfg.batch_max_bytes)
    resolve = _resolver(Path(cfg.index_dir), [cfg.data_dir or "", live.store.manifest.get("data_dir") or ""])

    encoder: Any = LockedEncoder(live.encoder)

    def lines() -> Iterator[bytes]:
        try:
            items = read_csv(spool, resolve) if mimetype in CSV_TYPES else read_json_lines(spool, resolve)
            for result in predict_listings(live.store, encoder, live.categorizer, items, cfg.batch_size, k):
                if "status" in result:  # a problem: its detail may quote a file, never a server path
                    result = public(result)
                yield (json.dumps(result, ensure_ascii=False) + "\n").encode()
        finally:
            spool.close()

    response = Response(stream_with_context(lines()), mimetype="application/x-ndjson")
    response.headers["X-Index-Version"] = live.version
    return response
