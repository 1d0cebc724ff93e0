"""The store's interface: what the categorizer, the service and the evaluation read.

An `IndexStore` is one loaded version of an index: its products (in row order), one searchable
channel per dense modality, the lexical channel, and the manifest that describes them. Every
backend (the local FAISS folder, Milvus) returns a subclass of it from
`indexer.store.factory.open_store`; this module names no backend, so a change to one backend
cannot break another through an import.

A store built in memory from a plain product list (tests, `training_view`) is an `IndexStore`
itself: every read below works on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from indexer.catalog.products import Product
from indexer.catalog.text import encoder_text
from indexer.encoders.base import Encoder, model_id
from indexer.store.categories import CategoryCodes
from indexer.store.errors import IndexMismatch
from indexer.store.filters import CategoryIndex, PositionFilter
from indexer.store.lexical import LexicalIndex


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
    path: Path
    version: str
    manifest: dict
    products: Sequence[Product]  # loaded stores: a lazy sequence over the backend's product table
    modalities: Mapping[str, VectorChannel] = field(default_factory=dict)
    lexical: LexicalIndex | None = None
    deltas: tuple[str, ...] = ()
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
        """Product id -> row for every product: O(N), reads the whole table (tests, tools)."""
        return {p.id: i for i, p in enumerate(self.products)}

    def row_of(self, product_id: str) -> int | None:
        """Row of a product id: the backend's own lookup when its product sequence has one
        (the local store's: O(log N) by SQLite index), else a dict built once (O(N))."""
        lookup = getattr(self.products, "row_of", None)
        if callable(lookup):
            return lookup(product_id)
        if "rows" not in self._lookups:
            self._lookups["rows"] = self.product_rows()
        return self._lookups["rows"].get(product_id)

    def category_index(self) -> CategoryIndex:
        """Rows and counts per category prefix from the codes: built per loaded store in O(1);
        each prefix's rows O(N) numpy on first use (cached)."""
        if "categories" not in self._lookups:
            self._lookups["categories"] = CategoryIndex(self, self.category_codes())
        return self._lookups["categories"]

    def positions(self, channel: str) -> np.ndarray:
        """Product row -> position in the channel's vectors, -1 where the product lacks it: O(N) once."""
        key = ("positions", channel)
        if key not in self._lookups:
            positions = np.full(len(self.products), -1, np.int64)
            rows = self.channels()[channel].rows
            positions[rows] = np.arange(len(rows))
            self._lookups[key] = positions
        return self._lookups[key]

    def channels(self) -> dict:
        """Every searchable channel: the dense modalities, plus 'lexical' when present."""
        out: dict[str, VectorChannel | LexicalIndex] = dict(self.modalities)
        if self.lexical is not None:
            out["lexical"] = self.lexical
        return out

    def strip_boilerplate(self) -> bool:
        return bool(self.manifest.get("text_normalisation", {}).get("strip_boilerplate", True))

    def product_text(self, product: Product) -> str:
        """The text this index encodes for a product (its own normalisation setting)."""
        return encoder_text(product.name, product.description, strip=self.strip_boilerplate())

    def vectors_by_row(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(float32 vectors, rows) of a modality: what the evaluation reads instead of re-encoding.
        O(N·d): a float32 copy of the stored vectors."""
        m = self.modalities[modality]
        return np.asarray(m.vectors, dtype=np.float32), np.asarray(m.rows)


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
