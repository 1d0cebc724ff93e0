"""What a product is and how it comes in: Product and the CSV catalogue, images, text, shard format."""

from indexer.catalog.images import DecodeBudget, DecodeBusy, ImageError, ImageLimits, load_image, thumbnail
from indexer.catalog.products import CATEGORY_SEPARATOR, IMAGES_DIR, Product
from indexer.catalog.text import baseline_tokens, encoder_text

__all__ = [
    "CATEGORY_SEPARATOR",
    "DecodeBudget",
    "DecodeBusy",
    "IMAGES_DIR",
    "ImageError",
    "ImageLimits",
    "Product",
    "baseline_tokens",
    "encoder_text",
    "load_image",
    "thumbnail",
]
