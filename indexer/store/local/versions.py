"""The versions of an index folder and `CURRENT`, the pointer to the live one.

Publishing a version (`commit_version`, caller holds the write lock) seals its manifest with its
name and the seal of the version it replaces (indexer.store.local.seals), renames the staged
folder into `versions/<n>/` and replaces `CURRENT` atomically. Reading `CURRENT`
(`read_pointer`) checks its seal; `live_pointer` also looks at the versions newer than the one it
names: a sealed one means `CURRENT` was rolled back, or a publish was killed between its rename
and its swap. Readers then serve the newest version that verifies and say so; writers holding
the lock complete an interrupted publish (the newer version follows `CURRENT`'s directly in the
chain) and otherwise refuse to write until `python -m indexer repair` has restored `CURRENT`.

While a writer holds the write lock, a version newer than `CURRENT` may be one it is about to
make live, so readers judge newer versions only when the lock is free (`writer_active`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from indexer.store.errors import IndexDamaged, IndexNotFound
from indexer.store.local.seals import (
    Pointer,
    SealBroken,
    format_current,
    format_list,
    open_manifest,
    parse_current,
    seal_manifest,
)

CURRENT = "CURRENT"
VERSIONS = "versions"
MANIFEST = "manifest.json"
KEEP_VERSIONS = 3
DAMAGED_PREFIX = ".damaged-"
STAGING_PREFIX = ".staging-"

log = logging.getLogger(__name__)


class IndexRolledBack(IndexDamaged):
    """`CURRENT` names an older version than one published after it (`newer`, newest first)."""

    def __init__(self, message: str, file: Path, named: str, newer: list[str]):
        super().__init__(message, file=file)
        self.named = named
        self.newer = newer


# ---- reading ---------------------------------------------------------------------------------------
def list_versions(path: str | Path) -> list[str]:
    """Complete version names (a folder with a manifest), oldest first."""
    versions = Path(path) / VERSIONS
    if not versions.is_dir():
        return []
    return sorted(
        (p.name for p in versions.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()), key=lambda n: int(n)
    )


def read_pointer(path: str | Path) -> Pointer:
    """What `CURRENT` says, its seal checked: O(1).

    IndexNotFound when the folder holds no index at all; IndexDamaged (file `CURRENT`) when
    versions exist but `CURRENT` is missing, unreadable, damaged, or names a version that is
    not there."""
    path = Path(path)
    file = path / CURRENT
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if list_versions(path):
            raise IndexDamaged(f"index {path}: CURRENT is missing although versions exist", file=file) from None
        raise IndexNotFound(
            f"no index at {path} (build one: python -m indexer build --data DATA_DIR --out {path})"
        ) from None
    except OSError as exc:
        raise IndexDamaged(f"index {path}: CURRENT cannot be read ({exc.strerror or exc})", file=file) from None
    try:
        pointer = parse_current(raw)
    except SealBroken as exc:
        raise IndexDamaged(f"index {path}: {exc}", file=file) from None
    if not (path / VERSIONS / pointer.version / MANIFEST).is_file():
        if not list_versions(path):
            raise IndexNotFound(f"index {path} points at version {pointer.version!r}, which is incomplete")
        raise IndexDamaged(
            f"index {path}: CURRENT names version {pointer.version}, which is missing or incomplete", file=file
        )
    return pointer


def read_current(path: str | Path) -> str:
    """The live version's name (see `read_pointer` for what is refused)."""
    return read_pointer(path).version


def read_current_bytes(path: str | Path) -> bytes | None:
    """`CURRENT`'s raw bytes (None when absent or unreadable): what a reader compares to notice
    any change, damage included."""
    try:
        return (Path(path) / CURRENT).read_bytes()
    except OSError:
        return None


def manifest_seal(path: str | Path, version: str) -> dict | None:
    """The intact seal of a version's manifest, None when it is unsealed, unreadable or broken."""
    try:
        _, seal = open_manifest((Path(path) / VERSIONS / version / MANIFEST).read_bytes())
    except (OSError, SealBroken):
        return None
    return seal


