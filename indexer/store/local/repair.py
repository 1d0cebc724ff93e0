"""What `python -m indexer verify` reports and `python -m indexer repair` restores.

`inspect` checks `CURRENT` (its seal, the version it names, versions published after it), the
versions (every file's checksum, the manifests' seals, the seal chain from each version to the
one it replaced) and finds the newest version that verifies. `plan_repair` turns that into what
`repair` would do: point `CURRENT` at the newest intact version and move aside the damaged
versions newer than it (`versions/.damaged-<n>-<time>`, kept for inspection), so that neither
readers nor writers trip over them again. `apply_repair` does it under the base and write
locks, after checking that the index has not changed since the plan was shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from indexer.store.errors import IndexDamaged, IndexMismatch, IndexNotFound, IndexStoreError
from indexer.store.local.handover import base_lock
from indexer.store.local.index import verify_version
from indexer.store.local.seals import parse_current
from indexer.store.local.versions import (
    IndexRolledBack,
    list_versions,
    live_pointer,
    manifest_seal,
    quarantine,
    read_current_bytes,
    write_current,
)
from indexer.store.locks import write_lock


@dataclass
class VersionCheck:
    """One version verified: `problem` is None when every check passed."""

    version: str
    problem: str | None
    sealed: bool = False
    previous: str | None = None  # the version its seal says it replaced
    products: int = 0
    deltas: int = 0
    delta_products: int = 0
    files: int = 0
    size: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class Inspection:
    """`CURRENT`, the versions checked (newest first), the seal chain, the newest intact version."""

    path: Path
    named: str | None  # the version CURRENT names (None: unreadable)
    pointer_problem: str | None
    legacy: bool
    versions: list[VersionCheck] = field(default_factory=list)
    chain_problems: list[str] = field(default_factory=list)

    @property
    def newest_intact(self) -> str | None:
        return next((v.version for v in self.versions if v.ok), None)

    @property
    def healthy(self) -> bool:
        live = next((v for v in self.versions if v.version == self.named), None)
        return self.pointer_problem is None and live is not None and live.ok and not self.chain_problems


def check_version(path: Path, version: str) -> VersionCheck:
    """Every check of one version, checksums included: O(its bytes)."""
    start = time.perf_counter()
    try:
        store = verify_version(path, version)
    except (IndexDamaged, IndexMismatch) as exc:
        return VersionCheck(version, str(exc), seconds=time.perf_counter() - start)
    seal = store.manifest.get("seal") or {}
    files = store.manifest.get("files", {})
    return VersionCheck(
        version,
        None,
        sealed=bool(seal),
        previous=(seal.get("previous") or {}).get("version"),
        products=len(store.products),
        deltas=len(store.deltas),
        delta_products=store.delta_rows(),
        files=len(files),
        size=sum(int(f.get("size", 0)) for f in files.values()),
        seconds=time.perf_counter() - start,
    )


def inspect(path: str | Path, all_versions: bool = False) -> Inspection:
    """Check `CURRENT` and the versions that matter (the live one, any newer, and older ones down
    to the newest intact one; `all_versions`: every kept version). O(bytes of those versions)."""
    path = Path(path)
    raw = read_current_bytes(path)
    named, legacy = None, False
    problem: str | None = None
    try:
        pointer = live_pointer(path)
        named, legacy = pointer.version, pointer.legacy
    except IndexRolledBack as exc:
        named, problem = exc.named, f"ROLLED BACK: {exc}"
    except IndexNotFound:
        raise
    except IndexDamaged as exc:
        problem = f"DAMAGED: {exc}"
        try:
            named = parse_current(raw).version if raw is not None else None
        except ValueError:
            named = None
    report = Inspection(path, named, problem, legacy)
    for version in reversed(list_versions(path)):
        newer = named is None or int(version) >= int(named)
        if not (all_versions or newer or report.newest_intact is None):
            continue
        report.versions.append(check_version(path, version))
    live = next((v for v in report.versions if v.version == named), None)
    if report.pointer_problem is None and live is not None and live.ok:
        try:  # the files verified just now: what is left to refuse is CURRENT against its manifest
            verify_version(path, checksums=False)
        except IndexDamaged as exc:
            report.pointer_problem = f"DAMAGED: {exc}"
    report.chain_problems = _chain_problems(path, report.versions)
    return report


def _chain_problems(path: Path, checked: list[VersionCheck]) -> list[str]:
    """Each intact sealed version's link to the version it replaced, where that one is still kept:
    the recorded seal digest must be that version's seal (else it was changed after)."""
    problems = []
    for check in checked:
        if not check.ok or not check.sealed or check.previous is None:
            continue
        seal = manifest_seal(path, check.version) or {}
        link = seal.get("previous") or {}
        before = manifest_seal(path, check.previous)
        if before is None or link.get("digest") is None:
            continue  # pruned, unsealed or damaged (reported with that version)
        if before.get("digest") != link.get("digest"):
            problems.append(
                f"version {check.version} was published on version {check.previous} with seal "
                f"{link['digest'][:12]}, but that version's seal is now {str(before.get('digest'))[:12]} "
                "(changed after it was replaced)"
            )
    return problems


