"""Per kind of listing, nested: what each decision rule decides automatically and how safely.

The same computation as the report's "Decisions per kind of listing" section
(evaluation/kinds.py), fused modality only, printed as text; also how the language rule of
indexer/categorizer/kinds.py reads the catalogue's English titles and the hand-written
French / Spanish queries (the evidence for LANGUAGE_CONFIDENCE).

    DATA_DIR=... python bench/bench_kinds.py --index var/index [--seeds 0 1 2] [--cache var/report-cache]
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)

from evaluation import crossval, kinds
from evaluation.crosslingual import QUERY_FILE, load_queries
from indexer.categorizer.kinds import LANGUAGE_CONFIDENCE, detect_language
from indexer.store import open_store


def language_rule(store) -> None:
    english = collections.Counter(detect_language(p.name)[0] for p in store.products)
    short = collections.Counter(detect_language(" ".join(p.name.split()[:3]))[0] for p in store.products)
    queries = load_queries()
    foreign = collections.Counter((q.lang, detect_language(q.title)[0]) for q in queries)
    print(f"language rule (probability >= {LANGUAGE_CONFIDENCE} to leave English):")
    print(f"  catalogue titles read as English: {english['en']} / {len(store.products)}")
    print(f"  first 3 words read as English: {short['en']} / {len(store.products)}")
    for lang in sorted({q.lang for q in queries}):
        n = sum(v for (q, _), v in foreign.items() if q == lang)
        print(f"  {lang} titles read as {lang}: {foreign[(lang, lang)]} / {n}; as English: {foreign[(lang, 'en')]}")


def predict_cost(store, n: int = 200) -> None:
    """CPU milliseconds per query (single thread, so other load does not count): the kind
    (language detection + vocabulary coverage) and the vote with the channel votes and the
    per-kind decision. bench/bench_service.py measures the whole request."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from indexer.categorizer import Categorizer, describe, stored_queries, warm_up

    warm_up()
    categorizer = Categorizer(store)
    rows = np.linspace(0, len(store.products) - 1, n).astype(int)
    queries = stored_queries(store, rows)
    kind_ms, vote_ms = [], []
    with threadpool_limits(1):
        for i, r in enumerate(rows):
            product = store.products[int(r)]
            t0 = time.process_time()
            coverage = float(store.lexical.coverage([product.name])[0]) if store.lexical is not None else None
            kind = describe(product.name, product.description, True, coverage)
            t1 = time.process_time()
            categorizer.predict_vectors({c: q[i : i + 1] for c, q in queries.items()}, kinds=[kind])
            kind_ms.append(t1 - t0)
            vote_ms.append(time.process_time() - t1)
    print(
        f"CPU per query ({n} stored products, 1 thread): kind {1000 * np.median(kind_ms):.2f} ms p50, "
        f"vote + decision {1000 * np.median(vote_ms):.2f} ms p50"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", default="var/report-cache", help="embedding cache folder for the listings")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--latency-only", action="store_true", help="the language rule and the CPU cost only")
    args = parser.parse_args()
    store = open_store(args.index)
    language_rule(store)
    predict_cost(store)
    if args.latency_only:
        return
    t0 = time.perf_counter()
    material = kinds.report_material(store, QUERY_FILE, Path(args.cache))
    print(f"listing material {time.perf_counter() - t0:.0f} s: sorts {', '.join(material.sorts())}")
    t0 = time.perf_counter()
    cv = crossval.run(store, seeds=args.seeds, names=("fused",), target=args.target, material=material)
    print(f"nested fused with listings, seeds {args.seeds}: {time.perf_counter() - t0:.0f} s")
    table = kinds.kinds_table(cv, args.target)
    print(f"{'listing':52} {'acc':>6} {'rule':26} {'coverage':>15} {'precision':>10} {'folds<t':>8} {'err/auto':>9}")
    for entry in table["sorts"].values():
        acc = entry["accuracy"]["mean"] if entry["accuracy"] else None
        for rule, r in entry["rules"].items():
            prec = r["precision"]["mean"]
            print(
                f"{entry['label'][:52]:52} {'' if acc is None else f'{acc:.3f}':>6} {rule:26} "
                f"{r['coverage']['mean']:.3f}±{r['coverage']['sd']:.3f} {'–' if prec is None else f'{prec:.4f}':>10} "
                f"{r['folds_below_target']:>3}/{r['folds_with_auto']:<4} {r['errors']:>4}/{r['accepted']:<4}"
            )
    fits = table["fits"]
    print(f"disagreement cut over folds: {fits['disagreement_cut']}")
    for kind, v in fits["kinds"].items():
        print(f"  {kind:28} threshold in {v['folds_with_threshold']}/{fits['folds']} folds {v['thresholds']}")
    for sentence in kinds.conclusion(table):
        print("-", sentence)


if __name__ == "__main__":
    main()
