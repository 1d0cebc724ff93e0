"""Every error as RFC 9457 problem+json, so clients parse one shape for all failures.

Details never show server internals: no tracebacks, and absolute paths (the index and
data folders, temp files) are replaced by the variable that names them or a file name.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, current_app, has_app_context, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.http import HTTP_STATUS_CODES

from indexer.store import IndexDamaged, StoreUnavailable

log = logging.getLogger(__name__)

PROBLEM_TYPE = "about:blank"
# an absolute path of two or more parts that is not one of ours (/api/..., /static/...)
_ABSOLUTE_PATH = re.compile(
    r"(?<![\w.:/])/(?!api/|static/|openapi|readyz|healthz|metrics)(?:[^\s'\"/:,;()]+/)+([^\s'\",;()]*)"
)


class ApiError(Exception):
    """An error with an HTTP status and a message the caller can act on."""

    def __init__(self, status: int, detail: str, title: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.extra = extra


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable (permission denied)"}
NOT_WRITABLE[errno.EPERM] = NOT_WRITABLE[errno.EACCES]


DRAIN_MAX_BYTES = 64 * 1024 * 1024  # past this an over-limit body is not read: the connection just closes


def drain_body(limit: int = DRAIN_MAX_BYTES) -> None:
    """Read and discard what is left of the request body before answering 413 early.

    A connection closed with bytes still unread is reset, and the front (HAProxy), still
    streaming the body to gunicorn, then loses the answer and says 502 instead (seen in a CI
    run). Only bodies with a Content-Length of at most `limit` bytes are read. The cost is
    O(body) time in 64 KiB reads, at most `BODY_TIMEOUT` (service.inputs.BodyDeadline), and O(1)
    memory."""
    from werkzeug.wsgi import LimitedStream

    try:
        length = int(request.environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if length <= 0 or length > limit or request.environ.get("wsgi.input") is None:
        return
    try:
        stream: Any = request.stream  # bounded by Content-Length; knows what a handler read already
    except HTTPException:  # over MAX_CONTENT_LENGTH: refused before a byte of the body was read
        stream = LimitedStream(request.environ["wsgi.input"], length)
    try:
        while stream.read(65536):
            pass
    except (OSError, ValueError, HTTPException):  # the client went away, or the deadline shut the read side
        return


def storage_error(exc: OSError, consequence: str) -> ApiError | None:
    """The problem a failed write of the index folder is to a client: 507 when its disk is full,
    503 when it is read-only or not writable, each naming the cause (`cause`: "disk_full",
    "read_only"); None for other errors (a 500: they are bugs or unknown failures)."""
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "error")
    if exc.errno in DISK_FULL:
        return ApiError(
            507,
            f"the index disk is full ({reason}): {consequence}; free some space and send it again",
            "Insufficient Storage",
            cause="disk_full",
        )
    if exc.errno in NOT_WRITABLE:
        return ApiError(
            503,
            f"the index folder {NOT_WRITABLE[exc.errno]} ({reason}): {consequence}; writes are refused until "
            "it is writable again, reads keep working",
            "Service Unavailable",
            cause="read_only",
        )
    return None


def disk_cause(exc: sqlite3.Error) -> int | None:
    """The errno of a SQLite failure that a full (ENOSPC) or read-only (EROFS) index disk caused:
    SQLite names some (FULL, READONLY); for an I/O error or a file it cannot open (its WAL
    side files on a full or read-only disk) the index folder's file system tells. None: another
    cause."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return errno.ENOSPC
    if name.startswith("SQLITE_READONLY"):
        return errno.EROFS
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) and has_app_context():
        folder = getattr(current_app.config.get("SERVICE"), "index_dir", None)
        try:
            stats = os.statvfs(folder) if folder else None
        except OSError:
            return None
        if stats is not None and stats.f_flag & os.ST_RDONLY:
            return errno.EROFS
        if stats is not None and stats.f_bavail == 0:
            return errno.ENOSPC
    return None


