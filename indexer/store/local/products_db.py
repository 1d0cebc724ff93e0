"""Product metadata of a base segment, read by key: SQLite rows plus integer category codes.

A base segment used to hold `products.jsonl`, parsed into a Python list on every load: at a
million products that is seconds of load time and hundreds of MB private to each worker.
Here a base segment holds

- `products.sqlite`: table `products(row INTEGER PRIMARY KEY, id TEXT UNIQUE, name, ...)`,
  one column per `Product` field (the category path as a JSON list); a product is read by row
  (the rowid B-tree) or by id (the unique index), O(log N) each, never parsed all at once;
- `paths.npy`: int32 per row, the code of its category path in the manifest's
  `catalog.paths` list (-1 = unlabelled), memory-mapped so workers share its pages;
- in the manifest, `catalog.counts`: products per category prefix, so the counts the API shows
  and a combined store's counts are merged from the segments' manifests in O(segments).

Deltas keep their small `products.jsonl` (O(batch)); `ProductRows` reads base + deltas as one
sequence and `CategoryCodes` their codes as one array, without copying the base.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import SupportsIndex, overload
from urllib.parse import quote

import numpy as np

from indexer.catalog.products import Product
from indexer.store.categories import (
    CODE_DTYPE,
    CategoryCodes,
    Path_,
    counts_to_json,
    prefixes,
)
from indexer.store.errors import IndexDamaged, IndexStoreError

PRODUCTS_FILE = "products.sqlite"
PATHS_FILE = "paths.npy"
WRITE_BATCH = 5000  # products per INSERT batch: what a writer holds in memory
READ_BATCH = 2000  # products per SELECT while iterating
CACHE_SIZE = 4096  # products kept per table (LRU): a request reads k neighbours, mostly repeated

# one column per Product field, in this order (a new Product field needs a new format version)
COLUMNS = ("id", "name", "description", "brand", "price", "category_path", "image", "image_path")
_SELECT = ", ".join(COLUMNS)


def storage_error(exc: sqlite3.OperationalError) -> OSError | sqlite3.OperationalError:
    """SQLite's "disk is full" / "read-only" as the OSError the rest of a write raises for the same
    cause (ENOSPC / EROFS), so callers name the cause once; any other error unchanged."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return OSError(errno.ENOSPC, f"No space left on device (SQLite: {exc})")
    if name.startswith("SQLITE_READONLY"):
        return OSError(errno.EROFS, f"Read-only file system (SQLite: {exc})")
    return exc


@contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise storage_error(exc) from exc


def index_roots(root: str | Path) -> tuple[str, ...]:
    """The spellings of an index folder a stored path may start with (as given, symlinks resolved)."""
    return tuple(dict.fromkeys((os.path.abspath(root), os.path.realpath(root))))


def stored_image_path(path: str | Path | None, roots: tuple[str, ...]) -> str | None:
    """A product's image path as a segment stores it: relative to the index folder (`roots`,
    from `index_roots`) when the file is inside it (an uploaded photo), so a copied or moved
    index serves its own photos; any other path absolute (a relative one would depend on the
    writer's working folder). O(len(path)), no file-system call."""
    if not path:
        return None
    absolute = os.path.abspath(path)
    for base in roots:
        if absolute.startswith(base + os.sep):
            return Path(os.path.relpath(absolute, base)).as_posix()
    return absolute


def loaded_image_path(stored: str | None, root: Path) -> Path | None:
    """The stored image path read back: a relative one is inside the index folder `root`."""
    if not stored:
        return None
    path = Path(stored)
    return path if path.is_absolute() else root / path


