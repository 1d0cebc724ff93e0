"""Text models compared: English grouped CV and the hand-written French/Spanish queries.

For each index given (one per EMBEDDED_TEXT_MODEL, built with `python -m indexer build`),
prints the English nested grouped CV accuracy (text channel with lexical, and fused; the
report's `evaluation.crossval.run`) as mean ± sd over fold seeds, then the cross-lingual
figures of evaluation/crosslingual.py (nested): accuracy and auto coverage per query
language, text only and with the photo, beside the English title and the English full text
of the same products, for each lexical setting.
Only the query texts are encoded (by the encoder the index names); catalogue vectors are read.

Run: .venv/bin/python bench/bench_crosslingual.py var/idx-e5 var/idx-minilm+e5 ...
"""

from __future__ import annotations

import os
import sys
import time

from common import ROOT

from evaluation import crosslingual, crossval
from indexer.encoders import create_encoder_for
from indexer.store import open_store  # noqa: E402
from indexer.store.base import IndexStore


def english_cv(store: IndexStore, seeds) -> dict[str, tuple[float, float]]:
    """Nested grouped CV accuracy of text (+ lexical) and fused over all products, as the report
    computes it (evaluation.crossval.run): mean and sd over fold seeds."""
    cv = crossval.run(store, seeds=seeds, names=("text", "fused"))
    out = {}
    for name in ("text", "fused"):
        c = cv["classification"][name]
        out[name] = (float(c["accuracy"]), float(c["accuracy_sd_over_seeds"]))
    return out


def _cell(entry: dict) -> str:
    return f"{entry['accuracy']:.3f}±{entry['accuracy_sd']:.3f} ({entry['auto_coverage']:.2f})"


def main() -> None:
    paths = sys.argv[1:] or [os.environ.get("INDEX_DIR", str(ROOT / "var" / "index"))]
    seeds = crosslingual.SEEDS
    print(f"load average {os.getloadavg()[0]:.2f}; fold seeds {list(seeds)}; cells: accuracy±sd (auto coverage)")
    for path in paths:
        t0 = time.perf_counter()
        store = open_store(path)
        encoder = create_encoder_for(store.manifest)
        store = open_store(path, encoder=encoder)
        english = english_cv(store, seeds)
        result = crosslingual.evaluate(store, encoder, seeds=seeds)
        name = store.manifest.get("encoder_options", {}).get("text_model", "minilm")
        print(f"\n== {path}: text model {name} ({store.manifest['model_ids']['text']})")
        (text, text_sd), (fused, fused_sd) = english["text"], english["fused"]
        print(
            f"English nested grouped CV, all {len(store.products)} products: "
            f"text+lexical {text:.4f}±{text_sd:.4f}, fused {fused:.4f}±{fused_sd:.4f}"
        )
        print(f"queries {result['languages']}; lexical vocabulary coverage {result['lexical_coverage']}")
        langs = [*result["languages"], *crosslingual.ENGLISH]
        print(f"{'lexical':9} {'mode':11} " + " ".join(f"{lang:>22}" for lang in langs))
        print(f"selection part ({result['parts']['selection']} queries): choose on these figures only")
        for setting, modes in result["selection_results"].items():
            for mode, by_lang in modes.items():
                cells = [_cell(by_lang[lang]) if lang in by_lang else "" for lang in langs]
                print(f"{setting:9} {mode:11} " + " ".join(f"{c:>22}" for c in cells))
        print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
