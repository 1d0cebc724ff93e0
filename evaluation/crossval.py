"""Nested, leak-free cross-validation of the service's own Categorizer, per modality set.

The protocol lives in `indexer.categorizer.protocol` (the build's deployment calibration calls the
same `fit`): near-duplicates are grouped over every channel, whole groups go to one outer
fold, and inside each outer fold the lexical vocabulary, the channel weights, the isotonic
calibration and the auto/review threshold are fitted on the training part only
(`nested_predictions`). Figures are pooled per fold seed, then given as mean +- sd over seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import metrics

from indexer.categorizer import (
    EVAL_SEEDS,
    GROUP_THRESHOLDS,
    N_FOLDS,
    PARAM_GRID,
    TARGET_PRECISION,
    TRADE_OFF_TARGETS,
    ListingMaterial,
    NestedRun,
    channel_similarities,
    grouped_folds,
    near_duplicate_groups,
    near_duplicate_pairs,
    nested_predictions,
    usable_folds,
)
from indexer.store import IndexStore

MODALITY_SETS = {"image": ("image",), "text": ("text",), "fused": ("image", "text")}


# ---- near-duplicate groups -------------------------------------------------------------
def groups_spanning_folds(groups: np.ndarray, folds: np.ndarray) -> int:
    """How many groups have members in more than one fold (must be 0: otherwise twins leak)."""
    pairs = np.unique(np.stack([groups, folds], axis=1), axis=0)
    _, per_group = np.unique(pairs[:, 0], return_counts=True)
    return int((per_group > 1).sum())


def nearest_similarities(store: IndexStore, channel: str) -> dict[str, np.ndarray]:
    """Per product: highest cosine to another product of the same category, and of another category.

    This is the evidence for the grouping thresholds (one histogram per channel, lexical
    included): above them, pairs should be (almost) only same-category near-twins.
    """
    sims, rows = channel_similarities(store, channel)
    sims = np.array(sims, dtype=np.float64)
    labels = store.labels()[rows]
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


def evaluate(store: IndexStore, run: NestedRun, name: str, modalities: tuple[str, ...]) -> ModalityResult:
    """Scores of one seed's nested outer-fold predictions for one modality set."""
    labels = store.labels()
    has = np.zeros(len(store.products), bool)
    for m in modalities:
        has[store.vectors_by_row(m)[1]] = True
    rows = np.flatnonzero(has & (labels != "") & (run.folds >= 0))  # unlabeled products cannot be scored
    maybe = [run.predictions[r] for r in rows]
    predictions = [p for p in maybe if p is not None]
    if len(predictions) != len(maybe):
        raise RuntimeError(f"{name}: some evaluated rows were never predicted")
    true = labels[rows]
    predicted: np.ndarray = np.array([p.category for p in predictions], dtype=object)
    correct: np.ndarray = np.array([p == t for p, t in zip(predicted, true, strict=True)], dtype=bool)
    level2: np.ndarray = np.array(
        [
            list(p.category_path[:2]) == list(store.products[int(r)].category_path[:2])
            for p, r in zip(predictions, rows, strict=True)
        ],
        dtype=bool,
    )
    result = classification_metrics(true, predicted, store.categories())
    result["level2_accuracy"] = float(level2.mean()) if len(level2) else 0.0
    channels = list(modalities)
    if "text" in modalities and getattr(store, "lexical", None) is not None:
        channels.append("lexical")  # predict_rows adds the lexical channel to text, as the service does
    result["modalities"] = channels
    result["left_out"] = int(len(store.products) - len(rows))
    return ModalityResult(
        name=name,
        rows=rows,
        true=true,
        predicted=predicted,
        confidence=np.array([p.raw_confidence for p in predictions]),
        calibrated=np.array([p.confidence for p in predictions]),
        correct=correct,
        level2_correct=level2,
        metrics=result,
    )


def spread(values: Sequence[float | None]) -> dict:
    """mean, sd (population), min, max of the values that are not None; how many were None."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "sd": None, "min": None, "max": None, "missing": len(values)}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "missing": int(len(values) - len(v)),
    }


def fold_accuracies(result: ModalityResult, folds: np.ndarray) -> list[float]:
    f = folds[result.rows]
    return [float(result.correct[f == k].mean()) for k in np.unique(f)]


def pooled_metrics(store: IndexStore, per_seed: list[ModalityResult], folds_by_seed: list[np.ndarray]) -> dict:
    """Metrics over every seed's predictions pooled (each product once per seed, so the
    pooled accuracy is the mean over seeds), with the spread over seeds and over folds."""
    first = per_seed[0]
    true = np.concatenate([r.true for r in per_seed])
    predicted = np.concatenate([r.predicted for r in per_seed])
    out = classification_metrics(true, predicted, store.categories())
    out["level2_accuracy"] = float(np.mean([r.metrics["level2_accuracy"] for r in per_seed]))
    seed_acc = [r.metrics["accuracy"] for r in per_seed]
    fold_acc = [a for r, f in zip(per_seed, folds_by_seed, strict=True) for a in fold_accuracies(r, f)]
    out.update(
        {
            "accuracy_sd_over_seeds": float(np.std(seed_acc)),
            "accuracy_per_seed": seed_acc,
            "accuracy_over_folds": spread(fold_acc),
            "macro_f1_per_seed": [r.metrics["macro_f1"] for r in per_seed],
            "n": first.metrics["n"],
            "pooled_predictions": int(len(true)),
            "modalities": first.metrics["modalities"],
            "left_out": first.metrics["left_out"],
            "nested": True,
        }
    )
    return out


# ---- auto / review decision ------------------------------------------------------------
def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Precision of the accepted set when accepting the most confident first, vs coverage."""
    order = np.argsort(-confidence, kind="stable")
    ok = correct[order].astype(float)
    n = np.arange(1, len(ok) + 1)
    return {"coverage": n / len(ok), "precision": np.cumsum(ok) / n, "threshold": confidence[order]}


