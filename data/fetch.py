"""Download, verify and unpack the published Flipkart dataset: `python -m data.fetch`.

The zip is checked (archive integrity, the catalog CSV and Images/ present, no path
escaping the destination, optional sha256) before anything becomes visible, and it is
unpacked into a temporary folder that is renamed into place only when complete, so an
interrupted or bad download never leaves a half-written data/Flipkart behind.
Where the published address is unreachable, point DATA_DIR at a local copy instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from indexer.catalog.products import CSV_NAME, IMAGES_DIR

DATASET_DIR = "Flipkart"
DATASET_URL = (
    "https://s3-eu-west-1.amazonaws.com/static.oc-static.com/prod/courses/files/"
    "Parcours_data_scientist/Projet+-+Textimage+DAS+V2/"
    "Dataset+projet+pre%CC%81traitement+textes+images.zip"
)
DEFAULT_DEST = Path(__file__).resolve().parent
DEFAULT_TIMEOUT = 30.0
MAX_UNPACKED_BYTES = 4 * 1024**3  # refuse zip bombs: the real dataset unpacks to ~0.3 GB
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """The dataset could not be fetched or verified; the message says what to do."""


def offline_hint() -> str:
    return (
        "if this machine cannot reach it, set DATA_DIR to a local copy of the dataset "
        f"(a folder holding {CSV_NAME} and {IMAGES_DIR}/)"
    )


def download(url: str, target: Path, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Stream `url` into `target`; returns the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; {offline_hint()}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download the dataset from {url} ({reason}); {offline_hint()}") from None
    except ValueError as exc:  # malformed URL
        raise FetchError(f"cannot download the dataset from {url!r}: {exc}") from None
    return digest.hexdigest()


def _dataset_root(names: list[str]) -> PurePosixPath:
    """The folder of the archive that holds the CSV (``Flipkart/`` in the published zip)."""
    csvs = [PurePosixPath(n) for n in names if PurePosixPath(n).name == CSV_NAME]
    if not csvs:
        raise FetchError(f"the archive holds no {CSV_NAME}: not the published dataset")
    return min(csvs, key=lambda p: len(p.parts)).parent


def verify_zip(zip_path: Path, sha256: str | None = None, actual_sha256: str | None = None) -> PurePosixPath:
    """Check the archive and its layout; returns the folder inside it holding the dataset."""
    if sha256:
        actual = actual_sha256 or hashlib.sha256(zip_path.read_bytes()).hexdigest()
        if actual.lower() != sha256.strip().lower():
            raise FetchError(f"sha256 mismatch: expected {sha256.strip().lower()}, got {actual}")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise FetchError(f"corrupt archive: member {bad} fails its CRC check")
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError, OSError) as exc:
        raise FetchError(f"corrupt or not a zip archive ({exc})") from None
    names = [info.filename for info in infos]
    for name in names:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name:
            raise FetchError(f"unsafe path in archive: {name!r}")
    if sum(info.file_size for info in infos) > MAX_UNPACKED_BYTES:
        raise FetchError(f"archive unpacks to more than {MAX_UNPACKED_BYTES} bytes: refused")
    root = _dataset_root(names)
    images_prefix = f"{root / IMAGES_DIR}/" if str(root) != "." else f"{IMAGES_DIR}/"
    if not any(n.startswith(images_prefix) and not n.endswith("/") for n in names):
        raise FetchError(f"the archive holds no images under {images_prefix}")
    return root


def unpack(zip_path: Path, root: PurePosixPath, dest: Path, force: bool = False) -> Path:
    """Extract into a temporary folder beside `dest/Flipkart`, then rename it into place."""
    final = dest / DATASET_DIR
    if final.exists() and not force:
        raise FetchError(f"{final} already exists (pass --force to replace it)")
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging)
        unpacked = staging / root
        if not (unpacked / CSV_NAME).is_file() or not (unpacked / IMAGES_DIR).is_dir():
            raise FetchError("the unpacked archive lacks the catalog CSV or Images/")
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=dest))
            os.replace(final, old / DATASET_DIR)
            try:
                os.replace(unpacked, final)
            except OSError:
                os.replace(old / DATASET_DIR, final)  # put the previous copy back
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(unpacked, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def fetch(
    url: str = DATASET_URL,
    dest: str | Path = DEFAULT_DEST,
    sha256: str | None = None,
    force: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download, verify and unpack the dataset; returns the dataset folder (dest/Flipkart)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / DATASET_DIR).exists() and not force:
        raise FetchError(f"{dest / DATASET_DIR} already exists (pass --force to replace it)")
    fd, name = tempfile.mkstemp(prefix=".download-", suffix=".zip", dir=dest)
    os.close(fd)
    zip_path = Path(name)
    try:
        actual = download(url, zip_path, timeout=timeout)
        root = verify_zip(zip_path, sha256=sha256, actual_sha256=actual)
        return unpack(zip_path, root, dest, force=force)
    finally:
        zip_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.fetch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest",
        default=os.environ.get("DATA_DEST", str(DEFAULT_DEST)),
        help="folder to unpack into; the dataset lands in DEST/Flipkart (default: data/)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("DATASET_URL", DATASET_URL),
        help="address of the zip (default: the published one, or $DATASET_URL)",
    )
    parser.add_argument(
        "--sha256",
        default=os.environ.get("DATASET_SHA256"),
        help="expected sha256 of the zip (default: $DATASET_SHA256, unchecked if unset)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing DEST/Flipkart")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.url, args.dest, sha256=args.sha256, force=args.force, timeout=args.timeout)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions: nothing half-written is left behind
        print(f"error: cannot write the dataset under {args.dest}: {exc}", file=sys.stderr)
        return 1
    images = sum(1 for p in (path / IMAGES_DIR).iterdir() if p.is_file())
    print(f"dataset ready in {path} ({images} images); use it with DATA_DIR={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
