"""Ray encode throughput (1 and 2 workers) against the in-process build, same data, same cores.

On the first `--limit` products of DATA_DIR (embedded profile, batch 32):
- in-process: `indexer.build.encode_products` (what `build` runs) in a fresh process,
  2 decode threads, torch's default threads; wall = model load + encoding, steady =
  encoding with the models already loaded;
- Ray: `indexer.encode.encode_catalog` on a local Ray instance of 2 CPUs, 1 worker x 2
  CPUs, then 2 workers x 1 CPU; wall = from submitting the shards to the last shard
  written (actor start, model load, encoding, shard writes; Ray's own start excluded and
  printed apart), steady = products / (summed shard encode seconds / workers).
Memory per worker is the actor process's peak RSS. Target: Ray >= 90 % of in-process.
The machine is shared: the load average is printed beside the figures.
Run: .venv/bin/python bench/bench_ray_encode.py [--limit 384] [--shard-rows 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, data_dir

IN_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
from indexer.build import encode_products, peak_rss_mb
from indexer.catalog import load_catalog
from indexer.encoders import create_encoder
products = load_catalog(sys.argv[1]).products[: int(sys.argv[2])]
start = time.perf_counter()
encoder = create_encoder("embedded")
encode_products(products, encoder, cache=None, batch_size=32, workers=2, progress=False)
wall = time.perf_counter() - start
start = time.perf_counter()
encode_products(products, encoder, cache=None, batch_size=32, workers=2, progress=False)
steady = time.perf_counter() - start
print(json.dumps({"wall": wall, "steady": steady, "rss": peak_rss_mb(), "n": len(products)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=384)
    parser.add_argument("--shard-rows", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import ray

    from indexer.encode import encode_catalog, local_ray_init

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; DATA_DIR {data_dir()}")
    proc = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(data_dir()), str(args.limit)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    base = json.loads(proc.stdout.strip().splitlines()[-1])
    n = base["n"]
    rows = [("in-process build (encode_products)", n / base["wall"], n / base["steady"], base["rss"])]

    start = time.perf_counter()
    local_ray_init(num_cpus=2)
    ray_start = time.perf_counter() - start
    try:
        for workers, cpus in ((1, 2), (2, 1)):
            with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
                s = encode_catalog(
                    data_dir(), Path(tmp), limit=args.limit, shard_rows=args.shard_rows, workers=workers,
                    cpus_per_worker=cpus, log=None,
                )  # fmt: skip
                steady = s.encoded_products / (s.shard_seconds / workers)
                rows.append((f"Ray {workers} worker(s) x {cpus} CPU", s.products_per_s, steady, s.worker_peak_rss_mb))
    finally:
        ray.shutdown()
    print(f"{n} products, shards of {args.shard_rows}; local Ray start {ray_start:.1f} s (not in the figures)")
    print("| run | products/s (wall) | products/s (steady) | vs in-process (wall / steady) | peak RSS per worker |")
    print("|---|---|---|---|---|")
    for name, wall, steady, rss in rows:
        print(
            f"| {name} | {wall:.1f} | {steady:.1f} | {wall / rows[0][1]:.0%} / {steady / rows[0][2]:.0%} "
            f"| {rss:,.0f} MB |"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
