"""The Milvus store at catalogue scale, on a SYNTHETIC catalogue, against exact search.

The catalogue is bench_search_scale.py's: N products mixed from pairs of same-category real
products of INDEX_DIR (default var/index), dense vectors and lexical rows; nothing is encoded.
It is held as an in-memory FAISS store (Flat: exact search), then copied into Milvus with
`indexer.store.milvus.copy_to_milvus` (the code behind `python -m indexer to-milvus`).

With `--from-index DIR` the catalogue is instead a built local index, memory-mapped, not copied
into memory: at 1M products the in-memory Flat store (8.7 GB) and the server would not fit in
24 GB together. bench_scale.py leaves one (`--work W`: W/index-heaps-1000000, SYNTHETIC, growing
vocabulary). The queries are then its stored products (bench_scale.py's seed, so its FAISS
figures are for the same queries), and the reference is exact search over its stored vectors
(bench_scale.exact_view), streamed in chunks. Either way the copy goes to: by default
a Milvus 2.3.5 standalone server that this bench starts from the `milvus` dev package
(tests/milvus_server.py, free ports, data in a temporary folder; `--uri` names a running one
instead), or Milvus Lite with `--lite`.

Prints, per Milvus index type (FLAT, HNSW):
- insert: the copy's time and products/s (entities with both vectors, the lexical channel and
  the manifest), then the first open (products read back, no vectors);
- predict from stored vectors: the queries are held-out SYNTHETIC products (same recipe, another
  seed: their stored vectors and lexical rows, nothing encoded); one query at a time p50/p95
  (target: Milvus p50 <= 30 ms), twice: as the service runs them (candidates the searches did
  not return get an upper bound first; the exact scores are a second round to the server only
  when a bound could change the answer) and with every candidate scored on the server (two
  rounds each time, the code before the bounds), each with how many predictions asked the
  exact scores and how many fused categories equal exact search's; bounds first once per
  `--bound-depths` depth (rows each search asks the server for and remembers, MILVUS_BOUND_DEPTH,
  while it returns the k asked); and in batches (one search per channel per batch);
- recall@10 of each dense channel against exact search over the same vectors (the FAISS Flat
  store), on the held-out queries;
- agreement: share of the held-out queries where Milvus and the exact store predict the same
  fused category (target >= 99.5 %);
- the server process's RSS and PSS after the copy and after the queries, and its peak RSS during
  the copy and the index building that follows it (a server only, sampled every second);
- one add: `store.append` of one product (its latency), whether the next query finds it first,
  and that query's latency (not with --keep: a kept collection stays the catalogue).
Before the queries it waits until the machine is quiet (a local server's compactions done).
The load average is printed beside every timing: this machine has 2 cores shared with other
jobs, and the server shares them with this process, so the latencies are noisy upper bounds.
FAISS runs with one thread (--threads), as a service worker does; Milvus Lite runs inside this
process, on the same FAISS library. HNSW searches with ef = MILVUS_EF (default 128).

Run: .venv/bin/python bench/bench_milvus.py [--products 100000] [--queries 300] [--index-types FLAT,HNSW,IVF_SQ8]
     [--uri milvus://host:port | --lite] [--from-index DIR] [--keep] [--reuse] [--no-wait]
     [--bound-depths 0,200,400,1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
from bench_scale import exact_view
from bench_search_scale import synthetic
from common import ROOT

sys.path.insert(0, str(ROOT / "tests"))

from indexer.catalog.products import Product
from indexer.categorizer.vote import SIMILARITY_BUDGET, Categorizer, stored_queries
from indexer.store import (
    IndexStore,
    append,
    open_store,  # noqa: E402
)
from indexer.store.errors import IndexNotFound
from indexer.store.milvus import (
    MilvusIndexStore,
    MilvusLocation,
    client_for,
    copy_to_milvus,
    drop,
    read_state,
)

SEED = 0


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(times: list[float]) -> str:
    ms = 1000 * np.asarray(times)
    return f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms"


def single_queries(
    store: IndexStore, queries: dict, count: int, bounds: bool = True
) -> tuple[list[float], list[str | None], int]:
    """Latency and category of `count` one-query predictions, as the service runs them, and how
    many of them asked the store for exact scores (`IndexStore.similarities`: on Milvus, the
    second round to the server, when a candidate's bound could enter a top k the Categorizer
    reads). `bounds=False` asks them every time, as the code before the bounds did."""
    categorizer = Categorizer(store)
    exact, asked = store.similarities, []

    def similarities(requests):  # noqa: ANN001, ANN202 - IndexStore.similarities
        asked.append(1)
        return exact(requests)

    store.similarities = similarities  # type: ignore[method-assign]
    if not bounds:
        store.bounded_similarities = lambda requests: {m: (s, None) for m, s in similarities(requests).items()}  # type: ignore[method-assign]
    times, categories = [], []
    try:
        for i in range(count):
            t0 = time.perf_counter()
            prediction = categorizer.predict_vectors({m: q[i : i + 1] for m, q in queries.items()})[0]
            times.append(time.perf_counter() - t0)
            categories.append(prediction.category)
    finally:
        del store.similarities
        if not bounds:
            del store.bounded_similarities
    return times, categories, len(asked)


def batch_categories(store: IndexStore, queries: dict, batch: int) -> tuple[list[str | None], float]:
    """Predicted categories of every query, `batch` queries per call (one search per channel and
    batch), and the wall time per query."""
    categorizer = Categorizer(store)
    n = next(iter(queries.values())).shape[0]
    out: list[str | None] = []
    t0 = time.perf_counter()
    for lo in range(0, n, batch):
        part = {m: q[lo : lo + batch] for m, q in queries.items()}
        out += [p.category for p in categorizer.predict_vectors(part, with_neighbors=False)]
    return out, (time.perf_counter() - t0) / n


def recall_at_10(store: IndexStore, exact: IndexStore, queries: dict) -> str:
    """Per dense channel: share of the exact top 10 that the store's search returns in its top 10."""
    out = []
    for name, channel in store.modalities.items():
        q = queries[name]
        have = np.flatnonzero(~np.isnan(q).any(axis=1) & (np.abs(q).sum(axis=1) > 0))
        got = np.concatenate([channel.search(q[have[lo : lo + 25]], 10)[1] for lo in range(0, len(have), 25)])
        _, want = exact.modalities[name].search(q[have], 10)
        recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
        out.append(f"{name} {recall:.3f} ({len(have)} queries)")
    return ", ".join(out)


