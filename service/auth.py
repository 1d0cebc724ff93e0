"""Bearer tokens: API_TOKEN for writers (adds, listings), REVIEW_TOKEN for reviewers.

The audit log records which kind of token made a change (`ACTORS`), never the token itself.
"""

from __future__ import annotations

import hmac

from flask import request

from .errors import ApiError

WRITER, REVIEWER = "api-token", "review-token"  # actors recorded in the audit log


def check_bearer(expected: str | None, variable: str, what: str) -> None:
    """403 when the server has no `variable` configured (`what` is disabled), 401 when the
    request sends no bearer token or another one (compared in constant time)."""
    if not expected:
        raise ApiError(403, f"{what} disabled: the server has no {variable} configured")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "send Authorization: Bearer <token>")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, f"invalid token (this needs the {variable})")
