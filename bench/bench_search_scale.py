"""The per-query search path at catalogue scale, on a SYNTHETIC catalogue.

Synthetic products are made from the real index (INDEX_DIR, default var/index): each one
mixes two real products of the same category (dense vectors 0.6/0.4 plus Gaussian jitter,
renormalised; lexical TF-IDF rows summed, 30 % of their terms dropped, weights jittered,
renormalised) and takes the first one's category path. The result is more clustered than
a real catalogue, so recall figures here are optimistic. Nothing is encoded.

Prints, per size:
- lexical search p50 for one query: old dense scan (1×N scores + argsort) vs postings;
- filtered similar-product search p50 (image + text + lexical query, top-level and
  second-level category filters): old (Python scan for the mask, depth inflated by the
  excluded rows, filter applied after the search) vs new (cached filter, IDSelector/mask
  inside each channel's search); both through the Categorizer's fused ranking, with the
  overlap of each top-10 with the exact fused ranking (every allowed row a candidate):
  the old depth inflation made the filtered ranking nearly exhaustive, the new one has
  the same `candidates` depth per channel as an unfiltered search (also shown at 4x);
- at --recall-size: recall@10 against exact search of IVF (nprobe sweep) and HNSW32
  (efSearch sweep) on the text vectors, unfiltered and under the top-level filter: what
  indexer/store/local/faiss_search.py DEFAULT_SEARCH_PARAMS was chosen from.

Run: .venv/bin/python bench/bench_search_scale.py [--sizes 10000,100000] [--recall-size 100000]
Sizes above --dense-max time only the lexical channel (a dense synthetic store of 1M x
(1280 + 384) float32 would need 6.6 GB).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp
from common import ROOT
from sklearn.preprocessing import normalize

from indexer.catalog.products import Product
from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.encoders.base import l2_normalize
from indexer.store import open_store  # noqa: E402
from indexer.store.filters import PositionFilter
from indexer.store.lexical import LexicalIndex, present_rows
from indexer.store.local.faiss_search import apply_search_params, exact_search
from indexer.store.local.index import IndexStore, ModalityIndex, make_faiss_index

SEED = 0
QUERIES = 40
NPROBES = (1, 2, 4, 8, 16, 32, 64)
EF_SEARCHES = (16, 32, 64, 128, 256)
RECALL_TARGET = 0.95


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def p50_ms(fn, calls: list) -> float:
    times = []
    for args in calls:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


# ---- the synthetic catalogue -----------------------------------------------------------------
def synthetic(real: IndexStore, n: int, dense: bool, seed: int = SEED) -> IndexStore:
    """n products mixed from pairs of same-category real products (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = real.labels()
    by_cat = {c: np.flatnonzero(labels == c) for c in np.unique(labels) if c}
    cats = np.array(sorted(by_cat))
    chosen = cats[rng.integers(0, len(cats), n)]
    first = np.array([rng.choice(by_cat[c]) for c in chosen]) if n <= 200_000 else None
    if first is None:  # vectorised draw for large n
        first, second = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for c in cats:
            where = np.flatnonzero(chosen == c)
            first[where] = rng.choice(by_cat[c], len(where))
            second[where] = rng.choice(by_cat[c], len(where))
    else:
        second = np.array([rng.choice(by_cat[c]) for c in chosen])
    products = [
        Product(f"syn{i:07d}", "", "", None, None, real.products[r].category_path, None) for i, r in enumerate(first)
    ]
    modalities = {}
    if dense:
        for name, channel in real.modalities.items():
            pos = real.positions(name)
            ok = (pos[first] >= 0) & (pos[second] >= 0)
            a, b = channel.vectors[pos[first[ok]]], channel.vectors[pos[second[ok]]]
            noise = 0.15 * rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(a.shape[1])
            vecs = l2_normalize((0.6 * a + 0.4 * b + noise).astype(np.float32))
            modalities[name] = ModalityIndex(vecs, np.flatnonzero(ok), make_faiss_index(vecs, "Flat"))
    lex = real.lexical
    lpos = real.positions("lexical")
    mix = sp.csr_matrix(
        (np.tile([0.6, 0.4], n), np.column_stack([lpos[first], lpos[second]]).ravel(), np.arange(0, 2 * n + 1, 2)),
        shape=(n, lex.ntotal),
    )
    matrix = (mix @ lex.matrix).tocsr().astype(np.float32)
    matrix.data *= rng.uniform(0.5, 1.5, matrix.nnz).astype(np.float32) * (rng.random(matrix.nnz) > 0.3)
    matrix.eliminate_zeros()
    matrix = normalize(matrix).astype(np.float32).tocsr()
    lexical = LexicalIndex(lex.vectorizer, matrix, np.arange(n))
    return IndexStore(Path("."), f"synthetic-{n}", {"profile": "synthetic"}, products, modalities, lexical)


# ---- the old search path, as main had it before this change (for the comparison only) --------
def old_category_mask(store: IndexStore, path: list[str]) -> np.ndarray:
    return np.array([list(p.category_path[: len(path)]) == path for p in store.products], dtype=bool)


class OldCategorizer(Categorizer):
    """Candidates as before: depth inflated by the excluded rows, exclusion after the search,
    lexical channel by dense scan."""

    def _candidates(self, queries, k, exclude, allowed=None):  # noqa: ANN001, ANN202 - replica
        n = next(iter(queries.values())).shape[0]
        depth = max(self.candidates, k)
        if exclude is not None and exclude.size:
            depth += int(exclude.sum(axis=1).max())
        found = [[] for _ in range(n)]
        for modality, q in queries.items():
            ok = np.flatnonzero(present_rows(q))
            channel = self._channels[modality]
            search = channel.search_dense if modality == "lexical" else channel.search
            _, rows = search(q[ok], depth)
            for i, r in zip(ok, rows, strict=True):
                found[i].append(r[r >= 0])
        out = []
        for i in range(n):
            rows = np.unique(np.concatenate(found[i])) if found[i] else np.zeros(0, np.int64)
            if exclude is not None and len(rows):
                rows = rows[~exclude[i, rows]]
            out.append(rows)
        return out


def old_filtered(categorizer: OldCategorizer, store: IndexStore, query: dict, path: list[str], k: int) -> list:
    exclude = ~old_category_mask(store, path)[None, :]
    return categorizer.neighbors(query, k=k, exclude=exclude)[0]


def new_filtered(categorizer: Categorizer, store: IndexStore, query: dict, path: list[str], k: int) -> list:
    return categorizer.neighbors(query, k=k, allowed=store.category_index().filter(path))[0]


def overlap(found: list[list[int]], truth: list[list[int]]) -> float:
    """Mean share of the exact top-10 rows found (recall@10 of the fused ranking)."""
    return float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))


