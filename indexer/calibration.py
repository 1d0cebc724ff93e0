"""The one fitting protocol of the Categorizer: deployment calibration and nested evaluation.

Everything the Categorizer learns from data is fitted by `fit` on a set of training rows
only: the lexical vocabulary and idf (`training_view`), the channel weights (chosen from
the declared `PARAM_GRID` by inner grouped cross-validation), the isotonic calibration
and the auto/review threshold (both from the inner out-of-fold predictions). `predict`
then answers other rows with only training rows as neighbours.

- Deployment (`calibrate`, called by the build and the service): `fit` on every row.
- Evaluation (`nested_predictions`, called by the report and the benches): outer grouped
  folds, `fit` on each training part, `predict` its held-out fold.

Near-duplicates (templated mugs, phone cases, byte-identical images) would let a product
vote for its own twin, so products are grouped (connected components of pairs above a
cosine threshold in any channel the Categorizer votes with) and whole groups go to one
fold. A k-NN model "trains" by masking rows out of the index: exact and fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedGroupKFold

from .knn import DEFAULT_PARAMS, Categorizer, Prediction
from .lexical import LexicalIndex
from .store import IndexStore

# Above these cosines nearest-neighbour pairs are (almost) all same-category near-twins
# sharing a template or a photo: the report's nearest-neighbour histograms show each
# channel's evidence, and `duplicate_summary` counts the cross-category pairs above them.
# The lexical TF-IDF used for grouping is the index's (fitted on every text): grouping
# reads no label, and a twin is a twin whichever fold it lands in.
GROUP_THRESHOLDS = {"image": 0.95, "text": 0.90, "lexical": 0.90}
TARGET_PRECISION = 0.99
TRADE_OFF_TARGETS = (0.98, 0.99, 0.995)
N_FOLDS = 5  # outer folds of the evaluation, and inner folds of every fit (deployment included)
SEED = 0
EVAL_SEEDS = (0, 1, 2)  # outer fold seeds of the report: figures are mean +- sd over them

# Declared before the nested evaluation was run: the channel weights are selected inside each
# training part by inner grouped CV accuracy (ties: the first listed). k, candidates and both
# temperatures stay frozen at DEFAULT_PARAMS (they are not re-selected; see indexer/knn.py).
PARAM_GRID: tuple[dict, ...] = (
    {"weights": {"image": 0.2, "text": 0.4, "lexical": 0.4}},
    {"weights": {"image": 0.3, "text": 0.7, "lexical": 0.0}},
    {"weights": {"image": 0.2, "text": 0.5, "lexical": 0.3}},
    {"weights": {"image": 0.3, "text": 0.35, "lexical": 0.35}},
)
FUSED = ("image", "text")
ENTRY_KEYS = ("k", "candidates", "temperature", "confidence_temperature", "weights")


# ---- near-duplicate groups -------------------------------------------------------------
def channel_similarities(store: IndexStore, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """(cosine matrix, product rows) of one channel over the products having it. O(N^2) memory."""
    index = store.channels()[channel]
    if channel == "lexical":
        return (index.matrix @ index.matrix.T).toarray(), index.rows
    return index.vectors @ index.vectors.T, index.rows


def near_duplicate_pairs(store: IndexStore, thresholds: Mapping[str, float] | None = None) -> dict[str, tuple]:
    """Per channel, the product-row pairs (a, b), a < b in channel order, at or above its threshold."""
    pairs = {}
    for channel, t in (thresholds or GROUP_THRESHOLDS).items():
        if channel not in store.channels():
            continue
        sims, rows = channel_similarities(store, channel)
        i, j = np.nonzero(np.triu(sims >= t, k=1))
        pairs[channel] = (rows[i], rows[j])
    return pairs


def near_duplicate_groups(store: IndexStore, thresholds: Mapping[str, float] | None = None) -> np.ndarray:
    """Group id per product row: connected components of 'too similar to split' pairs."""
    from scipy.sparse.csgraph import connected_components

    n = len(store.products)
    src: list[int] = []
    dst: list[int] = []
    for a, b in near_duplicate_pairs(store, thresholds).values():
        src.extend(a)
        dst.extend(b)
    graph = sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return np.asarray(labels)


def grouped_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int = N_FOLDS, seed: int = SEED) -> np.ndarray:
    """Fold number per row; every group lies in one fold, categories stay balanced."""
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1)
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test] = f
    return folds


def usable_folds(labels: np.ndarray, groups: np.ndarray, wanted: int = N_FOLDS) -> int:
    """How many grouped folds these rows allow (0 when fewer than 2 categories or 2 groups)."""
    classes, sizes = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        return 0
    n = min(wanted, len(np.unique(groups)), int(sizes.max(initial=0)))
    return n if n >= 2 else 0


def cross_val_predictions(
    categorizer: Categorizer,
    folds: np.ndarray,
    modalities: tuple[str, ...] = FUSED,
    k: int | None = None,
) -> list[Prediction]:
    """NOT nested: out-of-fold predictions with the categorizer's fixed parameters and the
    index's lexical channel (fitted on every text). Kept for quick benches that say so."""
    rows = np.arange(len(folds))
    exclude = folds[:, None] == folds[None, :]
    return categorizer.predict_rows(rows, exclude=exclude, k=k, modalities=modalities)


