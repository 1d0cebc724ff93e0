"""Bulk ingest: a folder of embedding shards (indexer.catalog.shards) -> a published index version.

The door for large catalogues and for vectors encoded elsewhere (`python -m indexer
encode` on Ray, or any other pipeline that writes the shard format). Nothing is
re-encoded: the vectors are checked and stored as they are.

Order of work, so that a refusal loses nothing and writes nothing:
1. `embeddings.json` and every file's schema and metadata are checked against the
   index profile (model ids and dims from the encoder registry); any mismatch refuses
   the whole ingest before a row is read.
2. Rows are streamed in Arrow record batches (O(batch) memory on the reading side);
   a bad row (bad id, duplicate id, unparseable category path, wrong vector length,
   non-finite or zero vector, bad price) is refused with a report entry, the good
   rows go in.
3. Accepted rows stream into a staged base segment (indexer.store.local.writer); the lexical
   channel is fitted on a seeded sample of name + description (all of them up to
   LEXICAL_FIT_ROWS), the Categorizer is calibrated on the staged version like `build`
   does, and only then is the version made live.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.catalog.products import CATEGORY_SEPARATOR, Product, ValidationReport, parse_category_tree
from indexer.catalog.shards import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    VECTOR_COLUMNS,
    EmbeddingsSpec,
    ShardFormatError,
    file_metadata,
    read_spec,
    shard_files,
)
from indexer.catalog.text import DEFAULT_STRIP_BOILERPLATE, encoder_text
from indexer.encoders import EncoderUnavailable, create_encoder, model_id
from indexer.pipeline.build import (
    DROP,
    KEEP,
    REFUSE,
    AddedProductsWouldBeDropped,
    calibration_entry,
    live_store,
    peak_rss_mb,
)
from indexer.store import IndexStore, IndexStoreError
from indexer.store.factory import location_writer
from indexer.store.lexical import LexicalIndex
from indexer.store.local.handover import Snapshot, base_lock
from indexer.store.local.index import (
    DEFAULT_FACTORY,
    VERSIONS,
    finish_base,
    new_base_writer,
    publish_base,
    read_current,
)
from indexer.store.local.writer import BaseWriter

DEFAULT_BATCH_ROWS = 2048
MAX_ID_LENGTH = 512
_HASH_CHUNK = 1 << 20


class IngestRefused(ValueError):
    """The shards as a whole cannot go into this index (other models, other dims, bad format)."""


@dataclass
class IngestSummary:
    index_dir: str
    version: str
    profile: str
    files: int
    rows_read: int
    products: int
    indexed: dict[str, int]
    refused: dict[str, int]
    calibrated: bool
    seconds: float
    read_seconds: float
    peak_rss_mb: float
    report: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"index {self.index_dir} version {self.version} (profile {self.profile})",
            f"read {self.rows_read} rows from {self.files} files; products: {self.products}; "
            f"indexed image: {self.indexed.get('image', 0)}, text: {self.indexed.get('text', 0)}",
            "refused rows: " + (", ".join(f"{k} {v}" for k, v in sorted(self.refused.items())) or "none"),
            "categorizer: " + ("calibrated by grouped CV" if self.calibrated else "not calibrated (--no-calibrate)"),
            f"time {self.seconds:.1f} s (reading {self.read_seconds:.1f} s): "
            f"{self.rows_read / max(self.seconds, 1e-9):.0f} rows/s; peak RSS {self.peak_rss_mb:.0f} MB",
        ]


# ---- checks on the folder as a whole (before any row is read) ----------------------------------
def expected_models(profile: str) -> tuple[dict[str, str], dict[str, int]]:
    """Model ids and dims of a registry profile (constructs the encoder; loads no weights)."""
    encoder = create_encoder(profile)
    return dict(encoder.model_ids), dict(encoder.dims)


def live_manifest(out_dir: Path) -> dict | None:
    """The manifest of the live version at `out_dir`, None when there is none (or it is unreadable:
    the publish checks it again)."""
    try:
        version = read_current(out_dir)
        return json.loads((out_dir / VERSIONS / version / "manifest.json").read_text())
    except (IndexStoreError, OSError, ValueError):
        return None


def check_models(source: str, profile: str, model_ids: dict, dims: dict, spec: EmbeddingsSpec) -> None:
    """Refuse vectors made by other models, or of other sizes, than the index profile's."""
    problems = []
    if spec.profile != profile:
        problems.append(f"profile {spec.profile!r} is not the index profile {profile!r}")
    for m in sorted(set(spec.model_ids) | set(model_ids)):
        if spec.model_ids.get(m) != model_ids.get(m):
            problems.append(f"{m} model {spec.model_ids.get(m)!r} is not {model_ids.get(m)!r}")
        elif spec.dims.get(m) != dims.get(m):
            problems.append(f"{m} dims {spec.dims.get(m)} are not {dims.get(m)}")
    if problems:
        raise IngestRefused(f"{source}: " + "; ".join(problems) + "; nothing was written")


