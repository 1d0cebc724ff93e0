"""Calibration and near-duplicate grouping that scale (issue 10, item 6).

- The k-NN-graph grouping finds exactly the pairs, hence the groups, of the N x N matrices
  it replaced: on planted duplicates (including a group larger than the graph's first
  depth, and chains whose ends are not similar) and on the real 945 products.
- The deployment sample is stratified by category, seeded, of the stated size; each seed
  shares a group (hence an inner fold) with its direct near-twins, which are not predicted
  and never vote for it; a seed with more than MAX_TWINS twins is abandoned and replaced;
  the searches stay bounded on a catalogue whose twins chain into one giant component; at
  or below the sample size every row is used (groups over the whole catalogue).
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

from indexer.catalog.products import Product
from indexer.categorizer import protocol as calibration
from indexer.categorizer import vote as knn
from indexer.categorizer.exclusion import FoldExclusion
from indexer.categorizer.vote import Categorizer
from indexer.store import open_store
from indexer.store.lexical import LexicalIndex
from indexer.store.local.index import IndexStore, ModalityIndex, make_faiss_index

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
        if channel not in store.channels():
            continue
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


def exact_twins(store: IndexStore, thresholds: dict[str, float] | None = None) -> list[set[int]]:
    """Per product row, the other rows at or above a threshold in some channel (N x N reference)."""
    twins: list[set[int]] = [set() for _ in store.products]
    for _channel, (a, b) in exact_pairs(store, thresholds or calibration.GROUP_THRESHOLDS).items():
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            twins[x].add(y)
            twins[y].add(x)
    return twins


def per_channel_counts(store: IndexStore) -> np.ndarray:
    """(N,) the most twins a row has in any one channel (N x N reference)."""
    out = np.zeros(len(store.products), np.int64)
    for _channel, (a, b) in exact_pairs(store, calibration.GROUP_THRESHOLDS).items():
        out = np.maximum(out, np.bincount(np.r_[a, b], minlength=len(out)))
    return out


# The closure of the seeds' whole groups (breadth-first over the graph) is gone: on chained
# near-duplicates it reached a giant component. The capped one-hop search replaces it.
@pytest.mark.parametrize("k", [2, calibration.GRAPH_K])
def test_capped_search_finds_the_pairs_below_the_cap_and_flags_the_rows_above(k):
    store = planted_store()
    t = calibration.GROUP_THRESHOLDS["text"]
    ((ea, eb),) = exact_pairs(store, {"text": t}).values()
    count = np.bincount(np.r_[ea, eb], minlength=len(store.products))
    rows = np.arange(len(store.products))
    a, b, over = calibration.capped_neighbours(store, "text", rows, t, k=k, max_twins=10)
    assert set(over.tolist()) == set(np.flatnonzero(count > 10).tolist()) and len(over) >= 40  # the big group
    expected = {(x, y) for x, y in zip(np.r_[ea, eb].tolist(), np.r_[eb, ea].tolist(), strict=True) if count[x] <= 10}
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == expected
    # without a cap: channel_neighbours' pairs, nothing flagged
    a, b, over = calibration.capped_neighbours(store, "text", rows, t, k=k)
    assert len(over) == 0 and len(a) == 2 * len(ea)


def test_graph_grouping_equals_the_exact_one_on_the_real_index(real_index):
    store = open_store(real_index[0])
    th = calibration.GROUP_THRESHOLDS
    expected = exact_pairs(store, th)
    assert_same_pairs(calibration.near_duplicate_pairs(store, th), expected)
    # why GRAPH_K suffices here: no product has that many others above a threshold
    for channel, t in th.items():
        sims, _ = calibration.channel_similarities(store, channel)
        above = (np.asarray(sims, np.float32) >= t).sum(axis=1) - 1
        assert above.max() < calibration.GRAPH_K, channel


# ---- the deployment sample -------------------------------------------------------------------
def test_sample_is_stratified_seeded_sized_and_groups_each_seed_with_its_twins():
    store = planted_store()
    labels = store.labels()
    twins = exact_twins(store)
    sample = calibration.calibration_sample(store, size=120, seed=3)
    again = calibration.calibration_sample(store, size=120, seed=3)
    other = calibration.calibration_sample(store, size=120, seed=4)
    assert np.array_equal(sample.rows, again.rows) and not np.array_equal(sample.rows, other.rows)
    assert np.array_equal(sample.groups, again.groups)
    seeds = sample.rows
    # only the seeds are predicted; no row of the planted store has more than MAX_TWINS twins
    assert len(seeds) == 120 and len(sample.abandoned) == 0
    # each seed shares its group with every direct twin (one hop), and with nothing else
    held = set(seeds.tolist()).union(*(twins[r] for r in seeds))
    for r in seeds:
        assert {int(x) for x in np.flatnonzero(sample.groups == sample.groups[r])} <= held
        assert all(sample.groups[x] == sample.groups[r] for x in twins[r])
    outside = np.setdiff1d(np.arange(len(labels)), sorted(held))
    assert len(np.unique(sample.groups[outside])) == len(outside)
    assert not np.isin(sample.groups[outside], sample.groups[sorted(held)]).any()
    # seeds that share a twin share a group: the seed-twin components, found by the N x N reference
    src = [r for r in seeds for x in twins[r]]
    dst = [x for r in seeds for x in twins[r]]
    n = len(labels)
    _, comp = connected_components(sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), directed=False)
    members = np.array(sorted(held))
    assert same_partition(sample.groups[members], comp[members])
    rec = sample.record
    assert rec["size"] == 120 and rec["seed"] == 3 and rec["labelled"] == len(labels)
    assert rec["tried"] == rec["kept"] == rec["rows"] == 120 and rec["abandoned"] == 0
    assert rec["twins"] == len(held) - 120 > 0 and rec["hops"] == 1 and rec["max_twins"] == calibration.MAX_TWINS
    largest = np.argmax(np.bincount(comp[members]))
    assert rec["largest_group"] == (comp[members] == largest).sum()
    assert rec["largest_group_seeds"] == (comp[seeds] == largest).sum() >= 1
    # stratified: the seeds follow the category shares (within one row of the quota)
    for c in np.unique(labels):
        share = (labels == c).mean() * 120
        assert abs((labels[seeds] == c).sum() - share) <= 1, c


def test_a_seed_with_more_than_max_twins_is_abandoned_and_replaced(monkeypatch):
    monkeypatch.setattr(calibration, "MAX_TWINS", 5)
    store = planted_store()
    labels = store.labels()
    most = per_channel_counts(store)
    sample = calibration.calibration_sample(store, size=300, seed=0)
    rec = sample.record
    assert len(sample.abandoned) == rec["abandoned"] > 5  # the draw met the family of 40 (39 twins each)
    assert (most[sample.abandoned] > 5).all() and (most[sample.rows] <= 5).all()
    assert not np.isin(sample.abandoned, sample.rows).any()
    # replaced: every category still gets its quota, and the record adds up
    quotas = calibration._quotas(np.unique(labels, return_counts=True)[1], 300)
    assert [(labels[sample.rows] == c).sum() for c in np.unique(labels)] == quotas.tolist()
    assert rec["kept"] == len(sample.rows) == 300 and rec["tried"] == 300 + rec["abandoned"] and rec["max_twins"] == 5
    # an abandoned seed's twins are not held out for it (its pairs are dropped)
    kept_family = set(sample.rows.tolist()).union(*(exact_twins(store)[r] for r in sample.rows))
    assert rec["twins"] == len(kept_family) - 300


def chained_store(n: int = 3000, dim: int = 32, step: float = 0.97, seed: int = 0) -> IndexStore:
    """Products on a random walk in the image channel: cos(p_i, p_i+1) = `step` (twins), two
    steps apart ~step^2 (not twins), so the twins chain every product into ONE component;
    random text vectors; two categories at random. What the old closure walked in full."""
    rng = np.random.default_rng(seed)
    image = np.zeros((n, dim), np.float32)
    image[0] = unit_rows(rng.standard_normal((1, dim)))[0]
    for i in range(1, n):
        u = rng.standard_normal(dim)
        u -= (u @ image[i - 1]) * image[i - 1]
        image[i] = step * image[i - 1] + np.sqrt(1 - step**2) * u / np.linalg.norm(u)
    vecs = {"image": unit_rows(image), "text": unit_rows(rng.standard_normal((n, dim)))}
    labels = rng.choice(["A", "B"], n)
    products = [Product(f"p{i}", "", "", None, None, (str(labels[i]),), None) for i in range(n)]
    modalities = {m: ModalityIndex(v, np.arange(n), make_faiss_index(v)) for m, v in vecs.items()}
    return IndexStore(Path("."), "mem", {"profile": "test", "modalities": sorted(vecs)}, products, modalities)


def count_searches(monkeypatch) -> dict[str, int]:
    """Wrap every dense channel's search: rows searched and the deepest search."""
    seen = {"rows": 0, "calls": 0, "depth": 0}
    real = ModalityIndex.search

    def counting(self, queries, k, allowed=None):
        seen["rows"] += len(queries)
        seen["calls"] += 1
        seen["depth"] = max(seen["depth"], k)
        return real(self, queries, k, allowed)

    monkeypatch.setattr(ModalityIndex, "search", counting)
    return seen