# ---- threshold and calibration ---------------------------------------------------------
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


# ---- the protocol ----------------------------------------------------------------------
def training_view(store: IndexStore, train: np.ndarray) -> IndexStore:
    """The index as a model fitted on `train` rows sees it: the lexical vocabulary and idf
    refitted on their texts, every product's text transformed with them. O(total tokens).

    When `train` covers every text (deployment) the index's own lexical channel is that fit.
    """
    if store.lexical is None:
        return store
    rows = store.lexical.rows
    mask = np.asarray(train, dtype=bool)[rows]
    if mask.all():
        return store
    lexical = None
    if mask.any():
        texts = [store.product_text(store.products[r]) for r in rows]
        lexical = LexicalIndex.fit(texts, rows, fit_mask=mask)
    return IndexStore(store.path, store.version, store.manifest, store.products, store.modalities, lexical)


@dataclass
class Fitted:
    """What `fit` learnt on its training rows; `entry` is a manifest `categorizer` entry."""

    view: IndexStore
    train: np.ndarray  # bool per product row: the rows allowed as neighbours
    modalities: tuple[str, ...]
    entry: dict
    inner_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    inner_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    selection: list[dict] = field(default_factory=list)

    def threshold_for(self, target: float) -> float | None:
        """The threshold this fit would choose for another precision target (same inner predictions)."""
        if not len(self.inner_confidence):
            return None
        return choose_threshold(self.inner_confidence, self.inner_correct, target)["threshold"]


def _settings(candidate: Mapping) -> dict:
    return {**DEFAULT_PARAMS, **candidate, "threshold": None, "calibration": None}


def _used_channels(view: IndexStore, modalities: Sequence[str]) -> list[str]:
    used = [m for m in modalities if m in view.channels()]
    if "text" in used and view.lexical is not None:
        used.append("lexical")
    return used


def _effective(candidate: Mapping, used: Sequence[str]) -> tuple:
    """Candidates with proportional weights on the used channels predict identically."""
    settings = _settings(candidate)
    w = {c: float(settings["weights"].get(c, 1.0)) for c in used}
    total = sum(v for v in w.values() if v > 0) or 1.0
    frozen = tuple(settings[k] for k in ("k", "candidates", "temperature", "confidence_temperature"))
    return (*frozen, tuple(round(max(w[c], 0.0) / total, 9) for c in used))


