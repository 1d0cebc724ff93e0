"""Cost of index integrity checks: what each load and `python -m indexer verify` pay.

Prints, for the live version of --index / $INDEX_DIR: its size, the time of a load with
sizes and counts only, of a load with checksums, of checksums alone (BLAKE2b over every
file, the O(bytes) part) and the resulting hashing rate; medians of --repeat runs after
one warm-up (page cache warm, as for a service reloading a version it just saw written).

    python bench/bench_verify.py [--index DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.store import open_store  # noqa: E402
from indexer.store.local.index import VERSIONS, read_current  # noqa: E402
from indexer.store.local.integrity import verify_files  # noqa: E402


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=os.environ.get("INDEX_DIR", "var/index"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}  cores: {os.cpu_count()}")
    path = Path(args.index)
    store = open_store(path)
    vdir = path / VERSIONS / read_current(path)
    files = store.manifest["files"]
    size = sum(f["size"] for f in files.values())
    print(f"index {path} version {store.version}: {len(store.products)} products, ", end="")
    print(f"{len(files)} files, {size / 1e6:.1f} MB")
    sizes_only = median_seconds(lambda: open_store(path), args.repeat)
    with_sums = median_seconds(lambda: open_store(path, checksums=True), args.repeat)
    sums = median_seconds(lambda: verify_files(vdir, store.manifest, checksums=True), args.repeat)
    print(f"  load, sizes + counts checked:      {sizes_only * 1000:7.1f} ms")
    print(f"  load, sizes + counts + checksums:  {with_sums * 1000:7.1f} ms")
    print(f"  checksums alone (BLAKE2b, O(bytes)): {sums * 1000:7.1f} ms = {size / sums / 1e6:.0f} MB/s")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
