"""Product representations read from the index, never re-encoded.

Each representation is a matrix plus the product rows it covers, so that a product
missing a modality (3 of the 945 have no image) is handled explicitly instead of
silently shifting rows:

* image / text: the stored vectors; products without that modality are left out of
  that representation's metrics (the report states how many).
* fused: ``[sqrt(w_image) * image, sqrt(w_text) * text]`` renormalised, with the
  weights of the service's Categorizer (read from the manifest, not tuned here).
  With sqrt weights summing to one, the dot product of two fused vectors is the
  weighted mean of their image and text cosines. A missing block is zero, so a
  text-only product is compared on text alone (then renormalised onto the sphere).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from indexer.categorizer import Categorizer
from indexer.store import IndexStore


@dataclass
class Representation:
    """`vectors[i]` describes product row `rows[i]`."""

    name: str
    vectors: np.ndarray
    rows: np.ndarray
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def modality(store: IndexStore, name: str) -> Representation:
    """The stored vectors of one modality, sorted by product row."""
    vectors, rows = store.vectors_by_row(name)
    order = np.argsort(rows, kind="stable")
    missing = len(store.products) - len(rows)
    note = f"{missing} product(s) without {name} left out" if missing else ""
    return Representation(name, np.asarray(vectors, np.float32)[order], np.asarray(rows)[order], note)


def fusion_weights(store: IndexStore) -> dict[str, float]:
    """The modality weights the service's Categorizer uses, normalised to sum to one."""
    weights = Categorizer(store).weights
    present = {m: float(weights.get(m, 1.0)) for m in ("image", "text") if m in store.modalities}
    total = sum(present.values())
    if total <= 0:
        raise ValueError(f"fusion weights must be positive, got {present}")
    return {m: w / total for m, w in present.items()}


def fused(store: IndexStore, weights: dict[str, float] | None = None) -> Representation:
    """Weighted concatenation of the L2-normalised image and text vectors, renormalised."""
    weights = weights or fusion_weights(store)
    n = len(store.products)
    blocks, has = [], np.zeros(n, bool)
    missing = {}
    for name in ("image", "text"):
        if name not in store.modalities:
            continue
        vectors, rows = store.vectors_by_row(name)
        block = np.zeros((n, vectors.shape[1]), np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        block[rows] = vectors / np.maximum(norms, 1e-12) * np.sqrt(weights.get(name, 0.0))
        present = np.zeros(n, bool)
        present[rows] = True
        missing[name] = int((~present).sum())
        has |= present
        blocks.append(block)
    if not blocks:
        raise ValueError("the index holds neither image nor text vectors")
    matrix = np.hstack(blocks)
    rows = np.flatnonzero(has)
    matrix = matrix[rows]
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    parts = ", ".join(f"{m} weight {w:.2f}" for m, w in weights.items())
    gaps = ", ".join(f"{k} {name} missing" for name, k in missing.items() if k)
    note = f"{parts}; " + (f"{gaps}: zero block, compared on the other modality" if gaps else "no modality missing")
    return Representation("fused", matrix.astype(np.float32), rows, note, {"weights": weights, "missing": missing})


def from_index(store: IndexStore) -> dict[str, Representation]:
    """image, text and fused representations, in that order (those the index holds)."""
    reps: dict[str, Representation] = {
        name: modality(store, name) for name in ("image", "text") if name in store.modalities
    }
    reps["fused"] = fused(store)
    return reps
