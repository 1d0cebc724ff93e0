"""A listing's life in the service: filed in the index at once, or queued until a reviewer decides.

`POST /api/v1/listings` categorizes a listing: an `auto` decision adds it to the index with its
predicted category, a `review` decision queues it (indexer.store.review) with what a reviewer
needs. A reviewer's category makes it a labelled product through the path every add takes
(indexer.pipeline.add_products), visible to the next query; a rejection drops it. Each change
is in the audit trail (indexer.store.AuditLog) with the kind of token that made it: the store
records the adds (`add_products(action=, actor=, notes=)`), this module the rejections.

Crash safety (the queue's journal, see indexer.store.review): a row is recorded before its add,
the add is idempotent by product id (DuplicateProduct on the same product = already applied),
the row is marked applied after it, and every step holds the queue's lock. `Listings.recover`
finishes the rows a killed process left, once per process (gunicorn's post_worker_init, and
before a process's first listing or review request).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from indexer.catalog import Product
from indexer.store import AuditLog, DuplicateProduct, IndexStore, Listing, ListingStatus, ReviewQueue, open_store

from .auth import REVIEWER, WRITER
from .errors import ApiError
from .media import clean_orphans, stage_upload
from .recalibration import Recalibrator
from .state import NotReady, ServiceState

log = logging.getLogger(__name__)


class AlreadyIndexed(RuntimeError):
    """The listing's id belongs to another product of the index (added by another path)."""


def answer(listing: Listing) -> dict[str, Any]:
    """What POST /api/v1/listings answers for a listing (the same on a replay)."""
    auto = listing.status in (ListingStatus.FILING, ListingStatus.FILED)
    body: dict[str, Any] = {
        "id": listing.id,
        "category": listing.category,
        "category_path": list(listing.category_path),
        "confidence": listing.prediction.get("confidence"),
        "decision": "auto" if auto else "review",
        "reasons": listing.reasons,
        "where": "index" if auto else "review",
        "status": listing.status,
    }
    if not auto:
        body["top"] = listing.top
    return body


