"""Product photos: find the file of a product, save uploads, make cached JPEG thumbnails."""

from __future__ import annotations

import io
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from indexer.catalog import IMAGES_DIR, Product
from indexer.images import ImageError, load_image, thumbnail
from indexer.store import IndexStore

UPLOADS = "uploads"
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def image_file(product: Product, store: IndexStore, data_dir: str | None) -> Path | None:
    """The product's photo on this machine.

    Index records may hold paths relative to where the build ran, so the file is also
    looked for by name in the index's uploads/, in DATA_DIR/Images and in the dataset
    folder the manifest names.
    """
    if not product.image:
        return None
    name = Path(product.image).name
    candidates = []
    if product.image_path is not None:
        candidates.append(Path(product.image_path))
    candidates.append(store.path / UPLOADS / name)
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


def save_upload(index_dir: Path, product_id: str, data: bytes) -> Path:
    """Write the upload under INDEX_DIR/uploads atomically (temp file, fsync, rename)."""
    folder = Path(index_dir) / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{product_id}.{image_extension(data)}"
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target.resolve()


__all__ = ["ImageError", "image_file", "load_image", "save_upload", "thumbnail_jpeg"]
