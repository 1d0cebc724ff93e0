"""Search from stored vectors at 100k and 1M SYNTHETIC products: compact vectors, IVF-PQ + refine,
capped lexical postings, and the full predict against exact search.

SYNTHETIC catalogue, made from the real index (INDEX_DIR, default var/index) as in
bench/bench_search_scale.py: each product mixes two real products of one category (dense
vectors 0.6 / 0.4 plus Gaussian jitter, renormalised; lexical TF-IDF rows summed, 30 % of their
terms dropped, weights jittered, renormalised) and takes the first one's category. It is more
clustered than a real catalogue: recall and agreement here are optimistic. Nothing is encoded.
Queries are 200 further products mixed the same way with another seed (not in the index).

Generated in chunks of 50k rows straight into memory-mapped files under --work (int8 codes +
scales per modality as the store writes them, plus float16 at --float16-max rows and below for
the precision comparison), so the process never holds the float32 catalogue (8.7 GB at 1M).

Prints, per size:
- per dense channel, per FAISS candidate (and search setting): build/train time, bytes per
  vector, recall@10 against exact search over the stored vectors, p50/p95 of one query
  (k = 50 candidates, refined by the stored vectors);
- lexical: p50/p95 of top-50 exact over the impact-ordered postings and under each postings
  cap, with recall@10 against exact;
- full predict (image + text + lexical, the Categorizer's fused exact re-rank of the union of
  candidates) p50/p95, and the share of queries whose category equals the one predicted from
  exact candidates (every channel searched exactly);
- at --float16-max and below: agreement of the category predicted with int8 vectors and with
  float16 vectors (both from exact candidates);
- bytes per product on disk (vectors, FAISS indexes, lexical arrays; product metadata not included).
Latencies are single-threaded (one FAISS thread, as a service worker) on a 2-core VM shared with
other jobs: the load average is printed beside them and they are noisy.

Run: .venv/bin/python bench/bench_search_stored.py [--sizes 100000,1000000] [--work /tmp/bench-search]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp
from common import ROOT
from sklearn.preprocessing import normalize

from indexer.catalog.products import Product
from indexer.categorizer.vote import Categorizer
from indexer.store import open_store  # noqa: E402
from indexer.store.base import IndexStore
from indexer.store.lexical import LexicalIndex
from indexer.store.local.faiss_search import LARGE_SEARCH_PARAMS, apply_search_params, build_faiss_index, choose_factory
from indexer.store.local.index import ModalityIndex
from indexer.store.local.segments import RowScaledInt8, quantize_int8

SEED = 0
LEXICAL_CAP = 3000  # the cap the predict line is timed with (beside the exact lexical search)
QUERIES = 200
TIMED = 100
CHUNK = 50_000
DEPTH = 50  # the Categorizer's candidates per channel
CAPS = (1000, 3000, 10000)
SETTINGS = ((16, 8), (32, 16), (64, 16))  # (nprobe, refine) tried per channel


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Timer:
    """Wall-clock and this thread's CPU time of each call: under a load average several times the
    core count the wall figures mostly measure waiting for a core, the CPU ones what a query costs."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Timer:
        self.w, self.c = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self.w)
        self.cpu.append(time.thread_time() - self.c)

    def __str__(self) -> str:
        w, c = 1000 * np.asarray(self.wall[:TIMED]), 1000 * np.asarray(self.cpu[:TIMED])
        return (
            f"wall p50 {np.percentile(w, 50):.2f} / p95 {np.percentile(w, 95):.2f} ms, "
            f"CPU p50 {np.percentile(c, 50):.2f} / p95 {np.percentile(c, 95):.2f} ms (load {load_average()})"
        )


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10][f[:10] >= 0]) & set(e[:10])) / 10 for f, e in zip(found, exact, strict=True)]))


