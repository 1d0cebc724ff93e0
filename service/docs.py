"""GET /docs: the interactive API page (Swagger UI) over /openapi.json.

Swagger UI's files come from the swagger-ui-bundle package (pinned in requirements.txt)
and are served from this process: the page loads nothing from another host, so it works
on a machine with no internet access. The UI's validator badge is off (it would call an
outside service)."""

from __future__ import annotations

from flask import Blueprint, send_from_directory, url_for
from flask.typing import ResponseReturnValue
from swagger_ui_bundle import swagger_ui_path

from .web import render_localized

bp = Blueprint("docs", __name__)


@bp.get("/docs/")
@bp.get("/docs")  # registered first: url_for names this one
def docs_page() -> ResponseReturnValue:
    return render_localized("docs.html", spec_url=url_for("web.openapi"))


@bp.get("/docs/assets/<path:filename>")
def docs_asset(filename: str) -> ResponseReturnValue:
    """A file of Swagger UI's dist folder (404 for any other name, `..` included)."""
    return send_from_directory(str(swagger_ui_path), filename, max_age=86400)
