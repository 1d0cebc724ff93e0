"""Leak-free cross-validation of the service's own Categorizer, per modality.

Near-duplicate products are grouped (`indexer.calibration.near_duplicate_groups`) and
whole groups go to one fold (`grouped_folds`); every product is then predicted by
`Categorizer.predict_rows` with its own fold masked out of the index
(`cross_val_predictions`) — exactly the code path the service runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics

from indexer.calibration import (
    GROUP_THRESHOLDS,
    N_FOLDS,
    SEED,
    TARGET_PRECISION,
    choose_threshold,
    cross_val_predictions,
    grouped_folds,
    near_duplicate_groups,
    near_duplicate_pairs,
)
from indexer.knn import Categorizer
from indexer.store import IndexStore

MODALITY_SETS = {"image": ("image",), "text": ("text",), "fused": ("image", "text")}


# ---- near-duplicate groups -------------------------------------------------------------
def groups_spanning_folds(groups: np.ndarray, folds: np.ndarray) -> int:
    """How many groups have members in more than one fold (must be 0: otherwise twins leak)."""
    pairs = np.unique(np.stack([groups, folds], axis=1), axis=0)
    _, per_group = np.unique(pairs[:, 0], return_counts=True)
    return int((per_group > 1).sum())


def nearest_similarities(store: IndexStore, modality: str) -> dict[str, np.ndarray]:
    """Per product: highest cosine to another product of the same category, and of another category.

    This is the evidence for the grouping thresholds: above them, pairs should be
    (almost) only same-category near-twins.
    """
    vectors, rows = store.vectors_by_row(modality)
    labels = store.labels()[rows]
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    same = labels[:, None] == labels[None, :]
    within = np.where(same, sims, -np.inf).max(axis=1)
    across = np.where(~same, sims, -np.inf).max(axis=1)
    return {"within": within, "across": across}


def duplicate_summary(store: IndexStore, groups: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Group sizes, and how many cross-category pairs exceed each threshold (leak risk if > 0)."""
    sizes = np.bincount(groups)
    labels = store.labels()
    mixed = sum(1 for g in np.flatnonzero(sizes > 1) if len(set(labels[groups == g])) > 1)
    pairs = {}
    for modality, (a, b) in near_duplicate_pairs(store, thresholds).items():
        pairs[modality] = {
            "threshold": float(thresholds[modality]),
            "pairs_above": int(len(a)),
            "cross_category_pairs_above": int((labels[a] != labels[b]).sum()),
        }
    return {
        "thresholds": {m: float(t) for m, t in thresholds.items()},
        "groups": int(len(sizes)),
        "products_in_shared_groups": int(sizes[sizes > 1].sum()),
        "groups_with_several_products": int((sizes > 1).sum()),
        "largest_group": int(sizes.max()) if len(sizes) else 0,
        "groups_with_several_categories": int(mixed),
        "pairs": pairs,
    }


# ---- classification --------------------------------------------------------------------
@dataclass
class ModalityResult:
    name: str
    rows: np.ndarray  # evaluated product rows (those having the modality)
    true: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # raw vote share (what the threshold applies to)
    calibrated: np.ndarray
    correct: np.ndarray
    level2_correct: np.ndarray
    metrics: dict


