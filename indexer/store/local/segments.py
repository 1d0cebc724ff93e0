"""Segments of an index version: the base written once, small deltas that take the adds.

Layout inside a version folder (the base's own files stay where they were)::

    versions/<n>/manifest.json, products.jsonl, <m>.npy, ...   the base segment
    versions/<n>/deltas/LIST                                   committed deltas, one name a line
    versions/<n>/deltas/<seq>/manifest.json, products.jsonl, <m>.npy, <m>.rows.npy,
                              lexical.npz, lexical.rows.npy      one delta (the products of one add)
    versions/<n>/deltas/<seq>/manifest.json, changes.jsonl       or the deletes / relabels of one change

An add writes one delta folder (staged, fsync'd, checksummed with indexer.store.local.integrity, renamed)
and then replaces LIST atomically: a killed add leaves either the old LIST or the new one,
never a half-written delta in it. A delete or relabel is a delta too, with no products and a
`changes.jsonl`: one record per product changed (`{"op": "delete" | "relabel", "row", "id",
"path"}` plus its audit event), applied over the rows before it when the version is loaded.
Readers notice a new delta by re-reading LIST (one small file), as they notice a new version
by re-reading CURRENT. Compaction (indexer.store.local.index.compact) merges the deltas into a
new base, i.e. a new version.

Dense vectors are stored compactly and memory-mapped (np.load(mmap_mode="r")), so every
worker of a machine shares one copy in the page cache; `StackedVectors` reads the base's
mapped rows and the deltas' rows as one array without concatenating them. Three precisions
(the manifest's `vector_dtype`): "float16" (2 B per dimension), "int8" (1 B per dimension
plus one float32 scale per row, `RowScaledInt8`) and "int4" (half a byte per dimension plus a
float32 step and offset per row, `RowAffineInt4`): data-independent, so nothing is fitted on
the catalogue. `vector_dtype_for(n)` picks float16 below COMPACT_ROWS rows, int8 from there
(where the disk target bites: 1M x 2176 dims is 4.35 GB in float16, 2.18 GB in int8) and int4
from INT4_ROWS (where the memory target bites: a worker maps nearly every stored row after a
thousand predictions, and at 1M the int8 copy plus the lexical layouts put one worker at
3,072 MB of PSS, over 3 GB; int4 halves the copy to 1.08 GB); INDEX_VECTOR_DTYPE overrides.
bench/bench_precision.py prints the effect of each on the real catalogue's nested figures,
bench/bench_search_scale.py the fused agreement at 100k / 1M, bench/bench_scale.py the worker's memory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.store.errors import IndexDamaged
from indexer.store.local.integrity import describe_files
from indexer.store.local.products_db import index_roots, stored_image_path
from indexer.store.local.seals import DeltaList, SealBroken, format_list, parse_list, seal_manifest
from indexer.store.mapped import map_random

DELTAS = "deltas"
LIST = "LIST"
ADD = "add"  # the kind of delta an add writes (deltas written before kinds are adds)
CHANGE = "change"  # the kind of a delete / relabel delta (CHANGES records, no products)
CHANGES = "changes.jsonl"  # a delete / relabel delta's change records
VECTOR_DTYPE = np.float16  # the "float16" precision
VECTOR_DTYPES = ("float16", "int8", "int4")
# From this many rows a base stores int8 row-scaled vectors (the disk target at 1M), below it float16.
COMPACT_ROWS = int(os.environ.get("INDEX_COMPACT_ROWS", "50000"))
# From this many rows, int4 (the worker-memory target at 1M; see the module docstring). Half of
# 1M, by arithmetic rather than a measurement: there the int8 copy is 1.09 GB and the lexical
# layouts about 0.42 GB, half of what put a worker over 3 GB at 1M.
INT4_ROWS = int(os.environ.get("INDEX_INT4_ROWS", "500000"))
INT8_MAX = 127.0
INT4_LEVELS = 15  # 4-bit codes 0..15: offset + code * step


def vector_dtype_for(rows: int, environ: Mapping[str, str] | None = None) -> str:
    """The precision of a segment of `rows` vectors: INDEX_VECTOR_DTYPE, else float16, int8 from
    COMPACT_ROWS and int4 from INT4_ROWS."""
    environ = os.environ if environ is None else environ
    by_size = "int4" if rows >= INT4_ROWS else "int8" if rows >= COMPACT_ROWS else "float16"
    chosen = environ.get("INDEX_VECTOR_DTYPE", "").strip() or by_size
    if chosen not in VECTOR_DTYPES:
        raise ValueError(f"INDEX_VECTOR_DTYPE must be one of {VECTOR_DTYPES}, got {chosen!r}")
    return chosen


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scale per row) with x ~= codes * scale, scale = max|x| / 127.

    Each component is off by at most scale / 2, so the dot product with a unit query is off by
    at most sqrt(d) * scale / 2 (and typically by ~ scale / sqrt(12) * ||q||). O(n·d)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(len(vectors), np.float32)
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scale


class DecodedRows:
    """What the quantised precisions share: an (n, d) float32 array-like over code arrays that
    may be memory-mapped. A subclass decodes rows in `__getitem__` (O(len(positions)·d)) and
    lists its arrays in `parts` (for `nbytes`); reading all of it is O(N·d), batch paths only."""

    parts: tuple[np.ndarray, ...] = ()

    def __init__(self, rows: int, dim: int) -> None:
        self.shape = (rows, dim)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.parts))

    def __getitem__(self, positions: Any) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        whole = self[slice(None)]
        return whole if dtype is None else whole.astype(dtype)

    @property
    def T(self) -> np.ndarray:  # noqa: N802 - numpy's name
        return np.asarray(self).T


class RowScaledInt8(DecodedRows):
    """int8 codes (n, d) and a float32 scale per row, read as float32 rows: codes[i] * scale[i].

    Both arrays may be memory-mapped; indexing gathers and dequantises only the rows asked
    for, O(len(positions)·d)."""

    def __init__(self, codes: np.ndarray, scale: np.ndarray) -> None:
        if codes.ndim != 2 or codes.dtype != np.int8 or scale.shape != (len(codes),):
            raise ValueError(f"int8 codes {codes.shape} {codes.dtype} and scales {scale.shape} disagree")
        super().__init__(*codes.shape)
        self.codes, self.scale = codes, scale
        self.parts = (codes, scale)

    def __getitem__(self, positions: Any) -> np.ndarray:
        codes = np.asarray(self.codes[positions], dtype=np.float32)
        scale = np.asarray(self.scale[positions], dtype=np.float32)
        return codes * scale[..., None] if codes.ndim == 2 else codes * scale


def quantize_int4(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes packed two to a byte, (n, ceil(d/2)) uint8; float32 step per row; float32 offset
    per row) with x ~= offset + code * step, offset = min(x), step = (max(x) - min(x)) / 15.

    Affine per row rather than symmetric like int8: the image vectors are non-negative (pooled
    activations), so a range centred on zero would leave half the 16 codes unused. On the real
    catalogue's vectors this keeps the cosine with the float32 vector at 0.996 (image) and
    0.989 (text) on average (bench/bench_precision.py). Each component is off by at most
    step / 2. Dimension 2j is the low nibble of byte j, 2j+1 the high one. O(n·d)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"int4 quantisation needs (n, d) vectors, got shape {vectors.shape}")
    n, d = vectors.shape
    low = vectors.min(axis=1) if vectors.size else np.zeros(n, np.float32)
    high = vectors.max(axis=1) if vectors.size else np.zeros(n, np.float32)
    step = np.where(high > low, (high - low) / INT4_LEVELS, 1.0).astype(np.float32)
    levels = np.clip(np.rint((vectors - low[:, None]) / step[:, None]), 0, INT4_LEVELS).astype(np.uint8)
    if d % 2:
        levels = np.pad(levels, ((0, 0), (0, 1)))
    return levels[:, 0::2] | (levels[:, 1::2] << 4), step, low.astype(np.float32)


class RowAffineInt4(DecodedRows):
    """4-bit codes packed two to a byte (n, ceil(d/2)), a float32 step and offset per row, read
    as float32 rows: offset[i] + code * step[i] (`quantize_int4`).

    The arrays may be memory-mapped; indexing gathers and decodes only the rows asked for,
    O(len(positions)·d)."""

    def __init__(self, codes: np.ndarray, step: np.ndarray, offset: np.ndarray, dim: int) -> None:
        n = len(codes)
        if codes.ndim != 2 or codes.dtype != np.uint8 or codes.shape[1] != (dim + 1) // 2:
            raise ValueError(f"int4 codes {codes.shape} {codes.dtype} do not hold {dim} dimensions")
        if step.shape != (n,) or offset.shape != (n,):
            raise ValueError(f"int4 steps {step.shape} and offsets {offset.shape} disagree with {n} rows")
        super().__init__(n, dim)
        self.codes, self.step, self.offset = codes, step, offset
        self.parts = (codes, step, offset)

    def levels(self, positions: Any) -> np.ndarray:
        """The codes (0..15) of the rows at `positions`, unpacked to float32: O(rows·d)."""
        packed = np.asarray(self.codes[positions])
        out = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), np.float32)
        out[..., 0::2] = packed & 15
        out[..., 1::2] = packed >> 4
        return out[..., : self.shape[1]]

    def __getitem__(self, positions: Any) -> np.ndarray:
        levels = self.levels(positions)
        step = np.asarray(self.step[positions], dtype=np.float32)
        offset = np.asarray(self.offset[positions], dtype=np.float32)
        if levels.ndim == 2:
            return levels * step[:, None] + offset[:, None]
        return levels * step + offset


StoredVectors = np.ndarray | RowScaledInt8 | RowAffineInt4


def dot_rows(vectors: StoredVectors | StackedVectors, positions: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The stored rows at `positions` times one float32 `query`, as float32: O(len(positions)·d).
    int8 rows are cast and multiplied by the query first, then each product by its row's scale
    (codes · q · scale: one multiply per row instead of one per component), which agrees with
    the dequantised rows' product to float32 rounding; int4 rows likewise (codes · q · step +
    offset · sum(q)), their low and high nibbles against the query's even and odd dimensions."""
    positions = np.asarray(positions, dtype=np.int64)
    query = np.asarray(query, dtype=np.float32)
    if isinstance(vectors, RowScaledInt8):
        return (vectors.codes[positions].astype(np.float32) @ query) * vectors.scale[positions]
    if isinstance(vectors, RowAffineInt4):
        packed = vectors.codes[positions]
        even, odd = query[0::2], query[1::2]  # low nibbles hold the even dimensions
        levels = (packed & 15).astype(np.float32) @ even + (packed[:, : len(odd)] >> 4).astype(np.float32) @ odd
        return np.asarray(levels * vectors.step[positions] + vectors.offset[positions] * query.sum(), np.float32)
    if isinstance(vectors, StackedVectors):
        out = np.empty(len(positions), np.float32)
        for part, at, local in vectors.by_part(positions):
            out[at] = dot_rows(part, local, query)
        return out
    return np.asarray(np.asarray(vectors[positions], dtype=np.float32) @ query, dtype=np.float32)


