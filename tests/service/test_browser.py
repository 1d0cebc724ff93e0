"""The seller page in a real headless Chromium (Debian's /usr/bin/chromium via Playwright):
upload a real product photo, read the suggestion, search the catalogue."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from service_support import free_port, photo_products

from indexer.store import open_store
from service.app import create_app
from service.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.browser]

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


@pytest.fixture(scope="module")
def base_url(service_index, embedded_encoder, real_data_dir):
    from werkzeug.serving import make_server

    app = create_app(Config(index_dir=str(service_index), data_dir=str(real_data_dir)), encoder=embedded_encoder)
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
    assert page.title().startswith("Place de marché")
    page.set_input_files("#image", str(path))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#title", product.name)
    page.click("#predict-button")
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)

    assert page.inner_text("#result-category") == product.category
    assert page.inner_text("#result-decision") in ("Auto-approved", "Needs human review")
    assert page.inner_text("#result-confidence").endswith("%")
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
    shot = os.environ.get("SCREENSHOT_DIR")
    if shot:
        page.screenshot(path=str(Path(shot) / "seller-prediction.png"), full_page=True)
    assert page.errors == []


def test_empty_submit_shows_an_error(page, base_url):
    page.goto(base_url + "/")
    page.click("#predict-button")
    status = page.locator("#predict-status")
    assert "photo or type a title" in status.inner_text()
    assert "error" in status.get_attribute("class")
    assert page.locator("#result").is_hidden()


def test_undecodable_upload_shows_the_servers_reason(page, base_url, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    page.goto(base_url + "/")
    page.set_input_files("#image", str(bad))
    page.click("#predict-button")
    page.wait_for_selector("#predict-status.error")
    assert "not an image" in page.inner_text("#predict-status")


def test_search_team_box(page, base_url):
    page.goto(base_url + "/")
    page.wait_for_function("document.querySelectorAll('#search-category option').length > 1")
    page.fill("#search-text", "wall clock")
    page.select_option("#search-category", "Home Decor & Festive Needs")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    cats = page.locator("#search-results .cat").all_inner_texts()
    assert len(cats) == 12 and all(c.startswith("Home Decor & Festive Needs") for c in cats)
    page.evaluate("document.querySelectorAll('#search-results img').forEach(i => i.loading = 'eager')")
    page.wait_for_function(
        "[...document.querySelectorAll('#search-results img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=20_000,
    )
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(os.environ["SCREENSHOT_DIR"]) / "seller-search.png"), full_page=True)
    assert page.errors == []
