"""Classical baselines computed here (the index holds only the neural vectors).

* TF-IDF over `indexer.catalog.text.baseline_tokens` of the product's text (name + description,
  through `indexer.catalog.text.encoder_text`, the same boilerplate stripping as the encoders).
* ORB bag of visual words: images loaded only via `indexer.catalog.images.load_image` (JPEG
  draft decoding, bounded size), ~500 ORB keypoints each, a MiniBatchKMeans vocabulary
  with a fixed seed, TF-IDF weighting of the word counts. The per-image word counts
  are cached on disk keyed by the image bytes and the parameters, since decoding and
  describing 945 photos dominates the report's run time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

from indexer.catalog import IMAGES_DIR, ImageError, Product, baseline_tokens, encoder_text, load_image, thumbnail

from .representations import Representation

SEED = 0
BOVW_PARAMS = {
    "detector": "ORB",
    "max_side": 384,  # images are described at <= 384 px (draft-decoded)
    "keypoints": 500,
    "vocabulary": 256,
    "vocabulary_sample": 20000,
    "seed": SEED,
    "version": 1,
}
TFIDF_MIN_DF = 2


# ---- images of the index's products --------------------------------------------------------
def image_file(product: Product, data_dir: str | Path | None = None, index_data_dir: str | None = None) -> Path | None:
    """Where a product's image is: its stored path, else DATA_DIR/Images/<name>, else the
    data folder the index was built from (stored paths may be relative to another cwd)."""
    candidates = []
    if product.image_path is not None:
        candidates.append(Path(product.image_path))
    if product.image:
        name = Path(product.image).name
        for root in (data_dir, index_data_dir):
            if root:
                candidates.append(Path(root) / IMAGES_DIR / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


# ---- text ----------------------------------------------------------------------------------
def product_text(product: Product) -> str:
    return encoder_text(product.name, product.description)


def tfidf(
    products: Sequence[Product], min_df: int = TFIDF_MIN_DF, text_of: Callable[[Product], str] | None = None
) -> Representation:
    """TF-IDF (sublinear tf, L2 rows) of lemmatised, stop-word-free tokens; dense for PCA.

    `text_of(product)` gives the product's text (default: `encoder_text` of name and
    description; the report passes the index's own normalisation when it has one).
    """
    texts = [(text_of or product_text)(p) for p in products]
    tokens = [baseline_tokens(t) for t in texts]
    rows = np.array([i for i, toks in enumerate(tokens) if toks], dtype=np.int64)
    if len(rows) < 2:
        raise ValueError("TF-IDF baseline needs at least two products with text")
    min_df = min(min_df, len(rows))
    vectorizer = TfidfVectorizer(analyzer=lambda i: tokens[i], min_df=min_df, sublinear_tf=True)
    matrix = vectorizer.fit_transform(rows.tolist())
    dense = matrix.toarray().astype(np.float32)
    keep = np.linalg.norm(dense, axis=1) > 0
    missing = len(products) - int(keep.sum())
    note = f"{dense.shape[1]} terms (min_df={min_df})" + (
        f"; {missing} product(s) without any kept term left out" if missing else ""
    )
    return Representation("tfidf", dense[keep], rows[keep], note, {"vocabulary": int(dense.shape[1])})


# ---- bag of visual words -------------------------------------------------------------------
def _describe(path: Path | None, params: dict) -> tuple[np.ndarray | None, str | None]:
    """ORB descriptors (uint8, (m, 32)) of one image, or an error message."""
    import cv2

    if path is None:
        return None, "no image file"
    try:
        image = load_image(path, draft_size=params["max_side"])
    except ImageError as exc:
        return None, str(exc)
    gray = np.asarray(thumbnail(image, params["max_side"]).convert("L"))
    orb = cv2.ORB_create(nfeatures=params["keypoints"])  # type: ignore[attr-defined]  # cv2's stubs omit it
    _, descriptors = orb.detectAndCompute(gray, None)
    if descriptors is None or len(descriptors) == 0:
        return np.zeros((0, 32), np.uint8), None
    return descriptors, None


def _bits(descriptors: np.ndarray) -> np.ndarray:
    """Binary ORB descriptors as 0/1 floats: Euclidean distance then equals sqrt(Hamming)."""
    return np.unpackbits(descriptors, axis=1).astype(np.float32)


def _cache_key(paths: list[Path | None], params: dict) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for path in paths:
        digest.update(b"\0")
        if path is not None:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


@dataclass
class BovwCounts:
    counts: np.ndarray  # (n_products, vocabulary) visual-word counts
    ok: np.ndarray  # bool: image decoded
    errors: dict  # product row -> message
    cached: bool


def bovw_counts(
    paths: list[Path | None], params: dict | None = None, cache_dir: Path | None = None, workers: int | None = None
) -> BovwCounts:
    """Visual-word counts per image (vocabulary learnt on a seeded sample of descriptors)."""
    params = {**BOVW_PARAMS, **(params or {})}
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"bovw-{_cache_key(paths, params)}.npz"
        if cache_file.is_file():
            data = np.load(cache_file, allow_pickle=False)
            errors = json.loads(str(data["errors"]))
            return BovwCounts(data["counts"], data["ok"], {int(k): v for k, v in errors.items()}, True)
    workers = workers or min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        described = list(pool.map(lambda p: _describe(p, params), paths))
    ok = np.array([d is not None for d, _ in described])
    errors = {i: err for i, (_, err) in enumerate(described) if err}
    pool_desc = [d for d, _ in described if d is not None and len(d)]
    if not pool_desc:
        raise ValueError("bag of visual words: no keypoints found in any image")
    everything = np.vstack(pool_desc)
    rng = np.random.default_rng(params["seed"])
    sample = everything[rng.choice(len(everything), min(len(everything), params["vocabulary_sample"]), replace=False)]
    words = min(params["vocabulary"], len(np.unique(sample, axis=0)))
    # random init: k-means++ seeding of 256 centres in 256-d costs more than the fit itself
    kmeans = MiniBatchKMeans(n_clusters=words, batch_size=2048, n_init=3, init="random", random_state=params["seed"])
    kmeans.fit(_bits(sample))
    owner = np.concatenate([np.full(len(d), i) for i, (d, _) in enumerate(described) if d is not None and len(d)])
    assigned = np.concatenate(
        [kmeans.predict(_bits(everything[s : s + 50000])) for s in range(0, len(everything), 50000)]
    )
    counts = np.zeros((len(paths), words), np.float32)
    np.add.at(counts, (owner, assigned), 1)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, counts=counts, ok=ok, errors=json.dumps({str(k): v for k, v in errors.items()}))
        os.replace(tmp, cache_file)
    return BovwCounts(counts, ok, errors, False)


def bovw(
    products: Sequence[Product],
    data_dir: str | Path | None = None,
    index_data_dir: str | None = None,
    cache_dir: Path | None = None,
    params: dict | None = None,
) -> Representation:
    """TF-IDF-weighted ORB bag of visual words of every product with a decodable image."""
    paths = [image_file(p, data_dir, index_data_dir) for p in products]
    if not any(paths):
        raise ValueError("bag of visual words: none of the products' image files were found (set --data / DATA_DIR)")
    result = bovw_counts(paths, params, cache_dir)
    has_words = result.ok & (result.counts.sum(axis=1) > 0)
    rows = np.flatnonzero(has_words)
    weighted = TfidfTransformer(sublinear_tf=True).fit_transform(result.counts[rows]).toarray().astype(np.float32)
    unusable = int((~result.ok).sum())
    no_keypoints = int((result.ok & ~has_words).sum())
    p = {**BOVW_PARAMS, **(params or {})}
    note = (
        f"ORB {p['keypoints']} keypoints at <= {p['max_side']} px, {result.counts.shape[1]} visual words"
        + (f"; left out: {unusable} product(s) without a readable image" if unusable else "")
        + (f", {no_keypoints} image(s) where ORB finds no keypoint (small or plain)" if no_keypoints else "")
    )
    return Representation("bovw", weighted, rows, note, {"errors": result.errors, "cached": result.cached})