def newer_published(path: str | Path, version: str) -> list[str]:
    """Versions newer than `version` with an intact seal naming themselves, newest first
    (O(their manifests): usually none exist)."""
    out = []
    for name in reversed(list_versions(path)):
        if int(name) <= int(version):
            break
        seal = manifest_seal(path, name)
        if seal is not None and seal.get("version") == name:
            out.append(name)
    return out


def writer_active(path: str | Path) -> bool:
    """Whether a process holds the index's write lock right now (a non-blocking shared probe)."""
    try:
        fd = os.open(Path(path) / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def live_pointer(path: str | Path, writer: bool = False) -> Pointer:
    """`CURRENT`'s pointer, refused (IndexRolledBack) when a version was published after the one it
    names. A reader (`writer=False`) judges that only while no writer holds the lock; a writer
    holds it. O(1) plus the manifests of newer versions."""
    path = Path(path)
    pointer = read_pointer(path)
    newer = newer_published(path, pointer.version)
    if newer and (writer or not writer_active(path)):
        raise IndexRolledBack(
            f"index {path}: CURRENT names version {pointer.version}, but version {newer[0]} was published "
            "after it (CURRENT rolled back, or a publish killed before its swap); `python -m indexer repair` "
            "points CURRENT at the newest intact version",
            file=path / CURRENT,
            named=pointer.version,
            newer=newer,
        )
    return pointer


def interrupted_publish(path: str | Path, exc: IndexRolledBack) -> str | None:
    """The version a killed publish left renamed but not yet live: the newest newer version whose
    seal names `CURRENT`'s version and manifest seal as its predecessor and nothing newer in
    between. None when the newer versions are not that (a roll-back of more than one step)."""
    if len(exc.newer) != 1:
        return None
    pointer = read_pointer(path)
    seal = manifest_seal(path, exc.newer[0]) or {}
    previous = seal.get("previous") or {}
    if previous.get("version") == pointer.version and previous.get("digest") == pointer.manifest:
        return exc.newer[0]
    return None


def unsealed_allowed(path: str | Path, version: str) -> bool:
    """Whether an unsealed manifest of `version` may load: a staging folder, or an index written
    before seals (`CURRENT` of the one-line form) at or before the version `CURRENT` names; with
    `CURRENT` unreadable, only when no version is sealed."""
    if version.startswith("."):
        return True
    try:
        pointer = parse_current((Path(path) / CURRENT).read_bytes())
    except (OSError, SealBroken):
        return not any(manifest_seal(path, v) for v in list_versions(path))
    return pointer.legacy and int(version) <= int(pointer.version)


# ---- writing ---------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(file: Path, data: bytes) -> None:
    """Replace `file` with `data` atomically (temp file, fsync, rename, fsync of the folder)."""
    tmp = file.with_name(f".{file.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, file)
    fsync_dir(file.parent)


def write_current(path: str | Path, version: str) -> None:
    """Point `CURRENT` at `version`, sealed with its manifest's seal (the one-line form for a
    version written before seals). The caller holds the write lock."""
    seal = manifest_seal(path, version)
    write_file(Path(path) / CURRENT, format_current(version, seal["digest"] if seal else None))


def next_version(path: Path) -> str:
    """The name after every numbered folder (complete or not), so a name is never reused."""
    versions = path / VERSIONS
    existing = [int(p.name) for p in versions.iterdir() if p.name.isdigit()] if versions.is_dir() else []
    return f"{max(existing, default=0) + 1:06d}"


def commit_version(path: Path, staging: Path, previous: Pointer | None) -> str:
    """Seal a staged version, rename it into place and swap `CURRENT` to it; its name.

    The caller holds `write_lock(path)`; `previous` is the pointer it verified (the chain's
    link). A version whose publish fails before `CURRENT` names it is removed again; one killed
    between the rename and the swap is completed by the next writer (`interrupted_publish`).
    O(1) beyond the fsyncs and pruning old versions."""
    try:
        version = next_version(path)
        manifest, _ = open_manifest((staging / MANIFEST).read_bytes())
        link = {"version": previous.version, "digest": previous.manifest} if previous is not None else None
        data, _ = seal_manifest(manifest, version=version, previous=link)
        write_file(staging / MANIFEST, data)
        deltas = staging / "deltas"
        if not (deltas / "LIST").is_file():  # a sealed version always has a sealed LIST (none = damage)
            deltas.mkdir(exist_ok=True)
            write_file(deltas / "LIST", format_list([]))
        os.rename(staging, path / VERSIONS / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        fsync_dir(path / VERSIONS)
        write_current(path, version)
    except BaseException:
        if read_current_bytes(path) != format_current(version, (manifest_seal(path, version) or {}).get("digest")):
            shutil.rmtree(path / VERSIONS / version, ignore_errors=True)  # never live: not a version
        raise
    prune(path, keep=version)
    return version


def prune(path: Path, keep: str) -> None:
    """Drop old versions (readers hold theirs in memory) and staging folders of writers that
    died: the caller holds the write lock, so no live writer owns one.

    `keep` is the version just published: its files were checksummed as written, and every
    writer verified the version it built on, so it is the last version that verified and is
    never deleted, whatever the version names."""
    versions = list_versions(path)
    for old in versions[:-KEEP_VERSIONS]:
        if old != keep:
            shutil.rmtree(path / VERSIONS / old, ignore_errors=True)
    remove_staging(path)


def remove_staging(path: Path) -> list[Path]:
    """Staging folders and temp files of writers that died (the caller holds the write lock, or
    knows no writer runs). A folder whose writer process is alive is kept: a background
    compaction writes its base unlocked. Returns what was removed."""
    removed: list[Path] = []
    versions = path / VERSIONS
    if versions.is_dir():
        for staging in versions.glob(f"{STAGING_PREFIX}*"):
            if not _writer_alive(staging.name):
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
    tmp = path / f".{CURRENT}.tmp"
    if tmp.exists():
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the process named in a staging folder's name (`.staging-<pid>-...`) still runs."""
    parts = name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False  # a folder from before pids were recorded: its writer is long gone
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def quarantine(path: Path, version: str) -> Path:
    """Move a damaged version out of the versions list (kept for inspection): its new folder."""
    target = path / VERSIONS / f"{DAMAGED_PREFIX}{version}-{time.strftime('%Y%m%dT%H%M%S')}"
    os.rename(path / VERSIONS / version, target)
    fsync_dir(path / VERSIONS)
    return target


@contextlib.contextmanager
def _try_flock(file: Path) -> Iterator[bool]:
    """A non-blocking exclusive flock on `file`: yields whether it was taken (False also when the
    folder is read-only or the lock file cannot be made)."""
    try:
        fh = open(file, "a")  # noqa: SIM115 - closed below
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def clean_leftovers(path: str | Path) -> list[Path]:
    """At a start: remove what dead writers left (staging folders, temp pointers, deltas never
    committed to their LIST) when no writer holds the lock; a read-only or busy folder is left
    alone. Returns what was removed."""
    from indexer.store.local.segments import prune_uncommitted, read_delta_list

    path = Path(path)
    if not (path / VERSIONS).is_dir():
        return []
    removed: list[Path] = []
    with _try_flock(path / ".lock") as mine:
        if not mine:
            return []
        try:
            removed += remove_staging(path)
            for version in list_versions(path):
                vdir = path / VERSIONS / version
                try:
                    committed = read_delta_list(vdir).names
                except IndexDamaged:
                    continue  # never prune what a damaged LIST cannot vouch for
                removed += prune_uncommitted(vdir, committed)
        except OSError as exc:  # a read-only folder: nothing to clean, nothing lost
            log.warning("leftovers in %s not removed: %s", path, exc)
    if removed:
        log.info("removed %d leftover(s) of dead writers in %s", len(removed), path)
    return removed
