"""Build and add pipeline on a small synthetic dataset with the fake encoder: counts,
reported skips, the embedding cache, row alignment, and adds."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import FakeEncoder, make_dataset, product_image, product_row, write_csv

from indexer.catalog.images import load_image
from indexer.catalog.products import IMAGES_DIR, load_catalog
from indexer.catalog.text import encoder_text
from indexer.pipeline.build import CACHE_FILE, add_products, build_index, encode_products
from indexer.store import open_store
from indexer.store.local.index import FORMAT_VERSION, DuplicateProduct, IndexMismatch, IndexStore


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", per_category=4, corrupt=1, missing=1)


def build(dataset, out, encoder=None, **kwargs):
    encoder = encoder or FakeEncoder()
    return build_index(dataset["folder"], out, encoder=encoder, progress=False, **kwargs), encoder


def by_id(store: IndexStore, modality: str) -> dict[str, np.ndarray]:
    vectors, rows = store.vectors_by_row(modality)
    return {store.products[r].id: v for v, r in zip(vectors, rows, strict=True)}


def test_counts_and_skipped_reasons(dataset, tmp_path):
    summary, encoder = build(dataset, tmp_path / "index")
    [corrupt], [missing] = dataset["corrupt_ids"], dataset["missing_ids"]
    assert summary.products == 12
    assert summary.indexed == {"image": 10, "text": 12}
    assert summary.skipped == {"missing_image": 1, "unreadable_image": 1}
    issues = summary.report["issues"]
    assert issues["missing_image"][0]["id"] == missing
    assert issues["unreadable_image"][0]["id"] == corrupt
    assert "truncated" in issues["unreadable_image"][0]["detail"].lower()
    assert summary.encoded == {"image": 10, "text": 12} and summary.cached == {"image": 0, "text": 0}
    # each product's text once; then the calibration encodes each distinct name and first words once,
    # as title-only listings (query kinds)
    from indexer.categorizer.listings import first_words
    from indexer.categorizer.vote import query_text

    store = open_store(tmp_path / "index")
    names = [p.name for p in store.products if p.category]
    titles = {query_text(store, n, "") for n in names} | {query_text(store, first_words(n), "") for n in names}
    assert encoder.calls == {"image": 10, "text": 12 + len(titles)}
    text = "\n".join(summary.lines())
    assert "indexed image: 10, text: 12" in text and "unreadable_image 1" in text
    store = open_store(tmp_path / "index", encoder=encoder)
    images = by_id(store, "image")
    assert corrupt not in images and missing not in images  # ... but both keep their text:
    assert {corrupt, missing} <= set(by_id(store, "text"))


def test_manifest_of_a_build(dataset, tmp_path):
    summary, encoder = build(dataset, tmp_path / "index")
    manifest = open_store(tmp_path / "index").manifest
    assert manifest["profile"] == "fake" and manifest["model_ids"] == encoder.model_ids
    assert manifest["model_id"] == "fake[image=fake/image-v1,text=fake/text-v1]"
    assert manifest["dims"] == {"image": 16, "text": 12}
    assert manifest["counts"] == {"products": 12, "image": 10, "text": 12}
    assert manifest["categories"] == ["Baby Care", "Computers", "Watches"]
    assert manifest["validation"]["counts"] == {"missing_image": 1, "unreadable_image": 1}
    assert len(manifest["data_fingerprint"]) == 64
    assert manifest["built_at"] and manifest["faiss"]["text"]["factory"] == "Flat"
    assert manifest["text_normalisation"] == {"strip_boilerplate": True}
    assert summary.version == open_store(tmp_path / "index").version


def test_vectors_belong_to_their_products(dataset, tmp_path):
    """Whatever the batching, row i holds product i's own image and text vector."""
    ref = FakeEncoder()
    for batch_size in (1, 3, 32):
        out = tmp_path / f"index-{batch_size}"
        build(dataset, out, batch_size=batch_size, use_cache=False)
        store = open_store(out)
        for pid, vector in by_id(store, "image").items():
            product = next(p for p in store.products if p.id == pid)
            expected = ref.encode_images([load_image(product.image_path, draft_size=ref.image_size)])[0]
            np.testing.assert_allclose(vector, expected, atol=1e-3)  # stored as float16
        texts = by_id(store, "text")
        catalog = load_catalog(dataset["folder"])
        for product in catalog.products:
            expected = ref.encode_texts([encoder_text(product.name, product.description)])[0]
            np.testing.assert_allclose(texts[product.id], expected, atol=1e-3)  # stored as float16


