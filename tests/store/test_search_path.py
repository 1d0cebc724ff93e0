"""The per-query search path: lexical top-k over postings equals the dense scan, filters run
inside every channel's search (never another category, still k rows), search-time settings
from the manifest and the environment, category rows and counts kept per store version."""

from __future__ import annotations

import mmap
from pathlib import Path

import faiss
import numpy as np
import pytest
import scipy.sparse as sp
from fakes import make_products, publish_fake, random_vectors

from indexer.catalog.products import Product
from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.encoders.base import l2_normalize
from indexer.store import lexical as lexical_module
from indexer.store import open_store
from indexer.store.filters import PositionFilter, RowFilter, exclusion_filters
from indexer.store.lexical import LexicalIndex
from indexer.store.local import faiss_search
from indexer.store.local.faiss_search import DEFAULT_SEARCH_PARAMS, exact_search, search_params
from indexer.store.local.index import IndexStore, ModalityIndex, append, make_faiss_index

LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORDS = [f"zq{LETTERS[i // 26]}{LETTERS[i % 26]}x" for i in range(120)] + ["mug", "watch", "romper", "laptop", "dohar"]


def random_texts(n: int, seed: int) -> list[str]:
    """Zipf-like word draws, with exact duplicates so that ties occur."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)), p=weights)) for _ in range(n)]
    for i in range(0, n, 17):
        texts[(i + 5) % n] = texts[i]
    return texts


@pytest.fixture(scope="module")
def lexical() -> LexicalIndex:
    return LexicalIndex.fit(random_texts(300, seed=1), np.arange(300) * 2 + 1)  # rows != positions


def lexical_queries(index: LexicalIndex):
    texts = random_texts(40, seed=2) + ["dohar", "zzzunknown", "", "zqepx zzz"]
    return index.transform(texts)


# ---- lexical: postings == dense scan ---------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 50, 299, 300, 1000])
def test_lexical_postings_search_equals_dense_scan(lexical, k):
    queries = lexical_queries(lexical)
    scores, rows = lexical.search(queries, k)
    dense_scores, dense_rows = lexical.search_dense(queries, k)
    np.testing.assert_array_equal(rows, dense_rows)
    np.testing.assert_array_equal(scores, dense_scores)  # the same float32 sums, bit for bit
    assert rows.shape == (queries.shape[0], min(k, lexical.ntotal))


@pytest.mark.parametrize("k", [1, 10, 60])
def test_lexical_filtered_search_equals_masked_dense_scan(lexical, k):
    rng = np.random.default_rng(3)
    positions = np.sort(rng.choice(lexical.ntotal, size=60, replace=False))
    allowed = PositionFilter(positions, lexical.ntotal)
    queries = lexical_queries(lexical)
    scores, rows = lexical.search(queries, k, allowed)
    dense = (queries @ lexical.matrix.T).toarray()
    dense[:, ~allowed.mask()] = -np.inf
    top = np.argsort(-dense, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(rows, lexical.rows[top])
    np.testing.assert_array_equal(scores, np.take_along_axis(dense, top, axis=1))
    assert np.isin(rows, lexical.rows[positions]).all()


@pytest.fixture()
def always_prune(monkeypatch):
    """Pruning on for the small test index: every query bounded, heads of 2 postings (a poor
    first theta, so the bound, not the head, decides what is left out)."""
    monkeypatch.setattr(lexical_module, "PRUNE_FROM_POSTINGS", 0)
    monkeypatch.setattr(lexical_module, "HEAD_POSTINGS", 2)
    monkeypatch.setattr(lexical_module, "ESSENTIAL_SHARE", 1.0)
    monkeypatch.setattr(lexical_module, "RESCORE_LIMIT", 10**9)


@pytest.mark.parametrize("k", [1, 5, 20, 50])
def test_lexical_pruned_search_equals_dense_scan(lexical, always_prune, k):
    """The bounded search returns the dense scan's rows; scores agree to float32 rounding (the
    re-score sums a row's terms in the row's order, the scan in the query's)."""
    queries = lexical_queries(lexical)
    dense_scores, dense_rows = lexical.search_dense(queries, k)
    scores, rows = lexical.search(queries, k)
    np.testing.assert_array_equal(rows, dense_rows)
    np.testing.assert_allclose(scores, dense_scores, rtol=0, atol=1e-6)
    allowed = PositionFilter(np.sort(np.random.default_rng(4).choice(300, 90, replace=False)), 300)
    segmented = split_base_and_deltas(lexical, (200, 260))
    for index in (lexical, segmented):
        got = index.search(queries, k, allowed)
        want = index.search(queries, k, allowed, prune=False)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)


