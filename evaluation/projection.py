"""Dimension reduction: PCA (kept components by explained variance) and 2-D t-SNE maps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

SEED = 0
VARIANCE = 0.90  # keep the fewest components explaining this share of variance...
MAX_COMPONENTS = 128  # ...but never more than this (sparse TF-IDF would need hundreds)
TSNE_INPUT_DIMS = 50  # usual practice: t-SNE on the first 50 principal components
TSNE_PERPLEXITY = 30.0
TSNE_ITERATIONS = 1000


@dataclass
class PcaResult:
    reduced: np.ndarray  # (n, n_components)
    n_components: int
    explained: np.ndarray  # cumulative explained-variance ratio of every fitted component
    variance_kept: float


def pca_reduce(
    x: np.ndarray, variance: float = VARIANCE, max_components: int = MAX_COMPONENTS, seed: int = SEED
) -> PcaResult:
    """Fit PCA once with all affordable components, keep enough for `variance` (capped)."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    fit_components = max(1, min(n - 1, d, max(max_components, 2) * 2))
    pca = PCA(n_components=fit_components, random_state=seed, svd_solver="full" if min(n, d) <= 2000 else "randomized")
    scores = pca.fit_transform(x)
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    needed = int(np.searchsorted(cumulative, variance) + 1)
    keep = max(2, min(needed, max_components, fit_components)) if fit_components >= 2 else 1
    return PcaResult(scores[:, :keep].astype(np.float32), keep, cumulative, float(cumulative[keep - 1]))


def tsne_2d(
    reduced: np.ndarray, seed: int = SEED, iterations: int = TSNE_ITERATIONS, perplexity: float = TSNE_PERPLEXITY
) -> np.ndarray:
    """2-D t-SNE map (init='pca', fixed seed) of PCA-reduced vectors."""
    x = np.asarray(reduced[:, :TSNE_INPUT_DIMS], dtype=np.float32)
    perplexity = float(min(perplexity, max(2.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        max_iter=max(250, int(iterations)),
        random_state=seed,
    )
    return tsne.fit_transform(x).astype(np.float32)
