"""The store at catalogue scale: a SYNTHETIC catalogue ingested through `python -m indexer ingest`.

The catalogue is SYNTHETIC (bench/synthetic.py `write_mixed_shards`): each product mixes two
real products of the same category of the real index (INDEX_DIR, default var/index): vectors
0.6 / 0.4 plus jitter, its title words of both real titles. Its description (--vocabulary):
"heaps" (default) draws Zipf-distributed words from a vocabulary that grows with the catalogue
like Heaps' law, as a real one does; "real" (the old catalogue) mixes the real descriptions, so
the vocabulary stays the 945 real products' and lexical postings grow far longer than a real
catalogue's. Its neighbourhoods are more clustered than a real catalogue's, so fused recall is
optimistic. Nothing is encoded.

Prints, per size:
- shard generation time, then ingest time (a subprocess: `python -m indexer ingest`, its own
  summary line with peak RSS), disk size of the live version;
- load time (IndexStore.load + Categorizer, imports excluded) and, for the service, start to
  ready (a fresh interpreter: imports, index with checksums, encoder weights, Categorizer);
  RSS and PSS, split into anonymous and file-mapped (/proc/<pid>/smaps_rollup), of a master that loads the index and
  forks one worker, then two (as gunicorn's preload does), after 20 predictions per worker, and
  of the single worker after 1,000 more (mapped pages it touched add up); the index is read
  once before each, as the service's checksum pass at start leaves it: all cached;
- predict p50/p95 of the first 50 predictions on a cold page cache, then (index cached)
  predict and similar-search p50/p95 from stored vectors (image + text + lexical, k=10), one
  thread (FAISS/OpenMP) as in a service worker, in a fresh process and again after 1,000 other
  predictions (a worker's steady state: the pages it touched are mapped); the lexical top-50
  reading every posting, with the exact pruning and with the manifest's cap (recall@50);
  a product text's lexical query row with the mapped vocabulary and with a dict;
- recall@10 per channel against exact search over the same stored vectors, and agreement of
  the fused category with the one exact candidates give;
- single-add p50/p99 (one product through indexer.store.local.index.append: delta written, fsync'd,
  checksummed, committed, store reloaded) over --adds adds;
- row_of by id and the category counts of base + deltas (products read by key);
- compaction time of those deltas into a new base (indexer.store.local.index.compact).

Run: .venv/bin/python bench/bench_scale.py [--sizes 10000,100000,1000000] [--adds 100]
     [--factory auto] [--calibrate] [--vocabulary heaps|real] [--work DIR [--skip-ingest]]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from common import ROOT
from synthetic import DESCRIPTION_WORDS, VOCABULARIES, ZIPF_EXPONENT, ZIPF_SHIFT, write_mixed_shards

from indexer.catalog.products import Product
from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.store import open_store, read_current  # noqa: E402
from indexer.store.lexical import LexicalIndex, present_rows
from indexer.store.local.index import IndexStore, ModalityIndex, append, compact
from service.state import set_threads

WORKERS = r"""
import gc, os, signal, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from indexer.store import open_store
from indexer.categorizer.vote import Categorizer
threadpool_limits(limits=1, user_api="blas")
t0 = time.perf_counter()
store = open_store(sys.argv[1])
cat = Categorizer(store)
loaded = time.perf_counter() - t0
gc.freeze()  # as service/gunicorn.conf.py does after preload: the GC then leaves shared pages alone
count, more = int(sys.argv[2]), int(sys.argv[3])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
for i in range(count):
    if os.fork() == 0:
        rng = np.random.default_rng(i)
        for row in rng.integers(0, len(store.products), 20):
            cat.predict_rows(np.array([row]), modalities=("image", "text"))
        print(f"ready {os.getpid()} {loaded:.3f}", flush=True)
        if more:
            signal.sigwait({signal.SIGUSR1})
            for row in rng.integers(0, len(store.products), more):
                cat.predict_rows(np.array([row]), modalities=("image", "text"))
            print(f"more {os.getpid()}", flush=True)
        signal.pause()
print(f"master {os.getpid()}", flush=True)
signal.pause()
"""
READY = r"""
import time
t0 = time.perf_counter()
from service.config import Config
from service.state import ServiceState, set_threads
set_threads(1)
state = ServiceState(Config.from_env())
assert state.load(), state.error
live = state.current()
print(f"{time.perf_counter() - t0:.2f} {live.store.manifest.get('profile')} {len(live.store.products)}", flush=True)
"""
EXACT_CHUNK = 65_536  # stored vectors scored at a time by the exact reference
COLD_PREDICTIONS = 50  # predictions timed right after the index's page cache is dropped
WARM_PREDICTIONS = 1000  # further predictions of the single worker: how its PSS grows with use


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rollup(pid: int) -> dict[str, float]:
    """/proc/<pid>/smaps_rollup as {field: MB}."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1]) / 1024
    return fields


