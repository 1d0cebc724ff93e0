"""Replay the fault catalogue of tests/test_service_faults.py against the real app on a copy
of the live index, and print the figures issue 9 asks for: bad inputs tried and 5xx seen
(with each status), damaged index files tried and how many were served.

    python bench/bench_faults.py [--index DIR]

In process (Flask test client), loopback-free; bounded by the size of the catalogue.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from service_support import copy_index  # noqa: E402
from test_service_faults import AUTH, BAD_INPUTS, DAMAGES, FILE_KINDS, RAW_JSON, publish_damaged  # noqa: E402

from indexer.encoders import create_encoder  # noqa: E402
from indexer.store import open_store  # noqa: E402
from indexer.store.local.index import read_current  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Config  # noqa: E402

FORM_PRICES = ("nan", "inf", "-1", "1e400")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=os.environ.get("INDEX_DIR", "var/index"))
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}  cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        index_dir = copy_index(Path(args.index), Path(tmp) / "index")
        encoder = create_encoder(open_store(index_dir).profile)
        config = Config(index_dir=str(index_dir), api_token=AUTH["Authorization"].split()[1], retry_load_seconds=0.0)
        client = create_app(config, encoder=encoder).test_client()

        statuses: Counter = Counter()
        for method, path, body, _, _ in BAD_INPUTS:
            response = client.open(path, method=method, data=body, headers={**RAW_JSON, **AUTH})
            statuses[response.status_code] += 1
        for price in FORM_PRICES:
            response = client.post(
                "/api/v1/products",
                headers=AUTH,
                content_type="multipart/form-data",
                data={"title": "mug", "category": "Watches", "price": price},
            )
            statuses[response.status_code] += 1
        tried = sum(statuses.values())
        server_errors = sum(n for s, n in statuses.items() if s >= 500)
        print(f"bad inputs: {tried} tried, {server_errors} answered 5xx; statuses {dict(sorted(statuses.items()))}")

        good = read_current(index_dir)
        served, t0 = 0, time.perf_counter()
        for name in FILE_KINDS:
            for how in DAMAGES:
                publish_damaged(index_dir, name, how, base=good)
                body = client.post("/api/v1/predict", json={"title": "analog wrist watch"}).get_json()
                served += body.get("index_version") != good
        n = len(FILE_KINDS) * len(DAMAGES)
        print(
            f"damaged versions: {n} tried ({len(FILE_KINDS)} file kinds x {', '.join(DAMAGES)}), "
            f"{served} served; {(time.perf_counter() - t0) / n * 1000:.0f} ms per predict meeting a new damaged version"
        )
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