def test_second_build_comes_from_cache_with_identical_vectors(dataset, tmp_path):
    out = tmp_path / "index"
    first, _ = build(dataset, out)
    first_store = open_store(out)
    assert (out / CACHE_FILE).is_file()
    second, encoder = build(dataset, out)
    assert second.encoded == {"image": 0, "text": 0}
    assert second.cached == {"image": 10, "text": 12}
    assert encoder.calls == {"image": 0, "text": 0}  # nothing re-encoded
    second_store = open_store(out)
    assert second_store.version != first_store.version
    for modality in ("image", "text"):
        np.testing.assert_array_equal(
            second_store.modalities[modality].vectors, first_store.modalities[modality].vectors
        )
        np.testing.assert_array_equal(second_store.modalities[modality].rows, first_store.modalities[modality].rows)
    assert second_store.manifest["data_fingerprint"] == first_store.manifest["data_fingerprint"]


def test_changed_image_reencodes_only_that_one(dataset, tmp_path):
    out = tmp_path / "index"
    build(dataset, out)
    before = by_id(open_store(out), "image")
    changed = dataset["rows"][1]["uniq_id"]
    product_image("Computers", 99).save(dataset["folder"] / IMAGES_DIR / f"{changed}.jpg", "JPEG")
    summary, encoder = build(dataset, out)
    assert summary.encoded == {"image": 1, "text": 0}
    assert summary.cached == {"image": 9, "text": 12}
    assert encoder.calls == {"image": 1, "text": 0}
    after_store = open_store(out)
    after = by_id(after_store, "image")
    assert not np.allclose(after[changed], before[changed])
    for pid in before:
        if pid != changed:
            np.testing.assert_array_equal(after[pid], before[pid])
    # fixing the corrupt image makes it indexed, again encoding only that one
    [corrupt] = dataset["corrupt_ids"]
    product_image("Watches", 0).save(dataset["folder"] / IMAGES_DIR / f"{corrupt}.jpg", "JPEG")
    summary, _ = build(dataset, out)
    assert summary.encoded["image"] == 1 and summary.indexed["image"] == 11
    assert "unreadable_image" not in summary.skipped


def test_changed_text_reencodes_only_that_one(dataset, tmp_path):
    out = tmp_path / "index"
    build(dataset, out)
    fingerprint = open_store(out).manifest["data_fingerprint"]
    rows = dataset["rows"]
    rows[0] = dict(rows[0], description="Completely rewritten description of a steel watch")
    write_csv(dataset["folder"], rows)
    summary, encoder = build(dataset, out)
    assert summary.encoded == {"image": 0, "text": 1}
    assert encoder.calls == {"image": 0, "text": 1}
    assert open_store(out).manifest["data_fingerprint"] != fingerprint


def test_fingerprint_tracks_data(dataset, tmp_path):
    build(dataset, tmp_path / "a")
    build(dataset, tmp_path / "b")
    fp = lambda name: open_store(tmp_path / name).manifest["data_fingerprint"]  # noqa: E731
    assert fp("a") == fp("b")
    pid = dataset["rows"][2]["uniq_id"]
    product_image("Watches", 42).save(dataset["folder"] / IMAGES_DIR / f"{pid}.jpg", "JPEG")
    build(dataset, tmp_path / "c")
    assert fp("c") != fp("a")


