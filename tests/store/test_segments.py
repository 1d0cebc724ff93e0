"""The segmented store: adds write one delta segment, readers see it at once, compaction merges.

Fake vectors, no models; a few seconds."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from fakes import make_products, publish_fake, random_vectors

from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.encoders.base import l2_normalize
from indexer.store import open_store
from indexer.store.filters import PositionFilter
from indexer.store.lexical import LexicalIndex
from indexer.store.local import index as store_module
from indexer.store.local import segments
from indexer.store.local.faiss_search import filtered_search
from indexer.store.local.index import VERSIONS, IndexDamaged, IndexStore, append, compact, publish, write_lock
from indexer.store.local.segments import StackedVectors, read_list


def base_files(path: Path, version: str = "000001") -> dict[str, tuple]:
    """(inode, size, mtime) of every file of a version's base segment."""
    vdir = path / VERSIONS / version
    return {f.name: (f.stat().st_ino, f.stat().st_size, f.stat().st_mtime_ns) for f in vdir.iterdir() if f.is_file()}


def add_one(store: IndexStore, name: str, seed: int) -> IndexStore:
    return append(
        store,
        make_products(1, name),
        {"image": random_vectors(1, 16, seed), "text": random_vectors(1, 12, seed + 100)},
    )


def publish_with_lexical(path: Path, n: int) -> list:
    """Products with text vectors and a lexical channel fitted on their texts."""
    from fakes import FakeEncoder, fake_manifest

    products = make_products(n)
    lexical = LexicalIndex.fit([f"{p.name} {p.description}" for p in products], np.arange(n))
    vectors = {"text": (random_vectors(n, 12, 3), np.arange(n))}
    with write_lock(path):
        publish(path, products, vectors, fake_manifest(FakeEncoder()), lexical=lexical)
    return products


def test_add_writes_a_delta_and_leaves_the_base_untouched(tmp_path):
    publish_fake(tmp_path, n=20)
    before_files = base_files(tmp_path)
    store = open_store(tmp_path)
    stale_reader = open_store(tmp_path)
    store = add_one(store, "new", 1)
    assert base_files(tmp_path) == before_files  # not rewritten, not even touched
    assert store.version == "000001" and store.deltas == ("000001",) and len(store.products) == 21
    assert read_list(tmp_path / VERSIONS / "000001") == ("000001",)
    assert stale_reader.is_stale() and not store.is_stale()  # another worker notices the delta
    # the reload re-uses this process's mapped base: same arrays, same FAISS index objects
    reloaded = open_store(tmp_path)
    assert reloaded.base is stale_reader.base
    assert reloaded.modalities["text"].vectors.parts[0] is stale_reader.modalities["text"].vectors
    assert isinstance(stale_reader.modalities["text"].vectors, np.memmap)
    assert reloaded.row_of("new0000") == 20 and reloaded.row_of("s0003") == 3 and reloaded.row_of("zz") is None


def test_search_spans_base_and_deltas(tmp_path):
    publish_fake(tmp_path, n=20)
    store = open_store(tmp_path)
    texts = []
    for i in range(3):
        store = add_one(store, f"d{i}-", 10 + i)
        texts.append(l2_normalize(random_vectors(1, 12, 110 + i))[0])
    text = store.modalities["text"]
    assert text.ntotal == 23 and isinstance(text.index, faiss.IndexShards)
    sims, rows = text.search(np.stack(texts), k=2)
    np.testing.assert_array_equal(rows[:, 0], [20, 21, 22])
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-3)
    # a base vector still finds itself, and stacked vectors read both parts
    _, rows = text.search(text.vectors[[5, 21]], k=1)
    np.testing.assert_array_equal(rows[:, 0], [5, 21])
    # a filter over a segmented channel returns only allowed rows, k of them
    allowed = PositionFilter(np.array([1, 4, 21, 22]), text.ntotal)
    _, rows = filtered_search(text, np.stack(texts), 3, allowed)
    assert set(rows.ravel()) <= {1, 4, 21, 22} and (rows >= 0).all()
    # the Categorizer votes over both (the delta products' own vectors find themselves)
    found = Categorizer(store).neighbors(stored_queries(store, [21, 3], ("text",)), k=1)
    assert [hits[0].id for hits in found] == ["d1-0000", "s0003"]


