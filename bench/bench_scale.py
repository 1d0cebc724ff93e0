"""The segmented store at catalogue scale, on a SYNTHETIC catalogue.

Synthetic products come from the real index (INDEX_DIR, default var/index) exactly as in
bench/bench_search_scale.py: each mixes two real products of the same category (dense 0.6/0.4
plus jitter, lexical rows mixed), so the data is more clustered than a real catalogue. Nothing
is encoded. `python -m indexer ingest` is not on main yet, so the catalogue is written with
`indexer.store.publish` (what build, ingest and compaction call).

Prints, per size:
- publish time (Flat, float16 vectors, checksums) and disk size of the version;
- load time (IndexStore.load + Categorizer, imports excluded), RSS and PSS
  (/proc/<pid>/smaps_rollup) of one worker process after 20 predictions, and of two workers
  on the same index, with each worker's figures after its imports alone for reference;
- predict and similar-search p50/p95 from stored vectors (image + text + lexical, k=10), and
  the same predictions on a float32 in-memory copy (format 1's way) with their agreement;
- single add p50/p99 (one product, image + text + lexical, through indexer.store.append:
  delta written, fsync'd, checksummed, committed, store reloaded), over --adds adds;
- reload after an add in a process that has the base loaded (what a service worker does);
- row_of by id and the category counts of base + deltas (format 3, products read by key);
- compaction time of those deltas into a new base.

Run: .venv/bin/python bench/bench_scale.py [--sizes 10000,100000] [--adds 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
from bench_search_scale import synthetic
from common import ROOT

from indexer.catalog import Product
from indexer.knn import Categorizer, stored_queries
from indexer.segments import as_float32
from indexer.store import IndexStore, ModalityIndex, append, compact, publish, write_lock

WORKER = r"""
import sys, time
import numpy as np
from indexer.store import IndexStore
from indexer.knn import Categorizer
print("imported", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
store = IndexStore.load(sys.argv[1])
cat = Categorizer(store)
loaded = time.perf_counter() - t0
rng = np.random.default_rng(int(sys.argv[2]))
for row in rng.integers(0, len(store.products), 20):
    cat.predict_rows(np.array([row]), modalities=("image", "text"))
print(f"{loaded:.3f}", flush=True)
sys.stdin.readline()
"""


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of a process, from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1]) / 1024
    return fields["Rss"], fields["Pss"]


def workers(index: Path, count: int) -> list[tuple[float, float, float, float, float]]:
    """Start `count` worker processes on the index, one after the other; per worker (load s, RSS and
    PSS MB after the imports, RSS and PSS MB once every worker has loaded and made 20 predictions)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    procs, out = [], []
    try:
        for i in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(index), str(i)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            procs.append(proc)
            assert proc.stdout.readline().strip() == "imported"
            out.append(list(memory(proc.pid)))
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out[-1].insert(0, float(proc.stdout.readline()))
        return [(load, rss0, pss0, *memory(p.pid)) for (load, rss0, pss0), p in zip(out, procs, strict=True)]
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait(timeout=60)


def percentiles(times: list[float]) -> str:
    ms = 1000 * np.asarray(times)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms"


def disk_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def run(real: IndexStore, n: int, adds: int, root: Path) -> None:
    print(f"\n== {n} SYNTHETIC products (load average {load_average()})")
    mem = synthetic(real, n, dense=True)
    index = root / f"scale-{n}"
    manifest = dict(real.manifest)
    manifest.pop("files", None)
    manifest["categorizer"] = real.manifest.get("categorizer")
    vectors = {m: (np.asarray(c.vectors), c.rows) for m, c in mem.modalities.items()}
    t0 = time.perf_counter()
    with write_lock(index):
        version = publish(index, mem.products, vectors, manifest, "Flat", lexical=mem.lexical)
    print(f"publish: {time.perf_counter() - t0:.1f} s; disk {disk_mb(index / 'versions' / version):.0f} MB")
    del mem, vectors
    for count in (1, 2):
        figures = workers(index, count)
        print(
            f"{count} worker(s): "
            + "; ".join(
                f"load {load:.2f} s, RSS {rss:.0f} MB, PSS {pss:.0f} MB (imports alone: RSS {rss0:.0f}, PSS {pss0:.0f})"
                for load, rss0, pss0, rss, pss in figures
            )
            + f"; PSS total {sum(f[4] for f in figures):.0f} MB (load average {load_average()})"
        )
    store = IndexStore.load(index)
    cat = Categorizer(store)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, n, 200)
    queries = stored_queries(store, rows)
    times, similar = [], []
    for i in range(len(rows)):
        q = {c: v[i : i + 1] for c, v in queries.items()}
        t0 = time.perf_counter()
        cat.predict_vectors(q, with_neighbors=False)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cat.neighbors(q, k=10)
        similar.append(time.perf_counter() - t0)
    print(f"predict from stored vectors ({len(rows)}): {percentiles(times)}")
    print(f"similar search from stored vectors ({len(rows)}): {percentiles(similar)}")
    # the same predictions on a float32 in-memory copy (the format-1 way), same queries, same run
    vdir = index / "versions" / store.version
    copy = replace(
        store,
        modalities={
            m: ModalityIndex(as_float32(c.vectors), np.asarray(c.rows), faiss.read_index(str(vdir / f"{m}.faiss")))
            for m, c in store.modalities.items()
        },
    )
    cat32, times32, same = Categorizer(copy), [], 0
    for i in range(len(rows)):
        q = {c: v[i : i + 1] for c, v in queries.items()}
        t0 = time.perf_counter()
        got = cat32.predict_vectors(q, with_neighbors=False)
        times32.append(time.perf_counter() - t0)
        same += got[0].category == cat.predict_vectors(q, with_neighbors=False)[0].category
    print(f"predict, float32 in memory, same queries: {percentiles(times32)}; same category {same}/{len(rows)}")
    dims = {m: c.vectors.shape[1] for m, c in store.modalities.items()}
    template = store.products[0]
    add_times = []
    for i in range(adds):
        product = Product(f"add{i:06d}", "steel water bottle", "a bottle", None, None, template.category_path, None)
        vecs = {m: rng.standard_normal((1, d)).astype(np.float32) for m, d in dims.items()}
        t0 = time.perf_counter()
        store = append(store, [product], vecs)
        add_times.append(time.perf_counter() - t0)
    print(f"single add ({adds}, deltas 1..{adds}): {percentiles(add_times)} (load average {load_average()})")
    t0 = time.perf_counter()
    reloaded = IndexStore.load(index)
    print(f"reload with {len(reloaded.deltas)} deltas, base cached in this process: {time.perf_counter() - t0:.3f} s")
    if hasattr(reloaded, "category_codes"):  # format 3: products read by key (absent before)
        ids = [f"syn{r:07d}" for r in rng.integers(0, n, 200)] + [f"add{i:06d}" for i in range(min(adds, 50))]
        lookups = []
        for pid in ids:
            t0 = time.perf_counter()
            assert reloaded.row_of(pid) is not None
            lookups.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        counts = reloaded.category_index().counts()
        took = time.perf_counter() - t0
        us = 1e6 * np.asarray(lookups)
        print(
            f"row_of by id ({len(ids)}, the first builds the deltas' dict): p50 {np.percentile(us, 50):.0f} us, "
            f"p99 {np.percentile(us, 99):.0f} us, max {us.max():.0f} us"
        )
        deltas = len(reloaded.deltas)
        print(f"category counts of base + {deltas} deltas: {1000 * took:.2f} ms ({len(counts)} top-level)")
    t0 = time.perf_counter()
    compacted = compact(index)
    print(f"compaction of {adds} deltas: {time.perf_counter() - t0:.1f} s -> version {compacted.version}")
    kept = len(list((index / "versions").iterdir()))
    print(f"disk after compaction: {disk_mb(index):.0f} MB (versions kept: {kept})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--adds", type=int, default=100)
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    real = IndexStore.load(args.index)
    print(f"real index {args.index}: {len(real.products)} products; SYNTHETIC catalogues follow")
    root = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            run(real, n, args.adds, root)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
