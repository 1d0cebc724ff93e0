"""Calibration and near-duplicate grouping that scale (issue 10, item 6).

- The k-NN-graph grouping finds exactly the pairs, hence the groups, of the N x N matrices
  it replaced: on planted duplicates (including a group larger than the graph's first
  depth, and chains whose ends are not similar) and on the real 945 products.
- The deployment sample is stratified by category, seeded, of the stated size, and keeps
  near-duplicate groups whole; at or below that size every row is used.
- Cross-validation exclusion without (n, N) masks gives the predictions the masks gave,
  and grouping / fitting at moderate N stays far below what an N x N array would take.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from indexer import calibration, knn
from indexer.catalog import Product
from indexer.exclusion import FoldExclusion
from indexer.knn import Categorizer
from indexer.lexical import LexicalIndex
from indexer.store import IndexStore, ModalityIndex, make_faiss_index

WORDS = ["".join(np.random.default_rng(i).choice(list("bcdfghklmnprstvz"), 3)) + "ao" for i in range(400)]


def unit_rows(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def planted_store(n: int = 600, dim: int = 64, seed: int = 0, big_group: int = 40) -> IndexStore:
    """Random products (cosines far below every threshold) with planted near-duplicates:
    groups of 2-5 jittered copies, one group of `big_group` (more than GRAPH_K), chains
    a ~ b ~ c with a, c below the threshold, twins by text only, and missing images."""
    rng = np.random.default_rng(seed)
    text = unit_rows(rng.standard_normal((n, dim)))
    image = unit_rows(rng.standard_normal((n, dim)))
    words = [list(rng.choice(WORDS, 8, replace=False)) for _ in range(n)]
    labels = rng.choice(["A", "B", "C", "D"], n)
    at = 0
    for size in rng.integers(2, 6, 30):  # jittered copies in both dense channels
        base = at
        for j in range(1, size):
            text[base + j] = unit_rows(text[base : base + 1] + 0.02 * rng.standard_normal((1, dim)))[0]
            image[base + j] = unit_rows(image[base : base + 1] + 0.02 * rng.standard_normal((1, dim)))[0]
            labels[base + j] = labels[base]
        at += size
    for j in range(1, big_group):  # one group larger than the first search depth
        text[at + j] = unit_rows(text[at : at + 1] + 0.01 * rng.standard_normal((1, dim)))[0]
    at += big_group
    for _ in range(10):  # chains: cos(a, b) = cos(b, c) = 0.93 > 0.90 > cos(a, c) = 0.865
        a, b, c = at, at + 1, at + 2
        u, v = rng.standard_normal((2, dim))
        u -= (u @ text[a]) * text[a]
        u /= np.linalg.norm(u)
        text[b] = 0.93 * text[a] + np.sqrt(1 - 0.93**2) * u
        v -= (v @ text[a]) * text[a] + (v @ u) * u
        v /= np.linalg.norm(v)
        text[c] = 0.93 * text[b] + np.sqrt(1 - 0.93**2) * v
        at += 3
    for _ in range(20):  # lexical twins: the same words plus one
        words[at + 1] = words[at] + [str(rng.choice(WORDS))]
        at += 2
    assert at < n - 50
    image[rng.choice(n, 25, replace=False)] = np.nan
    texts = [" ".join(w) for w in words]
    products = [Product(f"p{i}", texts[i], "", None, None, (str(labels[i]), "sub"), None) for i in range(n)]
    modalities = {}
    for name, matrix in (("text", text), ("image", image)):
        present = ~np.isnan(matrix).any(axis=1)
        vecs = np.ascontiguousarray(matrix[present])
        modalities[name] = ModalityIndex(vecs, np.flatnonzero(present), make_faiss_index(vecs))
    manifest = {"profile": "test", "modalities": ["image", "text"], "text_normalisation": {"strip_boilerplate": False}}
    lexical = LexicalIndex.fit(texts, np.arange(n))
    return IndexStore(Path("."), "mem", manifest, products, modalities, lexical)


def exact_pairs(store: IndexStore, thresholds: dict[str, float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The replaced implementation: the N x N cosine matrix of each channel, thresholded."""
    out = {}
    for channel, t in thresholds.items():
        sims, rows = calibration.channel_similarities(store, channel)
        i, j = np.nonzero(np.triu(sims >= t, k=1))
        out[channel] = (rows[i], rows[j])
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    joint = len(np.unique(np.stack([a, b], axis=1), axis=0))
    return joint == len(np.unique(a)) == len(np.unique(b))


def assert_same_pairs(found: dict, expected: dict) -> None:
    assert set(found) == set(expected)
    for channel, (a, b) in expected.items():
        got = set(zip(*(x.tolist() for x in found[channel]), strict=True))
        assert got == set(zip(a.tolist(), b.tolist(), strict=True)), channel


