"""Build throughput and memory, embedded profile, as a user runs it (the CLI, fresh process).

1. cold build of DATA_DIR into an empty folder (no embedding cache);
2. rebuild of the unchanged data into the same folder (every embedding from the cache).
For each: wall time of the whole command (process start, model load, encoding, CV
calibration, atomic publish), products/s over that wall time, the pipeline's own
figures, and the peak RSS of the process.
Run: .venv/bin/python bench/bench_build.py [TEXT_MODEL ...]   (targets: >= 40 products/s cold, >= 500/s cached)
With text models (EMBEDDED_TEXT_MODEL values, e.g. `minilm minilm+use`), one cold build and one
rebuild each, so their speeds compare on the same machine state; the load average is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, data_dir


def run_build(out: Path, summary: Path, text_model: str | None = None) -> tuple[float, dict]:
    cmd = [
        sys.executable,
        "-m",
        "indexer",
        "build",
        "--data",
        str(data_dir()),
        "--out",
        str(out),
        "--quiet",
        "--json",
        str(summary),
    ]
    env = dict(os.environ, **({"EMBEDDED_TEXT_MODEL": text_model} if text_model else {}))
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    return wall, json.loads(summary.read_text())


def main() -> None:
    for text_model in sys.argv[1:] or [None]:
        if text_model:
            print(f"EMBEDDED_TEXT_MODEL={text_model}")
        build_twice(text_model)


def build_twice(text_model: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index"
        for label in ("cold build (no cache)", "rebuild, unchanged data (cache)"):
            load = os.getloadavg()[0]
            wall, s = run_build(out, Path(tmp) / "summary.json", text_model)
            n = s["products"]
            print(
                f"[load {load:.2f}] {label}: {n} products in {wall:.1f} s wall = {n / wall:.1f} products/s "
                f"(pipeline {s['seconds']:.1f} s = {s['products_per_s']:.1f}/s; encoding {s['encode_seconds']:.1f} s); "
                f"encoded image {s['encoded']['image']}, text {s['encoded']['text']}; "
                f"peak RSS {s['peak_rss_mb']:.0f} MB"
            )


if __name__ == "__main__":
    main()
