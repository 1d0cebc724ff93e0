"""Slow clients against the service as deployed (gunicorn, service/gunicorn.conf.py, loopback).

For each serving model (sync workers, then gthread workers with threads), N clients open a
POST /api/v1/predict and send its body one byte per second, while one normal client sends
GET /healthz and a text-only predict every half second. Prints the normal requests'
latency (p50 / max) while the trickle lasts, how the trickling clients ended, and the load
average (other jobs on the machine make the figures noisy).

    python bench/bench_slow_clients.py [--index DIR] [--slow 4] [--seconds 12] [--models sync,gthread]

Every loop is bounded in count and time; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import ensure_index, free_port  # noqa: E402

MODELS = {"sync": "sync", "gthread": "service.workers.ProblemThreadWorker"}


def start(index_dir: Path, tmp: Path, worker_class: str, env_extra: dict) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    env = dict(
        os.environ,
        INDEX_DIR=str(index_dir),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / f"metrics-{port}"),
        GUNICORN_WORKER_CLASS=worker_class,
        LOG_LEVEL="warning",
        **env_extra,
    )
    log_path = tmp / f"gunicorn-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
            + ["--access-logfile", "/dev/null", "service.app:create_app()"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("gunicorn exited:\n" + log_path.read_text()[-3000:])
        try:
            if timed("GET", port, "/readyz")[0] == 200:
                return proc, port, log_path
        except OSError:
            pass
        time.sleep(0.25)
    stop(proc)
    raise SystemExit("gunicorn not ready after 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed(method: str, port: int, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, float]:
    """(status, seconds) of one request on a fresh connection."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - t0
    finally:
        conn.close()


def trickle(port: int, seconds: float, out: list, lock: threading.Lock) -> None:
    """Send a predict body one byte per second for `seconds` (bounded), then report how it ended."""
    body = json.dumps({"title": "x" * 200}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    ended = "sent everything"
    try:
        sock.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        stop_at = time.monotonic() + seconds
        for i in range(min(len(body) - 1, int(seconds) + 1)):
            if time.monotonic() >= stop_at:
                ended = "stopped by the client"
                break
            try:
                sock.sendall(body[i : i + 1])
            except OSError:
                ended = "connection closed by the server"
                break
            time.sleep(1.0)
        sock.settimeout(2)
        try:
            head = sock.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
            if head:
                ended += f", got {head!r}"
        except OSError:
            pass
    finally:
        sock.close()
    with lock:
        out.append(ended)


def run(model: str, index_dir: Path, tmp: Path, args) -> dict:
    threads = args.threads if model == "gthread" else 1  # gunicorn turns sync with threads > 1 into gthread
    env_extra = {"WEB_CONCURRENCY": str(args.workers), "GUNICORN_THREADS": str(threads)}
    proc, port, _ = start(index_dir, tmp, MODELS[model], env_extra)
    try:
        for _ in range(4):  # warm-up
            timed("POST", port, "/api/v1/predict", json.dumps({"title": "steel water bottle"}).encode())
        ended: list[str] = []
        lock = threading.Lock()
        clients = [
            threading.Thread(target=trickle, args=(port, args.seconds, ended, lock), daemon=True)
            for _ in range(args.slow)
        ]
        for c in clients:
            c.start()
        time.sleep(1.0)  # the trickling requests hold what they can hold
        health, predict, failures = [], [], 0
        stop_at = time.monotonic() + args.seconds - 2
        while time.monotonic() < stop_at:
            for method, path, body, into in (
                ("GET", "/healthz", None, health),
                ("POST", "/api/v1/predict", json.dumps({"title": "analog wrist watch"}).encode(), predict),
            ):
                try:
                    status, seconds = timed(method, port, path, body, timeout=args.seconds + 30)
                    into.append(seconds)
                    failures += status != 200
                except OSError:
                    failures += 1
            time.sleep(0.5)
        for c in clients:
            c.join(timeout=args.seconds + 30)
        return {"health": health, "predict": predict, "failures": failures, "ended": ended}
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=os.environ.get("INDEX_DIR", "var/index"))
    ap.add_argument("--slow", type=int, default=4, help="clients trickling their body at 1 byte/s")
    ap.add_argument("--seconds", type=float, default=12.0, help="how long the trickle lasts")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", "8")))
    ap.add_argument("--models", default="sync,gthread")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}  cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp_name:
        tmp = Path(tmp_name)
        index_dir = ensure_index(args.index, tmp)
        for model in args.models.split(","):
            r = run(model, index_dir, tmp, args)
            threads = f", {args.threads} threads each" if model == "gthread" else ""
            print(f"{model}: {args.workers} workers{threads}; {args.slow} clients at 1 byte/s for {args.seconds:.0f} s")
            for name, values in (("GET /healthz", r["health"]), ("POST /predict (text)", r["predict"])):
                if values:
                    print(
                        f"  {name:<22} n={len(values):3d}  p50 {statistics.median(values) * 1000:8.1f} ms"
                        f"  max {max(values) * 1000:8.1f} ms"
                    )
                else:
                    print(f"  {name:<22} no answer during the trickle")
            print(f"  normal requests failed: {r['failures']}")
            print(f"  slow clients: {sorted(set(r['ended']))}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
