"""`indexer encode` on a local Ray instance, then `ingest`: the same index as `build`.

One local Ray instance (2 CPUs) is shared by every test of this module and shut down
after it; the full catalogue is encoded once (~45 s here) and reused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fakes import make_dataset

from indexer.catalog.shards import read_spec, shard_files
from indexer.pipeline.encode import DEFAULT_SHARD_ROWS, REPORT_FILE, encode_catalog, local_ray_init
from indexer.pipeline.ingest import ingest
from indexer.store import open_store
from indexer.store.base import IndexStore

ROOT = Path(__file__).resolve().parents[2]
# Measured: Ray's vectors equal the in-process build's bit for bit on this machine (max |diff| 0.0,
# bf16 autocast included); the margin allows for CPUs whose bf16 kernels depend on the batch.
VECTOR_ATOL = 1e-5
# A value the two paths compute within VECTOR_ATOL may still round to neighbouring float16 values in
# the stored copies (a small index keeps float16: segments.vector_dtype_for): one float16 step, 2^-10 of the
# value. Seen with fp32 encoding (ENCODER_PRECISION=auto on a CPU without native bf16): 7 of 1.2M.
FLOAT16_STEP = 2.0**-10
FLOAT_TOL = 1e-6  # fitted thresholds and cross-validated figures: float rounding only
COMBINER_TOL = 1e-3  # the combiner's numbers and the figures computed from its scores (see below)
COMBINER_KEYS = ("combiner", "combiner_empirical")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    local_ray_init(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def full_shards(tmp_path_factory, ray_local, real_data_dir):
    out = tmp_path_factory.mktemp("shards")
    summary = encode_catalog(real_data_dir, out, batch_size=32, log=None)
    return out, summary


def _float32_by_id(store: IndexStore, modality: str) -> dict[str, np.ndarray]:
    """The build's float32 vectors (the store keeps float16; its Flat FAISS index keeps them as built)."""
    index = store.modalities[modality].index
    vectors, rows = index.reconstruct_n(0, index.ntotal), np.asarray(store.modalities[modality].rows)
    return {store.products[r].id: v for r, v in zip(rows, vectors, strict=True)}


@pytest.mark.integration
def test_encode_on_ray_gives_the_build_vectors(full_shards, real_index):
    out, summary = full_shards
    built = open_store(real_index[0])
    assert summary.products == len(built.products) == 945 and summary.written == summary.shards == 8
    spec = read_spec(out)
    assert spec.model_ids == built.manifest["model_ids"] and spec.extra["complete"] is True
    assert len(shard_files(out)) == 8 and spec.extra["shard_rows"] == DEFAULT_SHARD_ROWS
    for modality in ("image", "text"):
        expected = _float32_by_id(built, modality)
        got = {}
        for path in shard_files(out):
            table = pq.read_table(path, columns=["id", f"{modality}_vector"])
            for pid, vec in zip(table["id"].to_pylist(), table[f"{modality}_vector"].to_pylist(), strict=True):
                if vec is not None:
                    got[pid] = np.asarray(vec, np.float32)
        assert set(got) == set(expected), modality
        diff = max(float(np.abs(got[pid] - expected[pid]).max()) for pid in got)
        assert diff <= VECTOR_ATOL, f"{modality}: max |ray - build| = {diff}"


@pytest.mark.integration
def test_encode_then_ingest_equals_build(full_shards, real_index, tmp_path):
    out, _ = full_shards
    summary = ingest(out, tmp_path / "index")
    built, ingested = open_store(real_index[0]), open_store(tmp_path / "index")
    assert summary.refused == {}
    assert ingested.products == built.products
    for key in ("profile", "model_ids", "dims", "counts", "categories", "precision", "text_normalisation"):
        assert ingested.manifest[key] == built.manifest[key], key
    # the fitted threshold and cross-validated figures come from two code paths (Ray's batches vs the
    # build's) whose vectors differ by float rounding (<= VECTOR_ATOL): equal to 1e-6, not bit for bit.
    # The combiner is a logistic regression on features of simulated title-only listings, whose names
    # the build encodes through its embedding cache (other batches, so other rounding) and lbfgs
    # stops at its tolerance: its numbers agree to COMBINER_TOL (measured: within 7e-5 of each other; when
    # ingest encoded them in another order, one listing's vote flipped and a coefficient moved 0.0065)
    assert_close(ingested.manifest["categorizer"], built.manifest["categorizer"], loose=COMBINER_KEYS)
    assert ingested.manifest["lexical"] == built.manifest["lexical"]
    assert (ingested.lexical.matrix != built.lexical.matrix).nnz == 0
    for modality in ("image", "text"):
        a, b = built.vectors_by_row(modality), ingested.vectors_by_row(modality)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=VECTOR_ATOL, rtol=FLOAT16_STEP)


