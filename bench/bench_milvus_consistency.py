"""What each Milvus read costs by consistency level, on a Milvus 2.3.5 standalone server.

Starts a server from the `milvus` dev package (tests/milvus_server.py, free ports, a temporary
folder), writes one row into a small collection, then times, `--reads` times each: a one-row
query at Strong, Bounded, Eventually and Session, a query with the Customized level and the
write's timestamp as guarantee (what indexer.store.milvus reads rows with), and
`describe_collection` (how it reads the commit state's mirror). Prints p50 and max per kind with
the load average. Why it matters: docs/milvus.md, "Consistency".

Run: .venv/bin/python bench/bench_milvus_consistency.py [--reads 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT

sys.path.insert(0, str(ROOT / "tests"))

from indexer.store.milvus import MilvusLocation, _create_meta, _put_values, client_for, read_options  # noqa: E402


def timed(call, reads: int) -> str:  # noqa: ANN001 - a zero-argument callable
    times = []
    for _ in range(reads):
        t0 = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - t0))
    return f"p50 {np.percentile(times, 50):.1f} ms, max {max(times):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20)
    args = parser.parse_args()
    from milvus_server import EmbeddedMilvus

    with tempfile.TemporaryDirectory(prefix="bench-consistency-") as tmp:
        server = EmbeddedMilvus(Path(tmp) / "server").start()
        try:
            loc = MilvusLocation.parse(server.uri, "consistency")
            client = client_for(loc.uri)
            _create_meta(client, loc)
            ts = _put_values(client, loc, {"state": "1"})
            time.sleep(3)  # the write long applied: what a steady-state read waits for
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"Milvus 2.3.5 standalone, up in {server.started_in:.1f} s; {args.reads} reads each (load {load})")
            for level in ("Strong", "Bounded", "Eventually", "Session"):
                query = lambda level=level: client.query(  # noqa: E731
                    loc.meta, ids=["state"], output_fields=["value"], consistency_level=level
                )
                print(f"  one-row query, {level}: {timed(query, args.reads)}")
            custom = lambda: client.query(loc.meta, ids=["state"], output_fields=["value"], **read_options(ts))  # noqa: E731
            print(f"  one-row query, Customized at the write's timestamp: {timed(custom, args.reads)}")
            describe = lambda: client.describe_collection(loc.meta)  # noqa: E731
            print(f"  describe_collection (the state's mirror): {timed(describe, args.reads)}")
        finally:
            server.remove()


if __name__ == "__main__":
    main()
