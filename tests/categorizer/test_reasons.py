"""Why a prediction is auto or review (indexer.categorizer.reasons), and the reviewer's choices."""

from __future__ import annotations

from indexer.categorizer import Neighbor, Prediction, explain, top_choices
from indexer.categorizer.reasons import majority_path


def neighbour(i: int, path: tuple[str, ...], score: float) -> Neighbor:
    return Neighbor(i, f"p{i}", f"name {i}", path[0], list(path), score, "fused")


def prediction(raw: float, scores: dict, modalities=("image", "text", "lexical"), decision=None, threshold=0.8):
    neighbours = [
        neighbour(0, ("Watches", "Wrist Watches", "Sonata"), 0.95),
        neighbour(1, ("Watches", "Wrist Watches", "Titan"), 0.94),
        neighbour(2, ("Watches", "Clocks"), 0.90),
        neighbour(3, ("Baby Care", "Bath", "Towels"), 0.93),
        neighbour(4, ("Baby Care", "Feeding"), 0.80),
    ]
    best = max(scores, key=scores.get)
    return Prediction(
        category=best,
        confidence=raw - 0.05,
        raw_confidence=raw,
        decision=decision or ("auto" if raw >= threshold else "review"),
        scores=scores,
        category_path=["Watches", "Wrist Watches", "Sonata"] if best == "Watches" else [best],
        neighbors=neighbours,
        modalities=list(modalities),
    )


def codes(reasons):
    return [r["code"] for r in reasons]


def test_auto_says_the_share_is_over_the_threshold():
    reasons = explain(prediction(0.97, {"Watches": 0.97, "Baby Care": 0.03}), threshold=0.8)
    assert codes(reasons) == ["confident"]
    assert reasons[0]["params"] == {"share": 0.97, "threshold": 0.8, "confidence": 0.92}
    assert "0.97" in reasons[0]["text"] and "0.80" in reasons[0]["text"]


def test_review_names_the_threshold_the_split_and_the_missing_photo():
    p = prediction(0.55, {"Watches": 0.55, "Baby Care": 0.45}, modalities=("text", "lexical"))
    reasons = explain(p, threshold=0.8)
    assert codes(reasons) == ["low_confidence", "split_vote", "no_photo"]
    split = reasons[1]["params"]
    assert (split["category"], split["runner_up"]) == ("Watches", "Baby Care") and split["runner_up_share"] == 0.45


def test_a_small_runner_up_is_not_a_split_and_a_photo_alone_is_said():
    reasons = explain(prediction(0.7, {"Watches": 0.9, "Baby Care": 0.1}, modalities=("image",)), threshold=0.8)
    assert codes(reasons) == ["low_confidence", "no_text"]


def test_an_uncalibrated_index_reviews_everything_and_says_so():
    p = prediction(0.99, {"Watches": 1.0}, decision="review")
    assert codes(explain(p, threshold=None)) == ["uncalibrated"]


def test_no_neighbour_means_nothing_voted():
    empty = Prediction(None, 0.0, 0.0, "review", {}, [], [], ["text"])
    assert codes(explain(empty, threshold=0.8)) == ["no_neighbours"]
    assert top_choices(empty) == []


def test_top_choices_give_a_full_path_per_category_best_first():
    p = prediction(0.6, {"Watches": 0.6, "Baby Care": 0.4, "Computers": 0.0})
    top = top_choices(p)
    assert [t["category"] for t in top] == ["Watches", "Baby Care"]  # no share, no choice
    assert top[0]["path"] == ["Watches", "Wrist Watches", "Sonata"]  # the vote's own path
    assert top[1]["path"] == ["Baby Care", "Bath", "Towels"]  # the heavier neighbour decides each level
    assert majority_path("Watches", p.neighbors) == ["Watches", "Wrist Watches", "Sonata"]