def test_no_cache_encodes_everything(dataset, tmp_path):
    build(dataset, tmp_path / "index")
    summary, encoder = build(dataset, tmp_path / "index", use_cache=False)
    assert summary.cached == {"image": 0, "text": 0} and encoder.calls == {"image": 10, "text": 12}


def test_cache_is_per_model(dataset, tmp_path):
    build(dataset, tmp_path / "index")
    other = FakeEncoder(version="v2", seed=1)
    summary, _ = build(dataset, tmp_path / "index", encoder=other)
    assert summary.cached == {"image": 0, "text": 0}  # another model's vectors are never reused
    assert open_store(tmp_path / "index", encoder=other).version == summary.version


def test_build_with_hnsw(dataset, tmp_path):
    summary, _ = build(dataset, tmp_path / "index", factory="HNSW32")
    store = open_store(tmp_path / "index")
    assert store.manifest["index_factory"] == "HNSW32"
    text = store.modalities["text"]
    _, rows = text.search(text.vectors, k=1)
    np.testing.assert_array_equal(rows[:, 0], text.rows)


def test_build_failing_midway_keeps_previous_index(dataset, tmp_path):
    out = tmp_path / "index"
    build(dataset, out)
    previous = open_store(out)

    def crash():
        raise KeyboardInterrupt  # e.g. Ctrl-C after encoding, before publishing

    with pytest.raises(KeyboardInterrupt):
        build(dataset, out, on_encoded=crash)
    store = open_store(out)
    assert store.version == previous.version and len(store.products) == 12


def test_empty_text_product_keeps_its_image(tmp_path):
    folder = tmp_path / "data"
    rows = make_dataset(folder, per_category=2)["rows"]
    rows[0] = dict(rows[0], product_name="", description="")
    write_csv(folder, rows)
    summary = build_index(folder, tmp_path / "index", encoder=FakeEncoder(), progress=False)
    assert summary.indexed == {"image": 6, "text": 5}
    assert summary.skipped == {"empty_text": 1}
    store = open_store(tmp_path / "index")
    assert rows[0]["uniq_id"] in by_id(store, "image") and rows[0]["uniq_id"] not in by_id(store, "text")


def test_unreadable_image_file_reported_product_keeps_text(dataset, tmp_path, monkeypatch):
    from pathlib import Path

    victim = dataset["rows"][5]["uniq_id"]
    real_read = Path.read_bytes

    def read_bytes(self):
        if self.name == f"{victim}.jpg":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    summary, _ = build(dataset, tmp_path / "index")
    assert summary.skipped == {"missing_image": 1, "unreadable_image": 2}
    detail = next(i["detail"] for i in summary.report["issues"]["unreadable_image"] if i["id"] == victim)
    assert "Permission denied" in detail
    store = open_store(tmp_path / "index")
    assert victim in by_id(store, "text") and victim not in by_id(store, "image")


def test_encode_products_without_cache(dataset):
    catalog = load_catalog(dataset["folder"])
    encoded = encode_products(catalog.products, FakeEncoder(), cache=None, progress=False)
    assert encoded.present("image").sum() == 10 and encoded.present("text").all()
    assert encoded.report.ids("unreadable_image") == dataset["corrupt_ids"]
    assert set(encoded.image_hashes) == {p.id for p in catalog.products if p.image_path}