def test_lexical_pruning_reads_fewer_rows_than_the_postings(lexical, always_prune):
    """On queries of several words the bound leaves rows out (else pruning saves nothing), and
    every row it leaves out scores below the k-th best."""
    queries = lexical_queries(lexical)
    pruned_any = False
    for i in range(queries.shape[0]):
        query = queries[i]
        if query.nnz < 3:
            continue
        hits = lexical._base_hits(query)[0]
        found = lexical._pruned_hits(query, 5, None)
        if found is None:
            continue
        kept = set(found[0].tolist())
        pruned_any |= len(kept) < len(hits)
        full = (query @ lexical.matrix.T).toarray().ravel()
        kth = np.sort(full)[-5]
        assert all(full[p] < kth for p in set(hits.tolist()) - kept)
    assert pruned_any


def test_norm_bound_is_the_maximum_over_the_box_and_the_ball():
    """`_norm_bound` is an upper bound of w·x over 0 <= x <= caps, ||x|| <= 1, and a tight one:
    it matches a numerical maximisation (SLSQP) on random cases."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    for _ in range(40):
        m = int(rng.integers(1, 8))
        w, caps = rng.uniform(0.01, 1, m), rng.uniform(0.0, 0.9, m)
        bound = lexical_module._norm_bound(w, caps)
        x = rng.uniform(0, 1, (2000, m)) * caps
        x /= np.maximum(1.0, np.linalg.norm(x, axis=1, keepdims=True))
        assert (x @ w <= bound).all()
        best = minimize(
            lambda v, w=w: -(w @ v),
            caps / 2,
            bounds=[(0, c) for c in caps],
            constraints=[{"type": "ineq", "fun": lambda v: 1 - v @ v}],
            method="SLSQP",
        )
        assert bound == pytest.approx(-best.fun, abs=1e-4)
    assert lexical_module._norm_bound(np.array([]), np.array([])) == 0.0


def test_lexical_postings_are_the_transposed_matrix_in_impact_order(lexical):
    assert lexical.postings.shape == (lexical.dim, lexical.ntotal)
    assert (lexical.postings != lexical.matrix.T.tocsr()).nnz == 0
    p = lexical.postings
    for term in range(lexical.dim):
        weights = p.data[p.indptr[term] : p.indptr[term + 1]]
        assert (np.diff(weights) <= 0).all()  # heaviest first: a cap keeps a term's strongest postings
    grown = lexical.extend(lexical.transform(["mug watch"]), np.array([9999]))
    assert grown.postings is lexical.postings  # an add shares the base's postings: no O(nnz) rebuild
    assert grown.ntotal == lexical.ntotal + 1
    _, rows = grown.search(grown.transform(["mug watch"]), 1)
    assert rows[0, 0] in (9999, *lexical.rows)


def memory_mapped(array: object) -> bool:
    """True when `array` is a view of a file mapping (follows the .base chain)."""
    while array is not None:
        if isinstance(array, np.memmap | mmap.mmap):
            return True
        array = getattr(array, "base", None)
    return False


def split_base_and_deltas(whole: LexicalIndex, cuts: tuple[int, ...]) -> LexicalIndex:
    """The same rows as a base of cuts[0] rows plus one delta per further cut."""
    m, rows = whole.matrix, whole.rows
    base = LexicalIndex(whole.vectorizer, m[: cuts[0]], rows[: cuts[0]])
    bounds = [*cuts, m.shape[0]]
    return base.with_delta([(m[a:b], rows[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)])


@pytest.mark.parametrize("cuts", [(300,), (250,), (200, 260, 299), (0, 100)])
@pytest.mark.parametrize("k", [1, 10, 50, 300])
def test_lexical_base_plus_deltas_equals_one_matrix(lexical, cuts, k):
    segmented = split_base_and_deltas(lexical, cuts)
    queries = lexical_queries(lexical)
    np.testing.assert_array_equal(segmented.rows, lexical.rows)
    for got, want in zip(segmented.search(queries, k), lexical.search(queries, k), strict=True):
        np.testing.assert_array_equal(got, want)
    allowed = PositionFilter(np.sort(np.random.default_rng(5).choice(300, 80, replace=False)), 300)
    for got, want in zip(segmented.search(queries, k, allowed), lexical.search(queries, k, allowed), strict=True):
        np.testing.assert_array_equal(got, want)
    positions = np.array([299, 3, 250, 0, 260])
    np.testing.assert_array_equal(
        segmented.similarity(queries[0], positions), lexical.similarity(queries[0], positions)
    )
    assert (segmented.row_matrix(positions) != lexical.matrix[positions]).nnz == 0


def test_lexical_saved_base_is_memory_mapped_and_searches_the_same(lexical, tmp_path):
    lexical.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    for array in (loaded.base_matrix.data, loaded.base_matrix.indices, loaded.postings.indices, loaded.postings.data):
        assert memory_mapped(array)
    queries = lexical_queries(lexical)
    for got, want in zip(loaded.search(queries, 20), lexical.search(queries, 20), strict=True):
        np.testing.assert_array_equal(got, want)
    grown = lexical.extend(lexical.transform(["mug dohar"]), np.array([7777]))
    grown.save(tmp_path / "merged" if (tmp_path / "merged").mkdir() is None else tmp_path)
    merged = LexicalIndex.load(tmp_path / "merged")
    assert merged.ntotal == lexical.ntotal + 1 and merged.delta_matrix is None
    for got, want in zip(merged.search(queries, 20), grown.search(queries, 20), strict=True):
        np.testing.assert_array_equal(got, want)


def test_lexical_head_sums_equal_the_sparse_product_query_after_query(lexical):
    """The partial scores over each query term's first postings are the sparse product's, bit
    for bit, for every query in turn (the reused sums are cleared between queries)."""
    postings = lexical.postings
    for cap in (3, 40, 10_000):
        for query in lexical_queries(lexical):
            terms = query.indices
            starts = postings.indptr[terms].astype(np.int64)
            ends = np.minimum(postings.indptr[terms + 1].astype(np.int64), starts + cap)
            head = postings.copy()  # the same postings with every term cut at the cap
            cut = np.zeros(postings.shape[0], np.int64)
            cut[terms] = ends - starts
            keep = np.arange(postings.nnz) < np.repeat(postings.indptr[:-1] + cut, np.diff(postings.indptr))
            head.data = np.where(keep, head.data, 0).astype(np.float32)
            want = (query @ head).toarray()[0]
            positions, sums = lexical._head_product(query, starts, ends)
            assert len(np.unique(positions)) == len(positions)
            got = np.zeros(postings.shape[1], np.float32)
            got[positions] = sums
            np.testing.assert_array_equal(got, want)


def test_lexical_postings_cap_keeps_the_heaviest_postings(lexical):
    queries = lexical_queries(lexical)
    exact = lexical.search(queries, 10, cap=0)
    lengths = np.diff(lexical.postings.indptr)
    assert lengths.max() > 20  # common words exceed the cap below
    np.testing.assert_array_equal(lexical.search(queries, 10, cap=int(lengths.max()))[1], exact[1])  # no cut: exact
    capped_scores, _ = lexical.search(queries, 10, cap=5)
    assert (capped_scores <= exact[0] + 1e-6).all()  # partial sums of the same postings never exceed the exact
    one = lexical.transform(["mug"])
    term = one.indices[0]
    heaviest = lexical.postings.indices[lexical.postings.indptr[term] : lexical.postings.indptr[term] + 3]
    _, rows = lexical.search(one, 3, cap=3)
    assert sorted(rows[0]) == sorted(lexical.rows[heaviest])  # a one-word query: the cap is its top postings


# ---- dense channels: filtered search --------------------------------------------------------
def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    return l2_normalize((centres[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32))


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
@pytest.mark.parametrize("size", [3, 40, 700])
@pytest.mark.parametrize("exact_limit", [0, 4096])
def test_filtered_dense_search_returns_only_allowed_rows_and_k(monkeypatch, factory, size, exact_limit):
    monkeypatch.setattr(faiss_search, "EXACT_FILTER_ROWS", exact_limit)  # 0 forces the FAISS selector path
    vectors = clustered(1200, 16, seed=4)
    channel = ModalityIndex(vectors, np.arange(1200) + 100, make_faiss_index(vectors, factory))
    faiss_search.apply_search_params(channel.index, {"nprobe": 1, "efSearch": 4})  # deliberately poor
    positions = np.sort(np.random.default_rng(size).choice(1200, size=size, replace=False))
    queries = clustered(12, 16, seed=5)
    k = 25
    sims, rows = channel.search(queries, k, PositionFilter(positions, 1200))
    assert rows.shape == (12, min(k, size))
    assert (rows >= 0).all(), "a filter returns k rows whenever k exist"
    assert np.isin(rows, positions + 100).all()
    exact_sims, exact_positions = exact_search(vectors, queries, min(k, size), positions)
    if factory == "Flat" or exact_limit:
        np.testing.assert_array_equal(np.sort(rows, axis=1), np.sort(exact_positions + 100, axis=1))
        np.testing.assert_allclose(sims, exact_sims, atol=1e-5)


def test_exact_search_orders_ties_by_position():
    vectors = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]], np.float32)
    sims, positions = exact_search(vectors, np.array([[1.0, 0.0]], np.float32), 3, np.array([1, 2, 3, 4]))
    assert positions.tolist() == [[1, 2, 3]] and sims.tolist() == [[1.0, 1.0, 1.0]]


def test_exclusion_masks_group_by_identical_rows():
    store = memory_store(make_catalogue(12))
    exclude = np.zeros((5, 12), bool)
    exclude[[0, 3], :4] = True
    exclude[[1, 4], 4:] = True
    groups = {tuple(members): f.rows.tolist() for members, f in exclusion_filters(store, exclude)}
    assert groups == {(0, 3): list(range(4, 12)), (1, 4): list(range(4)), (2,): list(range(12))}


# ---- the Categorizer with filters -----------------------------------------------------------
PATHS = [("Watches", "Wrist"), ("Watches", "Wall"), ("Baby Care", "Bedding"), ("Computers", "Laptops")]


def make_catalogue(n: int) -> list[Product]:
    return [
        Product(
            id=f"c{i:04d}",
            name=f"item {i}",
            description=" ".join(random_texts(1, seed=i)),
            brand=None,
            price=None,
            category_path=PATHS[i % len(PATHS)],
            image=None,
        )
        for i in range(n)
    ]


def memory_store(products: list[Product], factory: str = "Flat") -> IndexStore:
    n = len(products)
    image_rows = np.arange(0, n, 3)  # not every product has an image
    image, text = clustered(len(image_rows), 12, seed=6), clustered(n, 10, seed=7)
    modalities = {
        "image": ModalityIndex(image, image_rows, make_faiss_index(image, factory)),
        "text": ModalityIndex(text, np.arange(n), make_faiss_index(text, factory)),
    }
    lexical = LexicalIndex.fit([p.description for p in products], np.arange(n))
    return IndexStore(Path("."), "mem", {"profile": "test"}, products, modalities, lexical)


@pytest.fixture(scope="module")
def store() -> IndexStore:
    return memory_store(make_catalogue(400))


def test_category_index_rows_match_a_scan(store):
    index = store.category_index()
    for path in [("Watches",), ("Watches", "Wall"), ("Computers", "Laptops")]:
        scan = [r for r, p in enumerate(store.products) if p.category_path[: len(path)] == path]
        assert index.rows_of(path).tolist() == scan
        assert index.filter(path).rows.tolist() == scan
    assert index.filter(("Spaceships",)) is None and index.rows_of(("Watches", "Nope")) is None
    assert index.filter(("Watches",)) is index.filter(["Watches"])  # cached per version
    assert store.category_index() is index


@pytest.mark.parametrize("path", [("Watches",), ("Watches", "Wall"), ("Baby Care",)])
def test_neighbors_with_a_category_filter_stay_inside_and_return_k(store, path):
    categorizer = Categorizer(store)
    row_filter = store.category_index().filter(path)
    queries = stored_queries(store, [0, 1, 5, 398])
    k = 30
    for hits in categorizer.neighbors(queries, k=k, allowed=row_filter):
        assert len(hits) == k
        assert all(tuple(store.products[h.row].category_path[: len(path)]) == path for h in hits)
    similar = categorizer.neighbors(stored_queries(store, [1]), k=k, allowed=row_filter.without([1]))[0]
    assert 1 not in {h.row for h in similar} and len(similar) == k


def test_filtered_neighbors_equal_the_exact_fused_ranking(store):
    """With every row a candidate the fused ranking is exact: the filtered search must match a
    brute-force ranking of the allowed rows by the same fused similarity."""
    n = len(store.products)
    categorizer = Categorizer(store, {"candidates": n})
    allowed = store.category_index().filter(("Baby Care",))
    queries = stored_queries(store, [2, 7])
    present = categorizer._present(queries)
    for i, hits in enumerate(categorizer.neighbors(queries, k=10, allowed=allowed)):
        fused, _ = categorizer._fused_similarity(present, i, allowed.rows)
        order = np.argsort(-fused, kind="stable")[:10]
        assert [h.row for h in hits] == allowed.rows[order].tolist()


def test_exclusion_mask_never_returns_excluded_rows(store):
    categorizer = Categorizer(store)
    rows = np.arange(0, 400, 40)
    exclude = np.zeros((len(rows), 400), bool)
    exclude[:, :300] = True  # a fold-like mask shared by every query
    exclude[np.arange(len(rows)), rows] = True
    candidates = categorizer._candidates(categorizer._present(stored_queries(store, rows)), 10, exclude)
    for i, found in enumerate(candidates):
        assert len(found) >= 10 and not exclude[i, found].any()


# ---- search-time settings -------------------------------------------------------------------
def test_search_params_are_stored_and_applied(tmp_path, monkeypatch):
    monkeypatch.delenv("FAISS_NPROBE", raising=False)
    monkeypatch.delenv("FAISS_EF_SEARCH", raising=False)
    publish_fake(tmp_path / "ivf", n=60, factory="IVF4,Flat")
    publish_fake(tmp_path / "hnsw", n=60, factory="HNSW16")
    ivf, hnsw = open_store(tmp_path / "ivf"), open_store(tmp_path / "hnsw")
    assert ivf.manifest["search"] == DEFAULT_SEARCH_PARAMS
    assert faiss.extract_index_ivf(ivf.modalities["text"].index).nprobe == DEFAULT_SEARCH_PARAMS["nprobe"]
    assert faiss.downcast_index(hnsw.modalities["text"].index).hnsw.efSearch == DEFAULT_SEARCH_PARAMS["efSearch"]
    monkeypatch.setenv("FAISS_NPROBE", "3")
    monkeypatch.setenv("FAISS_EF_SEARCH", "77")
    assert faiss.extract_index_ivf(open_store(tmp_path / "ivf").modalities["image"].index).nprobe == 3
    assert faiss.downcast_index(open_store(tmp_path / "hnsw").modalities["image"].index).hnsw.efSearch == 77


def test_search_params_from_the_manifest_and_bad_overrides():
    assert search_params({"search": {"nprobe": 5, "efSearch": 40}}, {}) == {"nprobe": 5, "efSearch": 40, "refine": 1}
    assert search_params({"search": {"refine": 4}}, {"FAISS_REFINE": "6"})["refine"] == 6
    assert search_params({}, {}) == DEFAULT_SEARCH_PARAMS  # an index built before the key existed
    assert search_params({"search": {"nprobe": 5}}, {"FAISS_NPROBE": " 9 "})["nprobe"] == 9
    for bad in ("abc", "0", "-3", "1.5"):
        with pytest.raises(ValueError, match="FAISS_NPROBE"):
            search_params({}, {"FAISS_NPROBE": bad})


def test_a_filtered_search_keeps_the_index_search_settings(monkeypatch):
    """A SearchParameters object replaces nprobe with FAISS's default (1) unless copied."""
    vectors = clustered(3000, 16, seed=8)
    index = make_faiss_index(vectors, "IVF32,Flat")
    faiss_search.apply_search_params(index, {"nprobe": 32, "efSearch": 16})  # every list: exact
    channel = ModalityIndex(vectors, np.arange(3000), index)
    monkeypatch.setattr(faiss_search, "EXACT_FILTER_ROWS", 0)
    positions = np.arange(0, 3000, 2)
    queries = clustered(20, 16, seed=9)
    _, rows = channel.search(queries, 10, PositionFilter(positions, 3000))
    _, exact = exact_search(vectors, queries, 10, positions)
    np.testing.assert_array_equal(np.sort(rows, axis=1), np.sort(exact, axis=1))


