"""Compact stored vectors and large-base FAISS indexes: int8 row-scaled and int4 row-affine
quantisation stay within their error bounds, "auto" picks Flat or IVF-PQ by size, IVF-PQ candidates re-scored with the
stored vectors reach exact recall, and a large base records its choices in the manifest and is
checked like every other file."""

from __future__ import annotations

import mmap
import shutil

import numpy as np
import pytest
from fakes import damage, make_products, publish_fake, random_vectors

from indexer.store import open_store
from indexer.store.local import faiss_search, segments
from indexer.store.local.faiss_search import build_faiss_index, choose_factory, exact_search, refine
from indexer.store.local.index import VERSIONS, IndexDamaged, ModalityIndex, append, read_current
from indexer.store.local.segments import (
    RowAffineInt4,
    RowScaledInt8,
    dot_rows,
    load_vectors,
    quantize_int4,
    quantize_int8,
    save_vectors,
    vector_dtype_for,
)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def mapped(array: object) -> bool:
    while array is not None:
        if isinstance(array, np.memmap | mmap.mmap):
            return True
        array = getattr(array, "base", None)
    return False


# ---- int8 with a scale per row ---------------------------------------------------------------
def test_int8_quantisation_stays_within_half_a_step():
    x = clustered(500, 64, seed=1)
    x[3] = 0.0  # a zero row must not divide by zero
    codes, scale = quantize_int8(x)
    assert codes.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (500,)
    back = RowScaledInt8(codes, scale)[np.arange(500)]
    err = np.abs(back - x)
    assert (err <= scale[:, None] / 2 + 1e-7).all()  # each component within half a step
    assert np.abs(codes).max() == 127  # the step is the row's peak / 127: the range is used
    q = clustered(20, 64, seed=2)
    dots_err = np.abs(q @ back.T - q @ x.T)
    assert (dots_err <= np.sqrt(64) * scale[None, :] / 2 + 1e-6).all()
    assert dots_err.max() < 0.01 and not np.isnan(back).any()


def test_int8_files_round_trip_memory_mapped(tmp_path):
    x = clustered(50, 16, seed=3)
    save_vectors(tmp_path, "text", x, "int8")
    stored = load_vectors(tmp_path, "text", "int8")
    assert isinstance(stored, RowScaledInt8) and mapped(stored.codes) and mapped(stored.scale)
    np.testing.assert_allclose(stored[[4, 0, 9]], x[[4, 0, 9]], atol=float(stored.scale.max()) / 2 + 1e-7)
    np.testing.assert_array_equal(np.asarray(stored)[7], stored[7])
    with pytest.raises(ValueError, match="float16"):
        load_vectors(tmp_path, "text", "float16")  # the manifest's precision must match the files


# ---- int4 with a step and an offset per row --------------------------------------------------
def test_int4_quantisation_stays_within_half_a_step_in_any_dimension_order():
    x = clustered(300, 63, seed=6)  # odd: the last byte holds one dimension
    x[5] = 0.0  # a zero row must not divide by zero
    x[6] = 0.25  # nor a constant one
    x[7] = np.abs(x[7])  # non-negative, like the image vectors: the whole range goes to [0, max]
    codes, step, offset = quantize_int4(x)
    assert codes.dtype == np.uint8 and codes.shape == (300, 32) and step.shape == offset.shape == (300,)
    stored = RowAffineInt4(codes, step, offset, 63)
    back = stored[np.arange(300)]
    assert back.shape == (300, 63) and not np.isnan(back).any()
    assert (np.abs(back - x) <= step[:, None] / 2 + 1e-6).all()  # each component within half a step
    np.testing.assert_allclose(back[[5, 6]], x[[5, 6]], atol=1e-7)
    np.testing.assert_allclose(offset[7], x[7].min())
    np.testing.assert_allclose(step[7], np.ptp(x[7]) / 15, rtol=1e-6)
    # the packing keeps each dimension in its place: 2j in byte j's low nibble, 2j+1 in its high one
    levels = np.rint((x[0] - offset[0]) / step[0])
    assert codes[0, 3] == levels[6] + 16 * levels[7] and codes[0, 31] == levels[62]
    np.testing.assert_array_equal(stored[4], back[4])  # one row, as a scalar position gives it
    q = clustered(5, 63, seed=7)
    for query in q:
        np.testing.assert_allclose(dot_rows(stored, np.arange(300), query), back @ query, rtol=1e-5, atol=1e-6)
    cos = np.sum(back * x, axis=1)[:5] / np.linalg.norm(back[:5], axis=1)
    assert cos.min() > 0.95  # 16 levels over each row's range: close, not exact