def memory(pid: int) -> tuple[float, float, float, float]:
    """(RSS, PSS, PSS of anonymous memory, PSS of mapped files) MB of a process: the anonymous
    part is the process's own heap (shared with the master until written), the file part its
    share of the index pages it has mapped (page cache, shared by every worker mapping them)."""
    f = rollup(pid)
    return f["Rss"], f["Pss"], f["Pss_Anon"], f["Pss_File"]


def drop_page_cache(folder: Path) -> None:
    """Drop the page cache of every file under `folder` (POSIX_FADV_DONTNEED): a cold start."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cache_index(folder: Path) -> None:
    """Read every file under `folder` once, as the service's checksum pass at start does, so each
    memory measurement starts from the same page cache: the whole index cached."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def workers(index: Path, count: int, more: int = 0) -> dict:
    """As gunicorn runs the service (preload, then fork): a master loads the index and the
    Categorizer once, then forks `count` workers that make 20 predictions each. The index is
    read once first (`cache_index`), so every run starts alike. Returns the load time, the master's
    `memory` and each worker's after 20 predictions, and with `more`, each worker's
    after `more` further predictions (mapped pages it touched add up)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    live = index / "versions" / read_current(index)
    cache_index(live)
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKERS, str(index), str(count), str(more)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        pids, master, loaded = [], None, 0.0
        while len(pids) < count or master is None:
            word, pid, *rest = proc.stdout.readline().split()
            if word == "ready":
                pids.append(int(pid))
                loaded = float(rest[0])
            else:
                master = int(pid)
        out = {
            "load": loaded,
            "master": memory(master),
            "workers": [memory(p) for p in pids],
        }
        if more:
            for pid in pids:
                os.kill(pid, signal.SIGUSR1)
            for _ in pids:
                assert proc.stdout.readline().startswith("more")
            out["more"] = [memory(p) for p in pids]
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def service_ready(index: Path) -> str:
    """Seconds from a fresh interpreter to a service state that answers: imports, index load with
    checksums (the service default), encoder weights, Categorizer (service.state.ServiceState)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), INDEX_DIR=str(index), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", READY], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1:]}"
    seconds, profile, products = done.stdout.split()
    return f"{float(seconds):.1f} s (profile {profile}, {products} products, checksums verified)"


def percentiles(times: list[float]) -> str:
    ms = 1000 * np.asarray(times)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms"


def disk_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


class ExactChannel(ModalityIndex):
    """A dense channel searched exactly over its stored vectors, EXACT_CHUNK rows at a time:
    the reference the approximate index is measured against. O(N·d) per batch of queries."""

    def search(self, queries, k, allowed=None):  # noqa: ANN001, ANN201 - same signature as ModalityIndex
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_p = np.zeros((len(queries), 0), np.int64)
        for start in range(0, self.ntotal, EXACT_CHUNK):
            chunk = np.asarray(self.vectors[start : start + EXACT_CHUNK], dtype=np.float32)
            sims = queries @ chunk.T
            if allowed is not None:
                keep = allowed.mask()[start : start + len(chunk)]
                sims[:, ~keep] = -np.inf
            both_s = np.concatenate([best_s, sims], axis=1)
            both_p = np.concatenate([best_p, np.broadcast_to(np.arange(start, start + len(chunk)), sims.shape)], axis=1)
            top = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
            best_s, best_p = np.take_along_axis(both_s, top, 1), np.take_along_axis(both_p, top, 1)
        return best_s, np.where(np.isfinite(best_s), self.rows[best_p], -1)


def exact_view(store: IndexStore) -> IndexStore:
    """The same store with every channel searched exactly (dense: ExactChannel, lexical: a dense
    scan of its matrix), so the Categorizer's candidates are the true nearest ones."""
    dense = {m: ExactChannel(c.vectors, np.asarray(c.rows), c.index) for m, c in store.modalities.items()}
    lexical = store.lexical
    if lexical is not None:
        lexical = replace(lexical)
        lexical.search = lambda q, k, allowed=None: store.lexical.search_dense(q, k)  # type: ignore[method-assign]
    return replace(store, modalities=dense, lexical=lexical)


