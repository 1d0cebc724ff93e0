"""How the FAISS indexes are searched: search-time settings and filtered search.

Settings: an IVF index probes `nprobe` lists and an HNSW graph keeps `efSearch`
candidates. FAISS's own defaults (1 and 16) lose a large share of the true neighbours,
so the build writes measured defaults into the manifest (`search` key) and the store
applies them when it loads; `FAISS_NPROBE` / `FAISS_EF_SEARCH` override them without a
rebuild. DEFAULT_SEARCH_PARAMS is twice the smallest setting that reached recall@10 >= 0.95
against exact search on 100k synthetic text vectors (nprobe 8 of IVF1024,Flat: 0.975;
efSearch 32 of HNSW32: 0.970; bench/bench_search_scale.py prints the sweep): the margin
because the synthetic vectors are more clustered than a real catalogue. At the defaults
that sweep gave 0.993 (nprobe 16) and 0.974 (efSearch 64).

Factory: `choose_factory("auto", n, dim)` keeps an exact Flat index below LARGE_BASE_ROWS
vectors and from there builds an IVF index over product-quantised codes (IVF_PQ below: a few
dozen bytes per vector instead of a second full-precision copy), trained on TRAIN_ROWS
vectors drawn with TRAIN_SEED (`build_faiss_index`, chunked adds: memory bounded by a chunk,
not by N). Its candidates are re-scored exactly with the store's own compact vectors
(`refine` in the search settings: the index is asked for refine x k, the k best by stored
vector win), which is what FAISS's IndexRefine does, with our stored vectors as the refine
copy. The resolved factory and training sample are written to the manifest (`faiss`), the
search settings to `search`. bench/bench_search_scale.py prints recall@10, latency and build
time of the candidates at 100k and 1M synthetic vectors.

Filters: a category filter runs inside the search through a FAISS IDSelector (only the
allowed ids are scored and returned), so the search no longer asks for depth + excluded
rows. On HNSW or IVF, small allowed sets are scanned exactly instead, and a search that
returns fewer than k allowed rows (a selective filter starves the graph or lists) falls back to the
exact scan, so a filter returns k rows whenever k exist. A base with delta segments is searched
the same way (through a filter of its own positions) beside an exact scan of the deltas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from indexer.store.filters import PositionFilter
from indexer.store.local.segments import dot_rows

if TYPE_CHECKING:
    from indexer.store.local.segments import StackedVectors, StoredVectors

DEFAULT_SEARCH_PARAMS = {"nprobe": 16, "efSearch": 64, "refine": 1}
ENVIRONMENT = {"nprobe": "FAISS_NPROBE", "efSearch": "FAISS_EF_SEARCH", "refine": "FAISS_REFINE"}
AUTO = "auto"
LARGE_BASE_ROWS = int(os.environ.get("INDEX_LARGE_BASE_ROWS", "50000"))  # from here "auto" is IVF-PQ
IVF_PQ = "IVF{nlist},PQ{m}x4fs"  # 4-bit fast-scan PQ: m/2 bytes per vector
# About this many dimensions per PQ sub-quantiser (m divides d). 8, not 20: on 100k SYNTHETIC
# products at nprobe 32 and 160 candidates re-scored, d/20 codes gave recall@10 0.904 image /
# 0.857 text against exact search, d/10 0.985 / 0.973, d/8 0.992 / 0.973, for 80 + 56 bytes a
# vector instead of 32 + 28 (bench/bench_pq_sweep.py prints the sweep; README "A million products").
PQ_SUB_DIMS = 8
TRAIN_ROWS = 65_536  # vectors the IVF-PQ is trained on (a seeded sample; all of them below that)
TRAIN_SEED = 0
ADD_CHUNK = 50_000  # vectors converted to float32 and added at a time: O(chunk·d) memory
LARGE_SEARCH_PARAMS = {"nprobe": 32, "efSearch": 64, "refine": 16}  # for the IVF-PQ bases: see bench
EXACT_FILTER_ROWS = 4096  # on HNSW/IVF, allowed sets up to this size are scanned exactly (O(|allowed|·d))


def search_params(manifest: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """The manifest's search settings (or the defaults for an index built before they were
    stored), each overridden by its environment variable; a bad value is a clear error."""
    environ = os.environ if environ is None else environ
    params = {**DEFAULT_SEARCH_PARAMS, **(manifest.get("search") or {})}
    for key, variable in ENVIRONMENT.items():
        raw = environ.get(variable, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{variable} must be a positive integer, got {raw!r}")
        params[key] = value
    return {key: int(params[key]) for key in DEFAULT_SEARCH_PARAMS}


def choose_factory(requested: str, rows: int, dim: int) -> str:
    """The FAISS factory string for a base of `rows` x `dim`: `requested` unless it is "auto";
    "auto" is Flat below LARGE_BASE_ROWS, else IVF_PQ with nlist = the power of two nearest
    sqrt(rows) and m = the divisor of dim nearest dim / PQ_SUB_DIMS (even, for fast scan)."""
    if requested != AUTO:
        return requested
    if rows < LARGE_BASE_ROWS:
        return "Flat"
    nlist = 2 ** max(4, round(np.log2(np.sqrt(rows))))
    divisors = [m for m in range(2, dim + 1, 2) if dim % m == 0]
    m = min(divisors, key=lambda m: (abs(m - dim / PQ_SUB_DIMS), m)) if divisors else dim
    return IVF_PQ.format(nlist=nlist, m=m)


def search_settings_for(factory: str) -> dict[str, int]:
    """Search settings written to the manifest with a resolved factory (refine only on PQ codes)."""
    return dict(LARGE_SEARCH_PARAMS) if "PQ" in factory else dict(DEFAULT_SEARCH_PARAMS)


def build_faiss_index(
    vectors: Any, factory: str, train_rows: int = TRAIN_ROWS, seed: int = TRAIN_SEED, chunk: int = ADD_CHUNK
) -> tuple[faiss.Index, dict[str, Any]]:
    """(index, what the manifest records) over `vectors` (any array-like of unit rows: memory-
    mapped float16/int8 included), inner product. Training, when the type needs it, uses
    `train_rows` rows drawn without replacement with `seed` (all rows when fewer); the rows are
    then added `chunk` at a time. Time: training O(train_rows·d·nlist·iterations) + O(N·d)."""
    import time

    n, dim = len(vectors), int(vectors.shape[1])
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    info: dict[str, Any] = {"factory": factory}
    t0 = time.perf_counter()
    if not index.is_trained:
        if n == 0:
            raise ValueError(f"FAISS index {factory!r} needs training vectors")
        rng = np.random.default_rng(seed)
        sample = np.arange(n) if n <= train_rows else np.sort(rng.choice(n, train_rows, replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        info.update(train_rows=int(len(sample)), train_seed=int(seed))
    info["train_seconds"] = round(time.perf_counter() - t0, 2)
    for start in range(0, n, chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
    info["build_seconds"] = round(time.perf_counter() - t0, 2)
    return index, info


def refine(
    vectors: StoredVectors | StackedVectors, queries: np.ndarray, positions: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate `positions` (n, depth; -1 = none) exactly with the stored vectors and
    keep the k best per query, ordered by (-similarity, position): O(n·depth·d), one query's
    candidates gathered at a time. Rows short of k end with similarity -inf and position -1."""
    n = len(queries)
    out_sims = np.full((n, k), -np.inf, np.float32)
    out_pos = np.full((n, k), -1, np.int64)
    for i in range(n):
        cand = np.unique(positions[i][positions[i] >= 0])  # sorted: ties then go to the lower position
        if not len(cand):
            continue
        sims = dot_rows(vectors, cand, queries[i])
        top = np.lexsort((cand, -sims))[:k]
        out_sims[i, : len(top)], out_pos[i, : len(top)] = sims[top], cand[top]
    return out_sims, out_pos


