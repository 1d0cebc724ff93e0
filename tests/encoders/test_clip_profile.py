"""The `clip` profile, run on tiny random open_clip / sentence-transformers weights.

The weights are written to disk by tests/tiny_models.py and loaded through the same
options and environment variables as real ones; nothing here needs the model hub.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from fakes import FakeEncoder, make_dataset
from PIL import Image
from tiny_models import TINY_CLIP_CONFIG, TINY_CLIP_NAME, TINY_TEXT_DIM, make_tiny_clip, make_tiny_weights

from indexer.catalog.images import load_image
from indexer.encoders import EncoderUnavailable, create_encoder
from indexer.store import open_store
from indexer.store.local.index import IndexMismatch

CLIP_ENV = (
    "CLIP_MODEL",
    "CLIP_PRETRAINED",
    "CLIP_MODEL_CONFIG",
    "CLIP_TEXT_MODEL",
    "CLIP_PRECISION",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HOME",
)
TEXTS = [
    "Analog wrist watch with leather strap",
    "Montre analogique bracelet cuir",
    "Baby cotton romper, soft",
    "Laptop battery 6 cell",
    "usb keyboard",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No CLIP_* settings from outside, and an empty hub cache unless a test fills one."""
    for name in CLIP_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("tiny-weights"), seed=0)


@pytest.fixture(scope="module")
def encoder(tiny):
    return create_encoder("clip", **tiny.options())