def recall_at_10(store: IndexStore, exact: IndexStore, queries: dict) -> dict[str, float]:
    """Per channel: share of the exact top 10 the approximate search returns in its top 10."""
    out = {}
    for channel, index in store.channels().items():
        q = queries[channel]
        have = np.flatnonzero(present_rows(q))
        _, got = index.search(q[have], 10)
        _, want = exact.channels()[channel].search(q[have], 10)
        out[channel] = float(np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)]))
    return out


def lexical_both_ways(lexical: LexicalIndex, queries: sp.csr_matrix, k: int = 50) -> str:
    """The lexical channel's top-k (the Categorizer's candidates) one query at a time: exact with
    every posting read, exact with the pruning (LexicalIndex._pruned_hits), and with the
    manifest's postings cap (`_capped_hits`, approximate: its recall@k against exact)."""
    ways = {"every posting": {"cap": 0, "prune": False}, "pruned": {"cap": 0, "prune": True}}
    if lexical.cap:
        ways[f"cap {lexical.cap}"] = {"cap": lexical.cap}
    times: dict[str, list[float]] = {name: [] for name in ways}
    got: dict[str, list[np.ndarray]] = {name: [] for name in ways}
    for i in range(queries.shape[0]):
        for name, kwargs in ways.items():
            t0 = time.perf_counter()
            got[name].append(lexical.search(queries[i], k, **kwargs)[1][0])
            times[name].append(time.perf_counter() - t0)
    exact = got["every posting"]
    parts = []
    for name in ways:
        same = np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got[name], exact, strict=True)])
        parts.append(f"{name} {percentiles(times[name])} (recall@{k} {same:.3f})")
    return f"lexical top-{k} ({queries.shape[0]} queries): " + "; ".join(parts)


def query_rows_both_ways(store: IndexStore, rows: np.ndarray) -> str:
    """A product's lexical query row from its text (what /predict does per request), with the
    published vocabulary as loaded (mapped term hashes, indexer/store/vocabulary.py) and as the
    dict read from its JSON (what every process held before): time per text and the dict's cost
    in this process's memory. The rows must be equal."""
    lexical = store.lexical
    texts = [store.product_text(store.products[int(r)]) for r in rows]
    before = rollup(os.getpid())["Anonymous"]
    vocab = dict(lexical.vectorizer.vocabulary_.items())
    dict_mb = rollup(os.getpid())["Anonymous"] - before
    as_dict = replace(lexical, vectorizer=copy.copy(lexical.vectorizer))
    as_dict.vectorizer.vocabulary_ = vocab
    times: dict[str, list[float]] = {"mapped": [], "dict": []}
    same = 0
    for text in texts:
        got = {}
        for name, index in (("mapped", lexical), ("dict", as_dict)):
            t0 = time.perf_counter()
            got[name] = index.query_rows([text])
            times[name].append(time.perf_counter() - t0)
        same += (got["mapped"] != got["dict"]).nnz == 0
    kind = type(lexical.vectorizer.vocabulary_).__name__
    return (
        f"lexical query row from a product's text ({len(texts)}): vocabulary as loaded ({kind}) "
        f"{percentiles(times['mapped'])}; as a dict {percentiles(times['dict'])}, the dict costing this "
        f"process {dict_mb:.0f} MB; same rows for {same}/{len(texts)}"
    )


def reusable(shards: Path, n: int, vocabulary: str) -> bool:
    """Shards a previous run of this bench left complete in --work (same size and vocabulary):
    generation is skipped."""
    try:
        spec = json.loads((shards / "embeddings.json").read_text())
    except (OSError, ValueError):
        return False
    extra = spec.get("extra", spec)
    same = extra.get("products") == n and extra.get("vocabulary", "real") == vocabulary
    return bool(extra.get("complete")) and same and len(list(shards.glob("*.parquet"))) > 0


def ingest(shards: Path, index: Path, factory: str, calibrate: bool) -> None:
    """`python -m indexer ingest` in a subprocess (its own memory); prints its summary lines."""
    cmd = [sys.executable, "-m", "indexer", "ingest", "--embeddings", str(shards), "--out", str(index)]
    cmd += ["--factory", factory] + ([] if calibrate else ["--no-calibrate"])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode != 0:
        sys.exit(f"ingest failed:\n{done.stdout}\n{done.stderr}")
    print(f"ingest: {time.perf_counter() - t0:.1f} s wall (factory {factory})")
    for line in done.stdout.splitlines():
        print(f"  {line}")


