"""What a rebuild from the CSV does with the catalogue changes the engine acknowledged since.

Products deleted through the engine (CLI, API) stay deleted, relabelled ones keep the category
the human gave (a PATCH, a `relabel`), and a catalogue product deleted and then added again
through the API is the one the API added; `forget` sets them all back as the CSV has them.

The source of truth is the audit trail (indexer.store.audit), not the live version's own
tombstones and relabels:

- a compaction bakes deletes and relabels into a new base: a deleted product is then simply
  absent and a relabelled one reads like any other, indistinguishable from a CSV that has been
  edited since (a product removed, a category corrected at the source);
- a live version that fails its checksums is replaced, for the rebuild, by the newest version
  that verifies (`build.live_store`), which may predate the changes;
- the trail is append-only and outside `versions/`: no build, compaction or repair rewrites it.
  It is complete once the rebuild's snapshot is journaled (`record_pending_events`: a writer
  killed after its commit, before recording, left its events in the delta).

Per catalogue product id, the trail's events are folded in time order, the latest wins: a
`delete` removes it; an `add`, `auto-listing` or `review` (an API add of that id, possible once
it was deleted) makes it the engine's record, as the snapshot holds it; a `relabel` gives it the
relabel's category; a `rebuild` (what a `forget` rebuild records for each product it sets back,
timed at its snapshot) returns it to the CSV row. Changes committed after the snapshot are not
this module's business: the hand-over carries them (indexer.store.local.handover), and an add
of a catalogue id committed after the snapshot is left out here so that it is carried, not
refused as a clash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from indexer.catalog.products import Product
from indexer.store import IndexStore
from indexer.store.audit import event

DELETE, RELABEL, REBUILD = "delete", "relabel", "rebuild"
ADDS = ("add", "auto-listing", "review")


@dataclass
class _State:
    """A catalogue product's acknowledged state: deleted, re-added through the engine, and/or
    relabelled (the category over its record)."""

    deleted: bool = False
    readded: bool = False
    category: tuple[str, ...] | None = None


@dataclass
class Carried:
    """The catalogue a rebuild encodes (CSV order, deleted products left out) and what it carried
    (`forgotten`: set back to the CSV), with the audit events of what the rebuild itself changes."""

    products: list[Product]
    deleted: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    readded: list[str] = field(default_factory=list)
    forgotten: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"deleted": len(self.deleted), "relabelled": len(self.relabelled), "re-added": len(self.readded)}

    def fingerprint(self) -> str | None:
        """Content key of what differs from the CSV (None: nothing), for the build's derived key."""
        if self.forgotten or not (self.deleted or self.relabelled or self.readded):
            return None
        changed = set(self.relabelled) | set(self.readded)
        records = [p.to_record() for p in self.products if p.id in changed]
        payload = [sorted(self.deleted), sorted(records, key=lambda r: r["id"])]
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def fold(events: Iterable[Mapping[str, Any]], ids: set[str]) -> dict[str, _State]:
    """The acknowledged state of each product of `ids` that the events (oldest first) changed."""
    states: dict[str, _State] = {}
    for e in events:
        pid = str(e["product_id"])
        if pid not in ids:
            continue
        action = e["action"]
        if action == DELETE:
            states[pid] = _State(deleted=True)
        elif action == REBUILD:
            states.pop(pid, None)
        elif action in ADDS:
            states[pid] = _State(readded=True)
        elif action == RELABEL:
            path = (e.get("after") or {}).get("category_path")
            if path:
                state = states.setdefault(pid, _State())
                state.category = tuple(path)
    return states


def carry_changes(
    catalogue: Sequence[Product],
    live: IndexStore | None,
    events: Iterable[Mapping[str, Any]],
    forget: bool = False,
    at: str | None = None,
    actor: str = "cli",
) -> Carried:
    """The catalogue with the acknowledged changes applied (`forget`: the CSV alone, and one
    `rebuild` audit event, timed `at`, per product set back). `live` is the rebuild's snapshot:
    it holds the records of products re-added through the engine. O(N + R) for N products and R
    events."""
    states = fold(events, {p.id for p in catalogue})
    out = Carried(products=[], forgotten=forget)
    for product in catalogue:
        state = states.get(product.id)
        if state is None:
            out.products.append(product)
            continue
        if state.readded and not state.deleted and (live is None or live.row_of(product.id) is None):
            continue  # added again after the snapshot: the hand-over carries that add, newer than this build
        now = _acknowledged(product, state, live)
        if now is not None and now.to_record() == product.to_record():
            out.products.append(product)  # the changes came back to what the CSV says
            continue
        kind = out.deleted if now is None else out.readded if state.readded else out.relabelled
        kind.append(product.id)
        if forget:
            out.products.append(product)
            before = None if now is None else now.to_record()
            out.events.append(event(product.id, REBUILD, actor, before, product.to_record(), at=at))
        elif now is not None:
            out.products.append(now)
    return out


def _acknowledged(product: Product, state: _State, live: IndexStore | None) -> Product | None:
    """The product as the engine acknowledged it (None: deleted); a re-added one as `live` holds it."""
    if state.deleted:
        return None
    if state.readded and live is not None:
        row = live.row_of(product.id)
        if row is not None:
            product = live.products[row]
    if state.category is not None and state.category != tuple(product.category_path):
        product = dataclasses.replace(product, category_path=state.category)
    return product


def dropped_events(products: Sequence[Product], at: str | None = None, actor: str = "cli") -> list[dict[str, Any]]:
    """`rebuild` audit events for products added through the engine that a rebuild drops."""
    return [event(p.id, REBUILD, actor, p.to_record(), None, at=at) for p in products]