@pytest.mark.parametrize("max_twins", [calibration.MAX_TWINS, 1])
def test_the_searches_are_bounded_by_the_sample_on_a_giant_chained_component(monkeypatch, max_twins):
    store = chained_store()
    n = len(store.products)
    groups = calibration.near_duplicate_groups(store)
    assert np.bincount(groups).max() > 0.9 * n  # one giant component: the closure searched all of it
    monkeypatch.setattr(calibration, "MAX_TWINS", max_twins)
    seen = count_searches(monkeypatch)
    size = 40
    sample = calibration.calibration_sample(store, size=size, seed=0)
    rec = sample.record
    channels = 2
    steps = int(np.ceil(np.log2((max_twins + 2) / calibration.GRAPH_K))) + 1 if max_twins + 2 > 32 else 1
    assert rec["tried"] <= calibration.SEED_ATTEMPTS * size
    assert seen["rows"] <= rec["tried"] * channels * steps and seen["depth"] <= max_twins + 2
    if max_twins == 1:  # every product has 2 twins: all abandoned, SEED_ATTEMPTS x quota tried per category
        quotas = calibration._quotas(np.unique(store.labels(), return_counts=True)[1], size)
        assert rec["kept"] == 0 and rec["tried"] == rec["abandoned"] == (calibration.SEED_ATTEMPTS * quotas).sum()
    else:  # nothing abandoned, one search per seed and channel, twins held out, groups small
        assert rec["kept"] == rec["tried"] == size and seen["rows"] == size * channels
        twins = exact_twins(store)
        held = set(sample.rows.tolist()).union(*(twins[r] for r in sample.rows))
        assert rec["twins"] == len(held) - size > 0 and rec["largest_group"] < 10


