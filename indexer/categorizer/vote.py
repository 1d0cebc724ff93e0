"""Categorizer: similarity-weighted k-NN vote over the index, fusing image and text.

Used unchanged by the service (one query at a time) and by the evaluation (cross-
validation over the whole index), so the figures in the report are the service's.
Like a scikit-learn classifier it exposes `predict`; its parameters and its
auto/review threshold live in the index manifest (`categorizer` key).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from indexer.categorizer.exclusion import Exclusion, exclusion_block, exclusion_groups
from indexer.encoders.base import encode_text_queries
from indexer.store.base import IndexStore
from indexer.store.filters import RowFilter
from indexer.store.lexical import DEFAULT_LEXICAL_SCALING, LexicalIndex, present_rows

if TYPE_CHECKING:
    from PIL import Image

    from indexer.encoders import Encoder

SIMILARITY_BUDGET = 20_000_000  # floats (80 MB) for one channel's batch similarity matrix

DEFAULT_PARAMS: dict[str, Any] = {
    # k, candidates and both temperatures are frozen: the nested protocol does not re-select
    # them (they were picked earlier on non-nested folds; bench/bench_categorizer.py prints
    # the alternatives under the nested protocol). The sharp vote picks the category; the
    # softer one ranks how sure it is.
    "k": 10,
    "candidates": 50,
    "temperature": 0.02,
    "confidence_temperature": 0.05,
    # image / dense text / lexical text: the first candidate of indexer.categorizer.protocol.PARAM_GRID;
    # the build (and each training part of the evaluation) selects the weights from that grid.
    # The lexical channel is used when the index has one.
    "weights": {"image": 0.2, "text": 0.4, "lexical": 0.4},
    "threshold": None,
    "calibration": None,
}


@dataclass
class Neighbor:
    row: int
    id: str
    name: str
    category: str | None
    category_path: list[str]
    score: float
    modality: str

    def public(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "category_path": self.category_path,
            "score": round(self.score, 4),
            "modality": self.modality,
        }


@dataclass
class Prediction:
    category: str | None
    confidence: float
    raw_confidence: float
    decision: str
    scores: dict[str, float]
    category_path: list[str]
    neighbors: list[Neighbor] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)

    def public(self) -> dict:
        data = asdict(self)
        data["neighbors"] = [n.public() for n in self.neighbors]
        return data


class Categorizer:
    """k-NN vote; `params` default to the manifest's `categorizer` entry."""

    def __init__(self, store: IndexStore, params: Mapping[str, Any] | None = None) -> None:
        self.store = store
        merged = dict(DEFAULT_PARAMS)
        merged.update(store.manifest.get("categorizer", {}) or {})
        merged.update(params or {})
        self.params = merged
        self.k = int(merged["k"])
        self.temperature = float(merged["temperature"])
        self.confidence_temperature = float(merged["confidence_temperature"])
        self.weights = dict(merged["weights"])
        self.threshold: float | None = merged["threshold"]
        self.calibration: dict[str, list[float]] | None = merged["calibration"]
        self.candidates = int(merged["candidates"])
        # the vote reads category codes of its k neighbours, not a Python label per product:
        # O(categories) here per loaded store, O(k) per query
        self._codes = store.category_codes()
        self.classes = store.categories()
        self._class_of_code = self._codes.top_of_code(self.classes)
        self._channels = store.channels()

    # ---- core vote -----------------------------------------------------------------------
    def _candidates(
        self,
        queries: dict[str, np.ndarray],
        k: int,
        exclude: Exclusion | None,
        allowed: RowFilter | None = None,
        full: dict[str, np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Union of each channel's nearest allowed rows per query (the fused ranking is exact within it).

        Two routes to the same rows. With a batch similarity matrix (`full`, as in cross-
        validation) a channel's candidates are its top rows among those `exclude` allows, read
        from the matrix: O(n_queries x n_channel). Otherwise filters run inside each channel's
        search (FAISS IDSelector, masked postings), so the depth stays `candidates` whatever the
        filter excludes: `exclude` becomes one filter per fold (a FoldExclusion: O(N) per fold;
        a dense (n, N) mask: per distinct row, O(n·N/8) to group), and `allowed.skip` rows cost
        len(skip) extra depth. Deleted products are kept out of both routes (`store.live_filter`,
        and their columns of the matrix).
        """
        n = next(iter(queries.values())).shape[0]
        depth = max(self.candidates, k)
        found: list[list[np.ndarray]] = [[] for _ in range(n)]
        from_matrix = {m for m in queries if full and m in full and allowed is None}
        for modality in from_matrix:
            assert full is not None
            channel = self._channels[modality]
            ok = np.flatnonzero(present_rows(queries[modality]))
            if len(ok) == 0 or channel.ntotal == 0:
                continue
            sims = full[modality][ok]
            if exclude is not None:
                sims = np.where(exclusion_block(exclude, ok, channel.rows), -np.inf, sims)
            gone = self.store.deleted_positions(modality)
            if len(gone):
                sims[:, gone] = -np.inf  # `sims` is a copy: fancy indexing above
            d = min(depth, sims.shape[1])
            top = np.argpartition(-sims, d - 1, axis=1)[:, :d]
            finite = np.isfinite(np.take_along_axis(sims, top, axis=1))
            for i, t, f in zip(ok, top, finite, strict=True):
                found[i].append(channel.rows[t[f]])
        searched = {m: q for m, q in queries.items() if m not in from_matrix}
        if searched:
            groups = exclusion_groups(self.store, exclude) if exclude is not None else [(np.arange(n), allowed)]
            for members, group_filter in groups:
                row_filter = self.store.live_filter(group_filter)
                extra = len(row_filter.skip) if row_filter is not None else 0
                for modality, q in searched.items():
                    ok = members[present_rows(q[members])]
                    if len(ok) == 0:
                        continue
                    positions = row_filter.channel(modality) if row_filter is not None else None
                    _, rows = self._channels[modality].search(q[ok], depth + extra, positions)
                    for i, r in zip(ok, rows, strict=True):
                        r = r[r >= 0]
                        found[i].append(row_filter.drop_skipped(r) if row_filter is not None else r)
        return [np.unique(np.concatenate(f)) if f else np.zeros(0, np.int64) for f in found]

    def _all_similarities(self, queries: dict) -> dict[str, np.ndarray]:
        """Query x index similarity matrices, one matrix product per channel, when they fit
        SIMILARITY_BUDGET floats (batches such as cross-validation); else per-query gathers."""
        out = {}
        for modality, q in queries.items():
            channel = self._channels[modality]
            if q.shape[0] * channel.ntotal > SIMILARITY_BUDGET or q.shape[0] < 2:
                continue
            if modality == "lexical":
                out[modality] = (q @ channel.matrix.T).toarray()
            else:
                out[modality] = np.nan_to_num(q) @ channel.vectors.T
        return out

    def _fused_similarity(
        self,
        queries: dict[str, np.ndarray],
        i: int,
        rows: np.ndarray,
        full: dict[str, np.ndarray] | None = None,
        present: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Weighted mean of per-modality cosine similarities, over the modalities both sides have.
        `present` (per channel, which query rows carry it) saves recomputing it per query."""
        num = np.zeros(len(rows), np.float64)
        den = np.zeros(len(rows), np.float64)
        used = []
        for modality, q in queries.items():
            has_query = present[modality][i] if present else present_rows(q[i].reshape(1, -1))[0]
            if not has_query:
                continue
            used.append(modality)
            pos = self.store.positions(modality)[rows]
            has = pos >= 0
            if full and modality in full:
                sims = full[modality][i, pos[has]]
            else:
                sims = self._channels[modality].similarity(q[i], pos[has])
            w = float(self.weights.get(modality, 1.0))
            if modality == "lexical":  # a query row's norm is its weight factor (LexicalIndex.query_rows)
                norm = float(np.sqrt(np.square(q[i].data).sum()))
                sims, w = sims / norm, w * norm
            num[has] += w * sims
            den[has] += w
        with np.errstate(invalid="ignore", divide="ignore"):
            fused = np.where(den > 0, num / den, -np.inf)
        return fused, used

    def predict_vectors(
        self,
        queries: Mapping[str, np.ndarray | None],
        k: int | None = None,
        exclude: Exclusion | None = None,
        with_neighbors: bool = True,
        allowed: RowFilter | None = None,
    ) -> list[Prediction]:
        """Predictions for n queries given per modality as (n, dim) arrays (None/NaN row = absent).

        Neighbours are ranked by the weighted mean of image and text cosine similarity
        (similarity-level fusion: measured better than voting per modality then mixing
        the votes), then vote with weights exp((sim - best) / temperature).
        `exclude` masks index rows a query may not use, as an (n, n_products) bool array or
        an O(n + N) FoldExclusion: cross-validation passes its held-out fold so no product
        votes for itself or its twins.
        """
        k = int(k or self.k)
        present = self._present(queries)
        full = self._all_similarities(present)
        candidates = self._candidates(present, k, exclude, allowed, full)
        has = {m: present_rows(q) for m, q in present.items()}
        out = []
        for i, rows in enumerate(candidates):
            fused, used = self._fused_similarity(present, i, rows, full, has)
            keep = np.isfinite(fused)
            rows, fused = rows[keep], fused[keep]
            top = np.argsort(-fused, kind="stable")[:k]
            out.append(self._vote(rows[top], fused[top], used, with_neighbors))
        return out

    def neighbors(
        self,
        queries: Mapping[str, object],
        k: int | None = None,
        exclude: Exclusion | None = None,
        allowed: RowFilter | None = None,
    ) -> list[list[Neighbor]]:
        """The k most similar products per query, ranked by the same fused similarity
        the vote uses (similar-product search). `allowed` (e.g. a category filter from
        `store.category_index()`) restricts every query inside the search; `exclude`
        (n, N) masks rows per query."""
        k = int(k or self.k)
        present = self._present(queries)
        out = []
        for i, rows in enumerate(self._candidates(present, k, exclude, allowed)):
            fused, used = self._fused_similarity(present, i, rows)
            keep = np.isfinite(fused)
            rows, fused = rows[keep], fused[keep]
            top = np.argsort(-fused, kind="stable")[:k]
            dense = [m for m in used if m != "lexical"]
            modality = "fused" if len(dense) > 1 else (dense[0] if dense else "lexical")
            out.append([self._neighbor(int(r), float(f), modality) for r, f in zip(rows[top], fused[top], strict=True)])
        return out

    def _present(self, queries: Mapping[str, Any]) -> dict[str, Any]:
        present = {
            m: (q.tocsr() if sp.issparse(q) else np.asarray(q, dtype=np.float32).reshape(q.shape[0], -1))
            for m, q in queries.items()
            if q is not None and m in self._channels and float(self.weights.get(m, 1.0)) > 0
        }
        if not present:
            raise ValueError("a query needs at least one of: " + ", ".join(self.store.modalities))
        return present

    def _vote(self, rows: np.ndarray, sims: np.ndarray, used: list[str], with_neighbors: bool) -> Prediction:
        if len(rows) == 0:
            return Prediction(None, 0.0, 0.0, "review", {}, [], [], used)
        weights = np.exp((sims - sims.max()) / self.temperature)
        scores = self._shares(rows, weights)
        category = max(scores, key=lambda c: scores[c])
        raw = self._shares(rows, np.exp((sims - sims.max()) / self.confidence_temperature))[category]
        dense = [m for m in used if m != "lexical"]
        modality = "fused" if len(dense) > 1 else (dense[0] if dense else "lexical")
        neighbors = (
            [self._neighbor(int(r), float(s), modality) for r, s in zip(rows, sims, strict=True)]
            if with_neighbors
            else []
        )
        return Prediction(
            category=category,
            confidence=self.calibrated(raw),
            raw_confidence=raw,
            decision=self.decide(raw),
            scores={c: round(v, 6) for c, v in sorted(scores.items(), key=lambda kv: -kv[1])},
            category_path=self._deeper_path(category, rows, weights),
            neighbors=neighbors,
            modalities=used,
        )

    def _neighbor(self, row: int, score: float, modality: str) -> Neighbor:
        p = self.store.products[row]
        return Neighbor(row, p.id, p.name, p.category, list(p.category_path[:3]), score, modality)

    def _labels_of(self, rows: np.ndarray) -> list[str]:
        """Top-level category of each row ("" = unlabelled): O(len(rows))."""
        classes = self._class_of_code[self._codes.take(rows)]
        return [self.classes[c] if c >= 0 else "" for c in classes]

    def _shares(self, rows: np.ndarray, weights: np.ndarray) -> dict[str, float]:
        votes: dict[str, float] = defaultdict(float)
        for w, label in zip(weights, self._labels_of(rows), strict=True):
            if label:
                votes[label] += float(w)
        total = sum(votes.values()) or 1.0
        return {c: votes.get(c, 0.0) / total for c in self.classes}

    def _deeper_path(self, category: str, rows: np.ndarray, weights: np.ndarray, depth: int = 3) -> list[str]:
        """Extend the top-level category level by level with the neighbours' weighted majority."""
        votes = [
            (w, self.store.products[r].category_path)
            for w, r, label in zip(weights, rows, self._labels_of(rows), strict=True)
            if label == category
        ]
        path = [category]
        for level in range(1, depth):
            tally: dict[str, float] = defaultdict(float)
            for w, cp in votes:
                if len(cp) > level and list(cp[:level]) == path:
                    tally[cp[level]] += float(w)
            if not tally:
                break
            path.append(max(tally, key=lambda c: tally[c]))
        return path

    # ---- confidence and decision ---------------------------------------------------------
    def calibrated(self, raw: float) -> float:
        """Raw vote share mapped to cross-validated precision (isotonic fit stored in the manifest)."""
        cal = self.calibration
        if not cal:
            return float(raw)
        return float(np.interp(raw, cal["x"], cal["y"]))

    def decide(self, raw: float) -> str:
        if self.threshold is None:
            return "review"
        return "auto" if raw >= self.threshold else "review"

    def predict_rows(
        self,
        rows: np.ndarray,
        exclude: Exclusion | None = None,
        k: int | None = None,
        modalities: tuple[str, ...] = ("image", "text"),
    ) -> list[Prediction]:
        """Predict indexed products from their stored vectors (no re-encoding).

        Asking for "text" also brings the lexical channel when the index has one, as a
        text query to the service does.
        """
        if "text" in modalities and "lexical" not in modalities:
            modalities = (*modalities, "lexical")
        queries = stored_queries(self.store, rows, modalities)
        return self.predict_vectors(queries, k=k, exclude=exclude, with_neighbors=False)


def stored_queries(
    store: IndexStore, rows: np.ndarray | Sequence[int], channels: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Queries made of indexed products' own stored vectors, per channel the index has:
    dense rows are NaN and lexical rows empty where a product lacks that channel."""
    rows = np.asarray(rows, dtype=np.int64)
    queries: dict[str, Any] = {}
    for channel, index in store.channels().items():
        if channels is not None and channel not in channels:
            continue
        pos = store.positions(channel)[rows]
        has = pos >= 0
        if channel == "lexical":
            queries[channel] = (sp.diags(has.astype(np.float32)) @ index.row_matrix(np.maximum(pos, 0))).tocsr()
        else:
            out = np.full((len(rows), index.vectors.shape[1]), np.nan, np.float32)
            out[has] = index.vectors[pos[has]]
            queries[channel] = out
    return queries


def query_channels(
    store: IndexStore,
    encoder: Encoder,
    images: Sequence[Image.Image | None] | None = None,
    texts: Sequence[str] | None = None,
    lexical_scaling: str = DEFAULT_LEXICAL_SCALING,
    lexical: LexicalIndex | None = None,
) -> dict[str, Any]:
    """Every channel's query for raw inputs: the one way service and tools encode a query.

    `images` are RGB PIL images (None entries allowed), `texts` already joined title +
    description (use `query_text`); both lists, same length when both given. Texts take
    the encoder's query role (`encode_text_queries`); the lexical row is weighted by
    `lexical_scaling` (see indexer.store.lexical). `lexical` replaces the index's lexical
    channel (an evaluation fold's own vocabulary).
    """
    queries: dict = {}
    n = len(images) if images is not None else len(texts or [])
    if images is not None and any(im is not None for im in images):
        out = np.full((n, encoder.dims["image"]), np.nan, np.float32)
        idx = [i for i, im in enumerate(images) if im is not None]
        out[idx] = encoder.encode_images([im for im in images if im is not None])
        queries["image"] = out
    if texts is not None and any(texts):
        out = np.full((n, encoder.dims["text"]), np.nan, np.float32)
        idx = [i for i, t in enumerate(texts) if t]
        out[idx] = encode_text_queries(encoder, [texts[i] for i in idx])
        queries["text"] = out
        lexical = lexical if lexical is not None else store.lexical
        if lexical is not None:
            queries["lexical"] = lexical.query_rows([t or "" for t in texts], lexical_scaling)
    return queries


def query_text(store: IndexStore, title: str | None, description: str | None) -> str:
    """A seller's title + description normalised exactly as the index's products were."""
    from indexer.catalog.text import encoder_text

    return encoder_text(title or "", description or "", strip=store.strip_boilerplate())
