"""The writers' lock, shared by every backend: one writer at a time per index, across processes."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Exclusive lock serialising writers (builds, adds, compactions) across processes: an
    advisory flock on `path/.lock`, released when the holder exits or dies."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
