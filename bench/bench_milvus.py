"""The Milvus Lite store at catalogue scale, on a SYNTHETIC catalogue, against the FAISS store.

The catalogue is bench_search_scale.py's: N products mixed from pairs of same-category real
products of INDEX_DIR (default var/index), dense vectors and lexical rows; nothing is encoded.
It is held as an in-memory FAISS store (Flat), then copied into a Milvus Lite database with
`indexer.milvus_store.copy_to_milvus` (the code behind `python -m indexer to-milvus`).

Prints, per Milvus index type (FLAT, HNSW):
- insert: the copy's time and products/s (entities with both vectors, the lexical channel and
  the manifest), then the first open (products read back, no vectors);
- predict from stored vectors: per query, the product's own vectors read from the store
  (`stored_queries`) and the Categorizer's prediction with the product itself skipped, p50/p95,
  through Milvus and through FAISS (target: Milvus p50 <= 30 ms);
- agreement: share of queries where both stores predict the same category (target >= 99 %);
- one add: `store.append` of one product (its latency), whether the next query finds it first,
  and that query's latency.
The load average is printed beside every timing: this machine has 2 cores shared with other
jobs, so the latencies are noisy upper bounds. FAISS runs with one thread (--threads), as a
service worker does; Milvus Lite runs inside this process, on the same FAISS library.

Run: .venv/bin/python bench/bench_milvus.py [--products 100000] [--queries 200] [--index-types FLAT,HNSW]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from bench_search_scale import synthetic
from common import ROOT

from indexer.catalog import Product
from indexer.filters import RowFilter
from indexer.knn import Categorizer, stored_queries
from indexer.milvus_store import MilvusIndexStore, MilvusLocation, copy_to_milvus, drop
from indexer.store import IndexStore, append

SEED = 0


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(times: list[float]) -> str:
    ms = 1000 * np.asarray(times)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms"


def predict_all(store: IndexStore, rows: np.ndarray) -> tuple[list[str | None], list[float]]:
    """One query per row, as the service would run it: stored vectors, the row itself skipped."""
    categorizer = Categorizer(store)
    out, times = [], []
    for row in rows:
        t0 = time.perf_counter()
        queries = stored_queries(store, [int(row)])
        prediction = categorizer.predict_vectors(queries, allowed=RowFilter(store, None, skip=[int(row)]))[0]
        times.append(time.perf_counter() - t0)
        out.append(prediction.category)
    return out, times


def one_add(store: IndexStore) -> None:
    """Add one product with fresh random unit vectors (no other product is near them), time the
    add, then the next query with those vectors: its nearest neighbour must be the new product."""
    rng = np.random.default_rng(SEED + 1)
    product = Product(f"bench-add-{time.time_ns()}", "bench add", "", None, None, ("Bench Added", "One"), None)
    vectors = {}
    for name, channel in store.modalities.items():
        v = rng.standard_normal((1, np.shape(channel.vectors)[1])).astype(np.float32)
        vectors[name] = v / np.linalg.norm(v)
    t0 = time.perf_counter()
    out = append(store, [product], vectors)
    added = time.perf_counter() - t0
    t0 = time.perf_counter()
    prediction = Categorizer(out).predict_vectors(vectors)[0]
    query = time.perf_counter() - t0
    first = prediction.neighbors[0].id if prediction.neighbors else None
    print(
        f"  one add: {1000 * added:.1f} ms; next query {1000 * query:.1f} ms, its nearest neighbour is the added "
        f"product: {first == product.id}; the old snapshot sees it is stale: {store.is_stale()} ({load_average()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index-types", default="FLAT,HNSW")
    parser.add_argument("--db", help="Milvus Lite *.db path (default: a temporary folder, removed after)")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads (the service's default is 1)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)  # Milvus Lite searches with this process's FAISS too

    real = IndexStore.load(args.index)
    t0 = time.perf_counter()
    faiss_store = synthetic(real, args.products, dense=True, seed=SEED)
    print(
        f"SYNTHETIC catalogue: {len(faiss_store.products)} products mixed from {len(real.products)} real ones "
        f"({', '.join(f'{m} {c.ntotal}' for m, c in faiss_store.channels().items())}), "
        f"{time.perf_counter() - t0:.1f} s"
    )
    rows = np.random.default_rng(SEED).choice(len(faiss_store.products), args.queries, replace=False)
    want, faiss_times = predict_all(faiss_store, rows)
    print(f"FAISS (Flat, in memory): predict from stored vectors {percentiles(faiss_times)} ({load_average()})")

    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp:
        db = args.db or str(Path(tmp) / "bench.db")
        for index_type in [t.strip().upper() for t in args.index_types.split(",") if t.strip()]:
            loc = MilvusLocation(str(Path(db).resolve()), f"bench_{index_type.lower()}")
            print(f"Milvus Lite {index_type} ({loc.uri}, collection {loc.collection}):")
            t0 = time.perf_counter()
            copy_to_milvus(faiss_store, loc, index_type=index_type, replace=True)
            copy = time.perf_counter() - t0
            n = len(faiss_store.products)
            print(f"  insert {n} products: {copy:.1f} s, {n / copy:.0f} products/s ({load_average()})")
            t0 = time.perf_counter()
            store = MilvusIndexStore.open(loc)
            print(f"  first open (products and flags read back): {time.perf_counter() - t0:.1f} s")
            predict_all(store, rows[:5])  # warm-up: collection load, first searches
            got, times = predict_all(store, rows)
            agree = np.mean([a == b for a, b in zip(want, got, strict=True)])
            print(f"  predict from stored vectors: {percentiles(times)} over {len(rows)} queries ({load_average()})")
            print(f"  same category as FAISS: {agree:.2%} of {len(rows)} queries")
            one_add(store)
            drop(loc)


if __name__ == "__main__":
    main()
