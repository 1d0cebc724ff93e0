"""The index on disk: round trip, normalisation, manifest, FAISS factories, refusal of
other encoders, append (also from two processes at once), and crash safety."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from fakes import FakeEncoder, append_worker, make_products, publish_fake, random_vectors

from indexer.encoders.base import l2_normalize
from indexer.store import open_store
from indexer.store.local.index import (
    CURRENT,
    FORMAT_VERSION,
    VERSIONS,
    DuplicateProduct,
    IndexMismatch,
    IndexNotFound,
    IndexStoreError,
    append,
    compact,
    publish,
    read_current,
    write_lock,
)
from indexer.store.local.seals import seal_manifest
from indexer.store.local.versions import write_current

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]


def live_versions(path: Path) -> list[str]:
    return sorted(p.name for p in (path / VERSIONS).iterdir() if p.name.isdigit())


def staging_dirs(path: Path) -> list[Path]:
    return sorted((path / VERSIONS).glob(".staging-*"))


# ---- round trip ------------------------------------------------------------------------------
def test_publish_load_round_trip(tmp_path):
    products, vectors = publish_fake(tmp_path, n=30)
    store = open_store(tmp_path)
    assert store.products == products
    assert store.version == read_current(tmp_path) == "000001"
    for modality, (vecs, rows) in vectors.items():
        loaded, loaded_rows = store.vectors_by_row(modality)
        assert loaded.dtype == np.float32 and loaded.shape == vecs.shape
        # stored as float16
        np.testing.assert_allclose(loaded, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(loaded_rows, rows)
        assert store.modalities[modality].index.ntotal == len(vecs)
    assert store.categories() == ["Baby Care", "Computers", "Watches"]
    assert list(store.labels()[:3]) == ["Watches", "Baby Care", "Computers"]
    assert store.product_rows()["s0007"] == 7
    assert not store.is_stale()


def test_vectors_are_unit_norm(tmp_path):
    _, vectors = publish_fake(tmp_path, n=12)
    assert all(np.abs(np.linalg.norm(v, axis=1) - 3).max() > 0.1 for v, _ in vectors.values())  # inputs aren't
    store = open_store(tmp_path)
    for modality in ("image", "text"):
        norms = np.linalg.norm(np.asarray(store.modalities[modality].vectors, np.float32), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-3)  # stored as float16


def test_search_finds_each_vector_itself(tmp_path):
    publish_fake(tmp_path, n=20)
    store = open_store(tmp_path)
    image = store.modalities["image"]
    sims, rows = image.search(image.vectors, k=3)
    np.testing.assert_array_equal(rows[:, 0], image.rows)  # rows are product rows, not positions
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-3)  # float16 stored query vs float32 FAISS copy
    assert (np.diff(sims, axis=1) <= 1e-6).all()
    sims, rows = image.search(image.vectors[:2], k=100)  # k larger than the index
    assert rows.shape == (2, len(image.rows)) and (rows >= 0).all()


def test_manifest_fields(tmp_path):
    encoder = FakeEncoder()
    publish_fake(tmp_path, n=10, encoder=encoder)
    manifest = json.loads((tmp_path / VERSIONS / "000001" / "manifest.json").read_text())
    assert manifest == open_store(tmp_path).manifest
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["profile"] == "fake"
    assert manifest["model_ids"] == {"image": "fake/image-v1", "text": "fake/text-v1"}
    assert manifest["dims"] == {"image": 16, "text": 12}
    assert manifest["counts"] == {"products": 10, "image": 5, "text": 10}
    assert manifest["modalities"] == ["image", "text"]
    assert manifest["faiss"]["text"]["factory"] == "Flat" and manifest["metric"] == "inner_product"
    assert manifest["built_at"] and time.strptime(manifest["written_at"], "%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("factory", ["HNSW32", "IVF2,Flat"])
def test_other_faiss_factories(tmp_path, factory):
    publish_fake(tmp_path, n=60, factory=factory)
    store = open_store(tmp_path)
    assert store.manifest["index_factory"] == factory
    text = store.modalities["text"]
    assert not isinstance(text.index, faiss.IndexFlat)
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(text.index).nprobe = 2  # search every list: exact
    _, rows = text.search(text.vectors, k=1)
    assert (rows[:, 0] == text.rows).mean() >= 0.95
    # appending goes to a delta searched beside the base; compaction extends the same kind of
    # index, without retraining
    store = append(store, make_products(2, "new"), {"text": random_vectors(2, 12, 9), "image": None})
    assert isinstance(store.modalities["text"].index, faiss.IndexShards) and store.deltas == ("000001",)
    assert store.modalities["text"].index.ntotal == 62
    _, rows = store.modalities["text"].search(l2_normalize(random_vectors(2, 12, 9)), k=1)
    np.testing.assert_array_equal(rows[:, 0], [60, 61])
    store = compact(tmp_path)
    assert type(store.modalities["text"].index) is type(text.index) and store.deltas == ()
    assert store.modalities["text"].index.ntotal == 62


def test_publish_rejects_unknown_modality_and_keeps_live_version(tmp_path):
    publish_fake(tmp_path, n=6)
    with pytest.raises(ValueError, match="unknown modality 'audio'"), write_lock(tmp_path):
        publish(tmp_path, make_products(2), {"audio": (np.ones((2, 4)), np.arange(2))}, {})
    assert open_store(tmp_path).version == "000001"
    assert staging_dirs(tmp_path) == []


# ---- refusals ----------------------------------------------------------------------------------
def test_mismatched_encoder_refused(tmp_path):
    publish_fake(tmp_path, n=6)
    assert open_store(tmp_path, encoder=FakeEncoder()).version == "000001"
    with pytest.raises(IndexMismatch) as info:
        open_store(tmp_path, encoder=FakeEncoder(version="v2"))
    message = str(info.value)
    assert "fake/image-v1" in message and "fake/image-v2" in message
    assert "rebuild the index" in message
    with pytest.raises(IndexMismatch, match="profile 'fake'.*--profile other"):
        open_store(tmp_path, encoder=FakeEncoder(profile="other"))
    with pytest.raises(IndexMismatch):
        open_store(tmp_path, encoder=FakeEncoder(text_dim=24))


def test_other_format_version_refused(tmp_path):
    publish_fake(tmp_path, n=4)
    manifest_path = tmp_path / VERSIONS / "000001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1  # sealed as the code that writes that format would
    data, _ = seal_manifest(manifest, **{k: v for k, v in manifest["seal"].items() if k in ("version", "previous")})
    manifest_path.write_bytes(data)
    write_current(tmp_path, "000001")
    with pytest.raises(IndexMismatch, match=f"format version {FORMAT_VERSION + 1}.*rebuild"):
        open_store(tmp_path)


def test_missing_index(tmp_path):
    with pytest.raises(IndexNotFound, match="no index at .*python -m indexer build"):
        open_store(tmp_path / "nothing")
    (tmp_path / CURRENT).write_text("000007\n")
    with pytest.raises(IndexNotFound, match="'000007', which is incomplete"):
        open_store(tmp_path)
    assert issubclass(IndexNotFound, IndexStoreError) and issubclass(IndexMismatch, IndexStoreError)


# ---- append ------------------------------------------------------------------------------------
def test_append_then_reload(tmp_path):
    products, _ = publish_fake(tmp_path, n=10)
    before = open_store(tmp_path)
    new = make_products(3, "new")
    image = random_vectors(3, 16, seed=5)
    image[1] = np.nan  # the second new product has no image
    text = random_vectors(3, 12, seed=6)
    after = append(before, new, {"image": image, "text": text})
    assert before.is_stale() and not after.is_stale()
    reloaded = open_store(tmp_path)
    assert reloaded.version == after.version == "000001"  # an add writes a delta, not a version
    assert reloaded.deltas == after.deltas == ("000001",)
    assert [p.id for p in reloaded.products] == [p.id for p in products + new]
    assert reloaded.manifest["counts"] == {"products": 13, "image": 7, "text": 13}
    assert reloaded.manifest["added_products"] == 3
    vecs, rows = reloaded.vectors_by_row("image")
    np.testing.assert_array_equal(rows[-2:], [10, 12])
    np.testing.assert_allclose(vecs[-2:], l2_normalize(image[[0, 2]]), atol=1e-3)  # float16
    np.testing.assert_array_equal(vecs[:5], before.modalities["image"].vectors)  # old ones kept
    _, hits = reloaded.modalities["text"].search(l2_normalize(text), k=1)
    np.testing.assert_array_equal(hits[:, 0], [10, 11, 12])


def test_append_new_category_updates_manifest(tmp_path):
    publish_fake(tmp_path, n=4)
    store = open_store(tmp_path)
    newcomer = make_products(1, "pen")[0]
    newcomer = dataclasses.replace(newcomer, category_path=("Pens & Stationery", "Pens"))
    store = append(store, [newcomer], {"text": random_vectors(1, 12)})
    assert "Pens & Stationery" in store.categories()
    assert store.manifest["categories"] == store.categories()  # what `info` and the report read


def test_append_existing_id_refused_and_nothing_changes(tmp_path):
    publish_fake(tmp_path, n=5)
    store = open_store(tmp_path)
    with pytest.raises(DuplicateProduct, match="already in the index: s0003"):
        append(store, make_products(4)[3:], {"text": random_vectors(1, 12)})
    assert open_store(tmp_path).version == "000001"


def test_old_versions_pruned(tmp_path):
    publish_fake(tmp_path, n=4)
    store = open_store(tmp_path)
    for i in range(4):
        store = append(store, make_products(1, f"a{i}-"), {"text": random_vectors(1, 12, i)})
        store = compact(tmp_path)  # each compaction publishes a version
    assert live_versions(tmp_path) == ["000003", "000004", "000005"]
    assert len(open_store(tmp_path).products) == 8


def test_concurrent_appends_from_two_processes_both_land(tmp_path):
    publish_fake(tmp_path, n=8)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding FAISS/OpenMP threads
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=append_worker, args=(str(tmp_path), prefix, 5, seed, barrier, results))
        for prefix, seed in (("left", 1), ("right", 2))
    ]
    for worker in workers:
        worker.start()
    sizes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sizes == [13, 18]  # one appended first, the other on top of it
    store = open_store(tmp_path)
    ids = [p.id for p in store.products]
    assert len(ids) == len(set(ids)) == 18
    assert {i for i in ids if i.startswith("left")} == {f"left{k:04d}" for k in range(5)}
    assert {i for i in ids if i.startswith("right")} == {f"right{k:04d}" for k in range(5)}
    assert store.manifest["counts"] == {"products": 18, "image": 14, "text": 18}
    assert store.modalities["text"].index.ntotal == 18
    _, rows = store.modalities["text"].search(store.modalities["text"].vectors, k=1)
    np.testing.assert_array_equal(rows[:, 0], store.modalities["text"].rows)


# ---- crash safety ------------------------------------------------------------------------------
KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import faiss
    import indexer.store.local.index as store
    from fakes import publish_fake

    real_write = faiss.write_index

    def slow_write(index, name):
        real_write(index, name)
        print("staged", flush=True)
        time.sleep(120)  # killed here, halfway through writing the new version

    store.faiss.write_index = slow_write
    publish_fake(sys.argv[1], n=40, prefix="new")
    """
)