# ---- add ---------------------------------------------------------------------------------------
def test_add_products_appends_without_reencoding(dataset, tmp_path):
    out = tmp_path / "index"
    build(dataset, out)
    before = open_store(out)
    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="q", corrupt=1, offset=100)
    new = load_catalog(extra["folder"]).products
    encoder = FakeEncoder()
    store, report = add_products(out, new, encoder)
    assert encoder.calls == {"image": 2, "text": 3}  # only the new products (one image is corrupt)
    assert len(store.products) == 15 and store.deltas == ("000001",) and not before.deltas  # a delta segment
    assert report.ids("unreadable_image") == extra["corrupt_ids"]
    assert store.manifest["counts"] == {"products": 15, "image": 12, "text": 15}
    reloaded = open_store(out, encoder=encoder)
    assert [p.id for p in reloaded.products[-3:]] == [p.id for p in new]
    images = by_id(reloaded, "image")
    for pid, vector in by_id(before, "image").items():
        np.testing.assert_allclose(images[pid], vector, atol=1e-7)
    with pytest.raises(DuplicateProduct, match="already in the index"):
        add_products(out, new[:1], FakeEncoder())


def test_add_refuses_other_encoder(dataset, tmp_path):
    out = tmp_path / "index"
    build(dataset, out)
    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="q", offset=100)
    with pytest.raises(IndexMismatch, match="rebuild"):
        add_products(out, load_catalog(extra["folder"]).products, FakeEncoder(version="v2"))
    assert len(open_store(out).products) == 12


def test_fake_encoder_honours_the_protocol():
    from indexer.encoders import Encoder

    encoder = FakeEncoder()
    assert isinstance(encoder, Encoder)
    images = [product_image("Watches", i) for i in range(3)]
    vectors = encoder.encode_images(images)
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(vectors, FakeEncoder().encode_images(images))  # deterministic
    assert not np.allclose(vectors[0], vectors[1])  # content-dependent
    texts = encoder.encode_texts(["steel watch", "steel watch", "baby romper"])
    assert texts.shape == (3, 12) and np.allclose(texts[0], texts[1]) and not np.allclose(texts[0], texts[2])


def test_product_row_helper_matches_published_layout(tmp_path):
    # guard for the fixtures themselves: the synthetic CSV loads like the real one
    write_csv(tmp_path, [product_row("x1", "Watches", 0)])
    (tmp_path / IMAGES_DIR).mkdir()
    [product] = load_catalog(tmp_path).products
    assert product.category_path == ("Watches", "Watches Sub", "Watches item 0")
    assert product.price == 499.0


# ---- integration: the real 945-product index (built once per session by conftest) --------------
MISSING_IMAGES = {
    "994f1d8ade16b9fddce3c127eb7f38ed",
    "22ac36ba254a68d7dd6173f099771147",
    "c4ac93e194281d6d1450ffdaa52f5f99",
}

KILL_DURING_PUBLISH = """
import os, signal, sys
import faiss
import indexer.store.local.index as store
from indexer.pipeline.build import build_index
from indexer.encoders import create_encoder

real_write = faiss.write_index

def write_then_die(index, name):
    real_write(index, name)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup handler runs: a real crash

store.faiss.write_index = write_then_die
build_index(sys.argv[1], sys.argv[2], encoder=create_encoder("embedded"), progress=False)
"""


@pytest.mark.integration
def test_real_index_counts_and_report(real_index):
    out, summary = real_index
    assert summary.products == 945
    assert summary.indexed == {"image": 942, "text": 945}
    assert summary.skipped == {"missing_image": 3}
    assert set(summary.report["issues"]["missing_image"][i]["id"] for i in range(3)) == MISSING_IMAGES
    store = open_store(out)
    assert len(store.products) == 945 and len(store.categories()) == 7
    assert not MISSING_IMAGES & {store.products[r].id for r in store.modalities["image"].rows}
    assert {store.products[r].id for r in store.modalities["text"].rows} >= MISSING_IMAGES


