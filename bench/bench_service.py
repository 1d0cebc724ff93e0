"""Benchmark the service as deployed: gunicorn (service/gunicorn.conf.py) on 127.0.0.1.

Prints /predict latency for one client (text only, and image + text; p50/p95/p99),
the encoder's own time for the same inputs in the same run (measured in this process
before the server starts, one torch thread like a worker, and as reported by the
server's timing_ms), then N concurrent clients for D seconds (errors, throughput),
and the memory (RSS and PSS) of the master and of each worker.

    python bench/bench_service.py [--index DIR] [--clients 8] [--duration 60]

The index comes from --index / $INDEX_DIR; when that holds no index, one is built
from $DATA_DIR into a temporary folder first. Only loopback traffic; every loop is bounded.
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
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.store import open_store  # noqa: E402
from indexer.store.local.index import IndexNotFound, IndexStore, read_current  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(fields: dict, image: bytes | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    if image is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + image
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, ctype: str, timeout: float = 60) -> tuple[int, dict | None, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/api/v1/predict", body=body, headers={"Content-Type": ctype})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - t0
    payload = json.loads(data) if response.status == 200 else None
    return response.status, payload, elapsed


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def summary(name: str, seconds: list[float]) -> str:
    return (
        f"  {name:<28} n={len(seconds):4d}  p50 {pct(seconds, 50):6.1f} ms  p95 {pct(seconds, 95):6.1f} ms  "
        f"p99 {pct(seconds, 99):6.1f} ms  mean {statistics.fmean(seconds) * 1000:6.1f} ms"
    )


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB; PSS splits pages shared with the master (preloaded weights) fairly."""
    rss = pss = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def ensure_index(index: str | None, tmp: Path) -> Path:
    if index:
        try:
            read_current(Path(index))
            return Path(index)
        except IndexNotFound:
            pass
    data_dir = os.environ.get("DATA_DIR")
    if not data_dir:
        raise SystemExit("no index at --index/$INDEX_DIR and no $DATA_DIR to build one from")
    from indexer.pipeline.build import build_index

    out = tmp / "index"
    print(f"building an index from {data_dir} into {out} ...", flush=True)
    build_index(data_dir, out, progress=False)
    return out


def queries(store: IndexStore, data_dir: str | None, n: int):
    """n (title, title + description, photo bytes) triples from products with a readable photo."""
    from service.media import image_file

    rng = np.random.default_rng(0)
    rows = rng.permutation(len(store.products))
    out = []
    for row in rows:
        product = store.products[row]
        path = image_file(product, store, data_dir)
        if path is None or path.stat().st_size > 2_000_000:
            continue
        out.append((product.name, product.description[:600], path.read_bytes()))
        if len(out) == n:
            break
    return out


