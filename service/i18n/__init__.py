"""The seller page's words, one JSON dictionary per language (fr.json, en.json beside this file).

French is the default (a French marketplace); `?lang=en` switches to English and a cookie
remembers the choice. The template and app.js read the same dictionary, so no visible
string is written anywhere else.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from flask import Request, Response

FOLDER = Path(__file__).parent
LANGUAGES = ("fr", "en")
DEFAULT = "fr"
COOKIE = "lang"
COOKIE_MAX_AGE = 365 * 24 * 3600


@cache
def strings(lang: str) -> dict[str, str]:
    """The dictionary of `lang` (one of LANGUAGES)."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; known: {', '.join(LANGUAGES)}")
    return json.loads((FOLDER / f"{lang}.json").read_text(encoding="utf-8"))


def choose(request: Request) -> tuple[str, bool]:
    """(language, asked): `?lang=` if it names a known language (asked=True: remember it),
    else the `lang` cookie, else French."""
    asked = request.args.get("lang", "").lower()
    if asked in LANGUAGES:
        return asked, True
    remembered = request.cookies.get(COOKIE, "")
    return (remembered if remembered in LANGUAGES else DEFAULT), False


def remember(response: Response, lang: str) -> Response:
    response.set_cookie(COOKIE, lang, max_age=COOKIE_MAX_AGE, samesite="Lax", httponly=True)
    return response


def translate(lang: str, key: str, **params: object) -> str:
    """The `key` sentence of `lang` with its {placeholders} filled (KeyError if `key` is unknown)."""
    text = strings(lang)[key]
    for name, value in params.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def megabytes(n_bytes: int, lang: str) -> str:
    """`n_bytes` in MB (2**20) as a reader writes it: "20", "1.5" / "1,5"."""
    value = n_bytes / 2**20
    text = f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"
    return text.replace(".", ",") if lang == "fr" else text
