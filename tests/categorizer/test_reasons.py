"""Why a prediction is auto or review (indexer.categorizer.reasons), and the reviewer's choices.

The reasons are checked against the Categorizer's own decision rule (`decide_listing`, on a
store made of a product list): each code says the rule that sent the listing to review."""

from __future__ import annotations

from pathlib import Path

from indexer.catalog import Product
from indexer.categorizer import Categorizer, Neighbor, Prediction, explain, top_choices
from indexer.categorizer.kinds import describe
from indexer.categorizer.reasons import majority_path
from indexer.store import IndexStore

PATHS = [("Watches", "Wrist Watches"), ("Baby Care", "Bath"), ("Computers", "Laptops")]


def categorizer(threshold=0.8, kinds=None, gate=0.5) -> Categorizer:
    products = [Product(f"p{i}", f"name {i}", "", None, None, PATHS[i % 3], None) for i in range(6)]
    params = {"threshold": threshold, "kinds": kinds, "disagreement": {"threshold": gate} if gate else None}
    store = IndexStore(Path("."), "mem", {"profile": "test", "categorizer": params}, products)
    return Categorizer(store)


def neighbour(i: int, path: tuple[str, ...], score: float) -> Neighbor:
    return Neighbor(i, f"p{i}", f"name {i}", path[0], list(path), score, "fused")


def predict(cat: Categorizer, raw: float, scores: dict, modalities=("image", "text", "lexical"), votes=None, kind=None):
    """A prediction decided by `cat`'s own rule, as predict_vectors decides it."""
    neighbours = [
        neighbour(0, ("Watches", "Wrist Watches", "Sonata"), 0.95),
        neighbour(1, ("Watches", "Wrist Watches", "Titan"), 0.94),
        neighbour(2, ("Watches", "Clocks"), 0.90),
        neighbour(3, ("Baby Care", "Bath", "Towels"), 0.93),
        neighbour(4, ("Baby Care", "Feeding"), 0.80),
    ]
    best = max(scores, key=scores.get)
    p = Prediction(
        category=best,
        confidence=raw - 0.05,
        raw_confidence=raw,
        decision="review",
        scores=scores,
        category_path=["Watches", "Wrist Watches", "Sonata"] if best == "Watches" else [best],
        neighbors=neighbours,
        modalities=list(modalities),
    )
    if votes is not None:
        p.channel_votes = votes
        p.disagreement = 1.0 - sum(min(votes["photo"].get(c, 0), votes["text"].get(c, 0)) for c in scores)
    p.decision, p.reasons = cat.decide_listing(p, kind)
    p.kind = kind.name if kind is not None else cat._default_kind(p.modalities)
    return p


def codes(reasons):
    return [r["code"] for r in reasons]


def test_auto_says_the_confidence_reaches_the_threshold_of_the_kind():
    cat = categorizer(threshold=0.8)
    p = predict(cat, 0.97, {"Watches": 0.97, "Baby Care": 0.03})
    reasons = explain(p, cat)
    assert p.decision == "auto" and codes(reasons) == ["confident"]
    assert reasons[0]["params"] == {"score": 0.97, "threshold": 0.8, "kind": "photo+text"}


def test_review_names_the_threshold_the_split_and_the_missing_photo():
    cat = categorizer(threshold=0.8)
    p = predict(cat, 0.55, {"Watches": 0.55, "Baby Care": 0.45}, modalities=("text", "lexical"))
    reasons = explain(p, cat)
    assert p.decision == "review" and codes(reasons) == ["low_confidence", "split_vote", "no_photo"]
    assert reasons[0]["text"] == p.reasons[0]  # the categorizer's own sentence
    assert reasons[0]["params"]["kind"] == "text" and reasons[0]["params"]["threshold"] == 0.8
    split = reasons[1]["params"]
    assert (split["category"], split["runner_up"]) == ("Watches", "Baby Care") and split["runner_up_share"] == 0.45


def test_a_photo_and_a_text_that_disagree_are_said_with_both_categories():
    cat = categorizer(threshold=0.5, gate=0.5)
    votes = {"photo": {"Watches": 0.9, "Baby Care": 0.1}, "text": {"Watches": 0.1, "Baby Care": 0.9}}
    p = predict(cat, 0.9, {"Watches": 0.6, "Baby Care": 0.4}, votes=votes)
    reasons = explain(p, cat)
    assert p.decision == "review" and codes(reasons)[0] == "photo_text_disagree"
    assert reasons[0]["params"] == {"photo": "Watches", "text": "Baby Care"}


def test_a_kind_without_a_threshold_and_an_uncalibrated_index_say_so():
    cat = categorizer(threshold=0.8, kinds={"photo+text": {"threshold": 0.8}, "title": {"threshold": None}})
    title = describe("analog watch for men", None, photo=False)
    p = predict(cat, 0.99, {"Watches": 1.0}, modalities=("text", "lexical"), kind=title)
    assert p.decision == "review" and codes(explain(p, cat))[:1] == ["kind_not_automatic"]
    bare = categorizer(threshold=None, gate=None)
    p = predict(bare, 0.99, {"Watches": 1.0})
    assert p.decision == "review" and codes(explain(p, bare)) == ["uncalibrated"]


def test_a_small_runner_up_is_not_a_split_and_a_photo_alone_is_said():
    cat = categorizer(threshold=0.8)
    p = predict(cat, 0.7, {"Watches": 0.9, "Baby Care": 0.1}, modalities=("image",))
    assert codes(explain(p, cat)) == ["low_confidence", "no_text"]


def test_no_neighbour_means_nothing_voted():
    cat = categorizer()
    empty = Prediction(None, 0.0, 0.0, "review", {}, [], [], ["text"])
    empty.decision, empty.reasons = cat.decide_listing(empty)
    assert codes(explain(empty, cat)) == ["no_neighbours"]
    assert top_choices(empty) == []


def test_top_choices_give_a_full_path_per_category_best_first():
    p = predict(categorizer(), 0.6, {"Watches": 0.6, "Baby Care": 0.4, "Computers": 0.0})
    top = top_choices(p)
    assert [t["category"] for t in top] == ["Watches", "Baby Care"]  # no share, no choice
    assert top[0]["path"] == ["Watches", "Wrist Watches", "Sonata"]  # the vote's own path
    assert top[1]["path"] == ["Baby Care", "Bath", "Towels"]  # the heavier neighbour decides each level
    assert majority_path("Watches", p.neighbors) == ["Watches", "Wrist Watches", "Sonata"]
