"""Lexical scoring for the Categorizer: TF-IDF cosine (shipped) vs SQLite FTS5's BM25.

BM25 as FTS5 computes it (k1 = 1.2, b = 0.75, idf = log((N - n + 0.5) / (n + 0.5)),
floored at 1e-6, one term per query phrase) is a sum over the query's terms of a
per-(document, term) weight, so it runs on the same inverted index as the TF-IDF channel:
a document x term weight matrix W and a binary query. This script
1. checks that claim against SQLite FTS5 itself: the vocabulary's terms (unigrams and
   bigrams) are written as tokens into an in-memory FTS5 table and each product's own
   terms are queried with `bm25()`; it prints how often the top 10 and their scores agree;
2. cross-validates the Categorizer with each lexical scoring, lexical channel alone and
   fused with image and dense text at the shipped weights. BM25 is divided by the query's
   score against its own text, so it sits on a 0..1 scale like a cosine.

Protocol: indexer/categorizer/protocol.py's current functions (near-duplicate groups, grouped
stratified folds, `choose_threshold`), 5 fold seeds. NOT YET NESTED: the vocabulary and
the idf of both scorings were fitted on every product by the build, the folds only mask
rows; the nested protocol (issue 7) will refit them inside the training folds.
Run: .venv/bin/python bench/bench_lexical_scoring.py [INDEX_DIR]
"""

from __future__ import annotations

import os
import sqlite3
import sys

import numpy as np
import scipy.sparse as sp
from common import ROOT
from sklearn.feature_extraction.text import CountVectorizer

from indexer.catalog.text import baseline_tokens
from indexer.categorizer.protocol import choose_threshold, grouped_folds, near_duplicate_groups
from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.store import open_store  # noqa: E402
from indexer.store.base import IndexStore
from indexer.store.lexical import NGRAMS, LexicalIndex

K1, B = 1.2, 0.75
SEEDS = range(5)


def term_counts(store: IndexStore) -> sp.csr_matrix:
    """Counts of the lexical vocabulary's terms per lexical row (the TF-IDF channel's own analyser)."""
    lexical = store.lexical
    vocabulary = {t: int(i) for t, i in lexical.vectorizer.vocabulary_.items()}
    counter = CountVectorizer(
        tokenizer=baseline_tokens,
        preprocessor=None,
        lowercase=False,
        token_pattern=None,
        ngram_range=NGRAMS,
        vocabulary=vocabulary,
    )
    texts = [store.product_text(store.products[r]) for r in lexical.rows]
    return counter.transform(texts).tocsr().astype(np.float64)


def bm25_weights(counts: sp.csr_matrix) -> sp.csr_matrix:
    """W[d, t] = idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl)), FTS5's formula."""
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.maximum(np.log((n - df + 0.5) / (df + 0.5)), 1e-6)
    length = np.asarray(counts.sum(axis=1)).ravel()
    norm = K1 * (1 - B + B * length / length.mean())
    w = counts.copy()
    row_of = np.repeat(np.arange(n), np.diff(counts.indptr))
    w.data = idf[w.indices] * w.data * (K1 + 1) / (w.data + norm[row_of])
    return w.tocsr()


def check_against_fts5(counts: sp.csr_matrix, weights: sp.csr_matrix, queries: int = 100) -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE docs USING fts5(body)")
    for d in range(counts.shape[0]):
        row = counts[d]
        body = " ".join(f"t{t}" for t, c in zip(row.indices, row.data, strict=True) for _ in range(int(c)))
        db.execute("INSERT INTO docs(rowid, body) VALUES (?, ?)", (d, body))
    rng = np.random.default_rng(0)
    same_top, close = [], []
    for d in rng.choice(counts.shape[0], queries, replace=False):
        terms = counts[d].indices
        if not len(terms):
            continue
        match = " OR ".join(f"t{t}" for t in terms)
        fts = db.execute(
            "SELECT rowid, -bm25(docs) FROM docs WHERE docs MATCH ? ORDER BY bm25(docs), rowid LIMIT 10", (match,)
        ).fetchall()
        ours = np.asarray(weights[:, terms].sum(axis=1)).ravel()
        top = np.lexsort((np.arange(len(ours)), -ours))[:10]
        top = top[ours[top] > 0]  # FTS5 returns only the documents sharing a term
        same_top.append([r for r, _ in fts] == top.tolist())
        close.append(len(fts) == len(top) and np.allclose([s for _, s in fts], ours[top], rtol=1e-6))
    print(
        f"FTS5 bm25() vs the inverted-index BM25 on {len(same_top)} product queries: "
        f"same top-10 rows {np.mean(same_top):.0%}, same scores (rtol 1e-6) {np.mean(close):.0%}"
    )


