"""Which index rows a cross-validation query may not use, without an (n, N) mask.

Cross-validation used to pass the Categorizer an (n_queries, n_products) bool matrix: 1 GB
of booleans for 10k queries over 100k products, and every row of it one of a handful of
distinct fold masks. `FoldExclusion` states the same thing in O(n + N): query i may not use
product row j when `row_fold[j] == query_fold[i]` (its own fold: itself and its near-twins)
or when `allowed[j]` is False (outside the training part). The Categorizer reads it through
two functions that also accept the old dense mask (tests and small callers still pass one):

- `exclusion_block`: the mask of some queries against some rows, for the batch path that
  already holds a similarity matrix of that very shape (bounded by SIMILARITY_BUDGET);
- `exclusion_groups`: the queries grouped by fold, with one RowFilter of allowed rows per
  fold (O(N) per fold), for the search path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from indexer.store.filters import RowFilter, exclusion_filters

if TYPE_CHECKING:
    from indexer.store.base import IndexStore


@dataclass(frozen=True)
class FoldExclusion:
    """Query i may not use row j if `row_fold[j] == query_fold[i]` or `not allowed[j]`.

    `row_fold=None`: no fold rule; `allowed=None`: every row allowed. Memory O(n + N)."""

    query_fold: np.ndarray  # (n_queries,) int
    row_fold: np.ndarray | None = None  # (n_products,) int
    allowed: np.ndarray | None = None  # (n_products,) bool

    def __post_init__(self) -> None:
        if self.row_fold is None and self.allowed is None:
            raise ValueError("a FoldExclusion needs row_fold, allowed or both")
        if self.row_fold is not None and self.allowed is not None and len(self.row_fold) != len(self.allowed):
            raise ValueError(f"row_fold has {len(self.row_fold)} rows, allowed {len(self.allowed)}")

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the dense mask this stands for (nothing of that size is allocated)."""
        n_rows = len(self.row_fold) if self.row_fold is not None else len(self.allowed)  # type: ignore[arg-type]
        return (len(self.query_fold), n_rows)

    def block(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The (len(queries), len(rows)) bool mask of those queries against those rows."""
        out = np.zeros((len(queries), len(rows)), dtype=bool)
        if self.row_fold is not None:
            out |= self.row_fold[rows][None, :] == self.query_fold[queries][:, None]
        if self.allowed is not None:
            out |= ~self.allowed[rows][None, :]
        return out

    def groups(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(query indices, allowed product rows) per distinct query fold: O(N) per fold."""
        n_rows = self.shape[1]
        folds, inverse = np.unique(self.query_fold, return_inverse=True)
        out = []
        for g, fold in enumerate(folds):
            ok = np.ones(n_rows, dtype=bool) if self.allowed is None else np.asarray(self.allowed, dtype=bool).copy()
            if self.row_fold is not None:
                ok &= self.row_fold != fold
            out.append((np.flatnonzero(inverse.ravel() == g), np.flatnonzero(ok)))
        return out


Exclusion = np.ndarray | FoldExclusion


def exclusion_block(exclude: Exclusion, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Bool mask of `queries` (query indices) against product `rows`, from either form."""
    if isinstance(exclude, FoldExclusion):
        return exclude.block(queries, rows)
    return np.asarray(exclude)[queries][:, rows]


def exclusion_groups(store: IndexStore, exclude: Exclusion) -> list[tuple[np.ndarray, RowFilter]]:
    """Queries grouped by identical exclusion, one RowFilter each: O(N) per group for a
    FoldExclusion; O(n·N/8) to pack and compare the rows of a dense mask."""
    if isinstance(exclude, FoldExclusion):
        return [(members, RowFilter(store, rows)) for members, rows in exclude.groups()]
    return exclusion_filters(store, exclude)