def twin_store(pairs: int = 60, cousins: int = 3, dim: int = 64, seed: int = 0) -> tuple[IndexStore, np.ndarray]:
    """`pairs` seeds, each with one near-twin (cos ~0.99) LABELLED WITH THE OTHER CATEGORY and
    `cousins` products of its own category at cos ~0.85 (below every threshold). A twin that
    votes outvotes the cousins (vote temperature 0.02) and the seed is predicted wrong."""
    rng = np.random.default_rng(seed)
    rows, labels, seeds = [], [], []

    def at(base: np.ndarray, cos: float) -> np.ndarray:  # a unit vector at exactly `cos` from base
        u = rng.standard_normal(dim)
        u -= (u @ base) * base
        return cos * base + np.sqrt(1 - cos**2) * u / np.linalg.norm(u)

    for i in range(pairs):
        base = unit_rows(rng.standard_normal((1, dim)))[0]
        own, other = ("A", "B") if i % 2 else ("B", "A")
        seeds.append(len(rows))
        rows += [base, at(base, 0.99)] + [at(base, 0.85) for _ in range(cousins)]
        labels += [own, other] + [own] * cousins
    vecs = np.stack(rows).astype(np.float32)
    products = [Product(f"p{i}", "", "", None, None, (lab,), None) for i, lab in enumerate(labels)]
    modalities = {"text": ModalityIndex(vecs, np.arange(len(vecs)), make_faiss_index(vecs))}
    store = IndexStore(Path("."), "mem", {"profile": "test", "modalities": ["text"]}, products, modalities)
    return store, np.array(seeds)


def test_a_twin_that_is_not_predicted_still_never_votes_for_its_seed():
    store, seeds = twin_store()
    n = len(store.products)
    sims = calibration.channel_similarities(store, "text")[0]
    assert (sims[seeds, seeds + 1] > 0.98).all() and (sims[seeds, seeds + 2] < 0.9).all()
    grouped = np.arange(n)
    grouped[seeds + 1] = seeds  # each twin in its seed's group, as calibration_sample gives
    every, grid = np.ones(n, bool), calibration.PARAM_GRID[:1]
    fitted = calibration.fit(store, every, grouped, ("text",), grid, queries=seeds)
    assert len(fitted.inner_correct) == len(seeds) and fitted.inner_correct.all()
    # the same fit with the twins in groups of their own: they vote, and win
    alone = calibration.fit(store, every, np.arange(n), ("text",), grid, queries=seeds)
    assert not alone.inner_correct.any()
    # and calibration_sample does group them so (a twin never votes whichever row is drawn)
    sample = calibration.calibration_sample(store, size=40, seed=0)
    is_seed = set(seeds.tolist())
    twin_of = {r: r + 1 if r in is_seed else r - 1 for r in sample.rows.tolist() if r in is_seed or r - 1 in is_seed}
    assert len(twin_of) > 5 and all(sample.groups[t] == sample.groups[r] for r, t in twin_of.items())


def test_group_folds_give_every_row_its_groups_fold():
    groups = np.array([7, 7, 3, 3, 3, 9, 0])
    rows = np.array([0, 2])  # queries: one row of group 7, one of group 3
    assert calibration.group_folds(groups, rows, np.array([1, 4])).tolist() == [1, 1, 4, 4, 4, -1, -1]
    with pytest.raises(ValueError):
        calibration.group_folds(np.array([0, -1]), np.array([0]), np.array([0]))


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
    # past the size only the 100 drawn seeds are predicted (the old closure predicted their twins too)
    assert entry["cv"]["sample"]["size"] == 100 and seen[-1] == entry["cv"]["sample"]["rows"] == 100
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
