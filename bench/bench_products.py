"""Product metadata at catalogue scale: format 2's parsed list vs format 3's SQLite table + codes.

Products are the real index's (INDEX_DIR, default var/index) repeated with new ids until N, so
names, descriptions and category paths have the real catalogue's sizes (the synthetic products
of bench_scale.py have empty text, which hides what a parsed list costs). Both ways run in this
one process, one after the other, so they see the same machine load (printed beside them).

Prints, per size, for the format-2 way (products.jsonl parsed into a list, labels and the
category index from a scan, the list copied on every reload after an add) and format 3
(indexer.store.local.products_db):
- write time; load time and the memory the products hold in this process (tracemalloc);
- per reload after an add: the combined product sequence and its labels / category counts;
- what a request does: one product by row (cold LRU), row_of by id, the category counts.

Run: .venv/bin/python bench/bench_products.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import ROOT

from indexer.catalog.products import Product
from indexer.store import open_store  # noqa: E402
from indexer.store.base import IndexStore
from indexer.store.categories import CategoryCodes
from indexer.store.filters import CategoryIndex
from indexer.store.local.products_db import PRODUCTS_FILE, ProductRows, ProductsWriter, ProductTable


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measured(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, MB held by the result): timed on its own, then called again under
    tracemalloc (which slows allocation-heavy code) for the memory."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    del out
    gc.collect()
    tracemalloc.start()
    out = fn()
    held = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    return out, seconds, held


def per_call_us(fn: Callable[[int], object], args: list[int]) -> str:
    times = []
    for a in args:
        t0 = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - t0)
    us = 1e6 * np.asarray(times)
    return f"p50 {np.percentile(us, 50):.0f} us, p99 {np.percentile(us, 99):.0f} us"


def catalogue(real: IndexStore, n: int) -> list[Product]:
    source = list(real.products)
    return [replace(source[i % len(source)], id=f"p{i:08d}") for i in range(n)]


def old_categories(products: list[Product]) -> dict[tuple[str, ...], np.ndarray]:
    """Format 2's CategoryIndex: one Python pass over every product (its prefix rows)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, product in enumerate(products):
        for depth in range(1, len(product.category_path) + 1):
            groups.setdefault(tuple(product.category_path[:depth]), []).append(row)
    return {k: np.asarray(v) for k, v in groups.items()}


def run(real: IndexStore, n: int, root: Path) -> None:
    products = catalogue(real, n)
    added = [replace(products[0], id="added-one")]
    rng = np.random.default_rng(0)
    rows = [int(r) for r in rng.integers(0, n, 500)]
    print(f"\n== {n} products (real text repeated; load average {load_average()})")

    # ---- format 2: products.jsonl parsed into a list ---------------------------------------
    jsonl = root / f"products-{n}.jsonl"
    t0 = time.perf_counter()
    with open(jsonl, "w", encoding="utf-8") as fh:
        for p in products:
            fh.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")
    write = time.perf_counter() - t0

    def parse() -> list[Product]:
        with open(jsonl, encoding="utf-8") as fh:
            return [Product.from_record(json.loads(line)) for line in fh if line.strip()]

    old, load, held = measured(parse)
    assert isinstance(old, list)
    t0 = time.perf_counter()
    combined = list(old) + added  # what _combine did on every reload after an add
    labels = np.array([p.category or "" for p in combined], dtype=object)  # the Categorizer's labels
    old_categories(combined)  # the CategoryIndex of the new store
    reload = time.perf_counter() - t0
    ids = {p.id: i for i, p in enumerate(old)}  # row_of's per-process dict
    print(
        f"format 2 (jsonl -> list): write {write:.2f} s; load {load:.2f} s, holds {held:.0f} MB; "
        f"per reload after an add (copy + labels + category index): {1000 * reload:.0f} ms; "
        f"row_of dict {len(ids)} ids (load average {load_average()})"
    )
    del old, combined, labels, ids
    gc.collect()

    # ---- format 3: products.sqlite + paths.npy ---------------------------------------------
    folder = root / f"v3-{n}"
    folder.mkdir()
    t0 = time.perf_counter()
    writer = ProductsWriter(folder)
    writer.add_all(products)
    catalog = writer.finish()
    write = time.perf_counter() - t0

    def open_table() -> tuple[ProductTable, CategoryCodes]:
        table = ProductTable(folder / PRODUCTS_FILE, n)
        table.check()
        codes = np.load(folder / "paths.npy", mmap_mode="r")
        paths = [tuple(p) for p in catalog["paths"]]
        counts = {tuple(p): c for p, c in catalog["counts"]}
        return table, CategoryCodes(paths, codes, np.zeros(0, np.int32), counts)

    opened, load, held = measured(open_table)
    assert isinstance(opened, tuple)
    table, codes = opened
    t0 = time.perf_counter()
    view = ProductRows(table, added, codes.extended([(added, None)]))
    view.codes.top_of_code(view.codes.categories())  # the Categorizer's class map
    counts = CategoryIndex(None, view.codes).counts()  # counts() needs no store
    reload = time.perf_counter() - t0
    print(
        f"format 3 (sqlite + codes): write {write:.2f} s; load {1000 * load:.1f} ms, holds {held:.2f} MB; "
        f"per reload after an add (view + codes + counts): {1000 * reload:.2f} ms (load average {load_average()})"
    )
    table.cache_size = 0
    print(f"  product by row, cold: {per_call_us(lambda r: table[r], rows)}")
    print(f"  row_of by id: {per_call_us(lambda r: view.row_of(products[r].id), rows)}")
    t0 = time.perf_counter()
    CategoryIndex(None, view.codes).counts()  # counts() needs no store
    print(f"  category counts ({len(counts)} top-level): {1000 * (time.perf_counter() - t0):.2f} ms")
    t0 = time.perf_counter()
    assert sum(1 for _ in table) == n
    print(f"  iterate every product in batches: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    labels = view.codes.labels()
    print(f"  labels() for the evaluation ({len(labels)}): {1000 * (time.perf_counter() - t0):.1f} ms")
    table.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    args = parser.parse_args()
    real = open_store(args.index)
    print(f"real index {args.index}: {len(real.products)} products, repeated with new ids")
    root = Path(tempfile.mkdtemp(prefix="bench-products-"))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            run(real, n, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
