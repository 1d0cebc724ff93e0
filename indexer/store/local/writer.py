"""Writing a base segment batch by batch, so memory is bounded by a batch, not by the catalogue.

Build, ingest and compaction all write a base through `BaseWriter` (`indexer.store.local.index.publish` is
a writer fed once). Products and vectors are appended to files in a staging folder as they
come, in the precision the expected size calls for (`segments.vector_dtype_for`: float16, or
int8 with a scale per row for large bases); at `finish` they become the memory-mapped `.npy`
files the store reads. The FAISS factory is resolved from the expected size too
(`faiss_search.choose_factory`: Flat below LARGE_BASE_ROWS, IVF-PQ above), and each index is
either handed over, filled batch by batch with the float32 unit vectors as they arrive (indexes
that need no training: Flat, HNSW), or trained on a seeded sample of at most TRAIN_ROWS stored
vectors and then filled from the mapped file in ADD_BATCH slices (IVF, PQ:
`faiss_search.build_faiss_index`). The staging folder is then fsync'd and checksummed;
`indexer.store.local.index.commit_version` makes it live.

Memory: O(batch) for products and vectors, plus the FAISS index itself (its codes: for a Flat
index that is every vector in float32, hence trained compressed factories for big catalogues)
and the training sample (TRAIN_ROWS x d float32). The lexical channel is handed in by the
caller (its matrix is O(nnz)).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import faiss
import numpy as np

from indexer.catalog.products import MODALITIES, Product
from indexer.encoders.base import l2_normalize
from indexer.store.errors import IndexStoreError
from indexer.store.lexical import default_cap, postings_cap
from indexer.store.local import faiss_search
from indexer.store.local.faiss_search import build_faiss_index, choose_factory, search_settings_for
from indexer.store.local.integrity import describe_files
from indexer.store.local.products_db import ProductsWriter
from indexer.store.local.segments import (
    VECTOR_DTYPE,
    StoredVectors,
    load_vectors,
    quantize_int4,
    quantize_int8,
    vector_dtype_for,
)

if TYPE_CHECKING:
    from indexer.store.lexical import LexicalIndex

TRAIN_ROWS = faiss_search.TRAIN_ROWS  # vectors a trained FAISS index (IVF, PQ) learns from: a seeded sample
ADD_BATCH = 65_536  # stored vectors converted to float32 and added to FAISS at a time


def staging_prefix() -> str:
    """Staging folders carry their writer's pid, so a writer only removes those of dead processes."""
    return f".staging-{os.getpid()}-"


