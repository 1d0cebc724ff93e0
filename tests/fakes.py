"""Test doubles: a tiny deterministic encoder and synthetic datasets in the published layout.

The fake encoder implements the Encoder protocol with fixed random projections, so
tests of the store, the build and the CLI run in milliseconds yet still see vectors
that depend on the content (same image -> same vector, changed image -> new vector).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.catalog.products import CSV_NAME, IMAGES_DIR
from indexer.encoders.base import l2_normalize
from indexer.store import open_store

FAKE_PROFILE = "fake"
PREPROCESS_SIZE = 8

CSV_COLUMNS = [
    "uniq_id",
    "crawl_timestamp",
    "product_url",
    "product_name",
    "product_category_tree",
    "pid",
    "retail_price",
    "discounted_price",
    "image",
    "is_FK_Advantage_product",
    "description",
    "product_rating",
    "overall_rating",
    "brand",
    "product_specifications",
]


class FakeEncoder:
    """Random-projection encoder: pixels (8x8 RGB) and hashed words -> unit vectors."""

    def __init__(
        self, profile: str = FAKE_PROFILE, image_dim: int = 16, text_dim: int = 12, version: str = "v1", seed: int = 0
    ):
        self.profile = profile
        self.model_ids = {"image": f"fake/image-{version}", "text": f"fake/text-{version}"}
        self.dims = {"image": image_dim, "text": text_dim}
        self.image_size = PREPROCESS_SIZE
        self.precision = "fp32"
        rng = np.random.default_rng(seed)
        self._image_proj = rng.standard_normal((3 * PREPROCESS_SIZE**2, image_dim)).astype(np.float32)
        self._text_proj = rng.standard_normal((64, text_dim)).astype(np.float32)
        self.calls = {"image": 0, "text": 0}  # items encoded, to check the cache

    def preprocess(self, image: Image.Image) -> np.ndarray:
        small = image.convert("RGB").resize((PREPROCESS_SIZE, PREPROCESS_SIZE), Image.Resampling.BILINEAR)
        return (np.asarray(small, dtype=np.float32) / 255.0 - 0.5).transpose(2, 0, 1)

    def encode_arrays(self, arrays: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        self.calls["image"] += len(arrays)
        if not len(arrays):
            return np.zeros((0, self.dims["image"]), np.float32)
        flat = np.stack([np.asarray(a, np.float32).reshape(-1) for a in arrays])
        return l2_normalize(flat @ self._image_proj + 1e-3)

    def encode_images(self, images, batch_size: int = 32) -> np.ndarray:
        return self.encode_arrays([self.preprocess(i) for i in images], batch_size)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.calls["text"] += len(texts)
        bags = np.zeros((len(texts), 64), np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                bags[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        if not len(texts):
            return np.zeros((0, self.dims["text"]), np.float32)
        return l2_normalize(bags @ self._text_proj + 1e-3)


def random_vectors(n: int, dim: int, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    """Non-normalised vectors (norms far from 1) to check that the store normalises."""
    return (np.random.default_rng(seed).standard_normal((n, dim)) * scale).astype(np.float32)


CATEGORIES = ["Watches", "Baby Care", "Computers"]
COLOURS = {"Watches": (200, 30, 30), "Baby Care": (30, 200, 30), "Computers": (30, 30, 200)}
WORDS = {
    "Watches": "analog wrist watch strap dial quartz",
    "Baby Care": "baby cotton romper infant soft bib",
    "Computers": "laptop battery usb keyboard mouse adapter",
}


def product_row(pid: str, category: str, index: int, image: str | None = None, **overrides) -> dict:
    """One CSV row in the published column layout."""
    name = f"{category} item {index}"
    row = {c: "" for c in CSV_COLUMNS}
    row.update(
        uniq_id=pid,
        crawl_timestamp="2016-04-30 03:22:56 +0000",
        product_url=f"http://www.flipkart.com/p/{pid}",
        product_name=name,
        product_category_tree=json.dumps([f"{category} >> {category} Sub >> {name}"]),
        pid=pid.upper()[:16],
        retail_price="999.0",
        discounted_price="499.0",
        image=image if image is not None else f"{pid}.jpg",
        is_FK_Advantage_product="False",
        description=f"Key Features of {name} {WORDS[category]} number {index}. "
        f"Buy {name} for Rs. 499 online. Only Genuine Products. 30 Day Replacement Guarantee. "
        "Free Shipping. Cash On Delivery!",
        brand=f"Brand{index % 2}",
    )
    row.update(overrides)
    return row


def write_csv(folder: Path, rows: list[dict], name: str = CSV_NAME) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows)
    return path


def product_image(category: str, index: int, size: int = 48) -> Image.Image:
    """A solid colour per category with a per-product square, so images differ but cluster."""
    image = Image.new("RGB", (size, size), COLOURS[category])
    shade = (index * 37) % 256
    image.paste((shade, 255 - shade, shade // 2), (4, 4, 4 + size // 3, 4 + size // 3))
    return image


def make_dataset(
    folder: Path,
    per_category: int = 3,
    prefix: str = "p",
    corrupt: int = 0,
    missing: int = 0,
    categories: Sequence[str] = CATEGORIES,
    offset: int = 0,
) -> dict:
    """A small dataset in the published layout (CSV + Images/).

    `corrupt` products get a truncated JPEG and `missing` products name an image file
    that does not exist; `offset` shifts the item numbers (distinct texts and images);
    returns {"rows", "corrupt_ids", "missing_ids", "folder"}.
    """
    images = folder / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    rows, corrupt_ids, missing_ids = [], [], []
    for c, category in enumerate(categories):
        for i in range(per_category):
            index = offset + c * per_category + i
            pid = f"{prefix}{index:04d}" + hashlib.md5(f"{prefix}{index}".encode()).hexdigest()[:12]
            rows.append(product_row(pid, category, index))
            path = images / f"{pid}.jpg"
            if len(missing_ids) < missing and i == per_category - 1:
                missing_ids.append(pid)
                continue
            product_image(category, index).save(path, "JPEG", quality=90)
            if len(corrupt_ids) < corrupt and i == 0:
                path.write_bytes(path.read_bytes()[:200])
                corrupt_ids.append(pid)
    write_csv(folder, rows)
    return {"rows": rows, "corrupt_ids": corrupt_ids, "missing_ids": missing_ids, "folder": folder}


# ---- store helpers ---------------------------------------------------------------------------
def make_products(n: int, prefix: str = "s") -> list:
    """`n` Products without images, cycling through CATEGORIES."""
    from indexer.catalog.products import Product

    return [
        Product(
            id=f"{prefix}{i:04d}",
            name=f"{CATEGORIES[i % 3]} item {i}",
            description=WORDS[CATEGORIES[i % 3]],
            brand=None,
            price=float(i),
            category_path=(CATEGORIES[i % 3], "Sub"),
            image=None,
        )
        for i in range(n)
    ]


def fake_manifest(encoder: FakeEncoder) -> dict:
    """What the build writes about the encoder, for tests that call store.publish directly."""
    from indexer.encoders.base import model_id

    return {
        "profile": encoder.profile,
        "model_id": model_id(encoder),
        "model_ids": dict(encoder.model_ids),
        "built_at": "2026-01-01T00:00:00Z",
    }


def publish_fake(
    path: Path, n: int = 30, prefix: str = "s", factory: str = "Flat", seed: int = 0, encoder: FakeEncoder | None = None
) -> tuple[list, dict]:
    """Publish `n` products with random vectors (text for all, image for every other one)."""
    from indexer.store.local.index import publish, write_lock

    encoder = encoder or FakeEncoder()
    products = make_products(n, prefix)
    image_rows = np.arange(0, n, 2)
    vectors = {
        "image": (random_vectors(len(image_rows), encoder.dims["image"], seed), image_rows),
        "text": (random_vectors(n, encoder.dims["text"], seed + 1), np.arange(n)),
    }
    with write_lock(Path(path)):
        publish(path, products, vectors, fake_manifest(encoder), factory=factory)
    return products, vectors


def append_worker(path: str, prefix: str, n: int, seed: int, barrier, results) -> None:
    """Run in another process: load the index, wait for the sibling, then append `n` products."""
    from indexer.store.local.index import append

    store = open_store(path)
    encoder = FakeEncoder()
    vectors = {
        "image": random_vectors(n, encoder.dims["image"], seed),
        "text": random_vectors(n, encoder.dims["text"], seed + 1),
    }
    barrier.wait(timeout=60)
    results.put(len(append(store, make_products(n, prefix), vectors).products))


def add_worker(path: str, data_folder: str, barrier, results) -> None:
    """Run in another process: encode a dataset folder's products and add them to the index."""
    from indexer.catalog.products import load_catalog
    from indexer.pipeline.build import add_products

    products = load_catalog(data_folder).products
    barrier.wait(timeout=60)
    store, _ = add_products(path, products, FakeEncoder())
    results.put(len(store.products))


