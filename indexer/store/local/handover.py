"""The hand-over: how every writer of a new version carries the changes committed meanwhile.

A writer of a new base (build, ingest, compaction, repair) reads the live version once, its
**snapshot** (version + committed deltas), and spends seconds to hours writing the new base
beside it while adds (and, later, deletes and relabels) go on committing deltas to the live
version. One rule for all of them:

1. **One base writer at a time** (`base_lock`, `.base.lock`, held for the whole run): so when a
   writer publishes, the live version is still its snapshot's (unless it was damaged meanwhile:
   then nothing could be added to it, since every add verifies first).
2. **At publish, under the write lock, every delta committed to the snapshot's version after the
   snapshot is carried into the new version**, or the writer refuses to publish and says why
   (`CarryRefused`). Nothing acknowledged is dropped silently.
   - A compaction's base continues the snapshot's rows, so the deltas are hard-linked as they are
     (renumbered past the deleted rows it dropped): O(files) (`index._carry_deltas`).
   - A rebuilt base (build, ingest) numbers its rows afresh, so each delta is replayed on it by
     its kind (`REPLAYERS`): an add's products are appended after the new base's rows with their
     stored vectors (same models) or vectors re-encoded by the writer (other models), and their
     lexical rows are computed in the new vocabulary; a delete or relabel is applied by product
     id to the row the product now has. A kind without a replayer is refused.
   What was already in the snapshot is the writer's own decision (a build's --keep-added /
   --drop-added).

A delta records its `kind` in its manifest (`"add"`, `"change"` for deletes and relabels; a delta
written before kinds is read by its content). A new kind is carried by compaction as is, and by a
rebuild through the replayer it registers in `REPLAYERS`: `replay(change, target) -> Replayed`.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.catalog.products import Product
from indexer.store.errors import IndexStoreError
from indexer.store.local.segments import ADD, CHANGE, StoredVectors

BASE_LOCK = ".base.lock"


class BaseWriterBusy(IndexStoreError):
    """Another writer of a new base holds the base lock: what would publish now must wait for it."""


class CarryRefused(IndexStoreError):
    """A writer cannot carry a change committed while it ran: it publishes nothing and says why."""


@dataclass(frozen=True)
class Snapshot:
    """What a writer of a new base read: the live version (None: no index yet) and its deltas."""

    version: str | None
    deltas: tuple[str, ...] = ()

    @classmethod
    def of(cls, store: object | None) -> Snapshot:
        if store is None:
            return cls(None)
        return cls(str(getattr(store, "version")), tuple(getattr(store, "deltas", ())))  # noqa: B009


@contextmanager
def base_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Exclusive lock held by a writer of a new base for its whole run (not the write lock: adds go
    on meanwhile). Yields False when another holds it and `wait` is False."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / BASE_LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- carrying ------------------------------------------------------------------------------------
@dataclass
class Change:
    """One committed delta as loaded, for a replay: its products take rows `start`... in the
    version it was committed to; `changes` are a delete / relabel delta's records."""

    version: str
    name: str
    manifest: dict
    products: list[Product]
    vectors: dict[str, tuple[StoredVectors, np.ndarray]]  # modality -> (unit vectors, global rows)
    start: int
    changes: list[dict] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The manifest's `kind`; a delta written before kinds is a change when it holds change
        records, else an add."""
        return str(self.manifest.get("kind") or (CHANGE if self.manifest.get("counts", {}).get("changes") else ADD))


@dataclass
class Target:
    """The rebuilt version changes are replayed on: what a replayer may ask of it and tell it."""

    rows: int  # products already in it (base + changes replayed so far)
    base_row: Callable[[str], int | None]  # a product's row in the rebuilt base
    base_product: Callable[[int], Product]
    same_models: bool  # the changes' vectors come from the target's models
    reencode: Callable[[list[Product]], Mapping[str, np.ndarray]] | None  # modality -> (n, d), NaN = absent
    writer: str  # "build", "ingest": for the messages
    added: dict[str, tuple[int, Product]] = field(default_factory=dict)  # replayed adds: id -> (row, product)
    deleted: set[str] = field(default_factory=set)  # ids replayed deletes removed

    def row_of(self, product_id: str) -> int | None:
        """Where a product is in the target now (None: not there, or deleted by a replayed change)."""
        if product_id in self.added:
            return self.added[product_id][0]
        if product_id in self.deleted:
            return None
        return self.base_row(product_id)

    def product(self, product_id: str) -> Product:
        if product_id in self.added:
            return self.added[product_id][1]
        row = self.base_row(product_id)
        assert row is not None
        return self.base_product(row)


@dataclass
class Replayed:
    """A change rewritten for the target: products (their text goes into the lexical channel) and
    vectors with target rows, or change records with target rows."""

    products: list[Product] = field(default_factory=list)
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    changes: list[dict] = field(default_factory=list)


def replay_add(change: Change, target: Target) -> Replayed:
    """An add replayed on a rebuilt base: the same products after the target's rows, their stored
    vectors re-numbered (or re-encoded when the target's models differ). Refuses an id the
    target already holds (the new source and a concurrent add both name it)."""
    clash = [p.id for p in change.products if target.row_of(p.id) is not None]
    if clash:
        raise CarryRefused(
            f"product {clash[0]} was added (delta {change.name} of version {change.version}) while this "
            f"{target.writer} ran, and the new version holds that id too; nothing was published: remove "
            "one of them and run it again"
        )
    if target.same_models:
        vectors = {
            m: (np.asarray(vecs, dtype=np.float32), np.asarray(rows) - change.start + target.rows)
            for m, (vecs, rows) in change.vectors.items()
        }
    elif target.reencode is not None:
        encoded = target.reencode(change.products)
        vectors = {}
        for modality, matrix in encoded.items():
            keep = ~np.isnan(matrix).any(axis=1)
            vectors[modality] = (matrix[keep], target.rows + np.flatnonzero(keep))
    else:
        raise CarryRefused(
            f"{len(change.products)} products were added (delta {change.name} of version {change.version}) "
            f"while this {target.writer} ran, with vectors of other models than the new version's, and this "
            f"{target.writer} cannot encode them; nothing was published: run `python -m indexer build "
            "--keep-added` to re-encode them"
        )
    for offset, product in enumerate(change.products):
        target.added[product.id] = (target.rows + offset, product)
        target.deleted.discard(product.id)
    return Replayed(change.products, vectors)


def replay_change(change: Change, target: Target) -> Replayed:
    """Deletes and relabels replayed on a rebuilt base, by product id: each record takes the
    product's row in the target; a relabel gives the target's product (its data may be newer) the
    relabelled path. A product the target does not hold (the rebuild dropped it) needs neither."""
    records = []
    for record in change.changes:
        row = target.row_of(str(record["id"]))
        if row is None:
            continue
        out = {k: v for k, v in record.items() if k != "product"}
        out["row"] = int(row)
        if record["op"] == "delete":
            target.deleted.add(str(record["id"]))
            target.added.pop(str(record["id"]), None)
        else:
            product = target.product(str(record["id"]))
            relabelled = Product.from_record(dict(product.to_record(), category_path=list(record["path"])))
            out["product"] = relabelled.to_record()
            if record["id"] in target.added:
                target.added[str(record["id"])] = (row, relabelled)
        records.append(out)
    return Replayed(changes=records)


REPLAYERS: dict[str, Callable[[Change, Target], Replayed]] = {ADD: replay_add, CHANGE: replay_change}


def replay(change: Change, target: Target) -> Replayed:
    """Replay one change on a rebuilt base by its kind; CarryRefused for a kind no replayer knows."""
    replayer = REPLAYERS.get(change.kind)
    if replayer is None:
        raise CarryRefused(
            f"delta {change.name} of version {change.version} is a {change.kind!r} change committed while this "
            f"{target.writer} ran, and it cannot be carried into a rebuilt version; nothing was published: "
            "run it again"
        )
    return replayer(change, target)
