"""Effect of float16 vector storage on the real catalogue's figures.

The store keeps dense vectors as float16 (indexer.segments.VECTOR_DTYPE) for the exact fused
re-rank; the FAISS index holds its own float32 copy for candidate search. This script runs
the project's calibration protocol (indexer.calibration.calibrate: grouped CV over the whole
index, the protocol on main when this was written) twice on the same index:
- "float16": the store as loaded (the vectors the service re-ranks with);
- "float32": the same store with its vectors replaced by the build's float32 vectors, read
  back from the Flat FAISS index (which stores them as built).
and prints accuracy, auto coverage, auto precision and threshold of each.

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

from indexer.calibration import calibrate
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
    for label, candidate in (("float32", float32_copy(store, f32)), ("float16", store)):
        t0 = time.perf_counter()
        entry = calibrate(candidate)
        cv = entry["cv"]
        print(
            f"{label}: accuracy {cv['accuracy']:.4f}, auto coverage {cv['auto_coverage']:.4f}, "
            f"auto precision {cv['auto_precision']:.4f}, threshold {entry['threshold']:.5f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )


if __name__ == "__main__":
    main()
