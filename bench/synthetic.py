"""SYNTHETIC embedding shards for scale benchmarks (bench_ingest.py, bench_scale.py).

Two generators, both SYNTHETIC:
- `write_synthetic_shards`: names and descriptions drawn from a small word list, vectors
  Gaussian noise around one random centre per category, L2-normalised (bench_ingest.py:
  the reading and writing cost only; their neighbours have no structure).
- `write_mixed_shards` (bench_scale.py): each product mixes two real products of the same
  category of a real index: vectors 0.6 / 0.4 plus jitter (as bench_search_scale.py), the
  first one's category path, and text in one of two vocabularies:
  - "heaps" (the default): the title mixes words of both real titles (so the lexical channel
    still knows the category), the description is DESCRIPTION_WORDS words drawn from a
    vocabulary that grows with the catalogue as a real one does: word ranks follow a
    Zipf-Mandelbrot law p(r) ~ 1 / (r + ZIPF_SHIFT)^ZIPF_EXPONENT over an unbounded vocabulary,
    so the number of distinct words after T tokens grows like Heaps' law, T^(1/ZIPF_EXPONENT)
    (about T^0.55), half of them shared by every category and half the category's own. Seeded
    per shard, so deterministic.
  - "real" (the old mode): words of both real titles and descriptions, so the vocabulary stays
    the real index's (945 products) however large the catalogue, and the lexical postings grow
    far longer than a real catalogue's.
  The neighbourhoods are real-shaped but more clustered than a real catalogue.
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

from indexer.catalog.products import Product  # noqa: E402
from indexer.catalog.shards import EmbeddingsSpec, products_table, write_shard, write_spec  # noqa: E402
from indexer.encoders import create_encoder  # noqa: E402
from indexer.store.local.index import IndexStore  # noqa: E402

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


def _mixed_text(a: str, b: str, rng: np.random.Generator, keep: float) -> str:
    """`a` with a random share of its words kept, followed by some of `b`'s words."""
    wa, wb = a.split(), b.split()
    kept = [w for w in wa if rng.random() < keep] or wa[:1]
    return " ".join(kept + [w for w in wb if rng.random() < 1 - keep])


VOCABULARIES = ("heaps", "real")
ZIPF_EXPONENT = 1.8  # Zipf-Mandelbrot exponent s: vocabulary ~ tokens^(1/s) (Heaps' beta ~0.55)
ZIPF_SHIFT = 100.0  # Zipf-Mandelbrot shift q: the most frequent word is 0.8 % of the tokens, in ~11 % of products
DESCRIPTION_WORDS = 30
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rank: int, prefix: str) -> str:
    """A made-up word for a vocabulary rank (letters only, so every tokenizer keeps it)."""
    out = ""
    while True:
        rank, digit = divmod(rank, 26)
        out += LETTERS[digit]
        if rank == 0:
            return prefix + out


def zipf_ranks(rng: np.random.Generator, size: int) -> np.ndarray:
    """Word ranks (0 = most frequent) of a Zipf-Mandelbrot law over an unbounded vocabulary, by
    inverse transform of its continuous (Pareto) tail: P(rank >= r) = ((r + 1 + q)/(1 + q))^-(s-1)."""
    u = rng.random(size)
    r = (1.0 + ZIPF_SHIFT) * u ** (-1.0 / (ZIPF_EXPONENT - 1.0)) - ZIPF_SHIFT
    return np.minimum(np.floor(r), 2**40).astype(np.int64) - 1


def heaps_description(rng: np.random.Generator, category: int) -> str:
    """DESCRIPTION_WORDS words: each from the shared vocabulary or the category's own, half and half."""
    ranks = zipf_ranks(rng, DESCRIPTION_WORDS)
    own = rng.random(DESCRIPTION_WORDS) < 0.5
    return " ".join(_word(int(r), LETTERS[category % 26] + "q" if o else "zq") for r, o in zip(ranks, own, strict=True))


def write_mixed_shards(
    real: IndexStore,
    folder: str | Path,
    n: int,
    shard_rows: int = 50_000,
    seed: int = 0,
    start_id: int = 0,
    vocabulary: str = "heaps",
) -> EmbeddingsSpec:
    """Write `n` SYNTHETIC products mixed from pairs of same-category products of `real` (see the
    module docstring) as shards + embeddings.json, text in `vocabulary` ("heaps" or "real").
    O(shard) memory, deterministic for a seed."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"vocabulary must be one of {VOCABULARIES}, got {vocabulary!r}")
    labels = real.labels()
    by_cat = {c: np.flatnonzero(labels == c) for c in np.unique(labels) if c}
    cats = np.array(sorted(by_cat))
    dims = {m: int(c.vectors.shape[1]) for m, c in real.modalities.items()}
    spec = EmbeddingsSpec(
        real.profile,
        dict(real.manifest["model_ids"]),
        dims,
        {
            "synthetic": True,
            "generator": "bench/synthetic.py write_mixed_shards",
            "vocabulary": vocabulary,
            "source_index_version": real.version,
            "seed": seed,
            "products": n,
            "complete": True,
            "text_normalisation": real.manifest.get("text_normalisation"),
        },
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_spec(folder, spec)
    meta = {"model_ids": spec.model_ids, "dims": dims, "synthetic": True}
    positions = {m: real.positions(m) for m in dims}
    stored = {m: np.asarray(real.modalities[m].vectors, dtype=np.float32) for m in dims}
    for shard, start in enumerate(range(0, n, shard_rows)):
        stop = min(start + shard_rows, n)
        rng = np.random.default_rng([seed, start])
        chosen = cats[rng.integers(0, len(cats), stop - start)]
        first, second = np.zeros(stop - start, np.int64), np.zeros(stop - start, np.int64)
        for c in cats:
            where = np.flatnonzero(chosen == c)
            first[where] = rng.choice(by_cat[c], len(where))
            second[where] = rng.choice(by_cat[c], len(where))
        products = []
        category_number = {c: i for i, c in enumerate(cats)}
        for offset, (a, b) in enumerate(zip(first, second, strict=True)):
            pa_, pb = real.products[int(a)], real.products[int(b)]
            if vocabulary == "heaps":
                description = heaps_description(rng, category_number[chosen[offset]])
            else:
                description = _mixed_text(pa_.description[:400], pb.description[:200], rng, 0.7)
            products.append(
                Product(
                    id=f"synthetic-mixed-{start_id + start + offset:08d}",
                    name=_mixed_text(pa_.name, pb.name, rng, 0.8),
                    description=description,
                    brand=pa_.brand,
                    price=pa_.price,
                    category_path=pa_.category_path,
                    image=None,
                )
            )
        vectors = {}
        for m, dim in dims.items():
            pos = positions[m]
            ok = (pos[first] >= 0) & (pos[second] >= 0)
            out = np.full((stop - start, dim), np.nan, np.float32)
            a, b = stored[m][pos[first[ok]]], stored[m][pos[second[ok]]]
            noise = 0.15 * rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(dim)
            mixed = 0.6 * a + 0.4 * b + noise
            out[ok] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
            vectors[m] = out
        write_shard(folder / f"mixed-{shard:06d}.parquet", products_table(products, vectors, dims, metadata=meta))
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
