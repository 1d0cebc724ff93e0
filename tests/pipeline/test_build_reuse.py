"""The build reuses its derived artefacts (lexical channel, calibration) only for the very same
data, models and settings: a changed data fingerprint forces a recompute."""

from __future__ import annotations

import csv

import pytest
from fakes import FakeEncoder, make_dataset

from indexer.catalog.products import CSV_NAME
from indexer.pipeline import build as build_module
from indexer.pipeline.build import build_index
from indexer.store import open_store


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", per_category=4)


def _build(dataset, out):
    return build_index(dataset["folder"], out, encoder=FakeEncoder(), progress=False)


def test_derived_key_depends_on_the_data_fingerprint():
    manifest = {"data_fingerprint": "a", "model_ids": {"text": "t"}, "precision": "fp32", "text_normalisation": {}}
    same = build_module._derived_key(dict(manifest))
    assert build_module._derived_key(dict(manifest)) == same
    assert build_module._derived_key({**manifest, "data_fingerprint": "b"}) != same


def test_changed_data_recomputes_lexical_channel_and_calibration(dataset, tmp_path, monkeypatch):
    from indexer.categorizer import protocol as calibration

    calls = []
    real = calibration.calibrate
    monkeypatch.setattr(calibration, "calibrate", lambda store, *a, **k: calls.append(1) or real(store, *a, **k))
    out = tmp_path / "index"
    _build(dataset, out)
    assert len(calls) == 1
    _build(dataset, out)  # same data: reused, not recomputed
    assert len(calls) == 1
    # change one product's text: a word no product had
    path = dataset["folder"] / CSV_NAME
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["description"] = rows[0]["description"] + " zanzibarword"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _build(dataset, out)
    assert len(calls) == 2
    store = open_store(out)
    assert "zanzibarword" in store.lexical.vectorizer.vocabulary_
    assert store.manifest["derived_key"] == build_module._derived_key(store.manifest)