def fit(
    store: IndexStore,
    train: np.ndarray,
    groups: np.ndarray,
    modalities: tuple[str, ...] = FUSED,
    grid: Sequence[Mapping] = PARAM_GRID,
    target: float = TARGET_PRECISION,
    seed: int = SEED,
    view: IndexStore | None = None,
) -> Fitted:
    """Fit the Categorizer on the labelled `train` rows only (see the module docstring).

    Cost: one `predict_rows` over the training rows per distinct grid candidate, plus a
    lexical refit (pass `view` to share one between modality sets of the same training part).
    """
    if not grid:
        raise ValueError("the parameter grid is empty")
    train = np.asarray(train, dtype=bool)
    labels = store.labels()
    view = view if view is not None else training_view(store, train)
    rows = np.flatnonzero(train & (labels != ""))
    n_inner = usable_folds(labels[rows], groups[rows])
    if n_inner == 0:
        entry = {k: _settings(grid[0])[k] for k in ENTRY_KEYS}
        return Fitted(
            view,
            train,
            modalities,
            {
                **entry,
                "threshold": None,
                "calibration": None,
                "cv": {"skipped": f"too few products to cross-validate ({len(rows)}): every decision is 'review'"},
            },
        )
    inner = grouped_folds(labels[rows], groups[rows], n_folds=n_inner, seed=seed)
    fold_of = np.full(len(labels), -1)
    fold_of[rows] = inner
    exclude = (fold_of[None, :] == inner[:, None]) | ~train[None, :]
    used = _used_channels(view, modalities)
    seen: dict[tuple, dict] = {}
    best = None
    selection = []
    for candidate in grid:
        key = _effective(candidate, used)
        if key not in seen:
            preds = Categorizer(view, _settings(candidate)).predict_rows(rows, exclude=exclude, modalities=modalities)
            seen[key] = {
                "confidence": np.array([p.raw_confidence for p in preds]),
                "correct": np.array([p.category == lab for p, lab in zip(preds, labels[rows], strict=True)]),
            }
        result = seen[key]
        accuracy = float(result["correct"].mean())
        selection.append({"weights": dict(_settings(candidate)["weights"]), "inner_accuracy": accuracy})
        if best is None or accuracy > best[0]:
            best = (accuracy, candidate, result)
    assert best is not None
    accuracy, chosen, result = best
    decision = choose_threshold(result["confidence"], result["correct"], target)
    settings = _settings(chosen)
    entry = {
        **{k: settings[k] for k in ENTRY_KEYS},
        "threshold": decision["threshold"],
        "calibration": fit_calibration(result["confidence"], result["correct"]),
        "cv": {
            "folds": n_inner,
            "seed": seed,
            "group_thresholds": GROUP_THRESHOLDS,
            "groups": int(len(np.unique(groups[rows]))),
            "grid": [dict(c) for c in grid],
            "selection": selection,
            "accuracy": accuracy,
            "auto_coverage": decision["coverage"],
            "auto_precision": decision["precision"],
            "target_precision": target,
            "note": "out-of-fold figures of the fit itself, threshold chosen on them: not an evaluation",
        },
    }
    return Fitted(view, train, modalities, entry, result["confidence"], result["correct"], selection)


def predict(fitted: Fitted, rows: np.ndarray, with_calibration: bool = True) -> list[Prediction]:
    """Predict `rows` (e.g. a held-out fold) with only the fit's training rows as neighbours."""
    rows = np.asarray(rows, dtype=np.int64)
    params = dict(fitted.entry)
    params.pop("cv", None)
    if not with_calibration:
        params["calibration"] = None
    exclude = np.tile(~fitted.train, (len(rows), 1))
    return Categorizer(fitted.view, params).predict_rows(rows, exclude=exclude, modalities=fitted.modalities)


@dataclass
class NestedRun:
    """Outer-fold predictions (None where a row was not predicted) and each fold's fit."""

    predictions: list[Prediction | None]
    fits: list[Fitted]
    folds: np.ndarray


def nested_predictions(
    store: IndexStore,
    folds: np.ndarray,
    groups: np.ndarray,
    modality_sets: Mapping[str, tuple[str, ...]],
    grid: Sequence[Mapping] = PARAM_GRID,
    target: float = TARGET_PRECISION,
    seed: int = SEED,
) -> dict[str, NestedRun]:
    """Evaluation: for each outer fold, `fit` on the other folds and `predict` it, per modality set.

    Rows with fold -1 are never predicted nor used. Cost per fold: one lexical refit plus the
    fits' inner predictions (see `fit`).
    """
    n = len(store.products)
    runs = {name: NestedRun([None] * n, [], folds) for name in modality_sets}
    for f in np.unique(folds[folds >= 0]):
        train = (folds >= 0) & (folds != f)
        test = np.flatnonzero(folds == f)
        view = training_view(store, train)
        for name, modalities in modality_sets.items():
            fitted = fit(store, train, groups, modalities, grid, target, seed, view=view)
            for r, p in zip(test, predict(fitted, test), strict=True):
                runs[name].predictions[r] = p
            fitted.view = store  # drop the per-fold lexical refit: keep memory flat over folds
            runs[name].fits.append(fitted)
    return runs


def calibrate(store: IndexStore, target: float = TARGET_PRECISION, params: dict | None = None) -> dict:
    """Deployment: `fit` the fused Categorizer on every row and return its manifest entry.

    Same procedure as each training part of the evaluation, on all data. `params` given:
    those settings are frozen (a one-candidate grid) instead of selected from PARAM_GRID.
    """
    groups = near_duplicate_groups(store)
    grid = [{**DEFAULT_PARAMS, **params}] if params else PARAM_GRID
    fitted = fit(store, np.ones(len(store.products), bool), groups, FUSED, grid, target, SEED)
    return fitted.entry
