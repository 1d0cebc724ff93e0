"""How spread out each index's text cosines are: why one Categorizer setting does not fit every text model.

For each index: mean and sd of the cosine over all pairs of products' text vectors, and the
mean gap between a product's nearest and 10th-nearest text neighbour. A model whose cosines
are compressed (e5: every pair near 0.8) moves the fused similarity far less than the image
and lexical channels do, under weights and temperatures chosen on MiniLM's scale.
Run: .venv/bin/python bench/bench_text_spread.py INDEX_DIR...   (reads vectors, encodes nothing)
"""

from __future__ import annotations

import sys

import numpy as np
from common import ROOT

from indexer.store import open_store  # noqa: E402


def main() -> None:
    for path in sys.argv[1:] or [str(ROOT / "var" / "index")]:
        store = open_store(path)
        vectors, _ = store.vectors_by_row("text")
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, np.nan)
        pairs = sims[~np.isnan(sims)]
        top = -np.sort(-np.nan_to_num(sims, nan=-np.inf), axis=1)[:, :10]
        print(
            f"{path}: {store.manifest['model_ids']['text']}\n"
            f"  all pairs: mean {pairs.mean():.3f} sd {pairs.std():.3f}; nearest {top[:, 0].mean():.3f}, "
            f"10th {top[:, 9].mean():.3f}, gap {(top[:, 0] - top[:, 9]).mean():.3f}"
        )


if __name__ == "__main__":
    main()
