"""Which store backend serves an index: FAISS on local disk (the default) or Milvus.

A location is a Milvus one when it is `milvus://host:port[/collection]`, `http(s)://...`
or a `*.db` path (Milvus Lite). A process that serves an index folder from Milvus (the
service, with VECTOR_STORE set) routes that folder to the Milvus location once: every
`IndexStore.load(folder)` and `append` then go to Milvus, while the folder keeps what is
local (uploaded photos, the embedding cache). Nothing else changes for the callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .catalog import Product
    from .encoders.base import Encoder
    from .store import IndexStore

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


def open_routed(path: str | Path, location: str, encoder: Encoder | None) -> IndexStore:
    from .milvus_store import MilvusIndexStore

    local = None if is_milvus_location(path) else Path(path)
    return MilvusIndexStore.open(location, encoder, local=local)


def append_to_backend(
    store: IndexStore,
    new_products: list[Product],
    new_vectors: Mapping[str, np.ndarray | None],
    before_publish: Callable[[IndexStore], None] | None,
) -> IndexStore:
    from .milvus_store import MilvusIndexStore

    if not isinstance(store, MilvusIndexStore):
        raise TypeError(f"no writer for a {store.backend} store")
    return store.insert(new_products, new_vectors, before_publish)
