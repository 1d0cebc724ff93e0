"""The one way to load an image: bounded, decoded small when possible, upright, RGB.

Every caller (build, service uploads, evaluation thumbnails) goes through `load_image`
so that the vectors they compute agree and no upload can exhaust memory.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = str | os.PathLike | bytes | BinaryIO

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
WHITE = (255, 255, 255)


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


def load_image(
    source: ImageSource,
    draft_size: int | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> Image.Image:
    """Decode `source` into an upright RGB image, or raise ImageError saying why not.

    `draft_size` lets JPEG decode at 1/2, 1/4 or 1/8 scale while both sides stay
    >= draft_size: much faster, and what makes huge photos loadable at all.
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
    if image.format in ("JPEG", "MPO") and draft_size:
        image.draft("RGB", (draft_size, draft_size))
    decoded_w, decoded_h = image.size
    if decoded_w * decoded_h > limits.max_pixels:
        raise ImageError(
            f"image is {width}x{height} pixels ({width * height / 1e6:.1f} MP), "
            f"over the {limits.max_pixels / 1e6:g} MP limit"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"truncated or corrupt image data: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image has too many pixels to decode safely ({exc})") from exc
    source_format, source_mode = image.format, image.mode
    try:
        return _to_rgb(ImageOps.exif_transpose(image) or image)
    except (OSError, SyntaxError, ValueError, TypeError) as exc:  # odd modes, broken EXIF
        raise ImageError(f"cannot convert {source_format} image (mode {source_mode}) to RGB: {exc}") from exc


def thumbnail(image: Image.Image, size: int) -> Image.Image:
    """A copy no larger than size x size, aspect kept."""
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.BICUBIC)
    return copy