def _is_float_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


def check_file(path: Path, spec: EmbeddingsSpec) -> None:
    """Schema and metadata of one Parquet file; reads its footer only."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise ShardFormatError(f"{path.name}: not a readable Parquet file: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ShardFormatError(f"{path.name}: missing columns {', '.join(missing)}")
    for name in ("id", "name", "description", "category_path", "image_path", "image", "brand"):
        if name in schema.names and not (
            pa.types.is_string(schema.field(name).type)
            or pa.types.is_large_string(schema.field(name).type)
            or pa.types.is_null(schema.field(name).type)
        ):
            raise ShardFormatError(f"{path.name}: column {name} is {schema.field(name).type}, expected string")
    for modality, column in VECTOR_COLUMNS.items():
        t = schema.field(column).type
        if pa.types.is_null(t):
            continue
        if not _is_float_list(t):
            raise ShardFormatError(f"{path.name}: column {column} is {t}, expected a list of float32")
        if modality not in spec.dims:
            raise IngestRefused(f"{path.name}: has {column} but embeddings.json declares no {modality} model")
        if pa.types.is_fixed_size_list(t) and t.list_size != spec.dims[modality]:
            raise IngestRefused(
                f"{path.name}: {column} holds {t.list_size}-d vectors, the {modality} model "
                f"{spec.model_ids[modality]!r} gives {spec.dims[modality]}; nothing was written"
            )
    meta = file_metadata(path)
    for key in ("model_ids", "dims"):
        if key in meta and {m: meta[key].get(m) for m in spec.model_ids} != getattr(spec, key):
            raise IngestRefused(
                f"{path.name}: its metadata names {key} {meta[key]}, embeddings.json {getattr(spec, key)}; "
                "nothing was written"
            )


def folder_fingerprint(files: list[Path], spec: EmbeddingsSpec) -> str:
    """Content hash of the shards (O(bytes) time, O(1) memory)."""
    digest = hashlib.sha256(repr(sorted(spec.to_dict().items())).encode())
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


# ---- rows -------------------------------------------------------------------------------------
def _bad_id(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "empty or missing id"
    if value != value.strip():
        return "id has leading or trailing spaces"
    if len(value) > MAX_ID_LENGTH:
        return f"id longer than {MAX_ID_LENGTH} characters"
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        return "id contains control characters"
    return None


def parse_path(value: object) -> tuple[str, ...] | None:
    """ "A >> B >> C" -> ("A", "B", "C"); empty or null -> () (unlabelled); None if unparseable."""
    if value is None or not str(value).strip():
        return ()
    levels = [part.strip() for part in str(value).split(CATEGORY_SEPARATOR)]
    if any(not level for level in levels):
        return None
    parsed = parse_category_tree(str(value))
    return parsed or None


def _vectors(column: pa.ChunkedArray | pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matrix n x dim, present, wrong_length) for one vector column of a batch; O(batch).

    Rows that are null or of the wrong length hold zeros in `matrix`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if pa.types.is_null(column.type):
        return np.zeros((n, dim), np.float32), np.zeros(n, bool), np.zeros(n, bool)
    column = column.cast(pa.large_list(pa.float32()))
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    lengths = np.nan_to_num(lengths.astype(np.float64), nan=-1).astype(np.int64)  # null -> -1
    present = lengths >= 0
    right = lengths == dim
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    starts = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))[:-1]])
    matrix = np.zeros((n, dim), np.float32)
    if right.any():
        matrix[right] = flat[starts[right, None] + np.arange(dim)]
    return matrix, present, present & ~right


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise the rows that are not unit vectors already; unit rows stay bit-identical,
    so vectors an encoder normalised give the very index (and calibration) the build gives."""
    norms = np.linalg.norm(vectors, axis=1)
    off = np.abs(norms - 1.0) > 1e-5
    if off.any():
        vectors = vectors.copy()
        vectors[off] /= norms[off, None]
    return vectors


