"""The Encoder protocol every profile implements, and helpers they share."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from PIL import Image


class EncoderUnavailable(RuntimeError):
    """A profile's weights or packages are missing; the message names what to provide."""


@runtime_checkable
class Encoder(Protocol):
    """Turns images and texts into L2-normalised float32 vectors.

    `model_ids` name the exact weights per modality; together with `dims` they are
    written into the index manifest, and an index refuses an encoder whose ids differ.
    """

    profile: str
    model_ids: dict[str, str]
    dims: dict[str, int]
    image_size: int

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """CHW float32 model input for one RGB image (thread-safe: the build runs it in a pool)."""
        ...

    def encode_arrays(self, arrays: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Vectors for images already passed through `preprocess`."""
        ...

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def encode_text_queries(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """A seller's texts in the encoder's text space, in the query role where the encoder has one
    (e5's `query: ` prefix); encoders with a single role encode them as catalogue text."""
    encode = getattr(encoder, "encode_text_queries", None)
    return encode(texts) if encode is not None else encoder.encode_texts(texts)


class NamedModels(Protocol):
    """What names an index's models: an Encoder, or a manifest-like record of one."""

    @property
    def profile(self) -> str: ...

    @property
    def model_ids(self) -> Mapping[str, str]: ...


def model_id(encoder: NamedModels) -> str:
    """One stable string naming the profile and all its weights."""
    parts = ",".join(f"{m}={encoder.model_ids[m]}" for m in sorted(encoder.model_ids))
    return f"{encoder.profile}[{parts}]"


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


T = TypeVar("T")


def empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sentence_vectors(
    model: Any, texts: Sequence[str], batch_size: int, context: AbstractContextManager[Any]
) -> np.ndarray:
    """L2-normalised float32 vectors from a sentence-transformers model inside `context`
    (inference mode + optional autocast), the way every profile encodes product text."""
    with context:
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
    return l2_normalize(vectors)
