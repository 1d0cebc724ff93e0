"""The index: one interface (`base.IndexStore`), backends behind one factory.

Open a store with `open_store(location)`, change it with `append`, `delete` and `relabel`
(each recorded in the index folder's audit trail, `AuditLog`); everything else reads the
`IndexStore` interface. The local FAISS backend's maintenance (versions, compaction,
verification) is in `indexer.store.local`.
"""

from indexer.store.audit import AuditLog
from indexer.store.base import IndexStore, VectorChannel, check_compatible
from indexer.store.errors import (
    DuplicateProduct,
    IndexDamaged,
    IndexMismatch,
    IndexNotFound,
    IndexStoreError,
    ProductNotFound,
    StoreUnavailable,
)
from indexer.store.factory import (
    append,
    clean_leftovers,
    delete,
    kept_products,
    live_fingerprint,
    open_store,
    parse_vector_store,
    publish_manifest_entries,
    relabel,
    route,
)
from indexer.store.filters import RowFilter
from indexer.store.lexical import LEXICAL_SCALINGS
from indexer.store.local.index import last_verified, read_current
from indexer.store.local.versions import IndexRolledBack
from indexer.store.review import DecisionConflict, Listing, ListingNotFound, ListingStatus, ReviewQueue

__all__ = [
    "AuditLog",
    "DecisionConflict",
    "Listing",
    "ListingNotFound",
    "ListingStatus",
    "ReviewQueue",
    "DuplicateProduct",
    "IndexDamaged",
    "IndexMismatch",
    "IndexNotFound",
    "IndexRolledBack",
    "IndexStore",
    "IndexStoreError",
    "LEXICAL_SCALINGS",
    "ProductNotFound",
    "RowFilter",
    "StoreUnavailable",
    "VectorChannel",
    "append",
    "check_compatible",
    "clean_leftovers",
    "delete",
    "kept_products",
    "live_fingerprint",
    "last_verified",
    "open_store",
    "parse_vector_store",
    "publish_manifest_entries",
    "read_current",
    "relabel",
    "route",
]
