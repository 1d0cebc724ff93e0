"""A calibrated combiner of confidence features: P(the category is right | the vote's evidence).

The raw vote share saturates: on 756 inner predictions of one training part, 520 had a share of
exactly 1.0 (all ten voters agree) and 5 of those were wrong, so no threshold on the share alone
can be shown to keep 99 % precision with a finite sample (`thresholds`). Other evidence ranks
inside that block: how close the nearest product is (a listing unlike anything indexed), how
pure the voters are, how much the photo and the text disagree, and which kind of listing it is.
A logistic regression on those features (standardised) is fitted inside each training part on
its inner-fold listings and stored in the manifest as plain numbers; the service evaluates it
with numpy (a dot product: microseconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexer.categorizer.kinds import KINDS

Prediction = Any  # a vote.Prediction (vote imports this module: no import back)

FEATURES = (
    "logit vote share",
    "top similarity",
    "purity",
    "disagreement",
    "photo share of the category",
    "text share of the category",
)
C = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's default), frozen
_EPS = 1e-4


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return float(np.log(p / (1 - p)))


def feature_row(prediction: Prediction, kind: str) -> np.ndarray:
    """The features of one prediction (FEATURES, then one indicator per kind)."""
    votes = prediction.channel_votes
    category = prediction.category or ""
    photo = votes["photo"].get(category, 0.0) if "photo" in votes else prediction.raw_confidence
    text = votes["text"].get(category, 0.0) if "text" in votes else prediction.raw_confidence
    base = [
        _logit(prediction.raw_confidence),
        float(prediction.top_similarity or 0.0),
        float(prediction.purity or 0.0),
        float(prediction.disagreement or 0.0),
        float(photo),
        float(text),
    ]
    return np.array(base + [float(kind == k) for k in KINDS], np.float64)


def fit_combiner(features: np.ndarray, correct: np.ndarray) -> dict | None:
    """A logistic regression of `correct` on standardised `features`, as manifest numbers;
    None when one outcome is missing (nothing to learn)."""
    from sklearn.linear_model import LogisticRegression

    correct = np.asarray(correct, bool)
    if len(correct) < 10 or correct.all() or not correct.any():
        return None
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=C, max_iter=1000)
    model.fit((features - mean) / scale, correct)
    return {
        "features": [*FEATURES, *(f"kind: {k}" for k in KINDS)],
        "mean": [float(x) for x in mean],
        "scale": [float(x) for x in scale],
        "coef": [float(x) for x in model.coef_[0]],
        "intercept": float(model.intercept_[0]),
        "C": C,
    }


def score(combiner: dict, features: np.ndarray) -> np.ndarray:
    """P(right) for rows of `features` (n, d): O(n·d); an ensemble (`models`) averages its members."""
    return scorer(combiner)(features)


def scorer(combiner: dict) -> Callable[[np.ndarray], np.ndarray]:
    """`score` with the combiner's numbers read into arrays once (the manifest keeps them as lists):
    what a Categorizer keeps, as it scores every listing it decides. Converting the lists on each
    call cost 0.2 ms per listing with a five-member ensemble (20 s of a report's 270 s under cProfile)."""
    if "models" in combiner:
        members = [scorer(model) for model in combiner["models"]]
        return lambda features: np.mean([member(features) for member in members], axis=0)
    mean, scale, coef = (np.asarray(combiner[key]) for key in ("mean", "scale", "coef"))
    intercept = combiner["intercept"]
    return lambda features: 1.0 / (1.0 + np.exp(-(((np.atleast_2d(features) - mean) / scale) @ coef + intercept)))


def cross_fitted(features: np.ndarray, correct: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, dict | None]:
    """(scores, ensemble): each row's score from a combiner fitted without its fold (cross-fitting),
    so thresholds chosen on these scores are not chosen on the rows the combiner learnt from; and
    the ensemble of those per-fold combiners, which is what scores new listings (its members are
    the very models whose scores chose the thresholds, not a refit on everything, whose scores
    would be scaled otherwise). A fold whose complement cannot be fitted gets NaN scores."""
    out = np.full(len(correct), np.nan)
    models = []
    for f in np.unique(folds):
        model = fit_combiner(features[folds != f], correct[folds != f])
        if model is not None:
            out[folds == f] = score(model, features[folds == f])
            models.append(model)
    if not models:
        return out, None
    return out, {"models": models, "features": models[0]["features"], "C": C, "ensemble": "mean of cross-fitted"}


def feature_matrix(predictions: Sequence[Prediction], kinds: Sequence[str]) -> np.ndarray:
    if not len(predictions):
        return np.zeros((0, len(FEATURES) + len(KINDS)))
    return np.stack([feature_row(p, k) for p, k in zip(predictions, kinds, strict=True)])
