"""Cross-modal search and zero-shot categories through the API, on the clip profile with the
tiny random models of tests/tiny_models.py; the embedded (fake) profile must refuse both clearly."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fakes import FakeEncoder, make_dataset
from PIL import Image
from tiny_models import make_tiny_weights

from indexer.encoders import create_encoder
from indexer.pipeline.build import build_index
from indexer.store import open_store
from service.app import create_app
from service.config import Config
from service.crossmodal import PROMPTS

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def clip_encoder(tmp_path_factory):
    tiny = make_tiny_weights(tmp_path_factory.mktemp("tiny-weights"), seed=0)
    return create_encoder("clip", **tiny.options())


@pytest.fixture(scope="module")
def clip_app(tmp_path_factory, clip_encoder):
    folder = tmp_path_factory.mktemp("clip-service")
    data = make_dataset(folder / "data", per_category=3)
    build_index(data["folder"], folder / "index", encoder=clip_encoder, progress=False)
    app = create_app(Config(index_dir=str(folder / "index"), api_token=None), encoder=clip_encoder)
    return app, open_store(folder / "index")


@pytest.fixture(scope="module")
def fake_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fake-service")
    data = make_dataset(folder / "data", per_category=3)
    encoder = FakeEncoder()
    build_index(data["folder"], folder / "index", encoder=encoder, progress=False)
    return create_app(Config(index_dir=str(folder / "index"), api_token=None), encoder=encoder)


def png_b64(color=(20, 120, 200)) -> str:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_text_query_searches_the_image_space(clip_app, clip_encoder):
    app, store = clip_app
    payload = {"title": "a red wrist watch", "modality": "image", "k": 4}
    response = app.test_client().post("/api/v1/search", json=payload)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["modalities"] == ["image"]
    assert all(hit["modality"] == "image" for hit in body["results"])
    # the ranking is the image index's own k-NN of the CLIP text-tower vector
    vector = clip_encoder.encode_image_queries(["a red wrist watch"])
    sims, rows = store.modalities["image"].search(vector, 4)
    assert [hit["id"] for hit in body["results"]] == [store.products[r].id for r in rows[0]]
    np.testing.assert_allclose([hit["score"] for hit in body["results"]], sims[0], atol=1e-3)


def test_image_space_search_without_modality_uses_the_usual_channels(clip_app):
    app, _ = clip_app
    body = app.test_client().post("/api/v1/search", json={"title": "a red wrist watch", "k": 3}).get_json()
    assert "text" in body["modalities"] and "image" not in body["modalities"]


def test_unknown_modality_and_empty_query_are_400(clip_app):
    app, _ = clip_app
    client = app.test_client()
    response = client.post("/api/v1/search", json={"title": "watch", "modality": "sound"})
    assert response.status_code == 400 and response.mimetype == PROBLEM
    assert "modality" in response.get_json()["detail"]
    response = client.post("/api/v1/search", json={"modality": "image"})
    assert response.status_code == 400 and response.mimetype == PROBLEM


def test_zero_shot_scores_a_category_with_no_labelled_product(clip_app, clip_encoder):
    app, store = clip_app
    names = [*store.categories()[:2], "Garden Tools"]
    assert "Garden Tools" not in store.categories()
    image = png_b64()
    response = app.test_client().post("/api/v1/zero-shot", json={"image_base64": image, "categories": names})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["scores"]) == set(names)
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["labelled_in_index"] == {names[0]: True, names[1]: True, "Garden Tools": False}
    # the order follows the cosine between the photo and each name's mean prompt vector
    photo = clip_encoder.encode_images([Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB")])[0]
    prompts = clip_encoder.encode_image_queries([t.format(n) for n in names for t in PROMPTS])
    means = prompts.reshape(len(names), len(PROMPTS), -1).mean(axis=1)
    cosines = (means / np.linalg.norm(means, axis=1, keepdims=True)) @ photo
    assert list(body["scores"]) == [names[i] for i in np.argsort(-cosines, kind="stable")]
    assert body["category"] == names[int(np.argmax(cosines))]


def test_zero_shot_defaults_to_the_index_categories_and_accepts_form_fields(clip_app):
    app, store = clip_app
    client = app.test_client()
    body = client.post("/api/v1/zero-shot", json={"image_base64": png_b64()}).get_json()
    assert set(body["scores"]) == set(store.categories())
    data = {"image": (io.BytesIO(base64.b64decode(png_b64())), "p.png"), "categories": "Garden Tools\nPet Supplies"}
    body = client.post("/api/v1/zero-shot", data=data, content_type="multipart/form-data").get_json()
    assert set(body["scores"]) == {"Garden Tools", "Pet Supplies"}


def test_zero_shot_rejects_bad_input_clearly(clip_app):
    app, _ = clip_app
    client = app.test_client()
    for payload, part in (
        ({"categories": ["A"]}, "photo"),
        ({"image_base64": png_b64(), "categories": "A"}, "list"),
        ({"image_base64": png_b64(), "categories": [f"c{i}" for i in range(201)]}, "at most"),
    ):
        response = client.post("/api/v1/zero-shot", json=payload)
        assert response.status_code == 400 and response.mimetype == PROBLEM, payload
        assert part in response.get_json()["detail"]


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/api/v1/search", {"title": "a watch", "modality": "image"}),
        ("/api/v1/zero-shot", {"image_base64": png_b64(), "categories": ["Watches"]}),
    ],
)
def test_a_profile_without_image_text_space_names_the_one_that_has_it(fake_app, path, payload):
    response = fake_app.test_client().post(path, json=payload)
    assert response.status_code == 409 and response.mimetype == PROBLEM
    body = response.get_json()
    assert body["required_profile"] == "clip" and body["profile"] == "fake"
    assert "'clip' profile" in body["detail"] and "--profile clip" in body["detail"]
