"""Categorizer settings on leak-free grouped CV, averaged over several fold seeds.

Reads an existing index (INDEX_DIR, default var/index): no encoding. Prints, for each
setting, mean +- sd over seeds of accuracy and of the coverage reached at 99 % precision,
so the shipped defaults (indexer/knn.py DEFAULT_PARAMS) are chosen on more than one split.
Run: .venv/bin/python bench/bench_categorizer.py [INDEX_DIR]
"""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np
from common import ROOT

from indexer.calibration import choose_threshold, cross_val_predictions, grouped_folds, near_duplicate_groups
from indexer.knn import Categorizer
from indexer.store import IndexStore

SEEDS = range(5)


def evaluate(store, params, folds_by_seed, modalities=("image", "text")):
    labels = store.labels()
    acc, cov = [], []
    for folds in folds_by_seed:
        preds = cross_val_predictions(Categorizer(store, {**params, "threshold": None}), folds, modalities)
        correct = np.array([p.category == lab for p, lab in zip(preds, labels, strict=True)])
        conf = np.array([p.raw_confidence for p in preds])
        acc.append(correct.mean())
        cov.append(choose_threshold(conf, correct)["coverage"])
    return np.mean(acc), np.std(acc), np.mean(cov), np.std(cov)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("INDEX_DIR", str(ROOT / "var" / "index"))
    store = IndexStore.load(path)
    labels = store.labels()
    groups = near_duplicate_groups(store)
    folds_by_seed = [grouped_folds(labels, groups, seed=s) for s in SEEDS]
    print(
        f"index {path}: {len(labels)} products, {len(np.unique(groups))} near-duplicate groups, {len(SEEDS)} fold seeds"
    )
    print("single channels (k=10, T=0.02):")
    for mods, weights in (
        (("image",), {"image": 1}),
        (("text",), {"text": 1, "lexical": 0}),
        (("lexical",), {"lexical": 1}),
        (("text",), {"text": 0.5, "lexical": 0.5}),
    ):
        a, sa, c, sc = evaluate(store, {"k": 10, "temperature": 0.02, "weights": weights}, folds_by_seed, mods)
        print(
            f"  {'+'.join(k for k, v in weights.items() if v):22} acc {a:.4f} +- {sa:.4f}  "
            f"coverage@99% {c:.3f} +- {sc:.3f}"
        )
    print("fused (image, dense text, lexical weights; k; temperature):")
    grid = itertools.product(
        (
            {"image": 0.3, "text": 0.7, "lexical": 0},
            {"image": 0.2, "text": 0.4, "lexical": 0.4},
            {"image": 0.2, "text": 0.5, "lexical": 0.3},
            {"image": 0.3, "text": 0.35, "lexical": 0.35},
        ),
        (10, 20),
        (0.02, 0.05),
    )
    for weights, k, t in grid:
        a, sa, c, sc = evaluate(store, {"k": k, "temperature": t, "weights": weights}, folds_by_seed)
        w = "/".join(f"{weights[m]:.2f}" for m in ("image", "text", "lexical"))
        print(f"  w={w} k={k:2d} T={t:.2f}: acc {a:.4f} +- {sa:.4f}  coverage@99% {c:.3f} +- {sc:.3f}")


if __name__ == "__main__":
    main()
