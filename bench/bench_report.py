"""Time the feasibility report (`python -m evaluation report`) on an existing index, full and --quick.

Target: the full report in <= 300 s for the 945-product embedded index on a quiet 2-core
machine. Runs the CLI in a subprocess (so imports count) from a copy of the index in a
temporary folder, and prints for each run: wall-clock time, the subprocess's peak RSS
(wait4), the 1-minute load average at start, at end and its highest value sampled during
the run (a busy machine stretches every time: compare times only at a similar load), then
the per-step timings and the headline table from metrics.json. The report's own "step k/N"
progress lines stream on stderr while it runs. With --warm, the full report runs a second
time into the same output folder, where the ORB features come from the cache.

    python bench/bench_report.py [--index DIR] [--data DIR] [--out DIR] [--only full|quick] [--warm]

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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation import headline  # noqa: E402

TARGET_SECONDS = 300.0
LOAD_SAMPLE_SECONDS = 5.0


@dataclass
class Run:
    wall: float
    peak_rss_mb: float
    cpu_seconds: float  # user + sys of the report process: less sensitive to other jobs than wall time
    load_start: float
    load_end: float
    load_max: float
    metrics: dict


def run_once(index: Path, out: Path, data: str | None, quick: bool) -> Run:
    cmd = [sys.executable, "-m", "evaluation", "report", "--index", str(index), "--out", str(out)]
    if data:
        cmd += ["--data", data]
    if quick:
        cmd.append("--quick")
    loads = [os.getloadavg()[0]]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(LOAD_SAMPLE_SECONDS):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)  # progress (stderr) passes through
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    loads.append(os.getloadavg()[0])
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"report failed (exit {code}): {' '.join(cmd)}")
    return Run(
        wall=wall,
        peak_rss_mb=usage.ru_maxrss / 1024.0,  # KiB on Linux
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        load_start=loads[0],
        load_end=loads[-1],
        load_max=max(loads),
        metrics=json.loads((out / "metrics.json").read_text()),
    )


def show(label: str, run: Run) -> None:
    metrics = run.metrics
    verdict = "met" if run.wall <= TARGET_SECONDS else "MISSED"
    print(
        f"\n== {label}: {run.wall:.1f} s wall clock (target <= {TARGET_SECONDS:.0f} s for the full report: "
        f"{verdict}), load average {run.load_start:.1f} at start / {run.load_max:.1f} highest / "
        f"{run.load_end:.1f} at end on {os.cpu_count()} CPU(s); CPU time {run.cpu_seconds:.1f} s; "
        f"peak RSS {run.peak_rss_mb:.0f} MB =="
    )
    for step, seconds in metrics["timings"].items():
        print(f"  {step:<32} {seconds:8.1f} s")
    print("  headline figures:")
    for row in headline.from_json(metrics["headline"]):
        note = f"  ({row.note})" if row.note else ""
        print(f"    {row.figure:<52} {row.value_text():>8}  target {row.target_text:<7} {row.status}{note}")
    for sentence in metrics["conclusion"]:  # the verdict, then the deployed rule's decisions in words
        print(f"  {sentence}")
    c, k, a = metrics["clustering"], metrics["classification"], metrics["former_rule"]
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
                f"{n} {v['accuracy']:.4f} (fold seed {', '.join(map(str, v['seeds']))})"
                for n, v in metrics["random_split"].items()
            )
        )
    for target, point in a["trade_off"].items():
        t = point["thresholds"]  # the former rule's cuts on the raw vote share, one per fold
        print(
            f"  former rule (raw share, empirical cut), nested auto @ {target}: coverage {point['coverage']:.3f} "
            f"± {point['coverage_over_seeds']['sd']:.3f}, "
            f"precision {point['precision'] if point['precision'] is None else round(point['precision'], 4)}, "
            f"folds below target {point['folds_below_target']}, without threshold {point['folds_without_threshold']}, "
            f"thresholds {t['min'] if t['min'] is None else round(t['min'], 3)}–"
            f"{t['max'] if t['max'] is None else round(t['max'], 3)}"
        )
    for kind, t in metrics["thresholds"]["kinds"].items():
        ev, dep = t["evaluation"], t["deployment"] or {}
        print(
            f"  threshold {kind}: evaluation (nested) {_r(ev['mean'])} in {ev['folds_with_threshold']} of "
            f"{ev['folds']} folds; deployment (served) {_r(dep.get('threshold'))}"
        )
    sv = metrics.get("run", {}).get("serving", {})
    if sv:
        print(
            f"  serving k-NN: {sv['knn_ms_median']:.2f} ms median, {sv['knn_ms_p95']:.2f} ms p95 per product; "
            f"index {sv['index_bytes_per_product'] / 1024:.1f} KiB per product; "
            f"report peak RSS {sv['peak_rss_mb']:.0f} MB"
        )


def _r(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR") or str(ROOT / "var" / "index"))
    parser.add_argument("--data", default=os.environ.get("DATA_DIR"))
    parser.add_argument("--out", default=None, help="report folder of the full run (default: a temporary one, removed)")
    parser.add_argument("--only", choices=("full", "quick"), help="run only the full report or only --quick")
    parser.add_argument("--warm", action="store_true", help="run the full report a second time with the BoVW cache")
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
        print(f"index {source} (copied), {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}", flush=True)
        runs: list[tuple[str, Run]] = []
        if args.only != "full":
            runs.append(
                ("quick run (--quick: not the reported figures)", run_once(index, Path(tmp) / "quick", args.data, True))
            )
        if args.only != "quick":
            runs.append(("full run, cold", run_once(index, out, args.data, False)))
            if args.warm:
                runs.append(("full run, warm (BoVW cache)", run_once(index, out, args.data, False)))
        for label, run in runs:
            show(label, run)
        print("\nsummary:")
        for label, run in runs:
            print(
                f"  {label:<48} {run.wall:7.1f} s wall, {run.cpu_seconds:7.1f} s CPU, "
                f"peak RSS {run.peak_rss_mb:6.0f} MB, "
                f"load average {run.load_start:.1f}–{run.load_max:.1f} (start–highest)"
            )
        if args.only != "quick":
            print(f"\nreport: {out / 'report.html'}" + ("" if args.out else " (temporary, removed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
