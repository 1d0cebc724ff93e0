"""Categorizer settings under the nested protocol, mean +- sd over the report's fold seeds.

Reads an existing index (INDEX_DIR, default var/index): no encoding. Each line runs the
report's nested evaluation (evaluation.crossval.run: grouped outer folds, lexical refitted
and threshold chosen inside every training part) with ONE frozen setting instead of the
grid selection, so the lines compare settings on the same footing; the last line is the
shipped protocol (weights selected from indexer.categorizer.protocol.PARAM_GRID inside each fold),
i.e. the report's figures. Prints accuracy and the nested coverage / precision of
automatic decisions at 99 % target precision.

Run: .venv/bin/python bench/bench_categorizer.py [INDEX_DIR]
"""

from __future__ import annotations

import os
import sys
import time

from common import ROOT

from evaluation import crossval
from indexer.categorizer.protocol import EVAL_SEEDS, PARAM_GRID
from indexer.store import open_store  # noqa: E402
from indexer.store.base import IndexStore

SETTINGS = [
    ("image", "image", {"weights": {"image": 1.0}}),
    ("dense text", "text", {"weights": {"text": 1.0, "lexical": 0.0}}),
    ("dense text + lexical (0.5 / 0.5)", "text", {"weights": {"text": 0.5, "lexical": 0.5}}),
    ("image + dense text (0.3 / 0.7)", "fused", {"weights": {"image": 0.3, "text": 0.7, "lexical": 0.0}}),
    ("image + text + lexical (0.2 / 0.4 / 0.4)", "fused", {"weights": {"image": 0.2, "text": 0.4, "lexical": 0.4}}),
    (
        "  same, one temperature (confidence T 0.02)",
        "fused",
        {"weights": {"image": 0.2, "text": 0.4, "lexical": 0.4}, "confidence_temperature": 0.02},
    ),
]


def line(store: IndexStore, label: str, name: str, grid) -> None:
    t0 = time.perf_counter()
    cv = crossval.run(store, names=(name,), grid=grid)
    c = cv["classification"][name]
    a = crossval.auto_decisions(cv, name, (0.99,))[0.99]
    precision = "–" if a["precision"] is None else f"{a['precision']:.3f}"
    print(
        f"  {label:46} acc {c['accuracy']:.4f} ± {c['accuracy_sd_over_seeds']:.4f}   "
        f"auto@0.99: coverage {a['coverage']:.3f} ± {a['coverage_over_seeds']['sd']:.3f}, "
        f"precision {precision}, folds without threshold {a['folds_without_threshold']}"
        f"   ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("INDEX_DIR", str(ROOT / "var" / "index"))
    store = open_store(path)
    print(
        f"index {path}: {len(store.products)} products; nested grouped 5-fold CV, fold seeds {list(EVAL_SEEDS)}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("frozen settings (k=10, T=0.02, confidence T=0.05 unless said):")
    for label, name, setting in SETTINGS:
        line(store, label, name, [setting])
    print("shipped protocol (weights selected inside each training part from PARAM_GRID):")
    for name in ("text", "fused"):
        line(store, f"{name}, grid-selected", name, PARAM_GRID)


if __name__ == "__main__":
    main()
