"""Service settings, read once from the environment with documented defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from indexer.settings import DEFAULT_INDEX_DIR


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be an integer, got {raw!r}") from None


def _vector_store(raw: str | None) -> str | None:
    from indexer.store import parse_vector_store

    try:
        return parse_vector_store(raw)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


@dataclass(frozen=True)
class Config:
    """Every knob of the service; `Config.from_env()` is what gunicorn uses.

    INDEX_DIR         index folder (default var/index, indexer.settings.DEFAULT_INDEX_DIR)
    DATA_DIR          dataset folder, to find catalogue photos when an index stores relative paths
    API_TOKEN         bearer token for writes (POST /api/v1/products, /api/v1/listings); unset = writes refused (403)
    REVIEW_TOKEN      bearer token for reviewers (GET/POST /api/v1/review...); unset = reviews refused (403);
                      must differ from API_TOKEN (a writer cannot decide reviews)
    BATCH_MAX_BYTES   largest body of POST /api/v1/predict/batch (default 200 MB; spooled to disk, not memory)
    BATCH_SIZE        listings encoded together by the batch endpoint (default 64): memory is O(BATCH_SIZE)
    RECALIBRATE_AFTER catalogue changes (audit-log entries: adds, filed listings, reviews, relabels, deletes)
                      after which the service refits the calibration in the background (default 200; 0 = never)
    MAX_UPLOAD_BYTES  largest request body (default 20 MB) -> 413 above it
    DEFAULT_K / MAX_K neighbours used by /predict and /search (default 10, at most 100)
    TORCH_THREADS     torch / FAISS / BLAS threads per worker (default 1: 2 workers x 1 thread = 2 cores)
    PARALLEL_ENCODE   1 (default) encodes a query's text on a helper thread while the image
                      is encoded: about max(image, text) instead of the sum when a core is free
    ENCODER_PROFILE   only used when no index exists yet; otherwise the index's own profile
    INDEX_VERIFY_CHECKSUMS  1 (default): each (re)load hashes the version's files (O(bytes); the
                      cost is printed by bench/bench_verify.py); 0: sizes and counts only
    MAX_URL_BYTES     longest request target (path + query), default 4096 -> 414 problem+json
    BODY_TIMEOUT      seconds a request may take to send its whole body under gunicorn (default 30) -> 408
    DECODE_BUDGET_PIXELS  pixels one worker decodes at once (default 80 M: two images at the 40 MP limit);
                      an upload that finds no room within DECODE_WAIT_SECONDS (default 2) gets 503 + Retry-After
    VECTOR_STORE      "faiss" (default: the index in INDEX_DIR), milvus://host:19530[/collection] (a Milvus
                      server) or a Milvus Lite *.db path: the index is served from that collection, while
                      INDEX_DIR keeps the local files (uploaded photos, embedding cache); see indexer.store.factory
    """

    index_dir: str = DEFAULT_INDEX_DIR
    data_dir: str | None = None
    api_token: str | None = None
    review_token: str | None = None
    batch_max_bytes: int = 200 * 1024 * 1024
    batch_size: int = 64
    recalibrate_after: int = 200
    max_upload_bytes: int = 20 * 1024 * 1024
    default_k: int = 10
    max_k: int = 100
    torch_threads: int = 1
    parallel_encode: bool = True
    encoder_profile: str = "embedded"
    max_title_chars: int = 1_000
    max_description_chars: int = 50_000
    thumb_default: int = 256
    thumb_max: int = 1024
    thumb_min: int = 16
    retry_load_seconds: float = 5.0
    verify_checksums: bool = True
    max_url_bytes: int = 4096
    max_json_depth: int = 32
    body_timeout: float = 30.0
    decode_budget_pixels: int = 80_000_000
    decode_wait_seconds: float = 2.0
    vector_store: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        base = cls(
            index_dir=os.environ.get("INDEX_DIR") or cls.index_dir,
            data_dir=os.environ.get("DATA_DIR") or None,
            api_token=os.environ.get("API_TOKEN") or None,
            review_token=os.environ.get("REVIEW_TOKEN") or None,
            batch_max_bytes=_int("BATCH_MAX_BYTES", cls.batch_max_bytes),
            batch_size=_int("BATCH_SIZE", cls.batch_size),
            recalibrate_after=_int("RECALIBRATE_AFTER", cls.recalibrate_after),
            max_upload_bytes=_int("MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            default_k=_int("DEFAULT_K", cls.default_k),
            max_k=_int("MAX_K", cls.max_k),
            torch_threads=_int("TORCH_THREADS", cls.torch_threads),
            parallel_encode=os.environ.get("PARALLEL_ENCODE", "1").lower() not in ("0", "false", "no", "off"),
            encoder_profile=os.environ.get("ENCODER_PROFILE") or cls.encoder_profile,
            verify_checksums=os.environ.get("INDEX_VERIFY_CHECKSUMS", "1").lower() not in ("0", "false", "no", "off"),
            max_url_bytes=_int("MAX_URL_BYTES", cls.max_url_bytes),
            body_timeout=_int("BODY_TIMEOUT", int(cls.body_timeout)),
            decode_budget_pixels=_int("DECODE_BUDGET_PIXELS", cls.decode_budget_pixels),
            decode_wait_seconds=_int("DECODE_WAIT_SECONDS", int(cls.decode_wait_seconds)),
            vector_store=_vector_store(os.environ.get("VECTOR_STORE")),
        )
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return replace(base, **overrides)

    def __post_init__(self) -> None:
        if self.review_token and self.review_token == self.api_token:
            raise SystemExit("REVIEW_TOKEN must differ from API_TOKEN: reviewers and writers hold distinct tokens")
        if self.batch_size < 1:
            raise SystemExit(f"BATCH_SIZE must be at least 1, got {self.batch_size}")
