"""Catalogue -> vectors -> store: build, add, encode (Ray) and ingest."""

from indexer.pipeline.build import add_products

__all__ = [
    "add_products",
]