def bm25_queries(counts: sp.csr_matrix, weights: sp.csr_matrix) -> sp.csr_matrix:
    """Binary query rows (one per lexical row) scaled by 1 / the score against their own text."""
    binary = (counts > 0).astype(np.float32).tocsr()
    self_score = np.asarray(weights.multiply(binary).sum(axis=1)).ravel()
    return (sp.diags(np.where(self_score > 0, 1.0 / np.maximum(self_score, 1e-12), 0.0)) @ binary).tocsr()


def cv(store: IndexStore, lexical_queries: sp.csr_matrix | None, channels: tuple[str, ...], weights: dict) -> tuple:
    """Per fold seed: grouped-CV accuracy and coverage at 99 % precision."""
    labels = store.labels()
    groups = near_duplicate_groups(store)
    rows = np.arange(len(labels))
    queries = stored_queries(store, rows, channels)
    if lexical_queries is not None and "lexical" in queries:
        pos = store.positions("lexical")
        has = pos >= 0
        queries["lexical"] = (sp.diags(has.astype(np.float32)) @ lexical_queries[np.maximum(pos, 0)]).tocsr()
    categorizer = Categorizer(store, {"weights": weights, "threshold": None, "calibration": None})
    acc, cov = [], []
    for seed in SEEDS:
        folds = grouped_folds(labels, groups, seed=seed)
        exclude = folds[:, None] == folds[None, :]  # what cross_val_predictions passes
        preds = categorizer.predict_vectors(queries, exclude=exclude, with_neighbors=False)
        correct = np.array([p.category == lab for p, lab in zip(preds, labels, strict=True)])
        acc.append(correct.mean())
        cov.append(choose_threshold(np.array([p.raw_confidence for p in preds]), correct)["coverage"])
    return np.array(acc), np.array(cov)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("INDEX_DIR", str(ROOT / "var" / "index"))
    store = open_store(path)
    counts = term_counts(store)
    weights = bm25_weights(counts)
    check_against_fts5(counts, weights)
    bm25_store = IndexStore(
        store.path,
        store.version,
        store.manifest,
        store.products,
        store.modalities,
        LexicalIndex(store.lexical.vectorizer, weights.astype(np.float32), store.lexical.rows),
    )
    queries = bm25_queries(counts, weights)
    print(f"grouped CV over {len(SEEDS)} fold seeds, mean +- sd (calibration.py's current protocol, NOT yet nested):")
    fused = {"image": 0.2, "text": 0.4, "lexical": 0.4}
    for name, channels, w in (
        ("lexical alone", ("lexical",), {"lexical": 1.0}),
        ("dense text + lexical", ("text", "lexical"), {"text": 0.5, "lexical": 0.5}),
        ("image + dense text + lexical (0.2/0.4/0.4)", ("image", "text", "lexical"), fused),
    ):
        results = {}
        for scoring, s, q in (("TF-IDF cosine", store, None), ("BM25 (FTS5)", bm25_store, queries)):
            acc, cov = results[scoring] = cv(s, q, channels, w)
            print(
                f"  {name:44} {scoring:14} accuracy {acc.mean():.4f} +- {acc.std():.4f}  "
                f"coverage@99% {cov.mean():.3f} +- {cov.std():.3f}"
            )
        d_acc = results["BM25 (FTS5)"][0] - results["TF-IDF cosine"][0]
        d_cov = results["BM25 (FTS5)"][1] - results["TF-IDF cosine"][1]
        print(
            f"  {'':44} {'BM25 - TF-IDF':14} accuracy {d_acc.mean():+.4f} +- {d_acc.std():.4f}  "
            f"coverage@99% {d_cov.mean():+.3f} +- {d_cov.std():.3f} (paired by seed; BM25 better on "
            f"{int((d_acc > 0).sum())}/{len(d_acc)} seeds)"
        )


if __name__ == "__main__":
    main()
