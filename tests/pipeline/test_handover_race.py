"""Every writer of a new base (build, ingest, compaction) racing adds made through the API (a
served app in its own process) and the CLI (`indexer add` processes): nothing acknowledged is
lost (counts and per-id checks), no photo a live product names is deleted, and the published
version verifies. Issue 20: a completed ingest published only its shard rows (84 added products
answered 404, their photos deleted by the next add); `build --keep-added` lost the adds made
while it ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeEncoder, make_dataset
from race_support import WRITERS, race, write_shards
from service_support import free_port, jpeg_bytes

from indexer.__main__ import main
from indexer.catalog.products import load_catalog
from indexer.pipeline.build import add_products, build_index
from indexer.store import open_store

PHOTOS = [jpeg_bytes(color=(200, 30 + 40 * i, 30)) for i in range(4)]


@pytest.fixture()
def indexed(tmp_path):
    data = make_dataset(tmp_path / "data", per_category=4)
    index = tmp_path / "index"
    build_index(data["folder"], index, encoder=FakeEncoder(), progress=False, calibrate_decision=False)
    return data, index


def source_for(kind: str, data: dict, index: Path, tmp_path: Path) -> Path:
    """What the writer reads: the catalogue (build), its shards (ingest), deltas to fold (compact)."""
    if kind == "ingest":
        return write_shards(data["folder"], tmp_path / "shards")
    if kind == "compact":
        extra = make_dataset(tmp_path / "before", per_category=1, prefix="b", offset=60)
        add_products(index, load_catalog(extra["folder"]).products, FakeEncoder())
    return data["folder"]


@pytest.mark.parametrize("kind", WRITERS)
def test_a_writer_racing_api_and_cli_adds_loses_nothing(kind, indexed, tmp_path, monkeypatch, fake_profile):
    data, index = indexed
    source = source_for(kind, data, index, tmp_path)
    before = {p.id for p in open_store(index).products}

    result = race(kind, index, source, tmp_path, free_port(), PHOTOS)

    assert result.writer_rc == 0, result.writer_output[-3000:]
    assert result.during > 0, "no add landed while the writer ran: the race did not happen"
    assert set(result.statuses) == {201}, result.statuses
    assert len(result.cli) == 6
    store = open_store(index, checksums=True)
    ids = [p.id for p in store.products]
    acknowledged = set(result.api) | set(result.cli)
    missing = sorted(acknowledged - set(ids))
    assert missing == [], f"{len(missing)} acknowledged adds lost: {missing}"
    assert len(ids) == len(set(ids)) == len(before) + len(acknowledged)
    assert store.version != "000001" or kind == "compact"  # the writer published
    for pid, photo in result.api.items():  # every raced photo is still there, byte for byte
        product = store.products[store.row_of(pid)]
        assert product.image_path is not None and product.image_path.read_bytes() == photo, pid
    uploads = sorted(p.name for p in (index / "uploads").iterdir())
    assert uploads == sorted(f"{pid}.jpg" for pid in result.api)
    assert main(["verify", str(index)]) == 0


# ---- deletes and relabels committed while a writer runs ------------------------------------------
def run_paused(monkeypatch, module, name: str, meanwhile) -> None:
    """Make `module.name` (a writer's slow step) call `meanwhile()` first: the changes it commits
    land while the writer holds its snapshot."""
    real = getattr(module, name)

    def paused(*args, **kwargs):
        meanwhile()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, paused)


@pytest.mark.parametrize("kind", ["build", "compact"])
def test_deletes_and_relabels_made_while_a_writer_runs_are_carried(kind, indexed, tmp_path, monkeypatch, fake_profile):
    import indexer.pipeline.build as build_module
    import indexer.store.local.index as index_module
    from indexer.store import delete, relabel

    data, index = indexed
    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="x", offset=70)
    add_products(index, load_catalog(extra["folder"]).products, FakeEncoder())
    ids = [p.id for p in open_store(index).products]
    doomed, moved, added_doomed = ids[0], ids[1], ids[-1]
    delete(open_store(index), [ids[2]])  # in the snapshot: a compaction drops its row

    def meanwhile() -> None:
        store = delete(open_store(index), [doomed, added_doomed])
        relabel(store, {moved: ("Garden", "Hoses")})

    if kind == "build":
        run_paused(monkeypatch, build_module, "stage_version", meanwhile)
        build_index(data["folder"], index, encoder=FakeEncoder(), progress=False, added="keep")
    else:
        run_paused(monkeypatch, index_module, "_stage_compaction", meanwhile)
        index_module.compact(index)
    store = open_store(index, checksums=True)
    assert store.row_of(doomed) is None and store.row_of(added_doomed) is None
    assert store.products[store.row_of(moved)].category_path == ("Garden", "Hoses")
    if kind == "compact":
        assert store.row_of(ids[2]) is None and store.deltas  # the carried change, renumbered
    assert store.manifest["handed_over"]["version"] != store.version
    assert main(["verify", str(index)]) == 0