@dataclass
class RepairPlan:
    """What `repair` would do: point CURRENT at `target`, move the `quarantine` versions aside."""

    current: bytes | None  # CURRENT's bytes when planned: apply refuses if they changed
    named: str | None
    target: str | None
    quarantine: list[str]
    reasons: list[str]
    lost: list[str]  # what the index would stop serving, said before anything is done

    @property
    def needed(self) -> bool:
        return self.target is not None and (self.target != self.named or bool(self.quarantine) or bool(self.reasons))


def plan_repair(path: str | Path) -> RepairPlan:
    """The repair for the index at `path` (nothing is changed)."""
    path = Path(path)
    report = inspect(path)
    target = report.newest_intact
    reasons = [report.pointer_problem] if report.pointer_problem else []
    newer = [v for v in report.versions if target is not None and int(v.version) > int(target)]
    quarantined = [v.version for v in newer if not v.ok]
    lost = []
    for check in report.versions:
        if check.version in quarantined and check.version == report.named:
            lost.append(f"version {check.version} (live, damaged: {check.problem})")
    if target is not None and report.named is not None and int(report.named) > int(target) and not lost:
        lost.append(f"version {report.named}, which CURRENT names")
    return RepairPlan(read_current_bytes(path), report.named, target, quarantined, reasons, lost)


def describe(plan: RepairPlan) -> list[str]:
    """The plan in words, one action a line."""
    if plan.target is None:
        return ["no version verifies: nothing to point CURRENT at; rebuild with `python -m indexer build`"]
    if not plan.needed:
        return [f"nothing to repair: CURRENT names version {plan.named}, which verifies"]
    lines = [f"CURRENT: {reason}" for reason in plan.reasons]
    lines += [f"move damaged version {v} aside to versions/.damaged-{v}-<time>" for v in plan.quarantine]
    lines.append(f"point CURRENT at version {plan.target}, the newest version that verifies")
    lines += [f"stops serving {item}" for item in plan.lost]
    return lines


def apply_repair(path: str | Path, plan: RepairPlan) -> str:
    """Carry out `plan` under the base and write locks; the version CURRENT names after it.
    Refuses (IndexStoreError) when the index changed since the plan was made."""
    path = Path(path)
    if plan.target is None:
        raise IndexStoreError("no version verifies: nothing to repair to; rebuild the index")
    with base_lock(path), write_lock(path):
        again = plan_repair(path)
        if (again.current, again.target, again.quarantine) != (plan.current, plan.target, plan.quarantine):
            raise IndexStoreError("the index changed since the repair was planned; run `repair` again")
        for version in plan.quarantine:
            quarantine(path, version)
        write_current(path, plan.target)
    return plan.target
