"""Slow clients against the service as deployed: gunicorn behind its front (service/front.py).

24 connections trickle one byte a second (8 never finish their head, 8 their Content-Length
body, 8 their chunked body) on 2 workers x 8 threads. Served by gunicorn alone (FRONT=none:
run this file with it to see) they hold every request thread: normal requests wait for the
body deadline, and the unfinished heads and chunked bodies never get a 408. Behind the front,
normal requests answer within 1 s and every slow connection gets 408 by its deadline.
bench/bench_slow_clients.py runs the full-size version (256 clients, 60 s)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from service_support import copy_index, free_port, start_gunicorn, stop_process

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 3
BODY_TIMEOUT = 4
CAP = 8
SLACK = 1.5
KINDS = ("head", "length", "chunked")


@contextlib.contextmanager
def running_service(service_index, folder: Path):
    index_dir = copy_index(service_index, folder / "index")
    port = free_port()
    env = {
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "8",
        "HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "BODY_TIMEOUT": str(BODY_TIMEOUT),
        "MAX_CONNECTIONS_PER_CLIENT": str(CAP),
    }
    proc = start_gunicorn(index_dir, port, env, folder / "gunicorn.log")
    try:
        yield {"port": port, "proc": proc, "log": folder / "gunicorn.log"}
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def server(service_index, tmp_path_factory):
    with running_service(service_index, tmp_path_factory.mktemp("slow-clients")) as running:
        yield running


def request(port, method, path, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def pieces(kind: str) -> tuple[bytes, list[bytes]]:
    """What a slow client of `kind` sends at once, then the pieces it sends one a second."""
    body = json.dumps({"title": "x" * 60}).encode()
    line = b"POST /api/v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    if kind == "head":
        head = line + b"X-Slow: " + b"a" * 40 + b"\r\n\r\n"
        return b"", [head[i : i + 1] for i in range(len(head))]
    if kind == "length":
        return line + f"Content-Length: {len(body)}\r\n\r\n".encode(), [body[i : i + 1] for i in range(len(body))]
    return line + b"Transfer-Encoding: chunked\r\n\r\n", [
        b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body))
    ]


async def slow_connection(port: int, kind: str, source: str, seconds: float) -> tuple[str, bytes, float]:
    """(kind, what the server answered, seconds until it did) for one trickling connection."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    first, rest = pieces(kind)
    answer = b""
    try:
        writer.write(first)
        for piece in rest:
            if time.monotonic() - t0 > seconds:
                break
            writer.write(piece)
            with contextlib.suppress(OSError):
                await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(4096), timeout=1.0)
            except TimeoutError:
                continue
            break
    except OSError:
        pass
    finally:
        elapsed = time.monotonic() - t0
        writer.close()
    return kind, answer, elapsed


def run_slow_clients(port: int, per_kind: int, seconds: float, out: list) -> None:
    async def main():
        tasks = [
            slow_connection(port, KINDS[i % 3], f"127.0.0.{2 + i // (CAP - 2)}", seconds)
            for i in range(per_kind * len(KINDS))
        ]
        out.extend(await asyncio.gather(*tasks))

    asyncio.run(main())


def test_slow_clients_hold_no_thread_and_get_408_by_their_deadline(server):
    port = server["port"]
    ended: list = []
    seconds = BODY_TIMEOUT + 4
    slow = threading.Thread(target=run_slow_clients, args=(port, 8, seconds, ended), daemon=True)
    slow.start()
    time.sleep(1.5)  # the slow connections are open and trickling
    latencies = []
    stop_at = time.monotonic() + BODY_TIMEOUT + 1
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        assert request(port, "GET", "/healthz", timeout=15)[0] == 200
        status, _, body = request(port, "POST", "/api/v1/predict", json.dumps({"title": "analog wrist watch"}).encode())
        assert status == 200 and json.loads(body)["category"] == "Watches"
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.2)
    slow.join(timeout=seconds + 10)
    assert len(latencies) >= 5 and max(latencies) < 1.0, latencies
    assert len(ended) == 24
    deadline = {"head": HEADER_TIMEOUT, "length": BODY_TIMEOUT, "chunked": BODY_TIMEOUT}
    late = [
        (kind, answer[:40], round(elapsed, 1))
        for kind, answer, elapsed in ended
        if not answer.startswith(b"HTTP/1.1 408") or elapsed > deadline[kind] + SLACK
    ]
    assert not late, late
    # body deadlines answer problem+json; an unfinished head gets HAProxy's own 408 page (its
    # HTTP/1 layer answers before any rule runs: docs/slow-clients.md)
    assert all(b"application/problem+json" in answer for kind, answer, _ in ended if kind != "head")


def test_connections_over_the_per_address_cap_get_429(server):
    port = server["port"]
    held = []
    try:
        for _ in range(CAP):
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.40", 0))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # an unfinished head holds the connection
            held.append(s)
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.40", 0)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
        assert b"application/problem+json" in answer and b"retry-after: 1" in answer.lower()
        assert b"MAX_CONNECTIONS_PER_CLIENT" in answer
        assert request(port, "GET", "/healthz")[0] == 200  # other addresses are not affected
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.40", 0)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")  # the cap counts open connections only


def test_a_chunked_upload_is_served_whole(server):
    """The front buffers chunked bodies and gunicorn still reads them (BodyDeadline knows their end)."""
    body = json.dumps({"title": "analog wrist watch"}).encode()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as s:
        s.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"".join(
                f"{len(body[i : i + 7]):x}\r\n".encode() + body[i : i + 7] + b"\r\n" for i in range(0, len(body), 7)
            )
            + b"0\r\n\r\n"
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b'"Watches"' in payload


def front_pid(master: int) -> int:
    (pid,) = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _parent(p) == master and _comm(p) == "haproxy"
    ]
    return pid


def gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status")
        with contextlib.suppress(OSError):
            if "zombie" not in status.read_text():
                time.sleep(0.1)
                continue
        return True
    return False


def test_the_front_stops_when_the_master_is_killed(service_index, tmp_path):
    with running_service(service_index, tmp_path) as running:
        haproxy = front_pid(running["proc"].pid)
        running["proc"].send_signal(signal.SIGKILL)  # no hook runs: PR_SET_PDEATHSIG must end HAProxy
        running["proc"].wait(timeout=10)
        assert gone(haproxy)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", running["port"]), timeout=2).close()


def test_the_service_stops_with_the_reason_when_the_front_dies(service_index, tmp_path):
    with running_service(service_index, tmp_path) as running:
        os.kill(front_pid(running["proc"].pid), signal.SIGKILL)
        assert running["proc"].wait(timeout=60) != 0  # nobody can reach it: it must not look alive
        assert "the front (haproxy) exited" in running["log"].read_text()


def _comm(proc_dir: Path) -> str:
    try:
        return (proc_dir / "comm").read_text().strip()
    except OSError:
        return ""


def _parent(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
