"""Catalogue -> vectors -> store: build, add, encode (Ray) and ingest."""

from indexer.pipeline.build import add_products
from indexer.pipeline.calibrate import recalibrate

__all__ = [
    "add_products",
    "recalibrate",
]
