"""Prometheus metrics: request count and latency by endpoint and status, predict stages.

Multi-worker: when PROMETHEUS_MULTIPROC_DIR is set (service/gunicorn.conf.py sets it),
each worker writes its samples to files there and GET /metrics aggregates all live
workers (prometheus_client's multiprocess mode). Without it (dev server, tests) the
figures are those of the answering process only.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

bp = Blueprint("metrics", __name__)

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by endpoint, method and status",
    ["endpoint", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Request latency by endpoint and status",
    ["endpoint", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.4, 1.0, 2.5, 5.0, 10.0),
)
STAGES = Histogram(
    "predict_stage_seconds",
    "Time of each /predict stage",
    ["stage"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.5, 1.0),
)
INDEX_PRODUCTS = Gauge("index_products", "Products in the loaded index", registry=REGISTRY, multiprocess_mode="max")
INDEX_REFUSALS = Counter(
    "index_version_refusals_total", "Index versions refused because they failed to load or verify", registry=REGISTRY
)
INDEX_REFUSED = Gauge(
    "index_version_refused",
    "Number of the index version this process refuses to serve (0: none refused; -1: CURRENT itself is damaged)",
    registry=REGISTRY,
    multiprocess_mode="max",
)
INDEX_SERVED = Gauge(
    "index_version_served",
    "Number of the index version this process serves",
    registry=REGISTRY,
    multiprocess_mode="min",
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def observe_stages(timing_ms: dict) -> None:
    for stage, ms in timing_ms.items():
        if stage != "total":
            STAGES.labels(stage).observe(ms / 1000.0)


def set_index_size(n: int) -> None:
    INDEX_PRODUCTS.set(n)


def set_served(version: str) -> None:
    INDEX_SERVED.set(int(version) if version.isdigit() else -1)


def record_refusal(version: str | None) -> None:
    """Count a refused version and expose its number; `None` clears it (a good version is live)."""
    if version is None:
        INDEX_REFUSED.set(0)
        return
    INDEX_REFUSALS.inc()
    INDEX_REFUSED.set(int(version) if version.isdigit() else -1)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def install(app: Flask) -> None:
    """Time every request; label by route pattern (not raw path) to keep cardinality bounded."""

    @app.before_request
    def _start() -> None:
        g._metrics_start = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        start = g.pop("_metrics_start", None)
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        if endpoint.startswith("/static/") or endpoint == "/metrics":
            return response
        status = str(response.status_code)
        REQUESTS.labels(endpoint, request.method, status).inc()
        if start is not None:
            LATENCY.labels(endpoint, status).observe(time.perf_counter() - start)
        return response
