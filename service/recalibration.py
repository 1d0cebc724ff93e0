"""Refit the deployment calibration in the background once enough of the catalogue has changed.

A change is one audit-log entry that alters the catalogue (add, auto-listing, review, relabel,
delete) recorded after the live calibration was fitted (its `refit.at`, else the version's build
time). After each change this process makes, `Recalibrator.changed()` counts them (one SQLite
count); from RECALIBRATE_AFTER changes (default 200; 0 = never) it starts one refit in a
background thread (indexer.pipeline.calibrate.recalibrate), unless a refit is running in any
process (an flock on INDEX_DIR/.calibrate.lock). The new calibration is published as a new index
version only once the fit is complete; every worker then reloads it like any new version. A
worker killed during a fit publishes nothing and the next change starts another.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from indexer.store import AuditLog, IndexStore

from .state import NotReady, ServiceState

log = logging.getLogger(__name__)

CHANGES = ("add", "auto-listing", "review", "relabel", "delete")
LOCK_FILE = ".calibrate.lock"


def calibrated_at(store: IndexStore) -> str:
    """When the live calibration saw the catalogue: its refit time, else the version's build time."""
    entry = store.manifest.get("categorizer") or {}
    return (entry.get("refit") or {}).get("at") or store.manifest.get("built_at") or "1970-01-01T00:00:00Z"


class Recalibrator:
    def __init__(self, state: ServiceState, audit: Callable[[], AuditLog], after: int) -> None:
        self.state = state
        self.audit = audit
        self.after = after
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def pending(self, store: IndexStore) -> int:
        """Changes recorded since the live calibration was fitted."""
        return self.audit().count_since(calibrated_at(store), CHANGES)

    def changed(self) -> threading.Thread | None:
        """Call after a change to the catalogue: starts a background refit when RECALIBRATE_AFTER
        changes have accumulated and none runs in this process; the thread, or None."""
        if self.after <= 0 or (self._thread is not None and self._thread.is_alive()):
            return None
        try:
            live = self.state.current()
        except NotReady:
            return None
        if self.pending(live.store) < self.after:
            return None
        self._thread = threading.Thread(target=self._refit, name="recalibrate", daemon=True)
        self._thread.start()
        return self._thread

    def _refit(self) -> None:
        from indexer.pipeline import recalibrate

        index_dir = Path(self.state.index_dir)
        with open(index_dir / LOCK_FILE, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process is refitting
                return
            try:
                store = self.state.current().store
                if self.pending(store) < self.after:  # another process has just published one
                    return
                result = recalibrate(index_dir, store=store)
                self.last_error = None
                log.info("background recalibration: %s", "; ".join(result.lines()))
            except Exception as exc:  # the live calibration stays; the next change tries again
                self.last_error = str(exc)
                log.exception("background recalibration failed")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
