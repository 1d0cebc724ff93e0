"""Why a prediction was decided `auto` or `review`, and the choices a reviewer is offered.

Reasons are facts read off the prediction (its vote share against the threshold, how the
neighbours split, which inputs it had), each as {code, text, params}: `code` is stable (pages
translate it), `text` is the English sentence, `params` the numbers in it. O(k) per prediction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from indexer.categorizer.vote import Neighbor, Prediction

SPLIT_SHARE = 0.2  # a runner-up category holding at least this share of the vote is worth saying
PATH_DEPTH = 3  # levels of a category path offered to a reviewer (as the vote's category_path)


def reason(code: str, text: str, **params: object) -> dict:
    return {"code": code, "text": text, "params": params}


def explain(prediction: Prediction, threshold: float | None) -> list[dict]:
    """The reasons for `prediction.decision`, most telling first."""
    out = []
    raw, conf = round(prediction.raw_confidence, 4), round(prediction.confidence, 4)
    if prediction.category is None:
        return [reason("no_neighbours", "no similar product in the catalogue to vote")]
    if threshold is None:
        out.append(
            reason("uncalibrated", "this index has no calibrated auto threshold: every listing waits for a reviewer")
        )
    elif prediction.decision == "auto":
        out.append(
            reason(
                "confident",
                f"vote share {raw:.2f} is at or above the auto threshold {threshold:.2f} "
                f"(calibrated confidence {conf:.2f})",
                share=raw,
                threshold=round(threshold, 4),
                confidence=conf,
            )
        )
    else:
        out.append(
            reason(
                "low_confidence",
                f"vote share {raw:.2f} is below the auto threshold {threshold:.2f} (calibrated confidence {conf:.2f})",
                share=raw,
                threshold=round(threshold, 4),
                confidence=conf,
            )
        )
    ranked = sorted(prediction.scores.items(), key=lambda kv: -kv[1])
    if len(ranked) > 1 and ranked[1][1] >= SPLIT_SHARE:
        (first, s1), (second, s2) = ranked[0], ranked[1]
        out.append(
            reason(
                "split_vote",
                f"similar products are split between {first} ({s1:.0%}) and {second} ({s2:.0%})",
                category=first,
                share=round(s1, 4),
                runner_up=second,
                runner_up_share=round(s2, 4),
            )
        )
    inputs = set(prediction.modalities)
    if "image" not in inputs:
        out.append(reason("no_photo", "no photo: the suggestion rests on the text alone"))
    elif not inputs & {"text", "lexical"}:
        out.append(reason("no_text", "no title or description: the suggestion rests on the photo alone"))
    return out


def top_choices(prediction: Prediction, n: int = 3) -> list[dict]:
    """The `n` best categories with a full path each: [{category, path, share}], best first.

    The first path is the vote's own; the others are extended level by level by their
    neighbours' similarity-weighted majority (as the vote extends its winner). Categories with
    no neighbour among the prediction's are left out."""
    ranked = [(c, s) for c, s in sorted(prediction.scores.items(), key=lambda kv: -kv[1]) if s > 0][:n]
    out = []
    for category, share in ranked:
        if category == prediction.category and prediction.category_path:
            path = list(prediction.category_path)
        else:
            path = majority_path(category, prediction.neighbors)
        out.append({"category": category, "path": path, "share": round(float(share), 4)})
    return out


def majority_path(category: str, neighbours: Sequence[Neighbor], depth: int = PATH_DEPTH) -> list[str]:
    """`category` extended by the neighbours of that category, level by level (weight: score)."""
    votes = [(max(n.score, 0.0), n.category_path) for n in neighbours if n.category == category]
    path = [category]
    for level in range(1, depth):
        tally: dict[str, float] = defaultdict(float)
        for weight, cp in votes:
            if len(cp) > level and list(cp[:level]) == path:
                tally[cp[level]] += weight + 1e-9
        if not tally:
            break
        path.append(max(tally, key=lambda c: tally[c]))
    return path