@pytest.mark.integration
def test_encode_resumes_and_skips_written_shards(full_shards, real_data_dir, tmp_path):
    source, _ = full_shards
    out = tmp_path / "shards"
    shutil.copytree(source, out)
    last = shard_files(out)[-1]
    before = pq.read_table(last)
    first_mtime = shard_files(out)[0].stat().st_mtime_ns
    last.unlink()
    lines: list[str] = []
    summary = encode_catalog(real_data_dir, out, log=lines.append)
    assert (summary.written, summary.skipped) == (1, 7)
    assert any(line.startswith("[8/8] shard-000007.parquet: 49 products") for line in lines)
    assert shard_files(out)[0].stat().st_mtime_ns == first_mtime
    after = pq.read_table(last)
    assert after["id"].to_pylist() == before["id"].to_pylist()
    np.testing.assert_allclose(
        np.array(after["text_vector"].to_pylist()), np.array(before["text_vector"].to_pylist()), atol=VECTOR_ATOL
    )
    again = encode_catalog(real_data_dir, out, log=None)
    assert (again.written, again.skipped, again.ray_address) == (0, 8, "not needed")


@pytest.mark.integration
def test_an_undecodable_image_is_reported_not_fatal(ray_local, tmp_path):
    data = make_dataset(tmp_path / "data", per_category=3, corrupt=1, missing=1)
    out = tmp_path / "shards"
    lines: list[str] = []
    summary = encode_catalog(data["folder"], out, shard_rows=4, log=lines.append)
    bad = data["corrupt_ids"][0]
    assert summary.unreadable_images == 1 and summary.products == 9
    assert any(line.startswith(f"  unreadable_image {bad}") for line in lines)
    report = json.loads((out / REPORT_FILE).read_text())
    assert [item["id"] for item in report["unreadable_image"]] == [bad]
    assert report["catalogue"]["counts"] == {"missing_image": 1}
    table = pq.read_table(out / "shard-000000.parquet")
    row = table["id"].to_pylist().index(bad)
    assert table["image_vector"][row].as_py() is None and table["text_vector"][row].as_py() is not None
    assert table["image_error"][row].as_py()


# ---- CLI errors: exit 2 before any Ray work -------------------------------------------------------
def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "INDEX_DIR", "RAY_ADDRESS")}
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_encode_without_data_exits_2(tmp_path):
    proc = run_cli("encode", "--out", str(tmp_path / "shards"))
    assert proc.returncode == 2 and "error: no dataset: pass --data DIR or set DATA_DIR" in proc.stderr


def test_encode_into_a_folder_of_other_models_exits_2(tmp_path):
    data = make_dataset(tmp_path / "data", per_category=1)
    out = tmp_path / "shards"
    out.mkdir()
    spec = {"profile": "embedded", "model_ids": {"image": "other", "text": "other"}, "dims": {"image": 8, "text": 8}}
    (out / "embeddings.json").write_text(json.dumps(spec))
    proc = run_cli("encode", "--data", str(data["folder"]), "--out", str(out))
    assert proc.returncode == 2 and "error: " in proc.stderr and "choose an empty --out" in proc.stderr
    assert json.loads((out / "embeddings.json").read_text()) == spec  # untouched


def test_ingest_missing_folder_exits_2(tmp_path):
    proc = run_cli("ingest", "--embeddings", str(tmp_path / "none"), "--out", str(tmp_path / "index"))
    assert proc.returncode == 2 and f"error: embeddings folder {tmp_path / 'none'} does not exist" in proc.stderr


def assert_close(a, b, tol=FLOAT_TOL, where="categorizer", loose=()):
    """Nested dicts/lists equal, floats within `tol` (absolute and relative), everything else exactly;
    floats under a key named in `loose` within COMBINER_TOL."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_close(a[key], b[key], COMBINER_TOL if key in loose else tol, f"{where}.{key}", loose)
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, tol, f"{where}[{i}]", loose)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=tol, abs=tol), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_assert_close_tolerates_rounding_only():
    assert_close({"t": 0.8763390459, "k": 15, "w": [0.3, "x"]}, {"t": 0.8763390482, "k": 15, "w": [0.3, "x"]})
    for other in (
        {"t": 0.877, "k": 15, "w": [0.3, "x"]},
        {"t": 0.8763390459, "k": 16, "w": [0.3, "x"]},
        {"t": 0.8763390459, "k": 15, "w": [0.3, "y"]},
        {"t": 0.8763390459, "k": 15},
    ):
        with pytest.raises(AssertionError):
            assert_close({"t": 0.8763390459, "k": 15, "w": [0.3, "x"]}, other)
    combiner = {"combiner": {"coef": [0.0198]}, "t": 0.5}
    assert_close(combiner, {"combiner": {"coef": [0.0199]}, "t": 0.5}, loose=COMBINER_KEYS)
    for other in ({"combiner": {"coef": [0.0133]}, "t": 0.5}, {"combiner": {"coef": [0.0198]}, "t": 0.5001}):
        with pytest.raises(AssertionError):
            assert_close(combiner, other, loose=COMBINER_KEYS)
