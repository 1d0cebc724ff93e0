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

Filters: a category filter runs inside the search through a FAISS IDSelector (only the
allowed ids are scored and returned), so the search no longer asks for depth + excluded
rows. On HNSW or IVF, small allowed sets are scanned exactly instead, and a search that
returns fewer than k allowed rows (a selective filter starves the graph or lists) falls back to the
exact scan, so a filter returns k rows whenever k exist.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from .filters import PositionFilter

if TYPE_CHECKING:
    from .segments import StackedVectors
    from .store import ModalityIndex

DEFAULT_SEARCH_PARAMS = {"nprobe": 16, "efSearch": 64}
ENVIRONMENT = {"nprobe": "FAISS_NPROBE", "efSearch": "FAISS_EF_SEARCH"}
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


def apply_search_params(index: faiss.Index, params: Mapping[str, int]) -> dict[str, int]:
    """Set nprobe on an IVF index and efSearch on an HNSW one (O(1)); returns what applied."""
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
    vectors: np.ndarray | StackedVectors, queries: np.ndarray, k: int, positions: np.ndarray | None = None
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
    scanned exactly. A store with delta segments (an IndexShards) is scanned exactly,
    O(|allowed|·d), until compaction folds its deltas into the base.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(queries)
    k = max(1, min(k, len(allowed)))
    if len(allowed) == 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    flat = isinstance(faiss.downcast_index(channel.index), faiss.IndexFlat)
    segmented = isinstance(channel.index, faiss.IndexShards)  # base + deltas: selector ids are per shard
    if segmented or (len(allowed) <= EXACT_FILTER_ROWS and not flat):
        sims, positions = exact_search(channel.vectors, queries, k, allowed.positions)
    else:
        try:
            sims, positions = channel.index.search(
                queries, k, params=_selector_params(channel.index, allowed.selector())
            )
        except RuntimeError:  # a wrapper index that takes no selector: scan exactly
            sims, positions = np.zeros((n, k), np.float32), np.full((n, k), -1, np.int64)
        short = np.flatnonzero((positions < 0).any(axis=1))
        if len(short):
            sims[short], positions[short] = exact_search(channel.vectors, queries[short], k, allowed.positions)
    rows = np.where(positions >= 0, channel.rows[np.clip(positions, 0, None)], -1)
    return sims, rows
