"""Lexical channel: TF-IDF over `baseline_tokens`, searched exactly as sparse vectors.

Dense sentence embeddings blur the exact product words ("dohar", "bib", "mug") that
separate neighbouring categories, so a TF-IDF cosine is fused with the dense
similarities (hybrid retrieval); what it adds is measured by bench/bench_categorizer.py
(single-channel and fused lines) under the nested protocol of indexer/calibration.py.
The vectoriser is fitted at build time on every indexed text and stored in the index
version, so queries and added products use the very vocabulary the index was built
with. The evaluation refits it on each training part only (`fit(..., fit_mask=...)`):
test texts are then transformed with a vocabulary and idf they did not shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from .text import baseline_tokens

NGRAMS = (1, 2)


@lru_cache(maxsize=8192)
def _cached_tokens(text: str) -> tuple[str, ...]:
    return tuple(baseline_tokens(text))


def _tokens(text: str) -> list[str]:
    """`baseline_tokens`, memoised: the nested evaluation refits the vocabulary once per
    training part over the same texts (bounded cache: 8192 texts)."""
    return list(_cached_tokens(text))


def _vectorizer(vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(
        tokenizer=_tokens,
        preprocessor=None,
        lowercase=False,
        token_pattern=None,
        ngram_range=NGRAMS,
        sublinear_tf=True,
        norm="l2",
        vocabulary=vocabulary,
        dtype=np.float32,
    )


@dataclass
class LexicalIndex:
    """TF-IDF rows of the products that have text; `rows[i]` is the product row of row i."""

    vectorizer: TfidfVectorizer
    matrix: sp.csr_matrix
    rows: np.ndarray

    @classmethod
    def fit(cls, texts: Sequence[str], rows: np.ndarray, fit_mask: np.ndarray | None = None) -> LexicalIndex:
        """Vocabulary and idf from `texts` (only those where `fit_mask` is True, when given),
        then every text transformed with them. O(total tokens)."""
        texts = list(texts)
        vectorizer = _vectorizer()
        if fit_mask is None:
            matrix = vectorizer.fit_transform(texts)
        else:
            mask = np.asarray(fit_mask, dtype=bool)
            if mask.shape != (len(texts),):
                raise ValueError(f"fit_mask has shape {mask.shape}, expected ({len(texts)},)")
            if not mask.any():
                raise ValueError("fit_mask selects no text to fit the vocabulary on")
            vectorizer.fit([t for t, m in zip(texts, mask, strict=True) if m])
            matrix = vectorizer.transform(texts)
        return cls(vectorizer, matrix.tocsr().astype(np.float32), np.asarray(rows, dtype=np.int64))

    @property
    def model_id(self) -> str:
        vocab = json.dumps(sorted(self.vectorizer.vocabulary_), ensure_ascii=False).encode()
        return f"tfidf-sublinear-ngram{NGRAMS[0]}{NGRAMS[1]}@{hashlib.sha256(vocab).hexdigest()[:12]}"

    @property
    def dim(self) -> int:
        return len(self.vectorizer.vocabulary_)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """L2-normalised TF-IDF rows; a text with no known word gives an all-zero row."""
        return self.vectorizer.transform(list(texts)).tocsr().astype(np.float32)

    def extend(self, matrix: sp.csr_matrix, rows: np.ndarray) -> LexicalIndex:
        """A new index with more products (vocabulary and IDF unchanged: no refit on add)."""
        return LexicalIndex(
            self.vectorizer,
            sp.vstack([self.matrix, matrix]).tocsr(),
            np.concatenate([self.rows, np.asarray(rows, dtype=np.int64)]),
        )

    # ---- the same search interface as a dense ModalityIndex ---------------------------------
    @property
    def ntotal(self) -> int:
        return self.matrix.shape[0]

    def search(self, queries: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, min(k, self.ntotal))
        sims = (queries @ self.matrix.T).toarray()
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, top, axis=1), self.rows[top]

    def similarity(self, query: sp.csr_matrix, positions: np.ndarray) -> np.ndarray:
        return np.asarray((self.matrix[positions] @ query.T).todense()).ravel()

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        vocab = {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}
        (folder / "lexical.vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        np.save(folder / "lexical.idf.npy", self.vectorizer.idf_.astype(np.float64))
        sp.save_npz(folder / "lexical.npz", self.matrix)
        np.save(folder / "lexical.rows.npy", self.rows)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        vocab = json.loads((folder / "lexical.vocab.json").read_text())
        vectorizer = _vectorizer(vocab)
        vectorizer.fit([""] if not vocab else list(vocab)[:1])  # sets up internals; idf replaced below
        vectorizer.idf_ = np.load(folder / "lexical.idf.npy")
        return cls(vectorizer, sp.load_npz(folder / "lexical.npz").tocsr(), np.load(folder / "lexical.rows.npy"))


def present_rows(query) -> np.ndarray:
    """Which query rows carry this channel: non-NaN dense rows, non-empty sparse rows."""
    if sp.issparse(query):
        return np.asarray(query.getnnz(axis=1) > 0)
    return ~np.isnan(np.asarray(query)).any(axis=1)
