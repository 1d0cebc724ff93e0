"""Worker memory under decompression bombs: the service as deployed (gunicorn, loopback only).

A zero-filled 6300 x 6300 RGB PNG is about 115 KB on the wire and 40 MP (just under the
pixel limit) once decoded. This sends --parallel of them at once to POST /api/v1/predict,
--bursts times, and prints each worker's RSS over time (every second from the burst until
--after seconds later), its peak, the statuses the bombs got, and when each worker was back
within 200 MB of its RSS before the burst.

    python bench/bench_decode_memory.py [--index DIR] [--parallel 8] [--bursts 2] [--after 15]
        [--root DIR]   # the checkout whose service/ runs (e.g. a checkout of main, to compare)

Every loop is bounded; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import ensure_index, free_port  # noqa: E402
from bench_slow_clients import start_gunicorn, stop  # noqa: E402

BACK_WITHIN_MB = 200


def bomb_png(side: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, "PNG", optimize=True)
    return out.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid and "haproxy" not in stat:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(out)


def post(port: int, payload: bytes, out: list, lock: threading.Lock) -> None:
    import http.client

    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/v1/predict", body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        result = (response.status, response.getheader("Retry-After"), time.perf_counter() - t0)
    except OSError as exc:
        result = (exc.__class__.__name__, None, time.perf_counter() - t0)
    finally:
        conn.close()
    with lock:
        out.append(result)


def burst(port: int, workers: list[int], start: dict[int, float], payload: bytes, parallel: int, after: float) -> None:
    """One burst of `parallel` bombs; RSS compared with each worker's RSS at the service's start."""
    before = {pid: rss_mb(pid) for pid in workers}
    results: list = []
    lock = threading.Lock()
    threads = [threading.Thread(target=post, args=(port, payload, results, lock), daemon=True) for _ in range(parallel)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    samples: list[tuple[float, dict[int, float]]] = []
    done_at = None
    while time.monotonic() - t0 < 300:
        samples.append((time.monotonic() - t0, {pid: rss_mb(pid) for pid in workers}))
        if done_at is None and not any(t.is_alive() for t in threads):
            done_at = time.monotonic() - t0
        if done_at is not None and time.monotonic() - t0 > done_at + after:
            break
        time.sleep(0.1)
    statuses = Counter(f"{s}" + (f" (Retry-After {r})" if r else "") for s, r, _ in results)
    print(
        f"  {parallel} bombs: {dict(statuses)}; slowest answer {max(x[2] for x in results):.1f} s; "
        f"all answered at {done_at:.1f} s"
    )
    for pid in workers:
        peak = max(s[1][pid] for s in samples)
        back = next((t for t, rss in samples if t >= done_at and rss[pid] <= start[pid] + BACK_WITHIN_MB), None)
        back_text = f"{back - done_at:.1f} s after the last answer" if back is not None else "NOT within the window"
        print(
            f"  worker {pid}: at start {start[pid]:.0f} MB, before the burst {before[pid]:.0f} MB, peak {peak:.0f} MB,"
            f" {after:g} s after {samples[-1][1][pid]:.0f} MB; back within {BACK_WITHIN_MB} MB of start: {back_text}"
        )
    line, next_t = [], 0.0
    for t, rss in samples:
        if t >= next_t:
            line.append(f"{t:4.1f}s " + "/".join(f"{rss[pid]:.0f}" for pid in workers))
            next_t = t + 1.0
    print("  RSS MB per worker over time: " + ", ".join(line))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=os.environ.get("INDEX_DIR", "var/index"))
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--bursts", type=int, default=2)
    ap.add_argument("--after", type=float, default=15.0, help="seconds of RSS samples after a burst")
    ap.add_argument("--side", type=int, default=6300, help="the bomb's width and height")
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose service runs")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}  cores: {os.cpu_count()}")
    bomb = bomb_png(args.side)
    payload = json.dumps({"image_base64": base64.b64encode(bomb).decode()}).encode()
    print(f"bomb: {args.side}x{args.side} zero-filled RGB PNG, {len(bomb)} bytes ({args.side**2 / 1e6:.1f} MP)")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp_name:
        tmp = Path(tmp_name)
        index_dir = ensure_index(args.index, tmp)
        port = free_port()
        env = {"FRONT": "none", "MAX_UPLOAD_BYTES": str(4 * len(payload))}
        proc, _ = start_gunicorn(index_dir, tmp, port, env, root=Path(args.root))
        try:
            time.sleep(3)  # let the workers settle after warm-up
            workers = children(proc.pid)
            start = {pid: rss_mb(pid) for pid in workers}
            print(f"service from {args.root}; workers {workers}")
            for i in range(args.bursts):
                print(f"burst {i + 1}:")
                burst(port, workers, start, payload, args.parallel, args.after)
        finally:
            stop(proc)
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
