"""Arrays on disk, memory-mapped for scattered reads: shared by the backends' stored vectors and
the lexical channel, so the workers of a machine share them in the page cache."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np


def map_random(path: Path) -> np.ndarray:
    """`path` (.npy) memory-mapped read-only and advised MADV_RANDOM: on a cold page cache the
    kernel then reads only the pages a search touches, instead of ~128 KiB of read-ahead around
    each scattered row (which made most of the stored vectors resident in a worker after a few
    dozen predictions at 1M products). With the index already cached (the service's checksum
    pass reads it all), pages are mapped from the cache either way. For arrays read by
    scattered rows, not for those read in long runs (postings). O(1)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return array
