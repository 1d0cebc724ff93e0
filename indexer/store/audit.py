"""The audit trail: every change to the catalogue (add, listing, review, relabel, delete, reject,
and a rebuild that set products back to the CSV or dropped added ones), who made it, when, and
the product before and after, in an append-only log.

The log is `audit.sqlite` in the index folder, beside `versions/`: builds and compactions
replace versions, never this file. SQLite in WAL mode (readers never block the one writer),
`synchronous=FULL` (a recorded change survives a power cut), and triggers that refuse any
UPDATE or DELETE: rows are only ever appended.

The stores write the trail themselves, under their write lock: each change carries its events
(an id, time, action, actor, before, after) in the segment that commits it, and the events are
recorded right after the commit. A writer killed between the two leaves a committed change
without its events; the next writer (or compaction) records them from the segment
(`record_events` ignores an event id already recorded), so every committed change ends up in
the log exactly once. `python -m indexer history INDEX ID` prints a product's trail.

A rebuild from the CSV reads the trail back (`changes`): it is the record of what the engine
acknowledged, which builds and compactions never rewrite (indexer.pipeline.changes).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.sqlite"
ACTIONS = ("add", "auto-listing", "review", "relabel", "delete", "reject", "rebuild")
# what changes a product of the catalogue (a rejected listing never became one): what a rebuild reads
CATALOGUE_ACTIONS = ("add", "auto-listing", "review", "relabel", "delete", "rebuild")
ACTORS_HINT = "cli, api-token or review-token (a name for who acted, never a secret)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT UNIQUE,
    time TEXT NOT NULL,
    product_id TEXT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX IF NOT EXISTS audit_product ON audit(product_id, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def utc_now() -> str:
    """ISO 8601 UTC time with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def new_event_id() -> str:
    return uuid.uuid4().hex


