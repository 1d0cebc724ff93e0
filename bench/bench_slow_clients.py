"""Slow clients against the service as deployed (gunicorn + its front, loopback only).

For each front (haproxy: the default `make run` starts; none: gunicorn's gthread workers alone;
for comparison: nginx buffering in front of gunicorn, waitress, uvicorn + a2wsgi), N slow clients
keep N connections open for the whole run, a third each of three kinds, one byte per second:

  head     the request line and headers, never finishing them (deadline HEADER_TIMEOUT)
  length   a complete head with Content-Length, then the body (deadline BODY_TIMEOUT)
  chunked  a complete head with Transfer-Encoding: chunked, then one 1-byte chunk a second

A slow client that the server closes reconnects at once, so the pressure lasts the whole run.
Meanwhile one normal client (127.0.0.1) sends GET /healthz and a text POST /predict back to
back on fresh connections. Printed: the normal requests' p50 / p99 / max (all run and per
10-s window), how every slow connection ended (status line, seconds after it opened, and
whether that was within its deadline + 1 s), then a per-address cap check (cap + 4 connections
from one address: how many got 429) and the front's peak memory.

Slow clients come from 127.0.0.2, 127.0.0.3, ... (at most --per-address each, under the cap);
all traffic stays on loopback; every loop is bounded by --seconds; servers are stopped at the end.

    python bench/bench_slow_clients.py [--index DIR] [--slow 256] [--seconds 60]
        [--fronts haproxy,none,nginx,waitress,uvicorn] [--alt-path DIR] [--header-timeout 10] [--body-timeout 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_service import ensure_index, free_port  # noqa: E402

KINDS = ("head", "length", "chunked")
SLACK = 1.0  # seconds past a deadline still counted as "by its deadline"
CAP_ADDRESS = "127.0.0.250"


@dataclass
class Ended:
    kind: str
    answer: str  # first line the server sent, or how the connection ended without one
    seconds: float  # from connect to that end
    by_server: bool


# ----------------------------------------------------------------------------- servers


def start_gunicorn(
    index_dir: Path, tmp: Path, port: int, env_extra: dict, root: Path = ROOT
) -> tuple[subprocess.Popen, Path]:
    """gunicorn as the Procfile starts it (from the checkout `root`), on 127.0.0.1:port, once ready."""
    env = dict(
        os.environ,
        INDEX_DIR=str(index_dir.resolve()),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / f"metrics-{port}"),
        LOG_LEVEL="warning",
        **env_extra,
    )
    log_path = tmp / f"gunicorn-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
            + ["--access-logfile", "/dev/null", "service.app:create_app()"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_ready(proc, port, log_path)
    return proc, log_path


def wait_ready(proc: subprocess.Popen, port: int, log_path: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited:\n" + log_path.read_text()[-3000:])
        try:
            if timed("GET", port, "/readyz", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    stop(proc)
    raise SystemExit(f"server not ready after {seconds:.0f} s")


NGINX_CONF = """
daemon off; worker_processes 1; user root root; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  client_header_timeout {header}s; client_body_timeout {body}s; client_max_body_size 20m;
  limit_conn_zone $binary_remote_addr zone=addr:10m;
  server {{
    listen 127.0.0.1:{port};
    limit_conn addr {cap}; limit_conn_status 429;
    location / {{ proxy_pass http://127.0.0.1:{upstream}; proxy_request_buffering on; proxy_http_version 1.1; }}
  }}
}}
"""


def start_nginx(tmp: Path, port: int, upstream: int, args) -> subprocess.Popen:
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light), or leave it out of --fronts")
    folder = tmp / f"nginx-{port}"
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=folder, header=args.header_timeout, body=args.body_timeout, port=port, upstream=upstream, cap=args.cap
        )
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(folder)], stderr=subprocess.DEVNULL)
    wait_ready(proc, port, folder / "nginx.err", seconds=30)
    return proc


ASGI_APP = """
def app():
    from a2wsgi import WSGIMiddleware
    from service.app import create_app
    return WSGIMiddleware(create_app(), workers={threads})
"""


def start_alternative(front: str, index_dir: Path, tmp: Path, port: int, args) -> subprocess.Popen:
    """For comparison only: waitress (whole requests buffered by its I/O thread, one process) or
    uvicorn + a2wsgi (asyncio I/O, the WSGI app on a thread pool), from the packages in --alt-path."""
    env = dict(
        os.environ,
        INDEX_DIR=str(index_dir),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / f"metrics-{port}"),
        PYTHONPATH=os.pathsep.join([str(ROOT), args.alt_path]),
        BODY_TIMEOUT=str(args.body_timeout),
    )
    (tmp / f"metrics-{port}").mkdir()
    threads = args.workers * args.threads
    if front == "waitress":
        command = ["-m", "waitress", f"--listen=127.0.0.1:{port}", f"--threads={threads}"]
        command += ["--connection-limit=2000", f"--channel-timeout={args.body_timeout}", "--call"]
        command += ["service.app:create_app"]
    else:
        (tmp / "bench_asgi_app.py").write_text(ASGI_APP.format(threads=threads))
        command = ["-m", "uvicorn", "--factory", "--app-dir", str(tmp), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--log-level", "warning", "--timeout-keep-alive", "5", "bench_asgi_app:app"]
    log_path = tmp / f"{front}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_ready(proc, port, log_path)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def peak_rss_mb(pid: int, name: str) -> float | None:
    """Peak RSS (VmHWM) of the child of `pid` named `name` (the front), None if there is none."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and (entry / "comm").read_text().strip() == name:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            continue
    return None


