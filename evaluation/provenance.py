"""Where a report's figures came from: code version, date, machine and its load.

Kept apart from the figures (it changes on every run) and shown at the end of the
report: a reader compares two reports by their first screen, and looks here only to
tell why their timings differ (a busy machine, another commit).
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = ROOT) -> str:
    """HEAD's hash, with "+ uncommitted changes" when the tree differs; "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (runnable processes; this machine has os.cpu_count() CPUs)."""
    return [round(v, 2) for v in os.getloadavg()]


def snapshot() -> dict:
    """Facts about the run taken at its start."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": load_average(),
        },
    }