def describe_vocabulary(vocabulary: str) -> str:
    if vocabulary == "heaps":
        return (
            f"vocabulary 'heaps': titles mix real titles' words; descriptions are {DESCRIPTION_WORDS} words of a "
            f"Zipf-Mandelbrot law (s={ZIPF_EXPONENT}, q={ZIPF_SHIFT}) over a vocabulary growing like Heaps' law "
            f"(distinct words ~ tokens^{1 / ZIPF_EXPONENT:.2f}), half shared, half the category's own"
        )
    return "vocabulary 'real' (the old catalogue): words of the 945 real products only, however large the catalogue"


def run(
    real: IndexStore,
    n: int,
    adds: int,
    root: Path,
    factory: str,
    calibrate: bool,
    skip_ingest: bool,
    vocabulary: str = "heaps",
) -> None:
    print(f"\n== {n} SYNTHETIC products, {describe_vocabulary(vocabulary)} (load average {load_average()})")
    shards, index = root / f"shards-{vocabulary}-{n}", root / f"index-{vocabulary}-{n}"
    t0 = time.perf_counter()
    if reusable(shards, n, vocabulary):
        print(f"shards: reusing the {n} SYNTHETIC products already in {shards}, {disk_mb(shards):.0f} MB")
    else:
        write_mixed_shards(real, shards, n, vocabulary=vocabulary)
        print(f"shards: {time.perf_counter() - t0:.1f} s, {disk_mb(shards):.0f} MB")
    if skip_ingest and (index / "CURRENT").exists():
        print(f"ingest: skipped (--skip-ingest), measuring the live version of {index}")
    else:
        ingest(shards, index, factory, calibrate)
    live = index / "versions" / read_current(index)
    print(f"disk, live version: {disk_mb(live):.0f} MB ({disk_mb(live) * 1e6 / n / 1e3:.1f} KB per product)")
    print(f"service ready after start: {service_ready(index)} (load average {load_average()})")
    for count in (1, 2):
        got = workers(index, count, more=WARM_PREDICTIONS if count == 1 else 0)
        mem = lambda m: f"RSS {m[0]:.0f}, PSS {m[1]:.0f} (anon {m[2]:.0f}, files {m[3]:.0f}) MB"  # noqa: E731
        line = f"master + {count} forked worker(s), load {got['load']:.2f} s: master {mem(got['master'])}; "
        line += "; ".join(f"worker {i + 1} after 20 predictions {mem(m)}" for i, m in enumerate(got["workers"]))
        if "more" in got:
            line += f"; after {WARM_PREDICTIONS} more {mem(got['more'][0])}"
        every = [got["master"], *got["workers"]]
        total, anon = sum(m[1] for m in every), sum(m[2] for m in every)
        print(f"{line}; PSS total {total:.0f} MB, of it anon {anon:.0f} MB (load average {load_average()})")
    live = index / "versions" / read_current(index)
    drop_page_cache(live)
    store = open_store(index)
    cat = Categorizer(store)
    cold = np.random.default_rng(1).integers(0, n, COLD_PREDICTIONS)
    cold_queries = stored_queries(store, cold)
    cold_times = []
    for i in range(len(cold)):
        t0 = time.perf_counter()
        cat.predict_vectors({c: v[i : i + 1] for c, v in cold_queries.items()}, with_neighbors=False)
        cold_times.append(time.perf_counter() - t0)
    print(f"predict, first {len(cold)} on a cold page cache (checksums off, after a reboot): {percentiles(cold_times)}")
    cache_index(live)  # as the service's checksum pass leaves it
    rng = np.random.default_rng(0)
    rows = rng.integers(0, n, 200)
    queries = stored_queries(store, rows)
    times, similar, predicted = [], [], []
    for i in range(len(rows)):
        q = {c: v[i : i + 1] for c, v in queries.items()}
        t0 = time.perf_counter()
        predicted.append(cat.predict_vectors(q, with_neighbors=False)[0].category)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cat.neighbors(q, k=10)
        similar.append(time.perf_counter() - t0)
    print(f"predict from stored vectors ({len(rows)}, load average {load_average()}): {percentiles(times)}")
    print(f"similar search from stored vectors ({len(rows)}): {percentiles(similar)}")
    # A service worker in its steady state: the pages its earlier predictions touched are mapped
    # (its PSS after 1,000 predictions is the "after 1000 more" figure above), so fewer page faults.
    warm = stored_queries(store, np.random.default_rng(2).integers(0, n, WARM_PREDICTIONS))
    for i in range(WARM_PREDICTIONS):
        cat.predict_vectors({c: v[i : i + 1] for c, v in warm.items()}, with_neighbors=False)
    steady = []
    fresh = stored_queries(store, (rows + 1) % n)  # the products next to those asked above
    for i in range(len(rows)):
        q = {c: v[i : i + 1] for c, v in fresh.items()}
        t0 = time.perf_counter()
        cat.predict_vectors(q, with_neighbors=False)
        steady.append(time.perf_counter() - t0)
    print(
        f"predict from stored vectors after {WARM_PREDICTIONS} other predictions in this process (a worker's "
        f"steady state; {len(rows)} products not asked before, load average {load_average()}): {percentiles(steady)}"
    )
    if store.lexical is not None:
        terms = np.asarray(store.lexical.matrix.getnnz(axis=0))
        asked = np.unique(queries["lexical"].indices)
        print(
            f"lexical channel: vocabulary {store.lexical.dim} terms, {store.lexical.matrix.nnz / n:.1f} terms per "
            f"product; the queries' terms have {np.mean(terms[asked]):.0f} postings on average, "
            f"the longest {terms.max()}"
        )
        print(lexical_both_ways(store.lexical, queries["lexical"]))
        print(query_rows_both_ways(store, rows))
    exact = exact_view(store)
    recall = recall_at_10(store, exact, queries)
    print("recall@10 against exact search: " + ", ".join(f"{c} {r:.3f}" for c, r in recall.items()))
    exact_categories = [p.category for p in Categorizer(exact).predict_vectors(queries, with_neighbors=False)]
    same = sum(a == b for a, b in zip(predicted, exact_categories, strict=True))
    print(f"fused category, approximate vs exact candidates: same for {same}/{len(rows)} ({same / len(rows):.1%})")
    del exact
    dims = {m: c.vectors.shape[1] for m, c in store.modalities.items()}
    template = store.products[0]
    add_times = []
    tag = len(store.products)  # ids new to this index, also when --skip-ingest measures it again
    for i in range(adds):
        path = template.category_path
        product = Product(f"add{tag}-{i:06d}", "steel water bottle", "a bottle", None, None, path, None)
        vecs = {m: rng.standard_normal((1, d)).astype(np.float32) for m, d in dims.items()}
        t0 = time.perf_counter()
        store = append(store, [product], vecs, compact_past_threshold=False)
        add_times.append(time.perf_counter() - t0)
    print(f"single add ({adds}, deltas 1..{adds}, load average {load_average()}): {percentiles(add_times)}")
    t0 = time.perf_counter()
    reloaded = open_store(index)
    print(f"reload with {len(reloaded.deltas)} deltas, base cached in this process: {time.perf_counter() - t0:.3f} s")
    ids = [f"synthetic-mixed-{r:08d}" for r in rng.integers(0, n, 200)]
    ids += [f"add{tag}-{i:06d}" for i in range(min(adds, 50))]
    lookups = []
    for pid in ids:
        t0 = time.perf_counter()
        assert reloaded.row_of(pid) is not None
        lookups.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    counts = reloaded.category_index().counts()
    took = time.perf_counter() - t0
    us = 1e6 * np.asarray(lookups)
    print(
        f"row_of by id ({len(ids)}, the first builds the deltas' dict): p50 {np.percentile(us, 50):.0f} us, "
        f"p99 {np.percentile(us, 99):.0f} us, max {us.max():.0f} us"
    )
    deltas = len(reloaded.deltas)
    print(f"category counts of base + {deltas} deltas: {1000 * took:.2f} ms ({len(counts)} top-level)")
    del reloaded, store, cat
    t0 = time.perf_counter()
    compacted = compact(index)
    print(f"compaction of {adds} deltas: {time.perf_counter() - t0:.1f} s -> version {compacted.version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--adds", type=int, default=100)
    parser.add_argument("--factory", default="Flat", help="FAISS factory passed to ingest")
    parser.add_argument("--calibrate", action="store_true", help="calibrate the Categorizer at ingest")
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--skip-ingest", action="store_true", help="measure the index a previous run left in --work")
    parser.add_argument("--vocabulary", default="heaps", choices=VOCABULARIES, help="synthetic text (see synthetic.py)")
    args = parser.parse_args()
    set_threads(1)  # torch, FAISS and BLAS: one thread per query, as a service worker (and WORKER) runs
    real = open_store(args.index)
    print(f"real index {args.index}: {len(real.products)} products; SYNTHETIC catalogues follow")
    root = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            run(real, n, args.adds, root, args.factory, args.calibrate, args.skip_ingest, args.vocabulary)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
