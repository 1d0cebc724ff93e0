"""Product photos: find the file of a product, save uploads, make cached JPEG thumbnails."""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from indexer.catalog import IMAGES_DIR, ImageError, Product, load_image, thumbnail
from indexer.store import IndexStore

log = logging.getLogger(__name__)

UPLOADS = "uploads"
STAGING_PREFIX = ".incoming-"
STAGING_MAX_AGE = 3600.0  # seconds: a staging file older than this belongs to an add that died
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def image_file(product: Product, store: IndexStore, data_dir: str | None) -> Path | None:
    """The product's photo on this machine.

    An uploaded photo is stored relative to the index folder (the store resolves it under the
    folder it was loaded from), so a copied or moved index serves its own photos; an index
    written before that stored absolute upload paths, so a path into some other uploads/ folder
    comes after this index's own uploads/. Catalogue photos may have moved too: they are also
    looked for by name in DATA_DIR/Images and in the dataset folder the manifest names.
    """
    if not product.image:
        return None
    name = Path(product.image).name
    own = store.path / UPLOADS / name
    candidates = []
    if product.image_path is not None:
        stored = Path(product.image_path)
        if stored.parent.name == UPLOADS and stored.parent != store.path / UPLOADS:
            candidates.append(own)
        candidates.append(stored)
    candidates.append(own)
    for folder in (data_dir, store.manifest.get("data_dir")):
        if folder:
            candidates.append(Path(folder) / IMAGES_DIR / name)
    for path in candidates:
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=512)
def _thumbnail_cached(path: str, mtime_ns: int, size: int) -> bytes:
    image = load_image(path, draft_size=size)
    out = io.BytesIO()
    thumbnail(image, size).save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def thumbnail_jpeg(path: Path, size: int) -> bytes:
    """JPEG bytes no larger than size x size (decoded in draft mode, memoised)."""
    return _thumbnail_cached(str(path), path.stat().st_mtime_ns, size)


def image_extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return EXTENSIONS.get(im.format or "", "img")
    except Exception:  # validated by load_image before we get here
        return "img"


def stage_upload(index_dir: Path, product_id: str, data: bytes) -> tuple[Path, Path]:
    """Write an upload under a unique staging name in INDEX_DIR/uploads (fsynced); return
    (staged path, final path). Only the add that wins moves it into place
    (`os.replace(staged, final)` under the index's write lock), so a losing or killed add
    never replaces another product's photo."""
    folder = Path(index_dir) / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{product_id}.{image_extension(data)}"
    fd, staged = tempfile.mkstemp(prefix=STAGING_PREFIX, suffix=final.suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return Path(staged).resolve(), final.resolve()


def clean_orphans(
    index_dir: Path, referenced: Callable[[str], bool], staged_older_than: float = STAGING_MAX_AGE
) -> list[Path]:
    """Delete photos in INDEX_DIR/uploads that no product of a kept version names
    (`referenced(file name)` is False: the caller asks the live version, then the versions a
    fall-back may serve), and staging files older than `staged_older_than` seconds (adds killed
    before they won).

    The caller holds the index's write lock (photos are moved into place only under it, so
    an unreferenced photo belongs to no add in flight); younger staging files may belong
    to adds still encoding. O(files in uploads/) calls of `referenced`, never a scan of the
    catalogue."""
    folder = Path(index_dir) / UPLOADS
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for item in folder.iterdir():
        if not item.is_file():
            continue
        if item.name.startswith(STAGING_PREFIX):
            orphan = now - item.stat().st_mtime > staged_older_than
        else:
            orphan = not referenced(item.name)
        if orphan:
            item.unlink(missing_ok=True)
            removed.append(item)
    if removed:
        log.info("removed %d orphan photo(s) from %s", len(removed), folder)
    return removed


__all__ = ["ImageError", "clean_orphans", "image_file", "load_image", "stage_upload", "thumbnail_jpeg"]
