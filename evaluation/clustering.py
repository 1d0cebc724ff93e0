"""Clustering quality against the true categories: KMeans, sklearn metrics, Hungarian map.

Nothing here is tuned on ARI: k is the number of categories, seed and n_init are fixed.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics
from sklearn.cluster import KMeans

SEED = 0
N_INIT = 10


def kmeans_labels(x: np.ndarray, k: int, seed: int = SEED, n_init: int = N_INIT) -> np.ndarray:
    """KMeans cluster per row (k-means++, fixed seed and restarts)."""
    if k < 1 or k > len(x):
        raise ValueError(f"cannot make {k} clusters from {len(x)} points")
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(np.asarray(x, np.float64))


def contingency(
    true: np.ndarray, clusters: np.ndarray, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """(matrix[cluster, category], categories): how each cluster spreads over categories."""
    classes = list(classes) if classes is not None else sorted(set(true))
    index = {c: i for i, c in enumerate(classes)}
    unknown = set(true) - set(index)
    if unknown:
        raise ValueError(f"labels not among the categories: {sorted(unknown)[:5]}")
    k = int(clusters.max()) + 1 if len(clusters) else 0
    matrix = np.zeros((k, len(classes)), dtype=np.int64)
    np.add.at(matrix, (clusters, np.array([index[t] for t in true], dtype=np.int64)), 1)
    return matrix, classes


def best_mapping(matrix: np.ndarray) -> dict[int, int]:
    """One-to-one cluster -> category assignment maximising agreeing products (Hungarian)."""
    cluster_idx, class_idx = linear_sum_assignment(matrix, maximize=True)
    return {int(r): int(c) for r, c in zip(cluster_idx, class_idx, strict=True)}


def cluster_scores(true: np.ndarray, clusters: np.ndarray, classes: list[str] | None = None) -> dict:
    """ARI, NMI, homogeneity, completeness, V-measure, and accuracy under the best mapping."""
    true = np.asarray(true)
    clusters = np.asarray(clusters)
    if len(true) != len(clusters):
        raise ValueError(f"{len(true)} labels but {len(clusters)} cluster assignments")
    homogeneity, completeness, v_measure = metrics.homogeneity_completeness_v_measure(true, clusters)
    matrix, classes = contingency(true, clusters, classes)
    mapping = best_mapping(matrix)
    agreeing = sum(matrix[r, c] for r, c in mapping.items())
    return {
        "ari": float(metrics.adjusted_rand_score(true, clusters)),
        "nmi": float(metrics.normalized_mutual_info_score(true, clusters)),
        "homogeneity": float(homogeneity),
        "completeness": float(completeness),
        "v_measure": float(v_measure),
        "mapped_accuracy": float(agreeing / len(true)) if len(true) else 0.0,
        "n": int(len(true)),
        "k": int(matrix.shape[0]),
        "contingency": matrix.tolist(),
        "mapping": {str(r): classes[c] for r, c in sorted(mapping.items())},
    }
