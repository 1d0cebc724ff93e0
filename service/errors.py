"""Every error as RFC 9457 problem+json, so clients parse one shape for all failures."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "about:blank"


class ApiError(Exception):
    """An error with an HTTP status and a message the caller can act on."""

    def __init__(self, status: int, detail: str, title: str | None = None, **extra):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.extra = extra


def problem(status: int, detail: str, title: str | None = None, **extra):
    """A problem+json response (type, title, status, detail [, extra members])."""
    from werkzeug.http import HTTP_STATUS_CODES

    body = {
        "type": PROBLEM_TYPE,
        "title": title or HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        response = problem(exc.status, exc.detail, exc.title, **exc.extra)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        detail = exc.description or exc.name
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body is over the {limit}-byte limit (MAX_UPLOAD_BYTES)"
        response = problem(exc.code or 500, detail, exc.name)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):  # pragma: no cover - handled above
            return _http_error(exc)
        log.exception("unhandled error")
        return problem(500, "internal error; it has been logged", InternalServerError.name)
