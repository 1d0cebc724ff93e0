"""`python -m indexer calibrate`: the deployment calibration refitted on the live catalogue (deltas
included) and published as a new version of hard links, readers switching only once it is complete;
and the service's background refit after RECALIBRATE_AFTER changes."""

from __future__ import annotations

import json
import os

import pytest
from fakes import FakeEncoder, make_dataset

from indexer.__main__ import main
from indexer.catalog.products import load_catalog
from indexer.pipeline.build import add_products, build_index
from indexer.pipeline.calibrate import recalibrate
from indexer.store import AuditLog, open_store
from indexer.store.local.index import VERSIONS, VersionReplaced, read_current, republish, verify_version


@pytest.fixture()
def index(tmp_path):
    dataset = make_dataset(tmp_path / "data", per_category=8)
    build_index(dataset["folder"], tmp_path / "index", encoder=FakeEncoder(), progress=False)
    extra = make_dataset(tmp_path / "extra", per_category=2, prefix="x", offset=100)
    add_products(tmp_path / "index", load_catalog(extra["folder"]).products, FakeEncoder())
    return tmp_path / "index", dataset


def test_recalibrate_fits_the_live_catalogue_and_publishes_it(index):
    path, _ = index
    before = open_store(path)
    assert before.deltas and before.manifest["categorizer"]["cv"]["sample"]["labelled"] == 24
    result = recalibrate(path)
    after = verify_version(path)  # every file checks out against its checksum
    assert after.version != before.version and result.published == after.version
    entry = after.manifest["categorizer"]
    assert entry["cv"]["sample"]["labelled"] == 30  # the added products were fitted on too
    assert entry["refit"]["version"] == before.version and entry["refit"]["products"] == 30
    assert after.deltas == before.deltas and len(after.products) == 30
    old, new = path / VERSIONS / before.version, path / VERSIONS / after.version
    name = next(iter(after.manifest["files"]))
    assert os.stat(old / name).st_ino == os.stat(new / name).st_ino  # hard links: nothing rewritten


def test_a_change_committed_during_the_fit_is_carried_and_a_rebuild_wins(index, tmp_path):
    path, dataset = index
    seen = open_store(path)
    late = make_dataset(tmp_path / "late", per_category=1, prefix="late", offset=200)
    add_products(path, load_catalog(late["folder"]).products, FakeEncoder())
    published = republish(path, {"categorizer": {**seen.manifest["categorizer"], "note": "x"}}, based_on=seen.version)
    assert len(published.products) == 33 and published.manifest["categorizer"]["note"] == "x"
    build_index(dataset["folder"], path, encoder=FakeEncoder(), progress=False, added="drop")
    with pytest.raises(VersionReplaced):
        republish(path, {"categorizer": {}}, based_on=published.version)
    assert "note" not in open_store(path).manifest.get("categorizer", {})


def test_the_cli_prints_the_thresholds_and_the_new_version(index, capsys):
    path, _ = index
    assert main(["calibrate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "auto threshold" in out and f"published as version {read_current(path)}" in out


def test_the_service_refits_in_the_background_after_enough_changes(index, monkeypatch, fake_profile):
    from service.app import create_app
    from service.config import Config

    path, _ = index
    recalibrate(path)  # the adds of the fixture are in the audit log: start from a fresh fit
    app = create_app(Config(index_dir=str(path), recalibrate_after=3, verify_checksums=False), encoder=FakeEncoder())
    recalibrator = app.extensions["recalibrator"]
    version = open_store(path).version
    assert recalibrator.pending(open_store(path)) == 0
    audit = AuditLog(path)
    for i in range(2):
        audit.record(f"p{i}", "relabel", "cli", {"category_path": ["A"]}, {"category_path": ["B"]})
    audit.record("p9", "reject", "review-token", None, None)  # does not change the catalogue
    assert recalibrator.changed() is None and open_store(path).version == version
    audit.record("p3", "delete", "cli", {"category_path": ["A"]}, None)
    thread = recalibrator.changed()
    assert thread is not None
    thread.join(timeout=120)
    assert recalibrator.last_error is None
    live = app.extensions["service_state"].current()
    assert live.version != version and live.store.manifest["categorizer"]["refit"]["version"] == version
    assert recalibrator.pending(live.store) == 0 and recalibrator.changed() is None
    json.dumps(live.store.manifest["categorizer"])  # what /readyz and `info` print stays JSON
