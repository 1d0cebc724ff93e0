"""Thresholds that hold with a finite calibration set (Learn-then-Test, fixed-sequence testing).

The empirical rule (`protocol.choose_threshold`: the lowest threshold whose calibration precision
reaches 99 %) is right on average only: on 945 products, 5 of 15 nested folds fell below it.
Here each candidate threshold t of a grid fixed in advance (GRID: 1.000, 0.995, ..., 0.000, the
raw vote share) is a hypothesis H_t: "the error rate among the listings accepted at t exceeds
1 - target". Given the n_t accepted calibration listings, their errors are Binomial(n_t, err_t),
so p_t = P(Binomial(n_t, 1 - target) <= errors_t) is a valid p-value for H_t. The grid is tested
from the strictest threshold down (skipping thresholds that accept too few listings for any test
to reject, `smallest_testable`) and stops at the first p_t > delta (fixed-sequence testing
controls the family-wise error at delta without a Bonferroni penalty, Angelopoulos et al. 2021,
"Learn then Test"). The threshold returned is the last rejected one.

What is guaranteed: if the future listings of a kind are exchangeable with its calibration
listings, then with probability at least 1 - delta over the calibration set, the precision of
the listings decided automatically is at least `target`. Not guaranteed: anything about
listings unlike the calibration ones (another shop, another season), nor the precision of one
particular fold (it is a statement about the population the folds are drawn from).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

DELTA = 0.1  # 1 - confidence of the guarantee: 90 % that the precision promise holds
# thresholds tested, strictest first: 0.0001 steps in 1 - 10^-4 .. 1 - 10^-2 (where a calibrated
# probability of being right lives for most listings), then 0.005 steps down to 0
GRID = np.unique(np.round(np.concatenate([1.0 - np.logspace(-4, -2, 21), np.linspace(1.0, 0.0, 201)]), 6))[::-1]
MISMATCH_TARGET = 0.95  # share of mismatched listings the disagreement rule must send to review


def precision_p_values(
    confidence: np.ndarray, correct: np.ndarray, target: float, grid: np.ndarray = GRID
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accepted, errors, p-value) per grid threshold, for H_t: error rate among accepted > 1 - target."""
    confidence = np.asarray(confidence, np.float64)
    wrong = ~np.asarray(correct, bool)
    accepted = np.array([(confidence >= t).sum() for t in grid], np.int64)
    errors = np.array([(wrong & (confidence >= t)).sum() for t in grid], np.int64)
    # a threshold that accepts nothing makes no error: trivially safe, the sequence goes on
    p = np.where(accepted > 0, binom.cdf(errors, accepted, 1.0 - target), 0.0)
    return accepted, errors, p


def upper_bound(errors: int, n: int, delta: float = DELTA) -> float:
    """One-sided Clopper-Pearson upper confidence bound (level 1 - delta) on an error rate."""
    from scipy.stats import beta

    if n <= 0:
        return 1.0
    if errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def finite_sample_threshold(
    confidence: np.ndarray,
    correct: np.ndarray,
    target: float,
    delta: float = DELTA,
    grid: np.ndarray = GRID,
) -> dict:
    """The lowest grid threshold reached by fixed-sequence testing (see the module docstring);
    threshold None when even the strictest one cannot be shown to keep `target` (too few
    calibration listings, or too many confident mistakes)."""
    n = int(len(confidence))
    accepted, errors, p = precision_p_values(confidence, correct, target, grid)
    tested = np.flatnonzero(accepted >= smallest_testable(target, delta))
    rejected = np.cumprod(p[tested] <= delta).astype(bool)  # stop at the first threshold not shown safe
    out = {"target": float(target), "delta": float(delta), "n": n, "method": "learn-then-test, fixed sequence"}
    if not rejected.any():
        return {**out, "threshold": None, "coverage": 0.0, "precision": None, "accepted": 0, "errors": 0}
    i = int(tested[np.flatnonzero(rejected)[-1]])
    return {
        **out,
        "threshold": float(grid[i]),
        "coverage": float(accepted[i] / n) if n else 0.0,
        "precision": float(1.0 - errors[i] / accepted[i]),
        "accepted": int(accepted[i]),
        "errors": int(errors[i]),
        "error_upper_bound": upper_bound(int(errors[i]), int(accepted[i]), delta),
    }


def smallest_testable(target: float, delta: float) -> int:
    """The fewest accepted listings that can show `target` at all (all right: target^n <= delta);
    230 for 0.99 at delta 0.1. Thresholds accepting fewer are skipped, not tested: a test that
    cannot reject would end the fixed sequence before it reaches a threshold with evidence. Which
    thresholds are skipped depends on the confidences only, never on which listings are right, so
    given the confidences the sequence is still fixed in advance."""
    return int(np.ceil(np.log(delta) / np.log(target)))


def disagreement_rule(
    genuine: np.ndarray, mismatched: np.ndarray, target: float = MISMATCH_TARGET, delta: float = DELTA
) -> dict:
    """The disagreement level from which a photo + text listing goes to review, fitted on
    calibration listings: the highest cut (fewest genuine listings lost) whose upper confidence
    bound (level 1 - delta) on the share of mismatched listings let through stays within
    1 - target. A mismatched listing is let through when its disagreement is below the cut; the
    share let through grows with the cut, so the cuts are tested from the lowest up and the last
    one that passes is kept (fixed sequence). Threshold None: no mismatched calibration listing."""
    genuine = np.asarray(genuine, np.float64)
    mismatched = np.sort(np.asarray(mismatched, np.float64))
    n = len(mismatched)
    out = {"target": float(target), "delta": float(delta), "n_mismatched": int(n), "n_genuine": int(len(genuine))}
    if not n:
        return {**out, "threshold": None}
    cuts = np.unique(np.concatenate([[0.0], mismatched]))
    chosen = None
    for cut in cuts:
        through = int(np.searchsorted(mismatched, cut, side="left"))  # mismatched with disagreement < cut
        if upper_bound(through, n, delta) > 1.0 - target:
            break
        chosen = (float(cut), through)
    if chosen is None:  # even a cut at 0 (everything to review) cannot be shown: keep it, say so
        chosen = (0.0, 0)
    cut, through = chosen
    return {
        **out,
        "threshold": cut,
        "mismatched_to_review": float(1.0 - through / n),
        "genuine_to_review": float((genuine >= cut).mean()) if len(genuine) else None,
        "feature": "1 - sum over categories of min(photo vote share, text vote share)",
    }