def _price(value: Any) -> tuple[float | None, bool]:
    if value is None:
        return None, True
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None, False
    if np.isnan(price):  # a missing value in a float column
        return None, True
    return (price, True) if np.isfinite(price) else (None, False)


@dataclass
class Accepted:
    """The good rows of one record batch."""

    products: list[Product]
    vectors: dict[str, tuple[np.ndarray, np.ndarray]]  # modality -> (vectors, positions in `products`)


def read_batches(
    files: list[Path],
    spec: EmbeddingsSpec,
    report: ValidationReport,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    seen: set[str] | None = None,
) -> Iterator[Accepted]:
    """Stream the rows of every file in `batch_rows` record batches, refusing bad rows into
    `report`. Memory: one record batch plus the set of ids seen (O(N) short strings,
    needed to refuse duplicates across files; `seen`, when given, is filled with them)."""
    seen = set() if seen is None else seen
    for path in files:
        parquet = pq.ParquetFile(path)
        columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, "image_error") if c in parquet.schema_arrow.names]
        offset = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            yield _accept(batch, path.name, offset, spec, report, seen)
            offset += batch.num_rows


def _accept(
    batch: pa.RecordBatch, source: str, offset: int, spec: EmbeddingsSpec, report: ValidationReport, seen: set[str]
) -> Accepted:
    n = batch.num_rows
    data = {name: batch.column(name) for name in batch.schema.names}
    vectors = {m: _vectors(data[VECTOR_COLUMNS[m]], spec.dims[m]) for m in spec.dims}
    problems: list[tuple[str, str] | None] = [None] * n
    for m, (matrix, present, wrong) in vectors.items():
        finite = np.isfinite(matrix).all(axis=1)
        zero = ~np.any(matrix != 0, axis=1)
        for bad_row in np.flatnonzero(wrong):
            problems[bad_row] = problems[bad_row] or ("wrong_vector_length", f"{m} vector is not {spec.dims[m]}-d")
        for bad_row in np.flatnonzero(present & ~wrong & ~finite):
            problems[bad_row] = problems[bad_row] or ("non_finite_vector", f"{m} vector holds NaN or infinity")
        for bad_row in np.flatnonzero(present & ~wrong & finite & zero):
            problems[bad_row] = problems[bad_row] or ("zero_vector", f"{m} vector is all zeros")
    ids = data["id"].to_pylist()
    names = data["name"].to_pylist()
    descriptions = data["description"].to_pylist()
    paths = data["category_path"].to_pylist()
    optional = {c: (data[c].to_pylist() if c in data else [None] * n) for c in (*OPTIONAL_COLUMNS, "image_error")}
    products: list[Product] = []
    keep = np.zeros(n, bool)
    for row in range(n):
        pid = ids[row]
        bad = _bad_id(pid)
        category = parse_path(paths[row])
        price, price_ok = _price(optional["price"][row])
        problem: tuple[str, str] | None
        if bad:
            problem = ("bad_id", bad)
        elif pid in seen:
            problem = ("duplicate_id", "id already ingested from an earlier row")
        elif category is None:
            problem = ("bad_category_path", f"cannot parse {paths[row]!r} as 'A >> B >> C'")
        elif not price_ok:
            problem = ("bad_price", f"price {optional['price'][row]!r} is not a finite number")
        else:
            problem = problems[row]
        where = f"{source} row {offset + row}"
        if problem:
            label = pid if isinstance(pid, str) and pid.strip() else f"<{where}>"
            report.add(problem[0], label, f"{where}: {problem[1]}; row refused")
            continue
        seen.add(pid)
        keep[row] = True
        if image_error := optional["image_error"][row]:
            report.add("unreadable_image", pid, str(image_error))
        assert category is not None  # rows whose path does not parse were refused above
        image_path = optional["image_path"][row]
        products.append(
            Product(
                id=pid,
                name=names[row] or "",
                description=descriptions[row] or "",
                brand=optional["brand"][row] or None,
                price=price,
                category_path=category,
                image=optional["image"][row] or (Path(image_path).name if image_path else None),
                image_path=Path(image_path) if image_path else None,
            )
        )
    positions = np.cumsum(keep) - 1
    accepted = {}
    for m, (matrix, present, wrong) in vectors.items():
        take = keep & present & ~wrong
        accepted[m] = (unit_rows(matrix[take]), positions[take])
    return Accepted(products, accepted)