# ----------------------------------------------------------------------------- clients


def timed(method: str, port: int, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, float]:
    """(status, seconds) of one request on a fresh connection from 127.0.0.1."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - t0
    finally:
        conn.close()


def slow_request(kind: str) -> tuple[bytes, list[bytes]]:
    """(what is sent at once, the pieces then sent one a second) for a slow client of `kind`."""
    body = json.dumps({"title": "x" * 300}).encode()
    line = b"POST /api/v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    if kind == "head":
        head = line + b"X-Slow: " + b"a" * 600 + b"\r\n\r\n"
        return b"", [head[i : i + 1] for i in range(len(head))]
    if kind == "length":
        return line + f"Content-Length: {len(body)}\r\n\r\n".encode(), [body[i : i + 1] for i in range(len(body))]
    return line + b"Transfer-Encoding: chunked\r\n\r\n", [
        b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body))
    ]


async def one_slow_connection(kind: str, port: int, source: str, stop_at: float) -> Ended:
    """Open one connection and trickle until the server answers or closes, or the run ends."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError as exc:
        return Ended(kind, f"connect failed: {exc.__class__.__name__}", time.monotonic() - t0, True)
    first, pieces = slow_request(kind)
    answer, by_server = "stopped by the client (run over)", False
    try:
        if first:
            writer.write(first)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            wait = min(1.0, stop_at - time.monotonic())
            if wait <= 0:
                break
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=wait)
            except TimeoutError:
                continue
            answer = line.decode(errors="replace").strip() or "closed without an answer"
            by_server = True
            break
        else:
            answer = "sent everything"
    except OSError as exc:
        answer, by_server = f"connection {exc.__class__.__name__}", True
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=2)
    return Ended(kind, answer, time.monotonic() - t0, by_server)


async def slow_client(kind: str, port: int, source: str, stop_at: float, out: list[Ended]) -> None:
    """Keep one slow connection of `kind` open until the run ends (reconnecting when closed)."""
    while time.monotonic() < stop_at - 0.5:
        out.append(await one_slow_connection(kind, port, source, stop_at))


def run_slow_clients(n: int, per_address: int, port: int, seconds: float, out: list[Ended]) -> None:
    async def main() -> None:
        stop_at = time.monotonic() + seconds
        tasks = []
        for i in range(n):
            source = f"127.0.0.{2 + i // per_address}"
            tasks.append(slow_client(KINDS[i % len(KINDS)], port, source, stop_at, out))
            await asyncio.sleep(0.002)  # spread the connects a little
        await asyncio.gather(*tasks)

    asyncio.run(main())


def probe(port: int, seconds: float, t_start: float) -> tuple[list[tuple[float, str, float]], int]:
    """GET /healthz and a text POST /predict back to back until `seconds` pass: (t, name, latency)."""
    samples, failures = [], 0
    body = json.dumps({"title": "analog wrist watch"}).encode()
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        for name, method, path, payload in (
            ("healthz", "GET", "/healthz", None),
            ("predict", "POST", "/api/v1/predict", body),
        ):
            t = time.monotonic() - t_start
            try:
                status, latency = timed(method, port, path, payload, timeout=10)
                failures += status != 200
            except OSError:
                latency = 10.0
                failures += 1
            samples.append((t, name, latency))
        time.sleep(0.1)
    return samples, failures


def cap_check(port: int, cap: int) -> Counter:
    """cap + 4 connections from one address, each holding a half-sent head; then one full request
    on each of 4 more: the statuses those 4 get (429 when the cap holds)."""
    held = []
    statuses: Counter = Counter()
    try:
        for _ in range(cap):
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(CAP_ADDRESS, 0))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")  # never finished
            held.append(s)
        time.sleep(0.3)
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(CAP_ADDRESS, 0)) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                try:
                    line = s.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
                    statuses[line.split(" ")[1] if line.count(" ") else line or "closed"] += 1
                except OSError as exc:
                    statuses[exc.__class__.__name__] += 1
    finally:
        for s in held:
            s.close()
    return statuses


# ----------------------------------------------------------------------------- one front


