"""The index on disk: one FAISS index per modality, product metadata, a manifest.

Layout of an index directory (format 3)::

    CURRENT                 name of the live version (replaced atomically)
    versions/<n>/manifest.json, products.sqlite, paths.npy, <modality>.npy (float16, or int8 +
                 <modality>.scale.npy), <modality>.faiss, lexical.{data,indices,indptr}.npy,
                 lexical.postings.*.npy, ...
    versions/<n>/deltas/LIST, deltas/<seq>/...   small segments holding the adds, deletes and
                                                 relabels (indexer.store.local.segments)
    cache.sqlite            embedding cache (see indexer.encoders.cache)
    audit.sqlite            the audit trail of every change (indexer.store.audit)

A version is a base segment, written once by a build, an ingest or a compaction, plus the
delta segments of the adds, deletes and relabels made since (`append`, `change`): a delete
tombstones rows and a relabel gives a row a new category path, both applied over the base
when a version loads, and compaction writes them into the new base (deleted rows dropped,
the rows after them renumbered; relabels baked in). A build or compaction writes a complete new version
beside the live one and only then swaps CURRENT with os.replace; an add writes one delta and
swaps the version's deltas/LIST the same way. A writer killed at any point leaves the previous
index loadable. Writers take an exclusive lock, readers never wait; readers notice a new
version or delta by re-reading CURRENT and LIST (`IndexStore.is_stale`).

Loading memory-maps the dense vectors (float16 or int8), the lexical arrays and, where the type
allows (Flat, IVF, HNSW in this FAISS, read-only), the FAISS indexes, so the workers of a machine
share them in the page cache. The
loaded base segment is kept per process (`_BASES`), so a reload after an add reads only the
deltas.

Product metadata of the base is read by key from SQLite and its category paths are int32 codes
(indexer.store.local.products_db): nothing is parsed per product at load, and a reload after an add costs
O(delta rows) for the products, whatever N is.

Older formats (1: float32 vectors, no deltas; 2: products.jsonl and lexical.npz in the base,
rebuilt into lists and postings on load) are refused with "rebuild it with `python -m indexer
build`".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from indexer.catalog.products import MODALITIES, Product
from indexer.encoders.base import Encoder, l2_normalize
from indexer.store import audit
from indexer.store.base import IndexStore, check_compatible, checked_change
from indexer.store.categories import CODE_DTYPE, CategoryCodes, count_prefixes, counts_from_json, counts_to_json
from indexer.store.errors import (
    DuplicateProduct,
    IndexDamaged,
    IndexMismatch,
    IndexNotFound,
    IndexStoreError,
    ProductNotFound,
)
from indexer.store.lexical import LexicalIndex, postings_cap
from indexer.store.local.faiss_search import (
    AUTO,
    ModalityIndex,
    apply_search_params,
    build_faiss_index,
    choose_factory,
    search_params,
)
from indexer.store.local.handover import (
    BaseWriterBusy,
    CarryRefused,
    Change,
    Snapshot,
    Target,
    base_lock,
    replay,
)
from indexer.store.local.integrity import verify_files
from indexer.store.local.products_db import PATHS_FILE, PRODUCTS_FILE, ProductRows, ProductTable, loaded_image_path
from indexer.store.local.seals import Pointer, SealBroken, open_manifest
from indexer.store.local.segments import (
    ADD,
    CHANGES,
    VECTOR_DTYPE,
    StackedVectors,
    StoredVectors,
    copy_delta,
    load_vectors,
    read_delta_list,
    read_jsonl,
    read_list,
    write_delta,
    write_list,
)
from indexer.store.local.versions import (
    CURRENT,
    KEEP_VERSIONS,
    VERSIONS,
    IndexRolledBack,
    commit_version,
    fsync_dir,
    interrupted_publish,
    list_versions,
    live_pointer,
    read_current,
    read_current_bytes,
    read_pointer,
    remove_staging,
    unsealed_allowed,
    write_current,
)
from indexer.store.local.writer import ADD_BATCH, BaseWriter, batches, staging_prefix, write_manifest
from indexer.store.locks import write_lock

FORMAT_VERSION = 3  # 3: products in SQLite + category codes, int8 or float16 vectors, mapped lexical arrays
# Past this many rows in the deltas, an add starts compacting them into a new base in a
# background thread. bench/bench_scale.py prints the single-add latency and the compaction time.
DELTA_COMPACT_ROWS = int(os.environ.get("INDEX_DELTA_COMPACT_ROWS", "20000"))
# ... or past this many delta segments: a reload costs O(deltas) (one small manifest each;
# bench_scale at 1M: 18 ms with 100 deltas), so one-product adds must not pile up 20000 of them.
DELTA_COMPACT_SEGMENTS = int(os.environ.get("INDEX_DELTA_COMPACT_SEGMENTS", "200"))
# ... or past this many deleted rows: searches filter them out (IndexStore.live_filter), and a
# compaction drops them for good (their vectors still take memory and scan time until then).
DELTA_COMPACT_DELETES = int(os.environ.get("INDEX_DELTA_COMPACT_DELETES", "1024"))
_BASES_KEPT = 2
DEFAULT_FACTORY = AUTO  # Flat below LARGE_BASE_ROWS vectors, IVF-PQ refined by stored vectors above

log = logging.getLogger(__name__)

__all__ = [
    "CURRENT",
    "KEEP_VERSIONS",
    "VERSIONS",
    "CarryRefused",
    "DuplicateProduct",
    "IndexRolledBack",
    "Snapshot",
    "IndexDamaged",
    "IndexMismatch",
    "IndexNotFound",
    "IndexStore",
    "LocalIndexStore",
    "IndexStoreError",
    "ProductNotFound",
    "change",
    "compact",
    "commit_version",
    "list_versions",
    "publish_base",
    "read_current",
    "writable_live",
]


def make_faiss_index(vectors: np.ndarray, factory: str = DEFAULT_FACTORY) -> faiss.Index:
    """A FAISS index over L2-normalised vectors, inner product (= cosine) metric ("auto" resolved
    by size, see indexer.store.local.faiss_search.choose_factory)."""
    factory = choose_factory(factory, len(vectors), int(vectors.shape[1]))
    try:
        return build_faiss_index(vectors, factory)[0]
    except ValueError as exc:
        raise IndexStoreError(str(exc)) from None


@dataclass
class LocalIndexStore(IndexStore):
    """A loaded version of a local index folder: FAISS indexes and stored vectors per modality,
    products in SQLite, lexical arrays, all memory-mapped (see the module docstring)."""

    backend: ClassVar[str] = "faiss"
    modalities: dict[str, ModalityIndex] = field(default_factory=dict)
    base: _Base | None = field(default=None, repr=False, compare=False)
    manifest_stamp: tuple = field(default=(), repr=False, compare=False)  # its manifest file's identity at load
    changed: int = 0  # change records (deletes, relabels) in the deltas
    segments: tuple = field(default=(), repr=False, compare=False)  # (base manifest, settings, deltas) read

    # ---- reading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        encoder: Encoder | None = None,
        version: str | None = None,
        checksums: bool = False,
        writer: bool = False,
    ) -> LocalIndexStore:
        """Load the live version (or `version`); with `encoder`, refuse an index built by other models.

        Always checks `CURRENT` and the seals of the manifests and delta LIST (indexer.store.local.
        seals: a flipped byte, a truncation, an edited value or a roll-back of `CURRENT` is refused),
        each file's size against the manifest and the loaded arrays against its counts (O(files)
        beyond reading them); `checksums=True` also hashes every file first (O(bytes), see
        indexer.store.local.integrity). Any damage raises IndexDamaged naming the file.
        `writer=True`: the caller holds the write lock (versions newer than `CURRENT` are judged
        at once, see indexer.store.local.versions.live_pointer).
        A local folder only: `indexer.store.open_store` chooses the backend for a location.
        """
        path = Path(path)
        pointer: Pointer | None = None
        if version is None:
            pointer = live_pointer(path, writer=writer)
            version = pointer.version
        vdir = path / VERSIONS / version
        label = f"index version {version} ({VERSIONS}/{version})"
        manifest, seal = _open_manifest(vdir / "manifest.json", label)
        if seal is None and not unsealed_allowed(path, version):
            raise IndexDamaged(
                f"{label}: manifest.json carries no seal, but this index is sealed (damaged, or replaced by "
                "an edited copy)",
                file=vdir / "manifest.json",
            )
        if pointer is not None:
            _check_pointer(path, pointer, seal, label)
        if encoder is not None:
            check_compatible(manifest, encoder)
        verify_files(vdir, manifest, checksums=checksums, label=label, remember=True)
        listed = read_delta_list(vdir)
        if seal is not None and not listed.sealed:
            raise IndexDamaged(
                f"{label}: deltas/LIST is missing or lost its check line (truncated or replaced)",
                file=vdir / "deltas" / "LIST",
            )
        base = _load_base(vdir, manifest, label)
        settings = search_params(manifest)  # manifest's nprobe / efSearch, FAISS_* env overrides, per load
        for _, _, index in base.modalities.values():
            apply_search_params(index, settings)
        deltas = listed.names
        parts = [
            _load_delta(vdir / "deltas" / name, f"{label}, delta {name}", checksums, expect, seal is not None)
            for name, expect in zip(listed.names, listed.seals, strict=True)
        ]
        if seal is not None and not version.startswith(".") and seal.get("version") != version:
            raise IndexDamaged(
                f"{label}: manifest.json was sealed as version {seal.get('version')}, not {version} (a copy of "
                "another version)",
                file=vdir / "manifest.json",
            )
        return cls._assemble(path, version, manifest, base, deltas, parts, settings)

    @classmethod
    def _assemble(
        cls,
        path: Path,
        version: str,
        manifest: dict,
        base: _Base,
        names: tuple[str, ...],
        parts: list[_Delta],
        settings: Mapping[str, int],
    ) -> LocalIndexStore:
        store = _combine(cls, path, version, manifest, base, names, parts)
        store.manifest_stamp = _stamp(path / VERSIONS / version / "manifest.json")
        for modality, channel in store.modalities.items():  # exact Flat bases need no re-scoring
            exact = (manifest.get("faiss") or {}).get(modality, {}).get("factory", "Flat") == "Flat"
            channel.refine = 1 if exact else settings["refine"]
        store.segments = (manifest, dict(settings), list(parts))
        return store

    def with_delta(self, name: str) -> LocalIndexStore:
        """This store plus the delta `name` its writer has just committed on top of it (the
        caller still holds the write lock, so nothing else changed): only that delta is read,
        the others are reused, O(that delta + `_combine`)."""
        manifest, settings, parts = self.segments
        label = f"index version {self.version} ({VERSIONS}/{self.version}), delta {name}"
        delta = _load_delta(self.path / VERSIONS / self.version / "deltas" / name, label, checksums=False)
        assert self.base is not None
        return type(self)._assemble(
            self.path, self.version, manifest, self.base, (*self.deltas, name), [*parts, delta], settings
        )

    def is_stale(self) -> bool:
        """True when another process has published a newer version or delta, when the version's
        manifest changed on disk, or when `CURRENT` or LIST turn out damaged (the caller's reload
        then refuses them): two small file reads and a stat."""
        try:
            current = read_current(self.path)
            if current != self.version or read_list(self.path / VERSIONS / current) != self.deltas:
                return True
        except IndexNotFound:
            return False
        except IndexDamaged:
            return True
        return (
            bool(self.manifest_stamp)
            and _stamp(self.path / VERSIONS / current / "manifest.json") != self.manifest_stamp
        )

    def delta_rows(self) -> int:
        """Products held in the delta segments (not yet compacted into the base)."""
        return len(self.products) - len(self.base.products) if self.base is not None else 0

    def past_compaction_threshold(self) -> bool:
        """Whether the deltas hold enough (rows, changes, segments or deleted rows) to compact."""
        return (
            self.delta_rows() + self.changed >= DELTA_COMPACT_ROWS
            or len(self.deltas) >= DELTA_COMPACT_SEGMENTS
            or len(self.deleted) >= DELTA_COMPACT_DELETES
        )


@dataclass
class _Base:
    """A loaded base segment, shared by every store this process loads on it (`_BASES`)."""

    products: ProductTable
    modalities: dict[str, tuple[StoredVectors, np.ndarray, faiss.Index]]
    lexical: LexicalIndex | None
    codes: CategoryCodes  # the base's rows only (memory-mapped paths.npy), counts from its manifest


@dataclass
class _Delta:
    products: list[Product]
    manifest: dict
    counts: dict[tuple[str, ...], int]  # products per category prefix (its manifest's, else counted)
    vectors: dict[str, tuple[StoredVectors, np.ndarray]]
    lexical: tuple | None
    changes: list[dict] = field(default_factory=list)  # a delete / relabel delta's records

    def events(self) -> list[dict]:
        """The audit events this delta committed (`indexer.store.audit`), in order."""
        if self.changes:
            return [c["event"] for c in self.changes]
        info = self.manifest.get("audit")
        return _add_events(self.products, info) if info else []  # none: a delta from before the trail


def _add_events(products: Iterable[Product], info: Mapping) -> list[dict]:
    """The audit events of an add (`info`: its event id, time, action, actor, notes per id)."""
    notes = info.get("notes") or {}
    return [
        audit.event(
            p.id,
            info["action"],
            info["actor"],
            None,
            dict(p.to_record(), **notes.get(p.id, {})),
            event_id=f"{info['event']}/{i}",
            at=info["time"],
        )
        for i, p in enumerate(products)
    ]


_BASES: OrderedDict[tuple, _Base] = OrderedDict()
_DELTAS: OrderedDict[tuple, _Delta] = OrderedDict()
_SEEN_DELTAS: OrderedDict[str, tuple[tuple, list[str], bool, _Delta]] = OrderedDict()  # folder -> (key, files, ...)
_DELTAS_KEPT = 4096
_BASES_LOCK = threading.Lock()


def _stamp(file: Path) -> tuple:
    """A file's identity (inode, size, mtime, ctime): any rewrite changes it. () when unreadable."""
    try:
        stat = os.stat(file)
    except OSError:
        return ()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def live_fingerprint(path: str | Path) -> tuple:
    """What a reader compares to know whether anything it refused has changed since: `CURRENT`'s
    bytes and the identity of the manifest and delta LIST it names. O(1)."""
    path = Path(path)
    raw = read_current_bytes(path)
    try:
        vdir = path / VERSIONS / read_current(path)
    except IndexStoreError:
        return (raw,)
    return (raw, _stamp(vdir / "manifest.json"), _stamp(vdir / "deltas" / "LIST"))