def _known_roots() -> Iterable[tuple[str, str]]:
    """(absolute folder, public name) pairs, longest first."""
    roots: list[tuple[str, str]] = []
    if has_app_context():
        cfg = current_app.config.get("SERVICE")
        folders = ((getattr(cfg, "index_dir", None), "$INDEX_DIR"), (getattr(cfg, "data_dir", None), "$DATA_DIR"))
        for value, name in folders:
            if value:
                roots += [(os.path.abspath(value), name), (os.path.realpath(value), name)]
    return sorted(set(roots), key=lambda r: -len(r[0]))


def public_text(text: str) -> str:
    """`text` with server paths removed: known folders become $INDEX_DIR / $DATA_DIR, any
    other absolute path its last component. O(len(text))."""
    for root, name in _known_roots():
        if root and root != "/":
            text = text.replace(root, name)
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "", text)


def public(value: Any) -> Any:
    """A JSON-able value with `public_text` applied to every string in it."""
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


def problem(status: int, detail: str, title: str | None = None, **extra: Any) -> Response:
    """A problem+json response (type, title, status, detail [, extra members]), paths removed."""
    body = {
        "type": PROBLEM_TYPE,
        "title": title or HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": public_text(detail),
        **public(extra),
    }
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        if exc.status == 413:
            drain_body()
        response = problem(exc.status, exc.detail, exc.title, **exc.extra)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
        if "retry_after" in exc.extra:  # 503: when to try again, for clients and proxies
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response

    @app.errorhandler(StoreUnavailable)
    def _store_unavailable(exc: StoreUnavailable) -> Response:
        """The vector store's server is away (down, restarting, loading): 503, retry soon. The
        same process serves again once it is back (the client reconnects by itself)."""
        log.warning("vector store unavailable: %s", exc)
        # the detail names no address: the server's location is an internal (logged above)
        response = problem(503, "the vector store is unavailable; retry shortly", "Service Unavailable")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(IndexDamaged)
    def _index_damaged(exc: IndexDamaged) -> Response:
        """A write on an index whose pointer or live version is damaged (no writer builds on
        damage): 503 naming the cause; reads go on from the version this process serves."""
        log.error("write refused: %s", exc)
        return _api_error(
            ApiError(
                503,
                f"the index cannot take writes: {exc}; reads keep working from the version served, "
                "`python -m indexer repair` restores it",
                "Service Unavailable",
            )
        )

    @app.errorhandler(OSError)
    def _storage(exc: OSError) -> Response:
        """A write that a full disk (507) or a read-only one (503) refused, naming the cause, for
        every endpoint that writes (adds, deletes, relabels, listings, decisions); other OS errors
        are internal."""
        refused = storage_error(exc, "nothing was changed; nothing stored before was lost")
        if refused is None:
            return _unexpected(exc)
        log.error("write refused: %s", exc)
        return _api_error(refused)

    @app.errorhandler(sqlite3.OperationalError)
    def _sqlite(exc: sqlite3.OperationalError) -> Response:
        """The same for the SQLite files of the index folder (review queue, audit trail, cache)."""
        cause = disk_cause(exc)
        if cause is None:
            return _unexpected(exc)
        return _storage(OSError(cause, os.strerror(cause)))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status >= 500:  # werkzeug's descriptions of server errors say nothing a client can use
            log.error("HTTP %s: %s", status, exc.description)
            return problem(status, "internal error; it has been logged", HTTP_STATUS_CODES.get(status))
        detail = exc.description or exc.name
        if status == 413:
            drain_body()
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body is over the {limit}-byte limit (MAX_UPLOAD_BYTES)"
        response = problem(status, detail, exc.name)
        if status == 408:  # the rest of the body may still be on its way: do not wait for it
            response.headers["Connection"] = "close"
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):  # pragma: no cover - handled above
            return _http_error(exc)
        log.exception("unhandled error")
        return problem(500, "internal error; it has been logged", "Internal Server Error")
