"""Listings and the review queue: SQLite `review.sqlite` in the index folder (WAL), beside versions/.

Every listing posted to the service gets one row, which is also the journal that makes filing it
crash-safe. A row moves through these states, each change one committed transaction:

    auto decision:    filing -> filed            (being added to the index -> added)
    review decision:  waiting -> deciding -> done (queued -> decision recorded -> applied)

A decision is recorded (`deciding`) before it is applied, and the add it implies is idempotent
by product id (an add that finds the id already indexed was already applied), so a process
killed at any point leaves a row that `pending()` returns and the next process finishes:
nothing acknowledged is lost, nothing is applied twice. Appliers serialise on `lock()`, an
flock released when its holder dies.

A listing's photo waits under `listings/` in the index folder (its path is stored relative to
the folder). Cost: O(log rows) per read or write by id; `waiting()` reads its page in queue
order through an index, O(limit + log rows).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUE_FILE = "review.sqlite"
PHOTOS = "listings"  # photos of listings not (yet) in the index
LOCK_FILE = ".review.lock"
FILING, FILED = "filing", "filed"
WAITING, DECIDING, DONE = "waiting", "deciding", "done"
PENDING = (FILING, DECIDING)  # recorded but not yet applied: finished by `recover`
STATUSES = (FILING, FILED, WAITING, DECIDING, DONE)
SEPARATOR = " >> "


class ListingStatus:
    """A listing's states (see the module docstring), as the package exports them."""

    FILING, FILED = FILING, FILED
    WAITING, DECIDING, DONE = WAITING, DECIDING, DONE
    PENDING = PENDING


_COLUMNS = (
    "id, content_key, title, description, brand, price, photo, category, path, top, reasons, neighbours, "
    "prediction, created, status, decision, actor, decided_at, result, seq"
)


class ListingNotFound(KeyError):
    """No listing with that id."""


class DecisionConflict(RuntimeError):
    """A listing already has another decision (or never waited for one)."""

    def __init__(self, message: str, listing: Listing) -> None:
        super().__init__(message)
        self.listing = listing


@dataclass
class Listing:
    """One listing as the queue keeps it. `photo` is relative to the index folder;
    `decision` is {"category_path": [...]} or {"reject": True}; `result` the answer given."""

    id: str
    content_key: str
    title: str
    description: str = ""
    brand: str | None = None
    price: float | None = None
    photo: str | None = None
    category: str | None = None  # predicted top level
    category_path: list[str] = field(default_factory=list)  # predicted path
    top: list[dict] = field(default_factory=list)  # [{category, path, share}], best first
    reasons: list[dict] = field(default_factory=list)
    neighbours: list[dict] = field(default_factory=list)
    prediction: dict = field(default_factory=dict)  # confidence, threshold, model id, index version
    created: str = ""
    status: str = WAITING
    decision: dict | None = None
    actor: str | None = None
    decided_at: str | None = None
    result: dict | None = None
    seq: int = 0

    def public(self) -> dict[str, Any]:
        """The listing as the review API shows it (no server paths)."""
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "brand": self.brand,
            "price": self.price,
            "has_photo": self.photo is not None,
            "category": self.category,
            "category_path": list(self.category_path),
            "top": self.top,
            "reasons": self.reasons,
            "neighbours": self.neighbours,
            "confidence": self.prediction.get("confidence"),
            "created": self.created,
            "status": self.status,
            "decision": self.decision,
        }


