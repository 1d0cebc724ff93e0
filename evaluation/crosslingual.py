"""Cross-lingual evaluation: hand-written French and Spanish seller queries against the English catalogue.

Each query of `tests/data/multilingual_queries.csv` rewrites one catalogue product. It is
scored like a seller's request to the service (`query_channels` + the Categorizer), nested:
for each outer grouped fold, the fused Categorizer is fitted on the other folds only (lexical
vocabulary and idf, weights, calibration, auto threshold: `indexer.categorizer.protocol.fit`, what the
build does on all data) and answers the queries of that fold's products, with only training
rows as neighbours, so neither the product nor any near-duplicate of it (groups never span
folds) can vote. Beside each language, the same products are scored with their English title
alone (encoded the same way) and with their stored English title + description, so the gap is
measured on the same items. With the photo, the query also carries the stored image vector.

Cost: one text encoding per query and language, one fit per outer fold and seed, then one
k-NN vote per query, seed and setting.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.categorizer import (
    EVAL_SEEDS,
    FUSED,
    N_FOLDS,
    TARGET_PRECISION,
    Categorizer,
    Fitted,
    Prediction,
    describe,
    fit,
    grouped_folds,
    near_duplicate_groups,
    query_channels,
    query_text,
    stored_queries,
    training_view,
    usable_folds,
)
from indexer.encoders import Encoder
from indexer.store import LEXICAL_SCALINGS, IndexStore

QUERY_FILE = Path(__file__).resolve().parents[1] / "tests" / "data" / "multilingual_queries.csv"
COLUMNS = ("product_id", "lang", "title", "description")
SEEDS = EVAL_SEEDS  # the nested evaluation's outer fold seeds
ENGLISH = ("en-title", "en-full")  # the English rows every language is compared with
SPLIT_SEED = 18  # the selection / reporting split of the queries (`selection_part`), frozen
PARTS = ("reporting", "selection")
LEXICAL_SETTINGS = ("off", *LEXICAL_SCALINGS)
PROTOCOL = (
    "nested: per outer grouped fold, the fused Categorizer (lexical vocabulary + idf, weights, calibration, "
    "threshold) fitted on the other folds only (indexer.categorizer.protocol.fit); the product's fold answered by it"
)


@dataclass(frozen=True)
class SellerQuery:
    product_id: str
    lang: str
    title: str
    description: str


def load_queries(path: str | Path = QUERY_FILE) -> list[SellerQuery]:
    """The query file's rows; a malformed file is a ValueError naming the line."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected columns {', '.join(COLUMNS)}, found {reader.fieldnames}")
        out = []
        for line, row in enumerate(reader, start=2):
            query = SellerQuery(*(str(row[c] or "").strip() for c in COLUMNS))
            if not query.product_id or not query.title:
                raise ValueError(f"{path}:{line}: product_id and title are required")
            if len(query.lang) != 2 or not query.lang.isalpha():
                raise ValueError(f"{path}:{line}: lang must be a two-letter code, got {query.lang!r}")
            out.append(query)
    return out


def query_rows(store: IndexStore, queries: Sequence[SellerQuery]) -> np.ndarray:
    """Product row of each query; a query naming a product the index lacks is a ValueError."""
    rows = [store.row_of(q.product_id) for q in queries]
    missing = [q.product_id for q, r in zip(queries, rows, strict=True) if r is None]
    if missing:
        raise ValueError(f"{len(missing)} queries name products not in the index, e.g. {missing[0]}")
    return np.array(rows, dtype=np.int64)