def images(n: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(48, 40), (32, 32), (100, 60), (20, 70), (64, 64), (33, 47)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def sha12(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def assert_unit_float32(vectors: np.ndarray, shape: tuple[int, int]) -> None:
    assert vectors.shape == shape
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ---- the Encoder protocol --------------------------------------------------------------------
def test_profile_dims_and_image_size_come_from_the_weights(encoder):
    assert encoder.profile == "clip"
    assert encoder.dims == {"image": TINY_CLIP_CONFIG["embed_dim"], "text": TINY_TEXT_DIM}
    assert encoder.image_size == TINY_CLIP_CONFIG["vision_cfg"]["image_size"]
    assert encoder.precision == "fp32"


def test_vectors_are_unit_float32_of_the_declared_dims(encoder):
    assert_unit_float32(encoder.encode_images(images(5)), (5, encoder.dims["image"]))
    assert_unit_float32(encoder.encode_texts(TEXTS), (len(TEXTS), encoder.dims["text"]))
    # the CLIP text tower maps words into the image space
    assert_unit_float32(encoder.encode_image_queries(TEXTS), (len(TEXTS), encoder.dims["image"]))
    assert encoder.encode_images([]).shape == (0, encoder.dims["image"])
    assert encoder.encode_texts([]).shape == (0, encoder.dims["text"])
    assert encoder.encode_image_queries([]).shape == (0, encoder.dims["image"])


def test_preprocess_is_open_clips_transform_with_its_normalisation(encoder):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    colour = (200, 30, 90)
    array = encoder.preprocess(Image.new("RGB", (70, 50), colour))
    assert array.shape == (3, encoder.image_size, encoder.image_size)
    assert array.dtype == np.float32
    expected = (np.array(colour) / 255.0 - np.array(OPENAI_DATASET_MEAN)) / np.array(OPENAI_DATASET_STD)
    np.testing.assert_allclose(array.mean(axis=(1, 2)), expected, atol=1e-4)
    np.testing.assert_allclose(
        encoder.encode_arrays([array]), encoder.encode_images([Image.new("RGB", (70, 50), colour)])
    )


def test_same_input_gives_same_vector_and_different_inputs_differ(encoder, tiny):
    ims = images(4)
    first, again = encoder.encode_images(ims), encoder.encode_images(ims)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first @ first.T - np.eye(4)).max() > 1e-3  # not one constant vector
    text = encoder.encode_texts(TEXTS)
    np.testing.assert_array_equal(text, encoder.encode_texts(TEXTS))
    assert not np.allclose(text[0], text[1])
    # a fresh encoder loaded from the same files gives the same vectors and ids
    other = create_encoder("clip", **tiny.options())
    assert other.model_ids == encoder.model_ids
    np.testing.assert_allclose(other.encode_images(ims), first, atol=1e-6)
    np.testing.assert_allclose(other.encode_texts(TEXTS), text, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batching_gives_the_vectors_of_one_by_one(encoder, batch_size):
    ims = images(5)
    single = np.concatenate([encoder.encode_images([im], batch_size=1) for im in ims])
    np.testing.assert_allclose(encoder.encode_images(ims, batch_size=batch_size), single, atol=1e-5)
    single = np.concatenate([encoder.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(encoder.encode_texts(TEXTS, batch_size=batch_size), single, atol=1e-5)
    single = np.concatenate([encoder.encode_image_queries([t]) for t in TEXTS])
    np.testing.assert_allclose(encoder.encode_image_queries(TEXTS, batch_size=batch_size), single, atol=1e-5)


def test_bf16_precision_stays_close_to_fp32(encoder, tiny):
    bf16 = create_encoder("clip", precision="bf16", **tiny.options())
    assert bf16.precision == "bf16" and bf16.model_ids == encoder.model_ids
    ims = images(3)
    low, full = bf16.encode_images(ims), encoder.encode_images(ims)
    assert_unit_float32(low, full.shape)
    assert np.min(np.sum(low * full, axis=1)) > 0.95
    with pytest.raises(ValueError, match="precision"):
        create_encoder("clip", precision="fp8", **tiny.options())


# ---- configuration and model ids ------------------------------------------------------------
def test_model_ids_name_architecture_checkpoint_and_sha(encoder, tiny):
    image_id, text_id = encoder.model_ids["image"], encoder.model_ids["text"]
    assert TINY_CLIP_NAME in image_id
    assert tiny.clip_checkpoint.name in image_id
    assert sha12(tiny.clip_checkpoint) in image_id
    assert tiny.text_dir.name in text_id
    assert sha12(tiny.text_dir / "model.safetensors") in text_id


def test_environment_variables_load_the_same_weights(encoder, tiny, monkeypatch):
    for name, value in tiny.env().items():
        monkeypatch.setenv(name, value)
    from_env = create_encoder("clip")
    assert from_env.model_ids == encoder.model_ids
    assert from_env.dims == encoder.dims
    np.testing.assert_allclose(from_env.encode_images(images(2)), encoder.encode_images(images(2)), atol=1e-6)
    monkeypatch.setenv("CLIP_MODEL", "ViT-B-32")
    with pytest.raises(ValueError, match=TINY_CLIP_NAME):  # config file and model name disagree
        create_encoder("clip")


def test_other_weights_get_another_model_id(encoder, tiny, tmp_path):
    _, checkpoint = make_tiny_clip(tmp_path, seed=1)
    other = create_encoder("clip", **{**tiny.options(), "pretrained": str(checkpoint)})
    assert other.model_ids["image"] != encoder.model_ids["image"]
    assert other.model_ids["text"] == encoder.model_ids["text"]
    assert not np.allclose(other.encode_images(images(2)), encoder.encode_images(images(2)), atol=1e-3)
    # same file name, other bytes: the sha256 prefix still tells them apart
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(checkpoint, renamed / tiny.clip_checkpoint.name)
    same_name = create_encoder("clip", **{**tiny.options(), "pretrained": str(renamed / tiny.clip_checkpoint.name)})
    assert same_name.model_ids["image"] != encoder.model_ids["image"]


def _fake_hub_snapshot(cache, repo_id: str, files: dict, revision: str = "0" * 40):
    """A Hugging Face hub cache entry in the documented layout (refs/main -> snapshots/<rev>)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        if source.is_dir():
            shutil.copytree(source, snapshot / name)
        else:
            shutil.copy(source, snapshot / name)
    return snapshot


def test_sentence_model_is_found_in_the_hub_cache(encoder, tiny, tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    files = {p.name: p for p in tiny.text_dir.iterdir()}
    _fake_hub_snapshot(cache, "tiny-org/tiny-sentence", files)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    options = {**tiny.options(), "text_model": "tiny-org/tiny-sentence"}
    cached = create_encoder("clip", **options)
    assert cached.model_ids["text"].startswith("tiny-org/tiny-sentence@model.safetensors")
    assert cached.model_ids["text"].endswith(sha12(tiny.text_dir / "model.safetensors"))
    np.testing.assert_allclose(cached.encode_texts(TEXTS), encoder.encode_texts(TEXTS), atol=1e-6)


def test_default_clip_checkpoint_is_found_in_the_hub_cache(tmp_path):
    """The tag is resolved to the cached file open_clip would use, with its preprocessing."""
    from open_clip.constants import OPENAI_DATASET_MEAN

    from indexer.encoders.clip import DEFAULT_MODEL, DEFAULT_PRETRAINED, resolve_clip_weights

    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"not really weights")
    cache = tmp_path / "hub"
    _fake_hub_snapshot(cache, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {"open_clip_pytorch_model.bin": checkpoint})
    found = resolve_clip_weights(DEFAULT_MODEL, DEFAULT_PRETRAINED, cache)
    assert not isinstance(found, str), found
    assert found.checkpoint.name == "open_clip_pytorch_model.bin" and found.checkpoint.is_file()
    assert tuple(found.preprocess["mean"]) == tuple(OPENAI_DATASET_MEAN)
    assert found.model_id == f"open_clip/ViT-B-32@laion2b_s34b_b79k#sha256:{sha12(checkpoint)}"


def test_a_pretrained_tags_preprocessing_reaches_open_clips_transform(encoder, tiny):
    """Tag weights carry their own mean/std (as open_clip's pretrained table says): they must be used."""
    from indexer.encoders.clip import ClipEncoder, ClipWeights

    tag_like = {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    weights = ClipWeights(TINY_CLIP_NAME, "some_tag", tiny.clip_checkpoint, tag_like, quick_gelu=False)
    _, preprocess, _ = ClipEncoder._load_clip(weights)
    colour = (200, 30, 90)
    array = preprocess(Image.new("RGB", (40, 60), colour)).numpy()
    np.testing.assert_allclose(array.mean(axis=(1, 2)), (np.array(colour) / 255.0 - 0.5) / 0.25, atol=1e-4)


# ---- missing or bad weights: fail at once, say what is missing --------------------------------
@pytest.fixture
def no_loading(monkeypatch):
    """Make any attempt to build a model fail the test: the check must come first."""
    import open_clip
    import sentence_transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("weights were loaded before the files were checked")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", forbidden)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", forbidden)


def test_default_weights_missing_from_an_empty_cache_fail_fast(tmp_path, monkeypatch, no_loading):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "nothing-here"))
    with pytest.raises(EncoderUnavailable) as err:
        create_encoder("clip")
    message = str(err.value)
    for part in (
        "ViT-B-32",
        "laion2b_s34b_b79k",
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        "open_clip_pytorch_model.bin",
        str(tmp_path / "nothing-here" / "hub"),
        "CLIP_PRETRAINED",
        "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
        "CLIP_TEXT_MODEL",
        "HF_HOME",
    ):
        assert part in message, part
    assert not (tmp_path / "nothing-here").exists()  # nothing downloaded, nothing created


def test_missing_local_files_are_named(tiny, tmp_path, no_loading):
    gone = tmp_path / "gone.pt"
    with pytest.raises(EncoderUnavailable, match="gone.pt"):
        create_encoder("clip", **{**tiny.options(), "pretrained": str(gone)})
    with pytest.raises(EncoderUnavailable, match="missing.json"):
        create_encoder("clip", **{**tiny.options(), "model_config": str(tmp_path / "missing.json")})
    empty_dir = tmp_path / "no-weights"
    shutil.copytree(tiny.text_dir, empty_dir)
    (empty_dir / "model.safetensors").unlink()
    with pytest.raises(EncoderUnavailable, match="model.safetensors"):
        create_encoder("clip", **{**tiny.options(), "text_model": str(empty_dir)})
    with pytest.raises(EncoderUnavailable, match="no-such-arch"):
        create_encoder(
            "clip", model="no-such-arch", pretrained=str(tiny.clip_checkpoint), text_model=str(tiny.text_dir)
        )


def test_corrupt_or_foreign_checkpoints_are_refused_clearly(tiny, tmp_path):
    import open_clip
    import torch

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny.clip_checkpoint.read_bytes()[:1000])  # truncated download
    with pytest.raises(EncoderUnavailable, match="corrupt.pt"):
        create_encoder("clip", **{**tiny.options(), "pretrained": str(corrupt)})
    foreign = tmp_path / "foreign.pt"
    torch.save(open_clip.CLIP(**{**TINY_CLIP_CONFIG, "embed_dim": 8}).state_dict(), foreign)
    with pytest.raises(EncoderUnavailable, match=f"{TINY_CLIP_NAME} cannot load .*foreign.pt"):
        create_encoder("clip", **{**tiny.options(), "pretrained": str(foreign)})
    text = tmp_path / "bad-text"
    shutil.copytree(tiny.text_dir, text)
    (text / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(EncoderUnavailable, match="bad-text"):
        create_encoder("clip", **{**tiny.options(), "text_model": str(text)})


# ---- end to end: build an index with the clip profile ------------------------------------------
def test_build_with_clip_profile_and_load_checks_the_encoder(encoder, tiny, tmp_path):
    from indexer.pipeline.build import build_index

    data = make_dataset(tmp_path / "data", per_category=3)
    out = tmp_path / "index"
    summary = build_index(data["folder"], out, encoder=encoder, progress=False)
    assert summary.profile == "clip"
    assert summary.indexed == {"image": 9, "text": 9}

    store = open_store(out, encoder=encoder)
    assert store.manifest["profile"] == "clip"
    assert store.manifest["model_ids"] == encoder.model_ids
    assert store.manifest["dims"] == encoder.dims
    vectors, rows = store.vectors_by_row("image")
    decoded = [load_image(store.products[r].image_path, draft_size=encoder.image_size) for r in rows]
    np.testing.assert_allclose(vectors, encoder.encode_images(decoded), atol=1e-3)  # stored as float16
    # a text query through the CLIP text tower searches the image index
    sims, hits = store.modalities["image"].search(encoder.encode_image_queries(["a watch"]), k=3)
    assert hits.shape == (1, 3) and (hits >= 0).all()

    with pytest.raises(IndexMismatch, match="clip"):
        open_store(out, encoder=FakeEncoder())
    _, checkpoint = make_tiny_clip(tmp_path / "other", seed=1)
    retrained = create_encoder("clip", **{**tiny.options(), "pretrained": str(checkpoint)})
    with pytest.raises(IndexMismatch):
        open_store(out, encoder=retrained)


def test_cli_builds_with_clip_profile_from_environment(tiny, tmp_path, monkeypatch, capsys):
    from indexer.__main__ import main

    data = make_dataset(tmp_path / "data", per_category=2)
    out = tmp_path / "index"
    assert main(["build", "--data", str(data["folder"]), "--out", str(out), "--profile", "clip", "--quiet"]) == 2
    assert "CLIP_PRETRAINED" in capsys.readouterr().err  # no weights configured: clear error, no index
    assert not (out / "CURRENT").exists()
    for name, value in tiny.env().items():
        monkeypatch.setenv(name, value)
    assert main(["build", "--data", str(data["folder"]), "--out", str(out), "--profile", "clip", "--quiet"]) == 0
    assert main(["info", str(out)]) == 0
    assert f"profile clip: clip[image=open_clip/{TINY_CLIP_NAME}@" in capsys.readouterr().out
