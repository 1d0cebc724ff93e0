"""What can be wrong with an index on disk; `indexer.store.local.index` re-exports these."""

from __future__ import annotations

from pathlib import Path


class IndexStoreError(RuntimeError):
    """Base class for everything that can be wrong with an index on disk (missing, mismatched, damaged)."""


class IndexNotFound(IndexStoreError):
    pass


class IndexMismatch(IndexStoreError):
    """The index was built by other encoders than the ones offered."""


class IndexDamaged(IndexStoreError):
    """A version's files do not match its manifest (missing, truncated, altered, unreadable).

    `file` is the damaged file, so logs and the CLI can name it.
    """

    def __init__(self, message: str, file: str | Path | None = None):
        super().__init__(message)
        self.file = Path(file) if file is not None else None


class DuplicateProduct(IndexStoreError):
    """An add names product ids the index already holds (the add changes nothing)."""

    def __init__(self, ids: list[str]):
        super().__init__(f"product ids already in the index: {', '.join(ids[:5])}")
        self.ids = ids


class ProductNotFound(IndexStoreError, KeyError):
    """A delete or relabel names product ids the index does not hold (never added, or already
    deleted): the change is refused whole and changes nothing. `ids` are the missing ones."""

    def __init__(self, ids: list[str]):
        super().__init__(f"no product with id {', '.join(repr(i) for i in ids[:5])} in the index")
        self.ids = ids

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class StoreUnavailable(IndexStoreError):
    """The store's backend cannot be reached or cannot serve right now (a Milvus server that is
    down, restarting or loading): nothing is wrong with the index; retry later (the service
    answers 503)."""
