"""The Categorizer and its fitting protocol on tiny in-memory stores where the answer is known.

Each test pins one behaviour a broken Categorizer would lose (fold masking, the threshold,
the calibration map, the channel weights, the lexical channel, lexical refitting inside
the training part, grouping over every channel). `make mutate` runs these against mutants.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.catalog.products import Product
from indexer.categorizer import protocol as calibration
from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.store.lexical import LexicalIndex
from indexer.store.local.index import IndexStore, ModalityIndex, make_faiss_index

DIM = 8


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def basis(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    v += np.random.default_rng(seed).normal(0, noise, DIM).astype(np.float32) if noise else 0
    return unit(v)


def make_store(
    labels: list[str],
    channels: dict[str, np.ndarray],
    texts: list[str] | None = None,
) -> IndexStore:
    """Products with the given labels; `channels[m]` one vector per product (NaN row = absent);
    `texts` adds a lexical channel fitted on them (and is what `product_text` returns)."""
    texts = texts or [f"item {i}" for i in range(len(labels))]
    products = [
        Product(id=f"p{i}", name=t, description="", brand=None, price=None, category_path=(c, f"{c} sub"), image=None)
        for i, (c, t) in enumerate(zip(labels, texts, strict=True))
    ]
    modalities = {}
    for m, matrix in channels.items():
        matrix = np.asarray(matrix, np.float32)
        present = ~np.isnan(matrix).any(axis=1)
        vecs = np.ascontiguousarray(matrix[present])
        modalities[m] = ModalityIndex(vecs, np.flatnonzero(present), make_faiss_index(vecs))
    manifest = {"profile": "test", "modalities": sorted(channels), "text_normalisation": {"strip_boilerplate": False}}
    store = IndexStore(Path("."), "mem", manifest, products, modalities)
    return store


def with_lexical(store: IndexStore, texts: list[str]) -> IndexStore:
    rows = np.arange(len(texts))
    lexical = LexicalIndex.fit(texts, rows)
    return IndexStore(store.path, store.version, store.manifest, store.products, store.modalities, lexical)


# ---- decision and calibration -----------------------------------------------------------
def two_cluster_store() -> IndexStore:
    labels = ["X"] * 4 + ["Y"] * 4
    vecs = np.stack([basis(0, 0.05, i) for i in range(4)] + [basis(1, 0.05, 10 + i) for i in range(4)])
    return make_store(labels, {"text": vecs})


def test_threshold_moves_a_decision():
    store = two_cluster_store()
    assert Categorizer(store, {"threshold": 0.5}).decide(0.6) == "auto"
    assert Categorizer(store, {"threshold": 0.5}).decide(0.4) == "review"
    assert Categorizer(store, {"threshold": 0.7}).decide(0.6) == "review"
    assert Categorizer(store, {"threshold": None}).decide(1.0) == "review"
    query = {"text": basis(0, 0.01, 99)[None, :]}
    sure = Categorizer(store, {"threshold": 0.5}).predict_vectors(query)[0]
    assert sure.category == "X" and sure.raw_confidence > 0.5 and sure.decision == "auto"
    strict = Categorizer(store, {"threshold": 1.01}).predict_vectors(query)[0]
    assert strict.decision == "review"


def test_calibration_maps_the_raw_share():
    store = two_cluster_store()
    cal = {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.1, 0.3]}
    categorizer = Categorizer(store, {"calibration": cal})
    assert categorizer.calibrated(0.5) == pytest.approx(0.1)
    assert categorizer.calibrated(0.75) == pytest.approx(0.2)
    assert Categorizer(store, {"calibration": None}).calibrated(0.75) == pytest.approx(0.75)
    p = categorizer.predict_vectors({"text": basis(0, 0.01, 99)[None, :]})[0]
    assert p.confidence == pytest.approx(float(np.interp(p.raw_confidence, cal["x"], cal["y"])))
    assert p.confidence < p.raw_confidence


def test_fit_calibration_is_monotone_and_observed():
    conf = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 1.0])
    ok = np.array([False, False, True, True, True, True])
    cal = calibration.fit_calibration(conf, ok, points=11)
    assert cal["y"] == sorted(cal["y"])
    assert cal["y"][0] == pytest.approx(0.0) and cal["y"][-1] == pytest.approx(1.0)


def test_choose_threshold_by_hand():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    ok = np.array([True, True, True, False, True, False])
    d = calibration.choose_threshold(conf, ok, 0.99)
    assert d["threshold"] == pytest.approx(0.7) and d["coverage"] == pytest.approx(0.5)
    assert calibration.choose_threshold(conf, ok, 0.75)["threshold"] == pytest.approx(0.5)
    assert calibration.choose_threshold(conf, ~ok, 0.99)["threshold"] is None


# ---- channel weights and the lexical channel -------------------------------------------
def conflicting_channels_store() -> IndexStore:
    """Product 0 (X) matches the query's image, product 1 (Y) the query's text."""
    labels = ["X", "Y"]
    image = np.stack(
        [unit([0.95, np.sqrt(1 - 0.95**2), 0, 0, 0, 0, 0, 0]), unit([0.1, 0, np.sqrt(0.99), 0, 0, 0, 0, 0])]
    )
    text = np.stack(
        [unit([0.3, 0, 0, np.sqrt(1 - 0.09), 0, 0, 0, 0]), unit([0.9, 0, 0, 0, np.sqrt(1 - 0.81), 0, 0, 0])]
    )
    return make_store(labels, {"image": image, "text": text})


def test_weights_change_the_ranking():
    store = conflicting_channels_store()
    query = {"image": basis(0)[None, :], "text": basis(0)[None, :]}
    # equal weights: X (0.95 + 0.3) / 2 beats Y (0.1 + 0.9) / 2
    assert Categorizer(store, {"weights": {"image": 0.5, "text": 0.5}}).predict_vectors(query)[0].category == "X"
    text_heavy = Categorizer(store, {"weights": {"image": 0.1, "text": 0.9}}).predict_vectors(query)[0]
    assert text_heavy.category == "Y"
    image_heavy = Categorizer(store, {"weights": {"image": 0.9, "text": 0.1}}).predict_vectors(query)[0]
    assert image_heavy.category == "X"


def test_predict_rows_uses_the_lexical_channel():
    """Dense text says X, the words say Y: with the lexical channel weighted, predict_rows says Y."""
    labels = ["X", "X", "Y", "Y", "Y"]
    dense = np.stack([basis(0, 0.01, 1), basis(0, 0.01, 2), basis(1, 0.01, 3), basis(1, 0.01, 4), basis(0, 0.01, 5)])
    texts = ["alpha beta", "alpha gamma", "dohar quilt", "dohar blanket", "dohar quilt blanket"]
    store = with_lexical(make_store(labels, {"text": dense}, texts), texts)
    params = {"weights": {"text": 0.1, "lexical": 0.9}, "k": 2}
    exclude = np.eye(5, dtype=bool)
    p = Categorizer(store, params).predict_rows(np.array([4]), exclude=exclude[[4]], modalities=("text",))[0]
    assert "lexical" in p.modalities
    assert p.category == "Y"
    dense_only = Categorizer(store, {"weights": {"text": 1.0, "lexical": 0.0}, "k": 2})
    assert dense_only.predict_rows(np.array([4]), exclude=exclude[[4]], modalities=("text",))[0].category == "X"


# ---- fold masking -------------------------------------------------------------------------
def twin_store() -> tuple[IndexStore, np.ndarray]:
    """Twins 0 and 1 (X, identical vectors) sit next to the Y cluster; folds keep them together."""
    y_centre = basis(1)
    twin = unit(y_centre + 0.35 * basis(0))
    rows = [twin, twin]  # 0, 1: X twins
    rows += [unit(y_centre + 0.05 * basis(2 + i % 4, 0.0)) for i in range(6)]  # 2..7: Y
    rows += [unit(basis(0) + 0.05 * basis(4 + i % 3)) for i in range(6)]  # 8..13: X
    labels = ["X", "X"] + ["Y"] * 6 + ["X"] * 6
    folds = np.array([0, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0])
    return make_store(labels, {"text": np.stack(rows)}), folds


def test_cross_val_masks_the_whole_fold_not_only_the_product():
    store, folds = twin_store()
    preds = calibration.cross_val_predictions(Categorizer(store), folds, modalities=("text",))
    assert preds[0].category == "Y"  # leave-one-out would let twin 1 vote: X
    loo = Categorizer(store).predict_rows(np.array([0]), exclude=np.eye(14, dtype=bool)[[0]], modalities=("text",))
    assert loo[0].category == "X"  # the premise: the twin decides when it is not masked


def test_nested_prediction_uses_only_training_rows():
    store, folds = twin_store()
    groups = np.array([0, 0] + list(range(1, 13)))
    runs = calibration.nested_predictions(store, folds, groups, {"text": ("text",)}, grid=calibration.PARAM_GRID[:1])
    run = runs["text"]
    assert run.predictions[0].category == "Y" and run.predictions[1].category == "Y"
    assert len(run.fits) == 2 and all(p is not None for p in run.predictions)
    for fitted, f in zip(run.fits, (0, 1), strict=True):
        assert not fitted.train[folds == f].any() and fitted.train[folds != f].all()


def test_predict_excludes_rows_outside_training():
    store, folds = twin_store()
    groups = np.array([0, 0] + list(range(1, 13)))
    train = folds == 1
    fitted = calibration.fit(store, train, groups, ("text",), grid=calibration.PARAM_GRID[:1])
    preds = calibration.predict(fitted, np.flatnonzero(folds == 0))
    assert preds[0].category == "Y"  # its twin is outside the training part
    for p in preds:
        assert p.raw_confidence <= 1.0


def test_inner_cv_masks_the_inner_fold():
    """Inside fit, the twins are in one inner fold: their inner predictions may not use each other."""
    store, _ = twin_store()
    groups = np.array([0, 0] + list(range(1, 13)))
    fitted = calibration.fit(store, np.ones(14, bool), groups, ("text",), grid=calibration.PARAM_GRID[:1])
    assert fitted.entry["cv"]["folds"] >= 2
    assert not fitted.inner_correct[0] and not fitted.inner_correct[1]  # both predicted Y


def test_fit_selects_weights_from_the_grid_by_inner_accuracy():
    store = conflicting_store_for_selection()
    groups = np.arange(len(store.products))
    grid = (
        {"weights": {"image": 1.0, "text": 0.0, "lexical": 0.0}},
        {"weights": {"image": 0.0, "text": 1.0, "lexical": 0.0}},
    )
    fitted = calibration.fit(store, np.ones(len(store.products), bool), groups, ("image", "text"), grid=grid)
    assert fitted.entry["weights"] == grid[1]["weights"]  # text separates the classes, image does not
    accs = [s["inner_accuracy"] for s in fitted.entry["cv"]["selection"]]
    assert accs[1] > accs[0]


def conflicting_store_for_selection() -> IndexStore:
    rng = np.random.default_rng(0)
    n = 20
    labels = ["X" if i % 2 else "Y" for i in range(n)]
    image = np.stack([unit(rng.normal(size=DIM)) for _ in range(n)])  # noise
    text = np.stack([basis(0 if i % 2 else 1, 0.1, i) for i in range(n)])
    return make_store(labels, {"image": image, "text": text})


# ---- lexical refit inside the training part -----------------------------------------------
def test_training_view_fits_the_vocabulary_on_training_texts_only():
    texts = ["red mug ceramic", "red mug coffee", "zebra print cushion", "blue cushion soft"]
    labels = ["K", "K", "H", "H"]
    store = with_lexical(make_store(labels, {"text": np.stack([basis(i) for i in range(4)])}, texts), texts)
    train = np.array([True, True, False, True])
    view = calibration.training_view(store, train)
    vocab = view.lexical.vectorizer.vocabulary_
    assert "zebra" not in vocab and "mug" in vocab and "zebra" in store.lexical.vectorizer.vocabulary_
    assert view.lexical.matrix.shape[0] == 4  # every product transformed with the training vocabulary
    assert calibration.training_view(store, np.ones(4, bool)) is store  # deployment: the build's own fit
    # idf from training texts: "cushion" is in 1 of 3 training texts, not 2 of 4
    idf = view.lexical.vectorizer.idf_[vocab["cushion"]]
    assert idf == pytest.approx(np.log((1 + 3) / (1 + 1)) + 1)


def test_lexical_fit_mask_is_checked():
    with pytest.raises(ValueError, match="shape"):
        LexicalIndex.fit(["a b", "c d"], np.arange(2), fit_mask=np.array([True]))
    with pytest.raises(ValueError, match="no text"):
        LexicalIndex.fit(["a b", "c d"], np.arange(2), fit_mask=np.array([False, False]))


# ---- grouping over every channel ----------------------------------------------------------
def test_lexical_near_duplicates_are_grouped():
    texts = ["prithish ceramic mug red", "prithish ceramic mug red", "steel bottle", "wall clock"]
    vecs = np.stack([basis(i) for i in range(4)])  # dense vectors all orthogonal
    store = with_lexical(make_store(["K", "K", "K", "H"], {"text": vecs}, texts), texts)
    groups = calibration.near_duplicate_groups(store)
    assert groups[0] == groups[1] and groups[2] != groups[0]
    dense_only = calibration.near_duplicate_groups(store, {"text": 0.9})
    assert dense_only[0] != dense_only[1]


def test_calibrate_is_the_fit_on_every_row():
    store, _ = twin_store()
    entry = calibration.calibrate(store)
    assert set(entry) >= {"weights", "threshold", "calibration", "cv"}
    assert entry["cv"]["selection"] and entry["weights"] in [g["weights"] for g in calibration.PARAM_GRID]
    frozen = calibration.calibrate(store, params={"weights": {"text": 1.0}})
    assert frozen["weights"] == {"text": 1.0}
    tiny = make_store(["X"], {"text": basis(0)[None, :]})
    assert calibration.calibrate(tiny)["threshold"] is None


# ---- honesty debts (issue 18): each of these failed on the code before it -------------------
def test_choose_threshold_never_cuts_inside_tied_confidences():
    """Three predictions tie at 0.8 and one of them is wrong: a cut after the first two would
    report precision 1.0, but the threshold 0.8 accepts all three (precision 2/3)."""
    conf = np.array([0.9, 0.8, 0.8, 0.8, 0.5])
    ok = np.array([True, True, True, False, True])
    d = calibration.choose_threshold(conf, ok, 0.99)
    assert d["threshold"] == pytest.approx(0.9) and d["coverage"] == pytest.approx(0.2)
    accepted = conf >= d["threshold"]
    assert accepted.mean() == pytest.approx(d["coverage"]) and ok[accepted].mean() >= 0.99


def test_raw_confidence_is_the_share_at_the_confidence_temperature():
    """The vote picks with `temperature`, the confidence is the winner's share at
    `confidence_temperature`: with a soft confidence temperature they differ."""
    labels = ["X", "X", "Y", "Y"]
    vecs = np.stack([basis(0), unit(basis(0) + 0.3 * basis(2)), unit(basis(0) + 0.45 * basis(1)), basis(1)])
    store = make_store(labels, {"text": vecs})
    params = {"k": 4, "temperature": 0.02, "confidence_temperature": 0.5, "weights": {"text": 1.0}}
    p = Categorizer(store, params).predict_vectors({"text": basis(0)[None, :]})[0]
    sims = np.array([n.score for n in p.neighbors])
    cats = np.array([n.category for n in p.neighbors])
    soft = np.exp((sims - sims.max()) / 0.5)
    sharp = np.exp((sims - sims.max()) / 0.02)
    assert p.category == "X"
    assert p.raw_confidence == pytest.approx(soft[cats == "X"].sum() / soft.sum(), rel=1e-5)
    assert abs(p.raw_confidence - sharp[cats == "X"].sum() / sharp.sum()) > 0.05  # the mutant's value


def lexical_twin_store() -> tuple[IndexStore, np.ndarray]:
    """Ten products, texts with words only their own inner fold holds: the vocabulary decides."""
    rng = np.random.default_rng(3)
    labels = ["X"] * 6 + ["Y"] * 6
    texts = [f"{'mug' if c == 'X' else 'cushion'} home word{i} extra{i % 3}" for i, c in enumerate(labels)]
    dense = np.stack([unit(rng.normal(size=DIM)) for _ in labels])
    store = with_lexical(make_store(labels, {"text": dense}, texts), texts)
    return store, np.arange(len(labels))


def test_inner_cv_refits_the_lexical_vocabulary_per_inner_fold():
    """Each inner prediction equals a prediction by a model whose vocabulary never saw the inner
    fold's texts, as the held-out fold's prediction is made (before: one vocabulary for all)."""
    store, groups = lexical_twin_store()
    train = np.ones(len(groups), bool)
    grid = ({"weights": {"text": 0.05, "lexical": 0.95}, "k": 6, "confidence_temperature": 0.2},)
    fitted = calibration.fit(store, train, groups, ("text",), grid=grid)
    assert len(fitted.inner_rows) == len(groups)
    params = {k: v for k, v in fitted.entry.items() if k != "cv"}
    for i in np.unique(fitted.inner_folds):
        members = fitted.inner_rows[fitted.inner_folds == i]
        allowed = ~np.isin(np.arange(len(groups)), members)
        view = calibration.training_view(store, allowed)
        assert not any(f"word{m}" in view.lexical.vectorizer.vocabulary_ for m in members)
        exclude = calibration.FoldExclusion(np.zeros(len(members), np.int64), allowed=allowed)
        expected = Categorizer(view, params).predict_rows(members, exclude=exclude, modalities=("text",))
        got = fitted.inner_confidence[fitted.inner_folds == i]
        assert got == pytest.approx([p.raw_confidence for p in expected])
    leaky = Categorizer(store, params).predict_rows(
        fitted.inner_rows, exclude=calibration.FoldExclusion(fitted.inner_folds, row_fold=fitted.inner_folds)
    )
    gap = np.abs(fitted.inner_confidence - [p.raw_confidence for p in leaky]).max()
    assert gap > 1e-3  # the refit matters here: one vocabulary for every inner fold scores otherwise


def bounded_store(n: int = 240, seed: int = 5) -> IndexStore:
    """n products in 4 categories, every one with a photo, a text and its lexical row; the photo
    and text vectors agree only loosely (independent noise), so each channel's own top candidates
    differ."""
    rng = np.random.default_rng(seed)
    labels = [("A", "B", "C", "D")[i % 4] for i in range(n)]
    centres = {m: rng.normal(size=(4, DIM)) for m in ("image", "text")}
    channels = {
        m: np.stack([unit(centres[m][i % 4] + rng.normal(0, 0.5, DIM)) for i in range(n)]) for m in ("image", "text")
    }
    words = {c: [f"{c.lower()}word{j}" for j in range(12)] for c in "ABCD"}
    texts = [" ".join(rng.choice(words[c], 4)) + f" common{i % 7}" for i, c in enumerate(labels)]
    return with_lexical(make_store(labels, channels, texts), texts)


def bound_like_a_server(store: IndexStore, depth: int, floor: str, asked: list) -> None:
    """Make `store.bounded_similarities` answer as the Milvus channels do: a candidate among the
    channel's own top `depth` for the query keeps its exact score, any other gets an upper bound,
    the depth-th score (`floor="search"`, the search memo's floor) or 1.0 (`"one"`, the loosest
    a cosine allows). `asked` records each exact scoring (the server's second round)."""
    exact_scores = store.similarities

    def similarities(requests):
        asked.append(sorted(requests))
        return exact_scores(requests)

    def bounded(requests):
        out = {}
        for m, (q, positions) in requests.items():
            exact = exact_scores({m: (q, positions)})[m]
            if m == "lexical":  # scored in process on every backend: never bounded
                out[m] = (exact, None)
                continue
            sims, rows = store.channels()[m].search(q.reshape(1, -1), depth)
            loose = ~np.isin(store.channels()[m].rows[positions], rows[0])
            bound = float(sims[0].min()) if floor == "search" else 1.0
            out[m] = (np.where(loose, np.float32(bound), exact), loose)
        return out

    store.similarities = similarities  # type: ignore[method-assign]
    store.bounded_similarities = bounded  # type: ignore[method-assign]


def prediction_facts(p) -> tuple:
    return (
        p.category,
        p.scores,
        [(n.row, n.score) for n in p.neighbors],
        p.channel_votes,
        p.disagreement,
        p.decision,
        p.category_path,
    )


@pytest.mark.parametrize("floor", ["search", "one"])
def test_bounded_scores_give_the_exact_predictions_and_skip_the_second_round_when_they_can(floor):
    """A server store answers candidates its searches did not return with an upper bound; the
    Categorizer asks their exact scores only when a bound could enter a top k it reads (the
    fused vote, the photo's and the text's own votes, the similar products). Whatever the bound,
    predictions and neighbours equal the exact scores' ones; with the search's own floor most
    queries need no second round, with a bound of 1.0 every one does."""
    exact_store, store = bounded_store(), bounded_store()
    asked: list = []
    cat = Categorizer(store)
    bound_like_a_server(store, cat.candidates, floor, asked)
    exact = Categorizer(exact_store)
    rows = list(range(0, 240, 3))
    for r in rows:
        q = stored_queries(store, [r])
        assert prediction_facts(cat.predict_vectors(q)[0]) == prediction_facts(exact.predict_vectors(q)[0])
        got, want = cat.neighbors(q, k=5)[0], exact.neighbors(q, k=5)[0]
        assert [(n.row, n.score) for n in got] == [(n.row, n.score) for n in want]
    second_rounds = len(asked)
    if floor == "one":
        assert second_rounds == 2 * len(rows)  # a prediction and a neighbour search per query
    else:
        assert 0 < second_rounds < len(rows) // 2, second_rounds


def test_a_deeper_memo_settles_more_predictions_with_the_same_answers():
    """A server channel that remembers more rows per search than the candidates it returns
    (`MilvusChannel.bound_depth`) knows more candidates' exact scores and bounds the others by a
    lower floor: fewer predictions need the second round, and they stay the exact ones."""
    exact = Categorizer(bounded_store())
    rows = list(range(0, 240, 3))
    want = [prediction_facts(exact.predict_vectors(stored_queries(exact.store, [r]))[0]) for r in rows]
    rounds = {}
    for depth in (50, 120):
        store, asked = bounded_store(), []
        cat = Categorizer(store)
        bound_like_a_server(store, depth, "search", asked)
        got = [prediction_facts(cat.predict_vectors(stored_queries(store, [r]))[0]) for r in rows]
        assert got == want
        rounds[depth] = len(asked)
    assert rounds[120] < rounds[50] / 2, rounds


def test_a_bound_that_could_enter_a_channels_own_vote_needs_the_exact_scores():
    """Eleven candidates scored exactly and one whose dense text score is only bounded (0.9):
    its fused score cannot reach the top 10 (its photo scores 0), but its text vote (dense text
    and lexical) could, and that vote sets the disagreement, so the bounds do not settle; with
    a bound of 0.3 they do, and with fewer exact candidates than k they cannot."""
    cat = Categorizer(bounded_store())
    n, everyone = 12, np.ones(12, bool)

    def parts(text_bound: float, k_exact: int = 11) -> dict:
        image = np.r_[np.full(11, 0.9), 0.0]
        text = np.r_[np.full(11, 0.5), text_bound]
        loose = np.r_[np.zeros(11, bool), True]
        loose[k_exact:11] = True
        return {
            "image": (image, everyone, 1.0, None),
            "text": (text, everyone, 1.0, loose),
            "lexical": (np.full(n, 0.5), everyone, 1.0, None),
        }

    assert not cat._bounds_settle(parts(0.9), n, 10)
    assert cat._bounds_settle(parts(0.3), n, 10)
    assert not cat._bounds_settle(parts(0.3, k_exact=9), n, 10)
    assert cat._bounds_settle({m: (*p[:3], None) for m, p in parts(0.9).items()}, n, 10)
