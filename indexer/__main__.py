"""Command line: `python -m indexer build | add | delete | relabel | history | info | verify | repair | ...`.

Defaults come from the environment (DATA_DIR, INDEX_DIR, ENCODER_PROFILE, INDEX_FACTORY)
so that `make run`, the service and CI agree without paths written in code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from indexer.catalog.products import (
    CatalogError,
    Product,
    ValidationReport,
    format_category_path,
    load_catalog,
    parse_category_path,
)
from indexer.encoders import DEFAULT_PROFILE, EncoderUnavailable, create_encoder, list_profiles
from indexer.settings import DEFAULT_INDEX_DIR, index_dir_default, quiet_third_party
from indexer.store import IndexNotFound, IndexStoreError, open_store
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
        changes="forget" if args.forget_changes else "carry",
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


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete products by id (one delta of tombstones; refused whole if one id is unknown)."""
    from indexer.store import delete

    store = delete(open_store(args.index), args.ids, actor="cli")
    print(
        f"deleted {len(set(args.ids))} product(s) ({', '.join(dict.fromkeys(args.ids))}); index now holds "
        f"{store.product_count()} products, version {store.version}"
    )
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    """Give one product a new category path ("A >> B >> C"); a path new to the index is allowed."""
    from indexer.store import relabel

    path = parse_category_path(args.category)  # a malformed path is refused before the index is opened
    store = open_store(args.index)
    row = store.row_of(args.id)
    before = format_category_path(store.products[row].category_path) if row is not None else None
    known = path[0] in store.categories()
    store = relabel(store, {args.id: path}, actor="cli")
    if before == format_category_path(path):
        print(f"{args.id} is already in {before}: nothing changed")
    else:
        new = "" if known else f" ({path[0]!r} is a new top-level category of the index)"
        print(f"relabelled {args.id}: {before} -> {format_category_path(path)}{new}; version {store.version}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Print a product's audit trail, oldest first (time, action, actor, what changed)."""
    from indexer.store import AuditLog
    from indexer.store.factory import is_milvus_location, routed

    folder = open_store(args.index).path if is_milvus_location(args.index) or routed(args.index) else Path(args.index)
    if not is_milvus_location(args.index) and not folder.is_dir():
        raise IndexNotFound(f"no index at {folder} (build one: python -m indexer build --data DATA_DIR --out {folder})")
    events = AuditLog(folder).history(args.id)
    if args.json:
        print(json.dumps(events, indent=2, ensure_ascii=False))
        return 0
    if not events:
        print(f"no recorded change for product {args.id} in {folder}")
        return 0
    for event in events:
        print(f"{event['time']}  {event['action']:<12} {event['actor']:<12} {_describe(event)}")
    return 0


def _describe(event: dict) -> str:
    """One line saying what an audit event changed."""
    before, after = event.get("before") or {}, event.get("after") or {}
    path = lambda record: format_category_path(record.get("category_path") or []) or "(no category)"  # noqa: E731
    if event["action"] == "relabel":
        return f"{path(before)} -> {path(after)}"
    if event["action"] == "delete":
        return f"deleted {before.get('name', '')!r} ({path(before)})"
    if event["action"] == "rebuild":  # a rebuild set it back to the CSV (--forget-changes) or dropped it
        if not after:
            return f"dropped by a rebuild: {before.get('name', '')!r} ({path(before)})"
        return f"back as in the CSV: {after.get('name', '')!r} in {path(after)}"
    if event["action"] == "reject":
        return "listing rejected" + (f": {json.dumps(before, ensure_ascii=False)[:120]}" if before else "")
    extra = {k: v for k, v in after.items() if k not in Product.__dataclass_fields__}
    note = f" {json.dumps(extra, ensure_ascii=False)[:160]}" if extra else ""
    return f"{after.get('name', '')!r} in {path(after)}{note}"


def cmd_ingest(args: argparse.Namespace) -> int:
    from indexer.pipeline.ingest import ingest, ingest_to_location

    if getattr(args, "store", None):  # straight into Milvus: no FAISS index is built
        summary = ingest_to_location(
            args.embeddings,
            args.store,
            profile=args.profile,
            batch_rows=args.batch_rows,
            calibrate_decision=not args.no_calibrate,
            replace=args.replace,
            index_type=args.index_type,
            collection=args.collection,
        )
    else:
        summary = ingest(
            args.embeddings,
            args.out,
            profile=args.profile,
            factory=args.factory,
            batch_rows=args.batch_rows,
            calibrate_decision=not args.no_calibrate,
            added=_added(args),
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


def _added(args: argparse.Namespace) -> str:
    """What a rebuild does with products added since the last one (--keep-added / --drop-added)."""
    return "keep" if getattr(args, "keep_added", False) else "drop" if getattr(args, "drop_added", False) else "refuse"


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
        changes = [
            f"{m[key]} {label}"
            for key, label in (("deleted_products", "deleted"), ("relabeled_products", "relabelled"))
            if m.get(key)
        ]
        print(
            f"deltas: {len(store.deltas)} segments, {store.delta_rows()} products"
            + (f", {', '.join(changes)}" if changes else "")
            + " (`compact` merges them)"
        )
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
    for line in categorizer_lines(m.get("categorizer") or {}):
        print(line)
    return 0


def categorizer_lines(cat: dict) -> list[str]:
    """What `info` says of the deployment fit: per kind of listing its served threshold (on the
    combiner score), or that the kind goes to review; an index fitted before the kinds has one."""
    cv = cat.get("cv") or {}
    if not cat:
        return []
    if cat.get("calibrated") is False:
        return ["categorizer: not calibrated (ingest --no-calibrate): every decision is 'review'"]
    kinds = cat.get("kinds")
    if kinds:
        rule = cat.get("threshold_rule") or {}
        lines = [
            f"categorizer: k={cat['k']}, weights {_rounded(cat['weights'])}; one threshold per kind of listing "
            f"({rule.get('method', 'finite-sample')}, precision {rule.get('target', 0):.2f} with "
            f"{1 - rule.get('delta', 0):.0%} confidence; deployment fit on all products, not an estimate: "
            "nested estimates: python -m evaluation report)"
        ]
        for kind, fit in kinds.items():
            fit = fit or {}
            if fit.get("threshold") is None:
                lines.append(f"  {kind}: review (no threshold certified on {fit.get('n', 0)} calibration listings)")
            else:
                lines.append(
                    f"  {kind}: auto when the combiner score >= {fit['threshold']:.4f} "
                    f"(in-sample coverage {fit.get('coverage') or 0:.3f} of {fit.get('n', 0)} calibration listings)"
                )
        cut = (cat.get("disagreement") or {}).get("threshold")
        if cut is not None:
            lines.append(f"  photo and text disagreeing by >= {cut:.3f}: review")
        return lines
    if cat.get("threshold") is not None:
        return [
            f"categorizer: k={cat['k']}, weights {_rounded(cat['weights'])}; "
            f"auto when confidence >= {cat['threshold']:.3f} "
            f"(deployment fit on all products, not an estimate: the out-of-fold predictions it was chosen on "
            f"give accuracy {cv.get('accuracy', 0):.3f}, auto precision {cv.get('auto_precision', 0):.3f} at "
            f"coverage {cv.get('auto_coverage', 0):.3f}; nested estimates: python -m evaluation report)"
        ]
    return [
        "categorizer: no auto threshold (" + str(cv.get("skipped", "not calibrated")) + "): every decision is 'review'"
    ]


def cmd_verify(args: argparse.Namespace) -> int:
    """Check CURRENT (its seal, a roll-back), the live version (or every kept version) against the
    sizes, checksums and seals recorded at publish, and the seal chain between versions; exit 1
    naming what is damaged and the version `repair` would restore."""
    from indexer.store.local.repair import inspect

    report = inspect(args.index, all_versions=args.all)
    if report.pointer_problem:
        print(f"CURRENT: {report.pointer_problem}")
    else:
        form = "one-line form written before seals" if report.legacy else "sealed"
        print(f"CURRENT: ok ({form}), names version {report.named}")
    for check in report.versions:
        tag = " (live)" if check.version == report.named else ""
        if not check.ok:
            print(f"version {check.version}{tag}: DAMAGED: {check.problem}")
            continue
        sealed = "not sealed (written before seals)"
        if check.sealed:
            sealed = "sealed" + (f", follows version {check.previous}" if check.previous else "")
        print(
            f"version {check.version}{tag}: ok, {check.files} files, {check.size / 1e6:.1f} MB, {check.products} "
            f"products ({check.deltas} deltas, {check.delta_products} products), {sealed}, "
            f"checked in {check.seconds * 1000:.0f} ms"
        )
    for problem in report.chain_problems:
        print(f"seal chain: {problem}")
    damaged = any(not check.ok for check in report.versions)
    if report.healthy and not damaged:
        return 0
    if not report.healthy:
        intact = report.newest_intact
        print(
            f"newest intact version: {intact}; `python -m indexer repair {args.index}` shows how it restores CURRENT"
            if intact
            else "no version verifies: rebuild with `python -m indexer build`"
        )
    return 1


def cmd_repair(args: argparse.Namespace) -> int:
    """Point CURRENT at the newest version that verifies (moving damaged newer versions aside),
    after printing what it will do; only with --yes is anything changed."""
    from indexer.store.local.repair import apply_repair, describe, plan_repair

    plan = plan_repair(args.index)
    for line in describe(plan):
        print(line)
    if plan.target is None:
        return 2
    if not plan.needed:
        return 0
    if not args.yes:
        print("nothing was changed: run again with --yes to apply")
        return 1
    print(f"repaired: CURRENT names version {apply_repair(args.index, plan)}")
    return 0


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


def cmd_predict(args: argparse.Namespace) -> int:
    """Categorize a file of listings (CSV or JSON lines) offline: one result row per listing."""
    from indexer.pipeline.predict import predict_file

    summary = predict_file(
        args.input,
        args.out,
        args.index,
        images=args.images,
        batch_size=args.batch_size,
        k=args.k,
        progress=not args.quiet,
    )
    for line in summary.lines():
        print(line)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Refit the deployment calibration on the live catalogue (deltas included) and publish it."""
    from indexer.pipeline.calibrate import recalibrate

    for line in recalibrate(args.index, size=args.sample).lines():
        print(line)
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
        keep_added=False,
        drop_added=False,
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
    b.add_argument(
        "--forget-changes",
        action="store_true",
        help="the CSV alone: catalogue products deleted or relabelled through the engine come back as in the CSV "
        "(default: they stay deleted / relabelled, from the audit trail)",
    )
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
    g.add_argument(
        "--store",
        default=None,
        help="ingest straight into this Milvus location (milvus://host:19530[/collection] or *.db) "
        "instead of a FAISS index at --out",
    )
    g.add_argument(
        "--index-type", default="FLAT", choices=["FLAT", "HNSW", "IVF_SQ8"], help="Milvus vector index (--store)"
    )
    g.add_argument("--collection", help="Milvus collection name (--store; default: the URI path or 'products')")
    g.add_argument("--replace", action="store_true", help="drop an existing Milvus collection first (--store)")
    kept = g.add_mutually_exclusive_group()
    kept.add_argument(
        "--keep-added", action="store_true", help="keep products added since the last build (their stored vectors)"
    )
    kept.add_argument("--drop-added", action="store_true", help="drop products added since the last build")
    g.set_defaults(func=cmd_ingest)
    i = sub.add_parser("info", help="describe an index")
    i.add_argument("index", nargs="?", default=index_dir_default())
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_info)
    v = sub.add_parser("verify", help="check an index's files against their recorded sizes and checksums")
    v.add_argument("index", nargs="?", default=index_dir_default())
    v.add_argument("--all", action="store_true", help="every kept version, not only the live one")
    v.set_defaults(func=cmd_verify)
    fix = sub.add_parser("repair", help="point CURRENT at the newest version that verifies (shows the plan first)")
    fix.add_argument("index", nargs="?", default=index_dir_default())
    fix.add_argument("--yes", action="store_true", help="apply the plan (without it nothing is changed)")
    fix.set_defaults(func=cmd_repair)
    d = sub.add_parser("delete", help="delete products by id (recorded in the index's audit trail)")
    d.add_argument("index", help="index folder (or Milvus location)")
    d.add_argument("ids", nargs="+", metavar="ID", help="product ids; one unknown or deleted id refuses them all")
    d.set_defaults(func=cmd_delete)
    r = sub.add_parser("relabel", help="give a product a new category path (recorded in the audit trail)")
    r.add_argument("index", help="index folder (or Milvus location)")
    r.add_argument("id", help="product id")
    r.add_argument("category", help="the new path, e.g. 'Watches >> Wrist Watches' (a new category is allowed)")
    r.set_defaults(func=cmd_relabel)
    h = sub.add_parser("history", help="print a product's audit trail: every add, relabel, delete, review")
    h.add_argument("index", help="index folder (or Milvus location)")
    h.add_argument("id", help="product id")
    h.add_argument("--json", action="store_true", help="the events as JSON (before and after in full)")
    h.set_defaults(func=cmd_history)
    c = sub.add_parser("compact", help="merge the delta segments (adds, deletes, relabels) into a new base version")
    c.add_argument("index", nargs="?", default=index_dir_default())
    c.set_defaults(func=cmd_compact)
    m = sub.add_parser("to-milvus", help="copy an index version into a Milvus collection (VECTOR_STORE)")
    m.add_argument("index", help="index folder to copy (its live version)")
    m.add_argument("location", help="Milvus Lite *.db path or milvus://host:19530[/collection]")
    m.add_argument("--collection", help="collection name (default $MILVUS_COLLECTION, the URI path or 'products')")
    m.add_argument(
        "--index-type", default="FLAT", choices=["FLAT", "HNSW", "IVF_SQ8"], help="Milvus vector index (IP metric)"
    )
    m.add_argument("--replace", action="store_true", help="drop an existing collection of that name first")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_to_milvus)
    r = sub.add_parser("predict", help="categorize a file of listings (CSV or JSON lines) into a results file")
    r.add_argument("--input", required=True, help="listings: .csv (header: title, description, image, id) or .jsonl")
    r.add_argument("--out", required=True, help="results: .csv, or .jsonl for one JSON object per listing")
    r.add_argument("--images", help="folder holding the files the `image` column names")
    r.add_argument("--index", default=_env("INDEX_DIR", "var/index"), help="index folder (default $INDEX_DIR)")
    r.add_argument("--batch-size", type=int, default=64, help="listings encoded together (memory is O(batch))")
    r.add_argument("--k", type=int, help="neighbours that vote (default: the index's categorizer)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_predict)
    k = sub.add_parser("calibrate", help="refit the auto/review calibration on the live catalogue and publish it")
    k.add_argument("index", nargs="?", default=_env("INDEX_DIR", "var/index"))
    k.add_argument("--sample", type=int, help="products predicted by the fit (default $CALIBRATION_SAMPLE or 5000)")
    k.set_defaults(func=cmd_calibrate)
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
    q.add_argument(
        "--index-type", default="FLAT", choices=["FLAT", "HNSW", "IVF_SQ8"], help="Milvus vector index (IP metric)"
    )
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_pipeline)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_third_party()
    try:
        return args.func(args)
    except (CatalogError, IndexStoreError, EncoderUnavailable, ValueError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader stopped early (`indexer info --json | head`): not an error of ours; point
        # stdout at /dev/null so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full or read-only disk: say so, the index is left as it was
        print(
            f"error: {exc.strerror or exc} ({exc.filename or 'the index folder'}); nothing was published",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