# ---- category counts kept per store version -------------------------------------------------
def test_category_counts_follow_an_add(tmp_path):
    products, _ = publish_fake(tmp_path, n=30)
    store = open_store(tmp_path)
    before = {c["name"]: c["count"] for c in store.category_index().counts()}
    assert before == {"Baby Care": 10, "Computers": 10, "Watches": 10}
    added = make_products(4, prefix="n")
    added[0] = Product(**{**added[0].__dict__, "category_path": ("Garden", "Tools")})
    grown = append(store, added, {"text": random_vectors(4, 12, seed=3)})
    counts = {c["name"]: c for c in grown.category_index().counts()}
    assert {n: c["count"] for n, c in counts.items()} == {"Baby Care": 11, "Computers": 11, "Garden": 1, "Watches": 11}
    assert counts["Garden"]["subcategories"] == [{"name": "Tools", "count": 1}]
    assert grown.category_index().filter(("Garden",)).rows.tolist() == [30]
    assert {c["name"]: c["count"] for c in store.category_index().counts()} == before  # old version unchanged


def test_row_filter_without_shares_cached_views(store):
    base = store.category_index().filter(("Watches",))
    positions = base.channel("text")
    narrowed = base.without([0, 4])
    assert narrowed.channel("text") is positions and base.skip.size == 0
    assert narrowed.drop_skipped(np.array([0, 1, 4, 8])).tolist() == [1, 8]
    assert len(RowFilter(store, None)) == len(store.products)


