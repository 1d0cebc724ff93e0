"""GET /docs: the interactive API page (Swagger UI) over /openapi.json.

Swagger UI's files come from the swagger-ui-bundle package (pinned in requirements.txt):
the blueprint's static folder is the package's dist folder, served under /docs/assets/. The
page loads nothing from another host, so it works on a machine with no internet access; the
UI's validator badge is off (it would call an outside service, see static/docs.js)."""

from __future__ import annotations

from flask import Blueprint, url_for
from flask.typing import ResponseReturnValue
from swagger_ui_bundle import swagger_ui_path

from .web import render_localized

bp = Blueprint("docs", __name__, static_folder=str(swagger_ui_path), static_url_path="/docs/assets")


@bp.get("/docs")
def docs_page() -> ResponseReturnValue:
    return render_localized("docs.html", spec_url=url_for("web.openapi"))
