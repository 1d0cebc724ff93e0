"""The store's interface: what the categorizer, the service and the evaluation read.

An `IndexStore` is one loaded version of an index: its products (in row order), one searchable
channel per dense modality, the lexical channel, and the manifest that describes them. Every
backend (the local FAISS folder, Milvus) returns a subclass of it from
`indexer.store.factory.open_store`; this module names no backend, so a change to one backend
cannot break another through an import.

A store built in memory from a plain product list (tests, `training_view`) is an `IndexStore`
itself: every read below works on it.

Deleted products keep their row until the backend compacts (rows are positions in every
channel), listed in `deleted`: `row_of` answers None for them, `positions` -1, their category
code is -1 (no count, no vote), and `live_filter` keeps them out of every search.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from indexer.catalog.products import Product, check_category_path
from indexer.catalog.text import encoder_text
from indexer.encoders.base import Encoder, model_id
from indexer.store.categories import CategoryCodes
from indexer.store.errors import IndexMismatch
from indexer.store.filters import CategoryIndex, PositionFilter, RowFilter
from indexer.store.lexical import LexicalIndex

# Up to this many deleted rows a search skips them by asking each channel for that many more
# results (the RowFilter `skip` route: nothing to build); past it, it searches a filter of the
# live rows (O(N) once per loaded store, then a bitmap FAISS tests in the scan). Deeper searches
# cost more than the bitmap early: bench/bench_delete_relabel.py prints predict p50 both ways.
SKIP_DELETED_ROWS = 32
READ_THREADS = 4  # a request's channel searches or scorings at once (3 channels today)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def read_pool() -> ThreadPoolExecutor:
    """This process's threads for a request's reads (a forked worker makes its own: threads do
    not survive fork)."""
    with _POOLS_LOCK:
        pid = os.getpid()
        if pid not in _POOLS:
            _POOLS[pid] = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="store-read")
        return _POOLS[pid]


def at_once(calls: Mapping[str, tuple]) -> dict[str, Any]:
    """{name: (function, *args)} -> {name: its result}, the calls run on `read_pool` when there
    are several (a call's exception is raised here): a client waiting on a server releases the
    GIL, so a request waits about as long as its slowest call, not their sum."""
    if len(calls) < 2:
        return {name: function(*args) for name, (function, *args) in calls.items()}
    futures = {name: read_pool().submit(function, *args) for name, (function, *args) in calls.items()}
    return {name: future.result() for name, future in futures.items()}


def _exact_scores(channel: Any, query: Any, positions: np.ndarray) -> tuple[np.ndarray, None]:
    """A channel without bounds: its exact scores (`IndexStore.bounded_similarities`)."""
    return channel.similarity(query, positions), None


class VectorChannel(Protocol):
    """One dense modality of a store: `rows[i]` is the product row of vector i."""

    vectors: Any
    rows: np.ndarray

    @property
    def ntotal(self) -> int: ...

    def search(
        self, queries: np.ndarray, k: int, allowed: PositionFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, product rows) of the k nearest vectors; rows are -1 past the end."""
        ...

    def similarity(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Cosine similarity of one query to the vectors at `positions`."""
        ...


@dataclass
class IndexStore:
    """A loaded index version: products, per-modality channels, lexical channel, manifest."""

    backend: ClassVar[str] = "memory"  # each backend names itself ("faiss", "milvus")
    # True where each channel's search or scoring waits on a server: a request's run `at_once`.
    # In process they compete for the same cores and the GIL, so they run in turn.
    remote_reads: ClassVar[bool] = False
    path: Path
    version: str
    manifest: dict
    products: Sequence[Product]  # loaded stores: a lazy sequence over the backend's product table
    modalities: Mapping[str, VectorChannel] = field(default_factory=dict)
    lexical: LexicalIndex | None = None
    deltas: tuple[str, ...] = ()
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False, compare=False)  # sorted rows
    _lookups: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def is_stale(self) -> bool:
        """True when a newer version has been published since this one was loaded (a store built
        in memory never is)."""
        return False

    def delta_rows(self) -> int:
        """Products added since the last full build or compaction (0 for a store built in memory)."""
        return 0

    @property
    def profile(self) -> str:
        return self.manifest["profile"]

    def category_codes(self) -> CategoryCodes:
        """Category code per product row: a loaded store's come with its products (O(1) here);
        a store made from a plain list scans it once (O(N), cached)."""
        codes = getattr(self.products, "codes", None)
        if isinstance(codes, CategoryCodes):
            return codes
        if "codes" not in self._lookups:
            self._lookups["codes"] = CategoryCodes.from_products(self.products)
        return self._lookups["codes"]

    def categories(self) -> list[str]:
        """Top-level categories holding products, sorted: O(category prefixes), from the counts."""
        return self.category_codes().categories()

    def labels(self) -> np.ndarray:
        """Top-level category per row ("" = unlabelled), an object array: O(N) numpy, for batch
        callers (evaluation, calibration); the Categorizer votes from `category_codes()`."""
        return self.category_codes().labels()

    def product_rows(self) -> dict[str, int]:
        """Product id -> row for every product not deleted: O(N), reads the whole table (tests, tools)."""
        return {p.id: i for i, p in enumerate(self.products) if not self.is_deleted(i)}

    def row_of(self, product_id: str) -> int | None:
        """Row of a product id, None when absent or deleted: the backend's own lookup when its
        product sequence has one (the local store's: O(log N) by SQLite index), else a dict
        built once (O(N)); O(log M) more for M deleted rows."""
        lookup = getattr(self.products, "row_of", None)
        if callable(lookup):
            row = lookup(product_id)
            return None if row is None or self.is_deleted(row) else row
        if "rows" not in self._lookups:
            self._lookups["rows"] = self.product_rows()
        return self._lookups["rows"].get(product_id)

    def is_deleted(self, row: int) -> bool:
        """Whether the product at `row` was deleted (its row stays until compaction): O(log M)."""
        at = int(np.searchsorted(self.deleted, row))
        return at < len(self.deleted) and int(self.deleted[at]) == row

    def product_count(self) -> int:
        """Products in the index, deleted ones not counted: O(1)."""
        return len(self.products) - len(self.deleted)

    def live_filter(self, allowed: RowFilter | None = None) -> RowFilter | None:
        """`allowed` (None = every row) without the deleted rows, for a search: what the
        Categorizer passes every channel, so a deleted product is never a neighbour, a vote or
        a search result. A filter listing its rows already drops them (`positions` is -1 there);
        otherwise up to SKIP_DELETED_ROWS deleted rows are skipped (len(deleted) more depth), and
        past that a filter of the live rows (O(N) once per loaded store) takes their place."""
        if not len(self.deleted) or (allowed is not None and allowed.rows is not None):
            return allowed
        if len(self.deleted) <= SKIP_DELETED_ROWS:
            return (allowed or RowFilter(self, None)).without(self.deleted)
        if "live" not in self._lookups:
            keep = np.ones(len(self.products), dtype=bool)
            keep[self.deleted] = False
            self._lookups["live"] = RowFilter(self, np.flatnonzero(keep), sorted_unique=True)
        live: RowFilter = self._lookups["live"]
        return live.without(allowed.skip) if allowed is not None and len(allowed.skip) else live

    def deleted_positions(self, channel: str) -> np.ndarray:
        """Positions in `channel` that hold deleted products' vectors (sorted): O(N) once per
        loaded store, for batch paths that read whole similarity matrices."""
        key = ("deleted", channel)
        if key not in self._lookups:
            rows = np.asarray(self.channels()[channel].rows)
            self._lookups[key] = np.flatnonzero(np.isin(rows, self.deleted)) if len(self.deleted) else rows[:0]
        return self._lookups[key]

    def category_index(self) -> CategoryIndex:
        """Rows and counts per category prefix from the codes: built per loaded store in O(1);
        each prefix's rows O(N) numpy on first use (cached)."""
        if "categories" not in self._lookups:
            self._lookups["categories"] = CategoryIndex(self, self.category_codes())
        return self._lookups["categories"]

    def positions(self, channel: str) -> np.ndarray:
        """Product row -> position in the channel's vectors, -1 where the product lacks it or
        was deleted: O(N) once."""
        key = ("positions", channel)
        if key not in self._lookups:
            positions = np.full(len(self.products), -1, np.int64)
            rows = self.channels()[channel].rows
            positions[rows] = np.arange(len(rows))
            positions[self.deleted] = -1  # a deleted product has no vector to search or compare
            self._lookups[key] = positions
        return self._lookups[key]

    def channels(self) -> dict:
        """Every searchable channel: the dense modalities, plus 'lexical' when present."""
        out: dict[str, VectorChannel | LexicalIndex] = dict(self.modalities)
        if self.lexical is not None:
            out["lexical"] = self.lexical
        return out

    def _run(self, calls: Mapping[str, tuple]) -> dict[str, Any]:
        """{name: (function, *args)} -> {name: its result}: at once on a server backend, else in turn."""
        if self.remote_reads:
            return at_once(calls)
        return {name: function(*args) for name, (function, *args) in calls.items()}

    def search_channels(
        self, requests: Mapping[str, tuple[np.ndarray, int, PositionFilter | None]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{channel: (queries, k, allowed)} -> {channel: its search's (similarities, rows)}: the
        Categorizer's searches of one request (at once where `remote_reads`)."""
        channels = self.channels()
        return self._run({name: (channels[name].search, q, k, allowed) for name, (q, k, allowed) in requests.items()})

    def similarities(self, requests: Mapping[str, tuple[Any, np.ndarray]]) -> dict[str, np.ndarray]:
        """{channel: (one query, positions)} -> {channel: cosine of the query to its vectors at
        those positions}: the Categorizer's scorings of one candidate set (at once where
        `remote_reads`)."""
        channels = self.channels()
        return self._run({name: (channels[name].similarity, q, pos) for name, (q, pos) in requests.items()})

    def bounded_similarities(
        self, requests: Mapping[str, tuple[Any, np.ndarray]]
    ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """{channel: (one query, positions)} -> {channel: (scores, loose)}: like `similarities`,
        but a channel that would need another round trip to a server for some positions (one
        with `bounded_similarity`: Milvus) may answer them with an upper bound instead, marked
        True in `loose` (None: every score exact). The Categorizer asks the exact scores only when
        a bound could change what it reads (`Categorizer._fused_similarity`)."""
        channels = self.channels()
        calls = {}
        for name, (q, pos) in requests.items():
            bounded = getattr(channels[name], "bounded_similarity", None)
            calls[name] = (bounded, q, pos) if bounded is not None else (_exact_scores, channels[name], q, pos)
        return self._run(calls)

    def strip_boilerplate(self) -> bool:
        return bool(self.manifest.get("text_normalisation", {}).get("strip_boilerplate", True))

    def product_text(self, product: Product) -> str:
        """The text this index encodes for a product (its own normalisation setting). Memoised
        (`_stored_text`): the nested evaluation asks every product's text once per training view."""
        return _stored_text(product.name, product.description, self.strip_boilerplate())

    def vectors_by_row(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(float32 vectors, rows) of a modality: what the evaluation reads instead of re-encoding.
        O(N·d): a float32 copy of the stored vectors."""
        m = self.modalities[modality]
        return np.asarray(m.vectors, dtype=np.float32), np.asarray(m.rows)


@lru_cache(maxsize=8192)
def _stored_text(name: str, description: str, strip: bool) -> str:
    """`encoder_text` of a stored product, memoised (8192 texts, a few MB): a report asks each of the
    945 products' texts ~140 times (one lexical refit per training view); measured 39 s of its 272 s
    unmemoised on this suite's machine (cProfile of `build_report`)."""
    return encoder_text(name, description, strip=strip)


def checked_change(
    deletes: Iterable[str], relabels: Mapping[str, Iterable[str]] | None
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """A delete / relabel request as every backend takes it: (ids to delete, each once, in order;
    {id: checked path}). Refused before anything is read: nothing named, an id both deleted and
    relabelled (ValueError), a malformed path or a plain string for one (CategoryPathError)."""
    wanted = {
        str(pid): check_category_path(p if isinstance(p, str) else list(p)) for pid, p in (relabels or {}).items()
    }
    doomed = list(dict.fromkeys(str(pid) for pid in deletes))
    if not doomed and not wanted:
        raise ValueError("name at least one product to delete or relabel")
    both = sorted(set(doomed) & set(wanted))
    if both:
        raise ValueError(f"products both deleted and relabelled in one change: {', '.join(both[:5])}")
    return doomed, wanted


def check_compatible(manifest: Mapping, encoder: Encoder) -> None:
    """Refuse an encoder whose profile, model ids or dimensions differ from the index's manifest."""
    built = manifest.get("model_ids", {})
    dims = manifest.get("dims", {})
    if manifest.get("profile") != encoder.profile or any(
        built.get(m) != encoder.model_ids.get(m) or dims.get(m) != encoder.dims.get(m) for m in built
    ):
        raise IndexMismatch(
            f"index was built with profile {manifest.get('profile')!r} ({manifest.get('model_id')}), "
            f"but the encoder is {model_id(encoder)}; rebuild the index with --profile {encoder.profile} "
            f"or start with the {manifest.get('profile')!r} profile"
        )