# ---- writing ----------------------------------------------------------------------------------
LEXICAL_FIT_ROWS = 100_000  # texts the lexical vocabulary and idf are fitted on: a seeded uniform sample
LEXICAL_SEED = 0


class TextSample:
    """A seeded uniform sample (reservoir) of at most `size` texts from a stream: O(size) memory.
    While no more than `size` texts have come, it holds all of them, in order."""

    def __init__(self, size: int | None = None, seed: int = LEXICAL_SEED) -> None:
        self.size, self.seen = LEXICAL_FIT_ROWS if size is None else size, 0
        self.texts: list[str] = []
        self._rng = np.random.default_rng(seed)

    @property
    def complete(self) -> bool:
        return self.seen == len(self.texts)

    def offer(self, texts: list[str]) -> None:
        for text in texts:
            if len(self.texts) < self.size:
                self.texts.append(text)
            else:
                slot = int(self._rng.integers(0, self.seen + 1))
                if slot < self.size:
                    self.texts[slot] = text
            self.seen += 1


class TextSpool:
    """The non-empty texts of the products written, in row order: a reservoir sample for the
    vocabulary, and a spool file to transform every text afterwards without recomputing it
    (the boilerplate stripping is the costly part). O(sample) memory, O(N) disk."""

    def __init__(self, folder: Path, sample: TextSample | None = None) -> None:
        self.sample = sample or TextSample()
        self.path = folder / ".texts.jsonl"
        self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by lexical()/close()
        self.rows: list[np.ndarray] = []

    def add(self, start: int, texts: list[str]) -> None:
        """Texts of the products at rows start, start + 1, ...; empty ones are skipped."""
        keep = [i for i, t in enumerate(texts) if t]
        self.rows.append(start + np.asarray(keep, dtype=np.int64))
        kept = [texts[i] for i in keep]
        self.sample.offer(kept)
        self._fh.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in kept)

    def close(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)

    def lexical(self, batch_rows: int) -> LexicalIndex | None:
        """The lexical channel over every spooled text: vocabulary and idf fitted on the sample
        (every text when there are at most LEXICAL_FIT_ROWS: then the fit's own rows are the
        channel), the rest transformed batch by batch. Memory: the sample plus the matrix (O(nnz))."""
        import scipy.sparse as sp

        self._fh.close()
        try:
            rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
            if len(rows) == 0:
                return None
            if self.sample.complete:
                return LexicalIndex.fit(self.sample.texts, rows)
            fitted = LexicalIndex.fit(self.sample.texts, np.arange(len(self.sample.texts)))
            parts = []
            with open(self.path, encoding="utf-8") as fh:
                while batch := [json.loads(line) for _, line in zip(range(batch_rows), fh, strict=False)]:
                    parts.append(fitted.transform(batch))
            return LexicalIndex(fitted.vectorizer, sp.vstack(parts).tocsr().astype(np.float32), rows)
        finally:
            self.close()


@dataclass
class _Checked:
    """What the checks on the folder as a whole establish before a row is read."""

    spec: EmbeddingsSpec
    profile: str
    model_ids: dict[str, str]
    files: list[Path]
    normalisation: dict
    strip: bool


