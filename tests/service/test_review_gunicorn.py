"""Listings and review decisions on the service as deployed (gunicorn, preload + 2 gthread workers,
real HTTP): a reviewed listing is used by the very next vote of either worker, and workers
killed with SIGKILL in the middle of decisions lose nothing acknowledged and apply nothing twice."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_support import copy_index, edit_manifest, free_port

from indexer.store import AuditLog, ReviewQueue, open_store

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITER, REVIEWER = "gunicorn-writer", "gunicorn-reviewer"
SYLLABLES = ("zor", "blax", "qui", "nfe", "ep", "vad", "rul", "ox", "tem", "pli", "gru", "mek", "sna", "fiv")


def nonsense(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join("".join(rng.choice(SYLLABLES, 3)) for _ in range(3)).capitalize()


def noise_jpeg(seed: int, quality: int = 90, size: int = 96) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(out, "JPEG", quality=quality)
    return out.getvalue()


def request(port, method, path, body=None, headers=None, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def call(port, method, path, payload=None, token=None):
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, raw = request(port, method, path, json.dumps(payload).encode() if payload is not None else None, headers)
    return status, json.loads(raw) if raw else None


def post_form(port, path, fields: dict, photo: bytes | None, token: str | None = None):
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    if photo is not None:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n\r\n'
        parts.append(head.encode() + photo + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, raw = request(port, "POST", path, b"".join(parts), headers)
    return status, json.loads(raw)


def worker_pids(log_text: str) -> list[int]:
    return [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", log_text)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed worker stays a zombie until the master reaps it: read its state
    status = Path(f"/proc/{pid}/status")
    return status.is_file() and "zombie" not in status.read_text()


def wait_ready(port: int, proc, log_path: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "gunicorn did not become ready:\n" + log_path.read_text()[-3000:]
        time.sleep(0.5)


def without_threshold(index_dir: Path) -> Path:
    """The index with no auto threshold (as `ingest --no-calibrate` leaves it): every listing waits
    for review, whatever the listings filed before it look like."""
    return edit_manifest(index_dir, lambda m: m["categorizer"].update(threshold=None, kinds=None))


@pytest.fixture(scope="module")
def server(service_index, real_data_dir, tmp_path_factory):
    index_dir = without_threshold(copy_index(service_index, tmp_path_factory.mktemp("review-gunicorn") / "index"))
    port = free_port()
    log_path = index_dir.parent / "gunicorn.log"
    env = dict(
        os.environ,
        INDEX_DIR=str(index_dir),
        DATA_DIR=str(real_data_dir),
        API_TOKEN=WRITER,
        REVIEW_TOKEN=REVIEWER,
        WEB_CONCURRENCY="2",
        PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(index_dir.parent / "metrics"),
    )
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command + ["service.app:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(port, proc, log_path)
        yield {"port": port, "proc": proc, "log": log_path, "index_dir": index_dir}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_reviewed_listing_is_used_by_the_very_next_vote_of_every_worker(server):
    port = server["port"]
    status, listed = post_form(port, "/api/v1/listings", {"id": "twin", "title": nonsense(5)}, noise_jpeg(5), WRITER)
    assert status == 201 and listed["where"] == "review", listed
    target = ["Watches", "Wrist Watches"] if listed["category"] != "Watches" else ["Baby Care"]

    def vote(_: int) -> dict:  # the near-twin: same words, the photo saved at another quality
        return post_form(port, "/api/v1/predict", {"title": nonsense(5)}, noise_jpeg(5, quality=70))[1]

    assert vote(0)["category"] != target[0]
    status, decided = call(port, "POST", "/api/v1/review/twin", {"category_path": target}, REVIEWER)
    assert status == 200 and decided["where"] == "index", decided
    with ThreadPoolExecutor(8) as pool:  # at once, so both workers answer some
        votes = list(pool.map(vote, range(16)))
    assert all(v["category"] == target[0] and v["neighbors"][0]["id"] == "twin" for v in votes), votes[0]


def test_killed_workers_lose_no_acknowledged_decision_and_apply_none_twice(server):
    port, index_dir, log = server["port"], server["index_dir"], server["log"]
    n_products = len(open_store(index_dir).products)
    waiting = {}
    for i in range(24):
        status, body = call(port, "POST", "/api/v1/listings", {"id": f"k{i}", "title": nonsense(100 + i)}, WRITER)
        assert status == 201, body
        if body["where"] == "review":
            waiting[body["id"]] = body
    assert len(waiting) == 24, "without a threshold every listing waits for review"
    decisions = {
        lid: {"reject": True} if i % 4 == 3 else {"category_path": body["top"][0]["path"]}
        for i, (lid, body) in enumerate(sorted(waiting.items()))
    }
    acked: dict[str, dict] = {}
    failed: list[str] = []
    lock = threading.Lock()

    def decide(lid: str) -> None:
        try:
            status, body = call(port, "POST", f"/api/v1/review/{lid}", decisions[lid], REVIEWER)
        except (OSError, http.client.HTTPException):  # the worker died under this request, before
            status, body = 0, None  # or while it sent the answer (IncompleteRead): not acknowledged
        with lock:
            (acked.__setitem__(lid, body) if status == 200 else failed.append(lid))

    kills: list[int] = []

    def killer() -> None:
        for _ in range(3):
            time.sleep(0.7)
            live = [p for p in worker_pids(log.read_text()) if alive(p)]
            if live:
                os.kill(live[-1], signal.SIGKILL)
                kills.append(live[-1])

    chaos = threading.Thread(target=killer)
    chaos.start()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(decide, sorted(decisions)))
    chaos.join()
    assert len(kills) == 3
    wait_ready(port, server["proc"], log)

    # nothing acknowledged is lost: each answered decision is in the index (or dropped) as answered
    for lid, body in acked.items():
        assert body["category_path"] == decisions[lid].get("category_path", [])
        status, product = call(port, "GET", f"/api/v1/products/{lid}")
        if "reject" in decisions[lid]:
            assert status == 404
        else:
            assert status == 200 and product["category_path"] == decisions[lid]["category_path"]
    # the ones cut off are decided again; every listing ends decided exactly once
    for lid in failed:
        for _ in range(20):
            try:
                status, body = call(port, "POST", f"/api/v1/review/{lid}", decisions[lid], REVIEWER)
            except (OSError, http.client.HTTPException):
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, (lid, body)
    queue = ReviewQueue(index_dir)
    assert queue.pending() == []
    audit = AuditLog(index_dir)
    for lid in decisions:
        row = queue.get(lid)
        assert row.status == "done" and row.decision == decisions[lid]
        actions = [e["action"] for e in audit.history(lid)]
        assert actions == ["reject" if "reject" in decisions[lid] else "review"], (lid, actions)
    accepted = sum("category_path" in d for d in decisions.values())
    store = open_store(index_dir)
    assert len(store.products) == n_products + accepted
    assert len({p.id for p in store.products}) == len(store.products)
    recovered = re.findall(r"finished (\d+) listing\(s\) a previous process left pending", log.read_text())
    print(
        f"{len(acked)} acknowledged, {len(failed)} cut off by {len(kills)} SIGKILLs, all applied once; "
        f"finished by recovery: {sum(map(int, recovered))}"
    )
