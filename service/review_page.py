"""The reviewer page (/review): one queued listing at a time, answered from the keyboard.

The page is static HTML + review.js calling the review API with the reviewer's token (typed in
the page, kept in the tab's sessionStorage). Its words are in service/static/listing-strings.js;
French by default, `?lang=en` (or the seller page's `lang` cookie) for English.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

bp = Blueprint("review_page", __name__)

LANGUAGES = ("fr", "en")


def page_language() -> str:
    """`?lang=` when it names a known language, else the `lang` cookie, else French."""
    for candidate in (request.args.get("lang", ""), request.cookies.get("lang", "")):
        if candidate.lower() in LANGUAGES:
            return candidate.lower()
    return LANGUAGES[0]


@bp.get("/review")
def review() -> ResponseReturnValue:
    return render_template("review.html", lang=page_language())
