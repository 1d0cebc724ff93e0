"""Ingest time and peak memory on SYNTHETIC shards (bench/synthetic.py), embedded profile dims.

For each size (default 10k and 100k products):
1. write SYNTHETIC shards (not timed as ingest);
2. read-only pass in a fresh process: stream every row through ingest's checks and drop
   it; peak RSS shows the reading side is bounded by the batch, not by N;
3. `python -m indexer ingest --no-calibrate` in a fresh process: wall time, rows/s and peak
   RSS of the whole command (reading + lexical fit + FAISS Flat + publish). Calibration is
   skipped: it is O(N^2) today (issue 10 item 6).
Figures depend on the machine's load, printed beside them.
Run: .venv/bin/python bench/bench_ingest.py [--sizes 10000 100000] [--batch-rows 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import ROOT, write_synthetic_shards

READ_ONLY = """
import resource, sys, time
from indexer.catalog.products import ValidationReport
from indexer.pipeline.ingest import read_batches
from indexer.catalog.shards import read_spec, shard_files
folder, batch_rows = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
batches = read_batches(shard_files(folder), read_spec(folder), ValidationReport(), batch_rows)
rows = sum(len(b.products) for b in batches)
seconds = time.perf_counter() - start
print(rows, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def child_run(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB of the child, stdout); one child at a time, so
    RUSAGE_CHILDREN's maximum is this child's once it exceeds the earlier ones."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-rows", type=int, default=2048)
    args = parser.parse_args()
    print("SYNTHETIC data (bench/synthetic.py): vectors are noise around category centres, not encoder output")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| products | shards on disk | read-only pass | its peak RSS | ingest (no calibration) | rows/s | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    measured = []
    for n in sorted(args.sizes):  # ascending: RUSAGE_CHILDREN keeps the largest child's peak
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            shards = Path(tmp) / "shards"
            write_synthetic_shards(shards, n)
            disk = sum(p.stat().st_size for p in shards.iterdir()) / 1e6
            _, read_rss, out = child_run([sys.executable, "-c", READ_ONLY, str(shards), str(args.batch_rows)])
            rows, read_seconds, read_rss_self = out.split()
            summary = Path(tmp) / "summary.json"
            cmd = [sys.executable, "-m", "indexer", "ingest", "--embeddings", str(shards), "--out", f"{tmp}/index"]
            wall, ingest_rss, _ = child_run(
                [*cmd, "--no-calibrate", "--batch-rows", str(args.batch_rows), "--json", str(summary)]
            )
            result = json.loads(summary.read_text())
            assert result["products"] == n == int(rows), (result["products"], n, rows)
            measured.append((n, wall, ingest_rss, disk))
            print(
                f"| {n:,} | {disk:,.0f} MB | {float(read_seconds):.1f} s | {float(read_rss_self):,.0f} MB "
                f"| {wall:.1f} s | {n / wall:,.0f} | {ingest_rss:,.0f} MB |"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}; batch_rows {args.batch_rows}")
    if len(measured) >= 2:
        (n0, w0, r0, _), (n1, w1, r1, d1) = measured[0], measured[-1]
        kb = (r1 - r0) * 1024 / (n1 - n0)
        print(f"ARITHMETIC from these runs: writing side {kb:.1f} KB RSS per product (slope {n0:,} -> {n1:,}), ")
        print(f"  {d1 * 1e3 / n1:.2f} KB of shards per product, {(w1 - w0) / (n1 - n0) * 1e6:.0f} s per million rows;")
        for big in (1_000_000, 10_000_000):
            print(
                f"  {big:,} products: ~{(r0 + kb * (big - n0) / 1024) / 1024:,.0f} GB peak RSS with today's store, "
                f"~{(w0 + (w1 - w0) / (n1 - n0) * (big - n0)) / 60:,.0f} min, {d1 * big / n1 / 1e3:,.0f} GB of shards"
            )
        print(f"  largest catalogue whose ingest fits 24 GB today: ~{(24 * 1024 - r0) * 1024 / kb + n0:,.0f} products")


if __name__ == "__main__":
    main()
