"""Effect of float16 vector storage on the real catalogue's figures.

The store keeps dense vectors as float16 (indexer.segments.VECTOR_DTYPE) for the exact fused
re-rank; the FAISS index holds its own float32 copy for candidate search. This script runs
the project's nested protocol (indexer.calibration.nested_predictions: grouped outer folds,
parameters and threshold fitted inside the training folds, fused image + text, one fold seed)
and the deployment fit (calibrate) twice on the same index:
- "float16": the store as loaded (the vectors the service re-ranks with);
- "float32": the same store with its vectors replaced by the build's float32 vectors, read
  back from the Flat FAISS index (which stores them as built).
and prints the nested accuracy, auto coverage and auto precision, and the deployment threshold.

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

from indexer.calibration import (
    ENTRY_KEYS,
    FUSED,
    SEED,
    calibrate,
    grouped_folds,
    near_duplicate_groups,
    nested_predictions,
    usable_folds,
)
from indexer.store import IndexStore, ModalityIndex


def float32_copy(store: IndexStore, vectors: dict[str, np.ndarray]) -> IndexStore:
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


def main() -> None:
    index_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "var" / "index"
    store = IndexStore.load(index_dir)
    print(f"index {index_dir} version {store.version}: {len(store.products)} products (real data)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if store.manifest["index_factory"] != "Flat" or store.deltas:
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
    for label, candidate in (("float32", float32_copy(store, f32)), ("float16", store)):
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


if __name__ == "__main__":
    main()
