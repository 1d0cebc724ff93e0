"""Product metadata read by key (indexer.store.local.products_db): the SQLite table, category codes, the
combined view over base + deltas, counts kept in manifests, and damage refused by name.

Fake vectors, no models; a few seconds."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, fake_manifest, random_vectors

from indexer.catalog.products import Product
from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.store import open_store
from indexer.store.local import products_db
from indexer.store.local.index import (
    VERSIONS,
    IndexDamaged,
    IndexMismatch,
    IndexStore,
    IndexStoreError,
    append,
    compact,
    publish,
    write_lock,
)
from indexer.store.local.products_db import PATHS_FILE, PRODUCTS_FILE, ProductRows, ProductsWriter, ProductTable

PATHS = [
    ("Watches", "Wrist Watches", "Analog"),
    ("Watches", "Wrist Watches", "Digital"),
    ("Watches", "Clocks"),
    ("Baby Care", "Bath"),
    ("Computers",),
    (),  # unlabelled
]


def products(n: int, prefix: str = "p", paths: list[tuple[str, ...]] = PATHS) -> list[Product]:
    return [
        Product(
            id=f"{prefix}{i:05d}",
            name=f"item {i}",
            description=f"words {i % 7}",
            brand="b" if i % 2 else None,
            price=float(i) if i % 3 else None,
            category_path=paths[(i * 7) % len(paths)],
            image=f"{prefix}{i}.jpg" if i % 4 else None,
        )
        for i in range(n)
    ]


def publish_products(path: Path, items: list[Product], seed: int = 0) -> IndexStore:
    enc = FakeEncoder()
    vectors = {"text": (random_vectors(len(items), enc.dims["text"], seed), np.arange(len(items)))}
    with write_lock(path):
        publish(path, items, vectors, fake_manifest(enc))
    return open_store(path)


def add(store: IndexStore, items: list[Product], seed: int = 1) -> IndexStore:
    return append(store, items, {"text": random_vectors(len(items), FakeEncoder().dims["text"], seed)})


def scanned_counts(items: list[Product]) -> list[dict]:
    """/api/v1/categories computed the old way: a scan of every product."""
    top: Counter = Counter()
    subs: dict[str, Counter] = {}
    for p in items:
        if p.category_path:
            top[p.category_path[0]] += 1
            if len(p.category_path) > 1:
                subs.setdefault(p.category_path[0], Counter())[p.category_path[1]] += 1
    return [
        {
            "name": name,
            "count": n,
            "subcategories": [{"name": s, "count": c} for s, c in sorted(subs.get(name, Counter()).items())],
        }
        for name, n in sorted(top.items())
    ]


def test_table_reads_by_row_slice_id_and_in_batches(tmp_path, monkeypatch):
    items = products(53)
    store = publish_products(tmp_path, items)
    table = store.products.base
    assert isinstance(table, ProductTable) and len(table) == 53
    assert table[0] == items[0] and table[52] == items[52] and table[-1] == items[-1] and table[-53] == items[0]
    with pytest.raises(IndexError):
        table[53]
    with pytest.raises(IndexError):
        table[-54]
    assert table[10:20] == items[10:20] and table[50:99] == items[50:] and table[5:2] == [] and table[::7] == items[::7]
    assert table[-3:] == items[-3:]
    monkeypatch.setattr(products_db, "READ_BATCH", 4)  # iteration crosses many batch borders
    assert list(table) == items
    assert all(table.row_of(p.id) == i for i, p in enumerate(items))
    assert table.row_of("absent") is None and table.row_of("") is None


def test_lru_serves_the_right_product_when_full_and_after_an_add(tmp_path):
    items = products(40)
    store = publish_products(tmp_path, items)
    table = store.products.base
    table.cache_size = 5
    for row in [3, 7, 3, 11, 13, 17, 19, 3, 23, 29, 7, 31]:  # hits, misses, evictions
        assert table[row] == items[row]
    assert list(table._cache) == [3, 23, 29, 7, 31]  # least recently used first
    new = products(3, prefix="n", paths=[("Garden", "Tools")])
    grown = add(store, new)
    assert grown.products.base is table  # the reload shares the base's table (and its cache), no copy
    assert [grown.products[r] for r in (3, 7, 40, 41, 42)] == [items[3], items[7], *new]
    assert grown.products[38:42] == items[38:] + new[:2] and grown.products[-1] == new[-1]
    assert grown.row_of("n00001") == 41 and grown.row_of("p00039") == 39 and grown.row_of("nope") is None
    assert store.row_of("n00001") is None and len(store.products) == 40  # the old view is unchanged
    assert grown.products == items + new and list(grown.products) == items + new


def test_labels_codes_and_categories_agree_with_a_scan(tmp_path):
    items = products(60)
    store = publish_products(tmp_path, items)
    extra = products(5, prefix="n", paths=[("Garden", "Tools"), (), ("Watches", "New")])
    grown = add(store, extra)
    every = items + extra
    assert list(grown.labels()) == [p.category or "" for p in every]
    assert grown.categories() == sorted({p.category for p in every if p.category})
    assert grown.manifest["categories"] == grown.categories()
    codes = grown.category_codes()
    rows = np.array([0, 5, 59, 60, 64, 2])
    assert [codes.paths[c] if c >= 0 else () for c in codes.take(rows)] == [every[r].category_path for r in rows]
    # an in-memory store (as calibration builds one) gets the same answers from a scan
    plain = IndexStore(grown.path, grown.version, grown.manifest, list(every), grown.modalities)
    assert list(plain.labels()) == list(grown.labels()) and plain.categories() == grown.categories()
    assert plain.category_index().counts() == grown.category_index().counts()


def test_counts_and_prefix_rows_after_add_and_compaction(tmp_path):
    items = products(45)
    store = publish_products(tmp_path, items)
    assert store.category_index().counts() == scanned_counts(items)
    extra = products(7, prefix="n", paths=[("Garden", "Tools"), ("Watches", "Clocks"), ()])
    grown = add(store, extra)
    every = items + extra
    assert grown.category_index().counts() == scanned_counts(every)
    for prefix in [("Watches",), ("Watches", "Clocks"), ("Garden",), ("Watches", "Wrist Watches", "Digital")]:
        expected = [r for r, p in enumerate(every) if p.category_path[: len(prefix)] == prefix]
        assert grown.category_index().rows_of(prefix).tolist() == expected
        assert grown.category_index().rows[prefix].tolist() == expected
    assert grown.category_index().rows_of(("Nothing",)) is None and ("Nothing",) not in grown.category_index().rows
    assert store.category_index().rows_of(("Garden",)) is None  # the old version never sees the add
    compacted = compact(tmp_path)
    assert compacted.deltas == () and compacted.version != store.version
    assert compacted.category_index().counts() == scanned_counts(every) and compacted.products == every
    catalog = compacted.manifest["catalog"]
    assert catalog["products"] == len(every) and [list(p) for p in compacted.category_codes().paths] == catalog["paths"]
    assert compacted.row_of("n00006") == 51


def test_categorizer_votes_from_codes_as_from_labels(tmp_path):
    items = products(30)
    store = add(publish_products(tmp_path, items), products(4, prefix="n", paths=[("Garden", "Tools")]))
    cat = Categorizer(store, {"k": 7})
    labels = store.labels()
    queries = stored_queries(store, np.arange(0, 34, 3))
    predictions = cat.predict_vectors(queries, with_neighbors=True)
    assert any(p.category == "Garden" for p in predictions)  # a delta's category is voted for
    for pred in predictions:
        rows = np.array([n.row for n in pred.neighbors])
        sims = np.array([n.score for n in pred.neighbors])
        weights = np.exp((sims - sims.max()) / cat.temperature)
        votes: dict[str, float] = {}
        for w, r in zip(weights, rows, strict=True):  # the vote as it was, from a label per product
            if labels[r]:
                votes[labels[r]] = votes.get(labels[r], 0.0) + float(w)
        total = sum(votes.values()) or 1.0
        expected = {c: round(votes.get(c, 0.0) / total, 6) for c in store.categories()}
        assert pred.scores == expected
        assert [n.category for n in pred.neighbors] == [labels[r] or None for r in rows]


def test_writer_streams_batches_and_refuses_duplicate_ids(tmp_path):
    items = products(23)
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir(), many.mkdir()
    first = ProductsWriter(one)
    first.add(items)
    second = ProductsWriter(many)
    second.add_all(iter(items), batch=4)
    assert first.finish() == second.finish()
    assert (one / PATHS_FILE).read_bytes() == (many / PATHS_FILE).read_bytes()
    assert sorted(p.name for p in many.iterdir()) == [PATHS_FILE, PRODUCTS_FILE]  # no raw file left behind
    assert list(ProductTable(many / PRODUCTS_FILE, 23)) == items
    dup = tmp_path / "dup"
    dup.mkdir()
    writer = ProductsWriter(dup)
    writer.add_all([*items[:3], items[1]])
    with pytest.raises(IndexStoreError, match="duplicate product ids"):
        writer.finish()


def test_damaged_sqlite_is_refused_naming_the_file(tmp_path):
    publish_products(tmp_path, products(20))
    vdir = tmp_path / VERSIONS / "000001"
    data = bytearray((vdir / PRODUCTS_FILE).read_bytes())
    data[:16] = b"not a database!!"  # same size: only the header check or a checksum can see it
    (vdir / PRODUCTS_FILE).write_bytes(bytes(data))
    with pytest.raises(IndexDamaged, match=r"products\.sqlite") as caught:
        open_store(tmp_path)  # sizes only: the load's own check opens the table
    assert caught.value.file == vdir / PRODUCTS_FILE
    with pytest.raises(IndexDamaged, match=r"products\.sqlite.*checksum"):
        open_store(tmp_path, checksums=True)


def test_a_table_missing_rows_is_refused(tmp_path):
    store = publish_products(tmp_path, products(12))
    file = store.products.base.file
    with pytest.raises(IndexDamaged, match="last row 11, the manifest says 13"):
        ProductTable(file, 13).check()
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(file.read_bytes())
    with sqlite3.connect(copy) as db:
        db.execute("DELETE FROM products WHERE row = 5")
    table = ProductTable(copy, 12)
    table.check()  # the last row is still there
    with pytest.raises(IndexDamaged, match="row 5 is missing"):
        table[5]
    with pytest.raises(IndexDamaged, match="11 found"):
        table[0:12]


def test_format_2_index_is_refused_with_rebuild(tmp_path):
    publish_products(tmp_path, products(5))
    manifest_file = tmp_path / VERSIONS / "000001" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    del manifest["seal"]  # format 2 was written before seals, with a one-line CURRENT
    manifest["format_version"] = 2
    manifest_file.write_text(json.dumps(manifest))
    (tmp_path / "CURRENT").write_text("000001\n")
    with pytest.raises(IndexMismatch, match="format version 2.*rebuild it with `python -m indexer build`"):
        open_store(tmp_path)


def _read_in_child(store: IndexStore, rows: list[int], out: multiprocessing.Queue) -> None:
    out.put([store.products[r].id for r in rows] + [store.row_of("p00007")])


def test_table_is_read_from_threads_and_after_a_fork(tmp_path):
    items = products(300)
    store = publish_products(tmp_path, items)
    assert isinstance(store.products, ProductRows)
    store.products.base.cache_size = 16  # most reads go to SQLite
    rows = list(np.random.default_rng(0).integers(0, 300, 2000))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda r: store.products[int(r)].id, rows))
    assert got == [items[r].id for r in rows]
    parent_connection = store.products.base._db
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(store, [1, 299, 150], out))
    child.start()
    assert out.get(timeout=60) == [items[1].id, items[299].id, items[150].id, 7]
    child.join(timeout=60)
    assert child.exitcode == 0 and store.products.base._db is parent_connection  # the parent's is untouched
    assert store.products[2] == items[2]


def test_columns_follow_the_product_fields_and_bad_values_are_refused(tmp_path):
    assert tuple(Product.__dataclass_fields__) == products_db.COLUMNS  # a new field needs a new format
    store = publish_products(tmp_path, products(6))
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(store.products.base.file.read_bytes())
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE products SET category_path = '[not json' WHERE row = 2")
        db.execute("UPDATE products SET name = NULL WHERE row = 4")
    table = ProductTable(copy, 6)
    assert table[1] == store.products[1]
    with pytest.raises(IndexDamaged, match=r"copy\.sqlite.*row 2"):
        table[2]
    with pytest.raises(IndexDamaged, match="row 4: id, name and description must be text"):
        table[4]
