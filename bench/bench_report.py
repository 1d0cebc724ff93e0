"""Time the full feasibility report (`python -m evaluation report`) on an existing index.

Target: <= 300 s for the 945-product embedded index on a 2-core machine. Runs the CLI
in a subprocess (so imports count), from a copy of the index in a temporary folder,
then prints the per-step timings recorded in metrics.json. With --warm, runs it a
second time into the same output folder, where the ORB features come from the cache.

    python bench/bench_report.py [--index DIR] [--data DIR] [--out DIR] [--warm]

--index defaults to $INDEX_DIR, else var/index (`make index` builds it); --data to $DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 300.0


def run_once(index: Path, out: Path, data: str | None) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "evaluation", "report", "--index", str(index), "--out", str(out), "--quiet"]
    if data:
        cmd += ["--data", data]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "metrics.json").read_text())


def show(label: str, wall: float, metrics: dict) -> None:
    print(
        f"\n== {label}: {wall:.1f} s wall clock (target <= {TARGET_SECONDS:.0f} s: "
        f"{'met' if wall <= TARGET_SECONDS else 'MISSED'}) =="
    )
    for step, seconds in metrics["timings"].items():
        print(f"  {step:<28} {seconds:8.1f} s")
    c, k, a = metrics["clustering"], metrics["classification"], metrics["auto_decision"]
    print("  ARI (PCA space): " + ", ".join(f"{n} {v['ari']:.3f}" for n, v in c.items()))
    print(
        "  ARI (t-SNE, common practice): "
        + ", ".join(f"{n} {v['tsne_kmeans']['ari']:.3f}" for n, v in c.items() if "tsne_kmeans" in v)
    )
    print(
        "  nested CV accuracy (mean ± sd over fold seeds): "
        + ", ".join(f"{n} {v['accuracy']:.4f} ± {v['accuracy_sd_over_seeds']:.4f}" for n, v in k.items())
    )
    if metrics.get("random_split"):
        print(
            "  random-split (not leak-free) accuracy: "
            + ", ".join(
                f"{n} {v['accuracy']:.4f} ± {v['accuracy_sd_over_seeds']:.4f}"
                for n, v in metrics["random_split"].items()
            )
        )
    for target, point in a["trade_off"].items():
        t = point["thresholds"]
        print(
            f"  nested auto @ {target}: coverage {point['coverage']:.3f} ± {point['coverage_over_seeds']['sd']:.3f}, "
            f"precision {point['precision'] if point['precision'] is None else round(point['precision'], 4)}, "
            f"folds below target {point['folds_below_target']}, without threshold {point['folds_without_threshold']}, "
            f"thresholds {t['min'] if t['min'] is None else round(t['min'], 3)}–"
            f"{t['max'] if t['max'] is None else round(t['max'], 3)}"
        )
    dep = a.get("deployment") or {}
    print(f"  deployment (all data, not an evaluation): threshold {dep.get('threshold')}, weights {dep.get('weights')}")
    sv = metrics.get("run", {}).get("serving", {})
    if sv:
        print(
            f"  serving k-NN: {sv['knn_ms_median']:.2f} ms median, {sv['knn_ms_p95']:.2f} ms p95 per product; "
            f"index {sv['index_bytes_per_product'] / 1024:.1f} KiB per product; "
            f"report peak RSS {sv['peak_rss_mb']:.0f} MB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR") or str(ROOT / "var" / "index"))
    parser.add_argument("--data", default=os.environ.get("DATA_DIR"))
    parser.add_argument("--out", default=None, help="report folder (default: a temporary one, removed)")
    parser.add_argument("--warm", action="store_true", help="run a second time with the BoVW cache")
    args = parser.parse_args()

    source = Path(args.index)
    if not (source / "CURRENT").is_file():
        print(f"no index at {source} (set INDEX_DIR or --index)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        index = Path(tmp) / "index"
        shutil.copytree(source, index, ignore=shutil.ignore_patterns("cache.sqlite", ".lock"))
        out = Path(args.out) if args.out else Path(tmp) / "report"
        if out.exists():
            shutil.rmtree(out / "cache", ignore_errors=True)  # a cold run computes the ORB features
        print(f"index {source} (copied), {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}")
        wall, metrics = run_once(index, out, args.data)
        show("cold run", wall, metrics)
        if args.warm:
            wall, metrics = run_once(index, out, args.data)
            show("warm run (BoVW cache)", wall, metrics)
        print(f"\nreport: {out / 'report.html'}" + ("" if args.out else " (temporary, removed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