def encoder_alone(manifest: dict, inputs, repeat: int) -> dict[str, list[float]]:
    """Encoder time in this process for the same inputs (one thread, like a worker), with
    the encoder the index names (its text model) and the seller-query role the service uses."""
    from indexer.catalog.images import load_image
    from indexer.encoders import create_encoder_for, encode_text_queries
    from service.state import set_threads

    set_threads(1)
    encoder = create_encoder_for(manifest)
    encode_text_queries(encoder, ["warm up"])
    times = {"encode_text(title)": [], "decode+encode_image": []}
    for i in range(repeat):
        title, _, photo = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        encode_text_queries(encoder, [title])
        times["encode_text(title)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        encoder.encode_images([load_image(photo, draft_size=encoder.image_size)])
        times["decode+encode_image"].append(time.perf_counter() - t0)
    del encoder
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=os.environ.get("INDEX_DIR", "var/index"))
    ap.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    ap.add_argument("--single", type=int, default=200, help="requests per single-client series")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--encoder-repeat", type=int, default=60)
    args = ap.parse_args()

    print(f"load average at start: {os.getloadavg()}  cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp_name:
        tmp = Path(tmp_name)
        index_dir = ensure_index(args.index, tmp)
        store = open_store(index_dir)
        data_dir = os.environ.get("DATA_DIR")
        inputs = queries(store, data_dir, 50)
        print(f"index {index_dir} version {store.version}: {len(store.products)} products, profile {store.profile}")

        enc = encoder_alone(store.manifest, inputs, args.encoder_repeat)
        print(f"text model: {store.manifest['model_ids'].get('text')}")
        print("encoder alone, in this process (1 torch thread):")
        for name, secs in enc.items():
            print(summary(name, secs))

        port = free_port()
        env = dict(
            os.environ,
            INDEX_DIR=str(index_dir),
            WEB_CONCURRENCY=str(args.workers),
            PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
            LOG_LEVEL="warning",
        )
        log_path = tmp / "gunicorn.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below, once gunicorn has stopped
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "service/gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{port}",
                "--access-logfile",
                "/dev/null",
                "service.app:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            t0 = time.perf_counter()
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit("gunicorn exited:\n" + log_path.read_text()[-3000:])
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/readyz")
                    response = conn.getresponse()
                    if response.status == 200:
                        break
                    detail = json.loads(response.read()).get("detail", "")
                    if "rebuild" in detail:  # the index does not match the encoder: waiting won't help
                        raise SystemExit(f"service not ready: {detail}")
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("gunicorn not ready after 300 s:\n" + log_path.read_text()[-3000:])
                time.sleep(0.25)
            print(f"gunicorn ready in {time.perf_counter() - t0:.1f} s: {args.workers} workers, pid {proc.pid}")
            worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "service.workers.ProblemThreadWorker (gthread)")
            threads = 1 if worker_class == "sync" else os.environ.get("GUNICORN_THREADS", "8")
            print(f"serving model: {worker_class}, {threads} thread(s) per worker")

            kinds = {
                "text (title)": lambda q: multipart({"title": q[0]}, None),
                "text (title+description)": lambda q: multipart({"title": q[0], "description": q[1]}, None),
                "image + text (title)": lambda q: multipart({"title": q[0]}, q[2]),
            }
            for build in kinds.values():  # warm-up, both workers
                for q in inputs[:6]:
                    post(port, *build(q))
            print(f"single client, POST /api/v1/predict ({args.single} requests each):")
            server_stages: dict[str, dict[str, list[float]]] = {}
            for name, build in kinds.items():
                latencies, stages = [], {}
                for i in range(args.single):
                    status, body, elapsed = post(port, *build(inputs[i % len(inputs)]))
                    if status != 200:
                        raise SystemExit(f"{name}: HTTP {status}")
                    latencies.append(elapsed)
                    for stage, ms in body["timing_ms"].items():
                        stages.setdefault(stage, []).append(ms)
                print(summary(name, latencies))
                server_stages[name] = stages
            print("  server-side timing_ms medians (same requests):")
            for name, stages in server_stages.items():
                print(
                    "    "
                    + f"{name:<26}"
                    + "  ".join(
                        f"{s} {statistics.median(v):.1f}" for s, v in stages.items() if statistics.median(v) > 0
                    )
                )

            # ---- concurrent load -----------------------------------------------------------
            results: list[tuple[int, float]] = []
            errors: list[str] = []
            lock = threading.Lock()
            stop_at = time.monotonic() + args.duration
            kind_list = list(kinds.values())

            def client(seed: int):
                i = seed
                while time.monotonic() < stop_at:
                    build = kind_list[i % 2 * 2]  # alternate title-only text and image + text
                    try:
                        status, _, elapsed = post(port, *build(inputs[i % len(inputs)]))
                        with lock:
                            results.append((status, elapsed))
                            if status != 200:
                                errors.append(f"HTTP {status}")
                    except OSError as exc:
                        with lock:
                            errors.append(repr(exc))
                    i += 1

            threads = [threading.Thread(target=client, args=(s,)) for s in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            peak: dict[int, tuple[float, float]] = {}
            while any(t.is_alive() for t in threads):
                for pid in [proc.pid] + children(proc.pid):
                    try:
                        rss, pss = memory(pid)
                    except OSError:
                        continue
                    old = peak.get(pid, (0.0, 0.0))
                    peak[pid] = (max(old[0], rss), max(old[1], pss))
                time.sleep(1.0)
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            ok = [e for s, e in results if s == 200]
            print(f"{args.clients} concurrent clients for {args.duration:.0f} s (half text, half image + text):")
            print(
                f"  requests {len(results)}, errors {len(errors)}"
                + (f" (first: {errors[0]})" if errors else "")
                + f", throughput {len(results) / wall:.1f} req/s"
            )
            if ok:
                print(summary("latency under load", ok))

            print("memory (peak during the load test; PSS counts shared preloaded pages once):")
            workers = children(proc.pid)
            for pid, (rss, pss) in sorted(peak.items()):
                role = "master" if pid == proc.pid else ("worker" if pid in workers else "exited")
                print(f"  {role:<6} pid {pid}: RSS {rss:6.0f} MB  PSS {pss:6.0f} MB")
            worker_rss = [peak[p][0] for p in workers if p in peak]
            if worker_rss:
                print(f"  RSS per worker: mean {statistics.fmean(worker_rss):.0f} MB")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
