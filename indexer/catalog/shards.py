"""The embeddings shard format: Parquet files of precomputed vectors plus `embeddings.json`.

This is the door for large catalogues and for encoding done elsewhere: `python -m indexer
encode` writes it (on Ray), `python -m indexer ingest` reads it into an index. A folder::

    embeddings.json         {"format": "indexer-embeddings", "format_version": 1,
                             "profile": "embedded", "model_ids": {"image": ..., "text": ...},
                             "dims": {"image": 1280, "text": 384}, ...}
    shard-000000.parquet    one row per product (any file name ending in .parquet is read)
    ...

Columns of a row: `id` (string), `name`, `description`, `category_path` ("A >> B >> C",
empty or null for an unlabelled product), `image_vector` and `text_vector` (list or
fixed-size list of float32, null when the product lacks that modality), and optionally
`image_path`, `image` (file name), `brand`, `price`. Other columns are ignored. Each
file may also carry the same `model_ids`/`dims` in its Parquet key-value metadata
(`indexer.embeddings`), which `ingest` checks too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.catalog.products import MODALITIES, Product, format_category_path

SPEC_FILE = "embeddings.json"
FORMAT = "indexer-embeddings"
FORMAT_VERSION = 1
METADATA_KEY = b"indexer.embeddings"
ROW_GROUP_ROWS = 2048  # a reader decodes a whole row group: this bounds its memory (~14 MB of vectors)
VECTOR_COLUMNS = {m: f"{m}_vector" for m in MODALITIES}
REQUIRED_COLUMNS = ("id", "name", "description", "category_path", *VECTOR_COLUMNS.values())
OPTIONAL_COLUMNS = ("image_path", "image", "brand", "price")


class ShardFormatError(ValueError):
    """A shard folder, an `embeddings.json` or a Parquet file that does not follow the format."""


@dataclass
class EmbeddingsSpec:
    """What `embeddings.json` declares: the models that produced every vector in the folder."""

    profile: str
    model_ids: dict[str, str]
    dims: dict[str, int]
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            **self.extra,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "profile": self.profile,
            "model_ids": dict(self.model_ids),
            "dims": {m: int(d) for m, d in self.dims.items()},
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = SPEC_FILE) -> EmbeddingsSpec:
        if not isinstance(data, dict):
            raise ShardFormatError(f"{source}: expected a JSON object")
        if data.get("format", FORMAT) != FORMAT or data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ShardFormatError(
                f"{source}: format {data.get('format')!r} version {data.get('format_version')!r}, "
                f"this code reads {FORMAT!r} version {FORMAT_VERSION}"
            )
        missing = [k for k in ("profile", "model_ids", "dims") if k not in data]
        if missing:
            raise ShardFormatError(f"{source}: missing {', '.join(missing)}")
        model_ids, dims = data["model_ids"], data["dims"]
        if not isinstance(model_ids, dict) or not isinstance(dims, dict) or set(model_ids) != set(dims):
            raise ShardFormatError(f"{source}: model_ids and dims must be objects naming the same modalities")
        unknown = sorted(set(dims) - set(MODALITIES))
        if unknown:
            raise ShardFormatError(f"{source}: unknown modalities {unknown}; known: {list(MODALITIES)}")
        try:
            dims = {m: int(d) for m, d in dims.items()}
        except (TypeError, ValueError):
            raise ShardFormatError(f"{source}: dims must be integers, got {data['dims']}") from None
        if any(d < 1 for d in dims.values()):
            raise ShardFormatError(f"{source}: dims must be positive, got {dims}")
        extra = {k: v for k, v in data.items() if k not in ("format", "format_version", "profile", "model_ids", "dims")}
        return cls(str(data["profile"]), {m: str(i) for m, i in model_ids.items()}, dims, extra)


def read_spec(folder: str | Path) -> EmbeddingsSpec:
    path = Path(folder) / SPEC_FILE
    if not Path(folder).is_dir():
        raise ShardFormatError(f"embeddings folder {folder} does not exist")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardFormatError(f"{path} is missing: an embeddings folder names its models there") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardFormatError(f"cannot read {path}: {exc}") from exc
    return EmbeddingsSpec.from_dict(data, str(path))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_spec(folder: str | Path, spec: EmbeddingsSpec) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / SPEC_FILE, (json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n").encode())


def shard_files(folder: str | Path) -> list[Path]:
    """The Parquet files of a folder, in name order (hidden and temporary files excluded)."""
    return sorted(p for p in Path(folder).glob("*.parquet") if not p.name.startswith("."))


def shard_schema(dims: dict[str, int], metadata: dict | None = None) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("category_path", pa.string()),
        *(pa.field(VECTOR_COLUMNS[m], pa.list_(pa.float32(), dims[m])) for m in MODALITIES if m in dims),
        pa.field("image_path", pa.string()),
        pa.field("image", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("image_error", pa.string()),
    ]
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()} if metadata else None
    return pa.schema(fields, metadata=meta)


def _vector_column(matrix: np.ndarray, dim: int) -> pa.Array:
    """Fixed-size list column; rows holding NaN (modality absent) become nulls."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1, dim)
    absent = np.asarray(np.isnan(matrix).any(axis=1))
    values = pa.array(np.where(absent[:, None], 0.0, matrix).ravel(), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(absent))


def products_table(
    products: Sequence[Product],
    vectors: dict[str, np.ndarray],
    dims: dict[str, int],
    image_errors: Sequence[str | None] | None = None,
    metadata: dict | None = None,
) -> pa.Table:
    """One shard as an Arrow table: products in order, NaN vector rows written as nulls."""
    columns = {
        "id": [p.id for p in products],
        "name": [p.name for p in products],
        "description": [p.description for p in products],
        "category_path": [format_category_path(p.category_path) for p in products],
    }
    arrays = {k: pa.array(v, pa.string()) for k, v in columns.items()}
    for m in MODALITIES:
        if m in dims:
            arrays[VECTOR_COLUMNS[m]] = _vector_column(vectors[m], dims[m])
    arrays["image_path"] = pa.array([str(p.image_path) if p.image_path else None for p in products], pa.string())
    arrays["image"] = pa.array([p.image for p in products], pa.string())
    arrays["brand"] = pa.array([p.brand for p in products], pa.string())
    arrays["price"] = pa.array([p.price for p in products], pa.float64())
    arrays["image_error"] = pa.array(list(image_errors or [None] * len(products)), pa.string())
    schema = shard_schema(dims, metadata)
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def write_shard(path: Path, table: pa.Table) -> None:
    """Write a Parquet file atomically (temporary name, fsync, rename): a killed writer
    leaves either the whole shard or none of it, which is what makes `encode` resumable."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_metadata(path: Path) -> dict:
    """The `indexer.embeddings` key-value metadata of a Parquet file ({} when absent)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ShardFormatError(f"{path.name}: unreadable {METADATA_KEY.decode()} metadata: {exc}") from exc
    return value if isinstance(value, dict) else {}
