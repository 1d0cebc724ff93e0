"""Integrity of index versions: every file kind damaged three ways (truncated, flipped bytes,
empty) is refused by name; writers never build on damage; pruning keeps the last good version;
a rebuild keeps or refuses to drop added products; a corrupt embedding cache is rebuilt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fakes import FakeEncoder, damage, make_dataset, publish_copy

from indexer.__main__ import main
from indexer.catalog.products import load_catalog
from indexer.pipeline.build import CACHE_FILE, AddedProductsWouldBeDropped, add_products, build_index
from indexer.store import open_store
from indexer.store.local.index import (
    VERSIONS,
    IndexDamaged,
    last_verified,
    list_versions,
    read_current,
    verify_version,
)
from indexer.store.local.integrity import describe_files, file_digest

DAMAGES = ("truncated", "flipped", "empty")
FILES = [
    "products.sqlite",
    "paths.npy",
    "image.npy",
    "image.rows.npy",
    "image.faiss",
    "text.npy",
    "text.rows.npy",
    "text.faiss",
    "lexical.data.npy",
    "lexical.indices.npy",
    "lexical.indptr.npy",
    "lexical.postings.data.npy",
    "lexical.postings.indices.npy",
    "lexical.postings.indptr.npy",
    "lexical.idf.npy",
    "lexical.rows.npy",
    "lexical.vocab.json",
    "lexical.vocab.hash.npy",
    "lexical.vocab.column.npy",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    dataset = make_dataset(root / "data", per_category=4)
    out = root / "index"
    build_index(dataset["folder"], out, encoder=FakeEncoder(), progress=False, calibrate_decision=False)
    return dataset, out


@pytest.fixture()
def index(built, tmp_path):
    dataset, out = built
    copy = tmp_path / "index"
    shutil.copytree(out, copy)
    return dataset, copy


def new_damaged_version(index_dir: Path, name: str, how: str) -> str:
    """Copy the live version as the next one, point CURRENT at it (sealed, as a publish would),
    then damage one file."""
    live = read_current(index_dir)
    version = publish_copy(index_dir, live, f"{int(live) + 1:06d}")
    damage(index_dir / VERSIONS / version / name, how)
    return version


def test_publish_records_size_and_checksum_of_every_file(index):
    _, out = index
    store = open_store(out)
    vdir = out / VERSIONS / store.version
    assert sorted(store.manifest["files"]) == sorted(FILES)
    assert store.manifest["files"] == describe_files(vdir)
    assert store.manifest["files"]["text.npy"]["blake2b"] == file_digest(vdir / "text.npy")


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("how", DAMAGES)
def test_every_damaged_file_is_refused_by_name(index, name, how, capsys):
    _, out = index
    version = new_damaged_version(out, name, how)
    with pytest.raises(IndexDamaged, match=name.replace(".", r"\.")) as caught:
        verify_version(out)  # checksums: what writers and `verify` run
    assert caught.value.file == out / VERSIONS / version / name
    if how != "flipped":  # sizes are checked on every load, checksums only when asked
        with pytest.raises(IndexDamaged, match=name.replace(".", r"\.")):
            open_store(out)
    assert main(["verify", str(out)]) == 1
    assert f"{name}" in capsys.readouterr().out


@pytest.mark.parametrize("how", ("truncated", "empty"))
def test_damaged_manifest_is_refused(index, how):
    _, out = index
    new_damaged_version(out, "manifest.json", how)
    with pytest.raises(IndexDamaged, match="manifest.json"):
        open_store(out)


def test_verify_command_reports_ok(index, capsys):
    _, out = index
    assert main(["verify", str(out), "--all"]) == 0
    assert f"ok, {len(FILES)} files" in capsys.readouterr().out


def test_add_on_a_damaged_version_is_refused_and_prunes_nothing(index, tmp_path):
    dataset, out = index
    good = read_current(out)
    versions_before = list_versions(out)
    damaged = new_damaged_version(out, "text.npy", "flipped")
    extra = make_dataset(tmp_path / "more", per_category=1, prefix="x", offset=50)
    with pytest.raises(IndexDamaged, match="text.npy"):
        add_products(out, load_catalog(extra["folder"]).products, FakeEncoder())
    assert read_current(out) == damaged
    assert list_versions(out) == sorted(versions_before + [damaged])
    store, refused = last_verified(out)
    assert store is not None and store.version == good and refused[0].file.name == "text.npy"


def test_pruning_keeps_the_last_version_that_verified(index, tmp_path):
    """Three damaged versions on top of a good one, then a rebuild: the new version verifies,
    and it is kept; no good version is lost on the way."""
    dataset, out = index
    for name in ("text.faiss", "image.npy", "products.sqlite"):
        new_damaged_version(out, name, "truncated")
    build_index(dataset["folder"], out, encoder=FakeEncoder(), progress=False, calibrate_decision=False)
    live = read_current(out)
    assert verify_version(out).version == live
    assert live in list_versions(out)


def test_rebuild_refuses_to_drop_added_products_then_keeps_or_drops_them(index, tmp_path):
    dataset, out = index
    extra = make_dataset(tmp_path / "more", per_category=1, prefix="x", offset=50)
    added = load_catalog(extra["folder"]).products
    add_products(out, added, FakeEncoder())
    before = len(open_store(out).products)
    with pytest.raises(AddedProductsWouldBeDropped, match=r"holds 3 added products.*--keep-added.*--drop-added"):
        build_index(dataset["folder"], out, encoder=FakeEncoder(), progress=False, calibrate_decision=False)
    assert len(open_store(out).products) == before  # nothing published
    assert main(["build", "--data", str(dataset["folder"]), "--out", str(out), "--quiet"]) == 2
    build_index(dataset["folder"], out, encoder=FakeEncoder(), progress=False, calibrate_decision=False, added="keep")
    kept = open_store(out)
    assert len(kept.products) == before and {p.id for p in added} <= {p.id for p in kept.products}
    assert kept.manifest["added_products"] == 3
    build_index(dataset["folder"], out, encoder=FakeEncoder(), progress=False, calibrate_decision=False, added="drop")
    assert len(open_store(out).products) == before - 3


@pytest.mark.parametrize("how", ("garbage", "flipped", "truncated"))
def test_corrupt_cache_is_moved_aside_and_the_add_goes_on(index, tmp_path, how, caplog):
    dataset, out = index
    cache = out / CACHE_FILE
    if how == "garbage":
        cache.write_bytes(b"this is not a database" * 100)
    elif how == "truncated":
        cache.write_bytes(cache.read_bytes()[:1500])
    else:
        data = bytearray(cache.read_bytes())
        for i in range(100, len(data), 97):  # header, page headers and cells
            data[i] ^= 0x5A
        cache.write_bytes(bytes(data))
    before = len(open_store(out).products)
    extra = make_dataset(tmp_path / "more", per_category=1, prefix="x", offset=50)
    store, _ = add_products(out, load_catalog(extra["folder"]).products, FakeEncoder())
    assert len(store.products) == before + 3
    moved = list(out.glob(CACHE_FILE + ".corrupt-*"))
    assert moved and "moved aside" in caplog.text
    assert store.manifest["added_products"] == 3 and open_store(out).manifest["added_products"] == 3