def operating_point(per_seed: list[ModalityResult], runs: list[NestedRun], target: float) -> dict:
    """Nested auto/review figures: each outer fold applies the threshold its own fit chose on
    its training part (inner out-of-fold predictions) for `target` to its held-out products."""
    seeds = []
    folds_out = []
    for result, run in zip(per_seed, runs, strict=True):
        fold_of = run.folds[result.rows]
        accepted = hits = 0
        for k, fitted in zip(np.unique(run.folds[run.folds >= 0]), run.fits, strict=True):
            t = fitted.threshold_for(target)
            test = fold_of == k
            take = test & (result.confidence >= t) if t is not None else np.zeros_like(test)
            accepted += int(take.sum())
            hits += int(result.correct[take].sum())
            folds_out.append(
                {
                    "threshold": t,
                    "coverage": float(take.sum() / test.sum()) if test.any() else 0.0,
                    "precision": float(result.correct[take].mean()) if take.any() else None,
                }
            )
        seeds.append(
            {
                "coverage": float(accepted / len(result.rows)) if len(result.rows) else 0.0,
                "precision": float(hits / accepted) if accepted else None,
            }
        )
    coverage = spread([s["coverage"] for s in seeds])
    precision = spread([s["precision"] for s in seeds])
    return {
        "target": float(target),
        "coverage": coverage["mean"],
        "precision": precision["mean"],
        "coverage_over_seeds": coverage,
        "precision_over_seeds": precision,
        "per_seed": seeds,
        "coverage_over_folds": spread([f["coverage"] for f in folds_out]),
        "precision_over_folds": spread([f["precision"] for f in folds_out]),
        "folds_below_target": int(sum(1 for f in folds_out if f["precision"] is not None and f["precision"] < target)),
        "folds_without_threshold": int(sum(1 for f in folds_out if f["threshold"] is None)),
        "thresholds": spread([f["threshold"] for f in folds_out]),
        "per_fold": folds_out,
    }


def run(
    store: IndexStore,
    seeds: Sequence[int] = EVAL_SEEDS,
    n_folds: int = N_FOLDS,
    thresholds: dict | None = None,
    grouped: bool = True,
    names: Sequence[str] = tuple(MODALITY_SETS),
    grid: Sequence[dict] = PARAM_GRID,
    target: float = TARGET_PRECISION,
    progress: Callable[[str], None] | None = None,
    material: ListingMaterial | None = None,
) -> dict:
    """Nested evaluation over several outer fold seeds. `material` (encoded titles, other
    languages) adds those sorts to the simulated listings of the fused set (evaluation/kinds.py).

    `grouped=False` gives random (stratified, ungrouped) folds: near-twins may sit on both
    sides, as in the published random-split figures; everything else stays nested.
    `progress` is told which fold seed runs (a seed takes tens of seconds on 945 products).
    """
    thresholds = dict(thresholds or GROUP_THRESHOLDS)
    labels = store.labels()
    groups = near_duplicate_groups(store, thresholds) if grouped else np.arange(len(labels))
    sets = {n: tuple(m for m in MODALITY_SETS[n] if m in store.modalities) for n in names}
    sets = {n: m for n, m in sets.items() if m}
    n_folds = usable_folds(labels, groups, n_folds)
    if n_folds == 0:
        raise ValueError("too few categories or near-duplicate groups to cross-validate")
    folds_by_seed, runs_by_seed, results_by_seed = [], [], []
    for i, seed in enumerate(seeds):
        if progress is not None:
            progress(f"fold seed {seed} ({i + 1} of {len(seeds)}, {n_folds} folds)")
        folds = grouped_folds(labels, groups, n_folds=n_folds, seed=seed)
        runs = nested_predictions(store, folds, groups, sets, grid, target, seed, material=material, kinds=grouped)
        folds_by_seed.append(folds)
        runs_by_seed.append(runs)
        results_by_seed.append({n: evaluate(store, runs[n], n, sets[n]) for n in sets})
    classification = {n: pooled_metrics(store, [r[n] for r in results_by_seed], folds_by_seed) for n in sets}
    return {
        "groups": groups,
        "folds": folds_by_seed[0],
        "folds_by_seed": folds_by_seed,
        "seeds": list(seeds),
        "thresholds": thresholds,
        "sets": sets,
        "runs": runs_by_seed,
        "results": results_by_seed[0],  # first seed: error table, figures
        "results_by_seed": results_by_seed,
        "classification": classification,
    }


def auto_decisions(cv: dict, name: str, targets: Sequence[float] = TRADE_OFF_TARGETS) -> dict[float, dict]:
    """Nested operating points of one modality set for each precision target."""
    per_seed = [r[name] for r in cv["results_by_seed"]]
    runs = [r[name] for r in cv["runs"]]
    return {t: operating_point(per_seed, runs, t) for t in targets}