def test_int4_files_round_trip_memory_mapped(tmp_path):
    x = clustered(50, 17, seed=8)
    save_vectors(tmp_path, "text", x, "int4")
    stored = load_vectors(tmp_path, "text", "int4", dim=17)
    assert isinstance(stored, RowAffineInt4) and stored.shape == (50, 17)
    assert mapped(stored.codes) and mapped(stored.step) and mapped(stored.offset)
    np.testing.assert_allclose(stored[[4, 0, 9]], x[[4, 0, 9]], atol=float(stored.step.max()) / 2 + 1e-6)
    np.testing.assert_array_equal(np.asarray(stored)[7], stored[7])
    assert stored.nbytes == 50 * 9 + 2 * 50 * 4  # half a byte a dimension, plus two floats a row
    with pytest.raises(ValueError, match="int8"):
        load_vectors(tmp_path, "text", "int8")  # the manifest's precision must match the files
    np.save(tmp_path / "text.offset.npy", np.zeros(49, np.float32))
    with pytest.raises(ValueError, match="text.offset.npy"):
        load_vectors(tmp_path, "text", "int4", dim=17)
    with pytest.raises(ValueError, match="17"):
        RowAffineInt4(np.zeros((3, 8), np.uint8), np.ones(3, np.float32), np.zeros(3, np.float32), 17)