class _VectorFile:
    """One modality's vectors and rows appended as raw bytes, in the segment's precision, while a
    base is written (int8: codes and per-row scales, `segments.quantize_int8`; int4: packed codes,
    per-row steps and offsets, `segments.quantize_int4`; row by row, so nothing is fitted on the
    catalogue)."""

    def __init__(self, folder: Path, modality: str, dim: int, dtype: str, index: faiss.Index | None) -> None:
        self.modality, self.dim, self.dtype, self.count = modality, dim, dtype, 0
        self.raw = folder / f".{modality}.raw"
        self.scales = folder / f".{modality}.scales"
        self.offsets = folder / f".{modality}.offsets"
        self.rows = folder / f".{modality}.rows"
        self._raw = open(self.raw, "wb")  # noqa: SIM115 - closed by finish/abort
        self._scales = open(self.scales, "wb")  # noqa: SIM115
        self._offsets = open(self.offsets, "wb")  # noqa: SIM115
        self._rows = open(self.rows, "wb")  # noqa: SIM115
        self.index = index  # filled as vectors arrive (no training needed), or None

    def append(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        if self.dtype == "int8":
            codes, scale = quantize_int8(vectors)
            self._raw.write(np.ascontiguousarray(codes).tobytes())
            self._scales.write(np.ascontiguousarray(scale, dtype=np.float32).tobytes())
        elif self.dtype == "int4":
            codes, step, offset = quantize_int4(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
            self._raw.write(np.ascontiguousarray(codes).tobytes())
            self._scales.write(np.ascontiguousarray(step, dtype=np.float32).tobytes())
            self._offsets.write(np.ascontiguousarray(offset, dtype=np.float32).tobytes())
        else:
            self._raw.write(np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE).tobytes())
        self._rows.write(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
        if self.index is not None and len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.count += len(vectors)

    def close(self) -> None:
        for fh in (self._raw, self._scales, self._offsets, self._rows):
            fh.close()

    def materialise(self, folder: Path, products: int) -> StoredVectors:
        """The `.npy` files the store maps (`segments.load_vectors` reads them back), copied from
        the raw appends in ADD_BATCH slices; refuses rows pointing outside the `products` written."""
        self.close()
        code_dtype = {"int8": np.int8, "int4": np.uint8}.get(self.dtype, VECTOR_DTYPE)
        width = (self.dim + 1) // 2 if self.dtype == "int4" else self.dim  # int4: two dimensions a byte
        stored = np.lib.format.open_memmap(
            folder / f"{self.modality}.npy", mode="w+", dtype=code_dtype, shape=(self.count, width)
        )
        if self.count:
            raw = np.memmap(self.raw, dtype=code_dtype, mode="r", shape=(self.count, width))
            for start in range(0, self.count, ADD_BATCH):
                stored[start : start + ADD_BATCH] = raw[start : start + ADD_BATCH]
            del raw
        stored.flush()
        del stored
        if self.dtype in ("int8", "int4"):
            np.save(folder / f"{self.modality}.scale.npy", np.fromfile(self.scales, dtype=np.float32))
        if self.dtype == "int4":
            np.save(folder / f"{self.modality}.offset.npy", np.fromfile(self.offsets, dtype=np.float32))
        rows = np.fromfile(self.rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= products):
            raise IndexStoreError(f"{self.modality} rows point outside the {products} products written")
        np.save(folder / f"{self.modality}.rows.npy", rows)
        for tmp in (self.raw, self.scales, self.offsets, self.rows):
            tmp.unlink()
        return load_vectors(folder, self.modality, self.dtype, dim=self.dim)


class BaseWriter:
    """Write one base segment into a staging folder: `add` batches, then `finish`.

    Use as a context manager: an exception removes the staging folder. Each `add` is O(batch);
    `finish` is O(N) disk I/O with O(ADD_BATCH + TRAIN_ROWS) vectors in memory, plus FAISS."""

    def __init__(
        self,
        versions_dir: Path,
        dims: Mapping[str, int],
        factory: str,
        indexes: Mapping[str, faiss.Index] | None = None,
        expected_rows: int = 0,
        built: Mapping[str, Mapping] | None = None,
    ) -> None:
        """`expected_rows` (products about to be written) picks the precision and resolves an
        "auto" factory; `built` holds the manifest's `faiss` entries of the handed `indexes`."""
        for modality in dims:
            if modality not in MODALITIES:
                raise ValueError(f"unknown modality {modality!r}")
        versions_dir.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=versions_dir))
        self.factory = factory
        self.count = 0
        self.dtype = vector_dtype_for(expected_rows)
        self._handed = dict(indexes or {})
        self._built = {m: dict(e) for m, e in (built or {}).items() if m in self._handed}
        self._resolved: dict[str, str] = {}
        self._vectors: dict[str, _VectorFile] = {}
        try:  # a writer that cannot even start (a full disk) leaves no staging folder behind
            self._products = ProductsWriter(self.staging)
            for modality, dim in dims.items():
                index = None
                if modality not in self._handed:
                    resolved = self._resolved[modality] = choose_factory(factory, expected_rows, int(dim))
                    fresh = faiss.index_factory(int(dim), resolved, faiss.METRIC_INNER_PRODUCT)
                    index = fresh if fresh.is_trained else None
                self._vectors[modality] = _VectorFile(self.staging, modality, int(dim), self.dtype, index)
        except BaseException:
            for vf in self._vectors.values():
                vf.close()
            if hasattr(self, "_products"):
                self._products.abort()
            shutil.rmtree(self.staging, ignore_errors=True)
            raise

    def __enter__(self) -> BaseWriter:
        return self

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities declared to this writer."""
        return tuple(self._vectors)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.abort()

    def add(self, products: Sequence[Product], vectors: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Append products and, per modality, (vectors, positions of their products in this batch).
        Vectors are L2-normalised here. O(batch)."""
        start = self.count
        self.add_products(products)
        for modality, (vecs, positions) in vectors.items():
            positions = np.asarray(positions, dtype=np.int64)
            if len(positions) and (positions.min() < 0 or positions.max() >= len(products)):
                raise ValueError(f"{modality}: positions point outside the batch of {len(products)} products")
            self.add_vectors(modality, vecs, start + positions)

    def add_products(self, products: Sequence[Product]) -> None:
        """Append products (their rows follow on from the products already added): O(batch),
        into the segment's SQLite table (indexer.store.local.products_db.ProductsWriter)."""
        self._products.add(products)
        self.count += len(products)

    def add_all_products(self, products: Iterable[Product]) -> None:
        """`add_products` over any iterable (a list, a loaded store's rows), in the table
        writer's batches (ProductsWriter.add_all): O(batch) memory."""
        self._products.add_all(products)
        self.count = self._products.n

    def add_vectors(self, modality: str, vectors: np.ndarray, rows: np.ndarray) -> None:
        """Append one modality's vectors (L2-normalised here) for the products at global `rows`;
        their positions in the modality follow the order of the calls. O(batch)."""
        if modality not in self._vectors:
            raise ValueError(f"modality {modality!r} was not declared to the writer")
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(vectors):
            raise ValueError(f"{modality}: {len(vectors)} vectors for {len(rows)} rows")
        unit = l2_normalize(vectors) if len(vectors) else np.zeros((0, self._vectors[modality].dim), np.float32)
        self._vectors[modality].append(unit, rows)

    def finish(self, manifest: Mapping, lexical: LexicalIndex | None = None) -> tuple[Path, dict]:
        """Write the vectors' `.npy` files, the FAISS indexes and the lexical channel, fsync and
        checksum them, and write `manifest` (plus counts, dims, factory and files) as
        manifest.json. Returns (staging folder, the manifest written)."""
        catalog = self._products.finish()
        counts = {"products": int(catalog["products"])}
        dims = {}
        built = dict(self._built)
        for modality, vf in self._vectors.items():
            stored = vf.materialise(self.staging, self.count)
            index = self._handed.get(modality) or vf.index
            if index is None:
                try:
                    index, built[modality] = build_faiss_index(
                        stored, self._resolved[modality], train_rows=TRAIN_ROWS, chunk=ADD_BATCH
                    )
                except ValueError as exc:
                    raise IndexStoreError(str(exc)) from None
            built.setdefault(modality, {"factory": self._resolved.get(modality, self.factory)})
            if index.ntotal != len(stored):
                raise IndexStoreError(f"{modality} index holds {index.ntotal} vectors, expected {len(stored)}")
            faiss.write_index(index, str(self.staging / f"{modality}.faiss"))
            counts[modality], dims[modality] = int(len(stored)), vf.dim
            del stored
        if lexical is not None:
            lexical.save(self.staging)
        out = dict(manifest)
        out["lexical"] = (
            {
                "model_id": lexical.model_id,
                "vocabulary": lexical.dim,
                "count": int(lexical.ntotal),
                "cap": postings_cap(default_cap(int(lexical.ntotal))),
            }
            if lexical is not None
            else None
        )
        approximate = [e["factory"] for e in built.values() if e["factory"] != "Flat"]
        out.update(
            vector_dtype=self.dtype,
            faiss=built,
            search=manifest.get("search") or search_settings_for(approximate[0] if approximate else "Flat"),
            modalities=sorted(self._vectors),
            counts=counts,
            dims=dims,
            index_factory=self.factory,
            metric="inner_product",
            catalog=catalog,
            categories=sorted(path[0] for path, _ in catalog["counts"] if len(path) == 1),
            written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        for item in self.staging.iterdir():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
        out["files"] = describe_files(self.staging)  # sizes + checksums of what was synced: O(bytes)
        write_manifest(self.staging, out)
        return self.staging, out

    def abort(self) -> None:
        self._products.abort()
        for vf in self._vectors.values():
            vf.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def write_manifest(folder: Path, manifest: Mapping) -> None:
    """manifest.json written and fsync'd (it is not in its own `files` list)."""
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with open(folder / "manifest.json", "rb") as fh:
        os.fsync(fh.fileno())


def batches(count: int, size: int) -> Iterator[slice]:
    """Slices of `size` over range(count)."""
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))
