"""Helpers shared by the service tests: the index they read, writable copies, free ports."""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

from indexer.store.local.index import CURRENT, VERSIONS, read_current


def copy_index(src: Path, dst: Path) -> Path:
    """A writable copy of the live version of `src` (plus its embedding cache and its sealed CURRENT)."""
    version = read_current(src)
    (dst / VERSIONS).mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / VERSIONS / version, dst / VERSIONS / version)
    if (src / "cache.sqlite").is_file():
        shutil.copy2(src / "cache.sqlite", dst / "cache.sqlite")
    shutil.copy2(src / CURRENT, dst / CURRENT)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_products(store, n: int = 1, category: str | None = None):
    """The first n products (row order) that have a readable photo, optionally of one category."""
    out = []
    for product in store.products:
        if product.image_path is None or (category and product.category != category):
            continue
        path = photo_path(store, product)
        if path is not None:
            out.append((product, path))
        if len(out) == n:
            break
    return out


def photo_path(store, product) -> Path | None:
    from service.media import image_file

    return image_file(product, store, os.environ.get("DATA_DIR"))


def jpeg_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()
