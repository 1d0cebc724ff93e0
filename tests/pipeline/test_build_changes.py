"""A rebuild from the CSV keeps the catalogue changes the engine acknowledged since (deletes,
relabels, a deleted product added again), read from the audit trail; `changes="forget"` (the
CLI's --forget-changes) sets them back to the CSV and says so in the trail. Small fake dataset,
fake encoder, no calibration (what is checked is the catalogue the build publishes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fakes import FakeEncoder, make_dataset

from indexer.catalog.products import load_catalog
from indexer.categorizer.vote import Categorizer
from indexer.pipeline.build import add_products, build_index
from indexer.pipeline.changes import carry_changes
from indexer.store import AuditLog, delete, open_store, relabel
from indexer.store import audit as audit_module
from indexer.store.local.index import compact

NEW_PATH = ("Garden", "Hoses", "Green")


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", per_category=3)


def build(dataset, out, **kwargs):
    encoder = FakeEncoder()
    return build_index(dataset["folder"], out, encoder=encoder, progress=False, calibrate_decision=False, **kwargs)


def vector_of(store, product_id, modality="text"):
    vectors, rows = store.vectors_by_row(modality)
    (position,) = np.flatnonzero(np.asarray(rows) == store.row_of(product_id))
    return np.asarray(vectors[position], dtype=np.float32)


def neighbour_ids(store, query):
    prediction = Categorizer(store).predict_vectors({"text": query[None, :]}, k=len(store.products))[0]
    return [n.id for n in prediction.neighbors]


@pytest.fixture
def changed(dataset, tmp_path):
    """An index built from the CSV, then one catalogue product deleted and another relabelled."""
    out = tmp_path / "index"
    build(dataset, out)
    first = open_store(out)
    gone, moved = dataset["rows"][0]["uniq_id"], dataset["rows"][4]["uniq_id"]
    queries = {pid: vector_of(first, pid) for pid in (gone, moved)}
    delete(first, [gone])
    relabel(open_store(out), {moved: NEW_PATH})
    return {"out": out, "gone": gone, "moved": moved, "queries": queries, "csv_path": first.products[4].category_path}


def test_rebuild_keeps_deletes_and_relabels(dataset, changed):
    out, gone, moved = changed["out"], changed["gone"], changed["moved"]
    summary = build(dataset, out)
    assert summary.changes == {"deleted": 1, "relabelled": 1, "re-added": 0} and not summary.forgotten
    assert summary.products == len(dataset["rows"]) - 1
    assert "catalogue changes carried from the audit trail: 1 deleted, 1 relabelled, 0 re-added" in summary.lines()
    store = open_store(out)
    assert not store.deltas  # applied in the rebuilt base, not carried as deltas
    assert store.row_of(gone) is None and gone not in [p.id for p in store.products]
    assert gone not in neighbour_ids(store, changed["queries"][gone])  # no vote, no search
    assert tuple(store.products[store.row_of(moved)].category_path) == NEW_PATH
    nearest = Categorizer(store).predict_vectors({"text": changed["queries"][moved][None, :]}, k=1)[0]
    assert nearest.neighbors[0].id == moved and tuple(nearest.neighbors[0].category_path) == NEW_PATH
    assert "Garden" in store.manifest["categories"]
    assert store.manifest["catalogue_changes"] == {"deleted": 1, "relabelled": 1, "re-added": 0, "forgotten": False}
    # a second rebuild reads the same trail: same catalogue, and nothing new in the trail
    assert build(dataset, out).changes == summary.changes
    assert [e["action"] for e in AuditLog(out).history(gone)] == ["delete"]


def test_rebuild_after_compaction_still_keeps_them(dataset, changed):
    """Compaction bakes the changes into a new base (no tombstone left): the trail still says."""
    compact(changed["out"])
    assert not open_store(changed["out"]).deltas
    summary = build(dataset, changed["out"])
    assert summary.changes["deleted"] == 1 and summary.changes["relabelled"] == 1
    store = open_store(changed["out"])
    assert store.row_of(changed["gone"]) is None
    assert tuple(store.products[store.row_of(changed["moved"])].category_path) == NEW_PATH


def test_forget_changes_brings_the_csv_back_for_good(dataset, changed):
    out, gone, moved = changed["out"], changed["gone"], changed["moved"]
    summary = build(dataset, out, changes="forget")
    assert summary.forgotten and summary.changes == {"deleted": 1, "relabelled": 1, "re-added": 0}
    assert any(line.startswith("catalogue changes forgotten (--forget-changes)") for line in summary.lines())
    store = open_store(out)
    assert summary.products == len(dataset["rows"]) == len(store.products)
    assert store.row_of(gone) is not None and gone in neighbour_ids(store, changed["queries"][gone])
    assert tuple(store.products[store.row_of(moved)].category_path) == changed["csv_path"]
    (*_, last) = AuditLog(out).history(gone)
    assert last["action"] == "rebuild" and last["before"] is None and last["after"]["id"] == gone
    assert AuditLog(out).history(moved)[-1]["before"]["category_path"] == list(NEW_PATH)
    # the forgetting is in the trail: a plain rebuild afterwards keeps the CSV
    again = build(dataset, out)
    assert again.changes == {"deleted": 0, "relabelled": 0, "re-added": 0}
    assert open_store(out).row_of(gone) is not None
    # ... and a change made after it is carried again
    delete(open_store(out), [gone])
    assert build(dataset, out).changes["deleted"] == 1 and open_store(out).row_of(gone) is None


def test_deleted_then_added_again_through_the_engine(dataset, changed):
    """A catalogue id deleted, then added again (an API listing under that id): the rebuild holds
    it once, as the engine added it; a later relabel applies over that record."""
    out, gone = changed["out"], changed["gone"]
    csv_product = next(p for p in load_catalog(dataset["folder"]).products if p.id == gone)
    again = dataclasses.replace(csv_product, name="Re-listed by the seller", category_path=("Baby Care", "Bibs"))
    add_products(out, [again], FakeEncoder(), action="auto-listing", actor="api-token")
    summary = build(dataset, out)
    assert summary.changes == {"deleted": 0, "relabelled": 1, "re-added": 1}
    store = open_store(out)
    assert [p.id for p in store.products].count(gone) == 1
    held = store.products[store.row_of(gone)]
    assert held.name == "Re-listed by the seller" and tuple(held.category_path) == ("Baby Care", "Bibs")
    relabel(store, {gone: NEW_PATH})
    build(dataset, out)
    held = open_store(out).products[open_store(out).row_of(gone)]
    assert held.name == "Re-listed by the seller" and tuple(held.category_path) == NEW_PATH
    # forgotten: the CSV row again, once
    build(dataset, out, changes="forget")
    store = open_store(out)
    assert [p.id for p in store.products].count(gone) == 1
    assert store.products[store.row_of(gone)].to_record() == csv_product.to_record()


def test_a_change_whose_writer_died_before_recording_it_is_still_carried(dataset, tmp_path, monkeypatch):
    """Killed between the commit and the trail: the rebuild records the delta's events first."""
    out = tmp_path / "index"
    build(dataset, out)
    gone = dataset["rows"][1]["uniq_id"]

    def die(self, events):
        raise SystemExit("killed before recording")

    with monkeypatch.context() as patched:
        patched.setattr(audit_module.AuditLog, "record_events", die)
        with pytest.raises(SystemExit):
            delete(open_store(out), [gone])
    assert open_store(out).row_of(gone) is None and AuditLog(out).history(gone) == []
    assert build(dataset, out).changes["deleted"] == 1
    assert open_store(out).row_of(gone) is None
    assert [e["action"] for e in AuditLog(out).history(gone)] == ["delete"]