def save_vectors(folder: Path, name: str, vectors: np.ndarray, dtype: str) -> None:
    """`name`.npy in the precision `dtype` (+ `name`.scale.npy for int8 and int4, + `name`.offset.npy
    for int4). O(n·d)."""
    if dtype == "int8":
        codes, scale = quantize_int8(vectors)
        np.save(folder / f"{name}.npy", codes)
        np.save(folder / f"{name}.scale.npy", scale)
    elif dtype == "int4":
        codes, step, offset = quantize_int4(vectors)
        np.save(folder / f"{name}.npy", codes)
        np.save(folder / f"{name}.scale.npy", step)
        np.save(folder / f"{name}.offset.npy", offset)
    elif dtype == "float16":
        np.save(folder / f"{name}.npy", np.asarray(vectors, dtype=VECTOR_DTYPE))
    else:
        raise ValueError(f"unknown vector dtype {dtype!r}; choose from {VECTOR_DTYPES}")


def load_vectors(folder: Path, name: str, dtype: str, mmap: bool = True, dim: int | None = None) -> StoredVectors:
    """The stored vectors of `name`, memory-mapped; raises ValueError when the files disagree with
    `dtype`. int4 packs two dimensions to a byte, so it needs `dim` (the manifest's) when d is odd."""

    def read(path: Path) -> np.ndarray:
        return map_random(path) if mmap else np.load(path, allow_pickle=False)

    codes = read(folder / f"{name}.npy")
    if codes.ndim != 2:
        raise ValueError(f"{name}.npy has shape {codes.shape}, expected 2 dimensions")
    if dtype == "int8":
        if codes.dtype != np.int8:
            raise ValueError(f"dtype {codes.dtype}, the manifest says int8")
        scale = read(folder / f"{name}.scale.npy")
        if scale.shape != (len(codes),) or scale.dtype != np.float32:
            raise ValueError(f"{name}.scale.npy holds {scale.shape} {scale.dtype}, expected ({len(codes)},) float32")
        return RowScaledInt8(codes, scale)
    if dtype == "int4":
        if codes.dtype != np.uint8:
            raise ValueError(f"dtype {codes.dtype}, the manifest says int4 (packed uint8)")
        step, offset = read(folder / f"{name}.scale.npy"), read(folder / f"{name}.offset.npy")
        for label, array in (("scale", step), ("offset", offset)):
            if array.shape != (len(codes),) or array.dtype != np.float32:
                raise ValueError(
                    f"{name}.{label}.npy holds {array.shape} {array.dtype}, expected ({len(codes)},) float32"
                )
        return RowAffineInt4(codes, step, offset, 2 * codes.shape[1] if dim is None else dim)
    if dtype != "float16" or codes.dtype != VECTOR_DTYPE:
        raise ValueError(f"dtype {codes.dtype}, the manifest says {dtype}")
    return codes


