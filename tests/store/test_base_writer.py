"""BaseWriter: a base segment written batch by batch equals one written at once; trained
factories learn from a bounded seeded sample; a failed write leaves nothing behind."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from fakes import FakeEncoder, fake_manifest, make_products, random_vectors

from indexer.encoders.base import l2_normalize
from indexer.store import open_store
from indexer.store.local import writer as base_writer
from indexer.store.local.index import (
    VERSIONS,
    IndexStoreError,
    Snapshot,
    finish_base,
    new_base_writer,
    publish,
    publish_base,
)
from indexer.store.local.index import write_lock as lock


def staged_in_batches(path, products, vectors, factory="Flat", batch=7):
    """Write through a BaseWriter `batch` products at a time; vectors given per product (NaN = absent)."""
    writer = new_base_writer(path, {m: v.shape[1] for m, v in vectors.items()}, factory)
    with writer:
        for start in range(0, len(products), batch):
            part = {}
            for m, v in vectors.items():
                rows = v[start : start + batch]
                keep = ~np.isnan(rows).any(axis=1)
                part[m] = (rows[keep], np.flatnonzero(keep))
            writer.add(products[start : start + batch], part)
        return finish_base(writer, fake_manifest(FakeEncoder()))


def test_batches_equal_one_write(tmp_path):
    products = make_products(30)
    image = random_vectors(30, 16, 1)
    image[[3, 17]] = np.nan  # two products without a photo
    text = random_vectors(30, 12, 2)
    staging = staged_in_batches(tmp_path / "a", products, {"image": image, "text": text})
    publish_base(tmp_path / "a", staging, Snapshot(None), "build")
    keep = ~np.isnan(image).any(axis=1)
    with lock(tmp_path / "b"):
        publish(
            tmp_path / "b",
            products,
            {"image": (image[keep], np.flatnonzero(keep)), "text": (text, np.arange(30))},
            fake_manifest(FakeEncoder()),
        )
    a, b = open_store(tmp_path / "a", checksums=True), open_store(tmp_path / "b")
    assert a.products == b.products
    for m in ("image", "text"):
        va, ra = a.vectors_by_row(m)
        vb, rb = b.vectors_by_row(m)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(va, vb)
        sims_a, rows_a = a.modalities[m].search(vb[:5], 3)
        sims_b, rows_b = b.modalities[m].search(vb[:5], 3)
        np.testing.assert_array_equal(rows_a, rows_b)
    assert a.manifest["counts"] == {"products": 30, "image": 28, "text": 30}


def test_trained_factory_learns_from_a_bounded_seeded_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(base_writer, "TRAIN_ROWS", 40)
    monkeypatch.setattr(base_writer, "ADD_BATCH", 25)
    seen = []
    real_train = faiss.IndexIVFFlat.train

    def spy(self, x):
        seen.append(np.array(x))
        return real_train(self, x)

    monkeypatch.setattr(faiss.IndexIVFFlat, "train", spy)
    products = make_products(100)
    vectors = {"text": random_vectors(100, 12, 5)}
    staging = staged_in_batches(tmp_path, products, vectors, factory="IVF4,Flat", batch=9)
    publish_base(tmp_path, staging, Snapshot(None), "build")
    store = open_store(tmp_path)
    index = store.modalities["text"].index
    assert index.ntotal == 100 and isinstance(index, faiss.IndexIVFFlat)
    assert len(seen) == 1 and seen[0].shape == (40, 12)  # the sample, not the catalogue
    stored = store.vectors_by_row("text")[0]
    rows_in_sample = [int(np.argmin(np.abs(stored - s).sum(axis=1))) for s in seen[0]]
    assert len(set(rows_in_sample)) == 40  # distinct rows, spread over the catalogue
    assert max(rows_in_sample) > 60
    index.nprobe = 4  # every list: exact
    _, ids = index.search(np.ascontiguousarray(l2_normalize(stored[:10])), 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(10))


def test_a_failed_write_leaves_no_staging_and_bad_rows_are_refused(tmp_path):
    writer = new_base_writer(tmp_path, {"text": 12}, "Flat")
    with pytest.raises(ValueError, match="positions point outside"), writer:
        writer.add(make_products(3), {"text": (random_vectors(1, 12, 1), np.array([5]))})
    assert not list((tmp_path / VERSIONS).glob(".staging-*"))
    writer = new_base_writer(tmp_path, {"text": 12}, "Flat")
    with pytest.raises(IndexStoreError, match="rows point outside the 2 products"), writer:
        writer.add_products(make_products(2))
        writer.add_vectors("text", random_vectors(1, 12, 1), np.array([2]))
        finish_base(writer, fake_manifest(FakeEncoder()))
    assert not list((tmp_path / VERSIONS).glob(".staging-*"))
    with pytest.raises(ValueError, match="not declared"), new_base_writer(tmp_path, {"text": 12}, "Flat") as w:
        w.add_vectors("image", random_vectors(1, 16, 1), np.array([0]))
    with pytest.raises(ValueError, match="unknown modality"):
        new_base_writer(tmp_path, {"sound": 3}, "Flat")
