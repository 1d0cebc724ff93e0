"""Command line: `python -m indexer build | add | info | verify | encode | ingest | to-milvus`.

Defaults come from the environment (DATA_DIR, INDEX_DIR, ENCODER_PROFILE, INDEX_FACTORY)
so that `make run`, the service and CI agree without paths written in code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from indexer.catalog.products import CatalogError, ValidationReport, load_catalog
from indexer.encoders import DEFAULT_PROFILE, EncoderUnavailable, create_encoder, list_profiles
from indexer.settings import DEFAULT_INDEX_DIR, index_dir_default, quiet_third_party
from indexer.store import IndexStoreError, open_store
from indexer.store.local.index import DEFAULT_FACTORY


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _rounded(value: object, digits: int = 3) -> object:
    """Floats (also inside dicts and lists) rounded for people: 0.30000001 -> 0.3."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    return value


def cmd_build(args: argparse.Namespace) -> int:
    from indexer.pipeline.build import build_index

    if not args.data:
        raise CatalogError("no dataset: pass --data DIR or set DATA_DIR")
    summary = build_index(
        args.data,
        args.out,
        profile=args.profile,
        factory=args.factory,
        batch_size=args.batch_size,
        progress=not args.quiet,
        use_cache=not args.no_cache,
        added="keep" if args.keep_added else "drop" if args.drop_added else "refuse",
    )
    for line in summary.lines():
        print(line)
    if args.report:  # the build's own report: catalog findings and undecodable images
        for line in ValidationReport(issues=summary.report["issues"]).lines():
            print("  " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from indexer.pipeline.build import add_products

    store = open_store(args.index)
    catalog = load_catalog(args.data)
    new = [p for p in catalog.products if store.row_of(p.id) is None]  # by key: O(batch · log N), no scan
    skipped = len(catalog.products) - len(new)
    if not new:
        print(f"nothing to add: all {skipped} products of {args.data} are already indexed")
        return 0
    encoder = create_encoder(store.profile)
    store, report = add_products(args.index, new, encoder, progress=not args.quiet)
    catalog.report.merge(report)
    print(
        f"added {len(new)} products ({skipped} already indexed); index now holds "
        f"{len(store.products)} products, version {store.version}"
    )
    for line in catalog.report.lines():
        print("  " + line)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from indexer.pipeline.ingest import ingest

    summary = ingest(
        args.embeddings,
        args.out,
        profile=args.profile,
        factory=args.factory,
        batch_rows=args.batch_rows,
        calibrate_decision=not args.no_calibrate,
    )
    for line in summary.lines():
        print(line)
    refused = ValidationReport(issues=summary.report["issues"]).lines()
    for line in refused if args.report else refused[:20]:
        print("  " + line)
    if not args.report and len(refused) > 20:
        print(f"  ... {len(refused) - 20} more (--report prints every one)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from indexer.pipeline.encode import encode_catalog

    if not args.data:
        raise CatalogError("no dataset: pass --data DIR or set DATA_DIR")
    summary = encode_catalog(
        args.data,
        args.out,
        profile=args.profile,
        ray_address=args.ray_address,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        limit=args.limit,
        log=None if args.quiet else print,
    )
    for line in summary.lines():
        print(line)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    store = open_store(args.index)
    m = store.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    print(f"index {store.path} version {store.version} (format {m['format_version']})")
    if store.deltas:
        print(f"deltas: {len(store.deltas)} segments, {store.delta_rows()} products (`compact` merges them)")
    print(f"profile {m['profile']}: {m.get('model_id', m.get('model_ids'))}")
    print(
        f"products {m['counts']['products']}; "
        + ", ".join(f"{mod} {m['counts'].get(mod, 0)} x {m['dims'][mod]}" for mod in m["modalities"])
    )
    print(
        f"FAISS {m['index_factory']} ({m['metric']}); built {m.get('built_at', m.get('written_at'))}; "
        f"data {(m.get('data_fingerprint') or 'unknown')[:12]}"
    )
    counts = m.get("validation", {}).get("counts", {})
    print("validation: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "clean"))
    print("categories: " + ", ".join(m.get("categories", [])))
    lexical = m.get("lexical")
    if lexical:
        print(
            f"lexical channel: {lexical['count']} products, vocabulary {lexical['vocabulary']} ({lexical['model_id']})"
        )
    cat = m.get("categorizer") or {}
    cv = cat.get("cv") or {}
    if cat.get("calibrated") is False:
        print("categorizer: not calibrated (ingest --no-calibrate): every decision is 'review'")
    if cat.get("threshold") is not None:
        print(
            f"categorizer: k={cat['k']}, weights {_rounded(cat['weights'])}; "
            f"auto when confidence >= {cat['threshold']:.3f} "
            f"(deployment fit on all products, not an estimate: the out-of-fold predictions it was chosen on "
            f"give accuracy {cv.get('accuracy', 0):.3f}, auto precision {cv.get('auto_precision', 0):.3f} at "
            f"coverage {cv.get('auto_coverage', 0):.3f}; nested estimates: python -m evaluation report)"
        )
    elif cat:
        print(
            "categorizer: no auto threshold ("
            + str(cv.get("skipped", "not calibrated"))
            + "): every decision is 'review'"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every file of the live version (or of all versions) against the manifest's sizes and
    checksums, and its arrays against the counts; exit 1 naming the damaged file."""
    import time

    from indexer.store.local.index import IndexDamaged, list_versions, read_current, verify_version

    path = Path(args.index)
    live = read_current(path)
    versions = list_versions(path) if args.all else [live]
    damaged = 0
    for version in versions:
        start = time.perf_counter()
        try:
            store = verify_version(path, version)
        except IndexDamaged as exc:
            damaged += 1
            print(f"version {version}{' (live)' if version == live else ''}: DAMAGED: {exc}")
            continue
        seconds = time.perf_counter() - start
        size = sum(f["size"] for f in store.manifest["files"].values())
        print(
            f"version {version}{' (live)' if version == live else ''}: ok, {len(store.manifest['files'])} files, "
            f"{size / 1e6:.1f} MB, {len(store.products)} products, checked in {seconds * 1000:.0f} ms"
        )
    return 1 if damaged else 0


def cmd_compact(args: argparse.Namespace) -> int:
    """Merge the live version's delta segments into a new base version (atomic publish)."""
    import time

    from indexer.store.local.index import compact

    before = open_store(args.index)
    start = time.perf_counter()
    store = compact(args.index)
    if store.version == before.version:
        print(f"index {store.path} version {store.version}: no deltas, nothing to compact")
        return 0
    print(
        f"compacted {len(before.deltas)} delta segments ({before.delta_rows()} products) of version "
        f"{before.version} into version {store.version}: {len(store.products)} products "
        f"in {time.perf_counter() - start:.2f} s"
    )
    return 0


def cmd_to_milvus(args: argparse.Namespace) -> int:
    from indexer.store.factory import copy_to_location

    store = open_store(args.index)
    copied, where = copy_to_location(
        store,
        args.location,
        index_type=args.index_type,
        replace=args.replace,
        collection=args.collection,
        progress=None if args.quiet else lambda done, total: print(f"{done}/{total} products", flush=True),
    )
    print(
        f"copied {store.path} version {store.version} into Milvus {where}: "
        f"{len(copied.products)} products, " + ", ".join(f"{m} {c.ntotal}" for m, c in copied.modalities.items())
    )
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """A catalogue past one machine in one command: `encode` on Ray (resumable), `ingest` the shards
    into the FAISS index at --out, and with --store copy that index into Milvus (`to-milvus`)."""
    encode = argparse.Namespace(
        data=args.data,
        out=args.shards,
        profile=args.profile,
        ray_address=args.ray_address,
        batch_size=args.batch_size,
        shard_rows=args.shard_rows,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        limit=args.limit,
        quiet=args.quiet,
    )
    if cmd_encode(encode):
        return 1
    ingest = argparse.Namespace(
        embeddings=args.shards,
        out=args.out,
        profile=args.profile,
        factory=args.factory,
        batch_rows=args.batch_rows,
        no_calibrate=False,
        report=False,
        json=None,
    )
    if cmd_ingest(ingest) or not args.store:
        return 0 if not args.store else 1
    milvus = argparse.Namespace(
        index=args.out, location=args.store, collection=None, index_type=args.index_type, replace=True, quiet=args.quiet
    )
    return cmd_to_milvus(milvus)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m indexer", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="encode a dataset folder into a new index version")
    b.add_argument("--data", default=_env("DATA_DIR"), help="dataset folder (default $DATA_DIR)")
    b.add_argument(
        "--out", default=index_dir_default(), help=f"index folder (default $INDEX_DIR or {DEFAULT_INDEX_DIR})"
    )
    b.add_argument("--profile", default=_env("ENCODER_PROFILE", DEFAULT_PROFILE), choices=list_profiles())
    b.add_argument("--factory", default=_env("INDEX_FACTORY", DEFAULT_FACTORY), help="FAISS index_factory string")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--no-cache", action="store_true", help="ignore the embedding cache")
    b.add_argument("--report", action="store_true", help="print every validation finding")
    b.add_argument("--json", help="also write the summary as JSON to this file")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    kept = b.add_mutually_exclusive_group()
    kept.add_argument(
        "--keep-added", action="store_true", help="keep products added since the build (re-encoded from the index)"
    )
    kept.add_argument("--drop-added", action="store_true", help="drop products added since the build")
    b.set_defaults(func=cmd_build)
    a = sub.add_parser("add", help="append the new products of a dataset folder to an index")
    a.add_argument("--index", default=index_dir_default())
    a.add_argument("--data", required=True, help="dataset folder in the published layout (CSV + Images/)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_add)
    e = sub.add_parser("encode", help="encode a dataset folder into embedding shards on Ray (for `ingest`)")
    e.add_argument("--data", default=_env("DATA_DIR"), help="dataset folder (default $DATA_DIR)")
    e.add_argument("--out", required=True, help="shard folder (Parquet + embeddings.json); rerun to resume")
    e.add_argument("--ray-address", default=_env("RAY_ADDRESS"), help="Ray cluster (default $RAY_ADDRESS; none: local)")
    e.add_argument("--batch-size", type=int, default=32, help="model batch size")
    e.add_argument("--profile", default=_env("ENCODER_PROFILE", DEFAULT_PROFILE), choices=list_profiles())
    e.add_argument("--shard-rows", type=int, default=128, help="products per shard (keep it to resume)")
    e.add_argument("--workers", type=int, help="Ray actors (default: cluster CPUs / --cpus-per-worker)")
    e.add_argument("--cpus-per-worker", type=int, help="CPUs (torch threads) per actor (default 2)")
    e.add_argument("--limit", type=int, help="only the first N products of the catalogue (trial runs)")
    e.add_argument("--quiet", action="store_true", help="no per-shard progress lines")
    e.set_defaults(func=cmd_encode)
    g = sub.add_parser("ingest", help="publish an index from precomputed embedding shards (Parquet)")
    g.add_argument("--embeddings", required=True, help="folder of *.parquet shards and embeddings.json")
    g.add_argument(
        "--out", default=index_dir_default(), help=f"index folder (default $INDEX_DIR or {DEFAULT_INDEX_DIR})"
    )
    g.add_argument("--profile", choices=list_profiles(), help="default: the live index's, else embeddings.json's")
    g.add_argument("--factory", default=_env("INDEX_FACTORY", DEFAULT_FACTORY), help="FAISS index_factory string")
    g.add_argument("--batch-rows", type=int, default=2048, help="rows per streamed record batch")
    g.add_argument("--no-calibrate", action="store_true", help="skip the CV calibration (decisions: review)")
    g.add_argument("--report", action="store_true", help="print every refused row")
    g.add_argument("--json", help="also write the summary as JSON to this file")
    g.set_defaults(func=cmd_ingest)
    i = sub.add_parser("info", help="describe an index")
    i.add_argument("index", nargs="?", default=index_dir_default())
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_info)
    v = sub.add_parser("verify", help="check an index's files against their recorded sizes and checksums")
    v.add_argument("index", nargs="?", default=index_dir_default())
    v.add_argument("--all", action="store_true", help="every kept version, not only the live one")
    v.set_defaults(func=cmd_verify)
    c = sub.add_parser("compact", help="merge the delta segments of adds into a new base version")
    c.add_argument("index", nargs="?", default=index_dir_default())
    c.set_defaults(func=cmd_compact)
    m = sub.add_parser("to-milvus", help="copy an index version into a Milvus collection (VECTOR_STORE)")
    m.add_argument("index", help="index folder to copy (its live version)")
    m.add_argument("location", help="Milvus Lite *.db path or milvus://host:19530[/collection]")
    m.add_argument("--collection", help="collection name (default $MILVUS_COLLECTION, the URI path or 'products')")
    m.add_argument("--index-type", default="FLAT", choices=["FLAT", "HNSW"], help="Milvus vector index (IP metric)")
    m.add_argument("--replace", action="store_true", help="drop an existing collection of that name first")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_to_milvus)
    q = sub.add_parser("pipeline", help="encode on Ray, ingest into the FAISS index, optionally copy it into Milvus")
    q.add_argument("--data", default=_env("DATA_DIR"), help="dataset folder (default $DATA_DIR)")
    q.add_argument("--shards", required=True, help="shard folder written by encode (rerun to resume)")
    q.add_argument(
        "--out", default=index_dir_default(), help=f"index folder (default $INDEX_DIR or {DEFAULT_INDEX_DIR})"
    )
    q.add_argument("--store", default=None, help="also copy the index into this Milvus location (*.db or milvus://)")
    q.add_argument("--profile", default=_env("ENCODER_PROFILE", DEFAULT_PROFILE), choices=list_profiles())
    q.add_argument("--ray-address", default=_env("RAY_ADDRESS"), help="Ray cluster (default $RAY_ADDRESS; none: local)")
    q.add_argument("--workers", type=int, help="Ray actors (default: cluster CPUs / --cpus-per-worker)")
    q.add_argument("--cpus-per-worker", type=int, help="CPUs (torch threads) per actor (default 2)")
    q.add_argument("--batch-size", type=int, default=32, help="model batch size")
    q.add_argument("--shard-rows", type=int, default=128, help="products per shard (keep it to resume)")
    q.add_argument("--limit", type=int, help="only the first N products of the catalogue (trial runs)")
    q.add_argument("--factory", default=_env("INDEX_FACTORY", DEFAULT_FACTORY), help="FAISS index_factory string")
    q.add_argument("--batch-rows", type=int, default=2048, help="rows per streamed record batch (ingest)")
    q.add_argument("--index-type", default="FLAT", choices=["FLAT", "HNSW"], help="Milvus vector index (IP metric)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_pipeline)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_third_party()
    try:
        return args.func(args)
    except (CatalogError, IndexStoreError, EncoderUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader stopped early (`indexer info --json | head`): not an error of ours; point
        # stdout at /dev/null so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