# ---- through the API ------------------------------------------------------------------------
@pytest.mark.integration
def test_api_categories_and_filtered_similar_after_an_add(service_index, embedded_encoder, tmp_path):
    from service_support import copy_index

    from service.app import create_app
    from service.config import Config

    index_dir = copy_index(service_index, tmp_path / "index")
    client = create_app(Config(index_dir=str(index_dir), api_token="t"), encoder=embedded_encoder).test_client()
    before = {c["name"]: c for c in client.get("/api/v1/categories").get_json()["categories"]}
    response = client.post(
        "/api/v1/products",
        headers={"Authorization": "Bearer t"},
        json={"title": "Handmade brass diya", "category": "Home Decor & Festive Needs >> Brass Diyas Test"},
    )
    assert response.status_code == 201
    body = client.get("/api/v1/categories").get_json()
    after = {c["name"]: c for c in body["categories"]}
    assert after["Home Decor & Festive Needs"]["count"] == before["Home Decor & Festive Needs"]["count"] + 1
    assert {"name": "Brass Diyas Test", "count": 1} in after["Home Decor & Festive Needs"]["subcategories"]
    assert body["total"] == sum(c["count"] for c in before.values()) + 1
    new_id = response.get_json()["id"]
    similar = client.get(f"/api/v1/products/{new_id}/similar?k=6&category=Home Decor %26 Festive Needs").get_json()
    results = similar["results"]
    assert len(results) == 6 and new_id not in {r["id"] for r in results}
    assert all(r["category"] == "Home Decor & Festive Needs" for r in results)
    sub = "Home Decor %26 Festive Needs >> Brass Diyas Test"
    only = client.get(f"/api/v1/products/{new_id}/similar?k=6&category={sub}")
    assert only.get_json()["results"] == []  # the one product of that category is the query itself


