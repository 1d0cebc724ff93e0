"""The index on disk: one FAISS index per modality, product metadata, a manifest.

Layout of an index directory (format 2)::

    CURRENT                 name of the live version (replaced atomically)
    versions/<n>/manifest.json, products.jsonl, <modality>.npy (float16), <modality>.faiss, ...
    versions/<n>/deltas/LIST, deltas/<seq>/...   small segments holding the adds (indexer.segments)
    cache.sqlite            embedding cache (see indexer.cache)

A version is a base segment, written once by a build, an ingest or a compaction, plus the
delta segments of the adds made since. A build or compaction writes a complete new version
beside the live one and only then swaps CURRENT with os.replace; an add writes one delta and
swaps the version's deltas/LIST the same way. A writer killed at any point leaves the previous
index loadable. Writers take an exclusive lock, readers never wait; readers notice a new
version or delta by re-reading CURRENT and LIST (`IndexStore.is_stale`).

Loading memory-maps the dense vectors (float16) and, where the type allows (Flat, IVF, HNSW in
this FAISS, read-only), the FAISS indexes, so the workers of a machine share them in the page cache. The
loaded base segment is kept per process (`_BASES`), so a reload after an add reads only the
deltas.

Format 1 indexes (float32 vectors, no deltas) are refused with "rebuild it with `python -m
indexer build`".
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections import ChainMap, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from .catalog import Product
from .encoders.base import MODALITIES, Encoder, l2_normalize, model_id
from .faiss_search import DEFAULT_SEARCH_PARAMS, apply_search_params, filtered_search, search_params
from .filters import CategoryIndex, PositionFilter
from .integrity import describe_files, verify_files
from .lexical import LexicalIndex
from .segments import VECTOR_DTYPE, StackedVectors, as_float32, read_list, write_delta
from .store_errors import DuplicateProduct, IndexDamaged, IndexMismatch, IndexNotFound, IndexStoreError
from .text import encoder_text

FORMAT_VERSION = 2
# Past this many rows in the deltas, an add compacts them into a new base (inline, under the
# write lock). bench/bench_scale.py prints the single-add latency and the compaction time.
DELTA_COMPACT_ROWS = int(os.environ.get("INDEX_DELTA_COMPACT_ROWS", "20000"))
_BASES_KEPT = 2
DEFAULT_FACTORY = "Flat"
CURRENT = "CURRENT"
VERSIONS = "versions"
KEEP_VERSIONS = 3

__all__ = [
    "DuplicateProduct",
    "IndexDamaged",
    "IndexMismatch",
    "IndexNotFound",
    "IndexStore",
    "IndexStoreError",
    "compact",
]


@dataclass
class ModalityIndex:
    """Vectors of one modality; `rows[i]` is the product row of vector i."""

    vectors: np.ndarray | StackedVectors
    rows: np.ndarray
    index: faiss.Index
    parts: tuple = ()  # the FAISS indexes an IndexShards searches: kept alive with it

    def search(
        self, queries: np.ndarray, k: int, allowed: PositionFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, product rows) of the k nearest vectors; rows are -1 past the end.

        Cost: the FAISS index's (Flat O(N·d), HNSW ~O(efSearch·log N·d), IVF O(nprobe·N/nlist·d)).
        With `allowed`, only those positions are returned (see `filtered_search`).
        """
        if allowed is not None:
            return filtered_search(self, queries, k, allowed)
        k = max(1, min(k, self.index.ntotal))
        if self.index.ntotal == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        sims, positions = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        rows = np.where(positions >= 0, self.rows[np.clip(positions, 0, None)], -1)
        return sims, rows

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def similarity(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Cosine similarity of one query to the vectors at `positions`."""
        return self.vectors[positions] @ query


def make_faiss_index(vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> faiss.Index:
    """A FAISS index over L2-normalised vectors, inner product (= cosine) metric."""
    dim = vectors.shape[1]
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if len(vectors) == 0:
            raise IndexStoreError(f"FAISS index {factory!r} needs training vectors")
        index.train(vectors)
    if len(vectors):
        index.add(vectors)
    return index


@dataclass
class IndexStore:
    """A loaded index version: products, per-modality vectors and FAISS indexes, manifest."""

    backend: ClassVar[str] = "faiss"  # indexer.backends: another backend subclasses this interface
    path: Path
    version: str
    manifest: dict
    products: list[Product]
    modalities: dict[str, ModalityIndex] = field(default_factory=dict)
    lexical: LexicalIndex | None = None
    deltas: tuple[str, ...] = ()
    base: _Base | None = field(default=None, repr=False, compare=False)
    _lookups: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- reading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        encoder: Encoder | None = None,
        version: str | None = None,
        checksums: bool = False,
    ) -> IndexStore:
        """Load the live version (or `version`); with `encoder`, refuse an index built by other models.

        Always checks each file's size against the manifest and the loaded arrays against its
        counts (O(files) beyond reading them); `checksums=True` also hashes every file first
        (O(bytes), see indexer.integrity). Any damage raises IndexDamaged naming the file.
        A Milvus location, or a folder routed to one, loads the Milvus store (indexer.backends).
        """
        from .backends import open_routed, routed

        location = routed(path)
        if location is not None:
            return open_routed(path, location, encoder)
        path = Path(path)
        version = version or read_current(path)
        vdir = path / VERSIONS / version
        label = f"index version {version} ({VERSIONS}/{version})"
        with _reading(vdir / "manifest.json", label):
            manifest = json.loads((vdir / "manifest.json").read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise ValueError("manifest is not a JSON object")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexMismatch(
                f"index {path} has format version {manifest.get('format_version')}, "
                f"this code reads version {FORMAT_VERSION}: rebuild it with `python -m indexer build`"
            )
        if encoder is not None:
            check_compatible(manifest, encoder)
        verify_files(vdir, manifest, checksums=checksums, label=label, remember=True)
        base = _load_base(vdir, manifest, label)
        settings = search_params(manifest)  # manifest's nprobe / efSearch, FAISS_* env overrides, per load
        for _, _, index in base.modalities.values():
            apply_search_params(index, settings)
        deltas = read_list(vdir)
        parts = [_load_delta(vdir / "deltas" / name, f"{label}, delta {name}", checksums) for name in deltas]
        return _combine(cls, path, version, manifest, base, deltas, parts)

    def is_stale(self) -> bool:
        """True when another process has published a newer version or delta: two small file reads."""
        try:
            current = read_current(self.path)
        except IndexNotFound:
            return False
        return current != self.version or read_list(self.path / VERSIONS / current) != self.deltas

    def delta_rows(self) -> int:
        """Products held in the delta segments (not yet compacted into the base)."""
        return len(self.products) - len(self.base.products) if self.base is not None else 0

    @property
    def profile(self) -> str:
        return self.manifest["profile"]

    def categories(self) -> list[str]:
        return sorted({p.category for p in self.products if p.category})

    def labels(self) -> np.ndarray:
        return np.array([p.category or "" for p in self.products], dtype=object)

    def product_rows(self) -> dict[str, int]:
        return {p.id: i for i, p in enumerate(self.products)}

    def row_of(self, product_id: str) -> int | None:
        """Row of a product id: the base's map is built once per process and base (O(N) once),
        the deltas' once per loaded store (O(delta rows))."""
        if "rows" not in self._lookups:
            if self.base is None:
                self._lookups["rows"] = self.product_rows()
            else:
                nb = len(self.base.products)
                delta = {p.id: nb + i for i, p in enumerate(self.products[nb:])}
                self._lookups["rows"] = ChainMap(delta, self.base.ids())
        return self._lookups["rows"].get(product_id)

    def category_index(self) -> CategoryIndex:
        """Rows and counts per category prefix, built once per loaded version (O(N) once)."""
        if "categories" not in self._lookups:
            self._lookups["categories"] = CategoryIndex(self, self.products)
        return self._lookups["categories"]

    def positions(self, channel: str) -> np.ndarray:
        """Product row -> position in the channel's vectors, -1 where the product lacks it."""
        key = ("positions", channel)
        if key not in self._lookups:
            positions = np.full(len(self.products), -1, np.int64)
            rows = self.channels()[channel].rows
            positions[rows] = np.arange(len(rows))
            self._lookups[key] = positions
        return self._lookups[key]

    def channels(self) -> dict:
        """Every searchable channel: the dense modalities, plus 'lexical' when present."""
        out: dict[str, ModalityIndex | LexicalIndex] = dict(self.modalities)
        if self.lexical is not None:
            out["lexical"] = self.lexical
        return out

    def strip_boilerplate(self) -> bool:
        return bool(self.manifest.get("text_normalisation", {}).get("strip_boilerplate", True))

    def product_text(self, product: Product) -> str:
        """The text this index encodes for a product (its own normalisation setting)."""
        return encoder_text(product.name, product.description, strip=self.strip_boilerplate())

    def vectors_by_row(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(float32 vectors, rows) of a modality: what the evaluation reads instead of re-encoding.
        O(N·d): a copy of the memory-mapped float16 vectors."""
        m = self.modalities[modality]
        return as_float32(m.vectors), np.asarray(m.rows)


@dataclass
class _Base:
    """A loaded base segment, shared by every store this process loads on it (`_BASES`)."""

    products: list[Product]
    modalities: dict[str, tuple[np.ndarray, np.ndarray, faiss.Index]]
    lexical: LexicalIndex | None
    _ids: dict[str, int] | None = None
    _categories: set[str] | None = None

    def categories(self) -> set[str]:
        """The base's leaf categories, scanned once per process and base: O(N) once."""
        if self._categories is None:
            self._categories = {p.category for p in self.products if p.category}
        return self._categories

    def ids(self) -> dict[str, int]:
        """Product id -> row, built once per process and base: O(N) once."""
        if self._ids is None:
            self._ids = {p.id: i for i, p in enumerate(self.products)}
        return self._ids


@dataclass
class _Delta:
    products: list[Product]
    manifest: dict
    vectors: dict[str, tuple[np.ndarray, np.ndarray]]
    lexical: tuple | None


_BASES: OrderedDict[tuple, _Base] = OrderedDict()
_DELTAS: OrderedDict[tuple, _Delta] = OrderedDict()
_DELTAS_KEPT = 4096
_BASES_LOCK = threading.Lock()


def _identity(vdir: Path, manifest: Mapping) -> tuple:
    """What makes a cached base valid: each file's inode, size, mtime and ctime. O(files)."""
    stats = [os.stat(vdir / name) for name in sorted(manifest.get("files", {})) + ["manifest.json"]]
    return (str(vdir.resolve()), *((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats))


def _read_vectors(file: Path, shape: tuple[int, int]) -> np.ndarray:
    """Memory-mapped float16 vectors (pages shared by every process that maps the file)."""
    vectors = np.load(file, mmap_mode="r", allow_pickle=False)
    _expect(vectors.shape == shape, f"shape {vectors.shape}, manifest says {shape}")
    _expect(vectors.dtype == VECTOR_DTYPE, f"dtype {vectors.dtype}, expected {np.dtype(VECTOR_DTYPE)}")
    return vectors


def _read_faiss(file: Path) -> faiss.Index:
    """The FAISS index, memory-mapped read-only where its type allows it (IO_FLAG_MMAP_IFC maps
    Flat codes, IVF lists and HNSW graphs in this FAISS: nothing copied at load, pages shared
    between workers), else read into memory. Writers never add to it: compaction reads its own
    copy."""
    for flags in (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY, faiss.IO_FLAG_MMAP):
        try:
            return faiss.read_index(str(file), flags)
        except RuntimeError:
            continue
    return faiss.read_index(str(file))


def _load_base(vdir: Path, manifest: dict, label: str) -> _Base:
    """The base segment of a version, from the process cache when its files are unchanged.

    First load: O(N) to parse products (and the lexical matrix), O(1) for the mapped vectors
    and FAISS indexes beyond the row checks; later loads: O(files)."""
    key = _identity(vdir, manifest)
    with _BASES_LOCK:
        if key in _BASES:
            _BASES.move_to_end(key)
            return _BASES[key]
    counts, dims = manifest.get("counts", {}), manifest.get("dims", {})
    with _reading(vdir / "products.jsonl", label):
        with open(vdir / "products.jsonl", encoding="utf-8") as fh:
            products = [Product.from_record(json.loads(line)) for line in fh if line.strip()]
        _expect(len(products) == counts.get("products"), f"{len(products)} products, manifest says {counts}")
    modalities = {}
    for modality in manifest["modalities"]:
        n, dim = counts.get(modality), dims.get(modality)
        with _reading(vdir / f"{modality}.npy", label):
            vectors = _read_vectors(vdir / f"{modality}.npy", (n, dim))
        with _reading(vdir / f"{modality}.rows.npy", label):
            rows = np.load(vdir / f"{modality}.rows.npy", allow_pickle=False)
            _expect(rows.shape == (n,) and rows.dtype.kind in "iu", f"rows {rows.shape}, expected ({n},)")
            _expect(n == 0 or (rows.min() >= 0 and rows.max() < len(products)), "rows point outside products")
        with _reading(vdir / f"{modality}.faiss", label):
            index = _read_faiss(vdir / f"{modality}.faiss")
            _expect(index.ntotal == n and index.d == dim, f"holds {index.ntotal} x {index.d}, expected {n} x {dim}")
        modalities[modality] = (vectors, rows, index)
    lexical = None
    if manifest.get("lexical"):
        with _reading(vdir / "lexical.npz", label):
            lexical = LexicalIndex.load(vdir)
            n = manifest["lexical"].get("count")
            _expect(lexical.ntotal == n and len(lexical.rows) == n, f"lexical holds {lexical.ntotal}, expected {n}")
            _expect(n == 0 or int(lexical.rows.max()) < len(products), "lexical rows point outside products")
    base = _Base(products, modalities, lexical)
    with _BASES_LOCK:
        _BASES[key] = base
        while len(_BASES) > _BASES_KEPT:
            _BASES.popitem(last=False)
    return base


def _load_delta(ddir: Path, label: str, checksums: bool) -> _Delta:
    """One delta segment, read whole: O(its rows); checksummed like a base. Kept per process
    (`_DELTAS`, keyed like the bases by its files' identity), so an add or a reload reads only
    the deltas this process has not seen."""
    import scipy.sparse as sp

    with _reading(ddir / "manifest.json", label):
        manifest = json.loads((ddir / "manifest.json").read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("manifest is not a JSON object")
    verify_files(ddir, manifest, checksums=checksums, label=label, remember=True)
    key = _identity(ddir, manifest)
    with _BASES_LOCK:
        if key in _DELTAS:
            return _DELTAS[key]
    counts = manifest.get("counts", {})
    with _reading(ddir / "products.jsonl", label):
        with open(ddir / "products.jsonl", encoding="utf-8") as fh:
            products = [Product.from_record(json.loads(line)) for line in fh if line.strip()]
        _expect(len(products) == counts.get("products"), f"{len(products)} products, manifest says {counts}")
    vectors = {}
    for modality in manifest.get("modalities", []):
        with _reading(ddir / f"{modality}.npy", label):
            vecs = np.load(ddir / f"{modality}.npy", allow_pickle=False)
            _expect(vecs.ndim == 2 and len(vecs) == counts.get(modality), f"{modality} shape {vecs.shape}")
            _expect(vecs.dtype == VECTOR_DTYPE, f"dtype {vecs.dtype}")
        with _reading(ddir / f"{modality}.rows.npy", label):
            rows = np.load(ddir / f"{modality}.rows.npy", allow_pickle=False)
            _expect(rows.shape == (len(vecs),), f"rows {rows.shape}, expected ({len(vecs)},)")
        vectors[modality] = (vecs, rows)
    lexical = None
    if "lexical" in counts:
        with _reading(ddir / "lexical.npz", label):
            matrix = sp.load_npz(ddir / "lexical.npz").tocsr()
            rows = np.load(ddir / "lexical.rows.npy", allow_pickle=False)
            _expect(matrix.shape[0] == len(rows) == counts["lexical"], "lexical rows disagree with the manifest")
        lexical = (matrix, rows)
    delta = _Delta(products, manifest, vectors, lexical)
    with _BASES_LOCK:
        _DELTAS[key] = delta
        while len(_DELTAS) > _DELTAS_KEPT:
            _DELTAS.popitem(last=False)
    return delta


def _combine(
    cls: type[IndexStore],
    path: Path,
    version: str,
    manifest: dict,
    base: _Base,
    names: tuple[str, ...],
    deltas: list[_Delta],
) -> IndexStore:
    """One store over a base and its deltas, without copying the base's vectors or indexes.

    A modality with deltas is searched through a FAISS IndexShards (the base's index + one
    exact Flat index over the deltas' rows, ids in order) and read through StackedVectors.
    Cost: O(delta rows) plus O(N) pointer copies for the product list, and O(nnz) to stack
    the lexical matrices when the deltas hold text."""
    products = list(base.products)
    for delta in deltas:
        products.extend(delta.products)
    modalities: dict[str, ModalityIndex] = {}
    for modality in sorted(set(base.modalities) | {m for d in deltas for m in d.vectors}):
        added = [d.vectors[modality] for d in deltas if modality in d.vectors]
        bvecs, brows, bindex = base.modalities.get(modality, (None, None, None))
        if not added:
            # no delta adds this modality, so it came from the base
            assert bvecs is not None and brows is not None and bindex is not None
            modalities[modality] = ModalityIndex(vectors=bvecs, rows=brows, index=bindex)
            continue
        dvecs = [v for v, _ in added]
        dim = dvecs[0].shape[1]
        flat = faiss.IndexFlatIP(dim)
        flat.add(np.ascontiguousarray(np.concatenate(dvecs), dtype=np.float32))
        # the stub omits SWIG's third argument, successive_ids
        shards = faiss.IndexShards(dim, False, True)  # type: ignore[call-arg]
        parts = (bindex, flat) if bindex is not None else (flat,)
        for part in parts:
            shards.add_shard(part)
        vparts = ([bvecs] if bvecs is not None else []) + dvecs
        rows = np.concatenate(([brows] if brows is not None else []) + [r for _, r in added])
        _expect(rows.max(initial=-1) < len(products), f"{modality} delta rows point outside products")
        modalities[modality] = ModalityIndex(vectors=StackedVectors(vparts), rows=rows, index=shards, parts=parts)
    lexical = base.lexical
    lex = [d.lexical for d in deltas if d.lexical is not None and d.lexical[0].shape[0]]
    if lexical is not None and lex:
        import scipy.sparse as sp

        lexical = lexical.extend(sp.vstack([m for m, _ in lex]).tocsr(), np.concatenate([r for _, r in lex]))
    manifest = dict(manifest)
    counts = dict(manifest.get("counts", {}))
    for delta in deltas:
        for key, value in delta.manifest.get("counts", {}).items():
            if key != "lexical":
                counts[key] = counts.get(key, 0) + value
    manifest["counts"] = counts
    if deltas:
        added_categories = {p.category for d in deltas for p in d.products if p.category}
        manifest["categories"] = sorted(base.categories() | added_categories)
        manifest["added_products"] = manifest.get("added_products", 0) + sum(len(d.products) for d in deltas)
        manifest["modalities"] = sorted(modalities)
        if manifest.get("lexical") and lexical is not None:
            manifest["lexical"] = dict(manifest["lexical"], count=int(lexical.ntotal))
        manifest["deltas"] = list(names)
    return cls(
        path=path,
        version=version,
        manifest=manifest,
        products=products,
        modalities=modalities,
        lexical=lexical,
        deltas=names,
        base=base,
    )


class _Mismatch(ValueError):
    pass


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise _Mismatch(message)


@contextmanager
def _reading(file: Path, label: str) -> Iterator[None]:
    """Turn whatever reading a damaged file raises (OSError, EOFError, ValueError, FAISS's
    RuntimeError, BadZipFile, zlib.error, ...) into IndexDamaged naming the file."""
    try:
        yield
    except IndexStoreError:
        raise
    except Exception as exc:  # a damaged file can fail in any reader's own way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IndexDamaged(f"{label}: {file.name} is damaged or unreadable ({reason[:200]})", file=file) from exc


def verify_version(path: str | Path, version: str | None = None, checksums: bool = True) -> IndexStore:
    """Load a version with every check (sizes, counts and, by default, checksums): what
    writers and `python -m indexer verify` call. O(bytes) with checksums."""
    return IndexStore.load(path, version=version, checksums=checksums)


def list_versions(path: str | Path) -> list[str]:
    """Complete version names, oldest first."""
    versions = Path(path) / VERSIONS
    if not versions.is_dir():
        return []
    return sorted(p.name for p in versions.iterdir() if p.name.isdigit() and (p / "manifest.json").is_file())


def last_verified(path: str | Path, checksums: bool = True) -> tuple[IndexStore | None, list[IndexDamaged]]:
    """The newest version that verifies (the live one first), and why newer ones were refused.

    O(bytes of each version tried) with checksums. (None, [...]) when none verifies.
    """
    path = Path(path)
    refused: list[IndexDamaged] = []
    try:
        current: str | None = read_current(path)
    except IndexNotFound:
        current = None
    order = ([current] if current else []) + [v for v in reversed(list_versions(path)) if v != current]
    for version in order:
        try:
            return IndexStore.load(path, version=version, checksums=checksums), refused
        except IndexDamaged as exc:
            refused.append(exc)
    return None, refused


def read_current(path: Path) -> str:
    pointer = Path(path) / CURRENT
    try:
        version = pointer.read_text().strip()
    except FileNotFoundError:
        raise IndexNotFound(
            f"no index at {path} (build one: python -m indexer build --data DATA_DIR --out {path})"
        ) from None
    if not (Path(path) / VERSIONS / version / "manifest.json").is_file():
        raise IndexNotFound(f"index {path} points at version {version!r}, which is incomplete")
    return version


def check_compatible(manifest: Mapping, encoder: Encoder) -> None:
    built = manifest.get("model_ids", {})
    dims = manifest.get("dims", {})
    if manifest.get("profile") != encoder.profile or any(
        built.get(m) != encoder.model_ids.get(m) or dims.get(m) != encoder.dims.get(m) for m in built
    ):
        raise IndexMismatch(
            f"index was built with profile {manifest.get('profile')!r} ({manifest.get('model_id')}), "
            f"but the encoder is {model_id(encoder)}; rebuild the index with --profile {encoder.profile} "
            f"or start with the {manifest.get('profile')!r} profile"
        )


# ---- writing -------------------------------------------------------------------------------
@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Exclusive lock serialising writers (builds, adds) across processes."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _next_version(path: Path) -> str:
    versions = path / VERSIONS
    existing = [int(p.name) for p in versions.glob("[0-9]*") if p.name.isdigit()] if versions.is_dir() else []
    return f"{max(existing, default=0) + 1:06d}"


def publish(
    path: str | Path,
    products: list[Product],
    vectors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    manifest: dict,
    factory: str = DEFAULT_FACTORY,
    indexes: Mapping[str, faiss.Index] | None = None,
    lexical: LexicalIndex | None = None,
) -> str:
    """Write a new complete version and make it live atomically; returns its name.

    `vectors[modality] = (vectors, rows)`; `indexes` may hand over FAISS indexes already
    holding those vectors (an add extends the live one instead of retraining). The
    caller holds `write_lock(path)`.
    """
    path = Path(path)
    (path / VERSIONS).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=path / VERSIONS))
    try:
        with open(staging / "products.jsonl", "w", encoding="utf-8") as fh:
            for product in products:
                fh.write(json.dumps(product.to_record(), ensure_ascii=False) + "\n")
        counts = {"products": len(products)}
        dims = {}
        for modality, (vecs, rows) in vectors.items():
            if modality not in MODALITIES:
                raise ValueError(f"unknown modality {modality!r}")
            vecs = l2_normalize(vecs)
            rows = np.asarray(rows, dtype=np.int64)
            np.save(staging / f"{modality}.npy", vecs.astype(VECTOR_DTYPE))
            np.save(staging / f"{modality}.rows.npy", rows)
            index = (indexes or {}).get(modality)
            if index is None:
                index = make_faiss_index(vecs, factory)
            if index.ntotal != len(vecs):
                raise IndexStoreError(f"{modality} index holds {index.ntotal} vectors, expected {len(vecs)}")
            faiss.write_index(index, str(staging / f"{modality}.faiss"))
            counts[modality] = int(len(vecs))
            dims[modality] = int(vecs.shape[1])
        if lexical is not None:
            lexical.save(staging)
        manifest = dict(manifest)
        manifest["lexical"] = (
            {"model_id": lexical.model_id, "vocabulary": lexical.dim, "count": int(lexical.ntotal)}
            if lexical is not None
            else None
        )
        manifest.update(
            format_version=FORMAT_VERSION,
            vector_dtype=np.dtype(VECTOR_DTYPE).name,
            modalities=sorted(vectors),
            counts=counts,
            dims=dims,
            index_factory=factory,
            search=manifest.get("search") or dict(DEFAULT_SEARCH_PARAMS),
            metric="inner_product",
            written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        for item in staging.iterdir():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
        manifest["files"] = describe_files(staging)  # sizes + checksums of what was synced: O(bytes)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with open(staging / "manifest.json", "rb") as fh:
            os.fsync(fh.fileno())
        version = _next_version(path)
        os.rename(staging, path / VERSIONS / version)
        _fsync_dir(path / VERSIONS)
        pointer_tmp = path / f".{CURRENT}.tmp"
        pointer_tmp.write_text(version + "\n")
        with open(pointer_tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(pointer_tmp, path / CURRENT)
        _fsync_dir(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _prune(path, keep=version)
    return version


def _prune(path: Path, keep: str) -> None:
    """Drop old versions (readers hold theirs in memory) and staging folders of writers
    that died: the caller holds the write lock, so no live writer owns one.

    `keep` is the version just published: its files were checksummed as written, and every
    writer verified the version it built on, so it is the last version that verified and is
    never deleted, whatever the version names."""
    versions = sorted(p for p in (path / VERSIONS).iterdir() if p.name.isdigit())
    for old in versions[:-KEEP_VERSIONS]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    _remove_staging(path)


def _remove_staging(path: Path) -> None:
    """Staging folders of writers that died (the caller holds the write lock)."""
    for staging in (path / VERSIONS).glob(".staging-*"):
        shutil.rmtree(staging, ignore_errors=True)


def append(
    store: IndexStore,
    new_products: list[Product],
    new_vectors: Mapping[str, np.ndarray | None],
    before_publish: Callable[[IndexStore], None] | None = None,
) -> IndexStore:
    """Add products to the live index as one delta segment: O(batch) whatever N is.

    `new_vectors[modality]` has one row per new product (NaN rows = modality absent).
    Re-reads the live version under the write lock so concurrent adds never lose data (the
    base comes from this process's cache when its files are unchanged, so only the deltas
    are read), and verifies checksums first (the base's once per process and file identity,
    the deltas' every time): an add never builds on damage. `before_publish(live)` runs under
    the lock once the add is known to win (no id clash), e.g. to move a staged photo into
    place. Past DELTA_COMPACT_ROWS delta rows the add compacts (see `compact`), inline.
    """
    if store.backend != "faiss":
        from .backends import append_to_backend

        return append_to_backend(store, new_products, new_vectors, before_publish)
    path = store.path
    with write_lock(path):
        _remove_staging(path)
        live = verify_version(path)
        clash = [p.id for p in new_products if live.row_of(p.id) is not None]
        if clash:
            raise DuplicateProduct(clash)
        if before_publish is not None:
            before_publish(live)
        start = len(live.products)
        vectors = {}
        for modality, added in new_vectors.items():
            if added is None:
                continue
            if modality not in MODALITIES:
                raise ValueError(f"unknown modality {modality!r}")
            added = np.asarray(added, dtype=np.float32)
            expected = (len(new_products), live.manifest.get("dims", {}).get(modality, added.shape[-1]))
            if added.shape != expected:  # a bad shape written into a delta would leave the index unloadable
                raise ValueError(f"{modality} vectors have shape {added.shape}, expected {expected}")
            keep = ~np.isnan(added).any(axis=1)
            vectors[modality] = (l2_normalize(added[keep]) if keep.any() else added[keep], start + np.flatnonzero(keep))
        lexical = None
        if live.lexical is not None:
            texts = [live.product_text(p) for p in new_products]
            has_text = np.flatnonzero([bool(t) for t in texts])
            lexical = (live.lexical.transform([texts[i] for i in has_text]), start + has_text)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_delta(
            path / VERSIONS / live.version,
            [p.to_record() for p in new_products],
            vectors,
            lexical,
            {"format_version": FORMAT_VERSION, "vector_dtype": np.dtype(VECTOR_DTYPE).name, "written_at": stamp},
        )
        out = IndexStore.load(path)
        if out.delta_rows() >= DELTA_COMPACT_ROWS:
            out = _compact_locked(out)
        return out


def compact(path: str | Path) -> IndexStore:
    """Merge the live version's deltas into a new base and publish it atomically (a new version).

    O(N): vectors are rewritten (float16) and checksummed, the FAISS index is the base's read
    into memory plus the deltas' vectors (no retraining, no graph rebuild from scratch). A
    compaction killed at any point leaves the live version (base + deltas) loadable."""
    path = Path(path)
    with write_lock(path):
        live = verify_version(path)
        return _compact_locked(live) if live.deltas else live


def _compact_locked(live: IndexStore) -> IndexStore:
    vdir = live.path / VERSIONS / live.version
    base = live.base
    vectors, indexes = {}, {}
    for modality, channel in live.modalities.items():
        stored = as_float32(channel.vectors)
        vectors[modality] = (stored, np.asarray(channel.rows))
        if base is not None and modality in base.modalities:
            index = faiss.read_index(str(vdir / f"{modality}.faiss"))  # a private, writable copy
            nb = len(base.modalities[modality][0])
            index.add(np.ascontiguousarray(l2_normalize(stored[nb:])))
            indexes[modality] = index
    manifest = {k: v for k, v in live.manifest.items() if k != "deltas"}
    manifest["compacted_from"] = {"version": live.version, "deltas": list(live.deltas)}
    publish(
        live.path,
        list(live.products),
        vectors,
        manifest,
        live.manifest["index_factory"],
        indexes,
        live.lexical,
    )
    return IndexStore.load(live.path)