def selection_part(store: IndexStore, queries: Sequence[SellerQuery], groups: np.ndarray) -> np.ndarray:
    """True for the queries of the selection part: half the near-duplicate groups of the queried
    products (seeded, SPLIT_SEED), every query of a group on one side. Choices about the
    cross-lingual path (lexical rule, tower, join weight, words: bench/bench_crosslingual.py) are
    made on this part; the report's figures are the other part's."""
    rows = query_rows(store, queries)
    query_groups = np.unique(groups[rows])
    chosen = np.random.default_rng(SPLIT_SEED).permutation(query_groups)[: len(query_groups) // 2]
    return np.isin(groups[rows], chosen)


def query_folds(store: IndexStore, groups: np.ndarray, seed: int, n_folds: int = N_FOLDS) -> np.ndarray:
    """The outer grouped stratified folds of the nested evaluation (fewer than `n_folds` when
    the groups or categories allow fewer; `usable_folds`)."""
    labels = store.labels()
    n_folds = usable_folds(labels, groups, n_folds)
    if n_folds < 2:
        raise ValueError("too few products or categories for grouped folds")
    return grouped_folds(labels, groups, n_folds=n_folds, seed=seed)


@dataclass
class FoldModel:
    """What answers the queries of one outer fold: the index as the fold's fit sees it, its
    Categorizer and auto threshold, and the rows it may use as neighbours."""

    view: IndexStore
    categorizer: Categorizer
    threshold: float | None
    train: np.ndarray


def fold_models(
    store: IndexStore,
    folds: np.ndarray,
    groups: np.ndarray,
    seed: int,
    target: float = TARGET_PRECISION,
    fits: Sequence[Fitted] | None = None,
) -> dict[int, FoldModel]:
    """Per outer fold, the model that answers its queries, nested: the fused Categorizer is
    `fit` on the other folds only (lexical vocabulary and idf, weights from the declared grid,
    isotonic calibration, auto threshold; `indexer.categorizer.protocol.fit`), exactly as the build fits
    the service's on all data. Cost: one fit per fold, unless `fits` (the report's fused fits
    of these very folds, in fold order) are given: then only each fold's lexical refit."""
    out = {}
    for i, f in enumerate(np.unique(folds[folds >= 0])):
        train = (folds >= 0) & (folds != f)
        if fits is not None:
            if not np.array_equal(fits[i].train, train):
                raise ValueError(f"fit {i} was not fitted on the training part of outer fold {f}")
            view, entry = training_view(store, train), fits[i].entry
        else:
            fitted = fit(store, train, groups, FUSED, target=target, seed=seed)
            view, entry = fitted.view, fitted.entry
        params = {k: v for k, v in entry.items() if k != "cv"}
        out[int(f)] = FoldModel(view, Categorizer(view, params), params.get("threshold"), train)
    return out


def query_texts(store: IndexStore, queries: Sequence[SellerQuery], rows: np.ndarray) -> dict[str, tuple]:
    """Per query language, and "en-title" (the products' English titles): (query indices, texts)."""
    texts: dict[str, tuple[np.ndarray, list[str]]] = {}
    for lang in sorted({q.lang for q in queries}):
        idx = np.array([i for i, q in enumerate(queries) if q.lang == lang])
        texts[lang] = (idx, [query_text(store, queries[i].title, queries[i].description) for i in idx])
    texts["en-title"] = (np.arange(len(queries)), [query_text(store, store.products[r].name, "") for r in rows])
    return texts


def _outcomes(preds: list[Prediction], truth: np.ndarray) -> list[tuple[bool, bool]]:
    """(correct, decided automatically) per prediction: the decision of the fold's fit for the
    query's kind (its per-kind threshold and disagreement rule), as the service decides."""
    return [(p.category == t, p.decision == "auto") for p, t in zip(preds, truth, strict=True)]


def _kinds(store: IndexStore, queries: Sequence[SellerQuery], rows: np.ndarray, lang: str, idx: np.ndarray) -> list:
    """The kind of each query of `lang` (its title and description; the English rows' own)."""
    out = []
    for i in idx:
        if lang == "en-title":
            out.append(describe(store.products[rows[i]].name, "", photo=False))
        elif lang == "en-full":
            product = store.products[rows[i]]
            out.append(describe(product.name, product.description, photo=False))
        else:
            out.append(describe(queries[i].title, queries[i].description, photo=False))
    return out


def _scores(outcomes: list[tuple[bool, bool]]) -> dict:
    correct = np.array([c for c, _ in outcomes])
    auto = np.array([a for _, a in outcomes])
    return {
        "accuracy": float(correct.mean()),
        "auto_coverage": float(auto.mean()),
        "auto_precision": float(correct[auto].mean()) if auto.any() else None,
        "n": int(len(outcomes)),
    }


def evaluate(
    store: IndexStore,
    encoder: Encoder,
    queries: Sequence[SellerQuery] | None = None,
    seeds: Sequence[int] = SEEDS,
    lexical_settings: Sequence[str] = LEXICAL_SETTINGS,
    fused_fits: Mapping[int, Sequence[Fitted]] | None = None,
    n_folds: int = N_FOLDS,
) -> dict:
    """Accuracy and auto coverage by query language, text only and with the photo, pooled per
    fold seed then mean ± sd over seeds, for each lexical setting. A query is answered by the
    model of its product's outer fold (`fold_models`), with only that model's training rows
    as neighbours; its lexical row uses that model's vocabulary."""
    queries = list(queries if queries is not None else load_queries())
    rows = query_rows(store, queries)
    truth = store.labels()[rows]
    groups = near_duplicate_groups(store)
    photos = stored_queries(store, rows, ("image",)).get("image")
    texts = query_texts(store, queries, rows)
    dense = {name: query_channels(store, encoder, texts=batch)["text"] for name, (_, batch) in texts.items()}
    everyone = np.arange(len(queries))
    part_of = np.where(selection_part(store, queries, groups), "selection", "reporting")
    kinds_of = {
        lang: np.array(_kinds(store, queries, rows, lang, idx), dtype=object)
        for lang, (idx, _) in {**texts, "en-full": (everyone, None)}.items()
    }
    pooled: dict = {}
    for seed in seeds:
        folds = query_folds(store, groups, seed, n_folds)
        fits = fused_fits.get(seed) if fused_fits else None
        for f, model in fold_models(store, folds, groups, seed, fits=fits).items():
            stored = stored_queries(model.view, rows, ("text", "lexical"))
            for lang, (idx, batch) in {**texts, "en-full": (everyone, None)}.items():
                here = np.flatnonzero(folds[rows[idx]] == f)
                if not len(here):
                    continue
                chosen = idx[here]
                exclude = np.tile(~model.train, (len(chosen), 1))
                for setting in lexical_settings:
                    if lang == "en-full":
                        channels = {m: q[chosen] for m, q in stored.items()}
                    else:
                        channels = {"text": dense[lang][here]}
                        if setting != "off" and model.view.lexical is not None:
                            channels["lexical"] = model.view.lexical.query_rows([batch[i] for i in here], setting)
                    for with_photo in (False, True):
                        query = dict(channels)
                        if with_photo and photos is not None:
                            query["image"] = photos[chosen]
                        kinds = [
                            dataclasses.replace(k, photo=with_photo and photos is not None)
                            for k in kinds_of[lang][here]
                        ]
                        preds = model.categorizer.predict_vectors(
                            query, exclude=exclude, with_neighbors=False, kinds=kinds
                        )
                        outcomes = _outcomes(preds, truth[chosen])
                        for part, outcome in zip(part_of[chosen], outcomes, strict=True):
                            key = (part, setting, "text+photo" if with_photo else "text", lang, seed)
                            pooled.setdefault(key, []).append(outcome)
    per_seed: dict = {}
    for (part, setting, mode, lang, _), outcomes in pooled.items():
        per_seed.setdefault((part, setting, mode, lang), []).append(_scores(outcomes))
    by_part: dict = {part: {} for part in PARTS}
    for part in PARTS:
        for setting in lexical_settings:
            for mode in ("text", "text+photo"):
                for lang in [*texts, "en-full"]:
                    if (part, setting, mode, lang) in per_seed:
                        by_part[part].setdefault(setting, {}).setdefault(mode, {})[lang] = _mean_sd(
                            per_seed[(part, setting, mode, lang)]
                        )
    results = by_part["reporting"]
    languages = sorted({q.lang for q in queries})
    return {
        "n_queries": len(queries),
        "languages": {lang: sum(q.lang == lang for q in queries) for lang in languages},
        "seeds": list(seeds),
        "lexical_settings": list(lexical_settings),
        "lexical_coverage": _coverage(store, texts),
        "results": results,  # the reporting part only
        "selection_results": by_part["selection"],
        "parts": {part: int((part_of == part).sum()) for part in PARTS},
        "split": (
            f"queries split by near-duplicate group (seed {SPLIT_SEED}): choices are made on the selection part, "
            "figures given for the reporting part. The tower, join weight, words and the coverage rule were "
            "chosen before this split, on all 168 queries: the reporting part's figures are still after a "
            "choice that saw them."
        ),
        "text_model": store.manifest.get("model_ids", {}).get("text"),
        "protocol": PROTOCOL,
    }


def _mean_sd(scores: list[dict]) -> dict:
    out: dict = {"n": scores[0]["n"], "seeds": len(scores)}
    for key in ("accuracy", "auto_coverage", "auto_precision"):
        values = [s[key] for s in scores if s[key] is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_sd"] = float(np.std(values)) if values else None
    return out


def _coverage(store: IndexStore, texts: dict[str, tuple]) -> dict:
    """Mean share of the query words the index's lexical vocabulary knows, per language."""
    if store.lexical is None:
        return {}
    return {lang: float(store.lexical.coverage(batch).mean()) for lang, (_, batch) in texts.items()}


# ---- the report's cross-lingual section ------------------------------------------------------
def report_section(
    store: IndexStore,
    path: str | Path | None = QUERY_FILE,
    seeds: Sequence[int] = SEEDS,
    fused_fits: Mapping[int, Sequence[Fitted]] | None = None,
    n_folds: int = N_FOLDS,
) -> dict:
    """The report's cross-lingual metrics, or {"skipped": why} when the index cannot answer
    (queries for other products, an encoder that cannot be built here)."""
    from indexer.encoders import EncoderUnavailable, create_encoder_for
    from indexer.store import IndexMismatch, check_compatible

    if path is None:
        return {"skipped": "disabled (--skip-crosslingual)"}
    queries = [q for q in load_queries(path) if store.row_of(q.product_id) is not None]
    if not queries:
        return {"skipped": f"none of the queries in {path} names a product of this index"}
    try:
        encoder = create_encoder_for(store.manifest)
        check_compatible(store.manifest, encoder)
    except (EncoderUnavailable, IndexMismatch, ValueError) as exc:
        return {"skipped": f"the index's encoder cannot be built here: {exc}"}
    return {
        "queries": str(path),
        **evaluate(store, encoder, queries, seeds=seeds, fused_fits=fused_fits, n_folds=n_folds),
    }


def html_section(entry: dict) -> str:
    """The report's HTML for `report_section`'s metrics."""
    import html

    if "skipped" in entry:
        return f"<h2>Cross-lingual queries</h2><p>Skipped: {html.escape(entry['skipped'])}.</p>"
    langs = [*entry["languages"], *ENGLISH]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["lexical channel", "query", *langs])
    body = []
    for setting, modes in entry["results"].items():
        for mode, by_lang in modes.items():
            cells = []
            for lang in langs:
                r = by_lang.get(lang)
                cells.append(
                    ""
                    if r is None
                    else f"{r['accuracy']:.3f} ± {r['accuracy_sd']:.3f}<br><small>auto {r['auto_coverage']:.2f}"
                    + (f", precision {r['auto_precision']:.3f}" if r["auto_precision"] is not None else "")
                    + "</small>"
                )
            body.append(
                f"<tr><td>{html.escape(setting)}</td><td>{html.escape(mode)}</td>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + "</tr>"
            )
    counts = ", ".join(f"{n} {html.escape(lang)}" for lang, n in entry["languages"].items())
    coverage = ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in entry["lexical_coverage"].items())
    parts = entry.get("parts", {})
    return (
        "<h2>Cross-lingual queries</h2>"
        f"<p>Figures for the reporting part ({parts.get('reporting', '?')} queries) only: "
        f"{html.escape(entry.get('split', ''))}</p>"
        f"<p>{entry['n_queries']} hand-written seller queries ({counts}; "
        f"<code>{html.escape(entry['queries'])}</code>), "
        "each rewriting one catalogue product, scored as the service scores a request, with the product's fold "
        "(hence its near-duplicate group) masked out of the index. <em>en-title</em> and <em>en-full</em> are the "
        "same products' English title alone and stored English title + description. Accuracy mean ± sd over fold "
        f"seeds {entry['seeds']}; auto = share decided automatically by the threshold of the fold's own fit. "
        "Text model: the index's text tower (its id is under Provenance). "
        f"Protocol: {html.escape(entry['protocol'])}."
        f"</p><p>Lexical channel: <em>off</em>, <em>fixed</em> weight, or weight × the share of the query's words "
        f"the (English) vocabulary knows (<em>coverage</em>, the service's rule); mean coverage {coverage}.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
