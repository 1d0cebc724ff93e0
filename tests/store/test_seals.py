"""The seal chain over CURRENT, the manifests and deltas/LIST: every single-byte flip and every
truncation of each is refused as damage (never served, never a crash), an edited value is
refused, a roll-back of CURRENT is caught, readers then pick the newest intact version, writers
complete a publish a kill interrupted and refuse anything else, and `verify` / `repair` report
and restore it. Issue 20: one flipped byte of CURRENT made every API call answer 500; CURRENT
pointing at an older version was served silently; a manifest whose threshold was edited
(0.876 -> 0.0) was served without a word."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from fakes import FakeEncoder, fake_manifest, make_products, publish_fake, random_vectors

from indexer.__main__ import main
from indexer.store import append, open_store
from indexer.store.errors import IndexDamaged, IndexStoreError
from indexer.store.local.index import VERSIONS, last_verified, publish, write_lock
from indexer.store.local.seals import format_current, seal_manifest
from indexer.store.local.versions import CURRENT, IndexRolledBack, read_current

CURRENT_LENGTH = len(format_current("000002", "0" * 64))
CHUNKS = 12  # a manifest's positions are checked in this many parametrized slices
MASKS = (0x01, 0xFF)  # one bit, and every bit of the byte


def build(path: Path) -> Path:
    """Version 1, version 2 (with a calibrated threshold) and one delta on version 2."""
    publish_fake(path, n=12)
    manifest = dict(fake_manifest(FakeEncoder()), categorizer={"threshold": 0.876, "k": 10})
    with write_lock(path):
        publish(path, make_products(10, "v"), {"text": (random_vectors(10, 12, 4), list(range(10)))}, manifest)
    append(open_store(path), make_products(2, "d"), {"text": random_vectors(2, 12, 5)})
    return path


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    return build(tmp_path_factory.mktemp("sealed"))


@pytest.fixture()
def index(sealed, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(sealed, copy)
    return copy


def files_of(path: Path) -> dict[str, Path]:
    live = path / VERSIONS / "000002"
    return {
        "CURRENT": path / CURRENT,
        "live manifest": live / "manifest.json",
        "older manifest": path / VERSIONS / "000001" / "manifest.json",
        "delta manifest": live / "deltas" / "000001" / "manifest.json",
        "deltas/LIST": live / "deltas" / "LIST",
    }


def load(path: Path, which: str) -> None:
    """What reads the file: the live version (CURRENT, its manifest, LIST, deltas), or the older
    version by name (a fall-back's load)."""
    if which == "older manifest":
        open_store(path, version="000001")
    else:
        open_store(path)


def refused(path: Path, which: str, data: bytes) -> Exception | None:
    """Write `data` into the file, load, restore it: the error raised (None: it loaded). The file
    is changed in place (pwrite / ftruncate), which is what damage does, and cheap enough to try
    every byte."""
    file = files_of(path)[which]
    good = file.read_bytes()
    fd = os.open(file, os.O_RDWR)
    try:
        os.ftruncate(fd, len(data))
        os.pwrite(fd, data, 0)
        try:
            load(path, which)
        except IndexStoreError as exc:
            return exc
        return None
    finally:
        os.ftruncate(fd, len(good))
        os.pwrite(fd, good, 0)
        os.close(fd)


def test_the_fixture_loads_and_is_sealed(sealed):
    store = open_store(sealed, checksums=True)
    assert store.version == "000002" and store.deltas == ("000001",) and len(store.products) == 12
    assert store.manifest["seal"]["version"] == "000002"
    assert store.manifest["seal"]["previous"]["version"] == "000001"
    assert len((sealed / CURRENT).read_bytes()) == CURRENT_LENGTH
    open_store(sealed, version="000001")


# ---- CURRENT: every byte ----------------------------------------------------------------------------
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("position", range(CURRENT_LENGTH))
def test_every_flipped_byte_of_current_is_refused(sealed, position, mask):
    data = bytearray((sealed / CURRENT).read_bytes())
    data[position] ^= mask
    exc = refused(sealed, "CURRENT", bytes(data))
    assert isinstance(exc, IndexDamaged) and exc.file == sealed / CURRENT, exc


@pytest.mark.parametrize("length", range(CURRENT_LENGTH))
def test_every_truncation_of_current_is_refused(sealed, length):
    exc = refused(sealed, "CURRENT", (sealed / CURRENT).read_bytes()[:length])
    assert isinstance(exc, IndexDamaged) and exc.file == sealed / CURRENT, exc


# ---- manifests and LIST: every byte, in slices ---------------------------------------------------------
@pytest.mark.parametrize("chunk", range(CHUNKS))
@pytest.mark.parametrize("which", ["live manifest", "older manifest", "delta manifest", "deltas/LIST"])
def test_every_flip_and_truncation_of_each_manifest_and_list_is_refused(sealed, which, chunk):
    file = files_of(sealed)[which]
    good = file.read_bytes()
    positions = range(chunk, len(good), CHUNKS)
    missed = []
    for position in positions:
        for mask in MASKS:
            data = bytearray(good)
            data[position] ^= mask
            if not isinstance(refused(sealed, which, bytes(data)), IndexDamaged):
                missed.append(f"flip {mask:#x} at {position}")
        if not isinstance(refused(sealed, which, good[:position]), IndexDamaged):
            missed.append(f"truncation to {position}")
    assert missed == [], f"{which}: {len(missed)} of {3 * len(positions)} changes served: {missed[:10]}"
    load(sealed, which)  # restored: loads again


# ---- edits ---------------------------------------------------------------------------------------------
def test_an_edited_threshold_is_refused_even_when_formatted_like_the_original(index):
    file = index / VERSIONS / "000002" / "manifest.json"
    manifest = json.loads(file.read_text())
    assert manifest["categorizer"]["threshold"] == 0.876
    manifest["categorizer"]["threshold"] = 0.0
    file.write_text(json.dumps(manifest, indent=2, sort_keys=True))  # the writer's own layout
    with pytest.raises(IndexDamaged, match="does not match its seal"):
        open_store(index)
    # resealed by someone who knows the algorithm: CURRENT still names the original seal
    seal = manifest.pop("seal")
    data, _ = seal_manifest(manifest, version=seal["version"], previous=seal["previous"])
    file.write_bytes(data)
    with pytest.raises(IndexDamaged, match="not the one CURRENT names"):
        open_store(index)


def test_an_older_version_resealed_after_an_edit_breaks_the_chain(index, capsys):
    file = index / VERSIONS / "000001" / "manifest.json"
    manifest = json.loads(file.read_text())
    seal = manifest.pop("seal")
    manifest["counts"]["products"] += 0  # any edit, then a fresh seal
    manifest["built_at"] = "2030-01-01T00:00:00Z"
    data, _ = seal_manifest(manifest, version=seal["version"], previous=seal["previous"])
    file.write_bytes(data)
    assert main(["verify", str(index), "--all"]) == 1
    assert "seal chain: version 000002 was published on version 000001" in capsys.readouterr().out


def test_a_copy_of_an_old_version_under_a_new_name_is_refused(index):
    shutil.copytree(index / VERSIONS / "000001", index / VERSIONS / "000003")
    with pytest.raises(IndexDamaged, match="sealed as version 000001, not 000003"):
        open_store(index, version="000003")


def test_a_delta_manifest_replaced_by_another_delta_is_refused(index):
    store = append(open_store(index), make_products(1, "e"), {"text": random_vectors(1, 12, 6)})
    deltas = index / VERSIONS / store.version / "deltas"
    shutil.copy(deltas / "000002" / "manifest.json", deltas / "000001" / "manifest.json")
    with pytest.raises(IndexDamaged, match="not the one deltas/LIST records"):
        open_store(index)


def test_a_missing_list_of_a_sealed_version_is_refused(index):
    (index / VERSIONS / "000002" / "deltas" / "LIST").unlink()
    with pytest.raises(IndexDamaged, match="deltas/LIST is missing"):
        open_store(index)


# ---- roll-back -----------------------------------------------------------------------------------------
def test_a_rolled_back_current_is_refused_and_the_newest_intact_version_found(index, capsys):
    old = index / "CURRENT.v2"
    shutil.copy(index / CURRENT, old)
    for n in (5, 6):
        with write_lock(index):
            products = make_products(n, f"w{n}-")
            publish(index, products, {"text": (random_vectors(n, 12, n), list(range(n)))}, {"profile": "x"})
    assert read_current(index) == "000004"
    shutil.copy(old, index / CURRENT)  # two steps back, with its own intact seal
    with pytest.raises(IndexRolledBack, match="CURRENT names version 000002, but version 000004 was published"):
        open_store(index)
    store, refusals = last_verified(index)
    assert store is not None and store.version == "000004" and isinstance(refusals[0], IndexRolledBack)
    with pytest.raises(IndexRolledBack):  # no writer builds on a rolled-back pointer
        append(store, make_products(1, "z"), {"text": random_vectors(1, 12, 8)})
    assert main(["verify", str(index)]) == 1
    out = capsys.readouterr().out
    assert "CURRENT: ROLLED BACK" in out and "newest intact version: 000004" in out
    # repair shows its plan and changes nothing without --yes
    assert main(["repair", str(index)]) == 1
    out = capsys.readouterr().out
    assert "point CURRENT at version 000004" in out and "nothing was changed" in out
    assert read_current(index) == "000002"
    assert main(["repair", str(index), "--yes"]) == 0
    assert "repaired: CURRENT names version 000004" in capsys.readouterr().out
    assert open_store(index).version == "000004" and main(["verify", str(index)]) == 0
    assert main(["repair", str(index)]) == 0 and "nothing to repair" in capsys.readouterr().out


def test_repair_moves_damaged_newer_versions_aside(index, capsys):
    with write_lock(index):
        publish(index, make_products(5, "w"), {"text": (random_vectors(5, 12, 7), list(range(5)))}, {"profile": "x"})
    (index / VERSIONS / "000003" / "text.npy").write_bytes(b"garbage")
    assert main(["repair", str(index), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "move damaged version 000003 aside" in out and "stops serving version 000003" in out
    assert read_current(index) == "000002" and not (index / VERSIONS / "000003").exists()
    assert list((index / VERSIONS).glob(".damaged-000003-*"))
    assert main(["verify", str(index)]) == 0


def test_a_publish_killed_before_its_swap_is_completed_by_the_next_writer(index):
    """A kill between the rename and the CURRENT swap leaves exactly this: version 3 sealed on top
    of version 2, CURRENT still naming version 2."""
    before = (index / CURRENT).read_bytes()
    with write_lock(index):
        publish(index, make_products(5, "w"), {"text": (random_vectors(5, 12, 7), list(range(5)))}, {"profile": "x"})
    (index / CURRENT).write_bytes(before)
    with write_lock(index):  # a writer is between its rename and its swap: readers take CURRENT
        assert open_store(index).version == "000002"
    with pytest.raises(IndexRolledBack):  # no writer: the newer version is judged
        open_store(index)
    store = append(last_verified(index)[0], make_products(1, "z"), {"text": random_vectors(1, 12, 8)})
    assert store.version == read_current(index) == "000003" and store.row_of("z0000") == 5


def test_current_missing_empty_or_naming_a_missing_version_is_damage_when_versions_exist(index):
    for data in (None, b"", format_current("000009", "0" * 64)):
        if data is None:
            (index / CURRENT).unlink()
        else:
            (index / CURRENT).write_bytes(data)
        with pytest.raises(IndexDamaged) as caught:
            open_store(index)
        assert caught.value.file == index / CURRENT
        store, _ = last_verified(index)
        assert store is not None and store.version == "000002"


# ---- indexes written before seals ----------------------------------------------------------------------
def test_an_index_written_before_seals_still_loads_and_takes_adds(tmp_path, capsys):
    publish_fake(tmp_path, n=6)
    vdir = tmp_path / VERSIONS / "000001"
    manifest = json.loads((vdir / "manifest.json").read_text())
    del manifest["seal"]
    (vdir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (vdir / "deltas" / "LIST").unlink()
    (tmp_path / CURRENT).write_text("000001\n")
    assert open_store(tmp_path, checksums=True).version == "000001"
    store = append(open_store(tmp_path), make_products(2, "n"), {"text": random_vectors(2, 12, 1)})
    assert len(open_store(tmp_path).products) == 8 and store.deltas == ("000001",)
    listed = (vdir / "deltas" / "LIST").read_text().splitlines()  # the add sealed its LIST
    assert listed[0].startswith("000001 ") and listed[1].startswith("check blake2b-256 ")
    assert main(["verify", str(tmp_path)]) == 0
    assert "one-line form written before seals" in capsys.readouterr().out
