"""Category paths per product row as int32 codes, shared by every store backend.

A store reads the category of a row as a code into its list of paths, so a vote or a filter
never parses product metadata: `CategoryCodes` holds the codes of the base and delta rows, and
the per-prefix product counts the category filters and the API's category tree read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from indexer.catalog.products import Product

CODE_DTYPE = np.int32

Path_ = tuple[str, ...]


def prefixes(path: Sequence[str]) -> Iterator[Path_]:
    """Every prefix of a category path, shortest first: ("A",), ("A", "B"), ..."""
    for depth in range(1, len(path) + 1):
        yield tuple(path[:depth])


def count_prefixes(paths: Iterable[Sequence[str]]) -> dict[Path_, int]:
    """Products per category prefix of these paths: O(len(paths) · depth)."""
    counts: dict[Path_, int] = {}
    for path in paths:
        for prefix in prefixes(path):
            counts[prefix] = counts.get(prefix, 0) + 1
    return counts


def counts_to_json(counts: Mapping[Path_, int]) -> list[list]:
    """Manifest form of prefix counts: [[prefix as a list, count], ...], sorted."""
    return [[list(prefix), int(n)] for prefix, n in sorted(counts.items())]


def counts_from_json(items: object) -> dict[Path_, int]:
    if not isinstance(items, list):
        raise ValueError("catalog counts are not a list")
    return {tuple(str(p) for p in prefix): int(n) for prefix, n in items}


class CategoryCodes:
    """Category path codes of base + delta rows, read as one array without concatenating.

    `paths[c]` is the path of code c (the base's list, then paths first seen in deltas);
    `counts` holds products per prefix, merged from the segments' manifests. Rows relabelled or
    deleted since the base (`with_changes`) keep their new code (-1 once deleted) in two small
    sorted arrays (`changed_rows`, `changed_codes`) read over the base's mapped codes, so a
    change never copies the N codes. `take(rows)`: O(len(rows) · log M) for M changed rows;
    `rows_under(prefix)`: O(P) to find the codes, O(N + M) numpy (no Python loop over products)
    for the rows; `labels()`: O(N) numpy, for batch callers.
    """

    def __init__(
        self,
        paths: Sequence[Path_],
        base: np.ndarray,
        added: np.ndarray,
        counts: Mapping[Path_, int],
        changed: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.base = base
        self.added = np.asarray(added, dtype=CODE_DTYPE)
        self.counts = dict(counts)
        self.nb = len(base)
        self._index: dict[Path_, int] | None = None
        rows, codes = changed if changed is not None else (np.zeros(0, np.int64), np.zeros(0, CODE_DTYPE))
        self.changed_rows = np.asarray(rows, dtype=np.int64)  # sorted
        self.changed_codes = np.asarray(codes, dtype=CODE_DTYPE)

    @classmethod
    def from_products(cls, products: Iterable[Product]) -> CategoryCodes:
        """Codes of an in-memory product list (stores built in memory by tests, calibration): O(N)."""
        index: dict[Path_, int] = {}
        codes, paths = [], []
        for product in products:
            path = tuple(product.category_path)
            codes.append(index.setdefault(path, len(index)) if path else -1)
            paths.append(path)
        ordered = sorted(index, key=index.__getitem__)
        return cls(ordered, np.asarray(codes, dtype=CODE_DTYPE), np.zeros(0, CODE_DTYPE), count_prefixes(paths))

    def __len__(self) -> int:
        return self.nb + len(self.added)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Codes of these rows (-1 = unlabelled): O(len(rows))."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty(len(rows), CODE_DTYPE)
        in_base = rows < self.nb
        out[in_base] = self.base[rows[in_base]]
        out[~in_base] = self.added[rows[~in_base] - self.nb]
        if len(self.changed_rows) and len(rows):
            at = np.minimum(np.searchsorted(self.changed_rows, rows), len(self.changed_rows) - 1)
            hit = self.changed_rows[at] == rows
            out[hit] = self.changed_codes[at[hit]]
        return out

    def top_names(self) -> list[str]:
        """Top-level name of each code (index = code)."""
        return [p[0] for p in self.paths]

    def top_of_code(self, classes: Sequence[str]) -> np.ndarray:
        """Code -> index of its top-level category in `classes` (-1 for a class not listed); the
        last element, for code -1, is -1. O(P)."""
        where = {c: i for i, c in enumerate(classes)}
        return np.asarray([where.get(p[0], -1) for p in self.paths] + [-1], dtype=np.int64)

    def categories(self) -> list[str]:
        """Top-level categories that hold products, sorted: O(prefixes)."""
        return sorted(p[0] for p, n in self.counts.items() if len(p) == 1 and n > 0)

    def labels(self) -> np.ndarray:
        """Top-level category per row ("" when unlabelled), object array: O(N) numpy."""
        names = np.asarray([*self.top_names(), ""], dtype=object)  # code -1 reads the last one
        if not len(self):
            return names[:0]
        out = np.concatenate([names[np.asarray(self.base)], names[self.added]])
        out[self.changed_rows] = names[self.changed_codes]
        return out

    def codes_under(self, prefix: Sequence[str]) -> np.ndarray:
        prefix = tuple(prefix)
        return np.asarray([c for c, p in enumerate(self.paths) if p[: len(prefix)] == prefix], dtype=CODE_DTYPE)

    def rows_under(self, prefix: Sequence[str]) -> np.ndarray | None:
        """Sorted rows whose path starts with `prefix`, None when no product has it."""
        if not self.counts.get(tuple(prefix)):
            return None
        codes = self.codes_under(prefix)
        base = np.flatnonzero(np.isin(self.base, codes))
        added = np.flatnonzero(np.isin(self.added, codes)) + self.nb
        rows = np.concatenate([base, added]).astype(np.int64)
        if len(self.changed_rows):  # changed rows count by their new code only
            rows = rows[~np.isin(rows, self.changed_rows)]
            now = self.changed_rows[np.isin(self.changed_codes, codes)]
            rows = np.union1d(rows, now).astype(np.int64)
        return rows

    def path_index(self) -> dict[Path_, int]:
        """Path -> code, built once per CategoryCodes (a base's: once per process): O(P)."""
        if self._index is None:
            self._index = {p: c for c, p in enumerate(self.paths)}
        return self._index

    def extended(self, segments: Sequence[tuple[Sequence[Product], Mapping[Path_, int] | None]]) -> CategoryCodes:
        """These codes plus rows for each segment's products, appended in order, in one pass:
        O(rows added + P + prefixes the segments count). A segment's `counts` are its products'
        prefix counts when its manifest holds them (else they are counted)."""
        if not segments:
            return self
        index = dict(self.path_index())
        paths = list(self.paths)
        merged = dict(self.counts)
        added = [self.added]
        for products, counts in segments:
            codes = np.empty(len(products), CODE_DTYPE)
            for i, product in enumerate(products):
                path = tuple(product.category_path)
                if not path:
                    codes[i] = -1
                    continue
                code = index.get(path)
                if code is None:
                    code = index[path] = len(paths)
                    paths.append(path)
                codes[i] = code
            added.append(codes)
            if counts is None:
                counts = count_prefixes(p.category_path for p in products)
            for prefix, n in counts.items():
                merged[prefix] = merged.get(prefix, 0) + n
        out = CategoryCodes(paths, self.base, np.concatenate(added), merged, (self.changed_rows, self.changed_codes))
        out._index = index
        return out

    def with_changes(self, changes: Sequence[tuple[int, Sequence[str] | None]]) -> CategoryCodes:
        """These codes after `changes`, in order: (row, new path) relabels the row (a path not seen
        yet gets a new code), (row, None) deletes it (code -1). Counts move from the row's old
        path to its new one. O(M log M + changes · depth + P) for M rows changed in all: nothing
        of size N is copied."""
        if not changes:
            return self
        index = dict(self.path_index())
        paths = list(self.paths)
        counts = dict(self.counts)
        now = dict(zip(self.changed_rows.tolist(), self.changed_codes.tolist(), strict=True))
        fresh = np.unique(np.asarray([row for row, _ in changes if row not in now], dtype=np.int64))
        before = dict(zip(fresh.tolist(), self.take(fresh).tolist(), strict=True))  # one gather, not one per change
        for row, path in changes:
            old = now[row] if row in now else before[row]
            if old >= 0:
                for prefix in prefixes(paths[old]):
                    counts[prefix] = counts.get(prefix, 0) - 1
                    if counts[prefix] <= 0:
                        del counts[prefix]
            code = -1
            if path:
                key = tuple(path)
                code = index.setdefault(key, len(paths))
                if code == len(paths):
                    paths.append(key)
                for prefix in prefixes(key):
                    counts[prefix] = counts.get(prefix, 0) + 1
            now[row] = code
        rows = np.asarray(sorted(now), dtype=np.int64)
        codes = np.asarray([now[r] for r in rows.tolist()], dtype=CODE_DTYPE)
        out = CategoryCodes(paths, self.base, self.added, counts, (rows, codes))
        out._index = index
        return out
