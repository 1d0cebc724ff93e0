"""The reviewer page (/review) in headless Chromium: French by default, the token typed in, one
listing at a time with its photo, reasons, three choices and neighbours, answered by keyboard."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_support import copy_index, edit_manifest, free_port

from service.app import create_app
from service.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.browser]

WRITER, REVIEWER = "browser-writer", "browser-reviewer"


def noise_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).resize((96, 96), Image.Resampling.BICUBIC).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def site(service_index, embedded_encoder, real_data_dir, tmp_path_factory):
    from werkzeug.serving import make_server

    index_dir = copy_index(service_index, tmp_path_factory.mktemp("review-browser") / "index")
    edit_manifest(
        index_dir, lambda m: m["categorizer"].update(threshold=None, kinds=None)
    )  # every listing waits for review
    config = Config(index_dir=str(index_dir), data_dir=str(real_data_dir), api_token=WRITER, review_token=REVIEWER)
    app = create_app(config, encoder=embedded_encoder)
    client = app.test_client()
    for lid, title, seed in [("first", "Montre bracelet cuir homme", 1), ("second", "Couverture bébé coton", 2)]:
        data = {"id": lid, "title": title, "image": (io.BytesIO(noise_jpeg(seed)), "p.jpg")}
        response = client.post(
            "/api/v1/listings",
            data=data,
            headers={"Authorization": f"Bearer {WRITER}"},
            content_type="multipart/form-data",
        )
        assert response.status_code == 201 and response.get_json()["where"] == "review"
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", client
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_a_reviewer_answers_from_the_keyboard(site, browser, tmp_path):
    base_url, client = site
    context = browser.new_context(viewport={"width": 1200, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base_url + "/review")
    assert page.title() == "Revue des annonces"  # French by default
    assert "jeton" in page.inner_text("#status").lower()
    page.fill("#token", REVIEWER)
    page.press("#token", "Enter")
    page.wait_for_selector("#item:not([hidden])")
    assert page.inner_text("#item-title") == "Montre bracelet cuir homme"  # oldest first
    assert page.locator("#choices button").count() == 3
    assert page.locator("#reasons li").count() >= 1 and "seuil" in page.inner_text("#reasons")
    page.wait_for_selector("#photo:not([hidden])")  # fetched with the token
    assert page.locator("#neighbours li").count() >= 3
    second_choice = page.locator("#choices button").nth(1).inner_text()
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
    if os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(os.environ["SCREENSHOT_DIR"]) / "review.png"), full_page=True)

    page.keyboard.press("2")
    page.wait_for_selector("#status.done")
    assert "classée dans" in page.inner_text("#status")
    product = client.get("/api/v1/products/first").get_json()
    assert " › ".join(product["category_path"]) in second_choice
    assert page.inner_text("#item-title") == "Couverture bébé coton"

    page.keyboard.press("r")
    page.wait_for_function("document.querySelector('#status').textContent.includes('rejetée')")
    assert client.get("/api/v1/products/second").status_code == 404
    page.wait_for_selector("#item", state="hidden")
    assert errors == []
    context.close()


def test_a_seller_lists_a_product_and_reads_what_happens_next(site, browser, service_index):
    from service_support import photo_products

    from indexer.store import open_store

    base_url, client = site
    ((product, path),) = photo_products(open_store(service_index), 1, category="Watches")
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base_url + "/")
    page.set_input_files("#image", str(path))
    page.fill("#title", product.name + " (relisted)")
    page.click("#predict-button")
    page.wait_for_selector("#listing-panel:not([hidden])", timeout=30_000)
    page.fill("#listing-token", WRITER)
    page.click("#list-button")
    page.wait_for_function("document.querySelector('#listing-next').dataset.where", timeout=30_000)
    # this index has no auto threshold: the listing waits for a reviewer, and the page says why
    assert page.get_attribute("#listing-next", "data-where") == "review"
    sentence = page.inner_text("#listing-next")
    assert "Watches" in sentence and ("threshold" in sentence or "seuil" in sentence)  # the page's language
    reviewer = {"Authorization": f"Bearer {REVIEWER}"}
    queued = client.get("/api/v1/review?limit=100", headers=reviewer).get_json()
    (mine,) = [x for x in queued["listings"] if x["title"] == product.name + " (relisted)"]
    # leave the module's queue as the fixture made it, whichever order the tests run in
    assert client.post(f"/api/v1/review/{mine['id']}", json={"reject": True}, headers=reviewer).status_code == 200
    page.fill("#listing-token", "wrong-token")
    page.click("#list-button")
    page.wait_for_selector("#listing-next.error")
    assert errors == []
    context.close()
