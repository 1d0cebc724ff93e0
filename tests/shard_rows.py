"""Small synthetic embedding shards (Parquet, variable-length lists so that bad rows can be
written at all) for the ingest and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fakes import FAKE_PROFILE, FakeEncoder

from indexer.catalog.shards import EmbeddingsSpec, write_spec

ENC = FakeEncoder()
CATS = ["Watches >> Wrist Watches", "Baby Care >> Bibs", "Computers >> Laptops"]


def spec(**changes) -> EmbeddingsSpec:
    base = {"profile": FAKE_PROFILE, "model_ids": dict(ENC.model_ids), "dims": dict(ENC.dims)}
    base.update(changes)
    return EmbeddingsSpec(base["profile"], base["model_ids"], base["dims"])


def vec(dim: int, seed: int) -> list[float]:
    return (np.random.default_rng(seed).standard_normal(dim) * 2).astype(np.float32).tolist()


def row(i: int, **overrides) -> dict:
    r = {
        "id": f"p{i:04d}",
        "name": f"item {i} {['watch dial', 'baby bib', 'laptop usb'][i % 3]}",
        "description": ["analog quartz strap", "cotton soft infant", "battery keyboard"][i % 3],
        "category_path": CATS[i % 3],
        "image_vector": vec(ENC.dims["image"], 2 * i),
        "text_vector": vec(ENC.dims["text"], 2 * i + 1),
        "price": float(i),
    }
    r.update(overrides)
    return r


VARIABLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("category_path", pa.string()),
        ("image_vector", pa.list_(pa.float32())),
        ("text_vector", pa.list_(pa.float32())),
        ("price", pa.float64()),
    ]
)


def write_rows(folder: Path, files: list[list[dict]], the_spec: EmbeddingsSpec | None = None, schema=VARIABLE_SCHEMA):
    folder.mkdir(parents=True, exist_ok=True)
    write_spec(folder, the_spec or spec())
    for n, rows in enumerate(files):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"part-{n}.parquet")
    return folder
