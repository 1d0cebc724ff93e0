"""Lexical channel: TF-IDF over `baseline_tokens`, searched exactly as sparse vectors.

Dense sentence embeddings blur the exact product words ("dohar", "bib", "mug") that
separate neighbouring categories, so a TF-IDF cosine is fused with the dense
similarities (hybrid retrieval); what it adds is measured by bench/bench_categorizer.py
(single-channel and fused lines) under the nested protocol of indexer/categorizer/protocol.py.
The vectoriser is fitted at build time on every indexed text and stored in the index
version, so queries and added products use the very vocabulary the index was built
with. The evaluation refits it on each training part only (`fit(..., fit_mask=...)`):
test texts are then transformed with a vocabulary and idf they did not shape.

Search runs on the transposed matrix (term -> postings), so a query costs the postings
of its terms, not the catalogue: 2.4 ms instead of 189 ms for the dense scan at 100k
synthetic products (bench/bench_search_scale.py).

Segments: the base's TF-IDF rows and its postings are written at publish time as plain
arrays (`lexical.{data,indices,indptr}.npy`, `lexical.postings.{...}.npy`) that load
memory-mapped, so workers share their pages and a load costs O(1); so is the vocabulary
(indexer/store/vocabulary.py: sorted term hashes, no per-process dict).
The rows added since (delta segments) stay a separate small matrix searched exactly beside
the base, and the two top-k lists are merged (`with_delta`): a reload after an add is
O(delta), with no stacking of the base and no postings rebuild.

Exact pruning: a query whose terms hold at least PRUNE_FROM_POSTINGS postings is answered
with a MaxScore-style bound over the impact-ordered postings (`_pruned_hits`): the heads of
the lists give a first k-th best score, the terms that together cannot lift a unit-norm row
to it are read for no row, and only the rows that can still reach it are re-scored. The
top k are the dense scan's rows (tests/test_search_path.py); the cost falls from every
posting of every query term to the essential terms' postings plus the re-scored rows
(bench/bench_scale.py prints the lexical search both ways at each size).

Impact order: each term's postings are stored by decreasing weight. With `cap` (the
manifest's `lexical.cap`, LEXICAL_POSTINGS_CAP overrides; 0 = exact) a term whose postings
exceed `cap` contributes only its `cap` heaviest, and the CAP_RESCORE best rows by those
partial scores are re-scored exactly (`_capped_hits`), so a query costs O(terms·cap +
CAP_RESCORE·row length) whatever the catalogue: an approximation, like the dense channels'
IVF-PQ, whose recall against exact search bench/bench_scale.py and bench/bench_lexical_cap.py
print. A base is published exact below CAP_FROM_ROWS products and with LARGE_BASE_CAP from
there (`default_cap`): at 1M SYNTHETIC products with a growing vocabulary the exact search cost
13.5 ms p50 and the capped one (2,048 postings, 1,000 re-scored) 4.3 ms, recall@10 0.994
(bench/bench_lexical_cap.py, 2026-12-06). With no term over the cap the search is exact.

Re-scoring without O(V) work: a candidate row's score is its entries on the query's terms
times their weights (`_row_dots`), not a sparse product with the transposed query, which
converts it at O(vocabulary) per call (2 ms per query at 1M products); each row entry finds
its query term by one read of a reused array over the vocabulary (`TermSlots`), not by a
binary search in the query's terms.

BM25 as SQLite FTS5 ranks (same top
10 and scores as FTS5 itself) scored +0.0017 ± 0.0014 fused accuracy over 5 fold seeds
with the vocabulary fitted on all products (bench/bench_lexical_scoring.py, grouped but
not nested): inside the noise, so TF-IDF cosine stays.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from indexer.catalog.text import baseline_tokens
from indexer.store.filters import PositionFilter
from indexer.store.mapped import map_random
from indexer.store.vocabulary import read_vocabulary, write_vocabulary

NGRAMS = (1, 2)
# How a query's lexical row is weighted: "fixed" = the Categorizer's lexical weight as is;
# "coverage" = that weight times the share of the query's words the vocabulary knows, so
# a French query that shares only a brand name with the English vocabulary leans on the
# dense text instead (cross-lingual section of the report: figures for both).
LEXICAL_SCALINGS = ("fixed", "coverage")
DEFAULT_LEXICAL_SCALING = "coverage"


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


INDEX_ARRAYS = ("data", "indices", "indptr")
POSTINGS_CAP_ENV = "LEXICAL_POSTINGS_CAP"
# The cap written to the manifest at publish (`default_cap`): exact below CAP_FROM_ROWS products.
CAP_FROM_ROWS = 200_000
LARGE_BASE_CAP = 2_048
# Exact pruning (LexicalIndex._pruned_hits), timed by bench/bench_scale.py: below
# PRUNE_FROM_POSTINGS postings for one query the plain product is cheaper than bounding; the
# pool for the first theta is the POOL_FACTOR·k best partial scores of each term's HEAD_POSTINGS
# heaviest; the plain product is used when the essential terms hold over ESSENTIAL_SHARE of the
# query's postings or more than RESCORE_LIMIT rows would be re-scored (nothing saved then).
# The non-essential terms may together reach at most REST_SHARE of theta: at theta itself a row
# needs no essential score to pass and nearly every row sharing a word is re-scored; lower, more
# terms are essential and more postings are read. 0.75, HEAD_POSTINGS 256 and POOL_FACTOR 8 were
# picked by hand on the 1M SYNTHETIC catalogue of bench/bench_scale.py, which prints the resulting
# lexical top-50 time both ways (every posting / pruned) at each size.
PRUNE_FROM_POSTINGS = 20_000
HEAD_POSTINGS = 256
POOL_FACTOR = 8
REST_SHARE = 0.75
ESSENTIAL_SHARE = 0.8
RESCORE_LIMIT = 20_000
# With a postings cap (`_capped_hits`), the partial scores' CAP_RESCORE best are re-scored exactly.
CAP_RESCORE = 1_000
BOUND_SLACK = 1e-5


def default_cap(rows: int) -> int:
    """The postings cap a base of `rows` products is published with: exact (0) below
    CAP_FROM_ROWS, where the exact search stays within a few ms, else LARGE_BASE_CAP
    (bench/bench_lexical_cap.py prints recall and time for each cap at 1M)."""
    return LARGE_BASE_CAP if rows >= CAP_FROM_ROWS else 0


def postings_cap(manifest_value: int | None = None) -> int:
    """The postings cap in force: LEXICAL_POSTINGS_CAP, else the manifest's, else 0 (exact)."""
    raw = os.environ.get(POSTINGS_CAP_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{POSTINGS_CAP_ENV} must be a non-negative integer, got {raw!r}")
        return value
    return int(manifest_value or 0)


def impact_ordered(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The transposed matrix (term -> postings) with each term's postings by decreasing weight
    (ties by position): O(nnz log nnz), once per base at publish time."""
    postings = matrix.T.tocsr()
    postings.sum_duplicates()
    terms = np.repeat(np.arange(postings.shape[0]), np.diff(postings.indptr))
    order = np.lexsort((postings.indices, -postings.data, terms))
    return _csr(postings.data[order], postings.indices[order], postings.indptr, postings.shape)


def _csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix over the given arrays without copying them (memory maps stay mapped):
    one index dtype for both index arrays, int32 while nnz allows it."""
    idx = np.int32 if len(data) < np.iinfo(np.int32).max and max(shape) < np.iinfo(np.int32).max else np.int64
    return sp.csr_matrix(
        (np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=idx), np.asarray(indptr, dtype=idx)),
        shape=shape,
        copy=False,
    )


class ZeroedArrays:
    """A pool of zeroed arrays of one length (per subclass: `DTYPES`, one array each), lent to one
    search at a time and given back only once the borrower has cleared what it wrote: a
    concurrent search gets its own, an exception drops the borrowed ones. O(1) to borrow a
    pooled set; a new set (or a new length) costs O(size) once."""

    DTYPES: tuple[type, ...] = ()

    def __init__(self) -> None:
        self._free: list[tuple[np.ndarray, ...]] = []
        self._lock = threading.Lock()

    def _borrow(self, size: int) -> tuple[np.ndarray, ...]:
        with self._lock:
            arrays = self._free.pop() if self._free else None
        if arrays is None or len(arrays[0]) != size:
            arrays = tuple(np.zeros(size, dtype) for dtype in self.DTYPES)
        return arrays

    def _give_back(self, arrays: tuple[np.ndarray, ...]) -> None:
        with self._lock:
            self._free.append(arrays)


class PostingSums(ZeroedArrays):
    """A query's postings summed per base position in O(postings read): a zeroed float32 sum and
    an int32 marker per base position, reused across queries and cleared only where used, where a
    sparse product allocates and clears O(N) arrays for every query (scipy's csr_matmat). One pair
    per concurrent search, 8 bytes per base row (8 MB at a million products), kept while the
    index lives."""

    DTYPES = (np.float32, np.int32)

    def add(self, size: int, positions: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(each distinct position once, the float32 sum of its values added in input order, as
        the sparse product adds them): O(len(positions)), positions in [0, size)."""
        sums, seen = pair = self._borrow(size)
        np.add.at(sums, positions, values)
        order = np.arange(len(positions), dtype=np.int32)
        seen[positions] = order  # one of each position's entries wins: that one stands for it
        distinct = positions[seen[positions] == order]
        out = sums[distinct]
        sums[distinct] = 0.0
        self._give_back(pair)  # `seen` needs no clearing: only entries just written are compared
        return distinct, out


class TermSlots(ZeroedArrays):
    """A query's terms numbered 1..m in a reused int16 array over the vocabulary, so that each
    entry of the rows being re-scored finds its query term with one array read instead of a
    binary search in the query's terms (`_row_dots`). One array per concurrent search, 2 bytes
    per vocabulary term (4.9 MB at a million products' 2.4M terms), kept while the index lives;
    O(m) to fill and clear."""

    DTYPES = (np.int16,)
    LIMIT = int(np.iinfo(np.int16).max)  # a query with more distinct terms is binary-searched

    def lookup(self, size: int, terms: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """The slot of each of `indices` (term ids in [0, size)): 1 + the position of that term in
        `terms` (distinct, at most LIMIT of them), 0 for a term the query lacks. O(len(terms) +
        len(indices))."""
        (slots,) = borrowed = self._borrow(size)
        slots[terms] = np.arange(1, len(terms) + 1, dtype=np.int16)
        found = slots[indices]
        slots[terms] = 0
        self._give_back(borrowed)
        return found


@dataclass
class LexicalIndex:
    """TF-IDF rows of the products that have text: a base segment (`base_matrix`, `base_rows`,
    possibly memory-mapped) plus rows added since (`delta_matrix`, `delta_rows`), searched
    separately and merged. `rows[i]` is the product row of channel position i (base first)."""

    vectorizer: TfidfVectorizer
    base_matrix: sp.csr_matrix
    base_rows: np.ndarray
    delta_matrix: sp.csr_matrix | None = None
    delta_rows: np.ndarray | None = None
    cap: int = 0  # postings per query term (0 = all: exact), see the module docstring
    _postings: sp.csr_matrix | None = field(default=None, repr=False, compare=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _sums: PostingSums = field(default_factory=PostingSums, init=False, repr=False, compare=False)
    _slots: TermSlots = field(default_factory=TermSlots, init=False, repr=False, compare=False)

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

    def coverage(self, texts: Sequence[str]) -> np.ndarray:
        """Share of each text's tokens (`baseline_tokens`) that are in the vocabulary; 0 for none.
        O(tokens): one dictionary lookup per token."""
        vocabulary = self.vectorizer.vocabulary_
        out = np.zeros(len(texts), np.float32)
        for i, text in enumerate(texts):
            tokens = baseline_tokens(text)
            if tokens:
                out[i] = sum(t in vocabulary for t in tokens) / len(tokens)
        return out

    def query_rows(self, texts: Sequence[str], scaling: str = DEFAULT_LEXICAL_SCALING) -> sp.csr_matrix:
        """Query rows for the Categorizer: TF-IDF rows whose norm is the channel's weight factor
        (1 with "fixed"; the vocabulary coverage with "coverage"). The Categorizer divides the
        norm back out of the similarity and multiplies the lexical weight by it."""
        if scaling not in LEXICAL_SCALINGS:
            raise ValueError(f"unknown lexical scaling {scaling!r}; choose from {LEXICAL_SCALINGS}")
        rows = self.transform(texts)
        if scaling == "coverage":
            rows = (sp.diags(self.coverage(texts)) @ rows).tocsr()
            rows.eliminate_zeros()
        return rows

    # ---- segments ------------------------------------------------------------------------
    def with_delta(self, parts: Sequence[tuple[sp.csr_matrix, np.ndarray]]) -> LexicalIndex:
        """This base with the delta rows `parts` [(matrix, product rows), ...] (in the base's
        vocabulary; no refit on add): O(delta nnz), the base's arrays and postings are shared."""
        matrices = [m for m, _ in parts]
        rows = [np.asarray(r, dtype=np.int64) for _, r in parts]
        if self.delta_matrix is not None and self.delta_rows is not None:
            matrices.insert(0, self.delta_matrix)
            rows.insert(0, self.delta_rows)
        delta = sp.vstack(matrices).tocsr().astype(np.float32) if matrices else None
        return LexicalIndex(
            self.vectorizer,
            self.base_matrix,
            self.base_rows,
            delta,
            np.concatenate(rows) if rows else None,
            self.cap,
            self.postings,
        )

    def extend(self, matrix: sp.csr_matrix, rows: np.ndarray) -> LexicalIndex:
        """A new index with more products (vocabulary and IDF unchanged: no refit on add)."""
        return self.with_delta([(matrix, rows)])

    @property
    def nbase(self) -> int:
        return self.base_matrix.shape[0]

    @property
    def ntotal(self) -> int:
        return self.nbase + (self.delta_matrix.shape[0] if self.delta_matrix is not None else 0)

    @property
    def rows(self) -> np.ndarray:
        """Product row of every channel position, base then deltas (O(N) once per loaded store)."""
        if self.delta_rows is None or not len(self.delta_rows):
            return self.base_rows
        if "rows" not in self._cache:
            self._cache["rows"] = np.concatenate([self.base_rows, self.delta_rows])
        return self._cache["rows"]

    @property
    def matrix(self) -> sp.csr_matrix:
        """Every row as one matrix: the base's itself, or base + deltas stacked once per loaded
        store (O(nnz)): for batch paths (evaluation, calibration), never the per-query search."""
        if self.delta_matrix is None or not self.delta_matrix.shape[0]:
            return self.base_matrix
        if "matrix" not in self._cache:
            self._cache["matrix"] = sp.vstack([self.base_matrix, self.delta_matrix]).tocsr()
        return self._cache["matrix"]

    def row_matrix(self, positions: np.ndarray) -> sp.csr_matrix:
        """The rows at channel `positions`, gathered per segment: O(len(positions) · row length)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.delta_matrix is None or not (positions >= self.nbase).any():
            return self.base_matrix[positions]
        stacked = sp.vstack(
            [
                self.base_matrix[positions[positions < self.nbase]],
                self.delta_matrix[positions[positions >= self.nbase] - self.nbase],
            ]
        ).tocsr()
        order = np.concatenate([np.flatnonzero(positions < self.nbase), np.flatnonzero(positions >= self.nbase)])
        return stacked[np.argsort(order, kind="stable")]

    # ---- the same search interface as a dense ModalityIndex ---------------------------------
    @property
    def postings(self) -> sp.csr_matrix:
        """The base's term -> (position, weight) lists in impact order: read from disk for a
        published base, else built once (O(nnz log nnz)) and cached."""
        if self._postings is None:
            self._postings = impact_ordered(self.base_matrix)
        return self._postings

    def _base_hits(self, query: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """(positions, scores) of every base row sharing a term with one query row: every posting
        of every query term read. O(postings read)."""
        sims = (query @ self.postings).tocsr()
        return sims.indices.astype(np.int64), sims.data

    def _head_product(
        self, query: sp.csr_matrix, starts: np.ndarray, ends: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions, partial scores) over the postings starts[t]:ends[t] of each query term t
        (in the order of `query.indices`): O(postings read), summed by `PostingSums` to the
        sparse product's floats."""
        postings = self.postings
        lengths = ends - starts
        take = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        weights = np.repeat(np.asarray(query.data, np.float32), lengths)
        positions = np.asarray(postings.indices[take], dtype=np.int64)
        return self._sums.add(postings.shape[1], positions, postings.data[take] * weights)

    def _exact_scores(self, query: sp.csr_matrix, positions: np.ndarray) -> np.ndarray:
        """The scores of a one-row query at base `positions`: the gathered rows times the query
        (`_row_dots`). Each row's products are summed in the row's term order, the dense scan sums
        them in the query's, so the two agree to float32 rounding (tests). O(rows · row length)."""
        return _row_dots(self.base_matrix[positions], query, self._slots)

    def _capped_hits(
        self, query: sp.csr_matrix, k: int, cap: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(positions, exact scores) of the max(k, CAP_RESCORE) allowed base rows with the best
        partial scores over each query term's `cap` heaviest postings, re-scored exactly; None
        when no term has more than `cap` postings (the exact search is then used).

        Approximate: a row whose weights on the query's long terms are all below those terms'
        heads, and that no short (rare, read whole) term lifts into the pool, is missed. The
        Categorizer re-scores its candidates anyway (`similarity`); what matters is recall,
        printed against exact search by bench/bench_scale.py (and the cap and pool sizes both
        ways by bench/bench_lexical_cap.py). O(terms·cap + CAP_RESCORE · row length), whatever N.
        """
        postings = self.postings
        terms = query.indices
        starts, ends = postings.indptr[terms].astype(np.int64), postings.indptr[terms + 1].astype(np.int64)
        if not (ends - starts > cap).any():
            return None
        pos, partial = self._head_product(query, starts, np.minimum(ends, starts + cap))
        if mask is not None:
            keep = mask[pos]
            pos, partial = pos[keep], partial[keep]
        pool = pos[_top_k(pos, partial, max(k, CAP_RESCORE))]
        return pool, self._exact_scores(query, pool)

    def _pruned_hits(
        self, query: sp.csr_matrix, k: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(positions, exact scores) of base rows that include the k best allowed for one query,
        or None when bounding would not save work (the caller then reads every posting).

        Exact top-k with MaxScore-style pruning: (1) the heads (HEAD_POSTINGS heaviest) of
        each term's impact-ordered postings give a candidate pool whose k-th best exact
        score theta is a lower bound of the true k-th best; (2) the query terms are split so that
        the "non-essential" ones together cannot lift a row to REST_SHARE·theta: their bound is the most
        sum q_t·x_t can be under 0 <= x_t <= (the term's heaviest posting) and ||x|| <= 1
        (rows are L2-normalised), `_norm_bound`; (3) only rows in the essential terms'
        postings can reach theta, and of those only the ones whose essential partial score
        plus that bound reaches theta are re-scored exactly. A row left out scores below theta, so
        the top k are exact. Cost O(terms·HEAD + essential postings + re-scored rows ·
        row length) instead of O(every posting of every query term).
        """
        postings = self.postings
        terms = query.indices
        starts = postings.indptr[terms].astype(np.int64)
        lengths = postings.indptr[terms + 1].astype(np.int64) - starts
        total = int(lengths.sum())
        if total < PRUNE_FROM_POSTINGS:
            return None
        pos, partial = self._head_product(query, starts, starts + np.minimum(lengths, HEAD_POSTINGS))
        if mask is not None:
            keep = mask[pos]
            pos, partial = pos[keep], partial[keep]
        if len(pos) < k:
            return None
        pool = pos[_top_k(pos, partial, POOL_FACTOR * k)]
        theta = float(np.sort(self._exact_scores(query, pool))[-k])
        if theta <= 0:
            return None
        weights = query.data.astype(np.float64)
        heaviest = np.where(lengths > 0, postings.data[np.minimum(starts, len(postings.data) - 1)], 0.0)
        order = np.argsort(weights * heaviest, kind="stable")
        lo, hi = 0, len(order)  # the largest prefix of `order` whose bound stays below REST_SHARE·theta
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _norm_bound(weights[order[:mid]], heaviest[order[:mid]]) < REST_SHARE * theta:
                lo = mid
            else:
                hi = mid - 1
        rest = _norm_bound(weights[order[:lo]], heaviest[order[:lo]])
        essential = np.sort(order[lo:])
        if lengths[essential].sum() > ESSENTIAL_SHARE * total:
            return None
        sub = sp.csr_matrix((query.data[essential], terms[essential], [0, len(essential)]), shape=query.shape)
        sims = (sub @ postings).tocsr()
        pos, partial = sims.indices.astype(np.int64), sims.data
        keep = partial + rest >= theta
        if mask is not None:
            keep &= mask[pos]
        pos = pos[keep]
        if len(pos) > RESCORE_LIMIT:
            return None
        return pos, self._exact_scores(query, pos)

    def search(
        self,
        queries: sp.csr_matrix,
        k: int,
        allowed: PositionFilter | None = None,
        cap: int | None = None,
        prune: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, product rows) of the k best positions per query, ties by position.

        Cost O(P + k log k) per query, P = the postings of the query's terms (at most `cap`
        per term when set, plus CAP_RESCORE re-scored rows; default the index's `cap`; with
        `prune` and no cap, the essential terms' postings plus the re-scored rows of
        `_pruned_hits`) plus the delta rows' scan
        (O(delta nnz)), and one mask lookup per posting under a filter; not O(N). The rows are
        a dense scan's without a cap; its scores bit for bit without pruning, to float32 rounding with it
        (a row's terms summed in another order); the base's and the deltas' best are merged. When
        fewer than k positions share a word with the query, the rest are the lowest allowed
        positions with score 0, exactly as a dense scan sorted by (-score, position) gives.
        """
        cap = self.cap if cap is None else cap
        k = max(1, min(k, self.ntotal if allowed is None else len(allowed)))
        queries = queries.tocsr()
        n = queries.shape[0]
        out_scores = np.zeros((n, k), np.float32)
        out_rows = np.full((n, k), -1, np.int64)
        if self.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return out_scores[:, :0], out_rows[:, :0]
        mask = allowed.mask() if allowed is not None else None
        delta = None
        if self.delta_matrix is not None and self.delta_matrix.shape[0]:
            delta = (queries @ self.delta_matrix.T).tocsr()
        rows = self.rows
        for i in range(n):
            pos, score = np.zeros(0, np.int64), np.zeros(0, np.float32)
            if self.nbase:
                found = self._capped_hits(queries[i], k, cap, mask) if cap else None
                if found is None and prune:
                    found = self._pruned_hits(queries[i], k, mask)
                pos, score = found if found is not None else self._base_hits(queries[i])
            if delta is not None:
                lo, hi = delta.indptr[i], delta.indptr[i + 1]
                pos = np.concatenate([pos, self.nbase + delta.indices[lo:hi].astype(np.int64)])
                score = np.concatenate([score, delta.data[lo:hi]]).astype(np.float32)
            if mask is not None:
                keep = mask[pos]
                pos, score = pos[keep], score[keep]
            top = _top_k(pos, score, k)
            pos, score = pos[top], score[top]
            if len(pos) < k:
                pad = _first_missing(allowed.positions if allowed is not None else None, pos, k - len(pos))
                pos, score = np.concatenate([pos, pad]), np.concatenate([score, np.zeros(len(pad), np.float32)])
            out_scores[i, : len(pos)], out_rows[i, : len(pos)] = score, rows[pos]
        return out_scores, out_rows

    def search_dense(self, queries: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact reference: a dense (n, N) score matrix sorted per row, O(n·N log N).
        Kept for tests and bench/bench_search_scale.py, never used by the search."""
        k = max(1, min(k, self.ntotal))
        sims = (queries @ self.matrix.T).toarray()
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, top, axis=1), self.rows[top]

    def similarity(self, query: sp.csr_matrix, positions: np.ndarray) -> np.ndarray:
        """Cosine of one query to the rows at `positions`: O(len(positions) · row length), not
        O(vocabulary) (a sparse product with the transposed query converted it: 2 ms at 1M)."""
        return _row_dots(self.row_matrix(positions), query, self._slots)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """The base + deltas as one base segment: vocabulary (JSON and mapped hashes,
        indexer/store/vocabulary.py), idf, the rows and the impact-ordered postings as plain arrays
        (memory-mappable). O(nnz log nnz) for the postings, O(V log V) for the vocabulary."""
        write_vocabulary(folder, self.vectorizer.vocabulary_)
        np.save(folder / "lexical.idf.npy", self.vectorizer.idf_.astype(np.float64))
        whole = self.matrix
        merged = self if whole is self.base_matrix else LexicalIndex(self.vectorizer, whole, self.rows)
        for prefix, matrix in (
            ("lexical", _csr(whole.data, whole.indices, whole.indptr, whole.shape)),
            ("lexical.postings", merged.postings),
        ):
            for name in INDEX_ARRAYS:
                np.save(folder / f"{prefix}.{name}.npy", getattr(matrix, name))
        np.save(folder / "lexical.rows.npy", np.asarray(self.rows, dtype=np.int64))

    @classmethod
    def load(cls, folder: Path, cap: int = 0) -> LexicalIndex:
        """A published base, its arrays and vocabulary memory-mapped: O(1) beyond the checks (an
        index published without the vocabulary arrays reads its JSON vocabulary: O(V)).
        Only O(1) structural checks here: the contents are what the manifest's checksums cover."""
        vocab = read_vocabulary(folder)
        vectorizer = _vectorizer()
        vectorizer.vocabulary_ = vocab  # a Mapping: scikit-learn only looks terms up in it
        vectorizer.idf_ = np.load(folder / "lexical.idf.npy")  # checks its length against the vocabulary
        arrays = {  # rows are read scattered (re-scoring, similarity): no read-ahead; postings in runs
            (prefix, name): (map_random if prefix == "lexical" else _map)(folder / f"{prefix}.{name}.npy")
            for prefix in ("lexical", "lexical.postings")
            for name in INDEX_ARRAYS
        }
        rows = map_random(folder / "lexical.rows.npy")
        n, dim = len(rows), len(vocab)
        for prefix, shape in (("lexical", (n, dim)), ("lexical.postings", (dim, n))):
            data, indices, indptr = (arrays[prefix, name] for name in INDEX_ARRAYS)
            if len(indptr) != shape[0] + 1 or len(data) != len(indices) or (len(indptr) and indptr[-1] != len(data)):
                raise ValueError(f"{prefix} arrays disagree: {len(indptr) - 1} rows, {len(data)} values, shape {shape}")
        matrix = _csr(arrays["lexical", "data"], arrays["lexical", "indices"], arrays["lexical", "indptr"], (n, dim))
        postings = _csr(
            arrays["lexical.postings", "data"],
            arrays["lexical.postings", "indices"],
            arrays["lexical.postings", "indptr"],
            (dim, n),
        )
        return cls(vectorizer, matrix, rows, cap=cap, _postings=postings)


def _map(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


def present_rows(query: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Which query rows carry this channel: non-NaN dense rows, non-empty sparse rows."""
    if isinstance(query, np.ndarray):
        return np.asarray(~np.isnan(query).any(axis=1))
    if sp.issparse(query):
        return np.asarray(sp.csr_matrix(query).getnnz(axis=1) > 0)
    return ~np.isnan(np.asarray(query)).any(axis=1)


def _row_dots(rows: sp.csr_matrix, query: sp.csr_matrix, slots: TermSlots | None = None) -> np.ndarray:
    """`rows` times a one-row `query` (both float32 CSR), as float32, never O(vocabulary): scipy's
    product with the transposed query converts it at O(V), 2 ms per query at 1M products.
    Each row entry is renumbered into the query's own term space (slot 0: a term the query
    lacks, weighted 0), by `slots` (one array read per entry) or else by a binary search in the
    query's sorted terms, and the rows are multiplied by the weights in the row's term order,
    as scipy's product sums them: the added zeros leave each float32 sum unchanged, so these
    are its floats bit for bit (tests). O(nnz(rows)), or O(nnz(rows) · log terms) searched."""
    rows, query = rows.tocsr(), query.tocsr()
    if not query.has_canonical_format:  # a stored or coverage-scaled row may keep its terms unsorted
        query = query.copy()
        query.sum_duplicates()
    terms = query.indices
    if not len(terms) or not rows.nnz:
        return np.zeros(rows.shape[0], np.float32)
    if slots is not None and len(terms) <= slots.LIMIT:
        slot = slots.lookup(query.shape[1], terms, rows.indices)
    else:
        at = np.minimum(np.searchsorted(terms, rows.indices), len(terms) - 1)
        slot = np.where(terms[at] == rows.indices, at + 1, 0)
    weights = np.concatenate([np.zeros(1, np.float32), np.asarray(query.data, np.float32)])
    renumbered = sp.csr_matrix((rows.data, slot, rows.indptr), shape=(rows.shape[0], len(weights)))
    return np.asarray(renumbered @ weights, dtype=np.float32)


def _norm_bound(weights: np.ndarray, caps: np.ndarray) -> float:
    """The most sum(weights·x) can be over 0 <= x <= caps with ||x||_2 <= 1: an upper bound of
    the score a unit row gets from these terms when its weight on term t is at most caps[t].

    Water-filling (the KKT point x_t = min(caps_t, lam·w_t)): terms are capped in the order of
    caps/weights, lam fills the rest of the unit norm. O(m log m), m = len(weights). Padded up
    by BOUND_SLACK so float32 rounding in the scores can never put a row above it."""
    weights, caps = np.asarray(weights, np.float64), np.asarray(caps, np.float64)
    if not len(weights):
        return 0.0
    plain = float(weights @ caps)
    if float(caps @ caps) <= 1.0:
        return plain * (1 + BOUND_SLACK) + BOUND_SLACK
    order = np.argsort(caps / weights, kind="stable")
    w, c = weights[order], caps[order]
    capped_sq = np.concatenate([[0.0], np.cumsum(c * c)])[:-1]  # first j capped: sum of their caps^2
    capped_dot = np.concatenate([[0.0], np.cumsum(w * c)])[:-1]
    rest_sq = np.cumsum((w * w)[::-1])[::-1]  # sum over the uncapped (j, j+1, ...) of w^2
    lam = np.sqrt(np.clip(1.0 - capped_sq, 0.0, None) / rest_sq)
    ratio = c / w
    valid = (lam <= ratio) & (np.concatenate([[0.0], ratio[:-1]]) <= lam)
    best = float((capped_dot + lam * rest_sq)[np.argmax(valid)]) if valid.any() else plain
    best = min(best, plain, float(np.sqrt(weights @ weights)))
    return best * (1 + BOUND_SLACK) + BOUND_SLACK


def _top_k(positions: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best (score desc, position asc): O(c) partition + O(m log m) on the m ≥ k
    entries scoring at least the k-th best (ties at the cut are kept, then ordered by position)."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        cand = np.flatnonzero(scores >= kth)
    else:
        cand = np.arange(len(scores))
    order = np.lexsort((positions[cand], -scores[cand]))
    return cand[order[:k]]


def _first_missing(pool: np.ndarray | None, taken: np.ndarray, count: int) -> np.ndarray:
    """The `count` lowest positions of `pool` (sorted; None = 0, 1, 2, ...) not in `taken`:
    O(count + len(taken)) since fewer than k positions are taken when padding is needed."""
    head = np.arange(count + len(taken)) if pool is None else pool[: count + len(taken)]
    return head[~np.isin(head, taken)][:count].astype(np.int64)
