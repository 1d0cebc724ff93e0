"""Print the durability figures of issue 20 on a small index of the fake encoder (so that every
byte can be tried in minutes):

1. writers of a new base (build, ingest, compaction) racing API adds (a served app in its own
   process) and CLI adds (`indexer add` processes): adds acknowledged, acknowledged while the
   writer ran, lost, and photos of live products missing;
2. every single-byte flip (one bit, all eight bits) and every truncation of CURRENT, of the live
   and an older manifest, of a delta's manifest and of deltas/LIST: tried, detected, served;
3. a running service meeting each flip of CURRENT (answers other than 200, versions other than
   its own served) and a fresh start on each (the newest intact version served or not);
4. CURRENT rolled back one and two versions: what readers, writers and a restart do.

    python bench/bench_durability.py [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "store")]

from fakes import FakeEncoder, make_dataset, make_products, random_vectors  # noqa: E402
from race_support import WRITERS, race, register_fake, write_shards  # noqa: E402
from service_support import free_port, jpeg_bytes  # noqa: E402
from test_seals import MASKS, build, files_of, refused  # noqa: E402

from indexer.catalog.products import load_catalog  # noqa: E402
from indexer.pipeline.build import add_products, build_index  # noqa: E402
from indexer.store import IndexDamaged, append, last_verified, open_store  # noqa: E402
from indexer.store.local.index import publish, write_lock  # noqa: E402
from indexer.store.local.versions import CURRENT, read_current  # noqa: E402

PHOTOS = [jpeg_bytes(color=(200, 30 + 40 * i, 30)) for i in range(4)]


def races(work: Path, rounds: int) -> None:
    for kind in WRITERS:
        totals = {"acknowledged": 0, "during": 0, "lost": 0, "photos missing": 0, "writer failed": 0}
        seconds = 0.0
        for n in range(rounds):
            folder = work / f"race-{kind}-{n}"
            data = make_dataset(folder / "data", per_category=4)
            index = folder / "index"
            build_index(data["folder"], index, encoder=FakeEncoder(), progress=False, calibrate_decision=False)
            source = data["folder"]
            if kind == "ingest":
                source = write_shards(data["folder"], folder / "shards")
            elif kind == "compact":
                extra = make_dataset(folder / "before", per_category=1, prefix="b", offset=60)
                add_products(index, load_catalog(extra["folder"]).products, FakeEncoder())
            start = time.perf_counter()
            result = race(kind, index, source, folder, free_port(), PHOTOS)
            seconds += time.perf_counter() - start
            store = open_store(index)
            ids = {p.id for p in store.products}
            acknowledged = set(result.api) | set(result.cli)
            totals["acknowledged"] += len(acknowledged)
            totals["during"] += result.during
            totals["lost"] += len(acknowledged - ids)
            totals["writer failed"] += result.writer_rc != 0
            for pid in result.api:
                row = store.row_of(pid)
                path = store.products[row].image_path if row is not None else None
                totals["photos missing"] += path is None or not path.is_file()
        print(
            f"racing {kind:8s} x {rounds}: " + ", ".join(f"{k} {v}" for k, v in totals.items()) + f"; {seconds:.0f} s"
        )


def flips(work: Path) -> None:
    index = build(work / "sealed")
    for which, file in files_of(index).items():
        good = file.read_bytes()
        tried = detected = 0
        start = time.perf_counter()
        for position in range(len(good)):
            changes = [bytes(good[:position]) + bytes([good[position] ^ m]) + good[position + 1 :] for m in MASKS]
            changes.append(good[:position])
            for data in changes:
                tried += 1
                detected += isinstance(refused(index, which, data), IndexDamaged)
        print(
            f"{which:15s} ({len(good):5d} bytes): {tried} flips and truncations tried, {detected} detected, "
            f"{tried - detected} served; {(time.perf_counter() - start) / tried * 1e3:.2f} ms each"
        )


def service(work: Path) -> None:
    from service.app import create_app
    from service.config import Config

    register_fake()
    data = make_dataset(work / "served-data", per_category=4)
    index = work / "served"
    build_index(data["folder"], index, encoder=FakeEncoder(), progress=False)
    config = Config(index_dir=str(index), retry_load_seconds=0.0)
    client = create_app(config, encoder=FakeEncoder()).test_client()
    version = read_current(index)
    good = (index / CURRENT).read_bytes()
    answers = other = restarts_ok = tried = 0
    start = time.perf_counter()
    for position in range(len(good)):
        for mask in MASKS:
            data = bytearray(good)
            data[position] ^= mask
            (index / CURRENT).write_bytes(bytes(data))
            tried += 1
            response = client.post("/api/v1/predict", json={"title": "analog wrist watch"})
            answers += response.status_code != 200
            other += response.get_json().get("index_version") != version
            fresh = create_app(config, encoder=FakeEncoder()).test_client().get("/readyz")
            restarts_ok += fresh.status_code == 200 and fresh.get_json()["index_version"] == version
    (index / CURRENT).write_bytes(good)
    print(
        f"running service, {tried} flips of CURRENT: {answers} answers other than 200, {other} other versions "
        f"served; fresh starts serving the newest intact version: {restarts_ok} of {tried}; "
        f"{(time.perf_counter() - start) / tried * 1e3:.0f} ms per flip"
    )


def rollbacks(work: Path) -> None:
    for steps in (1, 2):
        index = build(work / f"rolled-{steps}")
        old = (index / CURRENT).read_bytes()
        for n in range(steps):
            with write_lock(index):
                publish(index, make_products(4, f"r{n}-"), {"text": (random_vectors(4, 12, n), list(range(4)))}, {})
        newest = read_current(index)
        (index / CURRENT).write_bytes(old)
        try:
            open_store(index)
            reader = "served the old version"
        except IndexDamaged as exc:
            reader = f"refused ({type(exc).__name__})"
        fallback = last_verified(index)[0]
        try:
            added = append(fallback, make_products(1, "z"), {"text": random_vectors(1, 12)})
            writer = f"add landed on version {added.version}"
        except IndexDamaged:
            writer = "add refused until `repair`"
        print(
            f"CURRENT rolled back {steps} version(s) (newest {newest}): reader {reader}; newest intact served: "
            f"{fallback.version if fallback else None}; {writer}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="races per writer kind")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}  cores: {os.cpu_count()}")
    work = Path(tempfile.mkdtemp(prefix="bench-durability-"))
    try:
        races(work, args.rounds)
        flips(work)
        service(work)
        rollbacks(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