def _check_folder(embeddings_dir: Path, profile: str | None, live: dict | None) -> _Checked:
    """Refuse the whole folder (nothing written) for an unfinished encode, other models or dims,
    or a bad file; `profile` defaults to the live index's, else the one embeddings.json names."""
    spec = read_spec(embeddings_dir)
    if spec.extra.get("complete") is False:
        raise IngestRefused(
            f"{embeddings_dir} is incomplete: `encode` has not finished writing it (rerun the same encode "
            "command to resume); nothing was written"
        )
    profile = profile or (live or {}).get("profile") or spec.profile
    model_ids, dims = expected_models(profile)
    check_models(str(embeddings_dir / "embeddings.json"), profile, model_ids, dims, spec)
    files = shard_files(embeddings_dir)
    if not files:
        raise ShardFormatError(f"no *.parquet files in {embeddings_dir}")
    for path in files:
        check_file(path, spec)
    normalisation = spec.extra.get("text_normalisation", {"strip_boilerplate": DEFAULT_STRIP_BOILERPLATE})
    strip = bool(normalisation.get("strip_boilerplate", DEFAULT_STRIP_BOILERPLATE))
    return _Checked(spec, profile, model_ids, files, normalisation, strip)


class _Writer(Protocol):
    count: int

    def add(self, products: list[Product], vectors: dict[str, tuple[np.ndarray, np.ndarray]]) -> None: ...


def _stream(
    checked: _Checked,
    writer: _Writer,
    spool: TextSpool,
    report: ValidationReport,
    batch_rows: int,
    seen: set[str] | None = None,
) -> tuple[int, dict[str, int], set[str]]:
    """Every accepted batch into `writer` and its texts into `spool`: (rows read, refused
    counts, categories); `seen` is filled with the ids written. O(batch) memory on the reading side."""
    categories: set[str] = set()
    rows_read = 0
    for accepted in read_batches(checked.files, checked.spec, report, batch_rows, seen):
        texts = [encoder_text(p.name, p.description, strip=checked.strip) for p in accepted.products]
        spool.add(writer.count, texts)
        writer.add(accepted.products, accepted.vectors)
        categories.update(p.category for p in accepted.products if p.category)
        rows_read += len(accepted.products)
    refused = {k: v for k, v in report.counts().items() if k != "unreadable_image"}
    return rows_read + sum(refused.values()), refused, categories


