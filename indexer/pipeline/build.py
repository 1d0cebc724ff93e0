"""Build and add pipeline: catalog -> cached or fresh embeddings -> published index.

Images are read and hashed, looked up in the embedding cache, and only the misses
are decoded (in a thread pool, overlapping the model's forward passes) and encoded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tqdm.auto import tqdm

from indexer.catalog.images import ImageError, load_image
from indexer.catalog.products import Catalog, Product, ValidationReport, load_catalog
from indexer.catalog.text import DEFAULT_STRIP_BOILERPLATE, encoder_text
from indexer.encoders import DEFAULT_PROFILE, Encoder, create_encoder, model_id
from indexer.encoders.cache import EmbeddingCache, content_key, open_cache
from indexer.pipeline.changes import carry_changes, dropped_events
from indexer.store import AuditLog, IndexStore, IndexStoreError, append, open_store
from indexer.store.audit import utc_now
from indexer.store.lexical import LexicalIndex
from indexer.store.local.handover import Snapshot, base_lock
from indexer.store.local.index import (
    BASE_EVENTS,
    DEFAULT_FACTORY,
    FORMAT_VERSION,
    LocalIndexStore,
    last_verified,
    publish_base,
    record_pending_events,
    stage_version,
)

CACHE_FILE = "cache.sqlite"
REFUSE, KEEP, DROP = "refuse", "keep", "drop"  # what a rebuild does with products added since the build
CARRY, FORGET = "carry", "forget"  # what a rebuild does with catalogue products deleted or relabelled since


class AddedProductsWouldBeDropped(IndexStoreError):
    """A rebuild would silently lose products added through `add` or the API."""


DECODE_AHEAD = 256  # images decoded ahead of the model (~150 MB of float32 inputs) while it loads


@dataclass
class Encoded:
    """Vectors for a list of products; NaN rows where a modality is absent."""

    vectors: dict[str, np.ndarray]
    report: ValidationReport
    cached: dict[str, int] = field(default_factory=dict)
    encoded: dict[str, int] = field(default_factory=dict)
    image_hashes: dict[str, str] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)

    def present(self, modality: str) -> np.ndarray:
        return ~np.isnan(self.vectors[modality]).any(axis=1)


@dataclass
class BuildSummary:
    index_dir: str
    version: str
    profile: str
    products: int
    indexed: dict[str, int]
    skipped: dict[str, int]
    cached: dict[str, int]
    encoded: dict[str, int]
    seconds: float
    encode_seconds: float
    products_per_s: float
    peak_rss_mb: float
    report: dict
    changes: dict[str, int] = field(default_factory=dict)  # catalogue changes carried (or forgotten)
    forgotten: bool = False

    def lines(self) -> list[str]:
        counts = ", ".join(f"{v} {k}" for k, v in self.changes.items()) or "none"
        return [
            f"index {self.index_dir} version {self.version} (profile {self.profile})",
            f"products: {self.products}; indexed image: {self.indexed.get('image', 0)}, "
            f"text: {self.indexed.get('text', 0)}",
            "skipped/reported: " + (", ".join(f"{k} {v}" for k, v in self.skipped.items()) or "none"),
            f"embeddings from cache: image {self.cached.get('image', 0)}, text {self.cached.get('text', 0)}; "
            f"freshly encoded: image {self.encoded.get('image', 0)}, text {self.encoded.get('text', 0)}",
            f"time {self.seconds:.1f} s (encoding {self.encode_seconds:.1f} s): {self.products_per_s:.1f} products/s; "
            f"peak RSS {self.peak_rss_mb:.0f} MB",
            (
                f"catalogue changes forgotten (--forget-changes), back as in the CSV: {counts}"
                if self.forgotten
                else f"catalogue changes carried from the audit trail: {counts}"
            ),
        ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cache_model(encoder: Encoder, modality: str) -> str:
    return f"{encoder.model_ids[modality]}|{getattr(encoder, 'precision', 'fp32')}"


def product_texts(products: Sequence[Product], strip: bool = DEFAULT_STRIP_BOILERPLATE) -> list[str]:
    return [encoder_text(p.name, p.description, strip=strip) for p in products]


def _read(path: Path) -> bytes | Exception:
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc


def encode_products(
    products: Sequence[Product],
    encoder: Encoder,
    cache: EmbeddingCache | None = None,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    strip_boilerplate: bool = DEFAULT_STRIP_BOILERPLATE,
) -> Encoded:
    """Image and text vectors for `products`, using and filling the cache.

    Both caches are consulted first; if anything is left to encode, the models load in a
    background thread while images are decoded ahead (a single-core job that would
    otherwise leave the second core idle).
    """
    n = len(products)
    report = ValidationReport()
    out = {m: np.full((n, encoder.dims[m]), np.nan, dtype=np.float32) for m in ("image", "text")}
    bar = tqdm(total=2 * n, desc="encoding", unit="item", disable=not progress, leave=False)

    hashes = _hash_images(products, report)
    image_keys = {row: hashes[p.id] for row, p in enumerate(products) if p.id in hashes}
    texts = product_texts(products, strip_boilerplate)
    text_keys = {row: content_key(t) for row, t in enumerate(texts) if t}
    models = {m: _cache_model(encoder, m) for m in ("image", "text")}
    image_todo = _fill_from_cache(out["image"], image_keys, cache, models["image"])
    text_todo = _fill_from_cache(out["text"], text_keys, cache, models["text"])
    bar.update(2 * n - len(image_todo) - len(text_todo))

    loader = None
    if (image_todo or text_todo) and hasattr(encoder, "load"):
        loader = threading.Thread(target=_quiet_load, args=(encoder,), daemon=True)
        loader.start()
    new_images = _encode_images(
        products, image_todo, image_keys, encoder, out["image"], report, bar, batch_size, workers
    )
    new_texts = {}
    for start in range(0, len(text_todo), 4 * batch_size):
        rows = text_todo[start : start + 4 * batch_size]
        vectors = encoder.encode_texts([texts[r] for r in rows], batch_size=batch_size)
        out["text"][rows] = vectors
        new_texts.update({text_keys[r]: v for r, v in zip(rows, vectors, strict=True)})
        bar.update(len(rows))
    if loader is not None:
        loader.join()
    if cache:
        for modality, items in (("image", new_images), ("text", new_texts)):
            if items:
                cache.put_many(models[modality], items)
    bar.close()
    return Encoded(
        vectors=out,
        report=report,
        cached={"image": len(image_keys) - len(image_todo), "text": len(text_keys) - len(text_todo)},
        encoded={
            "image": int((~np.isnan(out["image"][image_todo, 0])).sum()) if image_todo else 0,
            "text": len(text_todo),
        },
        image_hashes=hashes,
        texts=texts,
    )


class _Loadable(Protocol):
    """An encoder that can load its models eagerly (encode_products checks `hasattr(encoder, "load")`)."""

    def load(self) -> object: ...


_T = TypeVar("_T")


def _quiet_load(encoder: _Loadable) -> None:
    """Background load; a failure is raised again, in the caller, by its first encode."""
    with contextlib.suppress(Exception):  # re-raised by the encode call that needs the model
        encoder.load()


def _hash_images(products: Sequence[Product], report: ValidationReport) -> dict[str, str]:
    """Content hash per product id with a readable image; the bytes are not kept."""
    hashes = {}
    for product in products:
        if product.image_path is None:
            continue
        data = _read(product.image_path)
        if isinstance(data, Exception):
            report.add("unreadable_image", product.id, str(data))
        else:
            hashes[product.id] = content_key(data)
    return hashes


def _fill_from_cache(matrix: np.ndarray, keys: dict[int, str], cache: EmbeddingCache | None, model: str) -> list[int]:
    """Copy cached vectors into `matrix`; return the rows still to encode."""
    hits = cache.get_many(model, keys.values()) if cache else {}
    todo = []
    for row, key in keys.items():
        vector = hits.get(key)
        if vector is not None and vector.shape[0] == matrix.shape[1]:
            matrix[row] = vector
        else:
            todo.append(row)
    return todo


def _decoded_in_order(
    pool: ThreadPoolExecutor, rows: Sequence[int], prepare: Callable[[int], _T], ahead: int
) -> Iterator[tuple[int, _T]]:
    """(row, result) in row order, with at most `ahead` decodes in flight."""
    pending: deque[tuple[int, Future[_T]]] = deque()
    for row in rows:
        pending.append((row, pool.submit(prepare, row)))
        if len(pending) >= ahead:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


def _encode_images(
    products: Sequence[Product],
    rows: Sequence[int],
    keys: dict[int, str],
    encoder: Encoder,
    out: np.ndarray,
    report: ValidationReport,
    bar: tqdm[Any],
    batch_size: int,
    workers: int,
) -> dict[str, np.ndarray]:
    """Decode (thread pool, ahead of the model) and encode the image rows; new cache items
    keyed by `keys[row]`, the image's content hash."""
    new_items: dict[str, np.ndarray] = {}

    def prepare(row: int) -> np.ndarray | ImageError:
        path = products[row].image_path
        assert path is not None  # `rows` are products with a hashed (readable) image
        try:
            return encoder.preprocess(load_image(path, draft_size=encoder.image_size))
        except ImageError as exc:
            return exc

    def flush(batch: list[tuple[int, np.ndarray]]) -> None:
        vectors = encoder.encode_arrays([array for _, array in batch], batch_size=batch_size)
        for (row, _), vector in zip(batch, vectors, strict=True):
            out[row] = vector
            new_items[keys[row]] = vector
        bar.update(len(batch))

    batch: list[tuple[int, np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for row, result in _decoded_in_order(pool, rows, prepare, DECODE_AHEAD):
            if isinstance(result, Exception):
                report.add("unreadable_image", products[row].id, str(result))
                bar.update(1)
                continue
            batch.append((row, result))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    return new_items


def data_fingerprint(catalog: Catalog, image_hashes: dict[str, str]) -> str:
    digest = hashlib.sha256(catalog.csv_path.read_bytes())
    for pid in sorted(image_hashes):
        digest.update(f"{pid}:{image_hashes[pid]}".encode())
    return digest.hexdigest()


def build_index(
    data_dir: str | Path,
    out_dir: str | Path,
    profile: str = DEFAULT_PROFILE,
    encoder: Encoder | None = None,
    factory: str = DEFAULT_FACTORY,
    batch_size: int = 32,
    progress: bool = True,
    use_cache: bool = True,
    on_encoded: Callable[[], None] | None = None,
    calibrate_decision: bool = True,
    added: str = REFUSE,
    changes: str = CARRY,
    actor: str = "cli",
) -> BuildSummary:
    """Encode every product of the dataset at `data_dir` and publish a new index version.

    Products added to the index since its build (ids not in the catalogue) are kept
    (`added="keep"`: re-encoded from their stored text and uploaded photo, mostly cache
    hits), dropped (`added="drop"`), or, by default, the build refuses before encoding and
    says how many it would drop. Products added while the build runs are carried into the
    version it publishes (indexer.store.local.handover), whatever `added` says: the build
    holds the index's base lock, so no compaction or other rebuild publishes meanwhile.

    Catalogue products deleted or relabelled through the engine since (the index's audit trail,
    see indexer.pipeline.changes) stay deleted or relabelled (`changes="carry"`); with
    `changes="forget"` they are back as the CSV has them. Each product the build sets back, and
    each added product it drops, is a `rebuild` audit event by `actor`, kept in the published
    manifest until recorded (kill-safe like a delta's events).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    catalog = load_catalog(data_dir)
    if added not in (REFUSE, KEEP, DROP):
        raise ValueError(f"added must be one of {REFUSE}, {KEEP}, {DROP}; got {added!r}")
    if changes not in (CARRY, FORGET):
        raise ValueError(f"changes must be one of {CARRY}, {FORGET}; got {changes!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with base_lock(out_dir):
        live = live_store(out_dir)
        snapshot = Snapshot.of(live)
        at = utc_now()  # the snapshot's time: what this build sets back is older than what it carries
        if isinstance(live, LocalIndexStore):
            record_pending_events(live)  # the trail is complete up to the snapshot
        extra = _added_products(live, catalog.products)
        if extra and added == REFUSE:
            raise AddedProductsWouldBeDropped(
                f"the live index {out_dir.name}/ holds {len(extra)} added products that are not in the catalogue "
                f"of {Path(data_dir).name}/; this build would drop them. Pass --keep-added to keep them "
                "(re-encoded from their stored text and photos) or --drop-added to drop them."
            )
        carried = carry_changes(catalog.products, live, AuditLog(out_dir).changes(), changes == FORGET, at, actor)
        if added == DROP:
            carried.events += dropped_events(extra, at, actor)
        ours = carried.products  # the catalogue as acknowledged
        products = ours + (extra if added == KEEP else [])
        encoder = encoder or create_encoder(profile)
        t0 = time.perf_counter()
        encoded = _encode_with_cache(products, encoder, out_dir, use_cache, batch_size, progress)
        encode_seconds = time.perf_counter() - t0
        if on_encoded:
            on_encoded()
        report = catalog.report
        report.merge(encoded.report)
        vectors = {}
        for modality, matrix in encoded.vectors.items():
            present = encoded.present(modality)
            vectors[modality] = (matrix[present], np.flatnonzero(present))
        manifest = {
            "profile": encoder.profile,
            "model_id": model_id(encoder),
            "model_ids": dict(encoder.model_ids),
            "encoder_options": dict(getattr(encoder, "options", {})),
            "precision": getattr(encoder, "precision", "fp32"),
            "text_normalisation": {"strip_boilerplate": DEFAULT_STRIP_BOILERPLATE},
            "data_dir": str(Path(data_dir).resolve()),
            "data_fingerprint": data_fingerprint(catalog, encoded.image_hashes),
            "categories": sorted({p.category for p in products if p.category}),
            "validation": report.to_dict(),
            "added_products": len(products) - len(ours),
            "added_fingerprint": hashlib.sha256(
                json.dumps([p.to_record() for p in products[len(ours) :]], sort_keys=True).encode()
            ).hexdigest(),
            "catalogue_changes": dict(carried.counts(), forgotten=carried.forgotten),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if carried.fingerprint():
            manifest["changes_fingerprint"] = carried.fingerprint()
        if carried.events:
            manifest[BASE_EVENTS] = carried.events  # recorded after the publish; by the next writer if killed
        manifest["derived_key"] = _derived_key(manifest)
        if (
            live is not None
            and not live.deltas
            and live.manifest.get("derived_key") == manifest["derived_key"]
            and (live.manifest.get("categorizer") or not calibrate_decision)
        ):
            # same data, models and settings: the lexical channel and the CV calibration
            # would come out identical, so take them from the live version (its base alone:
            # a version with deltas holds lexical rows of products this build may not keep)
            lexical = live.lexical
            if calibrate_decision:
                manifest["categorizer"] = live.manifest["categorizer"]
        else:
            texts = encoded.texts
            text_rows = np.flatnonzero([bool(t) for t in texts])
            lexical = LexicalIndex.fit([texts[r] for r in text_rows], text_rows) if len(text_rows) else None
        calibrate_here = calibrate_decision and "categorizer" not in manifest
        staging = stage_version(out_dir, products, vectors, manifest, factory, lexical=lexical)

        def reencode(carried: list[Product]) -> dict[str, np.ndarray]:
            """Vectors for products added meanwhile by other models than this build's."""
            return _encode_with_cache(carried, encoder, out_dir, use_cache, batch_size, False).vectors

        entry = functools.partial(
            calibration_entry, encoder=encoder, cache=out_dir / CACHE_FILE if use_cache else None
        )  # the encoder turns the sampled products' names into title-only listings (query kinds)
        version = publish_base(out_dir, staging, snapshot, "build", entry if calibrate_here else None, reencode)
        assert version is not None  # only a compaction is ever dropped
        AuditLog(out_dir).record_events(carried.events)
    seconds = time.perf_counter() - start
    return BuildSummary(
        index_dir=str(out_dir),
        version=version,
        profile=encoder.profile,
        products=len(products),
        indexed={m: int(len(v[0])) for m, v in vectors.items()},
        skipped=report.counts(),
        cached=encoded.cached,
        encoded=encoded.encoded,
        seconds=seconds,
        encode_seconds=encode_seconds,
        products_per_s=len(products) / seconds,
        peak_rss_mb=peak_rss_mb(),
        report=report.to_dict(),
        changes=carried.counts(),
        forgotten=carried.forgotten,
    )


def _encode_with_cache(
    products: Sequence[Product], encoder: Encoder, out_dir: Path, use_cache: bool, batch_size: int, progress: bool
) -> Encoded:
    cache = open_cache(out_dir / CACHE_FILE) if use_cache else None
    try:
        return encode_products(products, encoder, cache, batch_size=batch_size, progress=progress)
    finally:
        if cache:
            cache.close()


def live_store(out_dir: Path) -> IndexStore | None:
    """The version a rebuild starts from: the live one when it verifies (checksums, O(bytes)),
    else the newest that does. A rebuild reuses its derived parts and keeps its added products
    only if it is intact, and carries what is added to it meanwhile."""
    try:
        store, _ = last_verified(out_dir)
    except (IndexStoreError, OSError):
        return None
    return store


def _added_products(live: IndexStore | None, catalogue: Sequence[Product]) -> list[Product]:
    """Products of the live index that the catalogue does not hold (added by `add` or the API),
    as they now read (relabels applied), deleted ones left out."""
    if live is None:
        return []
    known = {p.id for p in catalogue}
    return [p for row, p in enumerate(live.products) if p.id not in known and not live.is_deleted(row)]


def _derived_key(manifest: dict) -> str:
    """Content key of what the build derives after encoding (lexical channel, calibration)."""
    from indexer.categorizer.protocol import GROUP_THRESHOLDS, N_FOLDS, PARAM_GRID, SEED, TARGET_PRECISION
    from indexer.categorizer.vote import DEFAULT_PARAMS
    from indexer.store.lexical import NGRAMS

    parts = [
        manifest["data_fingerprint"],
        manifest.get("added_fingerprint"),
        manifest["model_ids"],
        manifest["precision"],
        manifest["text_normalisation"],
        DEFAULT_PARAMS,
        PARAM_GRID,
        GROUP_THRESHOLDS,
        N_FOLDS,
        SEED,
        TARGET_PRECISION,
        NGRAMS,
        FORMAT_VERSION,
    ]
    if manifest.get("changes_fingerprint"):  # only then: an index built before carried changes keeps its key
        parts.append(manifest["changes_fingerprint"])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def calibration_entry(staged: IndexStore, encoder: Encoder | None = None, cache: Path | None = None) -> dict:
    """The Categorizer's manifest entry (parameters, per-kind thresholds, disagreement rule,
    combiner, calibration curve, CV figures), cross-validated on the staged version: exactly the
    vectors it will serve. With `encoder`, title-only listings are simulated from the sampled
    products' names (encoded once, kept in `cache`); without, those kinds go to review."""
    from indexer.categorizer.protocol import calibrate

    return {"categorizer": calibrate(staged, encoder=encoder, cache=cache)}


def add_products(
    index_dir: str | Path,
    products: Sequence[Product],
    encoder: Encoder,
    batch_size: int = 32,
    progress: bool = False,
    before_publish: Callable[[IndexStore], None] | None = None,
    stored: Sequence[Product] | None = None,
    action: str = "add",
    actor: str = "cli",
    notes: Mapping[str, Mapping] | None = None,
) -> tuple[IndexStore, ValidationReport]:
    """Encode `products` and append them to the live index (no rebuild, no re-encoding).

    `before_publish(live)` runs under the write lock only if the add wins (see store.append);
    `stored`, if given, are the records published in place of `products` (same order), e.g.
    with a staged photo's final path. The store records each product in the index's audit
    trail as `action` by `actor`, with `notes[id]` (see `indexer.store.factory.append`)."""
    index_dir = Path(index_dir)
    store = open_store(index_dir, encoder=encoder)
    cache = open_cache(index_dir / CACHE_FILE)
    try:
        encoded = encode_products(products, encoder, cache, batch_size=batch_size, progress=progress)
    finally:
        cache.close()
    records = list(stored) if stored is not None else list(products)
    if len(records) != len(products):
        raise ValueError("stored must hold one record per product")
    store = append(
        store, records, encoded.vectors, before_publish=before_publish, action=action, actor=actor, notes=notes
    )
    return store, encoded.report