class Listings:
    """The queue, the audit log and the appliers of one service process (app.extensions["listings"])."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.index_dir = Path(state.index_dir)
        self._queue: ReviewQueue | None = None
        self._audit: AuditLog | None = None
        self._recovered_pid: int | None = None
        self.recalibrator: Recalibrator | None = None  # told of every change (service.recalibration)

    @property
    def queue(self) -> ReviewQueue:
        if self._queue is None:
            self._queue = ReviewQueue(self.index_dir)
        return self._queue

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            self._audit = AuditLog(self.index_dir)
        return self._audit

    # ---- recording ------------------------------------------------------------------------
    def submit(self, listing: Listing, image: bytes | None, extension: str = "jpg") -> tuple[dict, bool]:
        """Record a new listing (its photo first), and file it at once when its status is
        `filing`; (answer, created). An id already listed with the same content replays the
        first answer (created False); with other content it is a 409."""
        existing = self.queue.get(listing.id)
        if existing is not None:
            return self._replay(existing, listing.content_key), False
        if image is not None:
            listing.photo = self.queue.save_photo(listing.id, listing.content_key, image, extension)
        stored, created = self.queue.submit(listing)
        if not created:  # another request recorded this id meanwhile
            if stored.photo != listing.photo:
                self.queue.drop_photo(listing)
            return self._replay(stored, listing.content_key), False
        if stored.status == ListingStatus.FILING:
            stored = self._apply_locked(stored.id)
        return answer(stored), True

    def _replay(self, existing: Listing, content_key: str) -> dict:
        if existing.content_key != content_key:
            raise ApiError(409, f"listing id {existing.id} already holds another listing; send another id", "Conflict")
        if existing.status == ListingStatus.FILING:  # its first request died before filing it
            existing = self._apply_locked(existing.id)
        return answer(existing)

    def decide(self, listing_id: str, decision: dict) -> dict:
        """Record a reviewer's decision, then apply it; the decision's result (the same for the
        same decision again). Raises ListingNotFound, DecisionConflict (409) or AlreadyIndexed."""
        listing = self.queue.record_decision(listing_id, decision, REVIEWER)
        if listing.status == ListingStatus.DONE and listing.result is not None:
            return listing.result
        done = self._apply_locked(listing_id)
        assert done.result is not None
        return done.result

    # ---- applying -------------------------------------------------------------------------
    def _apply_locked(self, listing_id: str) -> Listing:
        """Apply a pending row under the queue's lock (re-read under it: another process may
        have applied it meanwhile); the row as it ends."""
        with self.queue.lock():
            listing = self.queue.get(listing_id)
            assert listing is not None  # rows are never deleted
            if listing.status not in ListingStatus.PENDING:
                return listing
            return self._apply(listing)

    def _apply(self, listing: Listing) -> Listing:
        """Filing (auto) or a recorded decision (review) -> the index, the audit log, the row."""
        if listing.status == ListingStatus.DECIDING and (listing.decision or {}).get("reject"):
            self._audit_once(listing.id, "reject", listing.actor or REVIEWER, self._before(listing), None)
            result: dict[str, Any] = {
                "id": listing.id,
                "status": ListingStatus.DONE,
                "decision": "reject",
                "category": None,
                "category_path": [],
                "where": "dropped",
                "index_version": None,
                "decided_at": listing.decided_at,
            }
            finished = self.queue.finish(listing.id, result)
            self.queue.drop_photo(listing)
            return finished
        if listing.status == ListingStatus.FILING:
            path = list(listing.category_path)
            action, actor = "auto-listing", WRITER
            note = {"decided_by": dict(listing.prediction, decision="auto")}
        else:
            path = list((listing.decision or {}).get("category_path", []))
            action, actor = "review", listing.actor or REVIEWER
            note = {"listing": self._before(listing)}
        try:  # the store records the add in the audit trail, exactly once (indexer.store.audit)
            store = self._add(listing, path, action, actor, note)
        except AlreadyIndexed:
            if listing.status == ListingStatus.DECIDING:
                self.queue.reopen(listing.id)
            else:  # an auto listing whose id another add took: it is not filed, say so once
                self.queue.finish(listing.id, {"id": listing.id, "where": "conflict"})
            raise
        result = {
            "id": listing.id,
            "status": ListingStatus.FILED if listing.status == ListingStatus.FILING else ListingStatus.DONE,
            "decision": "auto" if listing.status == ListingStatus.FILING else "category",
            "category": path[0] if path else None,
            "category_path": path,
            "where": "index",
            "index_version": store.version,
            "decided_at": listing.decided_at,
        }
        finished = self.queue.finish(listing.id, result)
        self.queue.drop_photo(listing)
        self.state.adopt(store)
        if self.recalibrator is not None:
            self.recalibrator.changed()
        return finished

    @staticmethod
    def _before(listing: Listing) -> dict:
        return {
            "status": "waiting",
            "suggested": list(listing.category_path),
            "reasons": [r.get("code") for r in listing.reasons],
        }

    def _add(self, listing: Listing, path: list[str], action: str, actor: str, note: dict) -> IndexStore:
        """The listing as a labelled product of the index, once: an add that finds its id already
        indexed with the same name and category was applied before (a process died after it)."""
        from indexer.pipeline import add_products

        from .api import names_upload

        live = self.state.current()
        product = Product(
            id=listing.id,
            name=listing.title,
            description=listing.description,
            brand=listing.brand,
            price=listing.price,
            category_path=tuple(path),
            image=None,
        )
        photo = self.queue.photo_file(listing)
        staged = final = None
        if photo is not None:
            staged, final = stage_upload(self.index_dir, listing.id, photo.read_bytes())
            product = dataclasses.replace(product, image=final.name, image_path=final)

        def move_photo_into_place(winner: IndexStore) -> None:
            if staged is not None and final is not None:
                os.replace(staged, final)
            clean_orphans(self.index_dir, lambda name: name == product.image or names_upload(winner, name))

        try:
            store, _ = add_products(
                self.index_dir,
                [dataclasses.replace(product, image_path=staged)] if staged else [product],
                live.encoder,
                before_publish=move_photo_into_place,
                stored=[product],
                action=action,
                actor=actor,
                notes={listing.id: note},
            )
        except DuplicateProduct:
            store = open_store(self.index_dir)
            row = store.row_of(listing.id)
            existing = store.products[row] if row is not None else None
            if existing is None or list(existing.category_path) != path or existing.name != listing.title:
                raise AlreadyIndexed(f"product id {listing.id} is already in the index with other content") from None
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
        return store

    def _audit_once(self, product_id: str, action: str, actor: str, before: dict | None, after: dict | None) -> None:
        """Record `action` unless the log already holds it for this id (a listing is rejected once):
        a process killed between the rejection and its row's update re-runs it. Adds are
        recorded by the store itself."""
        if any(entry["action"] == action for entry in self.audit.history(product_id)):
            return
        self.audit.record(product_id, action, actor, before, after)

    # ---- recovery -------------------------------------------------------------------------
    def recover(self) -> int:
        """Finish the rows a killed process left recorded but not applied, once per process
        (needs the index loaded: retried on the next call otherwise); how many were finished."""
        if self._recovered_pid == os.getpid():
            return 0
        try:
            self.state.current()
        except NotReady:
            return 0
        pending = self.queue.pending()  # a queue a read-only disk cannot open: retried on the next call
        self._recovered_pid = os.getpid()
        finished = 0
        for listing in pending:
            try:
                self._apply_locked(listing.id)
                finished += 1
            except Exception:  # one bad row must not stop the others nor the worker
                log.exception("could not finish listing %s (%s)", listing.id, listing.status)
        if finished:
            log.info("finished %d listing(s) a previous process left pending", finished)
        self.queue.clean_photos()
        return finished