def publish_copy(index_dir: Path, source: str, version: str) -> str:
    """Publish a copy of version `source` as `version`, sealed and pointed at as a writer would (the
    fault tests then damage one of its files); returns `version`."""
    import shutil

    from indexer.store.local.seals import open_manifest, seal_manifest
    from indexer.store.local.versions import VERSIONS, read_pointer, write_current

    target = index_dir / VERSIONS / version
    shutil.copytree(index_dir / VERSIONS / source, target)
    manifest, _ = open_manifest((target / "manifest.json").read_bytes())
    live = read_pointer(index_dir)
    data, _ = seal_manifest(manifest, version=version, previous={"version": live.version, "digest": live.manifest})
    (target / "manifest.json").write_bytes(data)
    write_current(index_dir, version)
    return version


def damage(file: Path, how: str) -> None:
    """Damage a file as the fault tests do: "truncated", "empty" or (else) 8 flipped bytes."""
    data = bytearray(file.read_bytes())
    if how == "truncated":
        file.write_bytes(data[: max(1, min(1000, len(data) // 2))])
    elif how == "empty":
        file.write_bytes(b"")
    else:  # flip bytes in the middle of the payload: same size, other content
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
            data[i] ^= 0xFF
        file.write_bytes(bytes(data))


def delete_worker(path: str, product_id: str, barrier, results) -> None:
    """Run in another process: load the index, wait for the sibling, then delete `product_id`;
    puts "deleted" or the error's class name."""
    from indexer.store import delete

    store = open_store(path)
    barrier.wait(timeout=60)
    try:
        delete(store, [product_id])
        results.put("deleted")
    except Exception as exc:  # the loser's refusal is the point of the test
        results.put(type(exc).__name__)
