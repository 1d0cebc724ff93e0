"""Command line: `python -m evaluation report --index DIR --out DIR`.

Defaults come from the environment: INDEX_DIR (index), REPORT_DIR (output, default
./report), DATA_DIR (images, only needed when the index's stored image paths do not
resolve from the current directory).
"""

from __future__ import annotations

import argparse
import os
import sys

from indexer.settings import DEFAULT_INDEX_DIR, index_dir_default, quiet_third_party
from indexer.store import IndexStoreError

from . import headline
from .crosslingual import QUERY_FILE
from .projection import TSNE_ITERATIONS
from .report import ReportOptions, build_report, quick_options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write report.html, metrics.json and figures/")
    rep.add_argument(
        "--index", default=index_dir_default(), help=f"index directory (default $INDEX_DIR or {DEFAULT_INDEX_DIR})"
    )
    rep.add_argument(
        "--out",
        default=os.environ.get("REPORT_DIR", "report"),
        help="output directory (default $REPORT_DIR or ./report)",
    )
    rep.add_argument("--data", default=os.environ.get("DATA_DIR"), help="dataset folder for images (default $DATA_DIR)")
    rep.add_argument(
        "--tsne-iterations",
        type=int,
        default=TSNE_ITERATIONS,
        help=f"t-SNE iterations (default {TSNE_ITERATIONS}, min 250)",
    )
    rep.add_argument("--skip-tsne", action="store_true", help="no t-SNE maps (quick runs)")
    rep.add_argument("--skip-bovw", action="store_true", help="no ORB bag-of-visual-words baseline (quick runs)")
    rep.add_argument(
        "--skip-stability", action="store_true", help="no fused stability check (KMeans seeds, t-SNE perplexities)"
    )
    rep.add_argument(
        "--queries",
        default=str(QUERY_FILE),
        help="hand-written multilingual seller queries for the cross-lingual section (default tests/data/...)",
    )
    rep.add_argument("--skip-crosslingual", action="store_true", help="no cross-lingual section")
    rep.add_argument("--max-errors", type=int, default=60, help="misclassified products shown (default 60)")
    rep.add_argument("--seed", type=int, default=0, help="seed of KMeans, t-SNE, PCA, folds (default 0)")
    rep.add_argument(
        "--quick",
        action="store_true",
        help="a fast look: one fold seed; no t-SNE, stability runs, ORB baseline or random-split figures "
        "(the report says these are not the reported figures)",
    )
    rep.add_argument("--quiet", action="store_true", help='no "step k/N" progress lines on stderr')
    args = parser.parse_args(argv)
    quiet_third_party()
    if not args.index:
        parser.error("no index: pass --index DIR or set INDEX_DIR")
    options = ReportOptions(
        data_dir=args.data,
        tsne_iterations=args.tsne_iterations,
        skip_tsne=args.skip_tsne,
        skip_bovw=args.skip_bovw,
        max_errors=args.max_errors,
        seed=args.seed,
        stability_checks=not args.skip_stability,
        progress=not args.quiet,
        crosslingual_queries=None if args.skip_crosslingual else args.queries,
    )
    if args.quick:
        options = quick_options(options)
    try:
        metrics = build_report(args.index, args.out, options)
    except (IndexStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = headline.from_json(metrics["headline"])
    print(f"report written to {args.out}/report.html ({metrics['n_products']} products, profile {metrics['profile']})")
    if metrics.get("quick"):
        print("quick run: not the reported figures")
    for row in rows:
        print(f"  {row.figure:<50} {row.value_text():>8}  target {row.target_text:<7} {row.status}")
    print(metrics["conclusion"][0])
    for kind, t in metrics["thresholds"]["kinds"].items():
        ev, dep = t["evaluation"], t["deployment"] or {}
        print(
            f"  threshold {kind:<27} evaluation (nested) {_round(ev['mean'])} in {ev['folds_with_threshold']} of "
            f"{ev['folds']} folds; deployment (served) {_round(dep.get('threshold'))}"
        )
    print(f"total {metrics['timings']['total']:.1f} s")
    return 0


def _round(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