class ProductsWriter:
    """Streams products into a segment folder: `add(batch)` any number of times, then `finish()`.

    Memory is bounded by one batch plus the distinct category paths; the codes go to a raw
    file as they come and become `paths.npy` at the end. O(N log N) time overall (B-tree
    inserts and the id index built once at the end). Ingest can feed it shard by shard.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.roots = index_roots(self.folder.parent.parent)  # the index folder of versions/<staging>/
        self.file = self.folder / PRODUCTS_FILE
        self._raw_codes = self.folder / (PATHS_FILE + ".raw")
        self._db = sqlite3.connect(self.file)
        with _writing():
            self._db.execute("PRAGMA journal_mode=OFF")  # a staging folder: a failed write is discarded whole
            self._db.execute("PRAGMA synchronous=OFF")  # the publisher fsyncs the finished file
            self._db.execute(
                "CREATE TABLE products (row INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT, description TEXT,"
                " brand TEXT, price REAL, category_path TEXT, image TEXT, image_path TEXT)"
            )
        self._codes = open(self._raw_codes, "wb")  # noqa: SIM115 - closed by finish/abort
        self.paths: dict[Path_, tuple[int, str]] = {}  # path -> (code, its JSON text)
        self._per_code: list[int] = []  # products per path code; prefix counts at finish: O(P)
        self.n = 0

    def add(self, products: Iterable[Product]) -> None:
        """Insert one batch of products (rows continue from the previous batch): O(batch · log N)."""
        rows, codes = [], []
        for product in products:
            path = tuple(product.category_path)
            code, text = -1, None
            if path:
                known = self.paths.get(path)
                if known is None:
                    known = self.paths[path] = (len(self.paths), json.dumps(list(path), ensure_ascii=False))
                    self._per_code.append(0)
                code, text = known
                self._per_code[code] += 1
            codes.append(code)
            rows.append(
                (
                    self.n,
                    product.id,
                    product.name,
                    product.description,
                    product.brand,
                    product.price,
                    text,
                    product.image,
                    stored_image_path(product.image_path, self.roots),
                )
            )
            self.n += 1
        with _writing():
            self._db.executemany(f"INSERT INTO products VALUES (?{', ?' * len(COLUMNS)})", rows)
        self._codes.write(np.asarray(codes, dtype=CODE_DTYPE).tobytes())

    def add_all(self, products: Iterable[Product], batch: int = WRITE_BATCH) -> None:
        """`add` in batches of `batch` products from any iterable (a list, a ProductRows)."""
        chunk: list[Product] = []
        for product in products:
            chunk.append(product)
            if len(chunk) >= batch:
                self.add(chunk)
                chunk = []
        if chunk:
            self.add(chunk)

    def finish(self) -> dict:
        """Build the id index, close both files; returns the manifest's `catalog` entry.
        Duplicate ids are refused (IndexStoreError). O(N log N) for the index, O(N) for the codes."""
        try:
            with _writing():
                self._db.execute("CREATE UNIQUE INDEX products_id ON products(id)")
        except sqlite3.IntegrityError:
            self.abort()
            raise IndexStoreError("duplicate product ids: each product id may appear once in an index") from None
        with _writing():
            self._db.commit()
        self._db.close()
        self._codes.close()
        raw = np.memmap(self._raw_codes, dtype=CODE_DTYPE, mode="r") if self.n else np.zeros(0, CODE_DTYPE)
        out = np.lib.format.open_memmap(self.folder / PATHS_FILE, mode="w+", dtype=CODE_DTYPE, shape=(self.n,))
        for start in range(0, self.n, 1 << 20):
            out[start : start + (1 << 20)] = raw[start : start + (1 << 20)]
        out.flush()
        del out, raw
        self._raw_codes.unlink()
        ordered = sorted(self.paths, key=lambda p: self.paths[p][0])
        counts: dict[Path_, int] = {}
        for path in ordered:
            for prefix in prefixes(path):
                counts[prefix] = counts.get(prefix, 0) + self._per_code[self.paths[path][0]]
        return {"products": self.n, "paths": [list(p) for p in ordered], "counts": counts_to_json(counts)}

    def abort(self) -> None:
        self._db.close()
        self._codes.close()


class ProductTable(Sequence[Product]):
    """The base segment's products, read by key from SQLite, with a small LRU of parsed products.

    len: O(1). `table[i]`: O(log N) on a miss, O(1) on a hit. `table[a:b]`: one range query,
    O(log N + b - a). Iteration: batches of READ_BATCH rows, O(N) time, O(batch) memory.
    `row_of(id)`: O(log N) through the unique index. The file is immutable once published,
    so it is opened read-only and `immutable`; one connection per process (SQLite
    connections must not cross a fork: a child opens its own on first use), shared by the
    process's threads under a lock (gthread workers).
    """

    def __init__(self, file: str | Path, n: int, label: str = "", cache_size: int = CACHE_SIZE) -> None:
        self.file = Path(file)
        self.root = self.file.parent.parent.parent  # the index folder of versions/<n>/products.sqlite
        self.n = int(n)
        self.label = label or str(self.file.parent)
        self.cache_size = cache_size
        self._cache: OrderedDict[int, Product] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = -1

    # ---- connection --------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        """This process's connection (caller holds the lock); reopened after a fork."""
        if self._db is None or self._pid != os.getpid():
            uri = f"file:{quote(str(self.file.resolve()))}?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._pid = os.getpid()
        return self._db

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:  # a damaged file: name it
                raise self._damaged(str(exc)) from exc

    def _damaged(self, reason: str) -> IndexDamaged:
        return IndexDamaged(f"{self.label}: {self.file.name} is damaged or unreadable ({reason[:200]})", file=self.file)

    def check(self) -> None:
        """At load: the file opens as SQLite and its last row is N-1. O(log N)."""
        [(last,)] = self._query("SELECT max(row) FROM products")
        if (last if last is not None else -1) != self.n - 1:
            raise self._damaged(f"last row {last}, the manifest says {self.n} products")

    def _parse(self, row: int, values: tuple) -> Product:
        pid, name, description, brand, price, path, image, image_path = values
        try:
            if not isinstance(pid, str) or not isinstance(name, str) or not isinstance(description, str):
                raise TypeError("id, name and description must be text")
            return Product(
                pid,
                name,
                description,
                brand,
                price,
                tuple(str(level) for level in json.loads(path)) if path else (),
                image,
                loaded_image_path(image_path, self.root),
            )
        except (ValueError, TypeError) as exc:
            raise self._damaged(f"row {row}: {exc}") from exc

    # ---- Sequence ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: SupportsIndex) -> Product: ...
    @overload
    def __getitem__(self, index: slice) -> list[Product]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Product | list[Product]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._range(start, stop)
        row = index.__index__()
        if row < 0:
            row += self.n
        if not 0 <= row < self.n:
            raise IndexError(f"product row {index} out of range (0..{self.n - 1})")
        with self._lock:
            hit = self._cache.get(row)
            if hit is not None:
                self._cache.move_to_end(row)
                return hit
        found = self._query(f"SELECT {_SELECT} FROM products WHERE row = ?", (row,))
        if not found:
            raise self._damaged(f"row {row} is missing")
        product = self._parse(row, found[0])
        with self._lock:
            self._cache[row] = product
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return product

    def _range(self, start: int, stop: int) -> list[Product]:
        if stop <= start:
            return []
        sql = f"SELECT row, {_SELECT} FROM products WHERE row >= ? AND row < ? ORDER BY row"
        found = self._query(sql, (start, stop))
        if len(found) != stop - start:
            raise self._damaged(f"rows {start}..{stop - 1}: {len(found)} found")
        return [self._parse(values[0], values[1:]) for values in found]

    def __iter__(self) -> Iterator[Product]:
        for start in range(0, self.n, READ_BATCH):
            yield from self._range(start, min(self.n, start + READ_BATCH))

    def row_of(self, product_id: str) -> int | None:
        """Row of a product id, None when absent: O(log N) (unique index)."""
        found = self._query("SELECT row FROM products WHERE id = ?", (product_id,))
        return int(found[0][0]) if found else None

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None