# ---- grouping from the k-NN graph ------------------------------------------------------------
@pytest.mark.parametrize("k", [2, calibration.GRAPH_K])
def test_graph_pairs_and_groups_equal_the_exact_ones(k):
    store = planted_store()
    th = calibration.GROUP_THRESHOLDS
    expected = exact_pairs(store, th)
    assert len(expected["text"][0]) > 40 * 39 / 2 and len(expected["lexical"][0]) >= 20  # the plants are there
    found = calibration.near_duplicate_pairs(store, th, k=k)
    assert_same_pairs(found, expected)
    groups = calibration.near_duplicate_groups(store, th, k=k)
    n = len(store.products)
    src = np.concatenate([a for a, _ in expected.values()])
    dst = np.concatenate([b for _, b in expected.values()])
    _, reference = connected_components(sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), directed=False)
    assert same_partition(groups, reference)
    assert np.bincount(groups).max() >= 40  # the big group is whole, beyond the first depth


def test_a_chain_is_one_group_though_its_ends_are_not_similar():
    store = planted_store()
    text = store.modalities["text"]
    groups = calibration.near_duplicate_groups(store, {"text": 0.90})
    sims = calibration.channel_similarities(store, "text")[0]
    n = len(store.products)
    chains = [
        (a, a + 1, a + 2) for a in range(n - 2) if sims[a, a + 2] < 0.9 <= min(sims[a, a + 1], sims[a + 1, a + 2])
    ]
    assert len(chains) == 10 and text.rows[0] == 0
    assert all(groups[a] == groups[b] == groups[c] for a, b, c in chains)


def test_closure_gives_the_whole_groups_of_its_seeds():
    store = planted_store()
    groups = calibration.near_duplicate_groups(store)
    seeds = np.array([0, 3, 150, 500])
    rows, local = calibration.near_duplicate_closure(store, seeds, k=2)
    assert set(rows.tolist()) == set(np.flatnonzero(np.isin(groups, groups[seeds])).tolist())
    assert same_partition(local, groups[rows])


def test_graph_grouping_equals_the_exact_one_on_the_real_index(real_index):
    store = IndexStore.load(real_index[0])
    th = calibration.GROUP_THRESHOLDS
    expected = exact_pairs(store, th)
    assert_same_pairs(calibration.near_duplicate_pairs(store, th), expected)
    # why GRAPH_K suffices here: no product has that many others above a threshold
    for channel, t in th.items():
        sims, _ = calibration.channel_similarities(store, channel)
        above = (np.asarray(sims, np.float32) >= t).sum(axis=1) - 1
        assert above.max() < calibration.GRAPH_K, channel


# ---- the deployment sample -------------------------------------------------------------------
def test_sample_is_stratified_seeded_sized_and_keeps_groups_whole():
    store = planted_store()
    labels = store.labels()
    groups = calibration.near_duplicate_groups(store)
    sample = calibration.calibration_sample(store, size=120, seed=3)
    again = calibration.calibration_sample(store, size=120, seed=3)
    other = calibration.calibration_sample(store, size=120, seed=4)
    assert np.array_equal(sample.rows, again.rows) and not np.array_equal(sample.rows, other.rows)
    rec = sample.record
    assert rec["size"] == 120 and rec["seed"] == 3 and rec["drawn"] == 120 and rec["labelled"] == len(labels)
    assert rec["rows"] == len(sample.rows) > 120  # twins of the drawn rows come along
    # whole groups: every member of a sampled row's group is sampled, and grouped together
    assert set(sample.rows.tolist()) == set(np.flatnonzero(np.isin(groups, groups[sample.rows])).tolist())
    assert same_partition(sample.groups[sample.rows], groups[sample.rows])
    outside = np.setdiff1d(np.arange(len(labels)), sample.rows)
    assert len(np.unique(sample.groups[outside])) == len(outside)
    # stratified: the drawn rows follow the category shares (within one row of the quota)
    drawn = calibration.calibration_sample(store, size=120, seed=3, thresholds={})
    assert len(drawn.rows) == 120
    for c in np.unique(labels):
        share = (labels == c).mean() * 120
        assert abs((labels[drawn.rows] == c).sum() - share) <= 1, c


def test_quotas_sum_to_the_size():
    quotas = calibration._quotas(np.array([500, 300, 199, 1]), 100)
    assert quotas.sum() == 100 and quotas.tolist() == [50, 30, 20, 0]
    assert calibration._quotas(np.array([3, 1]), 4).tolist() == [3, 1]