def _manifest(
    checked: _Checked, embeddings_dir: Path, report: ValidationReport, categories: set[str], extra: dict
) -> dict:
    """The manifest of an ingested index (the build's fields plus an `ingest` entry)."""
    return {
        "profile": checked.profile,
        "model_id": model_id(_Models(checked.profile, checked.model_ids)),
        "model_ids": checked.model_ids,
        "precision": checked.spec.extra.get("precision", "unknown"),
        "text_normalisation": checked.normalisation,
        "data_dir": str(checked.spec.extra.get("data_dir") or embeddings_dir.resolve()),
        "data_fingerprint": folder_fingerprint(checked.files, checked.spec),
        "categories": sorted(categories),
        "validation": report.to_dict(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ingest": {"embeddings_dir": str(embeddings_dir.resolve()), "files": len(checked.files), **extra},
    }


def ingest(
    embeddings_dir: str | Path,
    out_dir: str | Path,
    profile: str | None = None,
    factory: str = DEFAULT_FACTORY,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    calibrate_decision: bool = True,
    added: str = REFUSE,
) -> IngestSummary:
    """Check, stream and publish the shards at `embeddings_dir` as a new version of `out_dir`.

    Products added to the live index since its build or ingest (through `add` or the API) are,
    like `build` does, kept (`added="keep"`: with their stored vectors, when the shards come from
    the same models), dropped (`added="drop"`), or by default the ingest refuses before reading
    a row and says how many it would drop. Products added while it runs are carried into the
    version it publishes (indexer.store.local.handover): it holds the index's base lock.

    `profile` is the index profile the vectors must come from; by default the live index's
    at `out_dir` (so shards of other models cannot replace what a service is serving), else
    the one `embeddings.json` names. Either way the registry's model ids and dims decide.

    Memory is bounded by a batch, not by N, on the way in: each accepted batch goes straight
    into a BaseWriter (products and vectors appended to a staging folder). Beyond a batch it
    holds the ids seen (duplicates), a text sample for the lexical vocabulary, the FAISS index
    being filled (its codes: choose a compressed factory for big catalogues), the lexical
    matrix (O(nnz)) and what calibration needs: it predicts a stratified sample of
    CALIBRATION_SAMPLE products (indexer.categorizer.protocol) on the staged version, O(sample·search),
    no N x N matrix. The staged version goes live only at the end.
    """
    start = time.perf_counter()
    embeddings_dir, out_dir = Path(embeddings_dir), Path(out_dir)
    if added not in (REFUSE, KEEP, DROP):
        raise ValueError(f"added must be one of {REFUSE}, {KEEP}, {DROP}; got {added!r}")
    checked = _check_folder(embeddings_dir, profile, live_manifest(out_dir))
    report = ValidationReport()
    existed = out_dir.exists()
    expected = sum(pq.ParquetFile(f).metadata.num_rows for f in checked.files)  # footers: precision, factory
    with base_lock(out_dir):
        current = live_store(out_dir)
        snapshot = Snapshot.of(current)
        rows = _added_rows(current, added, checked, out_dir)
        writer = new_base_writer(out_dir, checked.spec.dims, factory, expected_rows=expected)
        with writer:
            spool = TextSpool(writer.staging)
            try:
                seen: set[str] = set()
                rows_read, refused, categories = _stream(checked, writer, spool, report, batch_rows, seen)
                if writer.count == 0:
                    if not existed:
                        shutil.rmtree(out_dir, ignore_errors=True)  # the staging folder's parents, made for nothing
                    raise IngestRefused(f"no valid rows in {embeddings_dir} ({rows_read} read); nothing was written")
                kept = _keep_added(writer, spool, current, rows, seen, checked.strip) if current is not None else 0
                read_seconds = time.perf_counter() - start
                lexical = spool.lexical(batch_rows)
            finally:
                spool.close()
            extra = {
                "rows_read": rows_read,
                "rows_refused": int(sum(refused.values())),
                "batch_rows": batch_rows,
                "lexical_fit_rows": len(spool.sample.texts),
                "lexical_fit_seed": LEXICAL_SEED,
            }
            manifest = dict(_manifest(checked, embeddings_dir, report, categories, extra), added_products=kept)
            staging = finish_base(writer, manifest, lexical)
        amend = _calibration(checked.profile) if calibrate_decision else _uncalibrated
        version = publish_base(out_dir, staging, snapshot, "ingest", amend)
        assert version is not None  # only a compaction is ever dropped
    counts = json.loads((out_dir / VERSIONS / version / "manifest.json").read_text())["counts"]
    return IngestSummary(
        index_dir=str(out_dir),
        version=version,
        profile=checked.profile,
        files=len(checked.files),
        rows_read=rows_read,
        products=int(counts["products"]),
        indexed={m: int(counts.get(m, 0)) for m in checked.spec.dims},
        refused=refused,
        calibrated=calibrate_decision,
        seconds=time.perf_counter() - start,
        read_seconds=read_seconds,
        peak_rss_mb=peak_rss_mb(),
        report=report.to_dict(),
    )


def ingest_to_location(
    embeddings_dir: str | Path,
    location: str,
    profile: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    calibrate_decision: bool = True,
    replace: bool = False,
    **options: Any,
) -> IngestSummary:
    """`ingest` straight into a vector store at `location` (Milvus: a server URI or a Lite
    *.db path), without building a FAISS index first: the same checks, the same streamed
    batches and refusals, the same lexical fit (sample + spool, in a temporary folder), then
    the Categorizer calibrated on the staged collection (written, not yet committed) and the
    commit. `options` go to the store's writer (`index_type`, `collection`); an existing
    collection is refused unless `replace`. Memory: one batch, the ids seen, the text sample
    and the lexical matrix; the vectors go to the server batch by batch (O(batch·d))."""
    start = time.perf_counter()
    embeddings_dir = Path(embeddings_dir)
    checked = _check_folder(embeddings_dir, profile, None)
    report = ValidationReport()
    writer = location_writer(location, checked.spec.dims, replace=replace, **options)
    with tempfile.TemporaryDirectory(prefix="ingest-texts-") as tmp:
        spool = TextSpool(Path(tmp))
        try:
            rows_read, refused, categories = _stream(checked, writer, spool, report, batch_rows)
            if writer.count == 0:
                writer.abort()
                raise IngestRefused(f"no valid rows in {embeddings_dir} ({rows_read} read); nothing was committed")
            read_seconds = time.perf_counter() - start
            lexical = spool.lexical(batch_rows)
        finally:
            spool.close()
    extra = {
        "rows_read": rows_read,
        "rows_refused": int(sum(refused.values())),
        "batch_rows": batch_rows,
        "lexical_fit_rows": len(spool.sample.texts),
        "lexical_fit_seed": LEXICAL_SEED,
        "store": location,
    }
    state = writer.stage(_manifest(checked, embeddings_dir, report, categories, extra), lexical)
    amend = _calibration(checked.profile) if calibrate_decision else _uncalibrated
    state = writer.amend(amend(writer.staged(state)))
    writer.commit(state)
    return IngestSummary(
        index_dir=location,
        version=f"{writer.where} build {state['build'][:8]}",
        profile=checked.profile,
        files=len(checked.files),
        rows_read=rows_read,
        products=writer.count,
        indexed={m: int(writer.counts.get(m, 0)) for m in checked.spec.dims},
        refused=refused,
        calibrated=calibrate_decision,
        seconds=time.perf_counter() - start,
        read_seconds=read_seconds,
        peak_rss_mb=peak_rss_mb(),
        report=report.to_dict(),
    )


def _added_rows(live: IndexStore | None, added: str, checked: _Checked, out_dir: Path) -> np.ndarray:
    """Rows of the live version's added products (through `add` or the API: the last
    `added_products` rows) that this ingest keeps; refuses, before a row is read, what it cannot
    honour (the default refusal, or keeping vectors of other models)."""
    count = int(live.manifest.get("added_products") or 0) if live is not None else 0
    if live is None or count == 0 or added == DROP:
        return np.zeros(0, np.int64)
    if added == REFUSE:
        raise AddedProductsWouldBeDropped(
            f"the live index {out_dir.name}/ holds {count} added products (through `add` or the API) that this "
            "ingest would drop. Pass --keep-added to keep those the shards do not hold, or --drop-added to drop "
            "them; nothing was written"
        )
    if live.manifest.get("model_ids") != checked.model_ids or live.manifest.get("dims") != checked.spec.dims:
        raise IngestRefused(
            f"the live index's {count} added products were encoded by other models than these shards, so "
            "ingest cannot keep them: pass --drop-added, or keep them with `python -m indexer build --keep-added`; "
            "nothing was written"
        )
    n = len(live.products)
    return np.asarray([r for r in range(n - count, n) if not live.is_deleted(r)], dtype=np.int64)


def _keep_added(
    writer: BaseWriter, spool: TextSpool, live: IndexStore, rows: np.ndarray, seen: set[str], strip: bool
) -> int:
    """Append the live version's added products at `rows` (sorted, deleted ones left out) that the
    shards did not hold, as they now read (relabels applied), with their stored vectors (same
    models, checked by `_added_rows`): O(N) over the channels' rows to find theirs, O(kept)
    beyond. Returns how many were kept."""
    products = [live.products[int(r)] for r in rows]
    keep = np.asarray([p.id not in seen for p in products], dtype=bool)
    if not keep.any():
        return 0
    kept_rows = rows[keep]
    kept = [p for p, k in zip(products, keep, strict=True) if k]
    start = writer.count
    spool.add(start, [encoder_text(p.name, p.description, strip=strip) for p in kept])
    writer.add_products(kept)
    for modality, channel in live.modalities.items():
        if modality not in writer.modalities:
            continue
        channel_rows = np.asarray(channel.rows)
        positions = np.flatnonzero(np.isin(channel_rows, kept_rows))
        new_rows = start + np.searchsorted(kept_rows, channel_rows[positions])
        writer.add_vectors(modality, np.asarray(channel.vectors[positions], dtype=np.float32), new_rows)
    return len(kept)


def _calibration(profile: str) -> Callable[[IndexStore], dict]:
    """The build's calibration entry for an ingested index: with the profile's encoder where it
    is installed, so the title-only listing kinds are simulated as the build simulates them
    (same thresholds from the same vectors); without it, those kinds go to review."""
    try:
        encoder = create_encoder(profile)
    except EncoderUnavailable:
        encoder = None
    return functools.partial(calibration_entry, encoder=encoder)


def _uncalibrated(staged: IndexStore) -> dict:
    """`--no-calibrate`: an explicit entry with no threshold, so every decision is "review" and a
    service serves the index at once instead of calibrating it when it starts."""
    return {"categorizer": {"calibrated": False, "threshold": None, "calibration": None}}


@dataclass
class _Models:
    """Just enough of an encoder for `model_id`."""

    profile: str
    model_ids: dict[str, str]
