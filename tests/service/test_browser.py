"""The seller page in a real headless Chromium (Debian's /usr/bin/chromium via Playwright):
upload a real product photo, read the suggestion, search the catalogue; French by default,
English on request; errors in plain words (a too-large photo refused before any upload, the
previous result cleared); the interactive API page at /docs, with nothing from another host.

Expected words come from the page's dictionaries (service/i18n/*.json), so a page that showed
the other language, or a raw server message, fails."""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from service_support import free_port, photo_products

from indexer.store import open_store
from service import i18n
from service.app import create_app
from service.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.browser]

FR = i18n.strings("fr")
EN = i18n.strings("en")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def warm_up(encoder) -> None:
    from PIL import Image

    encoder.encode_texts(["warm up"])
    encoder.encode_images([Image.new("RGB", (encoder.image_size,) * 2, "white")])


def save_screenshot(page, name: str) -> None:
    """With SCREENSHOT_DIR set, the whole page as `name`, in 256 colours (a few hundred KB at most:
    docs/img/seller-page.png is made this way)."""
    folder = os.environ.get("SCREENSHOT_DIR")
    if not folder:
        return
    import io

    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(Path(folder) / name, optimize=True)


@pytest.fixture(scope="module")
def base_url(service_index, embedded_encoder, real_data_dir):
    from werkzeug.serving import make_server

    app = create_app(Config(index_dir=str(service_index), data_dir=str(real_data_dir)), encoder=embedded_encoder)
    warm_up(embedded_encoder)  # the first request's timing is then a request's, not the models' load
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing in CI (apt-get install chromium chromium-driver)")
        pytest.skip(f"{CHROMIUM} not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors
    yield page
    context.close()


def test_seller_uploads_a_photo_and_sees_the_suggestion(page, base_url, service_index, tmp_path):
    store = open_store(service_index)
    ((product, path),) = photo_products(store, 1, category="Watches")
    page.goto(base_url + "/")
    assert page.title() == FR["page_title"]
    assert page.get_attribute("html", "lang") == "fr"
    assert page.inner_text("#predict-button") == FR["predict_button"]
    page.set_input_files("#image", str(path))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#title", product.name)
    page.fill("#description", product.description[:160].rsplit(" ", 1)[0])
    page.click("#predict-button")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)

    assert page.inner_text("#result-category") == product.category
    assert page.inner_text("#result-decision") in (FR["decision_auto"], FR["decision_review"])
    # the explanation names the decision (with the review's reasons when there are some), then how
    # the listing was read (its kind)
    explain = page.inner_text("#result-explain")
    if page.inner_text("#result-decision") == FR["decision_auto"]:
        assert explain.startswith(FR["explain_auto"])
    else:
        assert explain.startswith((FR["explain_review"], FR["explain_review_reasons"].split("{reasons}")[0]))
        # the API's reasons in French (listing-strings.js), none of its English sentences
        assert not re.search(r"\b(the|is|are|listings|needed)\b", explain), explain
    assert page.inner_text("#result-confidence").endswith("%")
    assert page.inner_text("#result-timing").startswith("Réponse en ")
    assert page.inner_text("#result-path").startswith(product.category)
    cards = page.locator("#result-neighbors li")
    assert cards.count() >= 3
    assert cards.first.get_attribute("data-id") == product.id
    # every neighbour thumbnail actually loaded (the image endpoint answered with a JPEG)
    page.wait_for_function(
        "[...document.querySelectorAll('#result-neighbors img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=20_000,
    )
    page.screenshot(path=str(tmp_path / "seller-prediction.png"), full_page=True)
    save_screenshot(page, "seller-page.png")
    assert page.errors == []


def test_empty_submit_shows_an_error(page, base_url):
    page.goto(base_url + "/")
    page.click("#predict-button")
    status = page.locator("#predict-status")
    assert status.inner_text() == FR["need_input"]
    assert "error" in status.get_attribute("class")
    assert page.locator("#result").is_hidden()


def predict_by_title(page, title: str) -> None:
    page.fill("#title", title)
    page.click("#predict-button")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert page.inner_text("#result-category")


