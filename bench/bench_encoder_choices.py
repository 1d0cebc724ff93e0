"""Which embedded-profile settings to ship: measured, not guessed.

Compares, on the same leak-free grouped folds of the 945 products:
  text: boilerplate stripped or kept, 128 or 256 max tokens (accuracy and texts/s);
  image: EfficientNet-Lite0 vs Lite2 (accuracy and images/s);
  precision: bf16 autocast vs fp32 (speed, and agreement of neighbours and predictions).
With --precision-only: this CPU's native-bf16 flags, what the default ("auto") resolves to here,
and the image rate (model only, 64 catalogue images) in bf16 and in fp32, nothing else.
Run: .venv/bin/python bench/bench_encoder_choices.py [--precision-only]   (DATA_DIR defaults to ../shared/data/Flipkart)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import cv_scores, data_dir, memory_store

from indexer.catalog.products import load_catalog
from indexer.categorizer.protocol import grouped_folds, near_duplicate_groups
from indexer.categorizer.vote import Categorizer
from indexer.encoders import create_encoder
from indexer.pipeline.build import encode_products, product_texts


def timed_encode(products, encoder):
    t = time.perf_counter()
    enc = encode_products(products, encoder, cache=None, progress=False)
    return enc.vectors, time.perf_counter() - t


def text_rate(encoder, texts):
    t = time.perf_counter()
    vectors = encoder.encode_texts(texts)
    return vectors, len(texts) / (time.perf_counter() - t)


def image_rate(encoder, products, count: int = 256):
    from indexer.catalog.images import load_image

    images = [load_image(p.image_path, draft_size=encoder.image_size) for p in products if p.image_path][:count]
    arrays = [encoder.preprocess(im) for im in images]
    encoder.encode_arrays(arrays[:8])
    t = time.perf_counter()
    encoder.encode_arrays(arrays)
    return len(arrays) / (time.perf_counter() - t)


def precision_rates(products) -> None:
    """What "auto" picks on this CPU, and the image rate it saves or costs."""
    from pathlib import Path

    from indexer.encoders.embedded import BF16_CPU_FLAGS, cpu_flags, native_bf16, resolve_precision

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    simd = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx")))
    native = f"native bf16 ({'/'.join(BF16_CPU_FLAGS)}): {native_bf16()}"
    print(f"CPU: {model}; SIMD flags: {' '.join(simd) or 'none'}; {native}")
    print(f"ENCODER_PRECISION=auto resolves to {resolve_precision('auto')} here")
    for precision in ("fp32", "bf16"):
        encoder = create_encoder("embedded", precision=precision)
        print(f"{precision}: {image_rate(encoder, products, 64):.1f} images/s (lite0, model only, 64 images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision-only", action="store_true", help="only the bf16 / fp32 image rates on this CPU")
    args = parser.parse_args()
    products = load_catalog(data_dir()).products
    if args.precision_only:
        precision_rates(products)
        return
    base = create_encoder("embedded", image_variant="lite0", precision="bf16", text_max_tokens=256)
    vectors, seconds = timed_encode(products, base)
    reference = memory_store(products, vectors)
    folds = grouped_folds(reference.labels(), near_duplicate_groups(reference))
    print(f"reference: lite0 bf16, strip, 256 tokens: encoded in {seconds:.1f} s")
    print("groups/folds fixed from the reference vectors for every variant\n")

    print("== text: boilerplate x max tokens (text-only CV accuracy, fused CV, texts/s)")
    for strip in (True, False):
        for tokens in (128, 256):
            encoder = create_encoder("embedded", precision="bf16", text_max_tokens=tokens)
            texts = product_texts(products, strip=strip)
            text_vectors, rate = text_rate(encoder, texts)
            store = memory_store(products, {"image": vectors["image"], "text": text_vectors})
            scores = cv_scores(store, folds)
            print(
                f"strip={strip!s:5} tokens={tokens}: text acc {scores['text']['accuracy']:.3f}, "
                f"fused acc {scores['fused']['accuracy']:.3f} (auto coverage {scores['fused']['coverage']:.3f}), "
                f"{rate:.0f} texts/s"
            )

    print("\n== image: lite0 vs lite2 (image-only CV accuracy, fused, images/s model only)")
    for variant in ("lite0", "lite2"):
        encoder = create_encoder("embedded", image_variant=variant, precision="bf16")
        enc = encode_products(products, encoder, cache=None, progress=False)
        store = memory_store(products, {"image": enc.vectors["image"], "text": vectors["text"]})
        scores = cv_scores(store, folds)
        print(
            f"{variant}: image acc {scores['image']['accuracy']:.3f}, fused acc {scores['fused']['accuracy']:.3f}, "
            f"{image_rate(encoder, products):.0f} images/s"
        )

    print("\n== precision: bf16 autocast vs fp32")
    fp32 = create_encoder("embedded", precision="fp32")
    vec32, sec32 = timed_encode(products, fp32)
    print(f"encode all 945: fp32 {sec32:.1f} s vs bf16 {seconds:.1f} s")
    store32 = memory_store(products, vec32)
    for m in ("image", "text"):
        a = reference.modalities[m].vectors
        b = store32.modalities[m].vectors
        cos = np.sum(a * b, axis=1)
        _, nn_a = reference.modalities[m].index.search(a, 11)
        _, nn_b = store32.modalities[m].index.search(b, 11)
        overlap = np.mean([len(set(x[1:]) & set(y[1:])) / 10 for x, y in zip(nn_a, nn_b, strict=True)])
        print(
            f"{m}: cosine(bf16, fp32) mean {cos.mean():.4f} min {cos.min():.4f}; top-10 neighbour overlap {overlap:.3f}"
        )
    rows = np.arange(len(products))
    exclude = folds[:, None] == folds[None, :]
    p16 = Categorizer(reference).predict_rows(rows, exclude=exclude)
    p32 = Categorizer(store32).predict_rows(rows, exclude=exclude)
    agree = np.mean([a.category == b.category for a, b in zip(p16, p32, strict=True)])
    print(f"fused CV predictions identical for {agree:.4f} of products")


if __name__ == "__main__":
    main()
