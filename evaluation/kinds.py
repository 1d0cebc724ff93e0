"""Per kind of listing: what is decided automatically, how safely (the report's kinds section).

Every figure is nested (`indexer.categorizer.protocol.nested_predictions` with listings): in each
outer fold the Categorizer, its combiner, its disagreement rule and its per-kind thresholds are
fitted on the training part only, from listings simulated from training products (titles,
photos, short titles, other languages, mismatched photo + title), and the held-out fold's
products are then listed the same ways and answered by that fit. A hand-written query in
another language is calibrated on only when its product is a training product, and reported
only when its product is held out, so no reported query helps choose anything.

Three decision rules are scored on the same held-out listings, so what each step earns is
measured rather than assumed:
- "deployed": combiner score + finite-sample (Learn-then-Test) threshold per kind + the
  disagreement rule: what the service does;
- "raw share, finite-sample": the same without the combiner (thresholds on the raw vote share);
- "combiner, empirical": the combiner score with the former empirical cut (lowest threshold whose
  inner cross-fitted precision reaches the target, `choose_threshold`), per kind, with the
  disagreement rule: what the combiner earns without the finite-sample margin;
- "raw share, empirical": the former rule on the raw vote share, per kind, with the disagreement rule.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from evaluation.crossval import spread
from indexer.categorizer import DELTA, KINDS, PLAIN, SORTS, Fitted, ListingMaterial, combiner_score, listing_material
from indexer.store import IndexStore

# The rows of the table: the listings a seller sends (issue 18), by how they were simulated.
SORT_LABELS = {
    "photo+text": "photo + English title and description",
    "text": "English title and description, no photo",
    "title": "English title only",
    "short title": "short title (first 3 words)",
    "photo": "photo only",
    "photo+title": "photo + English title",
    "foreign": "other-language title (hand-written fr / es)",
    "photo+foreign": "photo + other-language title",
    "mismatched": "one product's photo with another category's title",
}
RULES = ("deployed", "raw share, finite-sample", "combiner, empirical", "raw share, empirical")
# Shown beside the deployed rule on the report's first screen: the empirical cut per kind on the raw
# vote share (with the disagreement rule), right on average only.
EMPIRICAL = "raw share, empirical"


def report_material(store: IndexStore, queries_path: str | Path | None, cache_dir: Path) -> ListingMaterial:
    """Encoded titles, short titles and the hand-written queries for the listings; stored sorts
    only when the index's encoder cannot be built here. Encodings are cached in `cache_dir`."""
    from indexer.encoders import EncoderUnavailable, create_encoder_for
    from indexer.store import IndexMismatch, check_compatible

    try:
        encoder = create_encoder_for(store.manifest)
        check_compatible(store.manifest, encoder)
    except (EncoderUnavailable, IndexMismatch, ValueError):
        return listing_material(store, None)
    foreign: list[tuple[str, str, str]] = []
    if queries_path is not None:
        from .crosslingual import load_queries

        foreign = [(q.product_id, q.title, q.description) for q in load_queries(queries_path)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    own = [Path(store.path) / "cache.sqlite"]  # the build's calibration encoded the names there
    return listing_material(store, encoder, foreign=foreign, cache=cache_dir / "listings.sqlite", read_from=own)


def _gate(found: dict, cut: float | None) -> np.ndarray:
    """True where the disagreement rule lets the listing through."""
    if cut is None:
        return np.ones(len(found["rows"]), bool)
    return ~(np.nan_to_num(found["disagreement"], nan=-1.0) >= cut)


def _decisions(found: dict, fitted: Fitted, rule: str) -> np.ndarray:
    """Auto (True) per held-out listing under `rule`, with the fold's own fit (its thresholds were
    all chosen on its inner listings, `protocol.fit_kinds`)."""
    if rule == "deployed":
        return found["auto"]
    entry = fitted.entry
    passes = _gate(found, (entry.get("disagreement") or {}).get("threshold"))
    chosen = entry["cv"].get("raw_share_kinds") or {}
    key = {"raw share, finite-sample": "threshold", "raw share, empirical": "empirical"}.get(rule, "combiner_empirical")
    thresholds = {k: (v or {}).get(key) for k, v in chosen.items()}
    t = np.array([thresholds.get(k) if thresholds.get(k) is not None else np.inf for k in found["kind"]])
    if rule == "combiner, empirical":
        if not entry.get("combiner") or not len(t):
            return np.zeros(len(t), bool)
        return passes & (combiner_score(entry["combiner"], found["features"]) >= t)
    return passes & (found["confidence"] >= t)


def kinds_table(cv: dict, target: float, name: str = "fused") -> dict:
    """Per sort of listing and decision rule: accuracy, auto coverage and precision (pooled per
    seed, mean ± sd over seeds, range over folds), folds below target, the share of mismatched
    listings sent to review, and how the listings were routed to kinds."""
    runs = [r[name] for r in cv["runs"] if name in r]
    sorts = [s for s in SORTS if any(s in run.listings for run in runs)]
    out: dict = {"sorts": {}, "rules": list(RULES), "target": target, "delta": DELTA, "seeds": len(runs)}
    for sort in sorts:
        entry: dict = {"label": SORT_LABELS.get(sort, sort), "rules": {}}
        for rule in RULES:
            seeds: list[dict] = []
            folds_out: list[dict] = []
            accuracy: list[float] = []
            routed: dict[str, int] = {}
            for run in runs:
                found = run.listings.get(sort)
                if found is None:
                    continue
                fold_ids = np.unique(run.folds[run.folds >= 0])
                auto_all = np.zeros(len(found["rows"]), bool)
                for k, fitted in zip(fold_ids, run.fits, strict=True):
                    here = found["fold"] == k
                    part = {key: v[here] for key, v in found.items()}
                    auto = _decisions(part, fitted, rule)
                    auto_all[here] = auto
                    folds_out.append(
                        {
                            "coverage": float(auto.mean()) if here.any() else None,
                            "precision": float(part["correct"][auto].mean()) if auto.any() else None,
                            "n": int(here.sum()),
                        }
                    )
                correct = found["correct"]
                accuracy.append(float(correct.mean()))
                seeds.append(
                    {
                        "coverage": float(auto_all.mean()),
                        "precision": float(correct[auto_all].mean()) if auto_all.any() else None,
                        "accepted": int(auto_all.sum()),
                        "errors": int((auto_all & ~correct).sum()),
                    }
                )
                for kind in found["kind"]:
                    routed[str(kind)] = routed.get(str(kind), 0) + 1
            if not seeds:
                continue
            below = sum(1 for f in folds_out if f["precision"] is not None and f["precision"] < target)
            entry["rules"][rule] = {
                "coverage": spread([s["coverage"] for s in seeds]),
                "precision": spread([s["precision"] for s in seeds]),
                "precision_over_folds": spread([f["precision"] for f in folds_out]),
                "folds_below_target": int(below),
                "folds_with_auto": int(sum(1 for f in folds_out if f["precision"] is not None)),
                "folds": len(folds_out),
                "accepted": int(sum(s["accepted"] for s in seeds)),
                "errors": int(sum(s["errors"] for s in seeds)),
            }
            entry["accuracy"] = spread(accuracy)
            entry["n"] = int(len(runs[0].listings.get(sort, {}).get("rows", [])))
            entry["routed_to_kinds"] = routed
        if sort == "mismatched":
            entry["accuracy"] = None  # no right answer exists
            for r in entry["rules"].values():
                r["sent_to_review"] = 1.0 - r["coverage"]["mean"]
        out["sorts"][sort] = entry
    out["fits"] = _fit_summary(runs)
    return out


def _figures(entry: dict, rule: str) -> dict | None:
    """One rule's figures for one sort of listing, as the first screen states them."""
    r = entry["rules"].get(rule)
    if r is None:
        return None
    return {
        "coverage": r["coverage"]["mean"],
        "coverage_sd": r["coverage"]["sd"],
        "precision": r["precision"]["mean"],
        "folds": r["folds"],
        "folds_with_auto": r["folds_with_auto"],
        "folds_below_target": r["folds_below_target"],
        "folds_holding": r["folds_with_auto"] - r["folds_below_target"],
        "accepted": r["accepted"],
        "errors": r["errors"],
    }


def decisions(table: dict) -> dict:
    """The automatic decisions of the deployed rule (what the service does), per sort of listing,
    with the empirical per-kind rule (`EMPIRICAL`) beside it: the figures of the report's first
    screen and conclusion, read off `kinds_table` (nothing is recomputed)."""
    sorts = {
        sort: {
            "label": entry["label"],
            "deployed": _figures(entry, "deployed"),
            "empirical": _figures(entry, EMPIRICAL),
        }
        for sort, entry in table["sorts"].items()
    }
    # every kind the service may decide automatically, not only the five: a promise made
    # for each kind is broken by any of them (text without a photo is automated too)
    others = [
        (entry["label"], entry["deployed"])
        for sort, entry in sorts.items()
        if sort not in ("photo+text", "mismatched") and entry.get("deployed")
    ]
    decided = [(f["precision"], label) for label, f in others if f["accepted"] and f["precision"] is not None]
    mismatched = sorts.get("mismatched", {}).get("deployed")
    stated = table["fits"].get("threshold_rule") or {}
    photo_text = sorts.get("photo+text", {}).get("deployed")
    if photo_text is not None and not photo_text["folds_with_auto"]:
        # no fold decided anything: "folds below 99 %" is not measured, rather than vacuously 0
        photo_text = {**photo_text, "folds_below_target": None}
    return {
        "rule": "deployed: calibrated combiner score, one finite-sample threshold per kind of listing, "
        "photo/text disagreement to review",
        "method": stated.get("method"),
        "guarantee": stated.get("guarantee"),
        "target": table["target"],
        "delta": table["delta"],
        "seeds": table["seeds"],
        "empirical_rule": EMPIRICAL,
        "sorts": sorts,
        "photo+text": photo_text,
        "other_kinds_lowest_precision": min(decided)[0] if decided else None,
        "other_kinds_lowest_kind": min(decided)[1] if decided else None,
        "other_kinds_without_auto": [label for label, f in others if not f["accepted"]],
        "mismatched_to_review": None if mismatched is None else 1.0 - mismatched["coverage"],
    }


def _fit_summary(runs: list) -> dict:
    """What the folds' fits chose: per kind how many folds had a threshold, and the range of
    thresholds; the disagreement cut; the guarantee stated by the rule."""
    fits = [f for run in runs for f in run.fits]
    kinds = {}
    for kind in KINDS:
        ts = [((f.entry.get("kinds") or {}).get(kind) or {}).get("threshold") for f in fits]
        ns = [((f.entry.get("kinds") or {}).get(kind) or {}).get("n") or 0 for f in fits]
        kinds[kind] = {
            "plain": PLAIN[kind],
            "folds_with_threshold": int(sum(t is not None for t in ts)),
            "thresholds": spread(ts),
            "calibration_listings": spread([float(n) for n in ns]),
        }
    cuts = [(f.entry.get("disagreement") or {}).get("threshold") for f in fits]
    rule: dict = next((f.entry.get("threshold_rule") for f in fits if f.entry.get("threshold_rule")), {})
    return {"folds": len(fits), "kinds": kinds, "disagreement_cut": spread(cuts), "threshold_rule": rule}


def conclusion(table: dict) -> list[str]:
    """One plain sentence per sort of listing: what is automated and how safely (deployed rule)."""
    out = []
    target = table["target"]
    for sort, entry in table["sorts"].items():
        r = entry["rules"].get("deployed")
        if r is None:
            continue
        cov, prec = r["coverage"]["mean"], r["precision"]["mean"]
        if sort == "mismatched":
            out.append(
                f"{entry['label']}: {1 - cov:.1%} sent to review (target 95 %); "
                f"{r['accepted']} of the simulated mismatched listings over the seeds were decided automatically."
            )
        elif not r["accepted"]:
            out.append(
                f"{entry['label']}: nothing is decided automatically; every listing goes to review, because no "
                f"threshold could be shown to keep {target:.0%} precision with {DELTA:.0%} risk on the training "
                "listings."
            )
        else:
            safe = "kept" if prec is not None and prec >= target else "NOT kept"
            out.append(
                f"{entry['label']}: {cov:.1%} decided automatically at precision {prec:.3f} ({safe}; "
                f"{r['errors']} errors in {r['accepted']} automatic decisions over the seeds, "
                f"{r['folds_below_target']} of {r['folds_with_auto']} folds below {target:.0%})."
            )
    return out


def _fmt(spread: dict | None, pct: bool = False) -> str:
    if not spread or spread.get("mean") is None:
        return "–"
    if pct:
        return f"{100 * spread['mean']:.1f} % ± {100 * spread['sd']:.1f}"
    return f"{spread['mean']:.3f} ± {spread['sd']:.3f}"


def html_section(table: dict) -> str:
    """The kinds section of report.html."""
    e = html.escape
    rows = []
    for entry in table["sorts"].values():
        for i, rule in enumerate(RULES):
            r = entry["rules"].get(rule)
            if r is None:
                continue
            folds = r["precision_over_folds"]
            rng = "–" if folds["mean"] is None else f"{folds['min']:.3f}–{folds['max']:.3f}"
            review = f"{100 * (1 - r['coverage']['mean']):.1f} %" if entry["accuracy"] is None else ""
            rows.append(
                "<tr>"
                + (f"<td rowspan='{len(entry['rules'])}'>{e(entry['label'])}</td>" if i == 0 else "")
                + (f"<td rowspan='{len(entry['rules'])}'>{_fmt(entry['accuracy'])}</td>" if i == 0 else "")
                + f"<td>{e(rule)}</td><td>{_fmt(r['coverage'], pct=True)}</td><td>{_fmt(r['precision'])}</td>"
                + f"<td>{rng}</td><td>{r['folds_below_target']} / {r['folds_with_auto']}</td>"
                + f"<td>{r['errors']} / {r['accepted']}</td><td>{review}</td></tr>"
            )
    head = "".join(
        f"<th>{e(h)}</th>"
        for h in (
            "listing",
            "accuracy",
            "decision rule",
            "auto coverage (mean ± sd over seeds)",
            "auto precision",
            "precision range over folds",
            "folds below target / folds with auto decisions",
            "errors / automatic decisions (all seeds)",
            "mismatched sent to review",
        )
    )
    fits = table["fits"]
    stated = fits.get("threshold_rule") or {}
    return (
        "<h2>Decisions per kind of listing</h2>"
        f"<p>Nested over {table['seeds']} fold seeds: in every outer fold the combiner, the disagreement rule and "
        "one threshold per query kind were fitted on listings simulated from the training products only, then the "
        "held-out products were listed the same ways. Hand-written other-language queries calibrate only when their "
        "product is in training and are reported only when it is held out. "
        f"Guarantee of the deployed rule ({e(str(stated.get('method', '')))}): {e(str(stated.get('guarantee', '')))}. "
        "Four rules are scored on the same listings to show what each step earns.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        + "".join(f"<p>{e(s)}</p>" for s in conclusion(table))
        + "<p class='note'>The thresholds each fold's fit chose per kind are under <i>Thresholds per kind</i>, "
        f"below the conclusion. The disagreement cut: {_fmt(fits['disagreement_cut'])} (share of photo/text vote "
        "mass the two channels do not share; fitted so that at least 95 % of the simulated mismatched training "
        "listings go to review with 90 % confidence).</p>"
    )
