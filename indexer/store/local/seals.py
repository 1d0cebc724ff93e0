"""Seals: the checksum chain that protects the pointers and manifests of an index folder.

The files of a segment are protected by the sizes and BLAKE2b digests its manifest records
(indexer.store.local.integrity). This module protects what names them, so that nothing on
the path from `CURRENT` to a byte of data can change unnoticed:

    CURRENT  --names + digest-->  versions/<n>/manifest.json  --sizes + digests-->  its files
                                  versions/<n>/deltas/LIST  --names + digests-->  deltas/<seq>/manifest.json ...

- A manifest is **sealed** when it is published: a `seal` entry holds the BLAKE2b-256 digest of
  the manifest's canonical JSON (`json.dumps(indent=2, sort_keys=True)`, the very bytes on disk)
  computed without the digest itself, the version name it was published as and the seal digest
  of the version it replaced (`previous`): a chain from version to version. A flipped byte, a
  truncation or an edited value (a threshold 0.876 -> 0.0) changes the digest; a copy of an
  old version under a newer name fails the name check.
- `CURRENT` is three lines: the version, the seal digest of its manifest, and a digest of those
  two lines. Any flipped byte or truncation breaks the last line; a sealed `CURRENT` pointing at a
  manifest with another seal is refused. A `CURRENT` rolled back to an older (intact) version is
  caught by the versions newer than the one it names (indexer.store.local.versions).
- `deltas/LIST` names each committed delta with its manifest's seal digest and ends with the
  digest of the lines above it.

No key is involved: a seal detects damage and edits made without recomputing it, not a forger
who recomputes it. Files written before seals (one line `CURRENT`, names-only `LIST`, manifests
without `seal`) still load while `CURRENT` is of the old form (`Pointer.legacy`); once a sealed
`CURRENT` names a version, an unsealed manifest or `LIST` under it is damage.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SEAL = "seal"
ALGORITHM = "blake2b-256"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_VERSION = r"\d{6,}"
_LEGACY_CURRENT = re.compile(rf"({_VERSION})\n?")
_SEALED_CURRENT = re.compile(rf"({_VERSION})\nmanifest {ALGORITHM} ([0-9a-f]{{64}})\n")
_CHECK = re.compile(rf"check {ALGORITHM} ([0-9a-f]{{64}})\n")


class SealBroken(ValueError):
    """A sealed file does not match its seal (damaged or edited); the message says how."""


def digest(data: bytes) -> str:
    """BLAKE2b-256 hex digest of `data`: O(len(data))."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def canonical(manifest: Mapping) -> bytes:
    """The one serialisation of a manifest (what `write_manifest` writes)."""
    return json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")


# ---- manifests ---------------------------------------------------------------------------------
def seal_manifest(manifest: Mapping, **fields: object) -> tuple[bytes, str]:
    """(bytes to write, seal digest) of `manifest` sealed with `fields` (e.g. version, previous).
    Any seal it carried is replaced. O(size of the manifest)."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    seal = {"algorithm": ALGORITHM, **fields}
    body[SEAL] = seal
    value = digest(canonical(body))
    body[SEAL] = {**seal, "digest": value}
    return canonical(body), value


def open_manifest(raw: bytes) -> tuple[dict, dict | None]:
    """Parse manifest bytes and check their seal: (manifest, its seal or None when unsealed).

    Raises SealBroken (or ValueError for what is not a JSON object) naming what is wrong. A
    sealed manifest must be byte for byte its canonical form, so even a change that parses to
    the same values (white space) is refused."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SealBroken(f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise SealBroken("not a JSON object")
    seal = manifest.get(SEAL)
    if seal is None:
        return manifest, None
    if not isinstance(seal, dict) or not isinstance(seal.get("digest"), str) or seal.get("algorithm") != ALGORITHM:
        raise SealBroken("its seal is malformed")
    body = dict(manifest)
    body[SEAL] = {k: v for k, v in seal.items() if k != "digest"}
    if digest(canonical(body)) != seal["digest"]:
        raise SealBroken("its content does not match its seal (damaged, or edited after it was published)")
    if canonical(manifest) != raw:
        raise SealBroken("its bytes differ from the sealed form (damaged, or edited after it was published)")
    return manifest, seal