# ---- lexical: products without O(vocabulary) work, and the capped search --------------------
def test_row_dots_are_the_sparse_products_floats(lexical):
    """`_row_dots` (the re-scoring and `similarity`) sums like scipy's product, bit for bit, on
    rows with and without the query's terms, empty rows and an empty query; its terms found by
    the reused slots (cleared query after query) or by binary search alike."""
    queries = lexical_queries(lexical)
    positions = np.array([0, 5, 5, 17, 299, 42])
    rows = lexical.base_matrix[positions]
    slots = lexical_module.TermSlots()  # one array for every query below, as a search reuses it
    for i in range(queries.shape[0]):
        query = queries[i]
        want = np.asarray((rows @ query.T).todense()).ravel().astype(np.float32)
        np.testing.assert_array_equal(lexical_module._row_dots(rows, query), want)
        np.testing.assert_array_equal(lexical_module._row_dots(rows, query, slots), want)
        np.testing.assert_array_equal(lexical.similarity(query, positions), want)
    assert len(slots._free) == 1 and not slots._free[0][0].any()  # one array, cleared
    empty = lexical.transform(["zzzunknown"])
    assert empty.nnz == 0 and not lexical_module._row_dots(rows, empty).any()
    query = queries[0]  # a stored or coverage-scaled row may keep its terms in any order
    shuffled = sp.csr_matrix((query.data[::-1], query.indices[::-1], query.indptr), shape=query.shape)
    assert not shuffled.has_sorted_indices
    want = np.asarray((rows @ query.T).todense()).ravel().astype(np.float32)
    np.testing.assert_array_equal(lexical_module._row_dots(rows, shuffled), want)  # summed in each row's order
    np.testing.assert_array_equal(lexical_module._row_dots(rows, shuffled, slots), want)