def test_publish_killed_midway_leaves_previous_version_live(tmp_path):
    products, _ = publish_fake(tmp_path, n=10)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        assert proc.stdout.readline().strip() == "staged"
        assert len(staging_dirs(tmp_path)) == 1 and any(staging_dirs(tmp_path)[0].iterdir())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = open_store(tmp_path)
    assert store.version == "000001" and store.products == products
    assert live_versions(tmp_path) == ["000001"]
    # the writer died holding the lock: the OS released it, so the next writer proceeds
    leftover = staging_dirs(tmp_path)[0]
    store = append(store, make_products(1, "after"), {"text": random_vectors(1, 12)})
    assert store.version == "000001" and store.deltas == ("000001",) and len(store.products) == 11
    # the next writer holds the lock, so the dead writer's staging folder is removed at once
    assert not leftover.exists() and staging_dirs(tmp_path) == []


def test_failure_while_writing_cleans_up(tmp_path, monkeypatch):
    publish_fake(tmp_path, n=10)

    def broken_write(index, name):
        Path(name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="No space left"):
        publish_fake(tmp_path, n=20, prefix="new")
    monkeypatch.undo()
    assert staging_dirs(tmp_path) == []
    assert live_versions(tmp_path) == ["000001"]
    assert len(open_store(tmp_path).products) == 10