# --reuse also takes a collection this many products larger than the catalogue: kept runs
# before 2026-12-07 added one product each (`one_add`), which made --reuse copy it all again.
EARLIER_ADDS = 3


def held(loc: MilvusLocation) -> int:
    """Products the collection's last commit holds (0 if there is none)."""
    try:
        return int(read_state(client_for(loc.uri), loc, authoritative=True)["rows"])
    except IndexNotFound:
        return 0


def server_memory(server) -> str:  # noqa: ANN001 - tests/milvus_server.EmbeddedMilvus, or None
    if server is None:
        return "server memory: not measured (a server this bench did not start, or Lite)"
    m = server.memory_mb()
    return f"server process RSS {m['rss']:.0f} MB, PSS {m['pss']:.0f} MB"


class PeakMemory:
    """The server process's highest RSS, sampled every second on a thread while in the block."""

    def __init__(self, server) -> None:  # noqa: ANN001 - tests/milvus_server.EmbeddedMilvus, or None
        self.server, self.peak, self._stop = server, 0.0, threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(OSError, KeyError):  # the server just exited
                self.peak = max(self.peak, self.server.memory_mb()["rss"])

    def __enter__(self) -> PeakMemory:
        if self.server is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def __str__(self) -> str:
        return f"server peak RSS {self.peak:.0f} MB" if self.server is not None else "server peak: not measured"


