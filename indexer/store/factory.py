"""Which store backend serves an index: FAISS on local disk (the default) or Milvus.

The only module that names the backends: everything else opens a store with `open_store`,
changes it with `append`, `delete` and `relabel`, and reads it through
`indexer.store.base.IndexStore`. Every change is recorded in the index folder's audit trail
(`indexer.store.audit`) by the backend, under its write lock, with the `actor` given here.

A location is a Milvus one when it is `milvus://host:port[/collection]`, `http(s)://...`
or a `*.db` path (Milvus Lite). A process that serves an index folder from Milvus (the
service, with VECTOR_STORE set) routes that folder to the Milvus location once: every
`IndexStore.load(folder)` and `append` then go to Milvus, while the folder keeps what is
local (uploaded photos, the embedding cache). Nothing else changes for the callers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.store.base import IndexStore
from indexer.store.local import index as local
from indexer.store.local import versions as local_versions
from indexer.store.milvus import MilvusIndexStore, MilvusLocation, MilvusWriter, copy_to_milvus

if TYPE_CHECKING:
    from indexer.catalog.products import Product
    from indexer.encoders.base import Encoder

FAISS = "faiss"
_ROUTES: dict[str, str] = {}


def is_milvus_location(location: object) -> bool:
    text = str(location).strip()
    return text.startswith(("milvus://", "http://", "https://")) or text.endswith(".db")


def parse_vector_store(value: str | None) -> str | None:
    """VECTOR_STORE: unset, empty or "faiss" = the local FAISS store (None); else a Milvus
    location, refused with a clear error when it is neither."""
    text = (value or "").strip()
    if text in ("", FAISS):
        return None
    if not is_milvus_location(text):
        raise ValueError(
            f"VECTOR_STORE={text!r}: use 'faiss' (default), milvus://host:19530[/collection] or a Milvus Lite *.db path"
        )
    return text


def route(index_dir: str | Path, location: str | None) -> None:
    """Serve `index_dir` from the Milvus `location` in this process (None: back to FAISS)."""
    key = str(Path(index_dir).resolve())
    if location is None:
        _ROUTES.pop(key, None)
    else:
        _ROUTES[key] = location


def routed(path: str | Path) -> str | None:
    """The Milvus location that serves `path`, or None for a local FAISS index."""
    if is_milvus_location(path):
        return str(path)
    if not _ROUTES:
        return None
    return _ROUTES.get(str(Path(path).resolve()))


def open_store(
    path: str | Path,
    encoder: Encoder | None = None,
    version: str | None = None,
    checksums: bool = False,
) -> IndexStore:
    """Open the live version (or `version`) of the index at `path` on its backend.

    A Milvus location, or a folder routed to one (`route`), opens the Milvus collection; any
    other path is a local FAISS folder (`LocalIndexStore.load`: sizes always checked, every file
    hashed with `checksums=True`). With `encoder`, an index built by other models is refused.
    """
    location = routed(path)
    if location is not None:
        if version is not None:
            raise ValueError("a Milvus store has no versions to choose from")
        folder = None if is_milvus_location(path) else Path(path)
        return MilvusIndexStore.open(location, encoder, local=folder)
    return local.LocalIndexStore.load(path, encoder=encoder, version=version, checksums=checksums)


def append(
    store: IndexStore,
    new_products: list[Product],
    new_vectors: Mapping[str, np.ndarray | None],
    before_publish: Callable[[IndexStore], None] | None = None,
    action: str = "add",
    actor: str = "cli",
    notes: Mapping[str, Mapping] | None = None,
) -> IndexStore:
    """Add products to the live index of `store`'s backend: O(batch) on both backends
    (a local delta segment, or a Milvus insert); returns the store reloaded with them.

    Each product is an audit event: `action` ("add", "auto-listing" or "review") by `actor`
    ("cli", "api-token", "review-token"), `notes[id]` joining its `after` (e.g. the model and
    threshold that decided an automatic listing). Callers do not record adds themselves."""
    if isinstance(store, MilvusIndexStore):
        return store.insert(new_products, new_vectors, before_publish, action=action, actor=actor, notes=notes)
    if isinstance(store, local.LocalIndexStore):
        return local.append(store, new_products, new_vectors, before_publish, action=action, actor=actor, notes=notes)
    raise TypeError(f"no writer for a {store.backend} store")


def kept_products(path: str | Path) -> Callable[[str], bool]:
    """Whether a product id is held by a version the index at `path` may still serve (the live one,
    or a kept one a fall-back would serve): what must keep its uploaded photo. A Milvus-served
    folder has one live collection and no kept versions."""
    if routed(path) is not None:
        store = open_store(path)
        return lambda product_id: store.row_of(product_id) is not None
    return local.kept_products(path)


def live_fingerprint(path: str | Path) -> tuple:
    """What changes whenever the live version of a local index does (its pointer, manifest or
    delta list), damage included: a reader keeps a refusal until it changes. () for Milvus."""
    if routed(path) is not None:
        return ()
    return local.live_fingerprint(path)


def clean_leftovers(path: str | Path) -> list[Path]:
    """Remove what dead writers left in a local index folder (staging folders, temp pointers,
    uncommitted deltas) when no writer holds its lock: what a service does when it starts."""
    if is_milvus_location(path) or not Path(path).is_dir():
        return []
    return local_versions.clean_leftovers(path)


def delete(store: IndexStore, product_ids: Iterable[str], actor: str = "cli") -> IndexStore:
    """Delete products from the live index of `store`'s backend; returns the store reloaded.

    O(batch) in the catalogue size on both backends (a local delta of tombstones, Milvus
    upserts of the rows marked deleted): from the next load on, a deleted product is in no
    search, vote, similar products or category count, and `row_of(id)` is None. An id the
    index does not hold, or already deleted, refuses the whole call (ProductNotFound, a
    KeyError), nothing changed. Each product deleted is an audit event by `actor`."""
    ids = list(product_ids)
    if isinstance(store, MilvusIndexStore):
        return store.change(deletes=ids, actor=actor)
    if isinstance(store, local.LocalIndexStore):
        return local.change(store, deletes=ids, actor=actor)
    raise TypeError(f"no writer for a {store.backend} store")


def relabel(store: IndexStore, changes: Mapping[str, Iterable[str]], actor: str = "cli") -> IndexStore:
    """Give products new category paths ({id: ("A", "B", "C")}) in the live index of `store`'s
    backend; returns the store reloaded. O(batch) in the catalogue size on both backends; the
    next vote reads the new categories. A path no product has yet is allowed: it becomes a new
    category of the index (the reviewer or the merchant knows better than the index). A path
    equal to the product's own changes nothing. Refused whole, nothing changed: an unknown or
    deleted id (ProductNotFound), a malformed path (CategoryPathError, a ValueError). Each
    product relabelled is an audit event by `actor` (before and after: the category paths)."""
    if isinstance(store, MilvusIndexStore):
        return store.change(relabels=changes, actor=actor)
    if isinstance(store, local.LocalIndexStore):
        return local.change(store, relabels=changes, actor=actor)
    raise TypeError(f"no writer for a {store.backend} store")


def publish_manifest_entries(store: IndexStore, entries: Mapping[str, Any]) -> IndexStore:
    """Publish the live index again with manifest `entries` replaced (the Categorizer's
    calibration), computed on `store`: O(files) on the local backend (a new version of hard links,
    deltas carried over). Milvus stores their manifest in the collection and are not rewritten here:
    calibrate the FAISS index and copy it (`to-milvus`)."""
    if isinstance(store, local.LocalIndexStore):
        return local.republish(store.path, entries, based_on=store.version)
    raise NotImplementedError(
        f"publishing a new calibration to a {store.backend} store is not supported: calibrate the FAISS index "
        "folder and copy it with `python -m indexer to-milvus`"
    )


def copy_to_location(store: IndexStore, location: str, **options: Any) -> tuple[IndexStore, str]:
    """Copy a loaded index (any backend) into a new Milvus collection at `location` and open it:
    O(N) rows streamed in batches (see `indexer.store.milvus.copy_to_milvus` for `options`).
    Returns the copy and where it is ("collection NAME at URI")."""
    loc = copy_to_milvus(store, location, **options)
    return MilvusIndexStore.open(loc), f"collection {loc.collection} at {loc.uri}"


def location_writer(
    location: str,
    dims: Mapping[str, int],
    replace: bool = False,
    index_type: str = "FLAT",
    collection: str | None = None,
) -> MilvusWriter:
    """A streaming writer into a new Milvus collection at `location` (`ingest --store`): `add`
    batches as a local base writer takes them, then `stage`, `staged` (calibrate on it),
    `amend`, `commit`. Refuses an existing collection unless `replace`."""
    if not is_milvus_location(location):
        raise ValueError(f"{location!r} is not a vector store location: use milvus://host:19530[/collection] or *.db")
    return MilvusWriter(MilvusLocation.parse(location, collection), dims, index_type, replace)
