"""Processes that race on one index folder, for the hand-over tests and bench/bench_faults.py:
the API served over HTTP, `indexer add` from the command line, and a writer of a new base
(build, ingest, compaction) held at its slow point while the others add.

Each runs as `python -c "import race_support; race_support.<function>(...)"` with tests/ on
PYTHONPATH, the fake encoder registered as profile "fake" (milliseconds per product)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fakes import FAKE_PROFILE, FakeEncoder, make_dataset

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TOKEN = "race-token"
WRITERS = ("build", "ingest", "compact")


def register_fake() -> None:
    import indexer.encoders as encoders

    encoders.register_profile(FAKE_PROFILE, lambda **options: FakeEncoder(**options))


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "INDEX_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)])
    return env


# ---- run inside the child processes -------------------------------------------------------------
def serve_api(index_dir: str, port: int) -> None:
    """The service on 127.0.0.1:`port` (werkzeug, a thread per request) until killed."""
    from werkzeug.serving import make_server

    from service.app import create_app
    from service.config import Config

    register_fake()
    config = Config(index_dir=index_dir, api_token=TOKEN, retry_load_seconds=0.0)
    app = create_app(config, encoder=FakeEncoder())
    server = make_server("127.0.0.1", port, app, threaded=True)
    print("serving", flush=True)
    server.serve_forever()


def cli(*argv: str) -> None:
    """`python -m indexer ...` with the fake profile registered."""
    from indexer.__main__ import main

    register_fake()
    sys.exit(main(list(argv)))


def slow_writer(kind: str, index_dir: str, source: str, release: str) -> None:
    """Run a writer of a new base (`kind` in WRITERS) that prints "started" once it has read the
    live version and then waits for the file `release` (at most 5 minutes) before writing its
    base: the window in which the other processes add."""
    import indexer.pipeline.build as build
    import indexer.pipeline.ingest as ingest
    import indexer.store.local.index as index

    def paused(real: Callable) -> Callable:
        def run(*args: object, **kwargs: object) -> object:
            print("started", flush=True)
            deadline = time.monotonic() + 300
            while not Path(release).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return real(*args, **kwargs)

        return run

    if kind == "build":
        build.stage_version = paused(build.stage_version)
        argv = ["build", "--data", source, "--out", index_dir, "--profile", FAKE_PROFILE, "--quiet"]
    elif kind == "ingest":
        ingest.finish_base = paused(ingest.finish_base)
        argv = ["ingest", "--embeddings", source, "--out", index_dir]
    else:
        index._stage_compaction = paused(index._stage_compaction)
        argv = ["compact", index_dir]
    cli(*argv)


# ---- run in the test process --------------------------------------------------------------------
def write_shards(data_folder: Path, out: Path) -> Path:
    """The catalogue of `data_folder` encoded by the fake encoder as ingest shards."""
    from indexer.catalog.products import load_catalog
    from indexer.catalog.shards import EmbeddingsSpec, products_table, write_shard, write_spec
    from indexer.pipeline.build import encode_products

    encoder = FakeEncoder()
    catalog = load_catalog(data_folder)
    encoded = encode_products(catalog.products, encoder, progress=False)
    write_spec(out, EmbeddingsSpec(FAKE_PROFILE, dict(encoder.model_ids), dict(encoder.dims)))
    write_shard(out / "shard-000000.parquet", products_table(catalog.products, encoded.vectors, encoder.dims))
    return out


def api_add(port: int, pid: str, photo: bytes) -> int:
    """POST one product with a photo; the HTTP status."""
    body = json.dumps(
        {
            "id": pid,
            "title": f"raced watch {pid}",
            "category": "Watches >> Wrist Watches",
            "image_base64": base64.b64encode(photo).decode(),
        }
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/products",
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class Race:
    """What a race acknowledged: ids the API answered 201 for (with the photo sent), ids of the
    CLI adds that exited 0, and how many of each were acknowledged before the writer published."""

    api: dict[str, bytes] = field(default_factory=dict)
    cli: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    during: int = 0
    writer_rc: int | None = None
    writer_output: str = ""


def start(command: list[str], ready: str, timeout: float = 120) -> subprocess.Popen:
    """Start a child and wait for its `ready` line on stdout."""
    proc = subprocess.Popen(
        command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if line.strip() == ready:
            return proc
    proc.kill()
    raise RuntimeError(f"{command[-1][:80]} never printed {ready!r}: {''.join(lines)[-2000:]}")


def race(
    kind: str, index_dir: Path, source: Path, work: Path, port: int, photos: list[bytes], api_adds: int = 8
) -> Race:
    """Hold a `kind` writer at its slow point while `api_adds` API adds (2 threads) and 2 CLI adds
    (3 products each) run, then let it publish; returns what was acknowledged."""
    result = Race()
    release = work / f"release-{kind}"
    server = start(python(f"import race_support; race_support.serve_api({str(index_dir)!r}, {port})"), "serving")
    try:
        writer = start(
            python(
                f"import race_support; race_support.slow_writer({kind!r}, {str(index_dir)!r}, {str(source)!r}, "
                f"{str(release)!r})"
            ),
            "started",
        )
        cli_runs = []
        for n in range(2):
            folder = make_dataset(work / f"cli-{n}", per_category=1, prefix=f"c{n}", offset=100 + 10 * n)
            command = python(
                f"import race_support; race_support.cli('add', '--index', {str(index_dir)!r}, "
                f"'--data', {str(folder['folder'])!r}, '--quiet')"
            )
            proc = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, text=True)
            cli_runs.append((proc, [r["uniq_id"] for r in folder["rows"]]))
        ids = [f"api-{kind}-{i}" for i in range(api_adds)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            statuses = list(pool.map(lambda i: api_add(port, ids[i], photos[i % len(photos)]), range(api_adds)))
        result.statuses = statuses
        acknowledged = [i for i, status in enumerate(statuses) if status == 201]
        result.api = {ids[i]: photos[i % len(photos)] for i in acknowledged}
        for proc, cli_ids in cli_runs:
            if proc.wait(timeout=180) == 0:
                result.cli += cli_ids
        result.during = (len(result.api) + len(result.cli)) if writer.poll() is None else 0
        release.touch()
        result.writer_rc = writer.wait(timeout=300)
        result.writer_output = writer.stdout.read() if writer.stdout else ""
        after = api_add(port, f"api-{kind}-after", photos[0])  # its photo clean-up must keep every raced photo
        if after == 201:
            result.api[f"api-{kind}-after"] = photos[0]
        result.statuses.append(after)
    finally:
        server.kill()
        server.wait(timeout=30)
    return result