# ---- the synthetic catalogue, written in chunks ----------------------------------------------
class Mixer:
    """Draws pairs of same-category real products (with image and text) and mixes their channels."""

    def __init__(self, real: IndexStore) -> None:
        self.real = real
        labels = real.labels()
        pos = {m: real.positions(m) for m in ("image", "text", "lexical")}
        usable = np.flatnonzero((pos["image"] >= 0) & (pos["text"] >= 0) & (pos["lexical"] >= 0) & (labels != ""))
        self.by_cat = {c: usable[labels[usable] == c] for c in np.unique(labels[usable])}
        self.cats = np.array(sorted(self.by_cat))
        self.pos = pos
        self.dense = {m: np.asarray(real.modalities[m].vectors, np.float32) for m in ("image", "text")}

    def pairs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        chosen = rng.integers(0, len(self.cats), n)
        first, second = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for c, cat in enumerate(self.cats):
            where = np.flatnonzero(chosen == c)
            first[where] = rng.choice(self.by_cat[cat], len(where))
            second[where] = rng.choice(self.by_cat[cat], len(where))
        return first, second

    def dense_rows(self, modality: str, first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        v = self.dense[modality]
        a, b = v[self.pos[modality][first]], v[self.pos[modality][second]]
        noise = 0.15 * rng.standard_normal(a.shape, dtype=np.float32) / np.sqrt(a.shape[1])
        out = 0.6 * a + 0.4 * b + noise
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def lexical_rows(self, first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
        lex, lpos, n = self.real.lexical, self.pos["lexical"], len(first)
        mix = sp.csr_matrix(
            (np.tile([0.6, 0.4], n), np.column_stack([lpos[first], lpos[second]]).ravel(), np.arange(0, 2 * n + 1, 2)),
            shape=(n, lex.ntotal),
        )
        m = (mix @ lex.matrix).tocsr().astype(np.float32)
        m.data *= rng.uniform(0.5, 1.5, m.nnz).astype(np.float32) * (rng.random(m.nnz) > 0.3)
        m.eliminate_zeros()
        return normalize(m).astype(np.float32).tocsr()


def generate(mixer: Mixer, n: int, work: Path, float16: bool) -> tuple[list[Product], dict, LexicalIndex, float]:
    """Write n synthetic products' vectors as memory-mapped files in `work`; returns products,
    per-modality stored vectors ({"int8": RowScaledInt8, "float16": memmap}), the lexical index."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    dims = {m: mixer.dense[m].shape[1] for m in ("image", "text")}
    files: dict[str, dict] = {}
    for m, d in dims.items():
        files[m] = {
            "codes": np.lib.format.open_memmap(work / f"{m}.npy", "w+", np.int8, (n, d)),
            "scale": np.lib.format.open_memmap(work / f"{m}.scale.npy", "w+", np.float32, (n,)),
        }
        if float16:
            files[m]["f16"] = np.lib.format.open_memmap(work / f"{m}.f16.npy", "w+", np.float16, (n, d))
    products: list[Product] = []
    lex_parts = []
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        first, second = mixer.pairs(stop - start, rng)
        for m in dims:
            rows = mixer.dense_rows(m, first, second, rng)
            codes, scale = quantize_int8(rows)
            files[m]["codes"][start:stop], files[m]["scale"][start:stop] = codes, scale
            if float16:
                files[m]["f16"][start:stop] = rows
        lex_parts.append(mixer.lexical_rows(first, second, rng))
        paths = [mixer.real.products[r].category_path for r in first]
        products.extend(Product(f"syn{start + i:07d}", "", "", None, None, p, None) for i, p in enumerate(paths))
    for m in dims:
        for array in files[m].values():
            array.flush()
    stored = {}
    for m in dims:
        codes = np.load(work / f"{m}.npy", mmap_mode="r")
        scale = np.load(work / f"{m}.scale.npy", mmap_mode="r")
        stored[m] = {"int8": RowScaledInt8(codes, scale)}
        if float16:
            stored[m]["float16"] = np.load(work / f"{m}.f16.npy", mmap_mode="r")
    matrix = sp.vstack(lex_parts).tocsr()
    del lex_parts
    lexical = LexicalIndex(mixer.real.lexical.vectorizer, matrix, np.arange(n))
    (work / "lexical").mkdir(exist_ok=True)
    lexical.save(work / "lexical")  # impact-ordered postings, as publish writes them
    del matrix, lexical
    lexical = LexicalIndex.load(work / "lexical")
    return products, stored, lexical, time.perf_counter() - t0


def queries_for(mixer: Mixer, n: int) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(SEED + 1)
    first, second = mixer.pairs(n, rng)
    out = {m: mixer.dense_rows(m, first, second, rng).astype(np.float32) for m in ("image", "text")}
    out["lexical"] = mixer.lexical_rows(first, second, rng)
    return out, mixer.real.labels()[first]


# ---- exact references ------------------------------------------------------------------------
def exact_dense(vectors: RowScaledInt8 | np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k positions per query by one chunked pass over the stored vectors."""
    n = len(vectors)
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_p = np.zeros((len(queries), 0), np.int64)
    for start in range(0, n, CHUNK):
        block = np.asarray(vectors[start : start + CHUNK], np.float32)
        sims = queries @ block.T
        s = np.concatenate([best_s, sims], axis=1)
        p = np.concatenate([best_p, np.broadcast_to(np.arange(start, start + len(block)), sims.shape)], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if s.shape[1] > k else np.argsort(-s, axis=1)
        best_s, best_p = np.take_along_axis(s, top, axis=1), np.take_along_axis(p, top, axis=1)
    order = np.lexsort((best_p, -best_s), axis=-1)
    return np.take_along_axis(best_p, order, axis=1)


class FixedCandidates(Categorizer):
    """The Categorizer's fused re-rank and vote over given candidate rows (exact search's)."""

    def __init__(self, store: IndexStore, candidates: list[np.ndarray]) -> None:
        super().__init__(store)
        self.fixed = candidates
        self.at = 0

    def _candidates(self, queries, k, exclude, allowed=None, full=None):  # noqa: ANN001, ANN202 - override
        return [self.fixed[self.at]]


def predict_one(categorizer: Categorizer, queries: dict, i: int) -> str | None:
    one = {m: (q[i : i + 1] if m != "lexical" else q[i]) for m, q in queries.items()}
    return categorizer.predict_vectors(one, with_neighbors=False)[0].category


# ---- one size --------------------------------------------------------------------------------
def run_size(mixer: Mixer, n: int, work: Path, float16_max: int, factories: str) -> None:
    print(f"\n== {n} SYNTHETIC products, load average {load_average()}")
    products, stored, lexical, made = generate(mixer, n, work, float16=n <= float16_max)
    print(f"generated and written (int8 vectors, lexical arrays + impact-ordered postings) in {made:.1f} s")
    queries, _ = queries_for(mixer, QUERIES)
    names = ("image.npy", "image.scale.npy", "text.npy", "text.scale.npy")
    disk = {name: (work / name).stat().st_size for name in names}
    disk["lexical"] = sum(f.stat().st_size for f in (work / "lexical").iterdir())
    exact = {m: exact_dense(stored[m]["int8"], queries[m], DEPTH) for m in ("image", "text")}
    exact_lex = lexical.search(queries["lexical"], DEPTH, cap=0)[1]
    channels = {}
    for m in ("image", "text"):
        dim = stored[m]["int8"].shape[1]
        chosen = choose_factory("auto", n, dim)
        for factory in [chosen] + [f for f in factories.split(";") if f and f != chosen]:
            factory = factory.format(m=int(chosen.split("PQ")[1].split("x")[0]) if "PQ" in chosen else 64)
            t0 = time.perf_counter()
            index, info = build_faiss_index(stored[m]["int8"], factory)
            path = work / f"{m}.{factory.replace(',', '_')}.faiss"
            faiss.write_index(index, str(path))
            size = path.stat().st_size
            print(
                f"{m} {factory}: train {info['train_seconds']:.1f} s on {info.get('train_rows')} rows (seed "
                f"{info.get('train_seed')}), build {time.perf_counter() - t0:.1f} s, {size / n:.1f} B/vector"
            )
            for nprobe, refine_by in SETTINGS:
                apply_search_params(index, {"nprobe": nprobe, "efSearch": 64})
                channel = ModalityIndex(stored[m]["int8"], np.arange(n), index, refine=refine_by)
                timer, found = Timer(), []
                for i in range(QUERIES):
                    with timer:
                        _, rows = channel.search(queries[m][i : i + 1], DEPTH)
                    found.append(rows[0])
                recall = recall_at_10(np.array(found), exact[m])
                print(f"  nprobe {nprobe:<3} refine {refine_by:<3} recall@10 {recall:.3f}  {timer}")
            if factory == chosen:
                disk[f"{m}.faiss"] = size
                apply_search_params(index, LARGE_SEARCH_PARAMS)
                refine_by = LARGE_SEARCH_PARAMS["refine"]
                channels[m] = ModalityIndex(stored[m]["int8"], np.arange(n), index, refine=refine_by)
    timer = Timer()
    for i in range(TIMED):
        with timer:
            lexical.search(queries["lexical"][i], DEPTH, cap=0)
    print(f"lexical exact (impact-ordered postings) top-{DEPTH}: {timer}")
    for cap in CAPS:
        timer, found = Timer(), []
        for i in range(QUERIES):
            with timer:
                _, rows = lexical.search(queries["lexical"][i], DEPTH, cap=cap)
            found.append(rows[0])
        print(f"lexical cap {cap:<5} top-{DEPTH}: recall@10 {recall_at_10(np.array(found), exact_lex):.3f}  {timer}")
    print(
        "disk per product: "
        + ", ".join(f"{k} {v / n:.0f} B" for k, v in disk.items())
        + f"; total {sum(disk.values()) / n:.0f} B ({sum(disk.values()) / 1e9:.2f} GB at {n})"
    )
    for cap in (0, LEXICAL_CAP):
        lexical.cap = cap
        store = IndexStore(Path("."), f"synthetic-{n}", {"profile": "synthetic"}, products, dict(channels), lexical)
        approx = Categorizer(store)
        timer, got = Timer(), []
        for i in range(QUERIES):
            with timer:
                got.append(predict_one(approx, queries, i))
        union = [np.unique(np.concatenate([exact["image"][i], exact["text"][i], exact_lex[i]])) for i in range(QUERIES)]
        reference = FixedCandidates(store, union)
        want = []
        for i in range(QUERIES):
            reference.at = i
            want.append(predict_one(reference, queries, i))
        agree = np.mean([a == b for a, b in zip(got, want, strict=True)])
        print(
            f"predict (image + text + lexical, nprobe {LARGE_SEARCH_PARAMS['nprobe']}, refine "
            f"{LARGE_SEARCH_PARAMS['refine']}, lexical cap {cap}): {timer}; "
            f"category agreement with exact candidates {agree:.3f} over {QUERIES}"
        )
    if n <= float16_max:
        union = [np.unique(np.concatenate([exact["image"][i], exact["text"][i], exact_lex[i]])) for i in range(QUERIES)]
        cats = {}
        for dtype in ("float16", "int8"):
            mods = {m: ModalityIndex(stored[m][dtype], np.arange(n), channels[m].index) for m in channels}
            store = IndexStore(Path("."), f"synthetic-{n}-{dtype}", {"profile": "synthetic"}, products, mods, lexical)
            reference = FixedCandidates(store, union)
            cats[dtype] = []
            for i in range(QUERIES):
                reference.at = i
                cats[dtype].append(predict_one(reference, queries, i))
        agree = np.mean([a == b for a, b in zip(cats["float16"], cats["int8"], strict=True)])
        print(f"precision: category from int8 vs float16 stored vectors (exact candidates): agreement {agree:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--work", default="/tmp/bench-search-stored")
    parser.add_argument("--float16-max", type=int, default=100_000)
    parser.add_argument("--factories", default="", help="';'-separated extra candidates ({m}: the chosen PQ m)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    real = open_store(args.index)
    print(f"SYNTHETIC catalogue mixed from {len(real.products)} real products of {args.index}; 1 FAISS thread")
    mixer = Mixer(real)
    for n in [int(s) for s in args.sizes.split(",")]:
        work = Path(args.work) / str(n)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        nlist = 2 ** max(4, round(np.log2(np.sqrt(n))))
        try:
            run_size(mixer, n, work, args.float16_max, args.factories.replace("{nlist}", str(nlist)))
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
