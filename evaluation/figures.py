"""Report figures (matplotlib, Agg backend): each function returns PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 90
PALETTE = plt.get_cmap("tab10")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def pca_curves(curves: dict[str, tuple[np.ndarray, int]], variance: float) -> bytes:
    """Cumulative explained variance per representation, kept components marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, (cumulative, kept)) in enumerate(curves.items()):
        x = np.arange(1, len(cumulative) + 1)
        ax.plot(x, cumulative, color=PALETTE(i), label=f"{name} (kept {kept})")
        ax.scatter([kept], [cumulative[kept - 1]], color=PALETTE(i), zorder=3)
    ax.axhline(variance, color="grey", ls="--", lw=1)
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def tsne_maps(
    coords: np.ndarray,
    true: np.ndarray,
    clusters: np.ndarray,
    classes: list[str],
    title: str,
    cluster_names: dict[int, str] | None = None,
) -> bytes:
    """Same t-SNE map twice: coloured by true category, and by KMeans cluster."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for i, c in enumerate(classes):
        m = true == c
        axes[0].scatter(coords[m, 0], coords[m, 1], s=7, color=PALETTE(i % 10), label=_short(c, 24))
    axes[0].set_title(f"{title}: true category")
    axes[0].legend(fontsize=7, markerscale=2, loc="best")
    cluster_names = cluster_names or {}
    for j in sorted(set(clusters.tolist())):
        m = clusters == j
        mapped = cluster_names.get(j)
        # a cluster takes the colour of the category it is mapped to, so the panels compare at a glance
        colour = classes.index(mapped) if mapped in classes else len(classes) + j
        name = f"cluster {j}" + (f" → {_short(mapped, 16)}" if mapped else "")
        axes[1].scatter(coords[m, 0], coords[m, 1], s=7, color=PALETTE(colour % 10), label=name)
    axes[1].set_title(f"{title}: KMeans cluster (full space)")
    axes[1].legend(fontsize=7, markerscale=2, loc="best")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


def matrix_heatmap(
    matrix: np.ndarray, row_labels: list[str], col_labels: list[str], title: str, xlabel: str, ylabel: str
) -> bytes:
    """Counts heatmap with the numbers written in."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(col_labels), 1.0 + 0.55 * len(row_labels)))
    ax.imshow(matrix, cmap="Blues")
    top = matrix.max() if matrix.size else 1
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(c, r, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    ax.set_xticks(range(len(col_labels)), [_short(c) for c in col_labels], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), [_short(r, 26) for r in row_labels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def ari_bars(scores: dict[str, dict[str, float]], anchors: dict[str, float]) -> bytes:
    """ARI per representation: KMeans on the PCA space vs on t-SNE coordinates; anchors dashed."""
    names = list(scores)
    x = np.arange(len(names))
    full = [scores[n].get("full", np.nan) for n in names]
    tsne = [scores[n].get("tsne", np.nan) for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.bar(x - 0.2, full, 0.4, label="KMeans on PCA space")
    ax.bar(x + 0.2, tsne, 0.4, label="KMeans on t-SNE 2-D (common practice)", color="#bbbbbb")
    for i, (label, value) in enumerate(anchors.items()):
        ax.axhline(value, ls="--", lw=1, color=PALETTE(i + 2), label=f"published: {label} {value:.2f}")
    ax.set_xticks(x, names)
    ax.set_ylabel("adjusted Rand index")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def similarity_histograms(data: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float]) -> bytes:
    """Nearest same-category vs nearest other-category similarity, grouping thresholds marked."""
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 3.8), squeeze=False)
    for ax, (modality, sims) in zip(axes[0], data.items(), strict=True):
        bins = np.linspace(min(sims["within"].min(), sims["across"].min(), 0.0), 1.0, 60)
        ax.hist(sims["within"], bins=bins, alpha=0.6, label="nearest product, same category")
        ax.hist(sims["across"], bins=bins, alpha=0.6, label="nearest product, other category")
        if modality in thresholds:
            ax.axvline(thresholds[modality], color="red", ls="--", label=f"group threshold {thresholds[modality]:.2f}")
        ax.set_title(f"{modality}: cosine to the nearest neighbour")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("products")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _png(fig)


def coverage_curves(curves: dict[str, dict[str, np.ndarray]], chosen: dict, target: float) -> bytes:
    """Precision of auto decisions vs share of products decided automatically, by raw vote share.

    The dot is the former rule's operating point (nested; `chosen["threshold"]` is the mean of
    its per-fold cuts on the raw vote share), labelled as such: the deployed rule is another one."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot(curve["coverage"], curve["precision"], color=PALETTE(i), label=name)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target precision {target:.2f}")
    if chosen.get("threshold") is not None:
        ax.scatter(
            [chosen["coverage"]],
            [chosen["precision"]],
            color="red",
            zorder=3,
            label=f"former rule: cut on the raw vote share (nested, mean over folds) {chosen['threshold']:.3f}",
        )
    ax.set_xlabel("coverage (share decided automatically)")
    ax.set_ylabel("precision of automatic decisions")
    lows = [c["precision"].min() for c in curves.values() if len(c["precision"])]
    ax.set_ylim(max(0.0, min(lows + [target]) - 0.02), 1.002)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def timings_bar(timings: dict[str, float]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(timings) + 1))
    names = list(timings)
    ax.barh(names, [timings[n] for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    return _png(fig)
