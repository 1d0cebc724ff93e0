"""Why a prediction was decided `auto` or `review`, and the choices a reviewer is offered.

Reasons are facts read off the prediction (the categorizer's own rule: photo and text agreement,
the confidence against the threshold of the listing's kind; then how the neighbours split and
which inputs it had), each as {code, text, params}: `code` is stable (pages translate it), `text`
is the English sentence, `params` the numbers and names in it. O(k) per prediction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from indexer.categorizer.kinds import PLAIN
from indexer.categorizer.vote import Categorizer, Neighbor, Prediction

SPLIT_SHARE = 0.2  # a runner-up category holding at least this share of the vote is worth saying
PATH_DEPTH = 3  # levels of a category path offered to a reviewer (as the vote's category_path)


def reason(code: str, sentence: str, **params: object) -> dict:
    return {"code": code, "text": sentence, "params": params}


def explain(prediction: Prediction, categorizer: Categorizer) -> list[dict]:
    """The reasons for `prediction.decision`, most telling first: the categorizer's own rule
    (`Categorizer.decide_listing`: the photo and the text must agree, the confidence must reach the
    threshold of the listing's kind) as codes with their numbers, then what else is worth saying
    (a split vote, a missing photo or text). The English `text` of a review reason is the
    categorizer's own sentence."""
    if prediction.category is None:
        said = prediction.reasons[0] if prediction.reasons else "no similar product in the catalogue to vote"
        return [reason("no_neighbours", said)]
    kind = prediction.kind or ""
    plain = PLAIN.get(kind, kind)
    score = prediction.decision_score if prediction.decision_score is not None else prediction.raw_confidence
    score = round(float(score), 4)
    threshold = categorizer.threshold_of(kind) if kind else categorizer.threshold
    out = []
    if prediction.decision == "auto":
        text = f"confidence {score:.2f} reaches the {threshold or 0:.2f} needed for a {plain}"
        out.append(reason("confident", text, score=score, threshold=round(threshold or 0.0, 4), kind=kind))
    else:
        sentences = iter(prediction.reasons)
        split = categorizer.disagreeing(prediction)
        if split is not None:
            photo, text_vote = split
            if photo != text_vote:
                default = f"the photo looks like {photo}, the text like {text_vote}"
                out.append(reason("photo_text_disagree", next(sentences, default), photo=photo, text=text_vote))
            else:
                default = f"the photo and the text do not agree enough on {photo}"
                out.append(reason("weak_agreement", next(sentences, default), category=photo))
        if threshold is None:
            if categorizer.threshold is None and categorizer.kinds is None:
                out.append(
                    reason(
                        "uncalibrated",
                        "this index has no calibrated auto threshold: every listing waits for a reviewer",
                    )
                )
            else:
                default = f"listings of this kind ({plain}) are not decided automatically"
                out.append(reason("kind_not_automatic", next(sentences, default), kind=kind))
        elif score < threshold:
            default = f"the confidence {score:.2f} is below the {threshold:.2f} needed for a {plain}"
            out.append(
                reason(
                    "low_confidence", next(sentences, default), score=score, threshold=round(threshold, 4), kind=kind
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