def run_front(front: str, index_dir: Path, tmp: Path, args) -> dict:
    env = {
        "WEB_CONCURRENCY": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "HEADER_TIMEOUT": str(args.header_timeout),
        "BODY_TIMEOUT": str(args.body_timeout),
        "MAX_CONNECTIONS_PER_CLIENT": str(args.cap),
        "FRONT": "haproxy" if front == "haproxy" else "none",
    }
    port = free_port()
    procs = []
    try:
        if front in ("waitress", "uvicorn"):
            procs.append(start_alternative(front, index_dir, tmp, port, args))
        elif front == "nginx":
            upstream = free_port()
            procs.append(start_gunicorn(index_dir, tmp, upstream, env)[0])
            procs.insert(0, start_nginx(tmp, port, upstream, args))
        else:
            procs.append(start_gunicorn(index_dir, tmp, port, env)[0])
        for _ in range(4):  # warm-up
            timed("POST", port, "/api/v1/predict", json.dumps({"title": "steel water bottle"}).encode())
        ended: list[Ended] = []
        slow = threading.Thread(
            target=run_slow_clients, args=(args.slow, args.per_address, port, args.seconds, ended), daemon=True
        )
        t_start = time.monotonic()
        slow.start()
        time.sleep(2.0)  # the slow clients take what they can
        samples, failures = probe(port, args.seconds - 3.0, t_start)
        slow.join(timeout=args.seconds + 30)
        caps = cap_check(port, args.cap)
        front_pid, front_name = (procs[0].pid, "nginx") if front == "nginx" else (procs[0].pid, "haproxy")
        front_mb = peak_rss_mb(front_pid, front_name) if front in ("haproxy", "nginx") else None
        return {"samples": samples, "failures": failures, "ended": ended, "caps": caps, "front_mb": front_mb}
    finally:
        for proc in procs:
            stop(proc)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(front: str, r: dict, args) -> None:
    print(
        f"\n== front: {front}  ({args.workers} workers x {args.threads} threads; {args.slow} slow clients "
        f"for {args.seconds:.0f} s; HEADER_TIMEOUT {args.header_timeout} s, BODY_TIMEOUT {args.body_timeout} s)"
    )
    for name in ("healthz", "predict"):
        values = [lat for _, n, lat in r["samples"] if n == name]
        if not values:
            print(f"  {name}: no answer")
            continue
        print(
            f"  {name:<8} n={len(values):4d}  p50 {statistics.median(values) * 1000:8.1f} ms  "
            f"p99 {pct(values, 0.99) * 1000:8.1f} ms  max {max(values) * 1000:8.1f} ms"
        )
        windows = []
        for w in range(0, int(args.seconds), 10):
            part = [lat for t, n, lat in r["samples"] if n == name and w <= t < w + 10]
            if part:
                windows.append(f"{w:02d}-{w + 10:02d}s {pct(part, 0.99) * 1000:.0f}")
        print(f"           p99 per 10-s window (ms): {', '.join(windows)}")
    print(f"  normal requests failed (non-200 or no answer in 10 s): {r['failures']}")
    deadline = {"head": args.header_timeout, "length": args.body_timeout, "chunked": args.body_timeout}
    for kind in KINDS:
        mine = [e for e in r["ended"] if e.kind == kind]
        limit = deadline[kind] + SLACK
        due = [e for e in mine if e.by_server or e.seconds > limit]  # the rest were cut by the run's end
        in_time = [e for e in due if e.answer.startswith("HTTP/1.1 408") and e.seconds <= limit]
        answers = Counter(e.answer for e in due)
        longest = max((e.seconds for e in mine), default=float("nan"))
        print(
            f"  slow {kind:<7} {len(mine):4d} connections, {len(due)} reached their deadline ({deadline[kind]} s):"
            f" closed with 408 within {limit:g} s: {len(in_time)}/{len(due)}; longest held {longest:.1f} s;"
            f" {dict(answers.most_common(3))}"
        )
    print(f"  per-address cap ({args.cap} held + 4 more from {CAP_ADDRESS}): {dict(r['caps'])}")
    if r["front_mb"] is not None:
        print(f"  front peak RSS: {r['front_mb']:.1f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=os.environ.get("INDEX_DIR", "var/index"))
    ap.add_argument("--slow", type=int, default=256, help="slow connections held open for the whole run")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the run lasts")
    ap.add_argument("--fronts", default="haproxy,none", help="comma list of haproxy, none, nginx, waitress, uvicorn")
    ap.add_argument("--alt-path", default="", help="folder holding waitress / uvicorn + a2wsgi (pip --target)")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", "8")))
    ap.add_argument("--header-timeout", type=int, default=10)
    ap.add_argument("--body-timeout", type=int, default=30)
    ap.add_argument("--cap", type=int, default=32, help="MAX_CONNECTIONS_PER_CLIENT")
    ap.add_argument("--per-address", type=int, default=16, help="slow clients per source address (< --cap)")
    args = ap.parse_args()
    if not 0 < args.per_address < args.cap or args.slow > args.per_address * 240:
        raise SystemExit("need 0 < --per-address < --cap and --slow <= 240 x --per-address")
    print(f"load average at start: {os.getloadavg()}  cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp_name:
        tmp = Path(tmp_name)
        index_dir = ensure_index(args.index, tmp)
        for front in args.fronts.split(","):
            report(front, run_front(front, index_dir, tmp, args), args)
            print(f"  load average now: {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