def test_undecodable_upload_is_a_plain_sentence_and_clears_the_result(page, base_url, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    page.goto(base_url + "/")
    predict_by_title(page, "analog wrist watch")
    page.set_input_files("#image", str(bad))
    page.click("#predict-button")
    page.wait_for_selector("#predict-status.error")
    status = page.inner_text("#predict-status")
    # one French sentence chosen by the status (422), then the server's own reason, labelled
    assert status.startswith(FR["error_422"])
    assert FR["error_detail"].split("{")[0] in status and "not an image" in status
    assert not any(raw in status for raw in ("{", '"status"', "problem+json", "HTTP"))
    assert page.locator("#result").is_hidden()
    assert page.inner_text("#result-category") == "" and page.locator("#result-neighbors li").count() == 0
    assert page.errors == [] or all("422" in e for e in page.errors)  # the browser logs the failed fetch


def test_too_large_photo_is_refused_before_any_upload(page, base_url):
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    page.goto(base_url + "/")
    predict_by_title(page, "analog wrist watch")
    assert len(sent) == 1
    limit = Config().max_upload_bytes  # the server's limit (the fixture's app uses the default)
    payload = {"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8" + b"\0" * (limit + 10)}
    page.set_input_files("#image", files=[payload])
    page.wait_for_selector("#predict-status.error")
    status = page.inner_text("#predict-status")
    expected = FR["photo_too_large"].format(name="huge.jpg", size="20", mb=i18n.megabytes(limit, "fr"))
    assert status == expected and "20 Mo" in status
    assert page.locator("#result").is_hidden()  # the previous result is gone
    assert page.locator("#preview").is_hidden()  # and the photo was not kept
    page.click("#predict-button")  # the title is still there: a text-only request, no photo
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert len(sent) == 2
    assert page.errors == []


def test_english_on_request_and_remembered(page, base_url):
    page.goto(base_url + "/")
    assert page.get_attribute("nav.lang a[aria-current]", "data-lang") == "fr"
    page.click("nav.lang a[data-lang=en]")
    page.wait_for_load_state()
    assert page.get_attribute("html", "lang") == "en"
    assert page.title() == EN["page_title"]
    assert page.inner_text("#predict-button") == EN["predict_button"]
    page.goto(base_url + "/")  # no ?lang: the choice was remembered
    assert page.get_attribute("html", "lang") == "en"
    page.click("#predict-button")
    assert page.inner_text("#predict-status") == EN["need_input"]
    page.wait_for_function("document.getElementById('index-info').textContent.length > 0")
    assert page.inner_text("#index-info").endswith(EN["index_info"].split("}")[-1])
    page.click("nav.lang a[data-lang=fr]")
    page.wait_for_load_state()
    assert page.get_attribute("html", "lang") == "fr"
    page.goto(base_url + "/")
    assert page.inner_text("#predict-button") == FR["predict_button"]
    assert page.errors == []


def test_docs_link_opens_the_api_page_without_the_internet(page, base_url):
    hosts: set[str] = set()
    page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
    page.goto(base_url + "/")
    page.click("#docs-link")
    page.wait_for_url("**/docs")
    # Swagger UI read /openapi.json and drew one block per operation
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert page.locator(".swagger-ui .opblock").count() >= 13
    assert "categorization API" in page.inner_text(".swagger-ui .info")
    assert hosts == {base_url.split("/")[2]}, hosts
    assert page.errors == []


def test_search_team_box(page, base_url):
    page.goto(base_url + "/")
    page.wait_for_function("document.querySelectorAll('#search-category option').length > 1")
    page.fill("#search-text", "wall clock")
    page.select_option("#search-category", "Home Decor & Festive Needs")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    cats = page.locator("#search-results .cat").all_inner_texts()
    assert page.inner_text("#search-status") == FR["search_count"].format(n=12)
    assert len(cats) == 12 and all(c.startswith("Home Decor & Festive Needs") for c in cats)
    page.evaluate("document.querySelectorAll('#search-results img').forEach(i => i.loading = 'eager')")
    page.wait_for_function(
        "[...document.querySelectorAll('#search-results img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=20_000,
    )
    save_screenshot(page, "seller-search.png")
    assert page.errors == []
