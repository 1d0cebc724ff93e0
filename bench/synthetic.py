"""SYNTHETIC embedding shards for scale benchmarks (bench_ingest.py, later bench_scale.py).

Nothing here is real data: product names and descriptions are drawn from a small word
list, vectors are Gaussian noise around one random centre per category, L2-normalised.
The shards are marked `"synthetic": true` in `embeddings.json` (and every id starts
with "synthetic-"); they carry the embedded profile's model ids and dims only so that
`python -m indexer ingest` accepts them. Their neighbours are far more regular than the
real catalogue's, so search figures on them say nothing about accuracy.

Generation streams one shard at a time: O(shard) memory, O(N) time, deterministic for
a seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from indexer.catalog import Product  # noqa: E402
from indexer.encoders import create_encoder  # noqa: E402
from indexer.shards import EmbeddingsSpec, products_table, write_shard, write_spec  # noqa: E402

CATEGORIES = [
    ("Watches", "Wrist Watches"),
    ("Baby Care", "Baby Bedding"),
    ("Computers", "Laptop Accessories"),
    ("Home Decor & Festive Needs", "Showpieces"),
    ("Home Furnishing", "Bed Linen"),
    ("Kitchen & Dining", "Coffee Mugs"),
    ("Beauty and Personal Care", "Fragrances"),
]
WORDS = str.split(
    "analog dial strap quartz cotton soft infant romper usb battery keyboard adapter brass idol handmade "
    "bedsheet double printed ceramic mug coffee printed perfume deodorant spray men women kids steel "
    "wooden glass leather silver gold blue red black white pack set combo premium classic"
)


def synthetic_products(start: int, stop: int, seed: int) -> tuple[list[Product], np.ndarray]:
    """Products start..stop-1 (deterministic per index) and their category numbers."""
    rng = np.random.default_rng([seed, start])
    cats = rng.integers(0, len(CATEGORIES), stop - start)
    products = []
    for offset, c in enumerate(cats):
        i = start + offset
        words = rng.choice(WORDS, size=12)
        products.append(
            Product(
                id=f"synthetic-{i:08d}",
                name=f"synthetic {CATEGORIES[c][1].lower()} {' '.join(words[:3])} {i}",
                description=" ".join(words),
                brand=None,
                price=float(rng.integers(100, 5000)),
                category_path=CATEGORIES[c],
                image=None,
            )
        )
    return products, cats


def synthetic_vectors(cats: np.ndarray, dim: int, seed: int, start: int, noise: float = 0.08) -> np.ndarray:
    centres = np.random.default_rng([seed, dim]).standard_normal((len(CATEGORIES), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, dim, start])
    vectors = centres[cats] + noise * rng.standard_normal((len(cats), dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_synthetic_shards(
    folder: str | Path, n: int, shard_rows: int = 10_000, seed: int = 0, profile: str = "embedded"
) -> EmbeddingsSpec:
    """Write `n` SYNTHETIC products as shards + embeddings.json into `folder`."""
    encoder = create_encoder(profile)
    dims = dict(encoder.dims)
    spec = EmbeddingsSpec(
        profile,
        dict(encoder.model_ids),
        dims,
        {"synthetic": True, "generator": "bench/synthetic.py", "seed": seed, "products": n, "complete": True},
    )
    folder = Path(folder)
    write_spec(folder, spec)
    meta = {"model_ids": spec.model_ids, "dims": dims, "synthetic": True}
    for shard, start in enumerate(range(0, n, shard_rows)):
        stop = min(start + shard_rows, n)
        products, cats = synthetic_products(start, stop, seed)
        vectors = {m: synthetic_vectors(cats, d, seed, start) for m, d in dims.items()}
        write_shard(folder / f"synthetic-{shard:06d}.parquet", products_table(products, vectors, dims, metadata=meta))
    return spec


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write SYNTHETIC embedding shards for `indexer ingest`")
    parser.add_argument("--out", required=True)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_synthetic_shards(args.out, args.products, args.shard_rows, args.seed)
    print(f"wrote {args.products} SYNTHETIC products to {args.out}")
