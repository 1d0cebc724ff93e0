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

from indexer.categorizer.combiner import feature_row, scorer
from indexer.categorizer.exclusion import Exclusion, exclusion_block, exclusion_groups
from indexer.categorizer.kinds import PHOTO, PHOTO_TEXT, PLAIN, TEXT, QueryKind
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
    # the photo's and the text's own votes (category -> share) when the query has both
    channel_votes: dict[str, dict[str, float]] = field(default_factory=dict)
    # 1 - sum_c min(photo share, text share): 0 when both channels vote alike, 1 when they
    # vote for disjoint categories; None without both channels
    disagreement: float | None = None
    kind: str | None = None  # the query kind whose threshold decided (indexer.categorizer.kinds)
    top_similarity: float | None = None  # fused similarity of the nearest voting product
    purity: float | None = None  # share of the k voters (unweighted) in the chosen category
    # what the threshold of the kind applies to: the calibrated combiner's probability that the
    # category is right (indexer.categorizer.combiner), or the raw vote share without a combiner
    decision_score: float | None = None
    reasons: list[str] = field(default_factory=list)  # why it went to review, in plain words

    def public(self) -> dict:
        data = asdict(self)
        data["neighbors"] = [n.public() for n in self.neighbors]
        data["channel_votes"] = {
            channel: {c: round(v, 4) for c, v in sorted(votes.items(), key=lambda kv: -kv[1])[:3] if v > 0}
            for channel, votes in self.channel_votes.items()
        }
        if self.disagreement is not None:
            data["disagreement"] = round(self.disagreement, 4)
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
        # per query kind {"threshold": float | None, ...} (indexer.categorizer.protocol.fit); absent
        # (an index calibrated before kinds existed): the one threshold applies to every kind
        self.kinds: dict[str, dict] | None = merged.get("kinds")
        # the fitted disagreement rule {"threshold": float, ...}: a photo + text query whose channel
        # votes disagree at least this much goes to review
        self.disagreement: dict | None = merged.get("disagreement")
        # the calibrated combiner of the confidence features (indexer.categorizer.combiner), if fitted
        self.combiner: dict | None = merged.get("combiner")
        self._combiner_score = scorer(self.combiner) if self.combiner else None
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
                requests, asked = {}, {}
                for modality, q in searched.items():
                    ok = members[present_rows(q[members])]
                    if len(ok) == 0:
                        continue
                    positions = row_filter.channel(modality) if row_filter is not None else None
                    requests[modality], asked[modality] = (q[ok], depth + extra, positions), ok
                for modality, (_, rows) in self.store.search_channels(requests).items():
                    for i, r in zip(asked[modality], rows, strict=True):
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
        parts: dict[str, tuple[np.ndarray, np.ndarray, float]] | None = None,
        k: int | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Weighted mean of per-modality cosine similarities, over the modalities both sides have.
        `present` (per channel, which query rows carry it) saves recomputing it per query.
        `parts`, when given, receives per channel (similarities, rows having it, weight).

        With `k` (the top k the caller reads), a server store may first answer candidates its
        searches did not return with an upper bound instead of another round trip
        (`IndexStore.bounded_similarities`); the exact scores are asked only when a bound could
        enter a top k read from them (`_bounds_settle`): the result is the exact scores' either
        way, provided the bound holds (it does for an exhaustive search; an approximate index
        that missed a row may rank differently, as its search itself does). O(candidates)."""
        used = [m for m, q in queries.items() if (present[m][i] if present else present_rows(q[i].reshape(1, -1))[0])]
        where = {m: self.store.positions(m)[rows] for m in used}
        asked = {m: (queries[m][i], where[m][where[m] >= 0]) for m in used if not (full and m in full)}
        scored: dict[str, tuple[np.ndarray, np.ndarray | None]]
        if k is None:  # every channel's at once (a server backend asks them together)
            scored = {m: (s, None) for m, s in self.store.similarities(asked).items()}
        else:
            scored = self.store.bounded_similarities(asked)
        channel_parts = self._channel_parts(queries, i, used, where, full, scored)
        if k is not None and not self._bounds_settle(channel_parts, len(rows), k, votes=parts is not None):
            scored = {m: (s, None) for m, s in self.store.similarities(asked).items()}
            channel_parts = self._channel_parts(queries, i, used, where, full, scored)
        fused, _ = _weighted_mean(channel_parts, used, len(rows))
        if parts is not None:
            parts.update({m: (sims, has, w) for m, (sims, has, w, _) in channel_parts.items()})
        return fused, used

    def _channel_parts(
        self,
        queries: dict[str, np.ndarray],
        i: int,
        used: list[str],
        where: dict[str, np.ndarray],
        full: dict[str, np.ndarray] | None,
        scored: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    ) -> dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray | None]]:
        """Per channel (similarities of the candidates having it, which have it, weight, which
        similarities are upper bounds or None): the terms of `_weighted_mean`."""
        out = {}
        for modality in used:
            q, pos = queries[modality], where[modality]
            has = pos >= 0
            sims, loose = (full[modality][i, pos[has]], None) if full and modality in full else scored[modality]
            w = float(self.weights.get(modality, 1.0))
            if modality == "lexical":  # a query row's norm is its weight factor (LexicalIndex.query_rows)
                norm = float(np.sqrt(np.square(q[i].data).sum()))
                sims, w = sims / norm, w * norm
            out[modality] = (sims, has, w, loose)
        return out

    def _bounds_settle(
        self,
        parts: dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray | None]],
        n: int,
        k: int,
        votes: bool = True,
    ) -> bool:
        """True when no upper bound among the candidates' scores can enter a top k read from
        them: the fused ranking, and with `votes` (a prediction's, not a similar-product search's)
        the photo's and the text's own votes (`_channel_votes`). Then the top k are the exact
        scores' top k, with their exact scores. O(candidates)."""
        if not any(loose is not None and loose.any() for *_, loose in parts.values()):
            return True
        groups = [list(parts), *(_channel_vote_groups(parts) if votes else [])]
        return all(_top_k_exact(*_weighted_mean(parts, members, n), k) for members in groups)

    def predict_vectors(
        self,
        queries: Mapping[str, np.ndarray | None],
        k: int | None = None,
        exclude: Exclusion | None = None,
        with_neighbors: bool = True,
        allowed: RowFilter | None = None,
        kinds: Sequence[QueryKind] | None = None,
    ) -> list[Prediction]:
        """Predictions for n queries given per modality as (n, dim) arrays (None/NaN row = absent).
        `kinds` (one per query, `indexer.categorizer.kinds.describe`) choose the threshold each
        decision uses; without them a query is taken for a stored product's listing with the
        channels it carries (photo + text, text, photo).

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
            parts: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
            fused, used = self._fused_similarity(present, i, rows, full, has, parts, k)
            keep = np.isfinite(fused)
            top = np.argsort(-fused[keep], kind="stable")[:k]
            prediction = self._vote(rows[keep][top], fused[keep][top], used, with_neighbors)
            if prediction.category is not None:
                self._channel_votes(prediction, rows, parts, k)
            kind = kinds[i] if kinds is not None else None
            prediction.decision, prediction.reasons = self.decide_listing(prediction, kind)
            prediction.kind = kind.name if kind is not None else self._default_kind(used)
            out.append(prediction)
        return out

    def _channel_votes(
        self, prediction: Prediction, rows: np.ndarray, parts: dict[str, tuple[np.ndarray, np.ndarray, float]], k: int
    ) -> None:
        """The photo's and the text's own votes among the same candidates (the text vote weighs
        dense text and lexical as the fused one does), and how much they disagree. O(candidates)."""
        groups = _channel_vote_groups(parts)
        if not groups:
            return
        votes = {}
        for channel, members in zip(("photo", "text"), groups, strict=True):
            sims, _ = _weighted_mean({m: (*parts[m], None) for m in members}, members, len(rows))
            ok = np.isfinite(sims)
            if not ok.any():
                return
            sims = sims[ok]
            top = np.argsort(-sims, kind="stable")[:k]
            weights = np.exp((sims[top] - sims[top].max()) / self.temperature)
            votes[channel] = self._shares(self._labels_of(rows[ok][top]), weights)
        prediction.channel_votes = votes
        prediction.disagreement = float(1.0 - sum(min(votes["photo"][c], votes["text"][c]) for c in self.classes))

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
            fused, used = self._fused_similarity(present, i, rows, k=k)
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
        labels = self._labels_of(rows)  # once: the shares, the raw confidence, the path and the purity read them
        weights = np.exp((sims - sims.max()) / self.temperature)
        scores = self._shares(labels, weights)
        category = max(scores, key=lambda c: scores[c])
        raw = self._shares(labels, np.exp((sims - sims.max()) / self.confidence_temperature))[category]
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
            decision="review",  # predict_vectors decides once the query's kind is known
            scores={c: round(v, 6) for c, v in sorted(scores.items(), key=lambda kv: -kv[1])},
            category_path=self._deeper_path(category, rows, weights, labels),
            neighbors=neighbors,
            modalities=used,
            top_similarity=float(sims.max()),
            purity=float(sum(label == category for label in labels) / len(labels)),
        )

    def _neighbor(self, row: int, score: float, modality: str) -> Neighbor:
        p = self.store.products[row]
        return Neighbor(row, p.id, p.name, p.category, list(p.category_path[:3]), score, modality)

    def _labels_of(self, rows: np.ndarray) -> list[str]:
        """Top-level category of each row ("" = unlabelled): O(len(rows))."""
        classes = self._class_of_code[self._codes.take(rows)]
        return [self.classes[c] if c >= 0 else "" for c in classes]

    def _shares(self, labels: list[str], weights: np.ndarray) -> dict[str, float]:
        """Each category's share of the weights of the rows whose `labels` (`_labels_of`) these are."""
        votes: dict[str, float] = defaultdict(float)
        for w, label in zip(weights, labels, strict=True):
            if label:
                votes[label] += float(w)
        total = sum(votes.values()) or 1.0
        return {c: votes.get(c, 0.0) / total for c in self.classes}

    def _deeper_path(
        self, category: str, rows: np.ndarray, weights: np.ndarray, labels: list[str], depth: int = 3
    ) -> list[str]:
        """Extend the top-level category level by level with the neighbours' weighted majority."""
        votes = [
            (w, self.store.products[r].category_path)
            for w, r, label in zip(weights, rows, labels, strict=True)
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

    @staticmethod
    def _default_kind(used: Sequence[str]) -> str:
        """The kind of a query known only by its channels: a stored product's own listing."""
        photo, text = "image" in used, bool({"text", "lexical"} & set(used))
        return PHOTO_TEXT if photo and text else (TEXT if text else PHOTO)

    def disagreeing(self, prediction: Prediction) -> tuple[str, str] | None:
        """(the photo's top category, the text's) when photo and text disagree past the fitted
        disagreement rule, else None: what sends a listing to review as disagreeing."""
        gate = (self.disagreement or {}).get("threshold")
        votes = prediction.channel_votes
        if gate is None or prediction.disagreement is None or prediction.disagreement < gate:
            return None
        photo = max(votes["photo"], key=lambda c: votes["photo"][c])
        return photo, max(votes["text"], key=lambda c: votes["text"][c])

    def threshold_of(self, kind: str) -> float | None:
        """The threshold of a kind: its own when the calibration has kinds, else the one threshold."""
        if self.kinds is None:
            return self.threshold
        return (self.kinds.get(kind) or {}).get("threshold")

    def decide_listing(self, prediction: Prediction, kind: QueryKind | None = None) -> tuple[str, list[str]]:
        """("auto" | "review", reasons): auto only when the photo and the text agree (the fitted
        disagreement rule) and the confidence reaches the threshold of the query's kind."""
        if prediction.category is None:
            return "review", ["no indexed product is close enough to vote"]
        name = kind.name if kind is not None else self._default_kind(prediction.modalities)
        score = prediction.raw_confidence
        if self._combiner_score is not None:
            score = float(self._combiner_score(feature_row(prediction, name))[0])
        prediction.decision_score = score
        reasons = []
        split = self.disagreeing(prediction)
        if split is not None:
            photo, text = split
            if photo != text:
                reasons.append(f"the photo looks like {photo}, the text like {text}")
            else:
                reasons.append(f"the photo and the text do not agree enough on {photo}")
        threshold = self.threshold_of(name)
        if threshold is None:
            reasons.append(
                f"listings of this kind ({PLAIN.get(name, name)}) are not decided automatically: "
                "too little evidence to keep the promised precision"
            )
        elif score < threshold:
            reasons.append(
                f"the confidence {score:.2f} is below the {threshold:.2f} needed for a {PLAIN.get(name, name)}"
            )
        return ("review" if reasons else "auto"), reasons

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


def _channel_vote_groups(parts: Mapping[str, Any]) -> list[list[str]]:
    """The channels of the photo's and of the text's own votes (`Categorizer._channel_votes`),
    or none when the query lacks either side."""
    text = [m for m in ("text", "lexical") if m in parts]
    return [["image"], text] if "image" in parts and text else []


def _weighted_mean(
    parts: Mapping[str, tuple[np.ndarray, np.ndarray, float, np.ndarray | None]], members: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, loose) of n candidates: the weighted mean of `members`' similarities over the
    channels each candidate has (-inf where none), and which means hold an upper bound."""
    num = np.zeros(n, np.float64)
    den = np.zeros(n, np.float64)
    loose = np.zeros(n, bool)
    for m in members:
        sims, has, w, bound = parts[m]
        num[has] += w * sims
        den[has] += w
        if bound is not None:
            loose[np.flatnonzero(has)[bound]] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, -np.inf), loose


def _top_k_exact(scores: np.ndarray, loose: np.ndarray, k: int) -> bool:
    """True when the top k of `scores` hold no upper bound and none can enter them: at least k
    exact scores, and every bound below the k-th best of them. O(n)."""
    bounded = loose & np.isfinite(scores)
    if not bounded.any():
        return True
    exact = scores[np.isfinite(scores) & ~loose]
    if len(exact) < k:
        return False
    kth = np.partition(exact, len(exact) - k)[len(exact) - k]
    return bool((scores[bounded] < kth).all())