# ---- CURRENT -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pointer:
    """What `CURRENT` says: the live version and the seal digest of its manifest (None: the
    one-line form written before seals, `legacy`)."""

    version: str
    manifest: str | None

    @property
    def legacy(self) -> bool:
        return self.manifest is None


def format_current(version: str, manifest_digest: str | None) -> bytes:
    """The bytes of `CURRENT`: sealed when the manifest is, else the one-line legacy form."""
    if manifest_digest is None:
        return f"{version}\n".encode("ascii")
    head = f"{version}\nmanifest {ALGORITHM} {manifest_digest}\n".encode("ascii")
    return head + f"check {ALGORITHM} {digest(head)}\n".encode("ascii")


def parse_current(raw: bytes) -> Pointer:
    """The pointer in `CURRENT`'s bytes; SealBroken when they are neither form intact."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SealBroken("CURRENT holds bytes that are not text (damaged)") from None
    legacy = _LEGACY_CURRENT.fullmatch(text)
    if legacy:
        return Pointer(legacy.group(1), None)
    head = _SEALED_CURRENT.match(text)
    check = _CHECK.fullmatch(text, head.end()) if head else None
    if head is None or check is None:
        shown = text[:80].encode("unicode_escape").decode("ascii")
        raise SealBroken(f"CURRENT is damaged or truncated (it reads {shown!r})")
    if digest(raw[: head.end()]) != check.group(1):
        raise SealBroken("CURRENT does not match its check digest (damaged or edited)")
    return Pointer(head.group(1), head.group(2))


# ---- deltas/LIST ---------------------------------------------------------------------------------
def format_list(entries: Sequence[tuple[str, str | None]]) -> bytes:
    """The bytes of a sealed `deltas/LIST`: `<name> <manifest seal digest>` per committed delta
    (`-` for a delta written before seals), then the check line."""
    body = "".join(f"{name} {seal or '-'}\n" for name, seal in entries).encode("ascii")
    return body + f"check {ALGORITHM} {digest(body)}\n".encode("ascii")


@dataclass(frozen=True)
class DeltaList:
    """The committed deltas of a version: names in order, each delta's manifest seal (None:
    not recorded), and whether the file was sealed."""

    names: tuple[str, ...]
    seals: tuple[str | None, ...]
    sealed: bool


def parse_list(raw: bytes | None) -> DeltaList:
    """`deltas/LIST` (None: no file); SealBroken when a sealed one does not match its check line
    or the lines are neither form."""
    if raw is None:
        return DeltaList((), (), False)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SealBroken("deltas/LIST holds bytes that are not text (damaged)") from None
    lines = text.splitlines(keepends=True)
    if lines and lines[-1].startswith("check "):
        check = _CHECK.fullmatch(lines[-1])
        body = "".join(lines[:-1])
        if check is None or digest(body.encode("ascii")) != check.group(1):
            raise SealBroken("deltas/LIST does not match its check digest (damaged or edited)")
        names, seals = [], []
        for line in lines[:-1]:
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or not (parts[1] == "-" or _DIGEST.fullmatch(parts[1])):
                raise SealBroken(f"deltas/LIST has a malformed line {line.strip()!r}")
            names.append(parts[0])
            seals.append(None if parts[1] == "-" else parts[1])
        return DeltaList(tuple(names), tuple(seals), True)
    names = [line.strip() for line in lines if line.strip()]
    if any(not name.isdigit() for name in names):
        raise SealBroken("deltas/LIST is damaged or truncated")
    return DeltaList(tuple(names), (None,) * len(names), False)
