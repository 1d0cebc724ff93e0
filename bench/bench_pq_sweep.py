"""Which PQ code size the "auto" factory uses: recall@10 of IVF-PQ fast-scan codes against
exact search, on an ingested SYNTHETIC catalogue (e.g. the `index-100000` that
`bench/bench_scale.py --work DIR` leaves), per PQ size and re-scoring depth.

For each dense channel of --index, IVF<nlist>,PQ<m>x4fs indexes are trained and filled from
the stored vectors (the same `build_faiss_index` as ingest: 65,536 training rows, seed 0),
searched with one thread at nprobe --nprobe for each depth in --depths, the candidates
re-scored with the stored vectors (`faiss_search.refine`, as the store does) and compared
with the exact top 10 over the same stored vectors. The catalogue is SYNTHETIC and more
clustered than a real one: the figures are for choosing among code sizes, not promises.

Run: .venv/bin/python bench/bench_pq_sweep.py --index DIR/index-100000 [--sub-dims 20,10,8,5]
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np
from common import ROOT  # noqa: F401 - puts the project on sys.path

from indexer.categorizer.vote import stored_queries
from indexer.store import open_store  # noqa: E402
from indexer.store.lexical import present_rows
from indexer.store.local.faiss_search import apply_search_params, build_faiss_index, refine

EXACT_CHUNK = 65_536


def exact_top10(vectors, queries: np.ndarray) -> np.ndarray:  # noqa: ANN001 - any stored vectors
    """Positions of the exact 10 nearest stored vectors per query (chunked: O(N·d) time)."""
    sims = np.concatenate(
        [queries @ np.asarray(vectors[s : s + EXACT_CHUNK], np.float32).T for s in range(0, len(vectors), EXACT_CHUNK)],
        axis=1,
    )
    return np.argsort(-sims, axis=1, kind="stable")[:, :10]


def pq_size(dim: int, sub_dims: int) -> int:
    """The even divisor of dim nearest dim / sub_dims (what choose_factory computes)."""
    divisors = [m for m in range(2, dim + 1, 2) if dim % m == 0]
    return min(divisors, key=lambda m: (abs(m - dim / sub_dims), m))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--sub-dims", default="20,10,8")
    parser.add_argument("--depths", default="160,500,800")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    store = open_store(args.index)
    n = len(store.products)
    nlist = 2 ** max(4, round(np.log2(np.sqrt(n))))
    load = os.getloadavg()[0]
    print(f"SYNTHETIC index {args.index}: {n} products, IVF{nlist}, nprobe {args.nprobe} (load {load:.2f})")
    rows = np.random.default_rng(0).integers(0, n, args.queries)
    queries = stored_queries(store, rows)
    for channel, index in store.modalities.items():
        q = np.ascontiguousarray(queries[channel][present_rows(queries[channel])], np.float32)
        want = exact_top10(index.vectors, q)
        dim = q.shape[1]
        for sub in (int(s) for s in args.sub_dims.split(",")):
            m = pq_size(dim, sub)
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            t0 = time.perf_counter()
            built, _ = build_faiss_index(index.vectors, f"IVF{nlist},PQ{m}x4fs")
            took = time.perf_counter() - t0
            faiss.omp_set_num_threads(1)
            apply_search_params(built, {"nprobe": args.nprobe, "efSearch": 64})
            for depth in (int(d) for d in args.depths.split(",")):
                t0 = time.perf_counter()
                _, cand = built.search(q, depth)
                _, got = refine(index.vectors, q, cand, 10)
                ms = 1000 * (time.perf_counter() - t0) / len(q)
                recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)])
                print(
                    f"{channel} (d {dim}) PQ{m}x4fs (d/{sub}, {m // 2} B codes, build {took:.0f} s) depth {depth}: "
                    f"recall@10 {recall:.3f}, search + re-score {ms:.2f} ms"
                )


if __name__ == "__main__":
    main()
