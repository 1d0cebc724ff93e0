"""The HTML pages without a browser (no index needed): the seller page's language choice and
dictionaries, and /docs (Swagger UI) served from this server only, nothing from another host."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from service import i18n
from service.app import create_app
from service.config import Config

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "service" / "templates"
APP_JS = ROOT / "service" / "static" / "app.js"
EXTERNAL = re.compile(r"(?:https?:)?//[\w.-]+", re.IGNORECASE)


@pytest.fixture()
def client(tmp_path):
    config = Config(index_dir=str(tmp_path / "no-index"), max_upload_bytes=3 * 2**20 // 2)
    return create_app(config, load=False).test_client()


def page_data(html: str) -> dict:
    match = re.search(r'<script id="page-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, "the page embeds its dictionary for app.js"
    return json.loads(match.group(1))


def test_seller_page_is_french_by_default(client):
    response = client.get("/")
    html = response.get_data(as_text=True)
    fr = i18n.strings("fr")
    assert response.status_code == 200 and '<html lang="fr">' in html
    assert f"<title>{fr['page_title']}</title>" in html
    assert fr["predict_button"] in html and i18n.strings("en")["predict_button"] not in html
    assert "jusqu'à 1,5 Mo" in html.replace("&#39;", "'")  # the server's limit, French decimal comma
    data = page_data(html)
    assert data["lang"] == "fr" and data["strings"] == fr
    assert data["maxUploadBytes"] == 3 * 2**20 // 2 and data["maxUploadMb"] == "1,5"
    assert "Set-Cookie" not in response.headers and "Cookie" in response.headers["Vary"]


def test_english_is_chosen_by_query_and_remembered_by_cookie(client):
    response = client.get("/?lang=en")
    html = response.get_data(as_text=True)
    assert '<html lang="en">' in html and i18n.strings("en")["predict_button"] in html
    assert "up to 1.5 MB" in html
    assert "lang=en" in response.headers["Set-Cookie"]
    again = client.get("/").get_data(as_text=True)  # the test client keeps the cookie
    assert '<html lang="en">' in again
    assert '<html lang="fr">' in client.get("/?lang=fr").get_data(as_text=True)
    assert '<html lang="fr">' in client.get("/?lang=de").get_data(as_text=True)  # unknown: the cookie's


def test_dictionaries_cover_every_key_the_page_uses():
    fr, en = i18n.strings("fr"), i18n.strings("en")
    assert fr.keys() == en.keys()
    assert all(fr[k] != en[k] for k in ("predict_button", "need_input", "error_422", "photo_too_large"))
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_]+)["']""", template.read_text(encoding="utf-8")))
    script = APP_JS.read_text(encoding="utf-8")
    used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_]+)["']""", script))
    used |= {f"error_{code}" for code in re.findall(r"\[([\d, ]+)\]\.includes\(status\)", script)[0].split(", ")}
    assert len(used) > 40
    assert used <= fr.keys(), used - fr.keys()
    for text in fr.values():  # placeholders are {name}s that app.js / web.py fill
        assert re.fullmatch(r"[^{}]*(\{[a-z]+\}[^{}]*)*", text), text


def test_translate_fills_placeholders_and_refuses_unknown_keys():
    assert i18n.translate("fr", "drop_formats", mb="20") == "JPEG, PNG, WebP · jusqu'à 20 Mo"
    assert i18n.megabytes(20 * 2**20, "fr") == "20" and i18n.megabytes(int(2.5 * 2**20), "fr") == "2,5"
    assert i18n.megabytes(int(2.5 * 2**20), "en") == "2.5"
    with pytest.raises(KeyError):
        i18n.translate("fr", "no_such_key")
    with pytest.raises(ValueError, match="unknown language"):
        i18n.strings("de")


def test_docs_page_loads_only_local_assets(client):
    response = client.get("/docs")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert EXTERNAL.findall(html) == [], "the docs page must not load anything from another host"
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
    scripts = re.findall(r'<script src="(/[^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in scripts)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        if asset.startswith("/openapi.json") or asset == "/":
            continue
        got = client.get(asset)
        assert got.status_code == 200 and len(got.data) > 100, asset
    bundle = client.get(next(a for a in scripts if a.endswith("swagger-ui-bundle.js")))
    assert bundle.mimetype in ("text/javascript", "application/javascript") and b"SwaggerUIBundle" in bundle.data
    assert 'data-spec-url="/openapi.json"' in html
    docs_js = client.get("/static/docs.js").get_data(as_text=True)
    assert "validatorUrl: null" in docs_js  # the validator badge would call an outside service
    assert client.get("/docs/assets/../web.py").status_code == 404


def test_seller_page_links_the_docs(client):
    html = client.get("/").get_data(as_text=True)
    assert 'id="docs-link" href="/docs"' in html