@pytest.mark.integration
def test_real_index_manifest_and_vectors(real_index, embedded_encoder):
    out, _ = real_index
    store = open_store(out, encoder=embedded_encoder)
    manifest = store.manifest
    assert manifest["profile"] == "embedded"
    assert manifest["dims"] == {"image": 1280, "text": embedded_encoder.dims["text"]}
    assert manifest["counts"] == {"products": 945, "image": 942, "text": 945}
    assert manifest["model_ids"] == embedded_encoder.model_ids
    assert manifest["format_version"] == FORMAT_VERSION and manifest["faiss"]["text"]["factory"] == "Flat"
    assert len(manifest["data_fingerprint"]) == 64 and manifest["built_at"]
    assert manifest["validation"]["counts"] == {"missing_image": 3}
    for modality, dim in (("image", 1280), ("text", embedded_encoder.dims["text"])):
        vectors = store.modalities[modality].vectors
        assert vectors.shape[1] == dim and vectors.dtype == np.float16  # memory-mapped float16
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(np.asarray(vectors, np.float32), axis=1), 1.0, atol=1e-3)


@pytest.mark.integration
def test_real_index_refuses_other_encoder(real_index):
    out, _ = real_index
    with pytest.raises(IndexMismatch, match="profile 'embedded'.*rebuild the index with --profile fake"):
        open_store(out, encoder=FakeEncoder())


@pytest.mark.integration
def test_real_index_add_then_reload_on_a_copy(real_index, embedded_encoder, tmp_path):
    import shutil

    out, _ = real_index
    copy = tmp_path / "index-copy"
    shutil.copytree(out, copy)
    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="new", categories=["Watches", "Computers"])
    new = load_catalog(extra["folder"]).products
    assert len(new) == 2
    store, report = add_products(copy, new, embedded_encoder)
    assert report.counts() == {}
    reloaded = open_store(copy, encoder=embedded_encoder)
    assert reloaded.version == store.version and len(reloaded.products) == 947
    assert reloaded.manifest["counts"] == {"products": 947, "image": 944, "text": 947}
    assert [p.id for p in reloaded.products[-2:]] == [p.id for p in new]
    for modality in ("image", "text"):
        m = reloaded.modalities[modality]
        _, rows = m.search(m.vectors[-2:], k=1)
        np.testing.assert_array_equal(rows[:, 0], [945, 946])
    assert len(open_store(out).products) == 945  # the shared index is untouched


@pytest.mark.integration
def test_real_build_killed_midway_leaves_previous_index(real_index, real_data_dir, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out, _ = real_index
    copy = tmp_path / "index-copy"
    shutil.copytree(out, copy)
    before = open_store(copy)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_PUBLISH, str(real_data_dir), str(copy)],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list((copy / "versions").glob(".staging-*")), "the build died while writing its new version"
    store = open_store(copy)
    assert store.version == before.version and len(store.products) == 945
    assert sorted(p.name for p in (copy / "versions").iterdir() if p.name.isdigit()) == [before.version]
    np.testing.assert_array_equal(store.modalities["image"].vectors, before.modalities["image"].vectors)


def test_concurrent_adds_from_two_processes(dataset, tmp_path):
    """Two sellers' batches added at once: both land, the shared embedding cache survives."""
    import multiprocessing

    from fakes import add_worker

    out = tmp_path / "index"
    build(dataset, out)
    folders = [
        make_dataset(tmp_path / f"batch{i}", per_category=2, prefix=f"b{i}-", offset=100 + 10 * i)["folder"]
        for i in range(2)
    ]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=add_worker, args=(str(out), str(f), barrier, results)) for f in folders]
    for worker in workers:
        worker.start()
    sizes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sizes == [18, 24]
    store = open_store(out)
    assert len({p.id for p in store.products}) == 24
    assert store.manifest["counts"]["image"] == 10 + 12 and store.manifest["counts"]["text"] == 24
    # every added vector sits in the cache: a rebuild of one batch's folder encodes nothing
    summary, encoder = build({"folder": folders[0]}, tmp_path / "again-index")
    assert summary.encoded == {"image": 6, "text": 6}  # another index folder has its own cache
    summary, encoder = build({"folder": folders[0]}, out, added="drop")  # the other batch goes
    # no product is encoded again (the calibration may encode titles as listings it has not seen)
    assert summary.encoded == {"image": 0, "text": 0} and encoder.calls["image"] == 0
