"""Text models compared: English grouped CV and the hand-written French/Spanish queries.

For each index given (one per EMBEDDED_TEXT_MODEL, built with `python -m indexer build`),
prints the English leak-free CV accuracy (text channel with lexical, and fused) as mean
± sd over fold seeds, then the cross-lingual figures of evaluation/crosslingual.py: accuracy
and auto coverage per query language, text only and with the photo, beside the English
title and the English full text of the same products, for each lexical setting.
Only the query texts are encoded (by the encoder the index names); catalogue vectors are read.

Run: .venv/bin/python bench/bench_crosslingual.py var/idx-e5 var/idx-minilm+e5 ...
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from common import ROOT

from evaluation import crosslingual
from indexer.calibration import cross_val_predictions, grouped_folds, near_duplicate_groups
from indexer.encoders import create_encoder_for
from indexer.knn import Categorizer
from indexer.store import IndexStore


def english_cv(store: IndexStore, seeds) -> dict[str, tuple[float, float]]:
    labels = store.labels()
    groups = near_duplicate_groups(store)
    categorizer = Categorizer(store)
    out = {}
    for name, mods in (("text", ("text",)), ("fused", ("image", "text"))):
        acc = []
        for seed in seeds:
            preds = cross_val_predictions(categorizer, grouped_folds(labels, groups, seed=seed), mods)
            acc.append(np.mean([p.category == t for p, t in zip(preds, labels, strict=True)]))
        out[name] = (float(np.mean(acc)), float(np.std(acc)))
    return out


def _cell(entry: dict) -> str:
    return f"{entry['accuracy']:.3f}±{entry['accuracy_sd']:.3f} ({entry['auto_coverage']:.2f})"


def main() -> None:
    paths = sys.argv[1:] or [os.environ.get("INDEX_DIR", str(ROOT / "var" / "index"))]
    seeds = crosslingual.SEEDS
    print(f"load average {os.getloadavg()[0]:.2f}; fold seeds {list(seeds)}; cells: accuracy±sd (auto coverage)")
    for path in paths:
        t0 = time.perf_counter()
        store = IndexStore.load(path)
        encoder = create_encoder_for(store.manifest)
        store = IndexStore.load(path, encoder=encoder)
        english = english_cv(store, seeds)
        result = crosslingual.evaluate(store, encoder, seeds=seeds)
        name = store.manifest.get("encoder_options", {}).get("text_model", "minilm")
        print(f"\n== {path}: text model {name} ({store.manifest['model_ids']['text']})")
        (text, text_sd), (fused, fused_sd) = english["text"], english["fused"]
        print(
            f"English grouped CV, all {len(store.products)} products: "
            f"text+lexical {text:.4f}±{text_sd:.4f}, fused {fused:.4f}±{fused_sd:.4f}"
        )
        print(f"queries {result['languages']}; lexical vocabulary coverage {result['lexical_coverage']}")
        langs = [*result["languages"], *crosslingual.ENGLISH]
        print(f"{'lexical':9} {'mode':11} " + " ".join(f"{lang:>22}" for lang in langs))
        for setting, modes in result["results"].items():
            for mode, by_lang in modes.items():
                cells = [_cell(by_lang[lang]) if lang in by_lang else "" for lang in langs]
                print(f"{setting:9} {mode:11} " + " ".join(f"{c:>22}" for c in cells))
        print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