def event(
    product_id: str,
    action: str,
    actor: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    event_id: str | None = None,
    at: str | None = None,
) -> dict[str, Any]:
    """One audit event as the stores keep it in their segments (JSON-safe), checked."""
    if action not in ACTIONS:
        raise ValueError(f"audit action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 64:
        raise ValueError(f"audit actor must be a short name ({ACTORS_HINT}), got {actor!r}")
    if not isinstance(product_id, str) or not product_id:
        raise ValueError("an audit event needs a product id")
    return {
        "event": event_id or new_event_id(),
        "time": at or utc_now(),
        "product_id": product_id,
        "action": action,
        "actor": actor.strip(),
        "before": dict(before) if before is not None else None,
        "after": dict(after) if after is not None else None,
    }


_CONNECTIONS: dict[tuple[int, str], tuple[sqlite3.Connection, threading.Lock, int]] = {}
_CONNECTIONS_LOCK = threading.Lock()


def _inode(file: str) -> int | None:
    try:
        return os.stat(file).st_ino
    except FileNotFoundError:
        return None


@contextmanager
def _connection(file: Path) -> Iterator[sqlite3.Connection]:
    """This process's connection to an audit file, held by one thread at a time. Kept open:
    closing the last connection to a WAL database checkpoints it (an fsync of the database
    per change). Reopened in a forked child (SQLite connections must not cross a fork) and when
    the file was removed or replaced (a stale connection would write to the old inode)."""
    path = os.path.abspath(file)
    key = (os.getpid(), path)
    with _CONNECTIONS_LOCK:
        known = _CONNECTIONS.get(key)
        if known is None or known[2] != _inode(path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            known = _CONNECTIONS[key] = (db, threading.Lock(), _inode(path) or -1)
        db, lock, _ = known
    with lock:
        yield db


class AuditLog:
    """The audit trail of one index folder (see the module docstring).

    Connections are kept per process and file (safe across the service's forked workers and
    threads). `record` and `record_events`: O(events · log R) for R rows logged, one fsync;
    `history`: O(log R + the product's events) through the product index."""

    def __init__(self, index_dir: str | Path) -> None:
        self.file = Path(index_dir) / AUDIT_FILE

    def record(
        self,
        product_id: str,
        action: str,
        actor: str,
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
    ) -> None:
        """Append one event now (for changes made outside a store: a listing rejected)."""
        self.record_events([event(product_id, action, actor, before, after)])

    def record_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Append events (made by `event`) in one transaction; an event id already in the log is
        skipped, so recording a segment's events twice adds them once. Returns how many were new."""
        rows = [
            (
                e["event"],
                e["time"],
                e["product_id"],
                e["action"],
                e["actor"],
                None if e.get("before") is None else json.dumps(e["before"], ensure_ascii=False, sort_keys=True),
                None if e.get("after") is None else json.dumps(e["after"], ensure_ascii=False, sort_keys=True),
            )
            for e in events
        ]
        if not rows:
            return 0
        with _connection(self.file) as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO audit (event, time, product_id, action, actor, before, after)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                added = db.total_changes - before
                db.execute("COMMIT")
                return added
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def has_event(self, event_id: str) -> bool:
        """Whether an event id is recorded: O(log R). A file not yet created holds none."""
        if not self.file.exists():
            return False
        with _connection(self.file) as db:
            return db.execute("SELECT 1 FROM audit WHERE event = ?", (event_id,)).fetchone() is not None

    def history(self, product_id: str) -> list[dict[str, Any]]:
        """The events of one product, oldest first: each {time, action, actor, before, after}."""
        if not self.file.exists():
            return []
        with _connection(self.file) as db:
            found = db.execute(
                "SELECT time, action, actor, before, after FROM audit WHERE product_id = ? ORDER BY seq",
                (product_id,),
            ).fetchall()
        return [
            {
                "time": at,
                "action": action,
                "actor": actor,
                "before": None if before is None else json.loads(before),
                "after": None if after is None else json.loads(after),
            }
            for at, action, actor, before, after in found
        ]

    def changes(self, actions: Sequence[str] = CATALOGUE_ACTIONS) -> list[dict[str, Any]]:
        """Every event of `actions`, oldest first by time (then by order recorded: a killed writer's
        events, recorded later by the next writer, keep their place), each {product_id, action,
        after}: what a rebuild folds into the catalogue's acknowledged state. O(R log R) time and
        O(R) memory for R rows logged (small beside the index: one row per change)."""
        if not self.file.exists():
            return []
        marks = ", ".join("?" for _ in actions)
        with _connection(self.file) as db:
            rows = db.execute(
                f"SELECT product_id, action, after FROM audit WHERE action IN ({marks}) ORDER BY time, seq",
                tuple(actions),
            ).fetchall()
        return [
            {"product_id": product_id, "action": action, "after": None if after is None else json.loads(after)}
            for product_id, action, after in rows
        ]

    def count_since(self, since: str, actions: Sequence[str] = ACTIONS) -> int:
        """Events of `actions` recorded after the time `since` (ISO UTC): what the service's background
        recalibration counts. O(R) for R rows logged (a scan: the log is small beside the index)."""
        if not self.file.exists():
            return 0
        marks = ", ".join("?" for _ in actions)
        with _connection(self.file) as db:
            row = db.execute(
                f"SELECT count(*) FROM audit WHERE time > ? AND action IN ({marks})", (since, *actions)
            ).fetchone()
        return int(row[0])


def record_unrecorded(index_dir: str | Path, events: Sequence[Mapping[str, Any]]) -> int:
    """Record a committed segment's events unless they already are: one lookup of the last
    event (a segment's events go in one transaction), then the inserts only when it is missing.
    What a store's writer calls, under its lock, on the segment before its own."""
    if not events:
        return 0
    log = AuditLog(index_dir)
    if log.has_event(str(events[-1]["event"])):
        return 0
    return log.record_events(events)
