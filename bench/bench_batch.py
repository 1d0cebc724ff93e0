"""Benchmark bulk categorization (`python -m indexer predict`, the code behind POST /api/v1/predict/batch).

Prints listings/s and the peak memory of a fresh process per run, for the catalogue's listings
written as a seller's CSV: with photos (title, description, photo file), text only (title and
description), titles only; then the same photo run on the listings repeated 4 times, to show the
memory is bounded by a batch and not by the file. The 1-minute load average is printed beside each
figure (other work on the machine slows it down), and "models alone/s": the encoders alone on the
file's first 128 listings (no vote, no reading or writing), the bound the models set.

    python bench/bench_batch.py [--index DIR] [--data DIR] [--batch-size 64] [--threads 2] [--repeat 4]

Targets (issue 19): >= 30 listings/s with photos, >= 300 listings/s text only on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {
    "photos": ("id", "title", "description", "image"),
    "text": ("id", "title", "description"),
    "titles": ("id", "title"),
}


def write_listings(data_dir: Path, out: Path, columns: tuple[str, ...], repeat: int) -> int:
    """The catalogue's products as a seller's CSV (`repeat` copies, ids made unique); rows written."""
    from indexer.catalog.products import load_catalog

    products = load_catalog(data_dir).products
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for copy in range(repeat):
            for p in products:
                row = {
                    "id": f"{p.id}-{copy}",
                    "title": p.name,
                    "description": p.description,
                    "image": Path(p.image).name if p.image_path and p.image_path.is_file() else "",
                }
                writer.writerow([row[c] for c in columns])
                n += 1
    return n


def model_alone(args: argparse.Namespace, encoder: object, n: int = 128) -> float:
    """Listings/s of the encoders alone on the file's first `n` listings (photos decoded and
    encoded, texts encoded, one batch each, no vote, no I/O of results): the bound the models set."""
    from indexer.catalog.images import load_image
    from indexer.categorizer import query_text
    from indexer.encoders import encode_text_queries
    from indexer.store import open_store

    store = open_store(args.index)
    with open(args.input, newline="", encoding="utf-8") as fh:
        rows = [row for _, row in zip(range(n), csv.DictReader(fh), strict=False)]
    start = time.perf_counter()
    photos = [Path(args.images) / r["image"] for r in rows if args.images and r.get("image")]
    if photos:
        encoder.encode_arrays([encoder.preprocess(load_image(p, draft_size=encoder.image_size)) for p in photos])
    texts = [query_text(store, r.get("title"), r.get("description")) for r in rows]
    encode_text_queries(encoder, [t for t in texts if t])
    return len(rows) / (time.perf_counter() - start)


def one_run(args: argparse.Namespace) -> None:
    """In a fresh process: categorize the file, print one JSON line of figures."""
    from PIL import Image

    from indexer.encoders import create_encoder_for
    from indexer.pipeline.predict import predict_file
    from indexer.store import open_store
    from service.state import set_threads

    set_threads(args.threads)
    encoder = create_encoder_for(open_store(args.index).manifest)
    encoder.encode_texts(["warm up"])  # model loading is not part of the throughput
    encoder.encode_images([Image.new("RGB", (encoder.image_size,) * 2, "white")])
    model_rate = model_alone(args, encoder)
    load_before = os.getloadavg()[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = predict_file(
        args.input,
        args.out,
        args.index,
        images=args.images,
        batch_size=args.batch_size,
        progress=False,
        encoder=encoder,
    )
    seconds = summary.seconds
    print(
        json.dumps(
            {
                "listings": summary.listings,
                "problems": summary.problems,
                "seconds": round(seconds, 2),
                "rate": round(summary.listings / seconds, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "rss_before_mb": round(rss_before),
                "load": round((load_before + os.getloadavg()[0]) / 2, 2),
                "model_rate": round(model_rate, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", "var/index"))
    parser.add_argument("--data", default=os.environ.get("DATA_DIR", str(ROOT.parent / "shared" / "data" / "Flipkart")))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads of the run (2 cores)")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the catalogue in the memory run")
    parser.add_argument("--one", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args)
        return
    data = Path(args.data)
    print(
        f"index {args.index}, listings from {data.name}, batch {args.batch_size}, {args.threads} threads, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'run':<22} {'listings':>8} {'s':>7} {'listings/s':>10} {'models alone/s':>14} {'peak RSS MB':>11} "
        f"{'load avg':>8}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        runs = [("photos", 1), ("text", 1), ("titles", 1), ("photos", args.repeat)]
        for mode, repeat in runs:
            listings = Path(tmp) / f"{mode}-{repeat}.csv"
            write_listings(data, listings, MODES[mode], repeat)
            command = [
                sys.executable,
                __file__,
                "--one",
                mode,
                "--input",
                str(listings),
                "--out",
                str(Path(tmp) / "out.csv"),
                "--index",
                args.index,
                "--batch-size",
                str(args.batch_size),
                "--threads",
                str(args.threads),
            ]
            if mode == "photos":
                command += ["--images", str(data / "Images")]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            name = f"{mode} x{repeat}" + (" (memory)" if repeat > 1 else "")
            print(
                f"{name:<22} {figures['listings']:>8} {figures['seconds']:>7.1f} {figures['rate']:>10.1f} "
                f"{figures['model_rate']:>14.1f} {figures['peak_rss_mb']:>11} {figures['load']:>8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
