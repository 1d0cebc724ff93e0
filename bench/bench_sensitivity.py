"""How much the nested auto coverage at 99 % precision moves with choices made by hand (issue 18).

An audit found the fused coverage at the 0.99 target moving between 0.45 and 0.85 with k, tie
handling or masking details, so one number would say more than the data allows. This bench
re-runs the nested protocol (fused, raw vote share, one threshold, no listings) under each
variant and prints coverage and precision at 0.99 under two threshold rules:

- empirical: the lowest threshold whose inner precision reaches 0.99 (cut between distinct
  confidences), and the same cut allowed inside a block of tied confidences (the mutant);
- finite-sample: `thresholds.finite_sample_threshold` (Learn-then-Test, 90 % confidence).

Variants: k in K_VALUES; masking: near-duplicate groups held out together (the protocol) or
random stratified folds (twins on both sides); grouping thresholds: GROUP_THRESHOLDS and a looser
set (LOOSER), the history of those constants.

    DATA_DIR=... python bench/bench_sensitivity.py --index var/index [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np

from indexer.categorizer import (
    FUSED,
    GROUP_THRESHOLDS,
    finite_sample_threshold,
    grouped_folds,
    near_duplicate_groups,
    nested_predictions,
)
from indexer.store import open_store

K_VALUES = (5, 10, 20)
LOOSER = {"image": 0.90, "text": 0.85, "lexical": 0.80}
TARGET = 0.99


def cut_inside_ties(confidence: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    """The mutant rule: the lowest confidence whose running precision reaches `target`, even when
    other predictions tie with it below the cut (they are accepted too when it is applied)."""
    order = np.argsort(-confidence, kind="stable")
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= target)
    return float(confidence[order][ok[-1]]) if len(ok) else None


def operating(runs: list, rule: str) -> tuple[float, float | None, int]:
    """Pooled held-out coverage and precision of one rule over the seeds' folds; folds without threshold."""
    accepted = hits = total = missing = 0
    for run, labels in runs:
        for k, fitted in zip(np.unique(run.folds[run.folds >= 0]), run.fits, strict=True):
            conf, ok = fitted.inner_confidence, fitted.inner_correct
            if rule == "empirical":
                t = fitted.threshold_for(TARGET)
            elif rule == "inside ties":
                t = cut_inside_ties(conf, ok, TARGET)
            else:
                t = finite_sample_threshold(conf, ok, TARGET)["threshold"]
            rows = np.flatnonzero((run.folds == k) & (labels != ""))
            preds = [run.predictions[r] for r in rows]
            c = np.array([p.raw_confidence for p in preds])
            right = np.array([p.category == lab for p, lab in zip(preds, labels[rows], strict=True)])
            take = c >= t if t is not None else np.zeros(len(c), bool)
            missing += t is None
            accepted += int(take.sum())
            hits += int(right[take].sum())
            total += len(rows)
    return accepted / total, (hits / accepted if accepted else None), missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    store = open_store(args.index)
    labels = store.labels()
    variants = [(f"k={k}", {"k": k}, "grouped", GROUP_THRESHOLDS) for k in K_VALUES]
    variants += [("k=10, random folds", {"k": 10}, "random", GROUP_THRESHOLDS)]
    variants += [("k=10, looser grouping", {"k": 10}, "grouped", LOOSER)]
    print(f"nested fused coverage / precision at target {TARGET}, seeds {args.seeds}")
    print(f"{'variant':26} {'empirical':>20} {'cut inside ties':>20} {'finite-sample':>20}  folds without")
    coverages = {rule: [] for rule in ("empirical", "inside ties", "finite-sample")}
    for name, params, masking, thresholds in variants:
        t0 = time.perf_counter()
        groups = near_duplicate_groups(store, thresholds) if masking == "grouped" else np.arange(len(labels))
        runs = []
        for seed in args.seeds:
            folds = grouped_folds(labels, groups, seed=seed)
            grid = [{"weights": w["weights"], **params} for w in _grid()]
            run = nested_predictions(store, folds, groups, {"fused": FUSED}, grid=grid, seed=seed, kinds=False)
            runs.append((run["fused"], labels))
        cells, without = [], []
        for rule in coverages:
            cov, prec, missing = operating(runs, rule)
            coverages[rule].append(cov)
            cells.append(f"{cov:.3f} / {'–' if prec is None else f'{prec:.4f}'}")
            without.append(str(missing))
        print(
            f"{name:26} "
            + " ".join(f"{c:>20}" for c in cells)
            + f"  {'/'.join(without)} ({time.perf_counter() - t0:.0f} s)"
        )
    for rule, values in coverages.items():
        print(f"range of coverage, {rule}: {min(values):.3f}–{max(values):.3f}")


def _grid() -> list[dict]:
    from indexer.categorizer import PARAM_GRID

    return [dict(c) for c in PARAM_GRID]


if __name__ == "__main__":
    main()
