"""Query kinds, finite-sample thresholds, the disagreement rule and the combiner (issue 18).

Each test pins a behaviour whose loss would break the per-kind promise: the kind names, the
language rule, the fixed-sequence threshold and what it guarantees, the mismatch rule, the
decision's reasons, and that every simulated listing is answered without its own product.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from indexer.categorizer import kinds, thresholds
from indexer.categorizer import protocol as calibration
from indexer.categorizer.listings import build_listings, listing_material, partners_for
from indexer.categorizer.vote import Categorizer
from tests.categorizer.test_categorizer import basis, make_store, unit


# ---- kinds --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("title", "description", "photo", "name"),
    [
        ("Steel coffee mug with handle", "A large mug for the office", True, kinds.PHOTO_TEXT),
        ("Steel coffee mug with handle", "", True, kinds.PHOTO_TITLE),
        ("", "", True, kinds.PHOTO),
        ("Steel coffee mug with handle", "A large mug for the office", False, kinds.TEXT),
        ("Steel coffee mug with handle", "", False, kinds.TITLE),
        ("Coffee mug", "", False, kinds.SHORT_TITLE),
        ("Robe froncée rose pour bébé fille avec des manches courtes", "", False, kinds.FOREIGN_TITLE),
        ("Robe froncée rose pour bébé fille avec des manches courtes", "", True, kinds.PHOTO_FOREIGN),
    ],
)
def test_describe_names_the_kind(title, description, photo, name):
    kind = kinds.describe(title, description, photo)
    assert kind.name == name
    assert kind.public()["name"] == name and kind.public()["description"] == kinds.PLAIN[name]


def test_language_rule_keeps_unsure_texts_english():
    assert kinds.detect_language("Robe froncée rose pour bébé fille, idéale pour l'été")[0] == "fr"
    assert kinds.detect_language("1234 !!")[0] is None
    language, probability = kinds.detect_language("Alisha Solid Women's Cycling Shorts")
    assert language == "en" and probability is not None


# ---- finite-sample threshold ---------------------------------------------------------------
def test_finite_sample_threshold_by_hand():
    """300 right answers at 0.99 and above, then errors: the threshold is where the binomial
    test at 1 - target still rejects, and it stops at the first failure (fixed sequence)."""
    conf = np.r_[np.full(300, 0.995), np.full(50, 0.6)]
    ok = np.r_[np.ones(300, bool), np.zeros(50, bool)]
    d = thresholds.finite_sample_threshold(conf, ok, 0.99, delta=0.1)
    # the lowest grid threshold that still accepts only the 300 (0.605: the grid steps by 0.005)
    assert d["threshold"] == pytest.approx(0.605) and d["accepted"] == 300 and d["errors"] == 0
    assert binom.cdf(0, 300, 0.01) <= 0.1  # 0.049: the p-value that allowed it
    few = thresholds.finite_sample_threshold(conf[:100], ok[:100], 0.99, delta=0.1)
    assert few["threshold"] is None  # 100 right answers cannot show 99 % at 90 % confidence
    assert binom.cdf(0, 100, 0.01) > 0.1


def test_finite_sample_threshold_is_stricter_than_the_empirical_one():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=2000)
    ok = rng.uniform(size=2000) < 0.9 + 0.1 * conf  # precision rises with confidence
    empirical = calibration.choose_threshold(conf, ok, 0.97)["threshold"]
    safe = thresholds.finite_sample_threshold(conf, ok, 0.97, delta=0.1)["threshold"]
    assert empirical is not None and safe is not None and safe > empirical


def test_finite_sample_threshold_holds_its_promise_in_simulation():
    """Over many calibration draws, the chosen threshold's true precision falls below the target
    in at most about delta of them (here the true precision at t is 0.95 + 0.05 t)."""
    rng = np.random.default_rng(1)
    target, delta, misses = 0.98, 0.2, 0
    for _ in range(200):
        conf = rng.uniform(size=800)
        ok = rng.uniform(size=800) < 0.95 + 0.05 * conf
        t = thresholds.finite_sample_threshold(conf, ok, target, delta)["threshold"]
        if t is not None and 0.95 + 0.05 * (1 + t) / 2 < target:  # true precision of conf >= t
            misses += 1
    assert misses <= 200 * delta


def test_disagreement_rule_sends_the_target_share_to_review():
    rng = np.random.default_rng(2)
    mismatched = rng.uniform(0.3, 1.0, size=1000)
    genuine = rng.uniform(0.0, 0.5, size=1000)
    rule = thresholds.disagreement_rule(genuine, mismatched, target=0.95, delta=0.1)
    assert rule["mismatched_to_review"] >= 0.95
    bound = thresholds.upper_bound(int((mismatched < rule["threshold"]).sum()), 1000, 0.1)
    assert bound <= 0.05
    assert thresholds.disagreement_rule(genuine, np.zeros(0))["threshold"] is None


# ---- the decision and its reasons -----------------------------------------------------------
def two_channel_store():
    """X products look like basis 0 in both channels, Y like basis 1."""
    labels = ["X"] * 5 + ["Y"] * 5
    image = np.stack([basis(0 if c == "X" else 1, 0.05, i) for i, c in enumerate(labels)])
    text = np.stack([basis(2 if c == "X" else 3, 0.05, 20 + i) for i, c in enumerate(labels)])
    return make_store(labels, {"image": image, "text": text})


def test_disagreeing_channels_go_to_review_with_a_reason():
    store = two_channel_store()
    params = {"kinds": {k: {"threshold": 0.0} for k in kinds.KINDS}, "disagreement": {"threshold": 0.5}}
    categorizer = Categorizer(store, params)
    agree = {"image": basis(0)[None, :], "text": basis(2)[None, :]}
    clash = {"image": basis(0)[None, :], "text": basis(3)[None, :]}  # an X photo, a Y text
    p = categorizer.predict_vectors(agree)[0]
    assert p.decision == "auto" and p.disagreement < 0.5 and not p.reasons
    q = categorizer.predict_vectors(clash)[0]
    assert q.disagreement > 0.5 and q.decision == "review"
    assert q.reasons[0] == "the photo looks like X, the text like Y"
    assert max(q.channel_votes["photo"], key=q.channel_votes["photo"].get) == "X"


def test_a_kind_without_threshold_goes_to_review_and_says_so():
    store = two_channel_store()
    params = {"kinds": {kinds.PHOTO_TEXT: {"threshold": 0.0}, kinds.PHOTO: {"threshold": None}}}
    categorizer = Categorizer(store, params)
    p = categorizer.predict_vectors({"image": basis(0)[None, :]})[0]
    assert p.kind == kinds.PHOTO and p.decision == "review"
    assert "not decided automatically" in p.reasons[0] and "photo alone" in p.reasons[0]
    french = kinds.describe("Robe froncée rose pour bébé fille avec des manches courtes", "", True)
    q = categorizer.predict_vectors({"image": basis(0)[None, :], "text": basis(2)[None, :]}, kinds=[french])[0]
    assert q.kind == kinds.PHOTO_FOREIGN and q.decision == "review"
    legacy = Categorizer(store, {"threshold": 0.5}).predict_vectors({"image": basis(0)[None, :]})[0]
    assert legacy.decision == "auto"  # an index calibrated before kinds: the one threshold for all


# ---- simulated listings ---------------------------------------------------------------------
def test_mismatched_listings_pair_other_categories():
    labels = np.array(["X", "X", "Y", "Z"])
    partners = partners_for(labels, np.arange(4), seed=0)
    assert all(labels[p] != labels[i] for i, p in enumerate(partners))
    assert (partners_for(np.array(["X", "X"]), np.arange(2), 0) == -1).all()


def test_listings_of_every_stored_sort_and_fit_gives_each_kind_an_entry():
    store = two_channel_store()
    material = listing_material(store, None)
    assert set(material.sorts()) == {"photo+text", "text", "photo", "mismatched"}
    built = build_listings(store, "mismatched", np.arange(10), material, seed=0)
    labels = store.labels()
    assert built is not None and (labels[built.partners] != labels[built.rows]).all()
    assert set(built.queries) == {"image", "text"}
    fitted = calibration.fit(
        store, np.ones(10, bool), np.arange(10), calibration.FUSED, grid=calibration.PARAM_GRID[:1]
    )
    assert set(fitted.entry["kinds"]) == set(kinds.KINDS)
    assert fitted.entry["kinds"][kinds.TITLE]["n"] == 0 and fitted.entry["kinds"][kinds.TITLE]["threshold"] is None
    assert fitted.entry["disagreement"]["n_mismatched"] == 10
    assert fitted.entry["threshold_rule"]["delta"] == thresholds.DELTA
    assert set(fitted.inner_listings) == {"photo+text", "text", "photo", "mismatched"}
    assert not fitted.inner_listings["mismatched"]["correct"].any()  # no right answer exists


def test_combiner_scores_are_probabilities_and_learn_the_signal():
    from indexer.categorizer import combiner

    rng = np.random.default_rng(4)
    features = rng.normal(size=(400, len(combiner.FEATURES) + len(kinds.KINDS)))
    correct = features[:, 1] + 0.3 * rng.normal(size=400) > 0
    model = combiner.fit_combiner(features, correct)
    assert model is not None
    s = combiner.score(model, features)
    assert ((s >= 0) & (s <= 1)).all() and s[correct].mean() > s[~correct].mean() + 0.3
    crossed, ensemble = combiner.cross_fitted(features, correct, np.arange(400) % 4)
    assert np.isfinite(crossed).all() and not np.allclose(crossed, s)
    assert ensemble is not None and len(ensemble["models"]) == 4
    members = np.mean([combiner.score(m, features) for m in ensemble["models"]], axis=0)
    assert combiner.score(ensemble, features) == pytest.approx(members)
    assert combiner.fit_combiner(features, np.ones(400, bool)) is None
    _ = unit  # shared helper import kept for other tests