def test_stacked_vectors_gather_like_a_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 4)).astype(np.float16) for n in (5, 0, 3, 2)]
    whole = np.concatenate(parts).astype(np.float32)
    stacked = StackedVectors(parts)
    assert stacked.shape == (10, 4) and len(stacked) == 10
    positions = np.array([9, 0, 5, 7, 4, 5])
    np.testing.assert_array_equal(stacked[positions], whole[positions])
    np.testing.assert_array_equal(stacked[3], whole[3])
    np.testing.assert_array_equal(np.asarray(stacked), whole)
    np.testing.assert_array_equal(stacked.T, whole.T)
    with pytest.raises(IndexError):
        stacked[np.array([10])]


def test_lexical_channel_follows_the_deltas(tmp_path):
    publish_with_lexical(tmp_path, 9)
    store = open_store(tmp_path)
    newcomer = make_products(1, "lx")
    store = append(store, newcomer, {"text": random_vectors(1, 12, 7)})
    assert store.lexical.ntotal == 10 and store.manifest["lexical"]["count"] == 10
    query = store.lexical.transform([f"{newcomer[0].name} {newcomer[0].description}"])
    _, rows = store.lexical.search(query, k=1)
    assert rows[0, 0] in {0, 3, 6, 9}  # same category words as the base products of its category
    assert open_store(tmp_path).lexical.ntotal == 10


def test_compaction_merges_deltas_into_a_new_base(tmp_path):
    publish_fake(tmp_path, n=20)
    store = open_store(tmp_path)
    for i in range(3):
        store = add_one(store, f"d{i}-", i)
    ids = [p.id for p in store.products]
    vectors = {m: store.vectors_by_row(m) for m in ("image", "text")}
    compacted = compact(tmp_path)
    assert compacted.version == "000002" and compacted.deltas == () and [p.id for p in compacted.products] == ids
    for modality, (vecs, rows) in vectors.items():
        after, after_rows = compacted.vectors_by_row(modality)
        np.testing.assert_array_equal(after_rows, rows)
        np.testing.assert_allclose(after, vecs, atol=1e-3)
        assert isinstance(compacted.modalities[modality].index, faiss.IndexFlat)
    assert compacted.manifest["compacted_from"] == {"version": "000001", "deltas": ["000001", "000002", "000003"]}
    assert compacted.manifest["added_products"] == 3
    assert compact(tmp_path).version == "000002"  # nothing left to compact


def test_add_compacts_past_the_delta_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "DELTA_COMPACT_ROWS", 3)
    publish_fake(tmp_path, n=10)
    store = open_store(tmp_path)
    store = add_one(store, "a", 1)
    store = add_one(store, "b", 2)
    assert store.version == "000001" and len(store.deltas) == 2
    store = add_one(store, "c", 3)  # crosses the threshold: returns at once, compacts in the background
    assert store.version == "000001" and len(store.products) == 13
    store_module._COMPACTIONS[str(tmp_path.resolve())].join(timeout=60)
    store = open_store(tmp_path)
    assert store.version == "000002" and store.deltas == () and len(store.products) == 13


def test_many_small_adds_compact_past_the_segment_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "DELTA_COMPACT_SEGMENTS", 2)
    publish_fake(tmp_path, n=10)
    store = add_one(open_store(tmp_path), "a", 1)
    assert store_module._COMPACTIONS.get(str(tmp_path.resolve())) is None
    add_one(store, "b", 2)  # the second delta: past the threshold, one row each
    store_module._COMPACTIONS[str(tmp_path.resolve())].join(timeout=60)
    store = open_store(tmp_path)
    assert store.version == "000002" and store.deltas == () and len(store.products) == 12


def test_adds_during_a_compaction_are_carried_into_the_new_version(tmp_path, monkeypatch):
    publish_fake(tmp_path, n=10)
    add_one(open_store(tmp_path), "a", 1)
    real_stage = store_module._stage_compaction

    def stage_then_add(live):
        staging = real_stage(live)
        add_one(open_store(tmp_path), "during", 2)  # the write lock is free while the base is written
        return staging

    monkeypatch.setattr(store_module, "_stage_compaction", stage_then_add)
    compacted = compact(tmp_path)
    assert compacted.version == "000002" and compacted.deltas == ("000002",)
    assert [p.id for p in compacted.products][-2:] == ["a0000", "during0000"] and len(compacted.products) == 12
    assert compacted.manifest["compacted_from"] == {"version": "000001", "deltas": ["000001"]}
    assert len(compacted.base.products) == 11 and compacted.delta_rows() == 1
    verified = store_module.verify_version(tmp_path)  # the carried delta keeps its checksums
    row = verified.row_of("during0000")
    query = {"text": verified.vectors_by_row("text")[0][verified.positions("text")[row]][None]}
    assert Categorizer(verified).neighbors(query, k=1)[0][0].id == "during0000"
    monkeypatch.setattr(store_module, "_stage_compaction", real_stage)
    assert compact(tmp_path).deltas == () and len(open_store(tmp_path).products) == 12