def advised_random(array: np.ndarray) -> bool:
    """True when the kernel holds random-read advice on the mapping behind `array`
    (/proc/self/smaps VmFlags "rr", set by madvise(MADV_RANDOM))."""
    start = array.ctypes.data
    inside = False
    with open("/proc/self/smaps") as smaps:
        lines = smaps.read().splitlines()
    for line in lines:
        head = line.split()[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= start < hi
        elif inside and line.startswith("VmFlags:"):
            return "rr" in line.split()[1:]
    return False


@pytest.mark.skipif(not hasattr(mmap, "MADV_RANDOM"), reason="madvise is Linux's")
def test_stored_vectors_and_lexical_rows_are_mapped_for_random_reads(tmp_path):
    """Rows are read scattered: without the advice the kernel's read-ahead made every stored
    vector resident in a worker after 20 predictions at 1M products (bench/bench_scale.py)."""
    save_vectors(tmp_path, "image", clustered(40, 16, seed=4), "int8")
    stored = load_vectors(tmp_path, "image", "int8")
    assert advised_random(stored.codes) and advised_random(stored.scale)
    plain = np.load(tmp_path / "image.npy", mmap_mode="r")
    assert not advised_random(plain)  # the check can fail: a mapping without the advice
    from indexer.store.lexical import LexicalIndex

    lexical = LexicalIndex.fit(["red mug", "blue mug", "steel bottle"], np.arange(3))
    lexical.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    assert advised_random(loaded.base_matrix.data) and advised_random(loaded.base_matrix.indices)
    assert not advised_random(loaded.postings.data)  # postings are read in runs: read-ahead kept


def test_vector_dtype_by_size_and_environment(monkeypatch):
    monkeypatch.setattr(segments, "COMPACT_ROWS", 100)
    monkeypatch.setattr(segments, "INT4_ROWS", 1000)
    assert vector_dtype_for(99, {}) == "float16" and vector_dtype_for(100, {}) == "int8"
    assert vector_dtype_for(999, {}) == "int8" and vector_dtype_for(1000, {}) == "int4"
    assert vector_dtype_for(10, {"INDEX_VECTOR_DTYPE": "int8"}) == "int8"
    assert vector_dtype_for(10**6, {"INDEX_VECTOR_DTYPE": "int8"}) == "int8"
    with pytest.raises(ValueError, match="INDEX_VECTOR_DTYPE"):
        vector_dtype_for(10, {"INDEX_VECTOR_DTYPE": "float8"})


# ---- FAISS factory and refinement ------------------------------------------------------------
def test_auto_factory_is_flat_when_small_and_ivf_pq_when_large():
    assert choose_factory("auto", faiss_search.LARGE_BASE_ROWS - 1, 896) == "Flat"
    assert choose_factory("HNSW32", 10**6, 896) == "HNSW32"
    assert choose_factory("auto", 10**6, 1280) == "IVF1024,PQ160x4fs"
    assert choose_factory("auto", 10**6, 896) == "IVF1024,PQ112x4fs"  # 112 divides 896: 896 / 8
    factory = choose_factory("auto", 100_000, 896)
    m = int(factory.split("PQ")[1].split("x")[0])
    assert factory.startswith("IVF256,") and 896 % m == 0 and m % 2 == 0


def test_refining_ivf_pq_candidates_with_stored_vectors_reaches_exact_recall():
    vectors = clustered(3000, 32, seed=4)
    queries = clustered(40, 32, seed=5)
    _, exact = exact_search(vectors, queries, 10)
    index, info = build_faiss_index(vectors, "IVF16,PQ16x4fs", train_rows=1500, seed=0)
    assert info["train_rows"] == 1500 and info["train_seed"] == 0 and index.ntotal == 3000
    faiss_search.apply_search_params(index, {"nprobe": 16, "efSearch": 16})
    _, raw = index.search(queries, 10)
    _, candidates = index.search(queries, 200)
    sims, refined = refine(vectors, queries, candidates, 10)
    assert recall_at_10(refined, exact) >= 0.95 > recall_at_10(raw, exact)  # the codes alone miss, re-scoring finds
    np.testing.assert_allclose(sims[:, 0], np.sum(vectors[refined[:, 0]] * queries, axis=1), rtol=1e-5)
    channel = ModalityIndex(vectors, np.arange(3000) + 7, index, refine=20)
    _, rows = channel.search(queries, 10)
    np.testing.assert_array_equal(rows, refined + 7)
    again, _ = build_faiss_index(vectors, "IVF16,PQ16x4fs", train_rows=1500, seed=0)
    faiss_search.apply_search_params(again, {"nprobe": 16, "efSearch": 16})
    np.testing.assert_array_equal(again.search(queries, 10)[1], raw)  # the seeded sample: the same index


@pytest.mark.parametrize(
    ("dtype", "stored_as", "int4_rows"), [("int8", RowScaledInt8, 10**9), ("int4", RowAffineInt4, 500)]
)
def test_a_large_base_records_its_choices_and_searches_through_them(tmp_path, monkeypatch, dtype, stored_as, int4_rows):
    monkeypatch.setattr(faiss_search, "LARGE_BASE_ROWS", 200)
    monkeypatch.setattr(segments, "COMPACT_ROWS", 200)
    monkeypatch.setattr(segments, "INT4_ROWS", int4_rows)
    for name in ("FAISS_NPROBE", "FAISS_REFINE", "INDEX_VECTOR_DTYPE", "LEXICAL_POSTINGS_CAP"):
        monkeypatch.delenv(name, raising=False)
    _, vectors = publish_fake(tmp_path, n=600, factory="auto")
    store = open_store(tmp_path, checksums=True)
    m = store.manifest
    assert m["vector_dtype"] == dtype and m["index_factory"] == "auto"
    assert m["faiss"]["text"]["factory"] == choose_factory("auto", 600, 12) and "PQ" in m["faiss"]["text"]["factory"]
    assert m["faiss"]["image"]["train_rows"] == 300 and m["faiss"]["text"]["train_seed"] == 0
    assert m["search"] == faiss_search.LARGE_SEARCH_PARAMS
    assert {"text.scale.npy", "image.scale.npy"} <= set(m["files"])
    text = store.modalities["text"]
    assert (dtype == "int4") == ({"text.offset.npy", "image.offset.npy"} <= set(m["files"]))
    assert isinstance(text.vectors, stored_as) and mapped(text.vectors.codes)
    assert text.refine == faiss_search.LARGE_SEARCH_PARAMS["refine"]
    queries = vectors["text"][0][:20]
    _, rows = text.search(queries, 10)
    assert (rows[:, 0] == np.arange(20)).all()  # each stored product finds itself first
    monkeypatch.setenv("FAISS_REFINE", "1")
    assert open_store(tmp_path).modalities["text"].refine == 1
    monkeypatch.delenv("FAISS_REFINE")
    new = random_vectors(2, 12, seed=9)
    grown = append(store, make_products(2, "new"), {"image": None, "text": new})
    _, rows = grown.modalities["text"].search(new, 1)
    assert rows[:, 0].tolist() == [600, 601]  # delta rows searched beside the IVF-PQ base
    # deleted products leave the IVF-PQ base at compaction: emptied and refilled, not retrained
    from indexer.store import delete
    from indexer.store.local.index import compact

    delete(grown, [f"s{i:04d}" for i in range(10)])
    compacted = compact(tmp_path)
    text = compacted.modalities["text"]
    assert text.ntotal == text.index.ntotal == 592 and compacted.manifest["faiss"] == m["faiss"]
    assert compacted.manifest["vector_dtype"] == dtype and isinstance(text.vectors, stored_as)
    _, rows = text.search(queries[10:20], 10)
    assert rows[:, 0].tolist() == list(range(10))  # rows 10..19 are now 0..9, each finds itself
    _, rows = text.search(new, 1)
    assert rows[:, 0].tolist() == [590, 591]


@pytest.mark.parametrize("how", ["truncated", "flipped"])
@pytest.mark.parametrize(("name", "int4_rows"), [("text.scale.npy", 10**9), ("text.offset.npy", 200)])
def test_a_damaged_scale_file_is_refused_by_name(tmp_path, monkeypatch, how, name, int4_rows):
    monkeypatch.setattr(faiss_search, "LARGE_BASE_ROWS", 200)
    monkeypatch.setattr(segments, "COMPACT_ROWS", 200)
    monkeypatch.setattr(segments, "INT4_ROWS", int4_rows)
    publish_fake(tmp_path / "good", n=300, factory="auto")
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    damage(tmp_path / "bad" / VERSIONS / read_current(tmp_path / "bad") / name, how)
    with pytest.raises(IndexDamaged, match=name):
        open_store(tmp_path / "bad", checksums=True)
