"""Delete and relabel latency at catalogue scale, on SYNTHETIC indexes (bench/synthetic.py).

Issue 19's target: a delete or a relabel costs O(1) in the catalogue size, p50 <= 100 ms at
10k and at 100k products, not growing with N. For each size:

1. SYNTHETIC shards (`write_synthetic_shards`: embedded profile dims, 1280 image + 896 text,
   7 categories) ingested by `python -m indexer ingest --no-calibrate` in a subprocess, the
   default factory ("auto": Flat below 50k products, IVF-PQ from there);
2. predict and similar-search p50 from stored vectors (one thread, as a service worker);
3. --ops single-product deletes, then --ops single-product relabels (half of them to a
   category the index does not have yet), each through `indexer.store.delete` / `relabel` as
   the CLI and the API call them: write lock, live version re-read (its new deltas hashed),
   change delta written and fsync'd, LIST swapped, audit event recorded (SQLite, synchronous
   FULL), store reloaded. p50 / p95 / max, and the p50 of the first and last tenth (how the
   cost grows with the deltas piling up before a compaction);
4. one delete of 100 products in a single call;
5. predict and similar-search again with the deleted rows kept out both ways the store can
   (a bitmap of the live rows, or searching as many rows deeper: `IndexStore.live_filter`
   switches at SKIP_DELETED_ROWS), the two routes alternating query by query so the machine's
   load drifts equally on both, and a check that no deleted product is returned;
6. the compaction that folds the 2 x --ops + 1 change deltas into a new base. The store would
   start it by itself in the background past its thresholds (200 deltas by default); here the
   thresholds are lifted so every change above is timed on the same base, and it runs by hand.

The index is SYNTHETIC and so are its neighbourhoods: the figures are about store cost, not
accuracy. The machine is shared: the load average is printed beside each figure.
Run: .venv/bin/python bench/bench_delete_relabel.py [--sizes 10000,100000] [--ops 100] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from synthetic import ROOT, write_synthetic_shards

from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.store import base, delete, open_store, relabel
from indexer.store.local import index as local
from service.state import set_threads


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(times: list[float]) -> str:
    ms = 1000 * np.asarray(times)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms"


def growth(times: list[float]) -> str:
    tenth = max(1, len(times) // 10)
    first, last = 1000 * np.median(times[:tenth]), 1000 * np.median(times[-tenth:])
    return f"first {tenth} p50 {first:.1f} ms, last {tenth} p50 {last:.1f} ms"


def build(n: int, root: Path) -> Path:
    shards, index = root / f"shards-{n}", root / f"index-{n}"
    t0 = time.perf_counter()
    write_synthetic_shards(shards, n)
    cmd = [sys.executable, "-m", "indexer", "ingest", "--embeddings", str(shards), "--out", str(index)]
    done = subprocess.run(
        cmd + ["--no-calibrate"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )
    if done.returncode != 0:
        sys.exit(f"ingest failed:\n{done.stdout}\n{done.stderr}")
    shutil.rmtree(shards, ignore_errors=True)
    factory = open_store(index).manifest["faiss"]["text"]["factory"]
    print(f"index: {n} SYNTHETIC products ingested in {time.perf_counter() - t0:.1f} s (text factory {factory})")
    return index


def read_latency(store, rows: np.ndarray, skips: tuple[int, ...] = ()) -> tuple[dict, dict, set[str]]:
    """Predict and similar-search times from stored vectors, per SKIP_DELETED_ROWS setting in
    `skips` (alternating query by query; () = as configured), and every id the searches returned."""
    categorizer = Categorizer(store)
    queries = stored_queries(store, rows)
    settings = skips or (base.SKIP_DELETED_ROWS,)
    predict: dict[int, list[float]] = {s: [] for s in settings}
    similar: dict[int, list[float]] = {s: [] for s in settings}
    seen: set[str] = set()
    default = base.SKIP_DELETED_ROWS
    try:
        for i in range(len(rows)):
            q = {c: v[i : i + 1] for c, v in queries.items()}
            for skip in settings:
                base.SKIP_DELETED_ROWS = skip
                t0 = time.perf_counter()
                categorizer.predict_vectors(q, with_neighbors=False)
                predict[skip].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                hits = categorizer.neighbors(q, k=10)[0]
                similar[skip].append(time.perf_counter() - t0)
                seen |= {h.id for h in hits}
    finally:
        base.SKIP_DELETED_ROWS = default
    return predict, similar, seen


def run(n: int, ops: int, root: Path) -> None:
    default_skip = base.SKIP_DELETED_ROWS
    print(f"\n== {n} SYNTHETIC products (load average {load_average()})")
    index = build(n, root)
    store = open_store(index)
    rng = np.random.default_rng(0)
    probe = rng.choice(n, 100, replace=False)
    predict, similar, _ = read_latency(store, probe)
    (only,) = predict
    print(f"before: predict {percentiles(predict[only])}; similar {percentiles(similar[only])}")

    victims = [int(r) for r in rng.choice(np.setdiff1d(np.arange(n), probe), 2 * ops + 100, replace=False)]
    ids = [store.products[r].id for r in victims]
    times = []
    for pid in ids[:ops]:
        t0 = time.perf_counter()
        store = delete(store, [pid], actor="cli")
        times.append(time.perf_counter() - t0)
    print(f"delete, one product a call ({ops}, load average {load_average()}): {percentiles(times)}; {growth(times)}")

    times = []
    for i, pid in enumerate(ids[ops : 2 * ops]):
        path = ("Garden", "Hoses", f"Bench {i % 5}") if i % 2 else ("Watches", "Wrist Watches", "Relabelled")
        t0 = time.perf_counter()
        store = relabel(store, {pid: path}, actor="cli")
        times.append(time.perf_counter() - t0)
    print(f"relabel, one product a call ({ops}, load average {load_average()}): {percentiles(times)}; {growth(times)}")
    assert store.products[victims[ops + 1]].category_path[0] == "Garden" and "Garden" in store.categories()

    t0 = time.perf_counter()
    store = delete(store, ids[2 * ops :], actor="cli")
    print(f"delete of 100 products in one call: {1000 * (time.perf_counter() - t0):.1f} ms")
    print(f"deltas: {len(store.deltas)}, deleted rows {len(store.deleted)}, products {store.product_count()}")

    gone = set(ids[:ops]) | set(ids[2 * ops :])
    setups = []
    for _ in range(5):  # the bitmap route's set-up, paid by the first query after each (re)load
        fresh = open_store(index)
        base.SKIP_DELETED_ROWS = 0
        t0 = time.perf_counter()
        live = fresh.live_filter(None)
        for channel in fresh.channels():  # the positions, mask and FAISS bitmap of every channel
            view = live.channel(channel)
            if view is not None and channel != "lexical":
                view.selector()
            elif view is not None:
                view.mask()
        setups.append(time.perf_counter() - t0)
        base.SKIP_DELETED_ROWS = default_skip
    setup = 1000 * float(np.median(setups))
    bitmap, deeper = 0, 10**9
    predict, similar, seen = read_latency(store, probe, (bitmap, deeper))
    assert not seen & gone, "a deleted product was returned"
    for route, skip in (("a bitmap of the live rows", bitmap), ("searching that many rows deeper", deeper)):
        print(
            f"after, {len(store.deleted)} deleted rows kept out by {route}: predict {percentiles(predict[skip])}; "
            f"similar {percentiles(similar[skip])}"
        )
    print(f"  (the bitmap's set-up, once per loaded store, median of 5: {setup:.1f} ms; load average {load_average()})")

    assert local._COMPACTIONS.get(str(index.resolve())) is None  # thresholds lifted: nothing ran by itself
    t0 = time.perf_counter()
    local.compact(index)
    compacted = open_store(index)
    assert compacted.deltas == () and compacted.product_count() == n - ops - 100
    print(
        f"compaction of {len(store.deltas)} change deltas: {time.perf_counter() - t0:.1f} s -> version "
        f"{compacted.version}, {len(compacted.products)} rows (load average {load_average()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--ops", type=int, default=100, help="deletes, then relabels, one product a call")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    set_threads(1)  # one thread per request, as a service worker runs
    # no background compaction in the middle of the timed changes (see step 6 of the docstring)
    local.DELTA_COMPACT_ROWS = local.DELTA_COMPACT_SEGMENTS = local.DELTA_COMPACT_DELETES = 10**9
    root = Path(args.work or tempfile.mkdtemp(prefix="bench-delete-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            run(n, args.ops, root)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
