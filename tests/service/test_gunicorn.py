"""The service as deployed: gunicorn with service/gunicorn.conf.py (preload + fork, 2 gthread
workers) on a free loopback port, real HTTP requests; slow clients and over-long request lines."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from service_support import copy_index, free_port, photo_products

from indexer.store import open_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "gunicorn-test-token"
LIMIT = 1_000_000
BODY_TIMEOUT = 4


def request(port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        # header names are case-insensitive (the front sends them in lower case, as HTTP/2 does)
        return response.status, response.headers, data
    finally:
        conn.close()


def post_json(port, path, payload, headers=None):
    status, hdrs, data = request(
        port, "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
    )
    return status, hdrs, json.loads(data) if data else None


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(service_index, real_data_dir, tmp_path_factory):
    index_dir = copy_index(service_index, tmp_path_factory.mktemp("gunicorn") / "index")
    port = free_port()
    log_path = index_dir.parent / "gunicorn.log"
    env = dict(
        os.environ,
        INDEX_DIR=str(index_dir),
        DATA_DIR=str(real_data_dir),
        API_TOKEN=TOKEN,
        WEB_CONCURRENCY="2",
        MAX_UPLOAD_BYTES=str(LIMIT),
        PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(index_dir.parent / "metrics"),
        BODY_TIMEOUT=str(BODY_TIMEOUT),
    )
    env.pop("PYTHONPATH", None)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "service/gunicorn.conf.py",
        "-b",
        f"127.0.0.1:{port}",
        "service.app:create_app()",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not become ready:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield {"port": port, "proc": proc, "log": log_path, "index_dir": index_dir}
        # SIGTERM stops it cleanly: checked here, once every test of the module has used the
        # server (pytest-randomly shuffles the tests, so no test can count on running last)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log_path.read_text()[-3000:]
        assert "Shutting down" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def worker_pids(log_text: str) -> set[str]:
    return set(re.findall(r"Booting worker with pid: (\d+)", log_text))


def test_predict_and_search_over_http(server, service_index):
    port = server["port"]
    store = open_store(service_index)
    ((product, path),) = photo_products(store, 1, category="Baby Care")
    status, _, body = post_json(port, "/api/v1/predict", {"title": "Pampers baby diapers, size M"})
    assert status == 200 and body["category"] == "Baby Care"
    data, ctype = multipart({"title": product.name}, {"image": ("p.jpg", path.read_bytes())})
    status, headers, raw = request(port, "POST", "/api/v1/predict", data, {"Content-Type": ctype})
    body = json.loads(raw)
    assert status == 200 and body["category"] == product.category
    assert body["neighbors"][0]["id"] == product.id
    status, _, body = post_json(port, "/api/v1/search", {"title": "wall clock", "k": 4})
    assert status == 200 and len(body["results"]) == 4
    status, headers, raw = request(port, "GET", f"/api/v1/products/{product.id}/image?size=100")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and raw[:2] == b"\xff\xd8"


def test_bad_input_never_takes_a_worker_down(server):
    port = server["port"]
    pids = worker_pids(server["log"].read_text())
    assert len(pids) == 2
    cases = [
        (multipart({}, {"image": ("x.jpg", b"\x00garbage" * 100)}), 422),
        (multipart({}, {"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)}), 422),
        ((b"--b\r\nnot closed", "multipart/form-data; boundary=b"), 400),
        ((b"title=mug", "text/plain"), 415),
    ]
    for _ in range(3):
        for (data, ctype), expected in cases:
            status, headers, raw = request(port, "POST", "/api/v1/predict", data, {"Content-Type": ctype})
            assert status == expected, raw
            assert headers["Content-Type"] == "application/problem+json"
    status, headers, raw = request(
        port, "POST", "/api/v1/predict", b"x" * (LIMIT + 10), {"Content-Type": "application/json"}
    )
    assert status == 413 and json.loads(raw)["status"] == 413
    assert request(port, "GET", "/readyz")[0] == 200
    log = server["log"].read_text()
    assert worker_pids(log) == pids, "a worker was restarted:\n" + log[-3000:]
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log


def test_an_add_reaches_every_worker_and_metrics_sum_workers(server, service_index):
    port = server["port"]
    store = open_store(service_index)
    ((_, path),) = photo_products(store, 1, category="Watches")
    data, ctype = multipart(
        {"title": "Gunicorn test watch", "category": "Watches >> Wrist Watches"},
        {"image": ("w.jpg", path.read_bytes())},
    )
    status, headers, raw = request(
        port, "POST", "/api/v1/products", data, {"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 201, raw
    pid = json.loads(raw)["id"]
    mark = len(server["log"].read_text())

    # concurrent requests keep both sync workers busy, so both answer some of them; a worker
    # busy reloading (and calibrating) the new version may miss a round, hence several rounds
    answered: set[str] = set()
    sent = 0
    deadline = time.monotonic() + 90
    with ThreadPoolExecutor(8) as pool:
        while len(answered) < 2 and time.monotonic() < deadline:
            results = list(
                pool.map(
                    lambda _: post_json(port, "/api/v1/search", {"title": "Gunicorn test watch", "k": 1}), range(16)
                )
            )
            sent += len(results)
            assert all(status == 200 and body["results"][0]["id"] == pid for status, _, body in results)
            log = server["log"].read_text()[mark:]
            answered = set(re.findall(r'"POST /api/v1/search[^"]*" 200 .*pid=<?(\d+)', log))
    assert len(answered) == 2, f"expected both workers to answer, got {answered}"

    status, _, raw = request(port, "GET", "/metrics")
    text = raw.decode()
    match = re.search(r'http_requests_total\{endpoint="/api/v1/search",method="POST",status="200"\} ([0-9.]+)', text)
    assert match and float(match.group(1)) >= sent


def trickle(port: int, seconds: float, ended: list) -> None:
    """POST a body one byte per second for at most `seconds`; record the status line we get back."""
    body = json.dumps({"title": "x" * 100}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        answer = b""
        for i in range(int(seconds)):
            try:
                sock.sendall(body[i : i + 1])
            except OSError:
                break
            time.sleep(1.0)
        sock.settimeout(3)
        with contextlib.suppress(OSError):
            answer = sock.recv(4096)
    ended.append(answer)


def test_four_slow_clients_do_not_delay_a_normal_request(server):
    """Four clients trickle bodies at 1 byte/s (sync workers: /healthz waited 27 s); normal
    requests still answer within 1 s, and the trickling ones get 408 after BODY_TIMEOUT."""
    port = server["port"]
    ended: list[bytes] = []
    seconds = BODY_TIMEOUT + 3
    clients = [threading.Thread(target=trickle, args=(port, seconds, ended), daemon=True) for _ in range(4)]
    for c in clients:
        c.start()
    time.sleep(1.5)
    latencies = []
    for _ in range(4):
        t0 = time.perf_counter()
        assert request(port, "GET", "/healthz", timeout=10)[0] == 200
        status, _, body = post_json(port, "/api/v1/predict", {"title": "analog wrist watch"})
        assert status == 200 and body["category"] == "Watches"
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.5)
    for c in clients:
        c.join(timeout=seconds + 15)
    assert max(latencies) < 1.0, latencies
    assert len(ended) == 4 and all(a.startswith(b"HTTP/1.1 408") for a in ended), ended
    assert all(b"application/problem+json" in a for a in ended)


@pytest.mark.parametrize("length,by", [(5_000, "app"), (9_000, "gunicorn")])
def test_over_long_urls_are_414_problem_json(server, length, by):
    status, headers, raw = request(server["port"], "GET", "/api/v1/categories?q=" + "a" * length)
    assert status == 414 and headers["Content-Type"] == "application/problem+json", raw[:200]
    assert json.loads(raw)["status"] == 414


def test_fresh_start_on_a_damaged_index_exits_naming_the_file(service_index, tmp_path):
    """No version verifies: gunicorn's master stops during preload with one clear line."""
    from indexer.store.local.index import VERSIONS, read_current

    index_dir = copy_index(service_index, tmp_path / "index")
    damaged = index_dir / VERSIONS / read_current(index_dir) / "text.faiss"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    env = dict(os.environ, INDEX_DIR=str(index_dir), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    env.pop("PYTHONPATH", None)
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
    proc = subprocess.run(
        command + ["service.app:create_app()"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "no index version verifies" in proc.stderr + proc.stdout and "text.faiss" in proc.stderr + proc.stdout


def test_start_says_once_where_to_open_the_service(server):
    port = server["port"]
    log = server["log"].read_text()
    line = f"seller page: http://127.0.0.1:{port}/  API page: http://127.0.0.1:{port}/docs"
    assert log.count(line) == 1, log[-3000:]
    assert request(port, "GET", "/docs")[0] == 200


def start_gunicorn(tmp_path, port: int) -> tuple[subprocess.CompletedProcess, float]:
    """gunicorn with service/gunicorn.conf.py on 127.0.0.1:port and no index (it starts without one)."""
    env = dict(
        os.environ,
        INDEX_DIR=str(tmp_path / "no-index"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        PORT=str(port),
    )
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    proc = subprocess.run(
        command + ["service.app:create_app()"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return proc, time.monotonic() - t0


def test_a_port_in_use_is_one_clear_line_and_exit_status_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc, seconds = start_gunicorn(tmp_path, port)
        check = subprocess.run(
            [sys.executable, "-m", "service.serving", str(port)], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert out.count(f"port {port} on 127.0.0.1 is in use") == 1, out
    suggested = re.search(r"set PORT to a free port, e\.g\. PORT=(\d+) make run", out)
    assert suggested and int(suggested.group(1)) != port, out
    assert "Connection in use" not in out and "Retrying" not in out and "Traceback" not in out, out
    assert seconds < 60  # no retry loop
    # `make run` asks the same before it builds the index
    assert check.returncode == 1 and f"port {port} is in use" in check.stderr, check.stderr
