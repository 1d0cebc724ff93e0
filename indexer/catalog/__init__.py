"""What a product is and how it comes in: Product and the CSV catalogue, images, text, shard format."""

from indexer.catalog.images import DecodeBudget, DecodeBusy, ImageError, ImageLimits, load_image, thumbnail
from indexer.catalog.products import (
    CATEGORY_SEPARATOR,
    IMAGES_DIR,
    CategoryPathError,
    Product,
    check_category_path,
    format_category_path,
    parse_category_path,
)
from indexer.catalog.text import baseline_tokens, encoder_text

__all__ = [
    "CATEGORY_SEPARATOR",
    "DecodeBudget",
    "DecodeBusy",
    "IMAGES_DIR",
    "CategoryPathError",
    "ImageError",
    "ImageLimits",
    "Product",
    "baseline_tokens",
    "check_category_path",
    "encoder_text",
    "format_category_path",
    "load_image",
    "parse_category_path",
    "thumbnail",
]
