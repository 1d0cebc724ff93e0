"""Embedding cache keyed by (model id, content hash): unchanged products are never re-encoded.

SQLite gives atomic, concurrent-safe writes with no extra dependency. It is only a cache:
a file SQLite cannot read is moved aside (`cache.sqlite.corrupt-<time>`) with a warning
and a fresh one takes its place, so a damaged cache costs re-encoding, never an add. A cache
that cannot be written (a full or read-only disk) is skipped with a warning: the write that
matters (the index's) then fails on its own and says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def content_key(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def move_aside(path: Path, reason: object) -> Path:
    """Rename an unreadable cache (and its journal files) out of the way; return the new name."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-journal", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    log.warning("embedding cache %s is unreadable (%s): moved aside to %s, starting a new one", path, reason, target)
    return target


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (not a database, malformed), as opposed to a busy one ("database is locked")."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or not isinstance(exc, sqlite3.OperationalError)


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.moved_aside: list[Path] = []
        self._db: sqlite3.Connection | None = None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            try:
                self._recover(exc)
            except (sqlite3.OperationalError, OSError) as unwritable:
                self._give_up(unwritable)

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, key TEXT, vector BLOB, PRIMARY KEY (model, key))"
        )
        self._db.execute("SELECT count(*) FROM (SELECT 1 FROM vectors LIMIT 1)").fetchone()
        self._db.commit()

    def _give_up(self, exc: Exception) -> None:
        """Work without a cache: nothing is read from or written to it."""
        log.warning("embedding cache %s unusable (%s): encoding without it", self.path, exc)
        if self._db is not None:
            self._db.close()
        self._db = None

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """Move the damaged file aside and open a fresh cache in its place (re-raise anything else)."""
        if not is_damage(exc):
            raise exc
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        self.moved_aside.append(move_aside(self.path, exc))
        self._open()

    def get_many(self, model: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached vectors of `keys` (O(len(keys)) B-tree look-ups); {} if the cache turns out damaged."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        if self._db is None:
            return found
        try:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in self._db.execute(
                    f"SELECT key, vector FROM vectors WHERE model = ? AND key IN ({marks})", [model, *chunk]
                ):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        except sqlite3.DatabaseError as exc:
            self._recover(exc)
            return {}
        return found

    def put_many(self, model: str, items: Mapping[str, np.ndarray]) -> None:
        """Store vectors; a cache that cannot be written (disk full, read-only) is skipped with a warning."""
        if self._db is None:
            return
        rows = [(model, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in items.items()]
        try:
            try:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
            except sqlite3.DatabaseError as exc:
                self._recover(exc)
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
        except (sqlite3.OperationalError, OSError) as exc:
            log.warning("embedding cache %s not written (%s): %d vectors not cached", self.path, exc, len(rows))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def open_cache(path: str | Path) -> EmbeddingCache:
    """The embedding cache at `path`, a fresh one if the file there is unreadable."""
    return EmbeddingCache(path)