def wait_for_indexes(store: IndexStore, timeout: float = 7200) -> float:
    """Seconds until every modality collection reports its index built over all its rows
    (Milvus builds it per sealed segment, after the inserts): until then searches scan the
    unindexed segments exactly, and the latencies would not be the index's."""
    client, loc = store.modalities[next(iter(store.modalities))].client, store.location  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        pending = 0
        for name in store.modalities:
            info = client.describe_index(loc.channel(name), "vector")
            # and its re-indexing after compactions merge segments (pending_index_rows) is done:
            # until then the server also builds, beside the queries
            total, indexed = int(info.get("total_rows", 0)), int(info.get("indexed_rows", 0))
            pending += max(int(info.get("pending_index_rows", 0)), total - indexed)
        if pending == 0:
            break
        time.sleep(5)
    return time.perf_counter() - t0


def cpu_busy(seconds: float = 10.0) -> float:
    """Cores this machine kept busy over the next `seconds` (/proc/stat), 0 to its core count."""

    def ticks() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    (total0, idle0), _ = ticks(), time.sleep(seconds)
    total1, idle1 = ticks()
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0))


def wait_until_quiet(limit: float = 0.3, windows: int = 3, timeout: float = 3600) -> str:
    """Wait until this machine's cores are idle but `limit` of one over `windows` 10 s windows in
    a row: after its indexes are built a server still compacts and re-indexes segments for
    minutes, with pauses between, and latencies timed meanwhile are that work's, not a
    prediction's. At 1M it does not make the single queries fast: run 5 began them on an idle
    machine (at most 0.11 cores busy over three windows) and still measured 105.8 ms p50 against
    45.4 ms on a long-running server (docs/results.md), so that gap is per-request work on a
    freshly indexed server, not background load. A server on another machine is not watched."""
    t0 = time.perf_counter()
    quiet: list[float] = []
    while len(quiet) < windows and time.perf_counter() - t0 < timeout:
        busy = cpu_busy()
        quiet = quiet + [busy] if busy <= limit else []
    worst = max(quiet) if quiet else float("nan")
    return (
        f"machine quiet (at most {worst:.2f} cores busy over {len(quiet)} windows of 10 s in a row) "
        f"{time.perf_counter() - t0:.0f} s later"
    )