def overlap_of(categorizer: Categorizer, store: IndexStore, queries: list, path: list[str], truth: list) -> float:
    found = [[h.row for h in new_filtered(categorizer, store, q, path, 10)] for q in queries[: len(truth)]]
    return overlap(found, truth)


# ---- recall of the approximate indexes -------------------------------------------------------
def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def recall_sweep(store: IndexStore, path: list[str]) -> None:
    text = store.modalities["text"]
    vectors, n = text.vectors, len(text.vectors)
    rng = np.random.default_rng(SEED + 1)
    jitter = 0.05 * rng.standard_normal((200, vectors.shape[1]))
    queries = l2_normalize(vectors[rng.choice(n, 200, replace=False)] + jitter).astype(np.float32)
    _, exact = exact_search(vectors, queries, 10)
    allowed_rows = store.category_index().rows_of(path)
    allowed = PositionFilter(np.sort(store.positions("text")[allowed_rows]), n)
    _, exact_f = exact_search(vectors, queries, 10, allowed.positions)
    nlist = 1024 if n >= 50_000 else 256
    for factory, key, values in ((f"IVF{nlist},Flat", "nprobe", NPROBES), ("HNSW32", "efSearch", EF_SEARCHES)):
        t0 = time.perf_counter()
        index = make_faiss_index(vectors, factory)
        built = time.perf_counter() - t0
        print(f"  {factory} on {n} text vectors (built in {built:.1f} s), recall@10 vs exact, 200 queries:")
        chosen = None
        for value in values:
            apply_search_params(index, {"nprobe": value, "efSearch": value})
            channel = ModalityIndex(vectors, np.arange(n), index)
            t0 = time.perf_counter()
            _, found = channel.search(queries, 10)
            ms = 1000 * (time.perf_counter() - t0) / len(queries)
            _, found_f = channel.search(queries, 10, allowed)
            r, rf = recall_at_10(found, exact), recall_at_10(found_f, exact_f)
            print(f"    {key}={value:<4} recall@10 {r:.3f}  filtered ({'>>'.join(path)}) {rf:.3f}  {ms:.2f} ms/query")
            if chosen is None and r >= RECALL_TARGET:
                chosen = value
        print(f"    smallest {key} with recall@10 >= {RECALL_TARGET}: {chosen}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dense-max", type=int, default=200_000)
    parser.add_argument("--recall-size", type=int, default=100_000)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    real = open_store(args.index)
    print(f"SYNTHETIC catalogue mixed from {len(real.products)} real products of {args.index}; 1 FAISS thread")
    rng = np.random.default_rng(SEED)
    for n in [int(s) for s in args.sizes.split(",")]:
        dense = n <= args.dense_max
        t0 = time.perf_counter()
        store = synthetic(real, n, dense)
        print(f"\n== {n} synthetic products (made in {time.perf_counter() - t0:.1f} s), load average {load_average()}")
        lex = store.lexical
        qpos = real.lexical.matrix[rng.choice(real.lexical.ntotal, QUERIES, replace=False)]
        calls = [(qpos[i], 50) for i in range(QUERIES)]
        t0 = time.perf_counter()
        lex.postings  # noqa: B018 - built once per loaded version, outside the per-query figure
        built = time.perf_counter() - t0
        old, new = p50_ms(lex.search_dense, calls), p50_ms(lex.search, calls)
        same = all(np.array_equal(lex.search(q, 50)[1], lex.search_dense(q, 50)[1]) for q, _ in calls[:10])
        print(
            f"lexical search k=50 p50: dense scan {old:.2f} ms -> postings {new:.2f} ms "
            f"(postings built once in {built:.2f} s; same rows as the scan: {same})"
        )
        if not dense:
            continue
        paths = {}
        counts = store.category_index().rows
        top = max((p for p in counts if len(p) == 1), key=lambda p: len(counts[p]))
        second = max((p for p in counts if len(p) == 2 and p[0] == top[0]), key=lambda p: len(counts[p]))
        paths = {"top-level": list(top), "second-level": list(second)}
        new_cat, old_cat = Categorizer(store), OldCategorizer(store)
        rows = rng.choice(n, 20, replace=False)
        queries = [stored_queries(store, [r]) for r in rows]
        for name, path in paths.items():
            share = len(counts[tuple(path)]) / n
            old = p50_ms(old_filtered, [(old_cat, store, q, path, 10) for q in queries[:8]])
            new = p50_ms(new_filtered, [(new_cat, store, q, path, 10) for q in queries])
            exact = Categorizer(store, {"candidates": n})  # every allowed row a candidate: exact fused top-10
            truth = [[h.row for h in new_filtered(exact, store, q, path, 10)] for q in queries[:8]]
            old_hits = [[h.row for h in old_filtered(old_cat, store, q, path, 10)] for q in queries[:8]]
            print(
                f"filtered search k=10, {name} filter {' >> '.join(path)!r} ({share:.1%} of rows) p50: "
                f"old {old:.1f} ms -> new {new:.1f} ms; overlap with the exact fused top-10: "
                f"old {overlap(old_hits, truth):.3f}, new {overlap_of(new_cat, store, queries, path, truth):.3f}"
            )
            deeper = Categorizer(store, {"candidates": 4 * new_cat.candidates})
            deep = p50_ms(new_filtered, [(deeper, store, q, path, 10) for q in queries])
            print(
                f"  new with 4x candidates ({deeper.candidates}): p50 {deep:.1f} ms, overlap with the exact "
                f"fused top-10 {overlap_of(deeper, store, queries, path, truth):.3f}"
            )
        truth = [[h.row for h in exact.neighbors(q, k=10)[0]] for q in queries[:8]]
        found = [[h.row for h in new_cat.neighbors(q, k=10)[0]] for q in queries[:8]]
        print(f"unfiltered search k=10 (reference): overlap with the exact fused top-10 {overlap(found, truth):.3f}")
        if n == args.recall_size:
            recall_sweep(store, list(top))


if __name__ == "__main__":
    main()
