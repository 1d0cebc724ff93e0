"""The catalogue's audit trail: every change (add, auto-listing, review, relabel, delete, reject)
with its time, actor, before and after, in an append-only SQLite log in the index folder (WAL).

Minimal version written against the interface agreed for issue 19 (branch `life-store` owns
it): `AuditLog(index_dir).record(...)` and `.history(product_id)`. Entries are only inserted,
never updated or deleted. O(log entries) per record and per product's history (indexed by id).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

AUDIT_FILE = "audit.sqlite"
ACTIONS = ("add", "auto-listing", "review", "relabel", "delete", "reject")


class AuditLog:
    """Append-only log of catalogue changes in `index_dir/audit.sqlite` (a connection per call:
    safe across threads and forked workers)."""

    def __init__(self, index_dir: str | Path) -> None:
        self.path = Path(index_dir) / AUDIT_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, "
                "product_id TEXT NOT NULL, action TEXT NOT NULL, actor TEXT NOT NULL, before TEXT, after TEXT)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS audit_product ON audit (product_id, seq)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def record(
        self, product_id: str, action: str, actor: str, before: dict | None = None, after: dict | None = None
    ) -> None:
        """Append one entry (committed and synced when this returns)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        db = self._connect()
        try:
            db.execute(
                "INSERT INTO audit (time, product_id, action, actor, before, after) VALUES (?, ?, ?, ?, ?, ?)",
                (stamp, product_id, action, actor, _dump(before), _dump(after)),
            )
        finally:
            db.close()

    def history(self, product_id: str) -> list[dict[str, Any]]:
        """Entries of one product, oldest first: {time, action, actor, before, after}."""
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT time, action, actor, before, after FROM audit WHERE product_id = ? ORDER BY seq",
                (product_id,),
            ).fetchall()
        finally:
            db.close()
        return [
            {"time": t, "action": a, "actor": who, "before": _load(b), "after": _load(af)} for t, a, who, b, af in rows
        ]

    def count_since(self, since: str, actions: tuple[str, ...] = ACTIONS) -> int:
        """Entries of `actions` recorded after `since` (ISO UTC, second resolution): O(entries)."""
        marks = ", ".join("?" for _ in actions)
        db = self._connect()
        try:
            row = db.execute(
                f"SELECT count(*) FROM audit WHERE time > ? AND action IN ({marks})", (since, *actions)
            ).fetchone()
        finally:
            db.close()
        return int(row[0])


def _dump(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _load(value: str | None) -> dict | None:
    return None if value is None else json.loads(value)
