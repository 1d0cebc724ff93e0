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


def test_dot_rows_equals_the_gathered_rows_product_for_every_precision():
    """`dot_rows` (int8 codes times the query, then each row's scale) gives the dequantised rows'
    product to float32 rounding, in the order asked, for int8, float16 and stacked parts."""
    rng = np.random.default_rng(3)
    unit = l2_normalize(rng.standard_normal((40, 16)).astype(np.float32))
    int8 = segments.RowScaledInt8(*segments.quantize_int8(unit))
    half = unit.astype(np.float16)
    query = l2_normalize(rng.standard_normal((1, 16)).astype(np.float32))[0]
    positions = np.array([39, 0, 7, 7, 22, 3])
    for vectors in (int8, half):
        want = np.asarray(vectors[positions], np.float32) @ query
        np.testing.assert_allclose(segments.dot_rows(vectors, positions, query), want, rtol=0, atol=1e-6)
    parts = [segments.RowScaledInt8(*segments.quantize_int8(unit[:25])), unit[25:].astype(np.float16)]
    stacked = StackedVectors(parts)
    want = np.asarray(stacked[positions], np.float32) @ query
    got = segments.dot_rows(stacked, positions, query)
    assert got.dtype == np.float32 and got.shape == (len(positions),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(got - unit[positions] @ query).max() < 0.02  # int8 rows: near the floats


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


# ---- deletes and relabels: tombstone deltas, compaction ------------------------------------
def nearest_ids(store: IndexStore, vectors: np.ndarray, modality: str = "text", k: int = 3) -> list[list[str]]:
    found = Categorizer(store).neighbors({modality: vectors}, k=k)
    return [[n.id for n in hits] for hits in found]


def test_a_delete_or_relabel_writes_one_small_delta_and_leaves_the_base_untouched(tmp_path):
    from indexer.store import delete, relabel

    publish_fake(tmp_path, n=20)
    before_files = base_files(tmp_path)
    store = delete(open_store(tmp_path), ["s0004", "s0004"])  # a repeated id counts once
    store = relabel(store, {"s0005": ("Garden", "Hoses")})
    assert base_files(tmp_path) == before_files and store.deltas == ("000001", "000002")
    ddir = tmp_path / VERSIONS / "000001" / "deltas"
    assert sorted(f.name for f in (ddir / "000001").iterdir()) == ["changes.jsonl", "manifest.json"]
    assert len(store.products) == 20 and store.product_count() == 19 and list(store.deleted) == [4]
    assert store.manifest["deleted_products"] == 1 and store.manifest["relabeled_products"] == 1
    assert store.products[5].category_path == ("Garden", "Hoses")
    assert [p.category for p in store.products[4:7]] == ["Baby Care", "Garden", "Watches"]  # a slice reads relabels
    assert [p.id for p in store.products if p.category == "Garden"] == ["s0005"]  # so does iteration


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF2,Flat"])
def test_compaction_drops_deleted_products_and_bakes_relabels_in(tmp_path, factory):
    from indexer.store import delete, relabel

    publish_fake(tmp_path, n=40, factory=factory)
    store = open_store(tmp_path)
    store = add_one(store, "late", 7)  # row 40, in a delta
    texts = {r: store.vectors_by_row("text")[0][store.positions("text")[r]] for r in (3, 10, 40)}
    store = delete(store, ["s0004", "s0011", "s0020"])  # rows 4 (with an image), 11, 20 (image)
    store = relabel(store, {"s0010": ("Garden",), "late0000": ("Garden", "Late")})
    compacted = compact(tmp_path)
    assert compacted.version == "000002" and compacted.deltas == () and len(compacted.deleted) == 0
    assert compacted.manifest["compacted_from"]["dropped_products"] == 3
    ids = [p.id for p in compacted.products]
    assert len(ids) == 38 and not {"s0004", "s0011", "s0020"} & set(ids)
    assert compacted.row_of("s0003") == 3 and compacted.row_of("s0010") == 9 and compacted.row_of("late0000") == 37
    assert compacted.products[9].category_path == ("Garden",) and compacted.labels()[37] == "Garden"
    assert {c["name"]: c["count"] for c in compacted.category_index().counts()}["Garden"] == 2
    for modality, expected in (("text", 38), ("image", 19)):  # 21 images (20 + none for the late one) - 2 deleted
        channel = compacted.modalities[modality]
        assert channel.ntotal == channel.index.ntotal == expected
        kind = {"Flat": "IndexFlatIP", "HNSW32": "IndexHNSWFlat", "IVF2,Flat": "IndexIVFFlat"}[factory]
        assert type(faiss.downcast_index(channel.index)).__name__ == kind  # the same kind, not retrained
        assert int(np.max(channel.rows)) < 38 and len(np.unique(channel.rows)) == expected
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(compacted.modalities["text"].index).nprobe = 2  # every list: exact
    for row, new_row in ((3, 3), (10, 9), (40, 37)):  # each product's stored vector still finds itself
        found, rows = compacted.modalities["text"].search(texts[row][None], 1)
        assert rows[0, 0] == new_row, (row, rows)
    assert compacted.lexical is None or int(compacted.lexical.rows.max()) < 38
    assert store_module.verify_version(tmp_path).version == "000002"  # checksums of the new base hold


def test_lexical_rows_of_deleted_products_are_dropped_by_compaction(tmp_path):
    from indexer.store import delete

    publish_with_lexical(tmp_path, 9)
    store = delete(open_store(tmp_path), ["s0002"])
    query = store.lexical.transform(["Computers item 2"])
    assert "s0002" not in {n.id for n in Categorizer(store).neighbors({"lexical": query}, k=9)[0]}
    compacted = compact(tmp_path)
    assert compacted.lexical.ntotal == 8 and list(compacted.lexical.rows) == list(range(8))
    hits = Categorizer(compacted).neighbors({"lexical": query}, k=3)[0]
    assert [h.id for h in hits][:2] == ["s0005", "s0008"]  # the other Computers products, renumbered rows


def test_changes_during_a_compaction_are_carried_with_their_rows_renumbered(tmp_path, monkeypatch):
    from indexer.store import delete, relabel

    publish_fake(tmp_path, n=10)
    delete(open_store(tmp_path), ["s0002"])  # compacted: rows after 2 move down by one
    real_stage = store_module._stage_compaction
    text = random_vectors(1, 12, 55)

    def stage_then_change(live):
        staging = real_stage(live)
        during = append(open_store(tmp_path), make_products(1, "during"), {"text": text})  # row 10 -> 9
        during = relabel(during, {"s0007": ("Garden",), "during0000": ("Garden", "New")})  # rows 7 -> 6, 10 -> 9
        delete(during, ["s0005"])  # row 5 -> 4
        return staging

    monkeypatch.setattr(store_module, "_stage_compaction", stage_then_change)
    compacted = compact(tmp_path)
    assert compacted.deltas == ("000002", "000003", "000004") and len(compacted.products) == 10
    verified = store_module.verify_version(tmp_path)  # the rewritten deltas carry fresh checksums
    for store in (compacted, verified):
        assert store.row_of("s0002") is None and store.row_of("s0005") is None and list(store.deleted) == [4]
        assert store.row_of("s0007") == 6 and store.products[6].category_path == ("Garden",)
        assert store.row_of("during0000") == 9 and store.products[9].category_path == ("Garden", "New")
        assert nearest_ids(store, l2_normalize(text), k=1) == [["during0000"]]
    monkeypatch.setattr(store_module, "_stage_compaction", real_stage)
    final = compact(tmp_path)
    assert [p.id for p in final.products] == [
        "s0000",
        "s0001",
        "s0003",
        "s0004",
        "s0006",
        "s0007",
        "s0008",
        "s0009",
        "during0000",
    ]
    assert final.products[5].category_path == ("Garden",) and nearest_ids(final, l2_normalize(text), k=1) == [
        ["during0000"]
    ]


def test_deletes_past_the_threshold_start_a_compaction(tmp_path, monkeypatch):
    from indexer.store import delete

    monkeypatch.setattr(store_module, "DELTA_COMPACT_DELETES", 3)
    publish_fake(tmp_path, n=10)
    store = delete(open_store(tmp_path), ["s0001", "s0002"])
    assert store_module._COMPACTIONS.get(str(tmp_path.resolve())) is None
    delete(store, ["s0003"])
    store_module._COMPACTIONS[str(tmp_path.resolve())].join(timeout=60)
    store = open_store(tmp_path)
    assert store.version == "000002" and store.deltas == () and len(store.products) == 7


def test_many_deleted_rows_are_searched_through_a_live_row_filter(tmp_path, monkeypatch):
    """Past SKIP_DELETED_ROWS deleted rows a search filters the live rows instead of searching
    deeper: the same neighbours, no deleted one."""
    from indexer.store import base, delete

    publish_fake(tmp_path, n=30)
    store = delete(open_store(tmp_path), [f"s{i:04d}" for i in range(0, 30, 2)])
    queries = store.vectors_by_row("text")[0][store.positions("text")[[1, 3, 5]]]
    skipped = nearest_ids(store, queries, k=5)
    monkeypatch.setattr(base, "SKIP_DELETED_ROWS", 2)
    again = open_store(tmp_path)
    assert again.live_filter(None).rows is not None and len(again.live_filter(None).rows) == 15
    assert nearest_ids(again, queries, k=5) == skipped
    assert all(int(i[1:]) % 2 == 1 for hits in skipped for i in hits) and all(len(h) == 5 for h in skipped)


def test_the_audit_trail_survives_builds_and_compactions(tmp_path):
    """audit.sqlite sits beside versions/: a rebuild and a compaction (new versions, old ones
    pruned) leave it as it was."""
    from indexer.store import AuditLog, delete

    publish_fake(tmp_path, n=10)
    delete(open_store(tmp_path), ["s0003"], actor="api-token")
    review = tmp_path / "review.sqlite"
    review.write_bytes(b"queue")  # the review queue's file lives beside it
    for _ in range(4):  # enough versions for the first ones to be pruned
        publish_fake(tmp_path, n=6, prefix="r")
        add_one(open_store(tmp_path), "x", 1)
        compact(tmp_path)
    assert [e["action"] for e in AuditLog(tmp_path).history("s0003")] == ["delete"]
    assert review.read_bytes() == b"queue"
    assert "000001" not in os.listdir(tmp_path / VERSIONS)


def test_a_killed_writers_audit_events_are_recorded_by_compaction(tmp_path, monkeypatch):
    from indexer.store import AuditLog, audit, delete

    publish_fake(tmp_path, n=10)

    def killed(self, events):
        raise KeyboardInterrupt  # the process stops between the commit and the audit

    with monkeypatch.context() as patch:
        patch.setattr(audit.AuditLog, "record_events", killed)
        with pytest.raises(KeyboardInterrupt):
            delete(open_store(tmp_path), ["s0003"])
    assert open_store(tmp_path).row_of("s0003") is None and AuditLog(tmp_path).history("s0003") == []
    compact(tmp_path)
    compact(tmp_path)  # nothing to compact: still one event
    assert [e["action"] for e in AuditLog(tmp_path).history("s0003")] == ["delete"]


def test_the_audit_log_is_append_only(tmp_path):
    import sqlite3

    from indexer.store import AuditLog

    log = AuditLog(tmp_path)
    log.record("p1", "reject", "review-token", {"listing": "l1"}, None)
    with pytest.raises(ValueError, match="audit action"):
        log.record("p1", "erase", "cli", None, None)
    with pytest.raises(ValueError, match="actor"):
        log.record("p1", "delete", "", None, None)
    db = sqlite3.connect(tmp_path / "audit.sqlite")
    for sql in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    db.close()
    assert [(e["action"], e["before"]) for e in log.history("p1")] == [("reject", {"listing": "l1"})]
    assert sqlite3.connect(tmp_path / "audit.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_a_filter_over_base_and_deltas_searches_the_base_through_its_index(tmp_path, factory):
    """A segmented channel under a filter: the base part through its own index (a bitmap of the
    allowed base positions), the deltas' allowed positions scanned exactly, the k best of both:
    the same rows as an exact scan of every allowed vector."""
    from indexer.store.local.faiss_search import exact_search

    publish_fake(tmp_path, n=300, factory=factory)
    store = open_store(tmp_path)
    for i in range(3):
        store = add_one(store, f"d{i}-", 20 + i)
    text = store.modalities["text"]
    assert isinstance(text.index, faiss.IndexShards)
    rng = np.random.default_rng(1)
    allowed = PositionFilter(np.sort(rng.choice(text.ntotal, 250, replace=False)), text.ntotal)
    allowed = PositionFilter(np.union1d(allowed.positions, [300, 302]), text.ntotal)  # two delta rows in
    queries = np.asarray(text.vectors[[0, 5, 300, 302]], np.float32)
    sims, rows = filtered_search(text, queries, 10, allowed)
    want_sims, want_positions = exact_search(text.vectors, queries, 10, allowed.positions)
    np.testing.assert_allclose(sims, want_sims, atol=1e-3)
    assert (rows == text.rows[want_positions]).mean() >= (1.0 if factory == "Flat" else 0.9)
    assert set(rows.ravel()) <= set(text.rows[allowed.positions])
    assert allowed.below(300) is allowed.below(300) and allowed.below(300).ntotal == 300