class StackedVectors:
    """Rows of several (n_i, d) arrays read as one (sum n_i, d) float32 array, without copying them.

    Indexing with a position array gathers from each part: O(len(positions)·d); the parts stay
    memory-mapped. `np.asarray(stacked)` (or `.T`) materialises all of it: O(N·d), for batch
    paths only (cross-validation similarity matrices)."""

    def __init__(self, parts: Sequence[StoredVectors]) -> None:
        if not parts:
            raise ValueError("StackedVectors needs at least one part")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.offsets[-1]), int(self.parts[0].shape[1]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes the parts hold (on disk or mapped), as ndarray.nbytes says for one array."""
        return int(sum(p.nbytes for p in self.parts))

    def __getitem__(self, positions: object) -> np.ndarray:
        if isinstance(positions, slice):
            positions = np.arange(*positions.indices(len(self)))
        scalar = np.isscalar(positions)
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        pos = np.where(pos < 0, pos + len(self), pos)
        if len(pos) and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError("position out of range")
        out = np.empty((len(pos), self.shape[1]), np.float32)
        for part, at, local in self.by_part(pos):
            out[at] = part[local]
        return out[0] if scalar else out

    def by_part(self, positions: np.ndarray) -> Iterator[tuple[StoredVectors, np.ndarray, np.ndarray]]:
        """(part, indices into `positions`, positions within that part) for each part that
        `positions` (in range, non-negative) reach: O(len(positions) · log parts)."""
        which = np.searchsorted(self.offsets, positions, side="right") - 1
        for p in np.unique(which):
            at = np.flatnonzero(which == p)
            yield self.parts[p], at, positions[at] - self.offsets[p]

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        whole = np.concatenate([np.asarray(p, dtype=np.float32) for p in self.parts])
        return whole if dtype is None else whole.astype(dtype)

    @property
    def T(self) -> np.ndarray:  # noqa: N802 - numpy's name
        return np.asarray(self).T


def as_float32(vectors: StoredVectors | StackedVectors) -> np.ndarray:
    """A float32 in-memory copy of stored vectors (evaluation, compaction): O(N·d)."""
    return np.asarray(vectors, dtype=np.float32)


def read_delta_list(version_dir: Path) -> DeltaList:
    """Committed deltas of a version with their manifests' seals: one small file read, its check
    line verified (IndexDamaged naming deltas/LIST when it is damaged). O(deltas)."""
    file = version_dir / DELTAS / LIST
    try:
        raw: bytes | None = file.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError as exc:
        reason = exc.strerror or exc
        raise IndexDamaged(f"version {version_dir.name}: deltas/LIST cannot be read ({reason})", file=file) from None
    try:
        return parse_list(raw)
    except SealBroken as exc:
        raise IndexDamaged(f"version {version_dir.name}: {exc}", file=file) from None


def read_list(version_dir: Path) -> tuple[str, ...]:
    """Committed delta names of a version, in order (see `read_delta_list`)."""
    return read_delta_list(version_dir).names


def write_list(version_dir: Path, entries: Sequence[tuple[str, str | None]]) -> None:
    """Replace deltas/LIST atomically with `entries` (name, manifest seal), sealed."""
    root = version_dir / DELTAS
    root.mkdir(exist_ok=True)
    pointer = root / f".{LIST}.tmp"
    with open(pointer, "wb") as fh:
        fh.write(format_list(entries))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer, root / LIST)
    _fsync(root)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_delta(
    version_dir: Path,
    products: list[dict],
    vectors: dict[str, tuple[np.ndarray, np.ndarray]],
    lexical: tuple | None,
    manifest: dict,
    changes: list[dict] | None = None,
) -> str:
    """Write one delta segment and commit it to LIST; returns its name. O(batch).

    `products` are product records (image paths inside the index folder are stored relative
    to it), `vectors[m] = (unit vectors, global product rows)`, `lexical = (csr matrix, global
    rows)` in the base's vocabulary, `changes` the change records of a delete or relabel
    (CHANGES). The caller holds the write lock (or owns the staged version). Files are fsync'd,
    described (sizes + BLAKE2b) in the delta's sealed manifest (its `kind`: ADD or CHANGE), the
    folder renamed into place and LIST (each delta's name and seal) replaced atomically."""
    import scipy.sparse as sp

    root = version_dir / DELTAS
    root.mkdir(exist_ok=True)
    committed = read_delta_list(version_dir)
    roots = index_roots(version_dir.parent.parent)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        if products or not changes:  # a change delta has no products: one file (and fsync) less
            write_jsonl(
                staging / "products.jsonl",
                [dict(r, image_path=stored_image_path(r.get("image_path"), roots)) for r in products],
            )
        counts = {"products": len(products)}
        if changes:
            write_jsonl(staging / CHANGES, changes)
            counts["changes"] = len(changes)
        for modality, (vecs, rows) in vectors.items():
            np.save(staging / f"{modality}.npy", np.asarray(vecs, dtype=VECTOR_DTYPE))
            np.save(staging / f"{modality}.rows.npy", np.asarray(rows, dtype=np.int64))
            counts[modality] = len(vecs)
        if lexical is not None:
            sp.save_npz(staging / "lexical.npz", lexical[0].tocsr())
            np.save(staging / "lexical.rows.npy", np.asarray(lexical[1], dtype=np.int64))
            counts["lexical"] = lexical[0].shape[0]
        for item in staging.iterdir():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
        manifest = dict(manifest, counts=counts, modalities=sorted(vectors), files=describe_files(staging))
        manifest.setdefault("kind", CHANGE if changes else ADD)
        data, seal = seal_manifest(manifest)
        with open(staging / "manifest.json", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        existing = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
        name = f"{max(existing, default=0) + 1:06d}"
        os.rename(staging, root / name)
        _fsync(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_list(version_dir, [*zip(committed.names, committed.seals, strict=True), (name, seal)])
    prune_uncommitted(version_dir, (*committed.names, name))
    return name


def write_jsonl(file: Path, records: Sequence[Mapping]) -> None:
    with open(file, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(file: Path) -> list[dict]:
    with open(file, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def delta_seal(folder: Path) -> str | None:
    """The seal digest a delta's manifest carries (None: written before seals)."""
    seal = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("seal")
    return seal.get("digest") if isinstance(seal, dict) else None


def copy_delta(source: Path, target: Path, remap: Callable[[np.ndarray], np.ndarray] | None) -> str | None:
    """Copy a committed delta folder to `target` (a new folder) with its rows renumbered by
    `remap` (old global rows -> new), for a compaction that dropped deleted rows below it;
    returns the seal of the copy's manifest (for its LIST). Files whose rows do not change are
    hard-linked (deltas are immutable once committed); the rows files and change records are
    rewritten, fsync'd and re-described in a manifest sealed afresh. O(files + the delta's
    rows). With `remap=None` every file is linked as it is."""
    if remap is None:
        shutil.copytree(source, target, copy_function=os.link)
        return delta_seal(target)
    target.mkdir()
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    for item in source.iterdir():
        if item.name == "manifest.json":
            continue
        if item.name.endswith(".rows.npy"):
            np.save(target / item.name, remap(np.load(item, allow_pickle=False)).astype(np.int64))
        elif item.name == CHANGES:
            records = read_jsonl(item)
            rows = remap(np.asarray([r["row"] for r in records], dtype=np.int64))
            write_jsonl(target / CHANGES, [dict(r, row=int(row)) for r, row in zip(records, rows, strict=True)])
        else:
            os.link(item, target / item.name)
            continue
        _fsync(target / item.name)
    manifest["files"] = describe_files(target)
    data, seal = seal_manifest(manifest)
    with open(target / "manifest.json", "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync(target)
    return seal


def prune_uncommitted(version_dir: Path, committed: tuple[str, ...]) -> list[Path]:
    """Remove staging folders and deltas a killed add left outside LIST (caller holds the lock)."""
    root = version_dir / DELTAS
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for item in root.iterdir():
        if item.is_dir() and item.name not in committed:
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
        elif item.name == f".{LIST}.tmp":
            item.unlink(missing_ok=True)
            removed.append(item)
    return removed
