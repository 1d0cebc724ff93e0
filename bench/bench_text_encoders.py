"""The embedded profile's text towers alone: seller-query latency and catalogue throughput.

For each EMBEDDED_TEXT_MODEL value: p50/p95 of encoding one hand-written seller query
(title + description, tests/data/multilingual_queries.csv) at a time with the service's
thread count (TORCH_THREADS, default 1, also applied to OpenMP/BLAS), then catalogue texts
per second in build batches (the first N products of DATA_DIR, build thread count).
The CPU is shared: the load average is printed beside every line.

Run: .venv/bin/python bench/bench_text_encoders.py [minilm e5 use minilm+e5 ...]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from common import data_dir

from evaluation.crosslingual import load_queries
from indexer.catalog.products import load_catalog
from indexer.encoders import create_encoder, set_text_threads
from indexer.encoders.textmodels import TEXT_MODELS
from indexer.pipeline.build import product_texts

CATALOGUE_TEXTS = 200
REPEATS = 3


def main() -> None:
    import torch

    models = sys.argv[1:] or list(TEXT_MODELS)
    service_threads = int(os.environ.get("TORCH_THREADS", "1"))
    build_threads = os.cpu_count() or 1
    queries = [f"{q.title}. {q.description}".strip(". ") for q in load_queries()]
    catalogue = product_texts(load_catalog(data_dir()).products[:CATALOGUE_TEXTS])
    print(
        f"{len(queries)} seller queries one at a time with {service_threads} thread(s); "
        f"{len(catalogue)} catalogue texts in batches of 64 with {build_threads} threads"
    )
    for name in models:
        encoder = create_encoder("embedded", text_model=name)
        torch.set_num_threads(service_threads)
        set_text_threads(service_threads)
        encoder.encode_text_queries(queries[:3])  # loads the towers, warms up
        times = []
        for _ in range(REPEATS):
            for text in queries:
                t0 = time.perf_counter()
                encoder.encode_text_queries([text])
                times.append((time.perf_counter() - t0) * 1000)
        load_q = os.getloadavg()[0]
        torch.set_num_threads(build_threads)
        set_text_threads(build_threads)
        t0 = time.perf_counter()
        encoder.encode_texts(catalogue)
        rate = len(catalogue) / (time.perf_counter() - t0)
        print(
            f"{name:12} query p50 {np.percentile(times, 50):6.1f} ms  p95 {np.percentile(times, 95):6.1f} ms "
            f"(load {load_q:.2f})  catalogue {rate:6.1f} texts/s (load {os.getloadavg()[0]:.2f})  "
            f"{encoder.model_ids['text']}"
        )


if __name__ == "__main__":
    main()
