"""Ray encode throughput (1 and 2 workers) against the in-process build, same data, same cores.

On the first `--limit` products of DATA_DIR (embedded profile, batch 32):
- in-process: `indexer.pipeline.build.encode_products` (what `build` runs) in a fresh process,
  2 decode threads, torch's default threads (2 here); wall = model load + encoding,
  steady = encoding alone;
- Ray: `indexer.pipeline.encode.encode_catalog` on a local Ray instance of 2 CPUs, 1 worker x 2
  CPUs, then 2 workers x 1 CPU; wall = from submitting the shards to the last shard
  written (actor start, model load, encoding, shard writes; Ray's own start excluded and
  printed apart), steady = products / (summed shard encode seconds / workers).
Runs are interleaved over `--rounds` and the best of each is shown: on a shared machine
the load of other processes moves any single run by several times. Memory per worker is
the actor process's peak RSS. Target: Ray >= 90 % of in-process.
The machine is shared: the load average is printed beside the figures.
Run: .venv/bin/python bench/bench_ray_encode.py [--limit 384] [--shard-rows 64] [--rounds 2]
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
from indexer.pipeline.build import encode_products, peak_rss_mb
from indexer.catalog.products import load_catalog
from indexer.encoders import create_encoder
products = load_catalog(sys.argv[1]).products[: int(sys.argv[2])]
start = time.perf_counter()
encoder = create_encoder("embedded").load()
loaded = time.perf_counter()
encode_products(products, encoder, cache=None, batch_size=32, workers=2, progress=False)
end = time.perf_counter()
print(json.dumps({"wall": end - start, "steady": end - loaded, "rss": peak_rss_mb(), "n": len(products)}))
"""


def in_process(limit: int) -> tuple[float, float, float]:
    """(products/s wall, products/s steady, peak RSS MB) of encode_products in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(data_dir()), str(limit)], cwd=ROOT, check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return r["n"] / r["wall"], r["n"] / r["steady"], r["rss"]


def on_ray(limit: int, shard_rows: int, workers: int, cpus: int) -> tuple[float, float, float]:
    from indexer.pipeline.encode import encode_catalog

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        s = encode_catalog(
            data_dir(), Path(tmp), limit=limit, shard_rows=shard_rows, workers=workers, cpus_per_worker=cpus, log=None
        )
    return s.products_per_s, s.encoded_products / (s.shard_seconds / workers), s.worker_peak_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=384)
    parser.add_argument("--shard-rows", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each run is shown")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import ray

    from indexer.pipeline.encode import local_ray_init

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; DATA_DIR {data_dir()}")
    start = time.perf_counter()
    local_ray_init(num_cpus=2)
    ray_start = time.perf_counter() - start
    runs = {
        "in-process build (encode_products)": lambda: in_process(args.limit),
        "Ray 1 worker x 2 CPU": lambda: on_ray(args.limit, args.shard_rows, 1, 2),
        "Ray 2 workers x 1 CPU": lambda: on_ray(args.limit, args.shard_rows, 2, 1),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    loads = []
    try:
        for _ in range(args.rounds):  # interleaved, so a burst of load elsewhere hits every run alike
            for name, run in runs.items():
                results[name].append(run())
                loads.append(os.getloadavg()[0])
    finally:
        ray.shutdown()
    best = {name: (max(r[0] for r in rs), max(r[1] for r in rs), max(r[2] for r in rs)) for name, rs in results.items()}
    rows = [(name, *best[name]) for name in runs]
    print(
        f"{args.limit} products, shards of {args.shard_rows}, best of {args.rounds} interleaved rounds; "
        f"local Ray start {ray_start:.1f} s (not in the figures); load average during runs "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    print("| run | products/s (wall) | products/s (steady) | vs in-process (wall / steady) | peak RSS per worker |")
    print("|---|---|---|---|---|")
    for name, wall, steady, rss in rows:
        print(
            f"| {name} | {wall:.1f} | {steady:.1f} | {wall / rows[0][1]:.0%} / {steady / rows[0][2]:.0%} "
            f"| {rss:,.0f} MB |"
        )
    print("every round (wall, steady products/s): " + "; ".join(
        f"{name}: " + ", ".join(f"{w:.1f}/{st:.1f}" for w, st, _ in rs) for name, rs in results.items()
    ))  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    per_worker = rows[1][2]  # steady products/s of one 2-CPU worker
    hours = 10_000_000 / per_worker / 3600
    print(f"ARITHMETIC for 10,000,000 products at {per_worker:.1f} products/s per 2-CPU worker (steady, above):")
    for workers in (1, 10, 50, 100):
        ram = workers * rows[1][3] / 1024
        print(f"  {workers} workers ({2 * workers} CPUs): {hours / workers:,.1f} h, {ram:,.1f} GB RAM in all")
    for target in (24, 8):
        print(f"  done in {target} h: {int(-(-hours // target))} workers")


if __name__ == "__main__":
    main()