def test_small_catalogue_uses_every_row_and_large_one_the_sample(monkeypatch):
    store = planted_store()
    full = calibration.calibration_sample(store, size=len(store.products))
    assert np.array_equal(full.rows, np.arange(len(store.products)))
    assert same_partition(full.groups, calibration.near_duplicate_groups(store))
    seen = []
    real_fit = calibration.fit

    def spy(*args, **kwargs):
        fitted = real_fit(*args, **kwargs)
        seen.append(len(fitted.inner_confidence))
        return fitted

    monkeypatch.setattr(calibration, "fit", spy)
    grid = calibration.PARAM_GRID[:1]
    entry = calibration.calibrate(store, params=grid[0], size=100)
    assert entry["cv"]["sample"]["size"] == 100 and seen[-1] == entry["cv"]["sample"]["rows"] < len(store.products)
    entry = calibration.calibrate(store, params=grid[0], size=10_000)
    assert seen[-1] == len(store.products) and entry["cv"]["sample"]["rows"] == len(store.products)


def test_sample_size_from_the_environment():
    assert calibration.sample_size({}) == calibration.CALIBRATION_SAMPLE
    assert calibration.sample_size({"CALIBRATION_SAMPLE": "2500"}) == 2500
    for bad in ("0", "-3", "many", "1e4"):
        with pytest.raises(ValueError, match="CALIBRATION_SAMPLE"):
            calibration.sample_size({"CALIBRATION_SAMPLE": bad})
    with pytest.raises(ValueError, match="positive"):
        calibration.calibration_sample(planted_store(n=300, big_group=10), size=0)


# ---- exclusion without (n, N) masks ------------------------------------------------------------
@pytest.mark.parametrize("route", ["matrix", "search"])
def test_fold_exclusion_predicts_what_the_dense_mask_predicted(monkeypatch, route):
    if route == "search":  # no batch similarity matrix: filters inside each channel's search
        monkeypatch.setattr(knn, "SIMILARITY_BUDGET", 0)
    store = planted_store(n=300, big_group=10)
    n = len(store.products)
    folds = np.random.default_rng(1).integers(0, 4, n)
    train = np.random.default_rng(2).random(n) > 0.2
    rows = np.flatnonzero(train)
    dense = (folds[None, :] == folds[rows][:, None]) | ~train[None, :]
    compact = FoldExclusion(query_fold=folds[rows], row_fold=folds, allowed=train)
    assert np.array_equal(compact.block(np.arange(len(rows)), np.arange(n)), dense)
    categorizer = Categorizer(store)
    old = categorizer.predict_rows(rows, exclude=dense)
    new = categorizer.predict_rows(rows, exclude=compact)
    assert [(p.category, p.raw_confidence) for p in old] == [(p.category, p.raw_confidence) for p in new]
    free = categorizer.predict_rows(rows)  # the exclusion does change predictions
    assert [p.raw_confidence for p in free] != [p.raw_confidence for p in new]


def test_fold_exclusion_needs_a_rule():
    with pytest.raises(ValueError):
        FoldExclusion(query_fold=np.zeros(3, np.int64))
    with pytest.raises(ValueError):
        FoldExclusion(query_fold=np.zeros(3, np.int64), row_fold=np.zeros(4, np.int64), allowed=np.ones(5, bool))


def large_store(n: int, dim: int = 48, seed: int = 0) -> IndexStore:
    """n products, two channels of random vectors plus 100 planted pairs; no lexical channel."""
    rng = np.random.default_rng(seed)
    vecs = {m: unit_rows(rng.standard_normal((n, dim))) for m in ("image", "text")}
    for m in vecs:
        vecs[m][1:200:2] = unit_rows(vecs[m][0:200:2] + 0.01 * rng.standard_normal((100, dim)))
    labels = rng.choice(["A", "B", "C"], n)
    labels[1:200:2] = labels[0:200:2]
    products = [Product(f"p{i}", "", "", None, None, (str(labels[i]),), None) for i in range(n)]
    modalities = {m: ModalityIndex(v, np.arange(n), make_faiss_index(v)) for m, v in vecs.items()}
    return IndexStore(Path("."), "mem", {"profile": "test", "modalities": sorted(vecs)}, products, modalities)


def peak_bytes(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_grouping_and_fitting_allocate_nothing_of_n_by_n(monkeypatch):
    n = 6000  # an N x N bool array is 36 MB, float32 144 MB
    monkeypatch.setattr(knn, "SIMILARITY_BUDGET", 250_000)  # batch matrices of 1 MB: chunks of 41 queries
    store = large_store(n)
    groups, peak = peak_bytes(lambda: calibration.near_duplicate_groups(store))
    assert np.bincount(groups).max() == 2 and len(np.unique(groups)) == n - 100
    assert peak < 8_000_000, peak
    # every row predicted, n x N = 36M entries: in chunks that fit SIMILARITY_BUDGET (Flat indexes)
    train = np.ones(n, bool)
    fitted, peak = peak_bytes(lambda: calibration.fit(store, train, groups, ("text",), calibration.PARAM_GRID[:1]))
    assert len(fitted.inner_confidence) == n
    assert peak < 16_000_000, peak  # the (n, N) bool mask alone would be 36 MB