def _identity(vdir: Path, manifest: Mapping) -> tuple:
    """What makes a cached base valid: each file's inode, size, mtime and ctime. O(files)."""
    folder = os.path.abspath(vdir)  # not realpath: the inodes below tell files apart, and it costs a syscall a level
    stats = [os.stat(os.path.join(folder, name)) for name in sorted(manifest.get("files", {})) + ["manifest.json"]]
    return (folder, *((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats))


def _read_vectors(folder: Path, modality: str, dtype: str, shape: tuple[int, int]) -> StoredVectors:
    """Memory-mapped vectors in the manifest's precision (pages shared by every process that maps them)."""
    try:
        vectors = load_vectors(folder, modality, dtype, dim=shape[1])
    except ValueError as exc:
        raise _Mismatch(str(exc)) from exc
    _expect(vectors.shape == shape, f"shape {vectors.shape}, manifest says {shape}")
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

    First load: O(log N) to open the products' SQLite table, O(1) for the mapped category codes,
    vectors and FAISS indexes beyond the row checks (O(N) numpy range checks of the mapped
    rows and codes), O(nnz) for the lexical matrix; later loads: O(files)."""
    key = _identity(vdir, manifest)
    with _BASES_LOCK:
        if key in _BASES:
            _BASES.move_to_end(key)
            return _BASES[key]
    counts, dims = manifest.get("counts", {}), manifest.get("dims", {})
    catalog = manifest.get("catalog") or {}
    with _reading(vdir / "manifest.json", label):
        n_products = int(counts["products"])
        paths = [tuple(str(level) for level in p) for p in catalog["paths"]]
        prefix_counts = counts_from_json(catalog["counts"])
        _expect(catalog.get("products") == n_products, f"catalog holds {catalog.get('products')}, counts {counts}")
    products = ProductTable(vdir / PRODUCTS_FILE, n_products, label)
    with _reading(vdir / PRODUCTS_FILE, label):
        products.check()
    with _reading(vdir / PATHS_FILE, label):
        codes = np.load(vdir / PATHS_FILE, mmap_mode="r", allow_pickle=False)
        _expect(codes.shape == (n_products,) and codes.dtype == CODE_DTYPE, f"codes {codes.shape} {codes.dtype}")
        _expect(
            n_products == 0 or (int(codes.min()) >= -1 and int(codes.max()) < len(paths)), "codes outside the paths"
        )
    modalities = {}
    for modality in manifest["modalities"]:
        n, dim = counts.get(modality), dims.get(modality)
        with _reading(vdir / f"{modality}.npy", label):
            vectors = _read_vectors(vdir, modality, manifest.get("vector_dtype", "float16"), (n, dim))
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
        with _reading(vdir / "lexical.data.npy", label):
            lexical = LexicalIndex.load(vdir, postings_cap(manifest["lexical"].get("cap")))
            n = manifest["lexical"].get("count")
            _expect(lexical.ntotal == n and len(lexical.rows) == n, f"lexical holds {lexical.ntotal}, expected {n}")
            _expect(n == 0 or int(lexical.rows.max()) < len(products), "lexical rows point outside products")
    base = _Base(products, modalities, lexical, CategoryCodes(paths, codes, np.zeros(0, CODE_DTYPE), prefix_counts))
    with _BASES_LOCK:
        _BASES[key] = base
        while len(_BASES) > _BASES_KEPT:
            _BASES.popitem(last=False)
    return base


_SEALED: dict[str, bytes] = {}  # manifest path -> the bytes whose seal verified last


def _open_manifest(file: Path, label: str) -> tuple[dict, dict | None]:
    """A manifest read and its seal checked: (manifest, seal or None when unsealed). A broken
    seal is damage whatever the manifest says (a flipped byte may name another format); an intact
    manifest of another format version is refused as such (IndexMismatch). Bytes equal to those
    that verified last in this process are only parsed (a reload after an add: O(size) compare)."""
    with _reading(file, label):
        raw = file.read_bytes()
    if _SEALED.get(str(file)) == raw:
        manifest = json.loads(raw)
        seal = manifest.get("seal")
    else:
        try:
            manifest, seal = open_manifest(raw)
        except SealBroken as exc:
            raise IndexDamaged(f"{label}: {file.name} is damaged or was edited: {exc}", file=file) from None
        with _BASES_LOCK:
            if len(_SEALED) > _DELTAS_KEPT:
                _SEALED.clear()
            _SEALED[str(file)] = raw
    if manifest.get("format_version") != FORMAT_VERSION:
        _refuse_format(file.parent, manifest)
    return manifest, seal


def _refuse_format(folder: Path, manifest: Mapping) -> None:
    raise IndexMismatch(
        f"index {folder} has format version {manifest.get('format_version')}, "
        f"this code reads version {FORMAT_VERSION}: rebuild it with `python -m indexer build`"
    )


def _check_pointer(path: Path, pointer: Pointer, seal: Mapping | None, label: str) -> None:
    """`CURRENT` and the manifest it names agree: a sealed pointer names the manifest's seal, and a
    one-line (pre-seal) pointer never names a sealed manifest (that is a truncated `CURRENT`)."""
    if pointer.legacy and seal is not None:
        raise IndexDamaged(
            f"index {path}: CURRENT names version {pointer.version} without its seal, but that version is "
            "sealed: CURRENT was truncated or replaced",
            file=path / CURRENT,
        )
    if not pointer.legacy and (seal is None or seal.get("digest") != pointer.manifest):
        raise IndexDamaged(
            f"{label}: its manifest is not the one CURRENT names (seal {str((seal or {}).get('digest'))[:12]}, "
            f"CURRENT expects {str(pointer.manifest)[:12]}): the manifest was replaced",
            file=path / VERSIONS / pointer.version / "manifest.json",
        )


def _seen_delta(ddir: Path, checksums: bool) -> _Delta | None:
    """The delta this process already loaded from `ddir`, if none of its files changed since
    (inode, size, mtime, ctime of each, as `_identity`; sizes are what `verify_files` checks)
    and it was checksummed then if `checksums` asks for it: a few stats, no file read, so a
    reload costs O(deltas) stats (a writer reloads twice per add, delete or relabel)."""
    folder = os.path.abspath(ddir)
    with _BASES_LOCK:
        seen = _SEEN_DELTAS.get(folder)
    if seen is None or (checksums and not seen[2]):
        return None
    key, names, _, delta = seen
    try:
        stats = [os.stat(os.path.join(folder, name)) for name in names]
    except OSError:
        return None  # the full path names the missing file
    now = (folder, *((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in stats))
    return delta if now == key else None


def _check_delta_seal(seal: Mapping | None, expect: str | None, sealed: bool, ddir: Path, label: str) -> None:
    """A delta's manifest is the one its version's LIST records (`expect`; `sealed`: the version
    is sealed, so the delta must be)."""
    if (expect is not None or sealed) and (seal is None or seal.get("digest") != expect):
        raise IndexDamaged(
            f"{label}: manifest.json is not the one deltas/LIST records (replaced or edited)",
            file=ddir / "manifest.json",
        )


def _load_delta(ddir: Path, label: str, checksums: bool, expect: str | None = None, sealed: bool = False) -> _Delta:
    """One delta segment, read whole: O(its rows); its manifest's seal checked against LIST's
    record (`_check_delta_seal`), its files checksummed like a base's. Kept per process
    (`_DELTAS`, keyed like the bases by its files' identity), so an add or a reload reads only
    the deltas this process has not seen (`_seen_delta`: a few stats each)."""
    import scipy.sparse as sp

    seen = _seen_delta(ddir, checksums)
    if seen is not None:
        _check_delta_seal(seen.manifest.get("seal"), expect, sealed, ddir, label)
        return seen
    manifest, seal = _open_manifest(ddir / "manifest.json", label)
    _check_delta_seal(seal, expect, sealed, ddir, label)
    verify_files(ddir, manifest, checksums=checksums, label=label, remember=True)
    key = _identity(ddir, manifest)
    names = [*sorted(manifest.get("files", {})), "manifest.json"]
    with _BASES_LOCK:
        before = _SEEN_DELTAS.get(key[0])
        checksums = checksums or (before is not None and before[0] == key and before[2])  # once hashed, stays so
        if key in _DELTAS:
            _SEEN_DELTAS[key[0]] = (key, names, checksums, _DELTAS[key])
            return _DELTAS[key]
    counts = manifest.get("counts", {})
    products: list[Product] = []
    if counts.get("products") or not counts.get("changes"):  # a change delta holds no products file
        with _reading(ddir / "products.jsonl", label), open(ddir / "products.jsonl", encoding="utf-8") as fh:
            products = [_delta_product(json.loads(line), ddir) for line in fh if line.strip()]
    with _reading(ddir / "manifest.json", label):
        _expect(len(products) == counts.get("products"), f"{len(products)} products, manifest says {counts}")
        stored = manifest.get("category_counts")
        paths = (p.category_path for p in products)
        prefix_counts = counts_from_json(stored) if stored is not None else count_prefixes(paths)
    vectors = {}
    for modality in manifest.get("modalities", []):
        with _reading(ddir / f"{modality}.npy", label):
            try:
                vecs = load_vectors(ddir, modality, manifest.get("vector_dtype", "float16"), mmap=False)
            except ValueError as exc:
                raise _Mismatch(str(exc)) from exc
            _expect(len(vecs) == counts.get(modality), f"{modality} shape {vecs.shape}")
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
    changes: list[dict] = []
    if counts.get("changes"):
        with _reading(ddir / CHANGES, label):
            changes = read_jsonl(ddir / CHANGES)
            _expect(len(changes) == counts["changes"], f"{len(changes)} changes, manifest says {counts}")
            for record in changes:
                _expect(
                    record.get("op") in ("delete", "relabel") and isinstance(record.get("row"), int),
                    f"a change record without op and row: {str(record)[:80]}",
                )
                if record["op"] == "relabel":
                    record["product"] = _delta_product(record["product"], ddir)
    delta = _Delta(products, manifest, prefix_counts, vectors, lexical, changes)
    with _BASES_LOCK:
        _DELTAS[key] = delta
        _SEEN_DELTAS[key[0]] = (key, names, checksums, delta)
        while len(_DELTAS) > _DELTAS_KEPT:
            _DELTAS.popitem(last=False)
        while len(_SEEN_DELTAS) > _DELTAS_KEPT:
            _SEEN_DELTAS.popitem(last=False)
    return delta


def _delta_product(record: dict, ddir: Path) -> Product:
    """A delta's product record; a relative image path is inside the index folder (versions/<n>/deltas/<d>)."""
    product = Product.from_record(record)
    if product.image_path is not None and not product.image_path.is_absolute():
        product = dataclasses.replace(product, image_path=loaded_image_path(str(product.image_path), ddir.parents[3]))
    return product


def _combine(
    cls: type[LocalIndexStore],
    path: Path,
    version: str,
    manifest: dict,
    base: _Base,
    names: tuple[str, ...],
    deltas: list[_Delta],
) -> LocalIndexStore:
    """One store over a base and its deltas, without copying the base's vectors or indexes.

    A modality with deltas is searched through a FAISS IndexShards (the base's index + one
    exact Flat index over the deltas' rows, ids in order) and read through StackedVectors.
    Cost: O(delta rows) for the products and their category codes (the base's SQLite table
    and mapped codes are shared, not copied), O(deltas · prefixes) for the category counts,
    and O(delta nnz) for the lexical deltas (their own small matrix, searched beside the base's),
    plus O(M log M) for the M rows deleted or relabelled (`CategoryCodes.with_changes`)."""
    added_products = [p for d in deltas for p in d.products]
    codes = base.codes.extended([(d.products, d.counts) for d in deltas])
    total = len(base.products) + len(added_products)
    relabeled: dict[int, Product] = {}
    gone: set[int] = set()
    changes: list[tuple[int, tuple[str, ...] | None]] = []
    for delta in deltas:
        for record in delta.changes:
            row = record["row"]
            _expect(0 <= row < total and row not in gone, f"a change names row {row}, deleted or outside products")
            if record["op"] == "delete":
                gone.add(row)
                relabeled.pop(row, None)
                changes.append((row, None))
            else:
                relabeled[row] = record["product"]
                changes.append((row, tuple(record["product"].category_path)))
    codes = codes.with_changes(changes)
    products = ProductRows(base.products, added_products, codes, relabeled)
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
        lexical = lexical.with_delta(lex)
    manifest = dict(manifest)
    counts = dict(manifest.get("counts", {}))
    for delta in deltas:
        for key, value in delta.manifest.get("counts", {}).items():
            if key != "lexical":
                counts[key] = counts.get(key, 0) + value
    manifest["counts"] = counts
    if deltas:
        manifest["categories"] = codes.categories()
        manifest["added_products"] = manifest.get("added_products", 0) + sum(len(d.products) for d in deltas)
        manifest["modalities"] = sorted(modalities)
        if manifest.get("lexical") and lexical is not None:
            manifest["lexical"] = dict(manifest["lexical"], count=int(lexical.ntotal))
        manifest["deltas"] = list(names)
        if gone:
            manifest["deleted_products"] = len(gone)
        if relabeled:
            manifest["relabeled_products"] = len(relabeled)
    return cls(
        path=path,
        version=version,
        manifest=manifest,
        products=products,
        modalities=modalities,
        lexical=lexical,
        deltas=names,
        deleted=np.asarray(sorted(gone), dtype=np.int64),
        base=base,
        changed=len(changes),
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


def verify_version(
    path: str | Path, version: str | None = None, checksums: bool = True, writer: bool = False
) -> LocalIndexStore:
    """Load a version with every check (pointer, seals, sizes, counts and, by default,
    checksums): what writers and `python -m indexer verify` call. O(bytes) with checksums."""
    return LocalIndexStore.load(path, version=version, checksums=checksums, writer=writer)


def writable_live(path: str | Path) -> LocalIndexStore:
    """The live version a writer builds on, every check and checksum passed. The caller holds the
    write lock.

    Removes the staging folders of dead writers first. A publish killed between its rename and
    its `CURRENT` swap is completed here (the newer version follows `CURRENT`'s directly in the
    seal chain and verifies). Anything else wrong (a damaged `CURRENT`, a roll-back, damaged
    files) raises IndexDamaged: no writer builds on damage, and `python -m indexer repair`
    restores `CURRENT`."""
    path = Path(path)
    remove_staging(path)
    try:
        return verify_version(path, writer=True)
    except IndexRolledBack as exc:
        pending = interrupted_publish(path, exc)
        if pending is None:
            raise
        verify_version(path, pending, writer=True)
        write_current(path, pending)
        log.warning("index %s: completed the publish of version %s that a killed writer left", path, pending)
        return verify_version(path, writer=True)


def last_verified(path: str | Path, checksums: bool = True) -> tuple[LocalIndexStore | None, list[IndexDamaged]]:
    """The version to serve when the live one cannot be: `CURRENT`'s when it and its version are
    sound, else the newest version that verifies; and why the others were refused (newest first).

    O(bytes of each version tried) with checksums. (None, [...]) when none verifies."""
    path = Path(path)
    refused: list[IndexDamaged] = []
    tried = None
    try:
        tried = live_pointer(path).version
        return LocalIndexStore.load(path, checksums=checksums), refused
    except IndexNotFound:
        if not list_versions(path):
            return None, refused
    except IndexDamaged as exc:
        refused.append(exc)
    for version in reversed(list_versions(path)):
        if version == tried:
            continue
        try:
            return LocalIndexStore.load(path, version=version, checksums=checksums), refused
        except IndexDamaged as exc:
            refused.append(exc)
    return None, refused


def kept_products(path: str | Path) -> Callable[[str], bool]:
    """Whether a product id is held by any version kept in the folder (the live one and those a
    fall-back may serve): what must keep its photo. Reads each kept version's delta ids once;
    each call is one SQLite lookup per kept version (KEEP_VERSIONS, plus any newer). A version
    that cannot be read makes every id count as held: a photo is never removed on a guess."""
    path = Path(path)
    tables: list[ProductTable] = []
    ids: set[str] = set()
    try:
        for version in list_versions(path):
            vdir = path / VERSIONS / version
            manifest = json.loads((vdir / "manifest.json").read_bytes())
            tables.append(ProductTable(vdir / PRODUCTS_FILE, int(manifest["counts"]["products"])))
            for name in read_list(vdir):
                with open(vdir / "deltas" / name / "products.jsonl", encoding="utf-8") as fh:
                    ids.update(json.loads(line)["id"] for line in fh if line.strip())
    except (OSError, ValueError, KeyError, TypeError, IndexStoreError) as exc:
        log.warning("index %s: a kept version cannot be read (%s): every photo is kept", path, exc)
        return lambda product_id: True

    def held(product_id: str) -> bool:
        try:
            return product_id in ids or any(table.row_of(product_id) is not None for table in tables)
        except IndexStoreError:
            return True

    return held


def publish(
    path: str | Path,
    products: Iterable[Product],
    vectors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    manifest: dict,
    factory: str = DEFAULT_FACTORY,
    indexes: Mapping[str, faiss.Index] | None = None,
    lexical: LexicalIndex | None = None,
) -> str:
    """Write a new complete version and make it live atomically; returns its name. Low level: it
    carries nothing (writers that run beside adds use `publish_base`); the caller holds
    `write_lock(path)`.

    `vectors[modality] = (vectors, rows)`; `indexes` may hand over FAISS indexes already
    holding those vectors. `products` may be any iterable (a list, a loaded store's
    ProductRows, a generator): they are streamed into the base's SQLite table in batches
    (`ProductsWriter`), so the products cost O(batch) memory here; their category codes and
    prefix counts go to paths.npy and the manifest's `catalog`. Duplicate ids are refused.
    """
    staging = stage_version(path, products, vectors, manifest, factory, indexes, lexical)
    return commit_version(Path(path), staging, _pointer_or_none(Path(path)))


def _pointer_or_none(path: Path) -> Pointer | None:
    try:
        return read_pointer(path)
    except IndexStoreError:
        return None


def stage_version(
    path: str | Path,
    products: Iterable[Product],
    vectors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    manifest: dict,
    factory: str = DEFAULT_FACTORY,
    indexes: Mapping[str, faiss.Index] | None = None,
    lexical: LexicalIndex | None = None,
) -> Path:
    """Write a complete version into a staging folder (fsync'd, checksummed) without making it
    live: `commit_version` does that. Needs no lock (background compaction writes its base
    while adds go on); the staging folder is removed if writing fails."""
    dims = {m: np.shape(v)[1] for m, (v, _) in vectors.items()}
    expected = len(products) if isinstance(products, Sized) else max((len(v) for v, _ in vectors.values()), default=0)
    writer = new_base_writer(path, dims, factory, indexes, expected, manifest.get("faiss"))
    with writer:
        writer.add_all_products(products)
        for modality, (vecs, rows) in vectors.items():
            writer.add_vectors(modality, vecs, rows)
        return finish_base(writer, manifest, lexical)


def new_base_writer(
    path: str | Path,
    dims: Mapping[str, int],
    factory: str = DEFAULT_FACTORY,
    indexes: Mapping[str, faiss.Index] | None = None,
    expected_rows: int = 0,
    built: Mapping[str, Mapping] | None = None,
) -> BaseWriter:
    """A writer of a new base segment staged under `path` (see indexer.store.local.writer):
    `expected_rows` picks the vectors' precision and resolves an "auto" factory."""
    return BaseWriter(Path(path) / VERSIONS, dims, factory, indexes, expected_rows, built)


def finish_base(writer: BaseWriter, manifest: Mapping, lexical: LexicalIndex | None = None) -> Path:
    """Finish a staged base with this store format's manifest fields; the staging folder. A seal
    copied from the version it came from is dropped: the publish seals it afresh."""
    fields = {k: v for k, v in manifest.items() if k not in ("seal", "deltas", "handed_over")}
    staging, _ = writer.finish(dict(fields, format_version=FORMAT_VERSION), lexical)
    return staging


def publish_base(
    path: str | Path,
    staging: Path,
    snapshot: Snapshot,
    writer: str,
    amend: Callable[[IndexStore], Mapping] | None = None,
    reencode: Callable[[list[Product]], Mapping[str, np.ndarray]] | None = None,
    continues: bool = False,
    dropped: np.ndarray | None = None,
) -> str | None:
    """Make a staged base live under the hand-over rule (indexer.store.local.handover); its name.

    The caller holds `base_lock(path)` and read `snapshot`. `amend(staged store)` first returns
    manifest entries computed on exactly the vectors that will be served (the calibration).
    The deltas committed to the snapshot's version since are carried into the new version:
    hard-linked when the staged base `continues` the snapshot's rows (a compaction: renumbered
    past the deleted rows it `dropped`), else
    replayed on it (most of them before the write lock is taken, the rest under it; `reencode`
    makes vectors for adds of other models). A live version that no longer verifies is replaced
    (nothing can have been added to it). A compaction whose version was replaced meanwhile is
    dropped (None); a rebuild refuses (CarryRefused). On any failure the staging folder is removed.
    """
    path = Path(path)
    try:
        if amend is not None:
            staged = LocalIndexStore.load(path, version=staging.name)
            manifest = json.loads((staging / "manifest.json").read_text(encoding="utf-8"))
            manifest.update(amend(staged))
            write_manifest(staging, manifest)
            del staged
        carried: list[str] = []
        if not continues and snapshot.version is not None:
            carried += _carry_unlocked(path, staging, snapshot, writer, reencode)
        with write_lock(path):
            try:
                live: LocalIndexStore | None = writable_live(path)
            except IndexNotFound:
                live = None
            except IndexDamaged as exc:
                if continues:
                    raise
                log.warning("index %s: the %s replaces a live version that does not verify: %s", path, writer, exc)
                live = None
            if live is not None and live.version != snapshot.version:
                if continues:
                    shutil.rmtree(staging, ignore_errors=True)
                    return None
                raise CarryRefused(
                    f"version {live.version} was published while this {writer} ran (it started from version "
                    f"{snapshot.version}); nothing was published: run it again"
                )
            previous = None
            if live is not None:
                done = (*snapshot.deltas, *carried)
                if live.deltas[: len(done)] != done:
                    raise IndexStoreError(f"deltas of version {live.version} changed under this {writer}")
                rest = live.deltas[len(done) :]
                if continues:
                    gone = dropped if dropped is not None else np.zeros(0, np.int64)
                    _carry_deltas(path / VERSIONS / live.version, staging, rest, gone)
                    carried += rest
                else:
                    carried += _carry(staging, live, rest, writer, reencode)
                previous = read_pointer(path)
                if carried:
                    _record_hand_over(staging, live.version, carried)
            return commit_version(path, staging, previous)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _record_hand_over(staging: Path, version: str, names: Sequence[str]) -> None:
    manifest = json.loads((staging / "manifest.json").read_text(encoding="utf-8"))
    manifest["handed_over"] = {"version": version, "deltas": list(names)}
    write_manifest(staging, manifest)


def _carry_unlocked(
    path: Path,
    staging: Path,
    snapshot: Snapshot,
    writer: str,
    reencode: Callable[[list[Product]], Mapping[str, np.ndarray]] | None,
) -> list[str]:
    """Replay the deltas committed to the snapshot's version so far, without the write lock (a
    committed delta never changes), so that the locked hand-over has little left to do."""
    try:
        live = verify_version(path, snapshot.version)
    except IndexDamaged:
        return []  # checked again under the lock
    if live.deltas[: len(snapshot.deltas)] != snapshot.deltas:
        return []
    return _carry(staging, live, live.deltas[len(snapshot.deltas) :], writer, reencode)


def _carry(
    staging: Path,
    source: LocalIndexStore,
    names: Sequence[str],
    writer: str,
    reencode: Callable[[list[Product]], Mapping[str, np.ndarray]] | None,
) -> list[str]:
    """Replay deltas `names` of the loaded `source` version on the rebuilt base staged in
    `staging`, as new deltas of it (indexer.store.local.handover.replay). O(their rows)."""
    if not names:
        return []
    path = source.path
    vdir = path / VERSIONS / source.version
    staged = LocalIndexStore.load(path, version=staging.name)
    same = {k: staged.manifest.get(k) for k in ("model_ids", "dims")} == {
        k: source.manifest.get(k) for k in ("model_ids", "dims")
    }
    target = Target(
        rows=len(staged.products),
        base_row=staged.row_of,
        base_product=lambda row: staged.products[row],
        same_models=same,
        reencode=reencode,
        writer=writer,
    )
    listed = read_delta_list(vdir)
    seals = dict(zip(listed.names, listed.seals, strict=True))
    sealed = "seal" in source.manifest
    starts, start = {}, len(source.base.products) if source.base is not None else 0
    deltas = {}
    for name in source.deltas:
        label = f"index version {source.version}, delta {name}"
        deltas[name] = _load_delta(vdir / "deltas" / name, label, True, seals.get(name), sealed)
        starts[name] = start
        start += len(deltas[name].products)
    for name in names:
        delta = deltas[name]
        change = Change(
            source.version, name, delta.manifest, delta.products, delta.vectors, starts[name], delta.changes
        )
        replayed = replay(change, target)
        if change.changes and not replayed.changes:
            continue  # changes of products the new version does not hold: nothing left to carry
        lexical = None
        if staged.lexical is not None and replayed.products:
            texts = [staged.product_text(p) for p in replayed.products]
            has_text = np.flatnonzero([bool(t) for t in texts])
            lexical = (staged.lexical.transform([texts[i] for i in has_text]), target.rows + has_text)
        manifest = {
            "format_version": FORMAT_VERSION,
            "vector_dtype": np.dtype(VECTOR_DTYPE).name,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "category_counts": counts_to_json(count_prefixes(p.category_path for p in replayed.products)),
            "kind": change.kind,
            "carried_from": {"version": source.version, "delta": name},
        }
        if delta.manifest.get("audit"):
            manifest["audit"] = delta.manifest["audit"]  # the same events: recorded once (by their ids)
        write_delta(
            staging,
            [p.to_record() for p in replayed.products],
            replayed.vectors,
            lexical,
            manifest,
            changes=replayed.changes or None,
        )
        target.rows += len(replayed.products)
    return list(names)


def append(
    store: LocalIndexStore,
    new_products: list[Product],
    new_vectors: Mapping[str, np.ndarray | None],
    before_publish: Callable[[IndexStore], None] | None = None,
    compact_past_threshold: bool = True,
    action: str = "add",
    actor: str = "cli",
    notes: Mapping[str, Mapping] | None = None,
) -> LocalIndexStore:
    """Add products to the live index as one delta segment: O(batch) whatever N is.

    Each product added is an audit event (`action` by `actor`; `notes[id]`, e.g. the decision
    of an automatic listing, joins its `after`), kept in the delta and recorded in the index's
    audit trail right after the commit (see `indexer.store.audit`).

    `new_vectors[modality]` has one row per new product (NaN rows = modality absent).
    Re-reads the live version under the write lock so concurrent adds never lose data (the
    base comes from this process's cache when its files are unchanged, so only the deltas
    are read), and verifies checksums first (the base's once per process and file identity,
    the deltas' every time): an add never builds on damage. `before_publish(live)` runs under
    the lock once the add is known to win (no id clash), e.g. to move a staged photo into
    place. Past DELTA_COMPACT_ROWS delta rows or DELTA_COMPACT_SEGMENTS deltas the add starts a
    background compaction (see
    `compact`) and returns at once: adds made meanwhile go on to deltas and are carried over.
    """
    path = store.path
    info: dict[str, Any] = {"event": audit.new_event_id(), "time": audit.utc_now(), "action": action, "actor": actor}
    if notes:
        info["notes"] = {str(k): dict(v) for k, v in notes.items()}
    events = _add_events(new_products, info)  # checks the action and actor before anything is written
    with write_lock(path):
        live = writable_live(path)
        _journal_last(live)
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
        name = write_delta(
            path / VERSIONS / live.version,
            [p.to_record() for p in new_products],
            vectors,
            lexical,
            {
                "format_version": FORMAT_VERSION,
                "vector_dtype": np.dtype(VECTOR_DTYPE).name,
                "written_at": stamp,
                "category_counts": counts_to_json(count_prefixes(p.category_path for p in new_products)),
                "kind": ADD,
                "audit": info,
            },
        )
        audit.AuditLog(path).record_events(events)
        out = live.with_delta(name)
    if compact_past_threshold and out.past_compaction_threshold():
        start_background_compaction(path)
    return out


class VersionReplaced(IndexStoreError):
    """A build published another catalogue while a manifest change was being prepared for the old one."""


def republish(path: str | Path, entries: Mapping, based_on: str) -> LocalIndexStore:
    """Publish the live version again with manifest `entries` replaced (e.g. a new calibration):
    a new version whose base files are hard links to the live one's and whose deltas (those
    committed meanwhile included) are carried over. O(files), no data rewritten; atomic like
    every publish, under the write lock.

    `based_on` is the version the entries were computed on: when a build (not a compaction of
    it) has replaced that version meanwhile, nothing is published (VersionReplaced)."""
    path = Path(path)
    with base_lock(path, wait=False) as mine:
        if not mine:  # a build, an ingest or a compaction is writing a new version: its hand-over rules
            raise BaseWriterBusy(
                f"a build, ingest or compaction is writing a new version of {path}: nothing published; "
                "calibrate again once it is done"
            )
        with write_lock(path):
            live = writable_live(path)
            vdir = path / VERSIONS / live.version
            manifest = json.loads((vdir / "manifest.json").read_text(encoding="utf-8"))
            if live.version != based_on and (manifest.get("compacted_from") or {}).get("version") != based_on:
                raise VersionReplaced(
                    f"version {based_on} was replaced by {live.version} (a new build): nothing published"
                )
            staging = Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=path / VERSIONS))
            try:
                for name in manifest.get("files", {}):
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    os.link(vdir / name, staging / name)
                _carry_deltas(vdir, staging, live.deltas, np.zeros(0, np.int64))  # the base keeps its rows
                manifest.update(entries)
                manifest.pop("seal", None)  # sealed afresh by the publish
                write_manifest(staging, manifest)
                fsync_dir(staging)
                commit_version(path, staging, read_pointer(path))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return LocalIndexStore.load(path)


def change(
    store: LocalIndexStore,
    deletes: Iterable[str] = (),
    relabels: Mapping[str, Iterable[str]] | None = None,
    actor: str = "cli",
    compact_past_threshold: bool = True,
) -> LocalIndexStore:
    """Delete products and/or give products new category paths, as one delta segment.

    Cost: O(batch) to check the ids (`row_of`, O(log N) each) and write the delta's change
    records, plus the reload of the deltas (O(delta rows + M log M) for M rows changed since the
    base, `_combine`): nothing of size N is read, copied or rewritten. A deleted product never
    reaches a search, a vote or a category count from the next load on; a relabelled one votes
    with its new path. A relabel may name a path no product has yet (it becomes a category of
    the index); a relabel to the product's current path changes nothing.

    Refused whole, nothing written: an id the index does not hold or already deleted
    (ProductNotFound), a malformed path (CategoryPathError), an id both deleted and relabelled
    (ValueError). Kill-safe like an add: the delta is staged and committed by replacing LIST.
    Each product changed is an audit event by `actor`, recorded right after the commit. Past
    the delta thresholds a background compaction folds the changes into a new base (`compact`).
    """
    doomed, wanted = checked_change(deletes, relabels)
    path = store.path
    at = audit.utc_now()
    with write_lock(path):
        live = writable_live(path)
        _journal_last(live)
        found = {pid: live.row_of(pid) for pid in [*doomed, *wanted]}
        missing = [pid for pid, row in found.items() if row is None]
        if missing:
            raise ProductNotFound(missing)
        rows = {pid: int(row) for pid, row in found.items() if row is not None}
        records: list[dict[str, Any]] = []
        for pid in doomed:
            before = live.products[rows[pid]].to_record()
            event = audit.event(pid, "delete", actor, before, None, at=at)
            records.append({"op": "delete", "row": rows[pid], "id": pid, "event": event})
        for pid, new_path in wanted.items():
            product = live.products[rows[pid]]
            if tuple(product.category_path) == new_path:
                continue
            after = Product.from_record(dict(product.to_record(), category_path=list(new_path)))
            was, now = {"category_path": list(product.category_path)}, {"category_path": list(new_path)}
            event = audit.event(pid, "relabel", actor, was, now, at=at)
            record = {"op": "relabel", "row": rows[pid], "id": pid, "path": list(new_path), "event": event}
            records.append(dict(record, product=after.to_record()))
        if not records:
            return live
        name = write_delta(
            path / VERSIONS / live.version,
            [],
            {},
            None,
            {"format_version": FORMAT_VERSION, "written_at": at, "category_counts": []},
            changes=records,
        )
        audit.AuditLog(path).record_events([r["event"] for r in records])
        out = live.with_delta(name)
    if compact_past_threshold and out.past_compaction_threshold():
        start_background_compaction(path)
    return out


def _journal_last(live: LocalIndexStore) -> None:
    """Record the audit events of the live version's last delta if its writer died before it
    could (caller holds the write lock): one lookup when they are recorded (`record_unrecorded`)."""
    if live.deltas:
        _journal(live, live.deltas[-1:])


def _journal(live: LocalIndexStore, names: Iterable[str]) -> None:
    vdir = live.path / VERSIONS / live.version / "deltas"
    for name in names:
        delta = _load_delta(vdir / name, f"index version {live.version}, delta {name}", checksums=False)
        audit.record_unrecorded(live.path, delta.events())


BASE_EVENTS = "audit_events"  # a base's manifest key: audit events its writer committed with it (a rebuild's)


def record_pending_events(live: LocalIndexStore) -> None:
    """Record the audit events of `live` that a killed writer left unrecorded: its base manifest's
    (`BASE_EVENTS`) and every delta's. One lookup per delta when they are recorded; what a rebuild
    does before it reads the trail back (`indexer.store.audit.AuditLog.changes`)."""
    audit.record_unrecorded(live.path, live.manifest.get(BASE_EVENTS) or [])
    with write_lock(live.path):
        _journal(live, live.deltas)


_COMPACTIONS: dict[str, threading.Thread] = {}


def start_background_compaction(path: str | Path) -> threading.Thread | None:
    """Compact `path` in a background thread of this process, unless one already runs here;
    `compact` itself makes sure only one compaction runs across processes. Returns the thread
    (None when one was already running). The thread is not a daemon: a process exiting waits
    for its compaction, and a killed one leaves a staging folder the next writer removes."""
    key = str(Path(path).resolve())
    with _BASES_LOCK:
        running = _COMPACTIONS.get(key)
        if running is not None and running.is_alive():
            return None
        thread = threading.Thread(target=_compact_logged, args=(Path(path),), name=f"compact {key}")
        _COMPACTIONS[key] = thread
        thread.start()
    return thread


def _compact_logged(path: Path) -> None:
    import logging

    log = logging.getLogger(__name__)
    try:
        store = compact(path, wait=False)
        log.info("background compaction of %s: live version %s", path, store.version)
    except Exception:  # a failed compaction leaves the live version as it was: log it, adds go on
        log.exception("background compaction of %s failed", path)


def compact(path: str | Path, wait: bool = True) -> LocalIndexStore:
    """Merge the live version's deltas into a new base and publish it atomically (a new version).

    O(N), but adds are not blocked while it runs: the new base is written into a staging folder
    without the write lock (vectors rewritten and checksummed, the FAISS index is the base's read
    into memory plus the deltas' vectors: no retraining, no graph rebuild from scratch). The
    publish follows the hand-over rule (`publish_base`): deltas committed meanwhile are carried
    into the new version (hard links; their rows still point at the same products, or are
    renumbered when deleted rows were dropped below them). One writer of a new base at a time per
    index (`base_lock`: a build or ingest waits for a compaction and the other way round); with
    `wait=False` a compaction finding one running returns the live store at once. Killed at any
    point, it leaves the live version (base + deltas) loadable.

    Deletes and relabels are applied: deleted products are dropped from the new base (its rows
    are renumbered, so deltas carried over are copied with their rows renumbered instead of
    linked), relabels are written into its products and category codes. Before it compacts,
    the deltas' audit events are recorded if a killed writer left them unrecorded."""
    path = Path(path)
    with base_lock(path, wait) as mine:
        if not mine:
            return LocalIndexStore.load(path)
        with write_lock(path):
            live = writable_live(path)
            _journal(live, live.deltas)
        if not live.deltas:
            return live
        staging = _stage_compaction(live)
        publish_base(path, staging, Snapshot.of(live), "compaction", continues=True, dropped=live.deleted)
        return LocalIndexStore.load(path)


def _carry_deltas(vdir: Path, staging: Path, names: Sequence[str], dropped: np.ndarray) -> None:
    """Carry deltas of `vdir` into a staged version whose base continues its rows (a compaction,
    a republish), with a sealed LIST. Deltas are immutable once committed, so they are
    hard-linked: O(files of those deltas). When the compaction dropped deleted rows (`dropped`,
    old numbering), the rows after them moved down, so the carried deltas' rows files and change
    records are rewritten renumbered (O(their rows)) and their manifests sealed afresh; their
    other files are still linked."""
    if not names:
        return
    root = staging / "deltas"
    root.mkdir(exist_ok=True)
    remap = None if not len(dropped) else (lambda rows: renumber(rows, dropped))
    seals = [copy_delta(vdir / "deltas" / name, root / name, remap) for name in names]
    write_list(staging, list(zip(names, seals, strict=True)))


def renumber(rows: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Rows of the old numbering in the new one, once the sorted rows `dropped` are removed:
    each row moves down by the dropped rows below it. O(len(rows) · log len(dropped))."""
    rows = np.asarray(rows, dtype=np.int64)
    return rows - np.searchsorted(dropped, rows)


def _stage_compaction(live: LocalIndexStore) -> Path:
    """The live version's base + deltas written as one staged base (no lock held). O(N) disk
    I/O with O(ADD_BATCH) vectors in memory beside the FAISS indexes: products and vectors are
    streamed through a BaseWriter in the channels' own order, so each base FAISS index (read
    into memory, a private copy) only takes the deltas' vectors: no retraining, no graph rebuilt.

    Deleted products are left out and the rows after them renumbered (`renumber`); a Flat index
    drops their vectors (`remove_ids` renumbers its ids the same way), an approximate one (IVF,
    HNSW) is emptied, keeping its training, and refilled from the stored vectors kept.
    Relabelled products are written as they now read (`live.products` applies the relabels)."""
    vdir = live.path / VERSIONS / live.version
    base = live.base
    dropped = live.deleted
    kept = {m: _kept_positions(live, m) for m in live.channels()}
    indexes = {}
    for modality, channel in live.modalities.items():
        if base is not None and modality in base.modalities:
            index = faiss.read_index(str(vdir / f"{modality}.faiss"))
            nb = len(base.modalities[modality][0])
            keep = kept[modality]
            if keep is None:
                refill = np.arange(nb, channel.ntotal)
            elif isinstance(faiss.downcast_index(index), faiss.IndexFlat):
                gone = np.setdiff1d(np.arange(nb), keep)
                index.remove_ids(faiss.IDSelectorBatch(gone))
                refill = keep[keep >= nb]
            else:
                index.reset()  # an IVF keeps its quantiser and codebooks, so nothing is retrained
                refill = keep
            for part in batches(len(refill), ADD_BATCH):
                index.add(l2_normalize(channel.vectors[refill[part]]))
            indexes[modality] = index
    dims = {m: int(ch.vectors.shape[1]) for m, ch in live.modalities.items()}
    # the build's derived key describes the base it built, not this one (it holds the deltas too)
    skipped = ("deltas", "derived_key", "deleted_products", "relabeled_products")
    manifest = {k: v for k, v in live.manifest.items() if k not in skipped}
    manifest["compacted_from"] = {"version": live.version, "deltas": list(live.deltas)}
    if len(dropped):
        manifest["compacted_from"]["dropped_products"] = int(len(dropped))
    writer = new_base_writer(
        live.path, dims, live.manifest["index_factory"], indexes, live.product_count(), live.manifest.get("faiss")
    )
    with writer:
        for part in batches(len(live.products), ADD_BATCH):
            products = live.products[part]
            if len(dropped):
                lo, hi = np.searchsorted(dropped, [part.start, part.stop])
                skip = set((dropped[lo:hi] - part.start).tolist())
                products = [p for i, p in enumerate(products) if i not in skip]
            writer.add_products(products)
        for modality, channel in live.modalities.items():
            keep = kept[modality]
            if keep is None:
                for part in batches(channel.ntotal, ADD_BATCH):
                    writer.add_vectors(modality, channel.vectors[part], np.asarray(channel.rows[part]))
                continue
            for part in batches(len(keep), ADD_BATCH):
                positions = keep[part]
                rows = renumber(np.asarray(channel.rows)[positions], dropped)
                writer.add_vectors(modality, channel.vectors[positions], rows)
        lexical = live.lexical
        keep = kept.get("lexical")
        if lexical is not None and keep is not None:
            rows = renumber(np.asarray(lexical.rows)[keep], dropped)
            lexical = LexicalIndex(lexical.vectorizer, lexical.matrix[keep], rows, cap=lexical.cap)
        return finish_base(writer, manifest, lexical)


def _kept_positions(live: LocalIndexStore, channel: str) -> np.ndarray | None:
    """Positions of `channel` whose products are not deleted (sorted), None when all are."""
    gone = live.deleted_positions(channel) if len(live.deleted) else np.zeros(0, np.int64)
    if not len(gone):
        return None
    return np.setdiff1d(np.arange(live.channels()[channel].ntotal), gone)