def test_row_dots_binary_search_past_the_slots_limit(lexical, monkeypatch):
    """A query with more terms than the int16 slots hold is binary-searched: same floats."""
    queries = lexical_queries(lexical)
    rows = lexical.base_matrix[np.arange(0, 300, 7)]
    looked_up, lookup = [], lexical_module.TermSlots.lookup
    monkeypatch.setattr(lexical_module.TermSlots, "LIMIT", 1)
    monkeypatch.setattr(
        lexical_module.TermSlots, "lookup", lambda self, *args: looked_up.append(len(args[1])) or lookup(self, *args)
    )
    for i in range(queries.shape[0]):
        want = np.asarray((rows @ queries[i].T).todense()).ravel().astype(np.float32)
        np.testing.assert_array_equal(lexical.similarity(queries[i], np.arange(0, 300, 7)), want)
    assert max(np.diff(queries.indptr)) > 1 and all(n <= 1 for n in looked_up)  # the longer ones searched


def test_capped_search_rescores_its_pool_exactly(lexical, monkeypatch):
    """With a cap, the pool's scores are exact (not partial sums), the rows respect a filter,
    and a pool as large as the catalogue gives the exact search's rows."""
    queries = lexical_queries(lexical)
    lengths = np.diff(lexical.postings.indptr)
    cap = 5
    assert lengths.max() > cap
    scores, rows = lexical.search(queries, 10, cap=cap)
    position = {int(r): p for p, r in enumerate(lexical.rows)}
    for i in range(queries.shape[0]):
        got = rows[i][scores[i] > 0]
        exact = lexical.similarity(queries[i], np.array([position[int(r)] for r in got], dtype=np.int64))
        np.testing.assert_array_equal(scores[i][scores[i] > 0], exact)
    monkeypatch.setattr(lexical_module, "CAP_RESCORE", 1)  # the pool is k: fewer good rows
    small = lexical.search(queries, 10, cap=1)
    monkeypatch.setattr(lexical_module, "CAP_RESCORE", lexical.ntotal)
    np.testing.assert_array_equal(lexical.search(queries, 10, cap=10**6)[1], lexical.search(queries, 10, cap=0)[1])
    assert (small[0].sum(axis=1) <= lexical.search(queries, 10, cap=0)[0].sum(axis=1) + 1e-6).all()
    allowed = PositionFilter(np.arange(0, 300, 3), 300)
    _, filtered = lexical.search(queries, 10, allowed, cap=cap)
    assert set(filtered.ravel().tolist()) <= set(lexical.rows[allowed.positions].tolist())


