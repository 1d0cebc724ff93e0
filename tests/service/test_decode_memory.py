"""Decoding is bounded by memory: 8 parallel decompression bombs through the service's decode path.

Runs in a fresh interpreter so its RSS is this burst's alone. Before the decode budget, the
8 bombs decoded at once (8 full-size copies, plus the copy exif_transpose makes) and glibc kept
much of it afterwards; bench/bench_decode_memory.py measures the full-size case under gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIDE = 3000  # 9 MP: 36 MB decoded (Pillow keeps RGB in 4 bytes a pixel), ~26 KB as a PNG
PARALLEL = 8

SCRIPT = r"""
import io, json, sys, threading, time
from PIL import Image
from service.app import create_app
from service.inputs import decode_image
from service.errors import ApiError

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))

side, parallel = int(sys.argv[1]), int(sys.argv[2])
buf = io.BytesIO()
Image.new("RGB", (side, side)).save(buf, "PNG")
bomb = buf.getvalue()
app = create_app(load=False)
with app.app_context():
    decode_image(bomb, 224)  # warm: Pillow's codecs and pools, once
start = rss_mb()
peak, done, outcomes = [start], threading.Event(), []

def sample():
    while not done.is_set():
        peak.append(rss_mb())
        time.sleep(0.005)

def one():
    with app.app_context():
        try:
            outcomes.append(decode_image(bomb, 224).size)
        except ApiError as exc:
            outcomes.append((exc.status, exc.extra.get("retry_after")))

sampler = threading.Thread(target=sample)
sampler.start()
threads = [threading.Thread(target=one) for _ in range(parallel)]
for t in threads:
    t.start()
for t in threads:
    t.join()
done.set()
sampler.join()
print(json.dumps({"bomb_bytes": len(bomb), "start": start, "peak": max(peak), "after": rss_mb(),
                  "outcomes": [list(o) for o in outcomes]}))
"""


def test_parallel_bombs_stay_within_the_decode_budget_and_memory_comes_back(tmp_path):
    # two of these at a time; a wait long enough for every one of them to get its turn
    result = run_burst(tmp_path, PARALLEL, budget_pixels=2 * SIDE * SIDE, wait_seconds=30)
    assert result["bomb_bytes"] < 100_000
    one_image_mb = SIDE * SIDE * 4 / 2**20
    # two decodes in flight (plus their small reductions), not eight
    assert result["peak"] - result["start"] < 3 * one_image_mb, result
    assert result["after"] - result["start"] < one_image_mb, result
    assert result["outcomes"] == [[231, 231]] * PARALLEL  # 3000 // 224 = 13; 3000 // 13 = 230.8: reduced at once


def run_burst(tmp_path, parallel: int, budget_pixels: int, wait_seconds: int) -> dict:
    (tmp_path / "metrics").mkdir(exist_ok=True)
    env = dict(
        os.environ,
        INDEX_DIR=str(tmp_path / "no-index"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        DECODE_BUDGET_PIXELS=str(budget_pixels),
        DECODE_WAIT_SECONDS=str(wait_seconds),
    )
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SIDE), str(parallel)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_bomb_that_finds_no_room_gets_503_with_retry_after(tmp_path):
    # one decode at a time and no waiting: of 4 at once, the first decodes, the others are refused
    outcomes = run_burst(tmp_path, parallel=4, budget_pixels=SIDE * SIDE, wait_seconds=0)["outcomes"]
    assert [231, 231] in outcomes and [503, 1] in outcomes, outcomes


def test_503_problems_carry_retry_after():
    from service.app import create_app
    from service.errors import ApiError

    app = create_app(load=False)

    def busy():
        raise ApiError(503, "too many images are being decoded", "Service Unavailable", retry_after=3)

    app.add_url_rule("/busy", view_func=busy)
    response = app.test_client().get("/busy")
    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert response.get_json()["detail"] == "too many images are being decoded"
