"""Refit the deployment calibration on the live catalogue and publish it (`python -m indexer calibrate`).

Reviewed listings, corrections and deletions change what the Categorizer's weights, calibration
curve and auto threshold should be. This runs the same deployment fit as the build
(indexer.categorizer.protocol.calibrate) on the live version, its deltas included, and publishes
the entry as a new version (indexer.store.publish_manifest_entries): readers switch to it only
once it is complete. Cost: the fit's (see `calibrate`), plus O(files) to publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from indexer.categorizer import calibrate
from indexer.store import IndexStore, open_store, publish_manifest_entries
from indexer.store.audit import utc_now


@dataclass
class Recalibration:
    index: str
    calibrated_on: str  # the version (and deltas) the fit saw
    published: str  # the version that holds it
    products: int
    threshold_before: float | None
    threshold_after: float | None
    seconds: float

    def lines(self) -> list[str]:
        def fmt(t: float | None) -> str:
            return "none (every decision is review)" if t is None else f"{t:.4f}"

        return [
            f"calibrated {self.index} on {self.products} products ({self.calibrated_on}) in {self.seconds:.1f} s",
            f"auto threshold {fmt(self.threshold_before)} -> {fmt(self.threshold_after)}; published as version "
            f"{self.published}",
        ]


def recalibrate(index: str | Path, size: int | None = None, store: IndexStore | None = None) -> Recalibration:
    """Fit the deployment calibration on the live catalogue of `index` and publish it."""
    store = store or open_store(index)
    before = (store.manifest.get("categorizer") or {}).get("threshold")
    start = time.perf_counter()
    stamp = utc_now()  # the audit log's clock: changes recorded after this are the next fit's
    entry = calibrate(store, size=size)
    seen = f"version {store.version} + {len(store.deltas)} deltas"
    entry["refit"] = {
        "at": stamp,
        "version": store.version,
        "deltas": len(store.deltas),
        "products": len(store.products),
    }
    published = publish_manifest_entries(store, {"categorizer": entry})
    return Recalibration(
        index=str(index),
        calibrated_on=seen,
        published=published.version,
        products=len(store.products),
        threshold_before=before,
        threshold_after=entry.get("threshold"),
        seconds=time.perf_counter() - start,
    )