def test_a_large_base_is_published_with_a_postings_cap(monkeypatch, tmp_path):
    monkeypatch.delenv(lexical_module.POSTINGS_CAP_ENV, raising=False)
    monkeypatch.setattr(lexical_module, "CAP_FROM_ROWS", 100)
    assert lexical_module.default_cap(99) == 0 and lexical_module.default_cap(100) == lexical_module.LARGE_BASE_CAP
    from fakes import FakeEncoder, fake_manifest

    from indexer.store.local.index import publish, write_lock

    products = make_products(30, "c")
    vectors = {"text": (random_vectors(30, FakeEncoder().dims["text"], 0), np.arange(30))}

    def published(folder: Path) -> IndexStore:
        lexical = LexicalIndex.fit([p.name for p in products], np.arange(30))
        with write_lock(folder):
            publish(folder, products, vectors, fake_manifest(FakeEncoder()), lexical=lexical)
        return open_store(folder)

    assert published(tmp_path / "small").lexical.cap == 0
    monkeypatch.setattr(lexical_module, "CAP_FROM_ROWS", 30)
    store = published(tmp_path / "large")
    assert store.manifest["lexical"]["cap"] == store.lexical.cap == lexical_module.LARGE_BASE_CAP
    monkeypatch.setenv(lexical_module.POSTINGS_CAP_ENV, "0")
    assert lexical_module.postings_cap(lexical_module.default_cap(100)) == 0  # the environment still decides