def normalise_decision(decision: dict) -> dict:
    """{"category_path": [..]} with stripped levels, or {"reject": True}: what two decisions are compared on."""
    if decision.get("reject"):
        return {"reject": True}
    return {"category_path": [str(p).strip() for p in decision["category_path"] if str(p).strip()]}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ReviewQueue:
    """The listings of one index folder (a connection per call: safe across threads and forked workers)."""

    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(index_dir)
        self.path = self.index_dir / QUEUE_FILE
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS listings (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
                "content_key TEXT NOT NULL, title TEXT NOT NULL, description TEXT, brand TEXT, price REAL, photo TEXT, "
                "category TEXT, path TEXT, top TEXT, reasons TEXT, neighbours TEXT, prediction TEXT, "
                "created TEXT NOT NULL, status TEXT NOT NULL, decision TEXT, actor TEXT, decided_at TEXT, result TEXT)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS listings_status ON listings (status, seq)")
            db.execute("CREATE INDEX IF NOT EXISTS listings_photo ON listings (photo)")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")  # a row acknowledged is on disk
            yield db
        finally:
            db.close()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes and threads (an flock per open): held while applying decisions."""
        with open(self.index_dir / LOCK_FILE, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- photos ------------------------------------------------------------------------
    def save_photo(self, listing_id: str, content_key: str, data: bytes, extension: str) -> str:
        """Write a listing's photo (fsynced, atomically named) under listings/; its relative path.
        The name carries the content key, so two different listings racing for one id never
        share a file."""
        folder = self.index_dir / PHOTOS
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{listing_id}-{content_key[:12]}.{extension}"
        fd, tmp = tempfile.mkstemp(prefix=".incoming-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return f"{PHOTOS}/{name}"

    def photo_file(self, listing: Listing) -> Path | None:
        if not listing.photo:
            return None
        path = self.index_dir / listing.photo
        return path if path.is_file() else None

    def drop_photo(self, listing: Listing) -> None:
        if listing.photo:
            (self.index_dir / listing.photo).unlink(missing_ok=True)

    def clean_photos(self, older_than: float = 3600.0) -> list[Path]:
        """Remove photos no waiting or pending listing names (their listing was filed, decided
        or never recorded) once older than `older_than` seconds: a younger one may belong to
        a listing being recorded now. O(files in listings/) lookups by id."""
        folder = self.index_dir / PHOTOS
        if not folder.is_dir():
            return []
        removed = []
        cutoff = time.time() - older_than
        with self._db() as db:
            for item in folder.iterdir():
                if not item.is_file() or item.stat().st_mtime > cutoff:
                    continue
                row = db.execute("SELECT status FROM listings WHERE photo = ?", (f"{PHOTOS}/{item.name}",)).fetchone()
                if row is None or row[0] in (FILED, DONE):
                    item.unlink(missing_ok=True)
                    removed.append(item)
        return removed

    # ---- rows --------------------------------------------------------------------------
    def submit(self, listing: Listing) -> tuple[Listing, bool]:
        """Record a new listing (status `filing` or `waiting`); (stored row, True) when it is
        new, (the row already holding that id, False) otherwise."""
        listing.created = listing.created or now()
        with self._db() as db:
            try:
                cursor = db.execute(
                    f"INSERT INTO listings ({_COLUMNS.replace(', seq', '')}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        listing.id,
                        listing.content_key,
                        listing.title,
                        listing.description,
                        listing.brand,
                        listing.price,
                        listing.photo,
                        listing.category,
                        SEPARATOR.join(listing.category_path),
                        json.dumps(listing.top),
                        json.dumps(listing.reasons),
                        json.dumps(listing.neighbours),
                        json.dumps(listing.prediction),
                        listing.created,
                        listing.status,
                        _dump(listing.decision),
                        listing.actor,
                        listing.decided_at,
                        _dump(listing.result),
                    ),
                )
            except sqlite3.IntegrityError:
                existing = self._get(db, listing.id)
                assert existing is not None  # ids are never deleted
                return existing, False
            listing.seq = int(cursor.lastrowid or 0)
        return listing, True

    def get(self, listing_id: str) -> Listing | None:
        with self._db() as db:
            return self._get(db, listing_id)

    def _get(self, db: sqlite3.Connection, listing_id: str) -> Listing | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM listings WHERE id = ?", (listing_id,)).fetchone()
        return _listing(row) if row else None

    def waiting(self, limit: int = 20, category: Sequence[str] | None = None) -> list[Listing]:
        """Listings waiting for a reviewer, oldest first; `category` keeps those whose predicted
        path starts with it (a top level or "A >> B")."""
        sql = f"SELECT {_COLUMNS} FROM listings WHERE status = ?"
        args: list[Any] = [WAITING]
        if category:
            prefix = SEPARATOR.join(category)
            sql += " AND (path = ? OR substr(path, 1, ?) = ?)"
            args += [prefix, len(prefix) + len(SEPARATOR), prefix + SEPARATOR]
        with self._db() as db:
            rows = db.execute(sql + " ORDER BY seq LIMIT ?", (*args, int(limit))).fetchall()
        return [_listing(r) for r in rows]

    def count(self, status: str = WAITING) -> int:
        with self._db() as db:
            return int(db.execute("SELECT count(*) FROM listings WHERE status = ?", (status,)).fetchone()[0])

    def pending(self) -> list[Listing]:
        """Rows recorded but not applied (a process died while applying them), oldest first."""
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM listings WHERE status IN (?, ?) ORDER BY seq", PENDING
            ).fetchall()
        return [_listing(r) for r in rows]

    def record_decision(self, listing_id: str, decision: dict, actor: str) -> Listing:
        """Record a reviewer's decision (waiting -> deciding) in one transaction; the row.

        The same decision again returns the row as it is (deciding or done: idempotent); another
        decision, or a listing that never waited (filed automatically), raises DecisionConflict;
        an unknown id ListingNotFound."""
        decision = normalise_decision(decision)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                listing = self._get(db, listing_id)
                if listing is None:
                    raise ListingNotFound(listing_id)
                if listing.status in (FILING, FILED):
                    raise DecisionConflict(
                        f"listing {listing_id} was filed automatically, it never waited for review", listing
                    )
                if listing.status == WAITING:
                    stamp = now()
                    db.execute(
                        "UPDATE listings SET status = ?, decision = ?, actor = ?, decided_at = ? WHERE id = ?",
                        (DECIDING, _dump(decision), actor, stamp, listing_id),
                    )
                    listing.status, listing.decision, listing.actor, listing.decided_at = (
                        DECIDING,
                        decision,
                        actor,
                        stamp,
                    )
                elif listing.decision != decision:
                    raise DecisionConflict(
                        f"listing {listing_id} already has another decision: {describe(listing.decision)}", listing
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return listing

    def reopen(self, listing_id: str) -> None:
        """A recorded decision that cannot be applied (deciding -> waiting): the listing waits again."""
        with self._db() as db:
            db.execute(
                "UPDATE listings SET status = ?, decision = NULL, actor = NULL, decided_at = NULL "
                "WHERE id = ? AND status = ?",
                (WAITING, listing_id, DECIDING),
            )

    def finish(self, listing_id: str, result: dict) -> Listing:
        """Mark an applied row (filing -> filed, deciding -> done) with the answer it gave."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                listing = self._get(db, listing_id)
                if listing is None:
                    raise ListingNotFound(listing_id)
                final = {FILING: FILED, DECIDING: DONE}.get(listing.status, listing.status)
                db.execute(
                    "UPDATE listings SET status = ?, result = ? WHERE id = ?", (final, _dump(result), listing_id)
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        listing.status, listing.result = final, result
        return listing


def describe(decision: dict | None) -> str:
    if not decision:
        return "none"
    if decision.get("reject"):
        return "reject"
    return "category " + SEPARATOR.join(decision.get("category_path", []))


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _listing(row: Sequence[Any]) -> Listing:
    (lid, key, title, desc, brand, price, photo, category, path, top, reasons, neighbours) = row[:12]
    prediction, created, status, decision, actor, decided_at, result, seq = row[12:]
    return Listing(
        id=lid,
        content_key=key,
        title=title,
        description=desc or "",
        brand=brand,
        price=price,
        photo=photo,
        category=category,
        category_path=path.split(SEPARATOR) if path else [],
        top=json.loads(top or "[]"),
        reasons=json.loads(reasons or "[]"),
        neighbours=json.loads(neighbours or "[]"),
        prediction=json.loads(prediction or "{}"),
        created=created,
        status=status,
        decision=json.loads(decision) if decision else None,
        actor=actor,
        decided_at=decided_at,
        result=json.loads(result) if result else None,
        seq=int(seq),
    )
