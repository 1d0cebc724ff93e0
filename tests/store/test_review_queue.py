"""The review queue's storage (indexer.store.review): states, idempotent decisions, order, photos."""

from __future__ import annotations

import os
import time

import pytest

from indexer.store import DecisionConflict, Listing, ListingNotFound, ReviewQueue
from indexer.store.review import DECIDING, DONE, FILED, FILING, WAITING


def listing(lid: str, path=("Watches", "Wrist Watches"), status=WAITING, key="k") -> Listing:
    return Listing(
        id=lid, content_key=key + lid, title=f"title {lid}", category=path[0], category_path=list(path), status=status
    )


def test_waiting_listings_come_oldest_first_and_filter_by_category(tmp_path):
    queue = ReviewQueue(tmp_path)
    for lid, path in [("b", ("Watches", "Wrist Watches")), ("a", ("Baby Care",)), ("c", ("Watches", "Clocks"))]:
        queue.submit(listing(lid, path))
    queue.submit(listing("auto", status=FILING))
    assert [x.id for x in queue.waiting()] == ["b", "a", "c"]
    assert [x.id for x in queue.waiting(limit=2)] == ["b", "a"]
    assert [x.id for x in queue.waiting(category=["Watches"])] == ["b", "c"]
    assert [x.id for x in queue.waiting(category=["Watches", "Clocks"])] == ["c"]
    assert queue.waiting(category=["Watch"]) == []  # a level is matched whole, not as a text prefix
    assert queue.count(WAITING) == 3


def test_the_same_id_is_recorded_once(tmp_path):
    queue = ReviewQueue(tmp_path)
    first, created = queue.submit(listing("x"))
    again, created_again = queue.submit(listing("x", path=("Baby Care",)))
    assert created and not created_again
    assert again.category_path == ["Watches", "Wrist Watches"] and again.seq == first.seq


def test_a_decision_is_recorded_once_and_a_different_one_conflicts(tmp_path):
    queue = ReviewQueue(tmp_path)
    queue.submit(listing("x"))
    decided = queue.record_decision("x", {"category_path": ["Watches ", "Clocks"]}, "review-token")
    assert decided.status == DECIDING and decided.decision == {"category_path": ["Watches", "Clocks"]}
    same = queue.record_decision("x", {"category_path": ["Watches", "Clocks"]}, "review-token")
    assert same.status == DECIDING and same.decided_at == decided.decided_at
    with pytest.raises(DecisionConflict):
        queue.record_decision("x", {"reject": True}, "review-token")
    queue.finish("x", {"where": "index"})
    assert queue.get("x").status == DONE and queue.get("x").result == {"where": "index"}
    with pytest.raises(DecisionConflict):
        queue.record_decision("x", {"category_path": ["Baby Care"]}, "review-token")
    with pytest.raises(ListingNotFound):
        queue.record_decision("nope", {"reject": True}, "review-token")


def test_a_listing_filed_automatically_takes_no_decision(tmp_path):
    queue = ReviewQueue(tmp_path)
    queue.submit(listing("auto", status=FILING))
    assert [x.id for x in queue.pending()] == ["auto"]
    queue.finish("auto", {"where": "index"})
    assert queue.get("auto").status == FILED and queue.pending() == []
    with pytest.raises(DecisionConflict):
        queue.record_decision("auto", {"reject": True}, "review-token")


def test_pending_rows_survive_a_new_process_and_reopen_returns_to_waiting(tmp_path):
    ReviewQueue(tmp_path).submit(listing("x"))
    ReviewQueue(tmp_path).record_decision("x", {"reject": True}, "review-token")
    fresh = ReviewQueue(tmp_path)  # what a restarted worker sees
    assert [(x.id, x.status) for x in fresh.pending()] == [("x", DECIDING)]
    fresh.reopen("x")
    assert fresh.get("x").status == WAITING and fresh.get("x").decision is None


def test_photos_live_under_the_index_folder_and_orphans_are_cleaned(tmp_path):
    queue = ReviewQueue(tmp_path)
    item = listing("x")
    item.photo = queue.save_photo("x", item.content_key, b"jpeg bytes", "jpg")
    assert not os.path.isabs(item.photo) and queue.photo_file(item).read_bytes() == b"jpeg bytes"
    queue.submit(item)
    orphan = tmp_path / "listings" / "gone-123.jpg"
    orphan.write_bytes(b"x")
    old = time.time() - 7200
    for path in (orphan, queue.photo_file(item)):
        os.utime(path, (old, old))
    assert queue.clean_photos() == [orphan]  # the waiting listing's photo stays
    queue.record_decision("x", {"reject": True}, "review-token")
    queue.finish("x", {})
    assert queue.clean_photos() == [tmp_path / item.photo]