def test_dropped_added_products_are_in_the_trail(dataset, tmp_path):
    out = tmp_path / "index"
    build(dataset, out)
    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="q", offset=50)
    added = load_catalog(extra["folder"]).products
    add_products(out, added, FakeEncoder())
    build(dataset, out, added="drop")
    assert open_store(out).row_of(added[0].id) is None
    last = AuditLog(out).history(added[0].id)[-1]
    assert last["action"] == "rebuild" and last["after"] is None and last["before"]["id"] == added[0].id


def test_a_relabel_back_to_the_csv_category_is_no_change(dataset):
    catalogue = load_catalog(dataset["folder"]).products
    pid, path = catalogue[0].id, list(catalogue[0].category_path)
    events = [
        {"product_id": pid, "action": "relabel", "after": {"category_path": list(NEW_PATH)}},
        {"product_id": pid, "action": "relabel", "after": {"category_path": path}},
        {"product_id": "not-in-the-csv", "action": "delete", "after": None},
    ]
    carried = carry_changes(catalogue, None, events)
    assert carried.counts() == {"deleted": 0, "relabelled": 0, "re-added": 0} and carried.fingerprint() is None
    assert [p.to_record() for p in carried.products] == [p.to_record() for p in catalogue]
    # added again after the rebuild's snapshot (the snapshot does not hold it): left to the hand-over
    events.append({"product_id": pid, "action": "delete", "after": None})
    events.append({"product_id": pid, "action": "add", "after": catalogue[0].to_record()})
    assert pid not in [p.id for p in carry_changes(catalogue, None, events).products]


def test_unknown_changes_mode_is_refused_before_anything(dataset, tmp_path):
    with pytest.raises(ValueError, match="changes must be one of carry, forget"):
        build(dataset, tmp_path / "index", changes="csv")
    assert not (tmp_path / "index").exists()


def test_a_forget_rebuild_killed_before_its_trail_is_recorded_by_the_next(dataset, changed, monkeypatch):
    """The rebuild's own events ride in the published manifest: killed after the publish, before
    the trail, the next writer records them (the forgetting is not undone by the next rebuild)."""
    from indexer.pipeline import build as build_module

    class Dying(AuditLog):
        def record_events(self, events):
            raise SystemExit("killed after the publish")

    out, gone = changed["out"], changed["gone"]
    with monkeypatch.context() as patched:
        patched.setattr(build_module, "AuditLog", Dying)
        with pytest.raises(SystemExit):
            build(dataset, out, changes="forget")
    assert open_store(out).row_of(gone) is not None  # published ...
    assert AuditLog(out).history(gone)[-1]["action"] == "delete"  # ... not yet in the trail
    assert build(dataset, out).changes == {"deleted": 0, "relabelled": 0, "re-added": 0}
    assert open_store(out).row_of(gone) is not None
    assert [e["action"] for e in AuditLog(out).history(gone)] == ["delete", "rebuild"]