def one_add(store: IndexStore) -> None:
    """Add one product with fresh random unit vectors (no other product is near them), time the
    add, then the next query with those vectors: its nearest neighbour must be the new product."""
    rng = np.random.default_rng(SEED + 1)
    product = Product(f"bench-add-{time.time_ns()}", "bench add", "", None, None, ("Bench Added", "One"), None)
    vectors = {}
    for name, channel in store.modalities.items():
        v = rng.standard_normal((1, np.shape(channel.vectors)[1])).astype(np.float32)
        vectors[name] = v / np.linalg.norm(v)
    t0 = time.perf_counter()
    out = append(store, [product], vectors)
    added = time.perf_counter() - t0
    t0 = time.perf_counter()
    prediction = Categorizer(out).predict_vectors(vectors)[0]
    query = time.perf_counter() - t0
    first = prediction.neighbors[0].id if prediction.neighbors else None
    print(
        f"  one add: {1000 * added:.1f} ms; next query {1000 * query:.1f} ms, its nearest neighbour is the added "
        f"product: {first == product.id}; the old snapshot sees it is stale: {store.is_stale()} ({load_average()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=os.environ.get("INDEX_DIR", str(ROOT / "var" / "index")))
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300, help="held-out query products (agreement)")
    parser.add_argument("--latency-queries", type=int, default=20, help="of those, timed one at a time")
    parser.add_argument("--batch", type=int, default=64, help="queries per batch call (raised past the matrix budget)")
    parser.add_argument("--index-types", default="FLAT", help="FLAT, HNSW and/or IVF_SQ8, comma-separated")
    parser.add_argument("--db", help="Milvus Lite *.db path (default: a temporary folder, removed after)")
    parser.add_argument("--lite", action="store_true", help="Milvus Lite instead of a server")
    parser.add_argument("--uri", help="a running Milvus server (milvus://host:port); default: start one here")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads (the service's default is 1)")
    parser.add_argument("--from-index", help="a built local index as the catalogue (memory-mapped), e.g. 1M products")
    parser.add_argument("--reuse", action="store_true", help="skip the copy if the collection holds the catalogue")
    parser.add_argument("--keep", action="store_true", help="keep the collection (for a later --reuse)")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="measure at once: no wait for the re-indexing after compactions nor a quiet machine (timed under load)",
    )
    parser.add_argument(
        "--bound-depths",
        help="search depths to time one-query predictions at, comma-separated (default: MILVUS_BOUND_DEPTH's)",
    )
    args = parser.parse_args()
    # a FLAT batch search of hundreds of queries at 100k takes longer than the service's 10 s
    os.environ.setdefault("MILVUS_TIMEOUT", "300")
    faiss.omp_set_num_threads(args.threads)  # Milvus Lite searches with this process's FAISS too

    t0 = time.perf_counter()
    if args.from_index:
        faiss_store = open_store(args.from_index)  # memory-mapped
        n = len(faiss_store.products)
        rows = np.random.default_rng(0).integers(0, n, args.queries)  # bench_scale.py's queries
        queries = stored_queries(faiss_store, rows)
        reference = exact_view(faiss_store)
        source = faiss_store.manifest.get("ingest", {}).get("embeddings_dir")
        channels = ", ".join(f"{m} {c.ntotal}" for m, c in faiss_store.channels().items())
        print(
            f"catalogue: the local index {args.from_index} ({source}, {n} products: {channels}), "
            f"memory-mapped; {args.queries} of its products as queries (their stored vectors and lexical rows); "
            f"reference: exact search over its stored vectors ({time.perf_counter() - t0:.1f} s)"
        )
    else:
        real = open_store(args.index)
        faiss_store = synthetic(real, args.products, dense=True, seed=SEED)
        held_out = synthetic(real, args.queries, dense=True, seed=SEED + 1)
        queries = stored_queries(held_out, np.arange(args.queries))
        reference = faiss_store
        print(
            f"SYNTHETIC catalogue: {len(faiss_store.products)} products mixed from {len(real.products)} real ones "
            f"({', '.join(f'{m} {c.ntotal}' for m, c in faiss_store.channels().items())}), plus {args.queries} "
            "held-out SYNTHETIC query products (their stored vectors and lexical rows), "
            f"{time.perf_counter() - t0:.1f} s"
        )
    # batches past the Categorizer's matrix budget are searched (a smaller batch would read every vector)
    smallest = max(args.batch, SIMILARITY_BUDGET // len(faiss_store.products) + 1)
    batches = max(1, args.queries // smallest)
    batch = -(-args.queries // batches)
    t0 = time.perf_counter()
    want, _ = batch_categories(reference, queries, batch)
    print(f"reference (exact search) categories of the {args.queries} queries: {time.perf_counter() - t0:.1f} s")
    times, _, _ = single_queries(faiss_store, queries, args.latency_queries)
    print(
        f"FAISS ({'the local index as built' if args.from_index else 'Flat, in memory: exact search'}): one query "
        f"{percentiles(times)} over {len(times)} ({load_average()})"
    )

    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp:
        server = None
        if args.lite:
            uri, kind = str(Path(args.db or str(Path(tmp) / "bench.db")).resolve()), "Milvus Lite"
        elif args.uri:
            uri, kind = args.uri, f"Milvus server at {args.uri}"
        else:
            from milvus_server import EmbeddedMilvus

            server = EmbeddedMilvus(Path(tmp) / "server").start()
            uri, kind = server.uri, "Milvus 2.3.5 standalone server (started here)"
            print(f"{kind}: up in {server.started_in:.1f} s; {server_memory(server)} ({load_average()})")
        try:
            for index_type in [t.strip().upper() for t in args.index_types.split(",") if t.strip()]:
                loc = MilvusLocation.parse(uri, f"bench_{index_type.lower()}")
                print(f"{kind}, {index_type} (collection {loc.collection}):")
                with PeakMemory(server) as peak:
                    n = len(faiss_store.products)
                    extra = held(loc) - n if args.reuse else -1
                    if 0 <= extra <= EARLIER_ADDS:
                        print(
                            f"  insert: skipped (--reuse: the collection holds the {n} products"
                            + (
                                f", plus {extra} from earlier runs' one-add step: random vectors, far from every query)"
                                if extra
                                else ")"
                            )
                        )
                    else:
                        t0 = time.perf_counter()
                        copy_to_milvus(faiss_store, loc, index_type=index_type, replace=True)
                        copy = time.perf_counter() - t0
                        print(f"  insert {n} products: {copy:.1f} s, {n / copy:.0f} products/s ({load_average()})")
                    t0 = time.perf_counter()
                    store = MilvusIndexStore.open(loc, local=Path(tmp) / "local")  # its audit trail
                    print(
                        "  first open (products and flags read back, collections loaded): "
                        f"{time.perf_counter() - t0:.1f} s"
                    )
                    if args.no_wait:
                        print(f"  indexes: not waited for (--no-wait; {load_average()})")
                    else:
                        waited = wait_for_indexes(store)
                        print(f"  indexes built over every row {waited:.1f} s later ({load_average()})")
                    params = next(iter(store.modalities.values())).search_params  # type: ignore[attr-defined]
                    print(f"  search parameters: {params.get('params', {})} (MILVUS_EF, MILVUS_NPROBE)")
                print(f"  {server_memory(server)}; during the copy and the index building: {peak}")
                if ("127.0.0.1" in uri or "localhost" in uri) and not args.no_wait:
                    print(f"  {wait_until_quiet()}")
                single_queries(store, queries, 3)  # warm-up: first searches
                configured = {m: c.bound_depth for m, c in store.modalities.items()}  # type: ignore[attr-defined]
                depths = [int(d) for d in args.bound_depths.split(",")] if args.bound_depths else [None]
                for depth, bounds in [*((d, True) for d in depths), (0, False)]:
                    for name, channel in store.modalities.items():
                        channel.bound_depth = configured[name] if depth is None else depth  # type: ignore[attr-defined]
                    shown = ", ".join(f"{m} {c.bound_depth}" for m, c in store.modalities.items())  # type: ignore[attr-defined]
                    times, categories, asked = single_queries(store, queries, args.latency_queries, bounds)
                    same = np.mean([a == b for a, b in zip(want, categories, strict=False)])
                    print(
                        f"  one query, {'bounds first' if bounds else 'every candidate scored (two rounds)'}, "
                        f"search depth {shown}: {percentiles(times)} over {len(times)}; exact scores asked for "
                        f"{asked}; fused category equal to exact search's {same:.2%} ({load_average()})"
                    )
                for name, channel in store.modalities.items():
                    channel.bound_depth = configured[name]  # type: ignore[attr-defined]
                print(f"  recall@10 against exact search: {recall_at_10(store, reference, queries)}")
                got, per_query = batch_categories(store, queries, batch)
                agree = np.mean([a == b for a, b in zip(want, got, strict=True)])
                print(f"  batches of {batch}: {1000 * per_query:.1f} ms per query ({load_average()})")
                print(f"  fused category equal to exact search's: {agree:.2%} of {len(got)} queries")
                print(f"  {server_memory(server)}")
                if args.keep:  # the kept collection stays the catalogue, so that --reuse finds it
                    print("  one add: skipped (--keep)")
                else:
                    one_add(store)
                    drop(loc)
        finally:
            if server is not None:
                server.remove()


if __name__ == "__main__":
    main()
