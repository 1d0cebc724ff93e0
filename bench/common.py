"""Helpers shared by the benchmarks: data location, in-memory stores, leak-free CV accuracy."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from indexer.categorizer.protocol import choose_threshold, cross_val_predictions, grouped_folds, near_duplicate_groups  # noqa: E402
from indexer.categorizer.vote import Categorizer  # noqa: E402
from indexer.store.local.index import IndexStore, ModalityIndex, make_faiss_index  # noqa: E402


def data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data" / "Flipkart"))


def memory_store(products, vectors: dict[str, np.ndarray], profile: str = "bench") -> IndexStore:
    """An IndexStore held in memory; `vectors[m]` has one row per product, NaN = absent."""
    modalities = {}
    for m, matrix in vectors.items():
        present = ~np.isnan(matrix).any(axis=1)
        vecs = np.ascontiguousarray(matrix[present])
        modalities[m] = ModalityIndex(vecs, np.flatnonzero(present), make_faiss_index(vecs))
    manifest = {"profile": profile, "modalities": sorted(vectors)}
    return IndexStore(Path("."), "mem", manifest, list(products), modalities)


def cv_scores(store: IndexStore, folds: np.ndarray | None = None) -> dict:
    """Grouped but NOT nested CV (fixed parameters, lexical fitted on every text): accuracy per
    modality and fused plus in-sample auto coverage, to compare encoder choices side by side.
    The nested estimates are the report's (evaluation.crossval.run)."""
    labels = store.labels()
    if folds is None:
        folds = grouped_folds(labels, near_duplicate_groups(store))
    categorizer = Categorizer(store)
    out = {}
    for name, mods in (("image", ("image",)), ("text", ("text",)), ("fused", ("image", "text"))):
        if not set(mods) <= set(store.modalities):
            continue
        preds = cross_val_predictions(categorizer, folds, mods)
        correct = np.array([p.category == lab for p, lab in zip(preds, labels, strict=True)])
        conf = np.array([p.raw_confidence for p in preds])
        out[name] = {"accuracy": float(correct.mean()), **choose_threshold(conf, correct)}
    return out