def test_a_build_during_a_compaction_wins(tmp_path, monkeypatch):
    from fakes import FakeEncoder, fake_manifest

    publish_fake(tmp_path, n=10)
    add_one(open_store(tmp_path), "a", 1)
    real_stage = store_module._stage_compaction

    def stage_then_rebuild(live):
        staging = real_stage(live)
        with write_lock(tmp_path):
            publish(
                tmp_path,
                make_products(5, "r"),
                {"text": (random_vectors(5, 12, 9), np.arange(5))},
                fake_manifest(FakeEncoder()),
            )
        return staging

    monkeypatch.setattr(store_module, "_stage_compaction", stage_then_rebuild)
    after = compact(tmp_path)
    assert after.version == "000002" and len(after.products) == 5  # the rebuild, not the compaction
    assert not list((tmp_path / VERSIONS).glob(".staging-*"))


def test_one_base_writer_at_a_time(tmp_path):
    from indexer.store.local.handover import base_lock

    publish_fake(tmp_path, n=10)
    add_one(open_store(tmp_path), "a", 1)
    with base_lock(tmp_path, wait=True):  # a build, an ingest or another compaction
        busy = compact(tmp_path, wait=False)
    assert busy.version == "000001" and busy.deltas == ("000001",)


def test_writers_keep_the_staging_folders_of_live_processes(tmp_path):
    import subprocess
    import sys

    publish_fake(tmp_path, n=10)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / VERSIONS / f".staging-{int(finished.stdout)}-x"
    mine = tmp_path / VERSIONS / f".staging-{os.getpid()}-y"
    legacy = tmp_path / VERSIONS / ".staging-abc"
    for folder in (dead, mine, legacy):
        folder.mkdir()
    add_one(open_store(tmp_path), "a", 1)
    assert mine.is_dir() and not dead.exists() and not legacy.exists()


def test_damaged_delta_is_refused_by_name(tmp_path):
    publish_fake(tmp_path, n=10)
    store = add_one(open_store(tmp_path), "a", 1)
    vectors = tmp_path / VERSIONS / store.version / "deltas" / "000001" / "text.npy"
    data = bytearray(vectors.read_bytes())
    data[-3] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(IndexDamaged, match="delta 000001.*text.npy.*checksum"):
        open_store(tmp_path, checksums=True)
    with pytest.raises(IndexDamaged, match="text.npy"):
        add_one(store, "b", 2)  # an add never builds on damage
    vectors.write_bytes(vectors.read_bytes()[:-8])
    with pytest.raises(IndexDamaged, match="text.npy is .* bytes"):
        open_store(tmp_path)


def test_add_killed_before_commit_leaves_the_index_loadable(tmp_path, monkeypatch):
    publish_fake(tmp_path, n=10)
    store = open_store(tmp_path)
    real_replace = os.replace

    def die_on_list(src, dst):
        if Path(dst).name == segments.LIST:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(segments.os, "replace", die_on_list)
    with pytest.raises(OSError, match="No space"):
        add_one(store, "lost", 1)
    monkeypatch.undo()
    deltas = tmp_path / VERSIONS / "000001" / "deltas"
    assert (deltas / "000001").is_dir()  # written, renamed, but never committed to LIST
    reader = open_store(tmp_path, checksums=True)
    assert reader.deltas == () and len(reader.products) == 10 and not reader.is_stale()
    store = add_one(reader, "next", 2)  # the next add cleans the uncommitted delta up
    assert store.deltas == ("000002",) and [p.id for p in store.products[10:]] == ["next0000"]
    assert sorted(p.name for p in deltas.iterdir() if p.is_dir()) == ["000002"]


def test_stacked_vectors_report_the_bytes_of_their_parts():
    from indexer.store.local.segments import StackedVectors

    a, b = np.zeros((3, 4), np.float16), np.ones((2, 4), np.float16)
    assert (
        StackedVectors([a, b]).nbytes
        == a.nbytes + b.nbytes
        == np.asarray(StackedVectors([a, b])).astype(np.float16).nbytes
    )
