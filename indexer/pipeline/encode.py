"""Distributed encoding on Ray Data: a catalogue -> embedding shards that `ingest` reads.

The catalogue is cut into fixed-size row ranges in catalogue order (shard i holds rows
[i*S, (i+1)*S)), so a shard's name and content are fixed by the catalogue and a rerun
skips every shard already written (each shard is written atomically and carries the
sha256 of its ids, so a shard of another catalogue is encoded again, not trusted).

Ray Data runs one callable-class actor per worker (`map_batches(ShardEncoder, ...)`):
the models load once per actor, and each call encodes one whole shard with the build's
own `encode_products` (same image loading, same text normalisation, same encoder
registry), so the vectors are the build's. The driver receives each shard as Arrow IPC
bytes and writes it, so workers need the catalogue's images but no shared output disk.

Cost: driver memory O(catalogue metadata) for the plan plus O(shard) per shard in
flight; worker memory = models + one shard's decoded images and vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.catalog.products import Product, ValidationReport, load_catalog
from indexer.catalog.shards import (
    EmbeddingsSpec,
    ShardFormatError,
    file_metadata,
    products_table,
    read_spec,
    shard_files,
    write_shard,
    write_spec,
)
from indexer.catalog.text import DEFAULT_STRIP_BOILERPLATE
from indexer.encoders import DEFAULT_PROFILE, create_encoder
from indexer.settings import ray_logging_level, verbose

DEFAULT_SHARD_ROWS = 128
DEFAULT_CPUS_PER_WORKER = 2
REPORT_FILE = "encode_report.json"
PACKAGE_DIR = Path(__file__).resolve().parent


class EncodeError(ValueError):
    """The output folder or the cluster cannot take this encode (other models, stale shards)."""


@dataclass(frozen=True)
class ShardPlan:
    index: int
    start: int
    stop: int
    ids_sha: str

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}.parquet"


def plan_shards(products: Sequence[Product], shard_rows: int) -> list[ShardPlan]:
    """Fixed-size row ranges of the catalogue, in catalogue order; O(N)."""
    if shard_rows < 1:
        raise EncodeError("--shard-rows must be >= 1")
    plans = []
    for i, start in enumerate(range(0, len(products), shard_rows)):
        stop = min(start + shard_rows, len(products))
        ids = "\n".join(p.id for p in products[start:stop])
        plans.append(ShardPlan(i, start, stop, hashlib.sha256(ids.encode()).hexdigest()))
    return plans


def shard_is_done(path: Path, plan: ShardPlan, spec: EmbeddingsSpec) -> bool:
    """A shard file of the same products and models (reads the footer only)."""
    if not path.is_file():
        return False
    try:
        meta = file_metadata(path)
    except (OSError, pa.ArrowException, ShardFormatError):
        return False
    return meta.get("ids_sha256") == plan.ids_sha and meta.get("model_ids") == spec.model_ids


@dataclass
class EncodeSummary:
    out_dir: str
    profile: str
    products: int
    shards: int
    written: int
    skipped: int
    unreadable_images: int
    workers: int
    cpus_per_worker: int
    seconds: float
    encoded_products: int
    products_per_s: float
    ray_address: str
    report_file: str
    catalogue_issues: dict[str, int] = field(default_factory=dict)
    shard_seconds: float = 0.0  # summed over shards: encoding time inside the actors
    worker_peak_rss_mb: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"shards {self.out_dir}: {self.shards} shards of {self.products} products "
            f"(written {self.written}, already there {self.skipped}); profile {self.profile}",
            f"encoded {self.encoded_products} products in {self.seconds:.1f} s: {self.products_per_s:.1f} products/s "
            f"on {self.workers} worker(s) x {self.cpus_per_worker} CPU(s) (Ray {self.ray_address}); "
            f"worker peak RSS {self.worker_peak_rss_mb:.0f} MB",
            f"unreadable images: {self.unreadable_images} (kept with their text vector); "
            "catalogue: " + (", ".join(f"{k} {v}" for k, v in self.catalogue_issues.items()) or "clean"),
            f"report: {self.report_file}",
        ]


class ShardEncoder:
    """Ray Data callable class: loads the encoder once per actor, encodes one shard per row.

    Input rows: {"shard": index, "records": JSON list of Product records, "meta": JSON}.
    Output rows: {"shard": index, "arrow": Arrow IPC bytes of the shard table, "seconds",
    "unreadable", "peak_rss_mb" of the actor process}.
    """

    def __init__(self, profile: str, batch_size: int, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = create_encoder(profile)
        if hasattr(self.encoder, "load"):
            self.encoder.load()
        self.batch_size = batch_size
        self.threads = threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from indexer.pipeline.build import encode_products, peak_rss_mb

        out: dict[str, list] = {"shard": [], "arrow": [], "seconds": [], "unreadable": [], "peak_rss_mb": []}
        for index, records, meta in zip(batch["shard"], batch["records"], batch["meta"], strict=True):
            t0 = time.perf_counter()
            products = [Product.from_record(r) for r in json.loads(records)]
            encoded = encode_products(
                products, self.encoder, cache=None, batch_size=self.batch_size, workers=self.threads, progress=False
            )
            errors = {item["id"]: item["detail"] for item in encoded.report.issues.get("unreadable_image", [])}
            table = products_table(
                products,
                encoded.vectors,
                dict(self.encoder.dims),
                [errors.get(p.id) for p in products],
                json.loads(meta),
            )
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            out["shard"].append(int(index))
            out["arrow"].append(sink.getvalue().to_pybytes())
            out["seconds"].append(time.perf_counter() - t0)
            out["unreadable"].append(len(errors))
            out["peak_rss_mb"].append(peak_rss_mb())
        return out


def local_ray_init(num_cpus: int | None = None) -> None:
    """Start a local Ray instance sized to this machine (or `num_cpus`), quietly."""
    import ray

    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        logging_level=ray_logging_level(),
        log_to_driver=verbose(),
        runtime_env={"py_modules": [str(PACKAGE_DIR)]},
    )


@dataclass
class _RaySession:
    address: str
    started: bool


def _connect(address: str | None) -> _RaySession:
    import ray

    if ray.is_initialized():
        return _RaySession(ray.get_runtime_context().gcs_address, started=False)
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=ray_logging_level(), runtime_env={"py_modules": [str(PACKAGE_DIR)]})
        else:
            local_ray_init()
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EncodeError(f"cannot start or reach Ray at {address or 'a local instance'}: {exc}") from exc
    return _RaySession(address or "local", started=True)


def _check_out_dir(out_dir: Path, spec: EmbeddingsSpec, plans: list[ShardPlan]) -> None:
    if (out_dir / "embeddings.json").exists():
        old = read_spec(out_dir)
        if (old.profile, old.model_ids, old.dims) != (spec.profile, spec.model_ids, spec.dims):
            raise EncodeError(
                f"{out_dir} holds shards of {old.profile} {old.model_ids}, not {spec.model_ids}: choose an empty --out"
            )
        if old.extra.get("shard_rows") != spec.extra["shard_rows"]:
            raise EncodeError(
                f"{out_dir} holds shards of {old.extra.get('shard_rows')} rows, not {spec.extra['shard_rows']}: "
                "resume with the same --shard-rows or choose an empty --out"
            )
    planned = {p.name for p in plans}
    stale = [p.name for p in shard_files(out_dir) if p.name not in planned]
    if stale:
        raise EncodeError(
            f"{out_dir} holds shards this catalogue does not plan ({', '.join(stale[:3])}...): "
            "`ingest` would read them; remove them or choose an empty --out"
        )


def encode_catalog(
    data_dir: str | Path,
    out_dir: str | Path,
    profile: str = DEFAULT_PROFILE,
    ray_address: str | None = None,
    batch_size: int = 32,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    workers: int | None = None,
    cpus_per_worker: int | None = None,
    limit: int | None = None,
    log: Callable[[str], None] | None = print,
) -> EncodeSummary:
    """Encode the catalogue at `data_dir` into shards at `out_dir` on Ray; skip shards already written."""
    import ray

    catalog = load_catalog(data_dir)
    products = catalog.products[:limit] if limit else catalog.products
    encoder = create_encoder(profile)  # model ids and dims; weights load in the actors
    out_dir = Path(out_dir)
    plans = plan_shards(products, shard_rows)
    spec = EmbeddingsSpec(
        encoder.profile,
        dict(encoder.model_ids),
        dict(encoder.dims),
        {
            "precision": getattr(encoder, "precision", "fp32"),
            "text_normalisation": {"strip_boilerplate": DEFAULT_STRIP_BOILERPLATE},
            "data_dir": str(Path(data_dir).resolve()),
            "products": len(products),
            "shard_rows": shard_rows,
            "shards": len(plans),
            "complete": False,
            "written_by": "python -m indexer encode",
        },
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_out_dir(out_dir, spec, plans)
    write_spec(out_dir, spec)
    todo = [p for p in plans if not shard_is_done(out_dir / p.name, p, spec)]
    skipped = len(plans) - len(todo)
    say = log or (lambda _line: None)
    say(f"{len(plans)} shards of up to {shard_rows} products; {skipped} already written, {len(todo)} to encode")

    session = _connect(ray_address) if todo else _RaySession("not needed", started=False)
    start = time.perf_counter()
    written = encoded_products = 0
    shard_seconds = worker_rss = 0.0
    try:
        if todo:
            total_cpus = int(ray.cluster_resources().get("CPU", 1))
            cpus = max(1, min(cpus_per_worker or DEFAULT_CPUS_PER_WORKER, total_cpus))
            fits = max(1, total_cpus // cpus)
            if workers and workers > fits:
                say(f"{workers} workers x {cpus} CPUs do not fit the cluster's {total_cpus} CPUs: using {fits}")
            workers = min(workers or fits, fits)
            for done in _run(todo, products, spec, profile, batch_size, workers, cpus):
                plan = plans[done["shard"]]
                table = pa.ipc.open_stream(done["arrow"]).read_all()
                write_shard(out_dir / plan.name, table)
                written += 1
                shard_seconds += float(done["seconds"])
                worker_rss = max(worker_rss, float(done["peak_rss_mb"]))
                encoded_products += plan.stop - plan.start
                elapsed = time.perf_counter() - start
                say(
                    f"[{skipped + written}/{len(plans)}] {plan.name}: {plan.stop - plan.start} products in "
                    f"{done['seconds']:.1f} s, {done['unreadable']} unreadable images; overall "
                    f"{encoded_products / elapsed:.1f} products/s"
                )
        else:
            workers, cpus = 0, 0
    finally:
        if session.started:
            ray.shutdown()
    seconds = time.perf_counter() - start
    write_spec(out_dir, EmbeddingsSpec(spec.profile, spec.model_ids, spec.dims, {**spec.extra, "complete": True}))
    unreadable = _unreadable_images(out_dir, plans)
    catalogue_report = ValidationReport()
    ids = {p.id for p in products}
    for kind, items in catalog.report.issues.items():
        for item in items:
            if item["id"] in ids:
                catalogue_report.add(kind, item["id"], item["detail"])
    report = {"catalogue": catalogue_report.to_dict(), "unreadable_image": unreadable}
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for item in unreadable:
        say(f"  unreadable_image {item['id']}: {item['detail']}")
    return EncodeSummary(
        out_dir=str(out_dir),
        profile=spec.profile,
        products=len(products),
        shards=len(plans),
        written=written,
        skipped=skipped,
        unreadable_images=len(unreadable),
        workers=workers,
        cpus_per_worker=cpus,
        seconds=seconds,
        encoded_products=encoded_products,
        products_per_s=encoded_products / seconds if encoded_products else 0.0,
        ray_address=session.address,
        report_file=str(out_dir / REPORT_FILE),
        catalogue_issues=catalogue_report.counts(),
        shard_seconds=shard_seconds,
        worker_peak_rss_mb=worker_rss,
    )


def _run(
    todo: list[ShardPlan],
    products: Sequence[Product],
    spec: EmbeddingsSpec,
    profile: str,
    batch_size: int,
    workers: int,
    cpus: int,
) -> Iterator[dict]:
    """Shard results as the actors finish them."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    items = [
        {
            "shard": plan.index,
            "records": json.dumps([p.to_record() for p in products[plan.start : plan.stop]], ensure_ascii=False),
            "meta": json.dumps({"model_ids": spec.model_ids, "dims": spec.dims, "ids_sha256": plan.ids_sha}),
        }
        for plan in todo
    ]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardEncoder,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus,
        fn_constructor_kwargs={"profile": profile, "batch_size": batch_size, "threads": cpus},
    )
    yield from dataset.iter_rows()


def _unreadable_images(out_dir: Path, plans: list[ShardPlan]) -> list[dict]:
    """Every product whose image failed to decode, read back from the shards' `image_error`."""
    found = []
    for plan in plans:
        table = pq.read_table(out_dir / plan.name, columns=["id", "image_error"])
        for pid, error in zip(table["id"].to_pylist(), table["image_error"].to_pylist(), strict=True):
            if error:
                found.append({"id": pid, "shard": plan.name, "detail": error})
    return found
