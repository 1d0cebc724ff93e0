"""Leak-free cross-validation of the Categorizer, and the auto/review threshold.

Near-duplicates (templated mugs, phone cases, byte-identical images) would let a
product vote for its own twin, so products are first grouped (union of image or text
similarity above a threshold) and whole groups are assigned to folds. Because a k-NN
model has nothing to fit, a fold is "trained" by masking its own rows out of the
index: exact, and fast enough to run at every build.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedGroupKFold

from .knn import DEFAULT_PARAMS, Categorizer, Prediction
from .store import IndexStore

# Above these cosine similarities every nearest-neighbour pair of the 945 products is
# of the same category and shares a template or a photo (measured: see the report).
GROUP_THRESHOLDS = {"image": 0.95, "text": 0.90}
TARGET_PRECISION = 0.99
N_FOLDS = 5
SEED = 0


def near_duplicate_pairs(store: IndexStore, thresholds: dict[str, float] | None = None) -> dict[str, tuple]:
    """Per modality, the product-row pairs (a, b), a < b in vector order, at or above its threshold."""
    pairs = {}
    for modality, t in (thresholds or GROUP_THRESHOLDS).items():
        if modality not in store.modalities:
            continue
        vecs, rows = store.vectors_by_row(modality)
        i, j = np.nonzero(np.triu(vecs @ vecs.T >= t, k=1))
        pairs[modality] = (rows[i], rows[j])
    return pairs


def near_duplicate_groups(store: IndexStore, thresholds: dict[str, float] | None = None) -> np.ndarray:
    """Group id per product row: connected components of 'too similar to split' pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(store.products)
    src, dst = [], []
    for a, b in near_duplicate_pairs(store, thresholds).values():
        src.extend(a)
        dst.extend(b)
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def grouped_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int = N_FOLDS, seed: int = SEED) -> np.ndarray:
    """Fold number per row; every group lies in one fold, categories stay balanced."""
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test] = f
    return folds


def cross_val_predictions(
    categorizer: Categorizer,
    folds: np.ndarray,
    modalities: tuple[str, ...] = ("image", "text"),
    k: int | None = None,
) -> list[Prediction]:
    """Out-of-fold prediction for every product row, from the index's stored vectors."""
    rows = np.arange(len(folds))
    exclude = folds[:, None] == folds[None, :]
    return categorizer.predict_rows(rows, exclude=exclude, k=k, modalities=modalities)


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float = TARGET_PRECISION) -> dict:
    """Lowest confidence threshold whose accepted set reaches `target` precision (max coverage)."""
    order = np.argsort(-confidence, kind="stable")
    conf, ok = confidence[order], correct[order].astype(float)
    precision = np.cumsum(ok) / np.arange(1, len(ok) + 1)
    # only cut between distinct confidence values
    last_of_value = np.r_[conf[1:] != conf[:-1], True]
    feasible = np.flatnonzero((precision >= target) & last_of_value)
    if len(feasible) == 0:
        return {"threshold": None, "coverage": 0.0, "precision": None, "target": target}
    cut = feasible[-1]
    return {
        "threshold": float(conf[cut]),
        "coverage": float((cut + 1) / len(conf)),
        "precision": float(precision[cut]),
        "target": target,
    }


def fit_calibration(confidence: np.ndarray, correct: np.ndarray, points: int = 21) -> dict:
    """Isotonic map raw vote share -> observed precision, stored as interpolation knots."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(confidence, correct.astype(float))
    xs = np.linspace(0.0, 1.0, points)
    return {"x": [round(float(x), 4) for x in xs], "y": [round(float(y), 4) for y in iso.predict(xs)]}


def calibrate(store: IndexStore, target: float = TARGET_PRECISION, params: dict | None = None) -> dict:
    """Cross-validate the fused Categorizer and return its manifest entry (params + threshold).

    Starts from the code's defaults (not an older manifest's entry) plus `params`.
    """
    settings = {**DEFAULT_PARAMS, **(params or {}), "threshold": None, "calibration": None}
    categorizer = Categorizer(store, settings)
    labels = store.labels()
    groups = near_duplicate_groups(store)
    _, class_sizes = np.unique(labels, return_counts=True)
    n_folds = min(N_FOLDS, len(np.unique(groups)), int(class_sizes.max(initial=0)))
    if n_folds < 2 or len(class_sizes) < 2:
        entry = {k: settings[k] for k in ("k", "candidates", "temperature", "confidence_temperature", "weights")}
        return {
            **entry,
            "threshold": None,
            "calibration": None,
            "cv": {"skipped": f"too few products to cross-validate ({len(labels)}): every decision is 'review'"},
        }
    folds = grouped_folds(labels, groups, n_folds=n_folds)
    preds = cross_val_predictions(categorizer, folds)
    confidence = np.array([p.raw_confidence for p in preds])
    correct = np.array([p.category == lab for p, lab in zip(preds, labels, strict=True)])
    decision = choose_threshold(confidence, correct, target)
    return {
        "k": categorizer.k,
        "candidates": categorizer.candidates,
        "temperature": categorizer.temperature,
        "confidence_temperature": categorizer.confidence_temperature,
        "weights": categorizer.weights,
        "threshold": decision["threshold"],
        "calibration": fit_calibration(confidence, correct),
        "cv": {
            "folds": n_folds,
            "seed": SEED,
            "group_thresholds": GROUP_THRESHOLDS,
            "groups": int(len(np.unique(groups))),
            "accuracy": float(correct.mean()),
            "auto_coverage": decision["coverage"],
            "auto_precision": decision["precision"],
            "target_precision": target,
        },
    }
