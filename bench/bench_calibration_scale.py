"""Deployment calibration and near-duplicate grouping vs catalogue size, on SYNTHETIC catalogues.

Synthetic products are made from the real index (--real, default INDEX_DIR or var/index; run
`make index` first): each one mixes three real products of one category (Dirichlet weights)
plus Gaussian jitter in each dense channel, and sums their lexical TF-IDF rows with 30 % of
the terms dropped; PLANTED_TWINS of them are near-copies of another synthetic product (dense
jitter 0.02, lexical weights x U(0.9, 1.1)), so near-duplicate groups exist as in a real
catalogue. Nothing is encoded, nothing here says anything about accuracy.

Per size it prints (peak RSS sampled every 10 ms from /proc; load average beside each figure:
the machine has 2 cores shared with other processes, so timings are noisy):
- `calibrate(store)`: the build's deployment fit (stratified sample of CALIBRATION_SAMPLE seeds,
  each held out with its direct near-twins, inner grouped 5-fold CV over PARAM_GRID, isotonic
  fit, threshold); its time (and the sample's share), peak RSS above the loaded store, the
  seeds tried / kept / abandoned, the twins held out, the threshold and its coverage;
- `near_duplicate_groups(store)` over every product (what the evaluation uses), up to
  --groups-max: time, peak RSS, group sizes;
- at sizes up to --exact-max, the replaced N x N grouping (time, peak) and whether both give
  the same groups.

Dense channels use FAISS Flat up to --flat-max products, else --factory (HNSW32 by default),
as a large index would be built. Run:
.venv/bin/python bench/bench_calibration_scale.py [--sizes 10000,100000] [--sample 10000]

`--index PATH` instead calibrates an existing index folder (e.g. the SYNTHETIC 100k or 1M index
that `bench/bench_scale.py --work DIR` leaves as DIR/index-1000000) as the build would, printing
the same `calibrate` line, nothing else:
.venv/bin/python bench/bench_calibration_scale.py --index DIR/index-1000000 [--sample 5000]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from common import ROOT
from sklearn.preprocessing import normalize

from indexer.catalog.products import Product
from indexer.categorizer import protocol as calibration
from indexer.encoders.base import l2_normalize
from indexer.store import open_store  # noqa: E402
from indexer.store.lexical import LexicalIndex
from indexer.store.local.index import IndexStore, ModalityIndex, make_faiss_index

SEED = 0
PARENTS = 3
JITTER = 0.5  # norm of the Gaussian jitter added to each dense vector (before renormalising)
PLANTED_TWINS = 0.05  # share of products that are near-copies of another synthetic product


def load_average() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Peak RSS (MB) while the block runs, sampled every 10 ms, and the RSS before it."""
    out = {"before": rss_mb(), "peak": rss_mb()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            out["peak"] = max(out["peak"], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out["peak"] = max(out["peak"], rss_mb())


def timed(fn: Callable[[], Any]) -> tuple[Any, float, dict[str, float]]:
    with peak_rss() as mem:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, mem


# ---- the synthetic catalogue -------------------------------------------------------------
def synthetic(real: IndexStore, n: int, factory: str, seed: int = SEED) -> IndexStore:
    """n SYNTHETIC products from the real index (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = real.labels()
    by_cat = {c: np.flatnonzero(labels == c) for c in np.unique(labels) if c}
    cats = np.array(sorted(by_cat))
    chosen = rng.integers(0, len(cats), n)
    parents = np.zeros((n, PARENTS), np.int64)
    for c, name in enumerate(cats):
        where = np.flatnonzero(chosen == c)
        parents[where] = rng.choice(by_cat[name], (len(where), PARENTS))
    weights = rng.dirichlet(np.ones(PARENTS), n).astype(np.float32)
    twins = rng.random(n) < PLANTED_TWINS
    twins[0] = False
    source = np.where(twins, rng.integers(0, np.maximum(np.arange(n), 1)), np.arange(n))  # an earlier product
    products = [
        Product(f"syn{i:07d}", "", "", None, None, real.products[parents[source[i], 0]].category_path, None)
        for i in range(n)
    ]
    modalities = {}
    for name, channel in real.modalities.items():
        pos = real.positions(name)
        ok = (pos[parents] >= 0).all(axis=1)
        ok = ok & ok[source]
        dim = channel.vectors.shape[1]
        own = np.zeros((n, dim), np.float32)  # row i: product i's own mixture (absent rows stay 0)
        for start in range(0, n, 50_000):  # bounded temporaries
            r = np.arange(start, min(start + 50_000, n))
            r = r[ok[r]]
            mix = sum(weights[r, j : j + 1] * channel.vectors[pos[parents[r, j]]] for j in range(PARENTS))
            jitter = JITTER * rng.standard_normal(mix.shape).astype(np.float32) / np.sqrt(dim)
            own[r] = l2_normalize(np.asarray(mix, np.float32) + jitter)
        rows = np.flatnonzero(ok)
        vecs = own[source[rows]]
        del own
        copy = twins[rows]
        vecs[copy] = l2_normalize(
            vecs[copy] + 0.02 * rng.standard_normal((int(copy.sum()), dim)).astype(np.float32) / np.sqrt(dim)
        )
        modalities[name] = ModalityIndex(vecs, rows, make_faiss_index(vecs, factory))
    lex, lpos = real.lexical, real.positions("lexical")
    assert lex is not None
    mix = sp.csr_matrix(
        (weights.ravel(), lpos[parents].ravel(), np.arange(0, PARENTS * n + 1, PARENTS)), shape=(n, lex.ntotal)
    )
    matrix = (mix @ lex.matrix).tocsr().astype(np.float32)
    matrix.data *= rng.random(matrix.nnz) > 0.3
    matrix.eliminate_zeros()
    pick = sp.csr_matrix((np.ones(n, np.float32), source, np.arange(n + 1)), shape=(n, n))
    matrix = (pick @ matrix).tocsr()  # twins take their source's row...
    matrix.data *= np.where(np.repeat(twins, np.diff(matrix.indptr)), rng.uniform(0.9, 1.1, matrix.nnz), 1.0).astype(
        np.float32
    )
    matrix = normalize(matrix).astype(np.float32).tocsr()  # ... with weights jittered
    lexical = LexicalIndex(lex.vectorizer, matrix, np.arange(n))
    manifest = {"profile": "synthetic", "modalities": sorted(modalities)}
    return IndexStore(Path("."), f"synthetic-{n}", manifest, products, modalities, lexical)


def group_stats(groups: np.ndarray) -> str:
    sizes = np.bincount(groups)
    return (
        f"groups {len(sizes):,}, products in shared groups {int(sizes[sizes > 1].sum()):,} "
        f"({sizes[sizes > 1].sum() / len(groups):.1%}), largest {int(sizes.max())}"
    )


def old_groups(store: IndexStore) -> np.ndarray:
    """The replaced grouping: each channel's N x N cosine matrix, thresholded (O(N^2) memory)."""
    from scipy.sparse.csgraph import connected_components

    src, dst = [], []
    for channel, t in calibration.GROUP_THRESHOLDS.items():
        sims, rows = calibration.channel_similarities(store, channel)
        i, j = np.nonzero(np.triu(sims >= t, k=1))
        src.append(rows[i])
        dst.append(rows[j])
        del sims
    n = len(store.products)
    a, b = np.concatenate(src), np.concatenate(dst)
    return connected_components(sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[1]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    joint = len(np.unique(np.stack([a, b], axis=1), axis=0))
    return joint == len(np.unique(a)) == len(np.unique(b))


def calibrate_line(store: IndexStore, sample_size: int) -> str:
    """Run `calibrate` as the build does; one line: time (the sample's share), peak RSS, the
    sample record, the chosen weights, threshold and its inner coverage, load average."""
    spent: dict[str, float] = {}
    draw = calibration.calibration_sample

    def timed_sample(*args: Any, **kwargs: Any) -> calibration.CalibrationSample:
        t0 = time.perf_counter()
        out = draw(*args, **kwargs)
        spent["sample"] = time.perf_counter() - t0
        return out

    calibration.calibration_sample = timed_sample  # type: ignore[assignment]  # calibrate calls it by name
    try:
        entry, seconds, mem = timed(lambda: calibration.calibrate(store, size=sample_size))
    finally:
        calibration.calibration_sample = draw  # type: ignore[assignment]
    cv, sample = entry["cv"], entry["cv"].get("sample", {})
    keys = ("tried", "kept", "abandoned", "twins", "largest_group", "largest_group_seeds", "max_twins", "hops")
    drawn = {k: sample.get(k) for k in keys}
    return (
        f"calibrate: {seconds:.1f} s (sample {spent.get('sample', 0.0):.1f} s), peak RSS {mem['peak']:,.0f} MB "
        f"(+{mem['peak'] - mem['before']:,.0f} MB) [{load_average()}]; seeds {drawn} of {sample.get('labelled')} "
        f"labelled, predicted {sample.get('rows')}; weights {entry['weights']}, threshold {entry['threshold']}, "
        f"inner accuracy {cv.get('accuracy')}, auto coverage {cv.get('auto_coverage')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    parser.add_argument("--index", default=None, help="calibrate this existing index instead of synthetic ones")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--sample", type=int, default=calibration.CALIBRATION_SAMPLE)
    parser.add_argument("--flat-max", type=int, default=20_000, help="dense channels use Flat up to this size")
    parser.add_argument("--factory", default="HNSW32", help="FAISS factory above --flat-max")
    parser.add_argument("--groups-max", type=int, default=100_000, help="full grouping up to this size")
    parser.add_argument("--exact-max", type=int, default=10_000, help="old N x N grouping up to this size")
    args = parser.parse_args()
    if args.index:
        t0 = time.perf_counter()
        store = open_store(args.index)
        print(
            f"{args.index}: {len(store.products):,} products, channels {sorted(store.channels())}, loaded in "
            f"{time.perf_counter() - t0:.1f} s, RSS {rss_mb():,.0f} MB [{load_average()}]; sample {args.sample:,}"
        )
        print(calibrate_line(store, args.sample), flush=True)
        return
    real = open_store(args.real)
    print(f"SYNTHETIC catalogues from {args.real} ({len(real.products)} real products); sample {args.sample:,}")
    for n in (int(x) for x in args.sizes.split(",")):
        factory = "Flat" if n <= args.flat_max else args.factory
        t0 = time.perf_counter()
        store = synthetic(real, n, factory)
        print(
            f"\n== {n:,} products (dense: {factory}); built in {time.perf_counter() - t0:.1f} s, RSS {rss_mb():,.0f} MB"
        )
        print(calibrate_line(store, args.sample), flush=True)
        if n <= args.groups_max:
            groups, seconds, mem = timed(lambda s=store: calibration.near_duplicate_groups(s))
            print(
                f"near_duplicate_groups (k-NN graph, k={calibration.GRAPH_K}): {seconds:.1f} s, peak RSS "
                f"{mem['peak']:,.0f} MB (+{mem['peak'] - mem['before']:,.0f} MB) [{load_average()}]; "
                f"{group_stats(groups)}"
            )
        if n <= args.exact_max:
            exact, seconds, mem = timed(lambda s=store: old_groups(s))
            print(
                f"old N x N grouping: {seconds:.1f} s, peak RSS {mem['peak']:,.0f} MB "
                f"(+{mem['peak'] - mem['before']:,.0f} MB) [{load_average()}]; "
                f"same groups as the k-NN graph: {same_partition(exact, groups)}"
            )
        del store


if __name__ == "__main__":
    main()
