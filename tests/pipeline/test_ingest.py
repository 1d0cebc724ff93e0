"""`indexer ingest`: Parquet shards of precomputed vectors -> a published index.

Small synthetic shards written here with pyarrow (variable-length lists, so that bad
rows can be written at all), the fake encoder as the index profile."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from fakes import FAKE_PROFILE, FakeEncoder, make_dataset
from shard_rows import ENC, VARIABLE_SCHEMA, row, spec, write_rows

import indexer.encoders as encoders
from indexer.__main__ import main
from indexer.catalog.products import load_catalog
from indexer.catalog.shards import EmbeddingsSpec, ShardFormatError, products_table, read_spec, write_shard, write_spec
from indexer.pipeline.build import build_index, encode_products
from indexer.pipeline.ingest import IngestRefused, ingest, read_batches
from indexer.store import open_store
from indexer.store.base import IndexStore


def test_good_rows_become_a_complete_index(fake_profile, tmp_path):
    rows = [row(i) for i in range(24)]
    rows[5]["image_vector"] = None  # a product without an image keeps its text
    rows[7]["category_path"] = ""  # unlabelled
    folder = write_rows(tmp_path / "emb", [rows[:10], rows[10:]])
    summary = ingest(folder, tmp_path / "index", batch_rows=4)
    store = open_store(tmp_path / "index", encoder=FakeEncoder())
    assert [p.id for p in store.products] == [r["id"] for r in rows]
    assert summary.products == 24 and summary.refused == {} and summary.indexed == {"image": 23, "text": 24}
    assert store.products[7].category_path == () and store.products[3].category_path == ("Watches", "Wrist Watches")
    vecs, image_rows = store.vectors_by_row("image")
    assert 5 not in image_rows.tolist()
    expected = np.array(rows[9]["image_vector"], np.float32)
    # stored as float16
    np.testing.assert_allclose(vecs[list(image_rows).index(9)], expected / np.linalg.norm(expected), atol=1e-3)
    m = store.manifest
    assert m["profile"] == FAKE_PROFILE and m["model_ids"] == ENC.model_ids and m["dims"] == ENC.dims
    assert m["counts"] == {"products": 24, "image": 23, "text": 24}
    assert m["lexical"]["count"] == 24 and store.lexical.rows.tolist() == list(range(24))
    # calibrated like a build: the nested protocol fitted on every row (a threshold may be None on 24 products)
    assert m["categorizer"]["cv"]["folds"] >= 2 and "threshold" in m["categorizer"] and m["categorizer"]["weights"]
    assert m["categories"] == ["Baby Care", "Computers", "Watches"]
    assert m["ingest"]["rows_read"] == 24 and m["ingest"]["files"] == 2


BAD = {
    "bad_id": [row(100, id=""), row(101, id=None), row(102, id=" padded "), row(103, id="a\x00b")],
    "duplicate_id": [row(1, name="second copy of p0001")],
    "wrong_vector_length": [row(104, image_vector=[1.0, 2.0]), row(105, text_vector=[0.5] * 13)],
    "non_finite_vector": [
        row(106, image_vector=[float("nan")] * ENC.dims["image"]),
        row(107, text_vector=[float("inf")] + [1.0] * (ENC.dims["text"] - 1)),
    ],
    "zero_vector": [row(108, text_vector=[0.0] * ENC.dims["text"])],
    "bad_category_path": [row(109, category_path="Watches >>  >> Dials"), row(110, category_path=" >> ")],
    "bad_price": [row(111, price=float("inf"))],
}


def test_bad_rows_are_refused_with_a_report_and_good_rows_go_in(fake_profile, tmp_path):
    good = [row(i) for i in range(12)]
    bad = [r for rows in BAD.values() for r in rows]
    folder = write_rows(tmp_path / "emb", [good[:6] + bad[:5], bad[5:] + good[6:]])
    summary = ingest(folder, tmp_path / "index", batch_rows=5)
    store = open_store(tmp_path / "index")
    assert [p.id for p in store.products] == [r["id"] for r in good]
    assert store.products[1].name == good[1]["name"]  # the first copy of a duplicate id wins
    assert summary.refused == {kind: len(rows) for kind, rows in BAD.items()}
    issues = store.manifest["validation"]["issues"]
    for kind, rows in BAD.items():
        assert len(issues[kind]) == len(rows), kind
        assert all("row refused" in item["detail"] and "part-" in item["detail"] for item in issues[kind])
    assert {i["id"] for i in issues["wrong_vector_length"]} == {"p0104", "p0105"}
    assert any("<part-0.parquet row" in i["id"] for i in issues["bad_id"])  # no usable id: named by position
    assert store.manifest["ingest"]["rows_refused"] == len(bad) and summary.rows_read == len(good) + len(bad)


@pytest.mark.parametrize(
    "the_spec, message",
    [
        (spec(model_ids={"image": "fake/image-v2", "text": ENC.model_ids["text"]}), "image model 'fake/image-v2'"),
        (spec(dims={"image": 16, "text": 24}), "text dims 24 are not 12"),
        (spec(profile="embedded"), "profile 'embedded' is not the index profile 'fake'"),
    ],
)
def test_other_models_or_dims_are_refused_and_nothing_is_written(fake_profile, tmp_path, the_spec, message):
    folder = write_rows(tmp_path / "emb", [[row(i) for i in range(6)]], the_spec)
    with pytest.raises(IngestRefused, match=message) as err:
        ingest(folder, tmp_path / "index", profile=FAKE_PROFILE)
    assert "nothing was written" in str(err.value)
    assert not (tmp_path / "index").exists()


def test_shards_of_other_models_do_not_replace_a_live_index(fake_profile, monkeypatch, tmp_path):
    ingest(write_rows(tmp_path / "v1", [[row(i) for i in range(6)]]), tmp_path / "index")
    other = lambda **options: FakeEncoder(profile="fake2", version="v2", **options)  # noqa: E731
    monkeypatch.setitem(encoders._FACTORIES, "fake2", other)
    v2 = {"model_ids": {"image": "fake/image-v2", "text": "fake/text-v2"}}
    folder = write_rows(tmp_path / "v2", [[row(i) for i in range(6)]], spec(profile="fake2", **v2))
    with pytest.raises(IngestRefused, match="profile 'fake2' is not the index profile 'fake'"):
        ingest(folder, tmp_path / "index")
    assert open_store(tmp_path / "index").version == "000001"
    ingest(folder, tmp_path / "index", profile="fake2")  # an explicit profile replaces it, as `build` would
    assert open_store(tmp_path / "index").manifest["model_ids"] == v2["model_ids"]


def test_fixed_size_vectors_of_other_dims_or_file_metadata_of_other_models_are_refused(fake_profile, tmp_path):
    products = load_like_rows(6)
    vectors = {"image": np.ones((6, 16), np.float32), "text": np.ones((6, 12), np.float32)}
    folder = tmp_path / "emb"
    write_spec(folder, spec())
    write_shard(folder / "a.parquet", products_table(products, vectors, ENC.dims))
    wrong_dims = {"image": 8, "text": 12}
    write_shard(folder / "b.parquet", products_table(products, {**vectors, "image": np.ones((6, 8))}, wrong_dims))
    with pytest.raises(IngestRefused, match=r"b.parquet: image_vector holds 8-d vectors.*gives 16"):
        ingest(folder, tmp_path / "index")
    (folder / "b.parquet").unlink()
    meta = {"model_ids": {"image": "other/model", "text": ENC.model_ids["text"]}}
    write_shard(folder / "c.parquet", products_table(products, vectors, ENC.dims, metadata=meta))
    with pytest.raises(IngestRefused, match="c.parquet: its metadata names model_ids"):
        ingest(folder, tmp_path / "index")
    assert not (tmp_path / "index").exists()


def load_like_rows(n: int) -> list:
    from fakes import make_products

    return make_products(n)


def test_reading_streams_in_batches_smaller_than_a_file(fake_profile, tmp_path):
    rows = [row(i) for i in range(23)]
    folder = write_rows(tmp_path / "emb", [rows])
    from indexer.catalog.products import ValidationReport
    from indexer.catalog.shards import shard_files

    batches = list(read_batches(shard_files(folder), spec(), ValidationReport(), batch_rows=5))
    assert [len(b.products) for b in batches] == [5, 5, 5, 5, 3]
    small = ingest(folder, tmp_path / "small", batch_rows=5)
    large = ingest(folder, tmp_path / "large", batch_rows=1000)
    a, b = open_store(tmp_path / "small"), open_store(tmp_path / "large")
    assert a.products == b.products and small.indexed == large.indexed
    for m in ("image", "text"):
        np.testing.assert_array_equal(a.vectors_by_row(m)[0], b.vectors_by_row(m)[0])
        np.testing.assert_array_equal(a.vectors_by_row(m)[1], b.vectors_by_row(m)[1])


def test_format_errors_are_clear(fake_profile, tmp_path):
    with pytest.raises(ShardFormatError, match="does not exist"):
        ingest(tmp_path / "nowhere", tmp_path / "index")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardFormatError, match="embeddings.json is missing"):
        ingest(tmp_path / "empty", tmp_path / "index")
    write_spec(tmp_path / "empty", spec())
    with pytest.raises(ShardFormatError, match="no \\*.parquet files"):
        ingest(tmp_path / "empty", tmp_path / "index")
    schema = pa.schema([f for f in VARIABLE_SCHEMA if f.name != "category_path"])
    write_rows(tmp_path / "nocat", [[{k: v for k, v in row(0).items() if k != "category_path"}]], schema=schema)
    with pytest.raises(ShardFormatError, match="missing columns category_path"):
        ingest(tmp_path / "nocat", tmp_path / "index")
    folder = write_rows(tmp_path / "allbad", [[row(0, id=""), row(1, text_vector=[1.0])]])
    with pytest.raises(IngestRefused, match="no valid rows"):
        ingest(folder, tmp_path / "index")
    unfinished = EmbeddingsSpec(FAKE_PROFILE, dict(ENC.model_ids), dict(ENC.dims), {"complete": False})
    folder = write_rows(tmp_path / "unfinished", [[row(0)]], unfinished)
    with pytest.raises(IngestRefused, match="incomplete: `encode` has not finished"):
        ingest(folder, tmp_path / "index")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "embeddings.json").write_text('{"profile": "fake", "model_ids": {"image": "x"}}')
    with pytest.raises(ShardFormatError, match="missing dims"):
        read_spec(tmp_path / "badjson")
    assert not (tmp_path / "index").exists()


def test_shards_of_build_vectors_ingest_to_the_build_index(fake_profile, tmp_path):
    """The shard format loses nothing: the build's own vectors, written as shards the way
    `encode` writes them, ingest into an index equal to the build's (vectors, products,
    lexical channel, calibration figures)."""
    data = make_dataset(tmp_path / "data", per_category=6, corrupt=1, missing=1)
    build_index(data["folder"], tmp_path / "built", encoder=FakeEncoder(), progress=False, use_cache=False)
    catalog = load_catalog(data["folder"])
    encoded = encode_products(catalog.products, FakeEncoder(), progress=False)
    errors = {i["id"]: i["detail"] for i in encoded.report.issues.get("unreadable_image", [])}
    folder = tmp_path / "emb"
    write_spec(folder, spec())
    for n, start in enumerate(range(0, len(catalog.products), 5)):
        part = slice(start, start + 5)
        table = products_table(
            catalog.products[part],
            {m: v[part] for m, v in encoded.vectors.items()},
            ENC.dims,
            [errors.get(p.id) for p in catalog.products[part]],
        )
        write_shard(folder / f"shard-{n:06d}.parquet", table)
    ingest(folder, tmp_path / "ingested")
    a, b = open_store(tmp_path / "built"), open_store(tmp_path / "ingested")
    assert a.products == b.products
    for m in ("image", "text"):
        np.testing.assert_array_equal(a.vectors_by_row(m)[0], b.vectors_by_row(m)[0])
        np.testing.assert_array_equal(a.vectors_by_row(m)[1], b.vectors_by_row(m)[1])
    assert (a.lexical.matrix != b.lexical.matrix).nnz == 0 and a.lexical.model_id == b.lexical.model_id
    assert a.manifest["categorizer"] == b.manifest["categorizer"]
    assert b.manifest["validation"]["counts"]["unreadable_image"] == len(data["corrupt_ids"])


# ---- CLI --------------------------------------------------------------------------------------
def test_cli_ingest_in_process(fake_profile, tmp_path, capsys):
    folder = write_rows(tmp_path / "emb", [[row(i) for i in range(9)] + [row(50, id="")]])
    summary_json = tmp_path / "summary.json"
    rc = main(["ingest", "--embeddings", str(folder), "--out", str(tmp_path / "index"), "--json", str(summary_json)])
    out = capsys.readouterr().out
    assert rc == 0 and "products: 9" in out and "refused rows: bad_id 1" in out
    assert "bad_id <part-0.parquet row 9>" in out
    assert json.loads(summary_json.read_text())["products"] == 9
    assert main(["info", str(tmp_path / "index")]) == 0 and "products 9" in capsys.readouterr().out


def test_cli_ingest_refusal_exits_2(fake_profile, tmp_path, capsys):
    folder = write_rows(tmp_path / "emb", [[row(0)]], spec(dims={"image": 16, "text": 99}))
    rc = main(["ingest", "--embeddings", str(folder), "--out", str(tmp_path / "index")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "text dims 99 are not 12" in err
    assert not (tmp_path / "index").exists()


def test_lexical_vocabulary_from_a_seeded_sample_past_the_fit_size(fake_profile, tmp_path, monkeypatch):
    import indexer.pipeline.ingest as ingest_module

    rows = [row(i) for i in range(30)]
    rows[4]["name"], rows[4]["description"] = "", ""  # no text: no lexical row
    rows[29]["name"] = "item 29 zanzibar"  # a word only the last product has
    folder = write_rows(tmp_path / "emb", [rows])
    ingest(folder, tmp_path / "full", batch_rows=7)
    full = open_store(tmp_path / "full")
    monkeypatch.setattr(ingest_module, "LEXICAL_FIT_ROWS", 10)
    ingest(folder, tmp_path / "sampled", batch_rows=7)
    sampled = open_store(tmp_path / "sampled")
    assert sampled.manifest["ingest"]["lexical_fit_rows"] == 10 and full.manifest["ingest"]["lexical_fit_rows"] == 29
    assert sampled.lexical.rows.tolist() == full.lexical.rows.tolist() == [r for r in range(30) if r != 4]
    assert sampled.lexical.dim < full.lexical.dim  # the vocabulary of 10 texts, not 29
    known = sampled.lexical.vectorizer.vocabulary_
    # every row is the sampled vocabulary's transform of that product's text
    expected = sampled.lexical.transform([sampled.product_text(sampled.products[r]) for r in sampled.lexical.rows])
    assert abs(sampled.lexical.matrix - expected).max() < 1e-6
    again = ingest_module.TextSample(10)
    again.offer([f"t{i}" for i in range(29)])
    first = ingest_module.TextSample(10)
    first.offer([f"t{i}" for i in range(29)])
    assert again.texts == first.texts and not first.complete  # seeded: the same sample every time
    assert len(set(first.texts)) == 10 and any(int(t[1:]) >= 10 for t in first.texts)  # not just the first ten
    assert "zanzibar" in full.lexical.vectorizer.vocabulary_
    from indexer.store.lexical import LexicalIndex

    assert LexicalIndex.fit(sampled_texts(sampled), np.arange(10)).vectorizer.vocabulary_ == known


def sampled_texts(store: IndexStore) -> list[str]:
    """The texts the vocabulary of `store` was fitted on, rebuilt from the seeded sample."""
    import indexer.pipeline.ingest as ingest_module

    sample = ingest_module.TextSample(store.manifest["ingest"]["lexical_fit_rows"])
    sample.offer([t for t in (store.product_text(p) for p in store.products) if t])
    return sample.texts


def test_a_large_ingest_picks_compact_vectors_and_a_trained_factory_from_the_footers(
    fake_profile, tmp_path, monkeypatch
):
    from indexer.store.local import faiss_search, segments

    monkeypatch.setattr(segments, "COMPACT_ROWS", 50)
    monkeypatch.setattr(faiss_search, "LARGE_BASE_ROWS", 50)
    rows = [row(i) for i in range(64)]
    small = write_rows(tmp_path / "small", [rows[:40]])
    large = write_rows(tmp_path / "large", [rows[:30], rows[30:]])
    ingest(small, tmp_path / "a", batch_rows=8, calibrate_decision=False)
    ingest(large, tmp_path / "b", batch_rows=8, calibrate_decision=False)
    a, b = open_store(tmp_path / "a", checksums=True), open_store(tmp_path / "b", checksums=True)
    assert a.manifest["vector_dtype"] == "float16" and a.manifest["faiss"]["text"]["factory"] == "Flat"
    assert b.manifest["vector_dtype"] == "int8" and "PQ" in b.manifest["faiss"]["text"]["factory"]
    assert b.manifest["faiss"]["text"]["train_rows"] == 64 and b.manifest["search"]["refine"] > 1
    stored, stored_rows = b.vectors_by_row("text")
    expected = np.array([r["text_vector"] for r in rows], np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, expected[stored_rows], atol=0.01)  # int8 with a scale per row
    _, found = b.modalities["text"].search(expected[:5], 1)  # refined by the stored vectors
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_no_calibrate_is_served_as_is_with_every_decision_review(fake_profile, tmp_path, monkeypatch):
    from service.state import categorizer_for

    ingest(write_rows(tmp_path / "emb", [[row(i) for i in range(12)]]), tmp_path / "index", calibrate_decision=False)
    store = open_store(tmp_path / "index")
    assert store.manifest["categorizer"] == {"calibrated": False, "threshold": None, "calibration": None}
    import indexer.categorizer.protocol as calibration

    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: pytest.fail("a service must not calibrate it"))
    categorizer = categorizer_for(store)
    prediction = categorizer.predict_rows(np.array([0]))[0]
    assert prediction.decision == "review" and prediction.category == "Watches"


@pytest.mark.parametrize("where", ["lite", pytest.param("server", marks=pytest.mark.milvus_server)])
def test_ingest_store_streams_shards_straight_into_milvus(fake_profile, tmp_path, request, where):
    """`ingest --store`: the same rows refused, the same products, vectors, lexical channel and
    calibration as an ingest into FAISS of the same shards, and no FAISS index is written."""
    from indexer.store.milvus import MilvusIndexStore, MilvusLocation, drop

    good = [row(i) for i in range(24)]
    good[5]["image_vector"] = None
    bad = [r for rows in BAD.values() for r in rows]
    folder = write_rows(tmp_path / "emb", [good[:10] + bad[:5], bad[5:] + good[10:]])
    if where == "lite":
        location = str(tmp_path / "ingest.db")
    else:
        location = request.getfixturevalue("milvus_server").uri + "/ingested"
    out = tmp_path / "never-written"
    try:
        argv = ["ingest", "--embeddings", str(folder), "--out", str(out), "--store", location, "--batch-rows", "4"]
        assert main(argv) == 0
        assert not out.exists()
        # an existing collection is refused without --replace (the CLI's error exit)
        assert main(["ingest", "--embeddings", str(folder), "--store", location]) != 0
        faiss_summary = ingest(folder, tmp_path / "faiss", batch_rows=4)
        faiss_store = open_store(tmp_path / "faiss", encoder=FakeEncoder())
        milvus = MilvusIndexStore.open(MilvusLocation.parse(location), encoder=FakeEncoder())
        assert [p.id for p in milvus.products] == [p.id for p in faiss_store.products] == [r["id"] for r in good]
        assert faiss_summary.refused == {k: len(v) for k, v in BAD.items()}
        assert milvus.manifest["validation"]["counts"] == faiss_store.manifest["validation"]["counts"]
        assert milvus.manifest["counts"] == {"products": 24, "image": 23, "text": 24}
        for modality in ("image", "text"):
            a, rows_a = milvus.vectors_by_row(modality)
            b, rows_b = faiss_store.vectors_by_row(modality)
            np.testing.assert_array_equal(rows_a, rows_b)
            np.testing.assert_allclose(a, b, atol=1e-3)  # FAISS stores float16, Milvus float32
        assert (abs(milvus.lexical.matrix - faiss_store.lexical.matrix)).max() < 1e-6
        calibrated = milvus.manifest["categorizer"]
        assert calibrated["cv"]["folds"] == faiss_store.manifest["categorizer"]["cv"]["folds"] >= 2
        assert calibrated["weights"] and milvus.manifest["ingest"]["store"] == location
    finally:
        drop(MilvusLocation.parse(location))
