"""Effect of compact vector storage (float16, int8, int4) on the real catalogue's figures.

The store keeps dense vectors compactly for the exact fused re-rank (indexer.store.local.segments: float16
below COMPACT_ROWS products, int8 row-scaled from there, int4 from INT4_ROWS, the manifest's
`vector_dtype`). This script runs the project's nested protocol
(indexer.categorizer.protocol.nested_predictions: grouped outer folds, parameters and threshold
fitted inside the training folds, fused image + text, one fold seed) and the deployment fit
(calibrate) on the same index with four precisions:
- "float32": the build's float32 vectors, read back from the Flat FAISS index (which stores
  them as built);
- "float16": the store as a small index loads it;
- "int8", "int4": those float32 vectors quantised as a large base stores them (`quantize_int8`,
  `quantize_int4`: no parameter fitted on data, so nothing leaks across folds).
and prints, per channel, the cosine of each stored vector with its float32 vector and the share
of each product's 10 nearest neighbours (float32 query against the stored rows) that float32's
exact top 10 holds; then the nested accuracy, the auto coverage and precision of the held-out
listings of every sort (the evaluation report's measure: `NestedRun.listings`) and of the stored
products' own predictions, the deployment threshold, and the share of nested predictions whose
category equals float32's.

Run: .venv/bin/python bench/bench_precision.py [INDEX_DIR]   (default var/index)
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import ROOT

from indexer.categorizer.protocol import (
    ENTRY_KEYS,
    FUSED,
    SEED,
    calibrate,
    grouped_folds,
    near_duplicate_groups,
    nested_predictions,
    usable_folds,
)
from indexer.store import open_store  # noqa: E402
from indexer.store.base import IndexStore
from indexer.store.local.index import ModalityIndex
from indexer.store.local.segments import RowAffineInt4, RowScaledInt8, quantize_int4, quantize_int8


def float32_copy(store: IndexStore, vectors: dict) -> IndexStore:
    modalities = {
        name: ModalityIndex(vectors=vectors[name], rows=np.asarray(channel.rows), index=channel.index)
        for name, channel in store.modalities.items()
    }
    return replace(store, modalities=modalities)


def build_float32(store: IndexStore) -> dict[str, np.ndarray]:
    """The build's float32 vectors, read back from the Flat FAISS index (it keeps them exactly)."""
    out = {}
    for name, channel in store.modalities.items():
        out[name] = np.asarray(channel.index.reconstruct_n(0, channel.index.ntotal), np.float32)
    return out


def agreement(exact: np.ndarray, stored: np.ndarray, k: int = 10) -> tuple[np.ndarray, float]:
    """Cosine of each stored row with its float32 row, and the mean share of each product's k
    nearest others (its float32 vector as the query, scored against the stored rows) that are
    among its k nearest by float32 alone: O(n²·d), fine at the real catalogue's size."""
    cos = np.sum(stored * exact, axis=1) / (np.linalg.norm(stored, axis=1) * np.linalg.norm(exact, axis=1))
    want, got = exact @ exact.T, exact @ stored.T
    np.fill_diagonal(want, -np.inf)
    np.fill_diagonal(got, -np.inf)
    top_want, top_got = np.argsort(-want, axis=1)[:, :k], np.argsort(-got, axis=1)[:, :k]
    shared = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_want, top_got, strict=True)])
    return cos, float(shared)


def main() -> None:
    index_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "var" / "index"
    store = open_store(index_dir)
    print(f"index {index_dir} version {store.version}: {len(store.products)} products (real data)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    flat = all(e.get("factory") == "Flat" for e in (store.manifest.get("faiss") or {}).values())
    if not flat or store.deltas:
        sys.exit("needs a compacted Flat index (its FAISS index holds the float32 vectors)")
    f32 = build_float32(store)
    for name, vecs in f32.items():
        stored = np.asarray(store.modalities[name].vectors, np.float32)
        cos = np.sum(stored * vecs, axis=1)
        print(
            f"{name}: max |float16 - float32| {np.abs(stored - vecs).max():.2e}, "
            f"min dot product with the float32 vector {cos.min():.6f}"
        )
    groups = near_duplicate_groups(store)
    folds = grouped_folds(store.labels(), groups, usable_folds(store.labels(), groups), SEED)
    labels = store.labels()
    int8 = {name: RowScaledInt8(*quantize_int8(vecs)) for name, vecs in f32.items()}
    int4 = {name: RowAffineInt4(*quantize_int4(vecs), vecs.shape[1]) for name, vecs in f32.items()}
    for name, vecs in f32.items():
        err = np.abs(np.asarray(int8[name]) - vecs).max()
        print(f"{name}: max |int8 - float32| {err:.2e} (scale per row: max|x| / 127)")
        for label, stored in (("float16", store.modalities[name].vectors), ("int8", int8[name]), ("int4", int4[name])):
            cos, overlap = agreement(vecs, np.asarray(stored, np.float32))
            print(
                f"{name} {label}: cosine with float32 mean {cos.mean():.4f} min {cos.min():.4f}; "
                f"top-10 neighbours shared with float32's {overlap:.3f}"
            )
    reference = None
    candidates = (
        ("float32", float32_copy(store, f32)),
        ("float16", store),
        ("int8", float32_copy(store, int8)),
        ("int4", float32_copy(store, int4)),
    )
    for label, candidate in candidates:
        t0 = time.perf_counter()
        run = nested_predictions(candidate, folds, groups, {"fused": FUSED})["fused"]
        done = [(i, p) for i, p in enumerate(run.predictions) if p is not None]
        correct = np.array([p.category == labels[i] for i, p in done])
        auto = np.array([p.decision == "auto" for _, p in done])
        entry = calibrate(candidate)
        threshold = entry.get("threshold")
        chosen = {key: entry.get(key) for key in ENTRY_KEYS}
        print(
            f"{label}: nested accuracy {correct.mean():.4f}, auto coverage {auto.mean():.4f}, "
            f"auto precision {correct[auto].mean() if auto.any() else float('nan'):.4f} over {len(done)} products; "
            f"deployment threshold {threshold} ({time.perf_counter() - t0:.1f} s)"
        )
        print(f"{label}: deployment settings chosen {chosen}")
        # the evaluation's measure: each held-out fold listed as every sort of listing, answered by its fit
        pooled_auto, pooled_correct, parts = [], [], []
        for sort, found in sorted(run.listings.items()):
            auto, right = np.asarray(found["auto"], bool), np.asarray(found["correct"], bool)
            pooled_auto.append(auto)
            pooled_correct.append(right)
            precision = f"{right[auto].mean():.4f}" if auto.any() else "-"
            parts.append(f"{sort} {auto.mean():.3f} / {precision}")
        if parts:
            auto, right = np.concatenate(pooled_auto), np.concatenate(pooled_correct)
            print(
                f"{label}: held-out listings auto coverage / precision: all {auto.mean():.4f} / "
                f"{right[auto].mean() if auto.any() else float('nan'):.4f} ({int(auto.sum())} auto of {len(auto)}); "
                + "; ".join(parts)
            )
        categories = [p.category if p is not None else None for p in run.predictions]
        reference = categories if reference is None else reference
        same = np.mean([a == b for a, b in zip(categories, reference, strict=True)])
        print(f"{label}: nested predictions with float32's category {same:.4f}")


if __name__ == "__main__":
    main()
