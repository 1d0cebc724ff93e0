"""Segments of an index version: the base written once, small deltas that take the adds.

Layout inside a version folder (the base's own files stay where they were)::

    versions/<n>/manifest.json, products.jsonl, <m>.npy, ...   the base segment
    versions/<n>/deltas/LIST                                   committed deltas, one name a line
    versions/<n>/deltas/<seq>/manifest.json, products.jsonl, <m>.npy, <m>.rows.npy,
                              lexical.npz, lexical.rows.npy      one delta (the products of one add)

An add writes one delta folder (staged, fsync'd, checksummed with indexer.integrity, renamed)
and then replaces LIST atomically: a killed add leaves either the old LIST or the new one,
never a half-written delta in it. Readers notice a new delta by re-reading LIST (one small
file), as they notice a new version by re-reading CURRENT. Compaction (indexer.store.compact)
merges the deltas into a new base, i.e. a new version.

Dense vectors are stored as float16 and memory-mapped (np.load(mmap_mode="r")), so every
worker of a machine shares one copy in the page cache; `StackedVectors` reads the base's
mapped rows and the deltas' rows as one array without concatenating them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .integrity import describe_files

DELTAS = "deltas"
LIST = "LIST"
VECTOR_DTYPE = np.float16


class StackedVectors:
    """Rows of several (n_i, d) arrays read as one (sum n_i, d) float32 array, without copying them.

    Indexing with a position array gathers from each part: O(len(positions)·d); the parts stay
    memory-mapped. `np.asarray(stacked)` (or `.T`) materialises all of it: O(N·d), for batch
    paths only (cross-validation similarity matrices)."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
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
        part = np.searchsorted(self.offsets, pos, side="right") - 1
        for p in np.unique(part):
            at = np.flatnonzero(part == p)
            out[at] = self.parts[p][pos[at] - self.offsets[p]]
        return out[0] if scalar else out

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        whole = np.concatenate([np.asarray(p, dtype=np.float32) for p in self.parts])
        return whole if dtype is None else whole.astype(dtype)

    @property
    def T(self) -> np.ndarray:  # noqa: N802 - numpy's name
        return np.asarray(self).T


def as_float32(vectors: np.ndarray | StackedVectors) -> np.ndarray:
    """A float32 in-memory copy of stored vectors (evaluation, compaction): O(N·d)."""
    return np.asarray(vectors, dtype=np.float32)


def read_list(version_dir: Path) -> tuple[str, ...]:
    """Committed delta names of a version, in order: one small file read (O(deltas))."""
    try:
        text = (version_dir / DELTAS / LIST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


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
) -> str:
    """Write one delta segment and commit it to LIST; returns its name. O(batch).

    `products` are product records, `vectors[m] = (unit vectors, global product rows)`,
    `lexical = (csr matrix, global rows)` in the base's vocabulary. The caller holds the
    write lock. Files are fsync'd, then described (sizes + BLAKE2b) in the delta's manifest,
    then the folder is renamed into place and LIST replaced atomically."""
    import scipy.sparse as sp

    root = version_dir / DELTAS
    root.mkdir(exist_ok=True)
    committed = read_list(version_dir)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        with open(staging / "products.jsonl", "w", encoding="utf-8") as fh:
            for record in products:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts = {"products": len(products)}
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
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with open(staging / "manifest.json", "rb") as fh:
            os.fsync(fh.fileno())
        existing = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
        name = f"{max(existing, default=0) + 1:06d}"
        os.rename(staging, root / name)
        _fsync(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = root / f".{LIST}.tmp"
    pointer.write_text("".join(f"{n}\n" for n in (*committed, name)), encoding="utf-8")
    with open(pointer, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, root / LIST)
    _fsync(root)
    prune_uncommitted(version_dir, (*committed, name))
    return name


def prune_uncommitted(version_dir: Path, committed: tuple[str, ...]) -> None:
    """Remove staging folders and deltas a killed add left outside LIST (caller holds the lock)."""
    root = version_dir / DELTAS
    if not root.is_dir():
        return
    for item in root.iterdir():
        if item.is_dir() and item.name not in committed:
            shutil.rmtree(item, ignore_errors=True)
