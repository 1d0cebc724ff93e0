"""The index: one interface (`base.IndexStore`), backends behind one factory.

Open a store with `open_store(location)`, add to it with `append`; everything else reads the
`IndexStore` interface. The local FAISS backend's maintenance (versions, compaction,
verification) is in `indexer.store.local`.
"""

from indexer.store.base import IndexStore, VectorChannel, check_compatible
from indexer.store.errors import (
    DuplicateProduct,
    IndexDamaged,
    IndexMismatch,
    IndexNotFound,
    IndexStoreError,
    StoreUnavailable,
)
from indexer.store.factory import append, open_store, parse_vector_store, route
from indexer.store.filters import RowFilter
from indexer.store.lexical import LEXICAL_SCALINGS
from indexer.store.local.index import last_verified, read_current

__all__ = [
    "DuplicateProduct",
    "IndexDamaged",
    "IndexMismatch",
    "IndexNotFound",
    "IndexStore",
    "IndexStoreError",
    "LEXICAL_SCALINGS",
    "RowFilter",
    "StoreUnavailable",
    "VectorChannel",
    "append",
    "check_compatible",
    "last_verified",
    "open_store",
    "parse_vector_store",
    "read_current",
    "route",
]
