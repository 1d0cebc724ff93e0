"""The lexical channel's postings cap at catalogue scale: recall against exact search and time.

On an index `bench/bench_scale.py` ingested (SYNTHETIC; --index DIR, e.g.
var/scale/index-heaps-1000000), for each cap (postings read per query term, heaviest first) and
pool (the best partial scores re-scored exactly, `lexical.CAP_RESCORE`): recall@10 and @50 of
the capped top-50 against the exact top-50, and the time of one query's top-50, p50 / p95, one
thread as in a service worker. Queries are the stored lexical rows of random products (their
whole text: every word of the name and description). The row "exact" is the search without a
cap (`_pruned_hits`, else every posting). `lexical.LARGE_BASE_CAP` and `CAP_RESCORE` were chosen
from this table on the 1M catalogue with the growing vocabulary.

Run: .venv/bin/python bench/bench_lexical_cap.py --index DIR [--queries 200] [--caps 512,1024,2048]
     [--pools 1000,2000,4000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import ROOT  # noqa: F401 - puts the project on sys.path

from indexer.categorizer.vote import stored_queries
from indexer.store import lexical as lexical_module
from indexer.store import open_store
from service.state import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--caps", default="512,1024,2048")
    parser.add_argument("--pools", default="1000,2000,4000")
    args = parser.parse_args()
    set_threads(1)
    store = open_store(args.index)
    lexical = store.lexical
    if lexical is None:
        raise SystemExit(f"{args.index} has no lexical channel")
    rows = np.random.default_rng(0).integers(0, len(store.products), args.queries)
    queries = stored_queries(store, rows)["lexical"]
    have = [i for i in range(queries.shape[0]) if queries[i].nnz]
    print(
        f"index {args.index}: {lexical.ntotal} lexical rows, vocabulary {lexical.dim}, manifest cap {lexical.cap}; "
        f"{len(have)} queries (stored rows of random products)"
    )

    def run(cap: int) -> tuple[list[np.ndarray], list[float]]:
        got, times = [], []
        for i in have:
            t0 = time.perf_counter()
            got.append(lexical.search(queries[i], 50, cap=cap)[1][0])
            times.append(time.perf_counter() - t0)
        return got, times

    exact, times = run(0)
    ms = 1000 * np.asarray(times)
    print(f"exact: p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms")
    for cap in (int(c) for c in args.caps.split(",")):
        for pool in (int(p) for p in args.pools.split(",")):
            lexical_module.CAP_RESCORE = pool
            got, times = run(cap)
            r10 = np.mean([len(set(g[:10]) & set(w[:10])) / 10 for g, w in zip(got, exact, strict=True)])
            r50 = np.mean([len(set(g) & set(w)) / 50 for g, w in zip(got, exact, strict=True)])
            ms = 1000 * np.asarray(times)
            print(
                f"cap {cap}, pool {pool}: recall@10 {r10:.3f}, recall@50 {r50:.3f}; "
                f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms"
            )


if __name__ == "__main__":
    main()
