"""Row filters applied inside the search, and the per-category row sets they come from.

A category filter used to be a Python loop over every product per request, and the
search then asked each channel for (depth + excluded rows) results and threw the
excluded ones away. Here the allowed rows of a category prefix are found from the int32
category codes (`CategoryIndex`: numpy, on first use of a prefix; counts from the manifests),
and a `RowFilter` hands each channel the allowed positions in its own numbering (`PositionFilter`): a FAISS
`IDSelectorBitmap`, a boolean mask for the lexical postings, or the positions for an
exact scan of a small category. Those views are built on first use and cached on the
filter, so a repeated category costs nothing to set up.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import faiss

    from indexer.store.categories import CategoryCodes


class _Channel(Protocol):
    @property
    def ntotal(self) -> int: ...


class RowSource(Protocol):
    """What a filter reads of a store (`indexer.store.base.IndexStore` has it): named here so
    that the filters, which the interface uses, do not import the interface back."""

    products: Sequence[Any]

    def positions(self, channel: str) -> np.ndarray: ...

    def channels(self) -> Mapping[str, _Channel]: ...


CACHED_FILTERS = 64  # category filters kept per loaded version (each holds ≤ one bitmap + mask per channel)


@dataclass
class PositionFilter:
    """The allowed positions of one channel (sorted, unique), with lazily built views."""

    positions: np.ndarray
    ntotal: int
    _mask: np.ndarray | None = field(default=None, init=False, repr=False)
    _selector: Any = field(default=None, init=False, repr=False)
    _below: dict[int, PositionFilter] = field(default_factory=dict, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.positions)

    def below(self, limit: int) -> PositionFilter:
        """The allowed positions under `limit` as a filter of a channel of `limit` positions
        (a segmented channel's base): O(log |positions|) once, then cached with its views."""
        if limit not in self._below:
            cut = int(np.searchsorted(self.positions, limit))
            self._below[limit] = PositionFilter(self.positions[:cut], limit)
        return self._below[limit]

    def mask(self) -> np.ndarray:
        """Bool per channel position: O(ntotal) once, then O(1) per lookup."""
        if self._mask is None:
            mask = np.zeros(self.ntotal, dtype=bool)
            mask[self.positions] = True
            self._mask = mask
        return self._mask

    def selector(self) -> faiss.IDSelector:
        """A FAISS bitmap selector over the channel's ids: ntotal/8 bytes, O(1) membership test."""
        if self._selector is None:
            import faiss

            bits = np.packbits(self.mask(), bitorder="little")
            # the selector keeps a raw pointer to `bits`: tie their lifetimes (the stubs miss this constructor)
            selector = faiss.IDSelectorBitmap(bits)  # type: ignore[call-arg, arg-type]
            selector.referenced_bits = bits  # type: ignore[attr-defined]  # an attribute we add
            self._selector = selector
        return self._selector


class RowFilter:
    """Product rows a search may return, optionally minus a few `skip` rows.

    `rows=None` allows every row. `skip` rows (e.g. the query product itself) are few:
    the search asks each channel for len(skip) more results and drops them, which is
    cheaper than building a new selector per request.
    """

    def __init__(
        self, store: RowSource, rows: np.ndarray | None, skip: Iterable[int] = (), sorted_unique: bool = False
    ) -> None:
        """`sorted_unique`: `rows` are sorted and unique already (np.unique costs O(N log N))."""
        self.store = store
        if rows is None:
            self.rows = None
        else:
            rows = np.asarray(rows, dtype=np.int64)
            self.rows = rows if sorted_unique else np.unique(rows)
        self.skip = np.unique(np.asarray(list(skip), dtype=np.int64))
        self._channels: dict[str, PositionFilter | None] = {}

    def without(self, rows: Iterable[int]) -> RowFilter:
        """The same filter minus `rows`, sharing the cached channel views (O(len(rows)))."""
        out = RowFilter.__new__(RowFilter)
        out.store, out.rows, out._channels = self.store, self.rows, self._channels
        out.skip = np.union1d(self.skip, np.asarray(list(rows), dtype=np.int64))
        return out

    def __len__(self) -> int:
        """How many rows the filter allows (an upper bound when `skip` rows are outside it)."""
        n = len(self.store.products) if self.rows is None else len(self.rows)
        return max(0, n - len(self.skip))

    def channel(self, name: str) -> PositionFilter | None:
        """The allowed positions in channel `name` (None = all): O(|rows|) once per channel."""
        if self.rows is None:
            return None
        if name not in self._channels:
            positions = self.store.positions(name)[self.rows]
            ntotal = self.store.channels()[name].ntotal
            positions = positions[positions >= 0]
            if len(positions) > 1 and not (positions[1:] > positions[:-1]).all():  # a channel in row order: sorted
                positions = np.sort(positions)
            self._channels[name] = PositionFilter(positions, ntotal)
        return self._channels[name]

    def drop_skipped(self, rows: np.ndarray) -> np.ndarray:
        """`rows` without the skip rows: O(len(rows) + len(skip))."""
        if not len(self.skip):
            return rows
        return rows[~np.isin(rows, self.skip)]


def exclusion_filters(store: RowSource, exclude: np.ndarray) -> list[tuple[np.ndarray, RowFilter]]:
    """Group the queries of an (n, N) exclusion mask by identical rows (cross-validation
    folds share one) and give each group one RowFilter of its allowed rows.

    O(n·N/8) to pack and compare the mask rows, O(N) per distinct row.
    """
    packed = np.packbits(np.asarray(exclude, dtype=bool), axis=1)
    unique, inverse = np.unique(packed, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    n_rows = exclude.shape[1]
    out = []
    for g, bits in enumerate(unique):
        excluded = np.unpackbits(bits, count=n_rows).astype(bool)
        out.append((np.flatnonzero(inverse == g), RowFilter(store, np.flatnonzero(~excluded))))
    return out


class CategoryIndex:
    """Rows and counts of every category-path prefix, from the store's category codes.

    Nothing is scanned when it is made (O(1) per loaded store, so an add does not pay for
    it): `counts()` reads the prefix counts the segments' manifests keep (O(prefixes)), and
    the rows of a prefix are found on first use with numpy over the int32 codes (O(N)
    vectorised, no Python loop over products), then kept with its filter (LRU).
    """

    def __init__(self, store: RowSource, codes: CategoryCodes) -> None:
        self.store = store
        self.codes = codes
        self.total = len(codes)
        self._filters: OrderedDict[tuple[str, ...], RowFilter] = OrderedDict()
        self._rows: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()

    @property
    def rows(self) -> Mapping[tuple[str, ...], np.ndarray]:
        """Prefix -> sorted rows, as a read-only mapping whose values are computed on access."""
        return _PrefixRows(self)

    def rows_of(self, path: Sequence[str]) -> np.ndarray | None:
        """Sorted rows under the category prefix `path`, None when no product has it:
        O(N) numpy on first use of a prefix, O(1) while it stays cached."""
        key = tuple(path)
        if key in self._rows:
            self._rows.move_to_end(key)
            return self._rows[key]
        rows = self.codes.rows_under(key)
        if rows is None:
            return None
        self._rows[key] = rows
        if len(self._rows) > CACHED_FILTERS:
            self._rows.popitem(last=False)
        return rows

    def filter(self, path: Sequence[str]) -> RowFilter | None:
        """The cached RowFilter of a prefix (LRU of CACHED_FILTERS), None when unknown."""
        key = tuple(path)
        if key in self._filters:
            self._filters.move_to_end(key)
            return self._filters[key]
        rows = self.rows_of(key)
        if rows is None:
            return None
        self._filters[key] = RowFilter(self.store, rows)
        if len(self._filters) > CACHED_FILTERS:
            self._filters.popitem(last=False)
        return self._filters[key]

    def counts(self) -> list[dict]:
        """Top-level categories with counts and their second-level subcategories: O(#prefixes),
        from the counts kept in the segments' manifests (no scan of the catalogue)."""
        counts = {p: n for p, n in self.codes.counts.items() if n > 0}
        top = sorted((p[0], n) for p, n in counts.items() if len(p) == 1)
        subs: dict[str, Counter] = defaultdict(Counter)
        for prefix, n in counts.items():
            if len(prefix) == 2:
                subs[prefix[0]][prefix[1]] = n
        return [
            {
                "name": name,
                "count": count,
                "subcategories": [{"name": s, "count": n} for s, n in sorted(subs[name].items())],
            }
            for name, count in top
        ]


class _PrefixRows(Mapping[tuple[str, ...], np.ndarray]):
    """`CategoryIndex.rows`: the prefixes with products as keys (O(prefixes) to list), rows on access."""

    def __init__(self, index: CategoryIndex) -> None:
        self.index = index

    def __getitem__(self, key: tuple[str, ...]) -> np.ndarray:
        rows = self.index.rows_of(key)
        if rows is None:
            raise KeyError(key)
        return rows

    def __iter__(self) -> Iterator[tuple[str, ...]]:
        return iter([p for p, n in self.index.codes.counts.items() if n > 0])

    def __len__(self) -> int:
        return sum(1 for n in self.index.codes.counts.values() if n > 0)
