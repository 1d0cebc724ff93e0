"""Integrity of an index version on disk: per-file size and checksum, recorded at publish.

What is checked when (README, "Integrity"):
- publish: every file's size and BLAKE2b digest go into the manifest (`files`), after the
  files are written and synced;
- every load: each listed file exists with its recorded size, and the loaded arrays agree
  with the manifest's counts and dimensions (`IndexStore.load`); O(files), no data read twice;
- checksums (O(bytes), one streaming pass; `bench/bench_verify.py` prints the time and
  rate, README "Integrity" quotes it): `python -m indexer verify DIR`, writers before they build on the live
  version (`indexer.store.local.index.append`, `indexer.pipeline.build.build_index`), and the service on each
  (re)load unless INDEX_VERIFY_CHECKSUMS=0.

These functions know nothing of the store's layout beyond "a folder of files plus a
manifest", so a segmented store can verify each segment with them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from indexer.store.errors import IndexDamaged

CHECKSUM = "blake2b"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


def file_digest(path: str | Path) -> str:
    """Hex BLAKE2b-256 digest of a file, read in 1 MB chunks: O(bytes) time, O(1) memory.

    The pages read stay in the page cache: a service verifying its index at start then serves
    from memory. (Dropping them, tried for the PSS figures, made the first predictions at 1M
    SYNTHETIC products read from disk: p50 135 ms instead of 23 ms, bench/bench_scale.py.)"""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(folder: str | Path) -> dict[str, dict]:
    """{file name: {"size", "blake2b"}} for every file of a version but its manifest: O(bytes),
    hashed on HASH_THREADS threads."""
    folder = Path(folder)
    items = [item for item in sorted(folder.iterdir()) if item.is_file() and item.name != MANIFEST]
    digests = _digests(items, sum(item.stat().st_size for item in items))
    return {
        item.name: {"size": item.stat().st_size, CHECKSUM: digest} for item, digest in zip(items, digests, strict=True)
    }


# Below this many bytes files are hashed on the calling thread: a delta of one product is a few
# KB, and starting threads would cost more than hashing it.
THREADED_HASH_BYTES = 1 << 22


def _digests(paths: list[Path], total_bytes: int) -> list[str]:
    """The digests of `paths`. Large sets are hashed on HASH_THREADS threads (hashlib releases
    the GIL on large buffers): a 1M product index is 3.6 GB to hash before the service answers
    (bench/bench_scale.py prints start to ready)."""
    if len(paths) < 2 or total_bytes < THREADED_HASH_BYTES:
        return [file_digest(path) for path in paths]
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        return list(pool.map(file_digest, paths))


_VERIFIED: dict[str, tuple] = {}


def _identity(stat: os.stat_result) -> tuple:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def verify_files(
    folder: str | Path, manifest: Mapping, checksums: bool = False, label: str = "", remember: bool = False
) -> int:
    """Raise IndexDamaged naming the first file that is missing, resized or (with `checksums`)
    altered; return the bytes checked. Sizes only: O(files); with checksums: O(bytes).

    With `remember`, a file whose checksum matched once in this process is not hashed again
    while its inode, size, mtime and ctime are unchanged (any write changes ctime): the store
    uses it so a reload or an add re-hashes only new segments, not the base.

    A manifest without a `files` record (written before checksums existed) is refused:
    nothing could be verified, so nothing should be built on it.
    """
    folder = Path(folder)
    where = label or str(folder)
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not files:
        raise IndexDamaged(
            f"{where}: manifest.json has no file sizes and checksums (written by an older version); "
            "rebuild the index with `python -m indexer build`",
            file=folder / MANIFEST,
        )
    to_hash = []
    for name, record in sorted(files.items()):
        path = folder / name
        try:
            stat = path.stat()
            size = stat.st_size
        except OSError:
            raise IndexDamaged(f"{where}: {name} is missing", file=path) from None
        if size != record.get("size"):
            raise IndexDamaged(f"{where}: {name} is {size} bytes, the manifest says {record.get('size')}", file=path)
        if checksums:
            known = (_identity(stat), record.get(CHECKSUM))
            if not (remember and _VERIFIED.get(str(path)) == known):
                to_hash.append((name, path, known))
    digests = _digests([path for _, path, _ in to_hash], sum(known[0][1] for _, _, known in to_hash))
    for (name, path, known), digest in zip(to_hash, digests, strict=True):
        if digest != known[1]:
            raise IndexDamaged(f"{where}: {name} does not match its checksum (altered bytes)", file=path)
        if remember:
            _VERIFIED[str(path)] = known
    return sum(known[0][1] for _, _, known in to_hash)