def apply_search_params(index: faiss.Index, params: Mapping[str, int]) -> dict[str, int]:
    """Set nprobe on an IVF index and efSearch on an HNSW one (O(1)); returns what applied.
    (`refine` is the ModalityIndex's, below.)"""
    applied = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = int(params["nprobe"])
        applied["nprobe"] = ivf.nprobe
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        base.hnsw.efSearch = int(params["efSearch"])
        applied["efSearch"] = base.hnsw.efSearch
    return applied


def _selector_params(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters carrying the selector and the index's own nprobe / efSearch
    (a SearchParameters object replaces them, with FAISS's defaults, if not copied)."""
    # The SWIG stubs do not know the keyword constructors FAISS's Python wrapper adds.
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=base.hnsw.efSearch)  # type: ignore[attr-defined]
    if isinstance(base, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=base.nprobe)  # type: ignore[call-arg]
    return faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]


def exact_search(
    vectors: StoredVectors | StackedVectors,
    queries: np.ndarray,
    k: int,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, positions) of the k best among `positions` (None = all), exactly:
    O(n·|positions|·d) + O(|positions|) partition per query; ordered by (-similarity, position)."""
    pool = np.arange(len(vectors)) if positions is None else np.asarray(positions, dtype=np.int64)
    k = min(k, len(pool))
    sims = np.asarray(queries, dtype=np.float32) @ vectors[pool].T
    cand = np.argpartition(-sims, k - 1, axis=1)[:, :k] if sims.shape[1] > k else np.tile(np.arange(k), (len(sims), 1))
    top, at = np.take_along_axis(sims, cand, axis=1), pool[cand]
    order = np.lexsort((at, -top), axis=-1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(at, order, axis=1)


def filtered_search(
    channel: ModalityIndex, queries: np.ndarray, k: int, allowed: PositionFilter
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, product rows) of the k nearest allowed vectors; rows -1 past the end.

    A Flat index takes an IDSelectorBitmap: exact, O(N) bit tests + O(|allowed|·d), no copy.
    An approximate index (HNSW, IVF) scans up to EXACT_FILTER_ROWS allowed vectors exactly
    (O(|allowed|·d), a selective filter would starve its graph or lists); above that it
    searches with the selector at its own cost, and the queries it left short of k are
    scanned exactly. A store with delta segments (an IndexShards) searches its base the same
    way over the allowed base positions and scans the deltas' allowed positions exactly
    (O(|allowed in deltas|·d)), then keeps the k best of both.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(queries)
    k = max(1, min(k, len(allowed)))
    if len(allowed) == 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    if isinstance(channel.index, faiss.IndexShards):  # base + deltas: selector ids are per shard
        nb = channel.parts[0].ntotal if len(channel.parts) > 1 else 0
        found = []
        base = allowed.below(nb)
        if len(base):
            found.append(_filtered_positions(channel.parts[0], channel.vectors, channel.refine, queries, k, base))
        added = allowed.positions[allowed.positions >= nb]
        if len(added):
            found.append(exact_search(channel.vectors, queries, k, added))
        sims, positions = np.concatenate([f[0] for f in found], axis=1), np.concatenate([f[1] for f in found], axis=1)
        order = np.lexsort((np.where(positions < 0, np.iinfo(np.int64).max, positions), -sims), axis=-1)[:, :k]
        sims, positions = np.take_along_axis(sims, order, axis=1), np.take_along_axis(positions, order, axis=1)
    else:
        sims, positions = _filtered_positions(channel.index, channel.vectors, channel.refine, queries, k, allowed)
    rows = np.where(positions >= 0, channel.rows[np.clip(positions, 0, None)], -1)
    return sims, rows


def _filtered_positions(
    index: faiss.Index,
    vectors: StoredVectors | StackedVectors,
    refine_by: int,
    queries: np.ndarray,
    k: int,
    allowed: PositionFilter,
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, positions) of one FAISS index's k best allowed positions (see
    `filtered_search`); positions -1 and similarity -inf past the end."""
    n = len(queries)
    k = max(1, min(k, len(allowed)))
    flat = isinstance(faiss.downcast_index(index), faiss.IndexFlat)
    if len(allowed) <= EXACT_FILTER_ROWS and not flat:
        return exact_search(vectors, queries, k, allowed.positions)
    depth = min(k * max(1, refine_by), len(allowed))
    try:
        sims, positions = index.search(queries, depth, params=_selector_params(index, allowed.selector()))
    except RuntimeError:  # a wrapper index that takes no selector: scan exactly
        sims, positions = np.zeros((n, k), np.float32), np.full((n, k), -1, np.int64)
    if refine_by > 1:
        sims, positions = refine(vectors, queries, positions, k)
    short = np.flatnonzero((positions < 0).any(axis=1))
    if len(short):
        sims[short], positions[short] = exact_search(vectors, queries[short], k, allowed.positions)
    return sims, positions