def classification_metrics(true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-category precision/recall/F1, confusion matrix (rows = true)."""
    predicted = np.array([p if p is not None else "" for p in predicted], dtype=object)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        true, predicted, labels=classes, zero_division=0
    )
    return {
        "accuracy": float(metrics.accuracy_score(true, predicted)),
        "macro_f1": float(metrics.f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "balanced_accuracy": float(np.mean(recall)),
        "per_category": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion": metrics.confusion_matrix(true, predicted, labels=classes).tolist(),
        "n": int(len(true)),
    }


def evaluate(store: IndexStore, folds: np.ndarray, name: str, categorizer: Categorizer | None = None) -> ModalityResult:
    """Out-of-fold predictions of the Categorizer restricted to one modality set."""
    categorizer = categorizer or Categorizer(store)
    modalities = tuple(m for m in MODALITY_SETS[name] if m in store.modalities)
    if not modalities:
        raise ValueError(f"the index holds no {name} vectors")
    predictions = cross_val_predictions(categorizer, folds, modalities)
    has = np.zeros(len(store.products), bool)
    for m in modalities:
        has[store.vectors_by_row(m)[1]] = True
    labels = store.labels()
    rows = np.flatnonzero(has & (labels != ""))  # unlabeled products cannot be scored
    true = labels[rows]
    predicted = np.array([predictions[r].category for r in rows], dtype=object)
    correct = np.array([p == t for p, t in zip(predicted, true, strict=True)])
    level2 = np.array(
        [list(predictions[r].category_path[:2]) == list(store.products[r].category_path[:2]) for r in rows]
    )
    result = classification_metrics(true, predicted, categorizer.classes)
    result["level2_accuracy"] = float(level2.mean()) if len(level2) else 0.0
    channels = list(modalities)
    if "text" in modalities and getattr(store, "lexical", None) is not None:
        channels.append("lexical")  # predict_rows adds the index's lexical channel to text, as the service does
    result["modalities"] = channels
    result["left_out"] = int(len(store.products) - len(rows))
    return ModalityResult(
        name=name,
        rows=rows,
        true=true,
        predicted=predicted,
        confidence=np.array([predictions[r].raw_confidence for r in rows]),
        calibrated=np.array([predictions[r].confidence for r in rows]),
        correct=correct,
        level2_correct=level2,
        metrics=result,
    )


# ---- auto / review decision ------------------------------------------------------------
def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Precision of the accepted set when accepting the most confident first, vs coverage."""
    order = np.argsort(-confidence, kind="stable")
    ok = correct[order].astype(float)
    n = np.arange(1, len(ok) + 1)
    return {"coverage": n / len(ok), "precision": np.cumsum(ok) / n, "threshold": confidence[order]}


def auto_decision(
    confidence: np.ndarray, correct: np.ndarray, folds: np.ndarray, target: float = TARGET_PRECISION
) -> dict:
    """Threshold chosen like the build does, plus an honest out-of-fold check of it.

    The in-sample figures choose and measure the threshold on the same predictions;
    the out-of-fold figures choose it on four folds and apply it to the fifth.
    """
    chosen = choose_threshold(confidence, correct, target)
    accepted, hits = 0, 0
    per_fold = []
    for f in np.unique(folds):
        test = folds == f
        t = choose_threshold(confidence[~test], correct[~test], target)["threshold"]
        take = test & (confidence >= t) if t is not None else np.zeros_like(test)
        accepted += int(take.sum())
        hits += int(correct[take].sum())
        per_fold.append(None if t is None else float(t))
    n = len(confidence)
    return {
        "threshold": chosen["threshold"],
        "coverage": float(chosen["coverage"]),
        "precision": chosen["precision"],
        "target": float(target),
        "out_of_fold": {
            "coverage": float(accepted / n) if n else 0.0,
            "precision": float(hits / accepted) if accepted else None,
            "thresholds": per_fold,
        },
    }


def run(store: IndexStore, n_folds: int = N_FOLDS, seed: int = SEED, thresholds: dict | None = None) -> dict:
    """Groups, folds and the three modality results (image, text, fused)."""
    thresholds = dict(thresholds or GROUP_THRESHOLDS)
    labels = store.labels()
    groups = near_duplicate_groups(store, thresholds)
    folds = grouped_folds(labels, groups, n_folds=n_folds, seed=seed)
    categorizer = Categorizer(store)
    results = {
        name: evaluate(store, folds, name, categorizer)
        for name in MODALITY_SETS
        if any(m in store.modalities for m in MODALITY_SETS[name])
    }
    return {"groups": groups, "folds": folds, "thresholds": thresholds, "results": results, "categorizer": categorizer}
