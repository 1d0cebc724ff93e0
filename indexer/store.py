"""The index on disk: one FAISS index per modality, product metadata, a manifest.

Layout of an index directory::

    CURRENT                 name of the live version (replaced atomically)
    versions/<n>/manifest.json, products.jsonl, <modality>.npy, <modality>.faiss
    cache.sqlite            embedding cache (see indexer.cache)

A writer builds a complete new version beside the live one and only then swaps
CURRENT with os.replace, so a build killed at any point leaves the previous index
loadable. Writers take an exclusive lock, readers never wait; readers notice a new
version by re-reading CURRENT (`IndexStore.is_stale`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .catalog import Product
from .encoders.base import MODALITIES, Encoder, l2_normalize, model_id
from .faiss_search import DEFAULT_SEARCH_PARAMS, apply_search_params, filtered_search, search_params
from .filters import CategoryIndex, PositionFilter
from .integrity import describe_files, verify_files
from .lexical import LexicalIndex
from .store_errors import DuplicateProduct, IndexDamaged, IndexMismatch, IndexNotFound, IndexStoreError
from .text import encoder_text

FORMAT_VERSION = 1
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
]


@dataclass
class ModalityIndex:
    """Vectors of one modality; `rows[i]` is the product row of vector i."""

    vectors: np.ndarray
    rows: np.ndarray
    index: faiss.Index

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

    path: Path
    version: str
    manifest: dict
    products: list[Product]
    modalities: dict[str, ModalityIndex] = field(default_factory=dict)
    lexical: LexicalIndex | None = None
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
        """
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
        verify_files(vdir, manifest, checksums=checksums, label=label)
        counts, dims = manifest.get("counts", {}), manifest.get("dims", {})
        with _reading(vdir / "products.jsonl", label):
            with open(vdir / "products.jsonl", encoding="utf-8") as fh:
                products = [Product.from_record(json.loads(line)) for line in fh if line.strip()]
            _expect(len(products) == counts.get("products"), f"{len(products)} products, manifest says {counts}")
        modalities = {}
        settings = search_params(manifest)  # manifest's nprobe / efSearch, FAISS_* env overrides
        for modality in manifest["modalities"]:
            n, dim = counts.get(modality), dims.get(modality)
            with _reading(vdir / f"{modality}.npy", label):
                vectors = np.load(vdir / f"{modality}.npy", allow_pickle=False)
                _expect(vectors.shape == (n, dim), f"shape {vectors.shape}, manifest says ({n}, {dim})")
            with _reading(vdir / f"{modality}.rows.npy", label):
                rows = np.load(vdir / f"{modality}.rows.npy", allow_pickle=False)
                _expect(rows.shape == (n,) and rows.dtype.kind in "iu", f"rows {rows.shape}, expected ({n},)")
                _expect(n == 0 or (rows.min() >= 0 and rows.max() < len(products)), "rows point outside products")
            with _reading(vdir / f"{modality}.faiss", label):
                index = faiss.read_index(str(vdir / f"{modality}.faiss"))
                _expect(index.ntotal == n and index.d == dim, f"holds {index.ntotal} x {index.d}, expected {n} x {dim}")
            apply_search_params(index, settings)
            modalities[modality] = ModalityIndex(vectors=vectors, rows=rows, index=index)
        lexical = None
        if manifest.get("lexical"):
            with _reading(vdir / "lexical.npz", label):
                lexical = LexicalIndex.load(vdir)
                n = manifest["lexical"].get("count")
                _expect(lexical.ntotal == n and len(lexical.rows) == n, f"lexical holds {lexical.ntotal}, expected {n}")
                _expect(n == 0 or int(lexical.rows.max()) < len(products), "lexical rows point outside products")
        return cls(
            path=path, version=version, manifest=manifest, products=products, modalities=modalities, lexical=lexical
        )

    def is_stale(self) -> bool:
        """True when another process has published a newer version."""
        try:
            return read_current(self.path) != self.version
        except IndexNotFound:
            return False

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
        """Row of a product id (the map is built once per loaded version)."""
        if "rows" not in self._lookups:
            self._lookups["rows"] = self.product_rows()
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
        out = dict(self.modalities)
        if self.lexical is not None:
            out["lexical"] = self.lexical
        return out

    def strip_boilerplate(self) -> bool:
        return bool(self.manifest.get("text_normalisation", {}).get("strip_boilerplate", True))

    def product_text(self, product: Product) -> str:
        """The text this index encodes for a product (its own normalisation setting)."""
        return encoder_text(product.name, product.description, strip=self.strip_boilerplate())

    def vectors_by_row(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, rows) of a modality: what the evaluation reads instead of re-encoding."""
        m = self.modalities[modality]
        return m.vectors, m.rows


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
            np.save(staging / f"{modality}.npy", vecs)
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
    for staging in (path / VERSIONS).glob(".staging-*"):
        shutil.rmtree(staging, ignore_errors=True)


def append(
    store: IndexStore,
    new_products: list[Product],
    new_vectors: Mapping[str, np.ndarray | None],
    before_publish: Callable[[IndexStore], None] | None = None,
) -> IndexStore:
    """Add products to the live index without re-encoding the existing ones.

    `new_vectors[modality]` has one row per new product (NaN rows = modality absent).
    Re-reads the live version under the write lock so concurrent adds never lose data, and
    verifies its checksums first (O(bytes)): an add never publishes damage as a new version.
    `before_publish(live)` runs under the lock once the add is known to win (no id clash),
    e.g. to move a staged photo into place.
    """
    path = store.path
    with write_lock(path):
        live = verify_version(path)
        known = {p.id for p in live.products}
        clash = [p.id for p in new_products if p.id in known]
        if clash:
            raise DuplicateProduct(clash)
        if before_publish is not None:
            before_publish(live)
        base = len(live.products)
        merged, indexes = {}, {}
        for modality in sorted(set(live.modalities) | {m for m, v in new_vectors.items() if v is not None}):
            old = live.modalities.get(modality)
            vecs = [old.vectors] if old else []
            rows = [old.rows] if old else []
            added = new_vectors.get(modality)
            if added is not None:
                added = np.asarray(added, dtype=np.float32)
                keep = ~np.isnan(added).any(axis=1)
                added = l2_normalize(added[keep]) if keep.any() else added[keep]
                vecs.append(added)
                rows.append(base + np.flatnonzero(keep))
                if old is not None:
                    old.index.add(added)
            if old is not None:
                indexes[modality] = old.index
            merged[modality] = (np.concatenate(vecs), np.concatenate(rows))
        lexical = live.lexical
        if lexical is not None:
            texts = [live.product_text(p) for p in new_products]
            has_text = np.flatnonzero([bool(t) for t in texts])
            lexical = lexical.extend(lexical.transform([texts[i] for i in has_text]), base + has_text)
        manifest = {k: v for k, v in live.manifest.items()}
        manifest["added_products"] = manifest.get("added_products", 0) + len(new_products)
        manifest["categories"] = sorted({p.category for p in live.products + list(new_products) if p.category})
        publish(
            path, live.products + list(new_products), merged, manifest, live.manifest["index_factory"], indexes, lexical
        )
        return IndexStore.load(path)