@dataclass
class ModalityIndex:
    """Vectors of one modality; `rows[i]` is the product row of vector i."""

    vectors: StoredVectors | StackedVectors
    rows: np.ndarray
    index: faiss.Index
    parts: tuple = ()  # the FAISS indexes an IndexShards searches: kept alive with it
    refine: int = 1  # > 1: ask the index for refine x k and keep the k best by stored vector

    def search(
        self, queries: np.ndarray, k: int, allowed: PositionFilter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, product rows) of the k nearest vectors; rows are -1 past the end.

        Cost: the FAISS index's (Flat O(N·d), HNSW ~O(efSearch·log N·d), IVF O(nprobe·N/nlist·d)),
        plus O(refine·k·d) per query to re-score the candidates with the stored vectors.
        With `allowed`, only those positions are returned (see `filtered_search`).
        """
        if allowed is not None:
            return filtered_search(self, queries, k, allowed)
        k = max(1, min(k, self.index.ntotal))
        if self.index.ntotal == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.refine > 1:
            _, candidates = self.index.search(queries, min(k * self.refine, self.index.ntotal))
            sims, positions = refine(self.vectors, queries, candidates, k)
        else:
            sims, positions = self.index.search(queries, k)
        rows = np.where(positions >= 0, self.rows[np.clip(positions, 0, None)], -1)
        return sims, rows

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def similarity(self, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Cosine similarity of one query to the vectors at `positions`."""
        return dot_rows(self.vectors, positions, query)
