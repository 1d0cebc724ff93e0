"""The one way to load an image: bounded, decoded small when possible, upright, RGB.

Every caller (build, service uploads, evaluation thumbnails) goes through `load_image`
so that the vectors they compute agree and no upload can exhaust memory: a pixel limit per
image, and (in the service) a `DecodeBudget` bounding the pixels decoded at once per process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = str | os.PathLike | bytes | BinaryIO

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
WHITE = (255, 255, 255)
DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # decoded at 1/2, 1/4, 1/8 scale by Pillow's draft()


class ImageError(ValueError):
    """An image that cannot be used, with a message a seller can act on."""


@dataclass(frozen=True)
class ImageLimits:
    """Size limits. A JPEG above `max_pixels` is still accepted when draft decoding
    brings it under the limit (the 93.7 MP product photo decodes at 1/8 scale)."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_source_pixels: int = 1_000_000_000

    @classmethod
    def from_env(cls) -> ImageLimits:
        """Limits from IMAGE_MAX_BYTES / IMAGE_MAX_PIXELS, the documented defaults otherwise."""
        values = {}
        for field_name, var in (("max_bytes", "IMAGE_MAX_BYTES"), ("max_pixels", "IMAGE_MAX_PIXELS")):
            raw = os.environ.get(var)
            if raw:
                try:
                    values[field_name] = int(raw)
                except ValueError:
                    raise ValueError(f"{var} must be a whole number, got {raw!r}") from None
        return cls(**values)


DEFAULT_LIMITS = ImageLimits.from_env()  # what the build and the report use

# Our own limits decide what is too big, so Pillow's warning is noise. Set once here:
# warnings.catch_warnings() is not thread-safe and the build loads images in a thread pool.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow refuses to open anything over 2 x MAX_IMAGE_PIXELS, which would make a large
# JPEG that draft decoding can shrink unloadable; our checks run before decoding.
Image.MAX_IMAGE_PIXELS = ImageLimits.max_source_pixels // 2


class DecodeBusy(Exception):
    """The decode budget stayed full for the whole wait: the caller should retry shortly (503)."""

    def __init__(self, pixels: int, budget: int, waited: float) -> None:
        super().__init__(
            f"too many images are being decoded: this one ({pixels / 1e6:.1f} MP) waited {waited:g} s "
            f"for room in the {budget / 1e6:g} MP decode budget (DECODE_BUDGET_PIXELS); retry shortly"
        )
        self.retry_after = max(1, round(waited))


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS): the free heap pages it hands back to the OS."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_free_memory() -> None:
    """Give freed heap pages back to the OS. glibc keeps what a burst of large decodes freed
    (8 parallel 40 MP PNGs left a worker 2 GB above its start, docs/slow-clients.md); Pillow
    allocates images in 16 MB blocks that land in its arenas. O(heap size), a few ms."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class DecodeBudget:
    """Pixels decoded at once in this process, bounded (a counting semaphore in pixels).

    A decode reserves its decoded size (after JPEG draft scaling) before Pillow allocates it;
    when the budget is full it waits up to `wait_seconds`, then raises DecodeBusy. An image
    larger than the whole budget waits until it is alone. When the last large decode of a
    burst ends, the freed memory is handed back to the OS (`release_free_memory`)."""

    def __init__(self, pixels: int, wait_seconds: float, trim_pixels: int = 4_000_000) -> None:
        if pixels <= 0:
            raise ValueError(f"a decode budget needs a positive number of pixels, got {pixels}")
        self.pixels = pixels
        self.wait_seconds = wait_seconds
        self.trim_pixels = trim_pixels
        self._in_flight = 0
        self._large_since_trim = False
        self._cond = threading.Condition()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        want = min(pixels, self.pixels)
        start = time.monotonic()
        with self._cond:
            if not self._cond.wait_for(lambda: self._in_flight + want <= self.pixels, timeout=self.wait_seconds):
                raise DecodeBusy(pixels, self.pixels, round(time.monotonic() - start, 1))
            self._in_flight += want
            self._large_since_trim |= pixels >= self.trim_pixels
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= want
                trim = self._in_flight == 0 and self._large_since_trim
                if trim:
                    self._large_since_trim = False
                self._cond.notify_all()
            if trim:
                release_free_memory()


def _read_bytes(source: ImageSource, limits: ImageLimits) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise ImageError(f"image is {size} bytes, over the {limits.max_bytes}-byte limit")
            data = path.read_bytes()
        except OSError as exc:  # missing, a folder, no permission
            raise ImageError(f"cannot read image {path.name}: {exc.strerror or exc}") from exc
    else:
        data = source.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is over the {limits.max_bytes}-byte limit")
    if not data:
        raise ImageError("image file is empty (0 bytes)")
    return data


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency is composited on white, the usual product backdrop."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I"):  # 16-bit greyscale: point() only handles mode I
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def _shrink(image: Image.Image, draft_size: int) -> Image.Image:
    """`image` reduced by the largest whole factor that keeps both sides >= draft_size, right
    after decoding: what JPEG's draft does while decoding, for formats that cannot (PNG, WebP,
    ...), so the full-size pixels are freed before the conversions copy them."""
    factor = min(image.size) // draft_size
    if factor < 2:
        return image
    if image.mode in ("P", "PA", "1"):  # palette indexes and bits cannot be averaged
        return image.resize((image.width // factor, image.height // factor), Image.Resampling.NEAREST)
    return image.reduce(factor)


def load_image(
    source: ImageSource,
    draft_size: int | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """Decode `source` into an upright RGB image, or raise ImageError saying why not.

    `draft_size` lets JPEG decode at 1/2, 1/4 or 1/8 scale while both sides stay
    >= draft_size: much faster, and what makes huge photos loadable at all; other formats
    are reduced right after decoding (`_shrink`). `budget` bounds the pixels this process
    decodes at once (DecodeBusy when it stays full). Memory: O(decoded pixels) while decoding.
    """
    data = _read_bytes(source, limits)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image has too many pixels to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image: the bytes are in no recognised image format") from exc
    except OSError as exc:
        raise ImageError(f"corrupt image header: {exc}") from exc
    if image.format not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > limits.max_source_pixels:
        raise ImageError(f"image is {width}x{height} pixels, over the limit")
    if image.format in DRAFT_FORMATS and draft_size:
        image.draft("RGB", (draft_size, draft_size))
    decoded_w, decoded_h = image.size
    if decoded_w * decoded_h > limits.max_pixels:
        raise ImageError(
            f"image is {width}x{height} pixels ({width * height / 1e6:.1f} MP), "
            f"over the {limits.max_pixels / 1e6:g} MP limit"
        )
    with budget.reserve(decoded_w * decoded_h) if budget else contextlib.nullcontext():
        decoded = _decode(image, draft_size)
        del image  # the full-size pixels go before the reservation ends (and memory is trimmed)
    return decoded


def _decode(image: Image.Image, draft_size: int | None) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"truncated or corrupt image data: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image has too many pixels to decode safely ({exc})") from exc
    source_format, source_mode = image.format, image.mode
    try:
        if draft_size and source_format not in DRAFT_FORMATS:  # JPEG: draft already did it
            image = _shrink(image, draft_size)
        return _to_rgb(ImageOps.exif_transpose(image) or image)
    except (OSError, SyntaxError, ValueError, TypeError) as exc:  # odd modes, broken EXIF
        raise ImageError(f"cannot convert {source_format} image (mode {source_mode}) to RGB: {exc}") from exc


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """A copy no larger than size x size, aspect kept."""
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.BICUBIC)
    return copy