def test_failure_before_pointer_swap_keeps_previous_version(tmp_path, monkeypatch):
    publish_fake(tmp_path, n=10)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == CURRENT:
            raise OSError(5, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="I/O error"):
        publish_fake(tmp_path, n=20, prefix="new")
    monkeypatch.undo()
    assert open_store(tmp_path).version == "000001"
    # the complete but never-published version is removed by the publish that failed: no reader
    # takes it for a newer version (a roll-back of CURRENT), and the next writer publishes
    assert live_versions(tmp_path) == ["000001"]
    publish_fake(tmp_path, n=3, prefix="next")
    store = open_store(tmp_path)
    assert store.version == "000002" and [p.id for p in store.products] == ["next0000", "next0001", "next0002"]


def test_stale_reader_keeps_working_after_new_versions(tmp_path):
    publish_fake(tmp_path, n=10)
    reader = open_store(tmp_path)
    for i in range(4):  # enough versions for the reader's own to be pruned from disk
        publish_fake(tmp_path, n=5 + i, prefix=f"v{i}-")
    assert reader.is_stale() and "000001" not in live_versions(tmp_path)
    _, rows = reader.modalities["text"].search(reader.modalities["text"].vectors[:1], k=1)
    assert rows[0, 0] == 0  # in memory, unaffected
    assert len(open_store(tmp_path).products) == 8


def test_the_same_delete_from_two_processes_is_applied_once(tmp_path):
    """Two workers delete one product at the same moment: the write lock lets one win; the other
    re-reads the live version under the lock and is refused (ProductNotFound); one audit event."""
    from fakes import delete_worker

    from indexer.store import AuditLog

    publish_fake(tmp_path, n=8)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=delete_worker, args=(str(tmp_path), "s0003", barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert outcomes == ["ProductNotFound", "deleted"]
    store = open_store(tmp_path)
    assert store.row_of("s0003") is None and store.deltas == ("000001",) and store.product_count() == 7
    assert [e["action"] for e in AuditLog(tmp_path).history("s0003")] == ["delete"]