class ProductRows(Sequence[Product]):
    """Base products (a ProductTable, or any sequence) followed by the deltas' products, as one
    read-only sequence; the base is never copied. `codes` are the rows' category codes;
    `relabeled` maps the rows relabelled since the base to their product as it now reads.

    Indexing: the base's cost or O(1); slicing: O(slice + log M) for M relabelled rows;
    `row_of`: the newest delta row of that id (a dict of the delta rows built on first use,
    O(delta rows)), else the base's lookup. A deleted row still reads here: the store
    (`IndexStore.row_of`, `deleted`) hides it."""

    def __init__(
        self,
        base: Sequence[Product],
        added: Sequence[Product],
        codes: CategoryCodes,
        relabeled: Mapping[int, Product] | None = None,
    ) -> None:
        self.base = base
        self.added = list(added)
        self.codes = codes
        self.nb = len(base)
        self.relabeled = dict(relabeled or {})
        self._relabeled_rows = np.asarray(sorted(self.relabeled), dtype=np.int64)
        self._added_ids: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.nb + len(self.added)

    @overload
    def __getitem__(self, index: SupportsIndex) -> Product: ...
    @overload
    def __getitem__(self, index: slice) -> list[Product]: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Product | list[Product]:
        n = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if stop <= start:
                return []
            head = list(self.base[start : min(stop, self.nb)]) if start < self.nb else []
            out = head + self.added[max(start, self.nb) - self.nb : max(stop, self.nb) - self.nb]
            lo, hi = np.searchsorted(self._relabeled_rows, [start, stop])
            for row in self._relabeled_rows[lo:hi].tolist():
                out[row - start] = self.relabeled[row]
            return out
        row = index.__index__()
        if row < 0:
            row += n
        if not 0 <= row < n:
            raise IndexError(f"product row {index} out of range (0..{n - 1})")
        if row in self.relabeled:
            return self.relabeled[row]
        return self.base[row] if row < self.nb else self.added[row - self.nb]

    def __iter__(self) -> Iterator[Product]:
        if not self.relabeled:
            yield from self.base
            yield from self.added
            return
        for row, product in enumerate(self.base):
            yield self.relabeled.get(row, product)
        for row, product in enumerate(self.added, start=self.nb):
            yield self.relabeled.get(row, product)

    def __eq__(self, other: object) -> bool:
        """Same products in the same order (O(N): tests and small stores)."""
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence: equality by content

    def row_of(self, product_id: str) -> int | None:
        if self._added_ids is None:
            self._added_ids = {p.id: self.nb + i for i, p in enumerate(self.added)}
        row = self._added_ids.get(product_id)
        if row is not None:
            return row
        if isinstance(self.base, ProductTable):
            return self.base.row_of(product_id)
        return next((i for i, p in enumerate(self.base) if p.id == product_id), None)
