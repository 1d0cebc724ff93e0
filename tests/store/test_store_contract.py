"""One contract for every store backend (FAISS on local disk, Milvus Lite, a Milvus server), in
the manner of scikit-learn's common estimator checks: each test runs once per backend on the
same small index, and the real 945-product nested figures must be identical through either store.

The Milvus server is the `milvus` package's standalone binary, started once per session by the
`milvus_server` fixture (tests/conftest.py) when the first server case runs; each test copies the
small index into a collection once per module (a copy costs seconds on the server: the
collections' creation, flush and load) for the tests that only read, and into a fresh one for each test
marked `fresh_copy` (a write that succeeds), dropped afterwards."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, fake_manifest, make_products, random_vectors

from indexer.catalog.products import Product
from indexer.catalog.text import encoder_text
from indexer.categorizer.vote import Categorizer, stored_queries
from indexer.store import (
    DuplicateProduct,
    IndexMismatch,
    IndexStore,
    IndexStoreError,
    append,
    delete,
    open_store,
    relabel,
)
from indexer.store.filters import RowFilter
from indexer.store.lexical import LexicalIndex
from indexer.store.local.index import publish
from indexer.store.locks import write_lock

pytest.importorskip("pymilvus")
from indexer.store import factory as backends  # noqa: E402 - after the skip: pymilvus is optional for a reader
from indexer.store.milvus import (  # noqa: E402
    DEFAULT_BOUND_DEPTH,
    RECENT_QUERIES,
    MilvusIndexStore,
    MilvusLocation,
    bound_depth,
    client_for,
    copy_to_milvus,
    drop,
)

BACKENDS = ("faiss", "milvus-lite", pytest.param("milvus-server", marks=pytest.mark.milvus_server))
N = 40


def publish_small(path: Path, encoder: FakeEncoder) -> None:
    """N products in 3 categories, text for all, images for every other one, a lexical channel."""
    products = make_products(N)
    rng = np.random.default_rng(3)
    centres = {c: rng.standard_normal(encoder.dims["text"]) * 3 for c in ("Watches", "Baby Care", "Computers")}
    text = np.stack([centres[p.category] for p in products]) + random_vectors(N, encoder.dims["text"], seed=1, scale=1)
    image_rows = np.arange(0, N, 2)
    vectors = {
        "image": (random_vectors(len(image_rows), encoder.dims["image"], seed=2), image_rows),
        "text": (text.astype(np.float32), np.arange(N)),
    }
    texts = [encoder_text(p.name, p.description) for p in products]
    lexical = LexicalIndex.fit(texts, np.arange(N))
    with write_lock(path):
        publish(path, products, vectors, fake_manifest(encoder), lexical=lexical)


@pytest.fixture(scope="module")
def milvus_db(tmp_path_factory) -> Path:
    """One Milvus Lite database per module (opening one costs about a second); a collection per test."""
    return tmp_path_factory.mktemp("milvus") / "contract.db"


def collection_name(request) -> str:
    """A collection per test (letters, digits and _ only, as Milvus wants)."""
    return f"t{abs(hash(request.node.name)) % 10**9}"


@pytest.fixture(scope="module")
def shared_copies(tmp_path_factory, milvus_db):
    """backend -> the small index copied once for the module's read-only tests."""
    copies: dict[str, MilvusLocation] = {}
    yield copies
    for loc in copies.values():
        drop(loc)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path, milvus_db, shared_copies):
    encoder = FakeEncoder()
    publish_small(tmp_path / "faiss", encoder)
    faiss_store = open_store(tmp_path / "faiss")
    if request.param == "faiss":
        yield faiss_store
        return
    fresh = request.node.get_closest_marker("fresh_copy") is not None
    name = collection_name(request) if fresh else f"shared_{request.param.replace('-', '_')}"
    if request.param == "milvus-lite":
        loc = MilvusLocation(str(milvus_db.resolve()), name)
    else:
        loc = MilvusLocation.parse(request.getfixturevalue("milvus_server").uri, name)
    if fresh or request.param not in shared_copies:
        copy_to_milvus(faiss_store, loc, replace=True)
        if not fresh:
            shared_copies[request.param] = loc
    yield MilvusIndexStore.open(loc, local=tmp_path / "local")  # the test's own folder: its audit trail
    if fresh:
        drop(loc)


def reload(store: IndexStore) -> IndexStore:
    if isinstance(store, MilvusIndexStore):
        return MilvusIndexStore.open(store.location, local=store.path)
    return open_store(store.path)


def exact(store: IndexStore, modality: str, queries: np.ndarray, k: int, positions=None):
    vectors = np.asarray(store.modalities[modality].vectors, np.float32)
    pool = np.arange(len(vectors)) if positions is None else positions
    sims = queries @ vectors[pool].T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, top, axis=1), store.modalities[modality].rows[pool[top]]


# ---- reading -----------------------------------------------------------------------------
def test_products_channels_and_manifest(store):
    assert [p.id for p in store.products] == [p.id for p in make_products(N)]
    assert store.categories() == ["Baby Care", "Computers", "Watches"]
    assert set(store.channels()) == {"image", "text", "lexical"}
    assert store.modalities["image"].ntotal == N // 2 and store.modalities["text"].ntotal == N
    np.testing.assert_array_equal(store.modalities["image"].rows, np.arange(0, N, 2))
    assert store.positions("image")[3] == -1 and store.positions("image")[4] == 2
    assert store.row_of("s0007") == 7 and store.row_of("nope") is None
    assert store.manifest["profile"] == "fake" and store.manifest["counts"]["products"] == N
    assert store.category_index().counts()[0]["name"] == "Baby Care"
    assert not store.is_stale()


@pytest.mark.parametrize("modality", ["image", "text"])
def test_search_returns_the_exact_neighbours(store, modality):
    vectors = np.asarray(store.modalities[modality].vectors, np.float32)
    sims, rows = store.modalities[modality].search(vectors[:5], 4)
    want_sims, want_rows = exact(store, modality, vectors[:5], 4)
    np.testing.assert_array_equal(rows[:, 0], store.modalities[modality].rows[:5])  # itself first
    np.testing.assert_allclose(sims, want_sims, atol=1e-3)  # FAISS searches float32, stores float16
    assert {tuple(r) for r in rows} == {tuple(r) for r in want_rows}
    similarity = store.modalities[modality].similarity(vectors[0], np.arange(3))
    np.testing.assert_allclose(similarity, vectors[:3] @ vectors[0], atol=1e-6)


def test_search_past_the_end_and_empty_filter(store):
    channel = store.modalities["image"]
    query = np.asarray(channel.vectors[[0]], np.float32)
    sims, rows = channel.search(query, 100)
    assert rows.shape == (1, N // 2) and (rows >= 0).all()
    empty = RowFilter(store, np.array([1, 3], np.int64)).channel("image")  # rows without an image
    assert channel.search(query, 5, empty)[1].shape == (1, 0)


def test_category_filter_runs_inside_the_search(store):
    categorizer = Categorizer(store)
    watches = store.category_index().filter(("Watches",))
    assert store.category_index().filter(("Nope",)) is None
    queries = stored_queries(store, [1, 2])  # Baby Care and Computers products
    for neighbours in categorizer.neighbors(queries, k=5, allowed=watches):
        assert len(neighbours) == 5 and all(n.category == "Watches" for n in neighbours)
    deeper = store.category_index().filter(("Watches", "Sub"))
    sims, rows = store.modalities["text"].search(queries["text"], 50, deeper.channel("text"))
    assert sorted(rows[0][rows[0] >= 0]) == list(range(0, N, 3))


@pytest.mark.parametrize("share", [0.2, 0.8])  # few allowed rows, and most rows allowed
def test_row_filter_restricts_results(store, share):
    allowed_rows = np.flatnonzero(np.random.default_rng(0).random(N) < share)
    row_filter = RowFilter(store, allowed_rows)
    queries = np.asarray(store.modalities["text"].vectors[np.arange(6)], np.float32)
    sims, rows = store.modalities["text"].search(queries, 5, row_filter.channel("text"))
    positions = store.positions("text")[allowed_rows]
    want_sims, want_rows = exact(store, "text", queries, 5, positions)
    assert set(rows.ravel()) <= set(allowed_rows)
    np.testing.assert_allclose(sims, want_sims, atol=1e-3)  # FAISS searches float32, stores float16


def test_categorizer_sees_the_same_interface(store):
    preds = Categorizer(store).predict_rows(np.arange(0, N, 5))
    assert [p.category for p in preds] == [make_products(N)[r].category for r in range(0, N, 5)]
    single = Categorizer(store).predict_vectors(stored_queries(store, [3]))[0]
    assert single.category == "Watches" and single.neighbors[0].row == 3


def test_channels_searched_together_answer_as_searched_in_turn(store):
    """`search_channels` and `similarities` (a server backend sends them at once) give each
    channel's own search and scores, filters included."""
    queries = stored_queries(store, [1, 4, 6])
    watches = store.category_index().filter(("Watches",))
    requests = {
        "image": (np.asarray(store.modalities["image"].vectors[[0, 2]], np.float32), 4, None),
        "text": (queries["text"], 6, watches.channel("text")),
        "lexical": (queries["lexical"], 3, None),
    }
    together = store.search_channels(requests)
    assert list(together) == list(requests)
    for name, (q, k, allowed) in requests.items():
        want_sims, want_rows = store.channels()[name].search(q, k, allowed)
        np.testing.assert_array_equal(together[name][1], want_rows)
        np.testing.assert_allclose(together[name][0], want_sims, atol=1e-6)
    rows = np.array([0, 1, 2, 5, 8, 13])
    rows = np.append(rows, rows[store.positions("image")[rows] >= 0][0])  # scored twice, in place
    probe = stored_queries(store, [4])  # a product with both a photo and a text
    positions = {m: store.positions(m)[rows][store.positions(m)[rows] >= 0] for m in store.channels()}
    asked = {m: (probe[m][0], positions[m]) for m in store.channels()}
    scored = store.similarities(asked)
    assert list(scored) == list(asked)
    assert len(scored["image"]) == 4 and len(scored["text"]) == len(rows)
    for m, channel in store.channels().items():
        q = probe[m][0]
        want = (
            channel.matrix[positions[m]] @ q.T
            if m == "lexical"
            else np.asarray(channel.vectors[positions[m]], np.float32) @ q
        )
        want = want.toarray().ravel() if hasattr(want, "toarray") else want
        np.testing.assert_allclose(scored[m], want, atol=1e-5)
        np.testing.assert_allclose(channel.similarity(q, positions[m]), want, atol=1e-5)


def test_a_server_backend_runs_a_requests_reads_at_once_and_the_local_one_in_turn(store, monkeypatch):
    """Milvus (`remote_reads`) sends a request's channel searches and scorings on the read
    pool's threads; the local store runs them on the caller's thread."""
    import threading

    seen: list[str] = []
    channels = store.channels()
    for name in ("image", "text"):
        channel = channels[name]
        search, similarity = channel.search, channel.similarity

        def record(function):
            def call(*args, **kwargs):
                seen.append(threading.current_thread().name)
                return function(*args, **kwargs)

            return call

        monkeypatch.setattr(channel, "search", record(search))
        monkeypatch.setattr(channel, "similarity", record(similarity))
    queries = stored_queries(store, [4])
    store.search_channels({m: (queries[m], 3, None) for m in ("image", "text")})
    store.similarities({m: (queries[m][0], np.array([0, 1])) for m in ("image", "text")})
    assert len(seen) == 4
    on_pool = [name.startswith("store-read") for name in seen]
    assert all(on_pool) if isinstance(store, MilvusIndexStore) else not any(on_pool)


def test_milvus_scores_candidates_on_the_server_and_any_row_it_omits_here(store):
    """A Milvus channel scores candidates by a search restricted to their rows: one search per
    modality and no vector read back; a row that search does not return is fetched and scored
    here, to the same similarity."""
    if not isinstance(store, MilvusIndexStore):
        pytest.skip("the server-side scoring of the Milvus channels")
    rows = np.array([0, 1, 2, 5, 8, 13])
    probe = stored_queries(store, [4])
    want = {
        m: np.asarray(c.vectors[c.rows.searchsorted(rows)], np.float32) @ probe[m][0]
        for m, c in store.modalities.items()
        if np.isin(rows, c.rows).all()
    }
    assert set(want) == {"text"}  # every row has a text; some lack a photo
    fresh = reload(store)  # nothing cached
    channel = fresh.modalities["text"]
    real, calls = channel.client, []

    class Recording:
        def __init__(self, drop_one: bool) -> None:
            self.drop_one = drop_one

        def search(self, name, **kwargs):
            calls.append(("search", kwargs["filter"]))
            hits = real.search(name, **kwargs)
            return [list(h)[1:] for h in hits] if self.drop_one else hits

        def query(self, name, **kwargs):
            calls.append(("query", kwargs.get("ids")))
            return real.query(name, **kwargs)

    positions = channel.rows.searchsorted(rows)
    channel.client = channel.vectors.source.client = Recording(drop_one=False)
    np.testing.assert_allclose(channel.similarity(probe["text"][0], positions), want["text"], atol=1e-5)
    assert calls == [("search", f"row in {rows.tolist()}")]
    calls.clear()
    channel.client = channel.vectors.source.client = Recording(drop_one=True)
    np.testing.assert_allclose(channel.similarity(probe["text"][0], positions), want["text"], atol=1e-5)
    assert [kind for kind, _ in calls] == ["search", "query"] and len(calls[1][1]) == 1


def test_milvus_keeps_the_scores_its_search_returned_for_the_same_query(store):
    """Scoring a query's candidates asks the server only for the rows this channel's search did
    not just return for that query; every score still equals the stored vectors' cosine, and
    another query's candidates are all asked."""
    if not isinstance(store, MilvusIndexStore):
        pytest.skip("the Milvus channels' search memo")
    fresh = reload(store)
    channel = fresh.modalities["text"]
    channel.bound_depth = 0  # the search remembers only the k rows it returns (the deeper memo: below)
    probe, other = stored_queries(fresh, [4])["text"], stored_queries(fresh, [7])["text"]
    _, found = channel.search(probe, 3)
    found = found[0][found[0] >= 0]
    assert len(found) == 3
    others = np.array([r for r in (0, 1, 2, 5, 8, 13) if r not in found])
    rows = np.concatenate([found, others])
    positions = channel.rows.searchsorted(rows)
    stored = np.asarray(channel.vectors[positions], np.float32)
    real, filters = channel.client, []

    class Recording:
        def search(self, name, **kwargs):
            filters.append(kwargs["filter"])
            return real.search(name, **kwargs)

        def query(self, name, **kwargs):
            raise AssertionError("no row should be fetched")

    channel.client = Recording()
    np.testing.assert_allclose(channel.similarity(probe[0], positions), stored @ probe[0], atol=1e-5)
    assert filters == [f"row in {sorted(others.tolist())}"]
    filters.clear()
    np.testing.assert_allclose(channel.similarity(other[0], positions), stored @ other[0], atol=1e-5)
    assert filters == [f"row in {sorted(rows.tolist())}"]


def test_bounded_scores_are_exact_for_searched_rows_and_an_upper_bound_for_the_others(store):
    """`bounded_similarities` never costs a second round trip where a channel remembers the
    query's search: its rows keep their exact scores, every other row gets the search's lowest
    score, an upper bound of its own (an exact search here), flagged loose. A store without
    bounds (FAISS, the lexical channel) answers exact scores, none loose; so does a Milvus
    channel whose search of the query came back with fewer rows than asked (no floor)."""
    fresh = reload(store)
    probe = stored_queries(fresh, [4])
    text = fresh.modalities["text"]
    if isinstance(fresh, MilvusIndexStore):
        text.bound_depth = 0  # the floor of exactly the 5 rows returned (the deeper memo: below)
    sims, found = text.search(probe["text"], 5)
    stored = np.asarray(text.vectors, np.float32)
    positions = np.arange(text.ntotal)
    want = stored @ probe["text"][0]
    got = fresh.bounded_similarities({m: (probe[m][0], positions) for m in ("text", "lexical")})
    lexical_scores, lexical_loose = got["lexical"]
    assert lexical_loose is None
    exact_lexical = fresh.similarities({"lexical": (probe["lexical"][0], positions)})["lexical"]
    np.testing.assert_allclose(lexical_scores, exact_lexical)
    scores, loose = got["text"]
    if not isinstance(fresh, MilvusIndexStore):
        assert loose is None
        np.testing.assert_allclose(scores, want, atol=1e-5)
        return
    returned = np.isin(text.rows, found[0])
    np.testing.assert_array_equal(loose, ~returned)
    np.testing.assert_allclose(scores[returned], want[returned], atol=1e-5)
    floor = float(sims[0].min())
    np.testing.assert_allclose(scores[~returned], floor, atol=1e-6)
    assert (want[~returned] <= floor + 1e-5).all()  # an upper bound indeed
    other = stored_queries(fresh, [7])["text"]
    sims, rows = text.search(other, 3)
    text.memo.remember(other, np.c_[sims, [[0.0]]], np.c_[rows, [[-1]]])  # a search that came back short
    scores, loose = fresh.bounded_similarities({"text": (other[0], positions)})["text"]
    assert loose is None
    np.testing.assert_allclose(scores, stored @ other[0], atol=1e-5)


def test_a_deeper_search_returns_the_same_rows_and_remembers_more(store):
    """A Milvus search of a few queries asks the server for `bound_depth` rows and returns the k
    asked: the same k, with the same scores, as a search of k; the memo then knows the exact
    score of every row of the deeper search, and bounds the others by its lowest score. A batch
    larger than the memo asks for k only: it could not keep the rest."""
    if not isinstance(store, MilvusIndexStore):
        pytest.skip("the Milvus channels' search depth")
    fresh = reload(store)
    text = fresh.modalities["text"]
    probe = stored_queries(fresh, [4])["text"]
    text.bound_depth = 0
    shallow = text.search(probe, 3)
    deep_store = reload(store)
    deep = deep_store.modalities["text"]
    deep.bound_depth = 8
    limits, real = [], deep.client

    class Recording:
        def search(self, name, **kwargs):
            limits.append((len(kwargs["data"]), kwargs["limit"]))
            return real.search(name, **kwargs)

    deep.client = Recording()
    sims, rows = deep.search(probe, 3)
    assert limits == [(1, 8)]
    np.testing.assert_array_equal(rows, shallow[1])
    np.testing.assert_allclose(sims, shallow[0], atol=1e-6)
    want_sims, want_rows = exact(fresh, "text", probe, 8)
    positions = np.arange(deep.ntotal)
    scores, loose = deep.bounded_similarity(probe[0], positions)
    assert loose is not None
    known = np.isin(deep.rows, want_rows[0])
    np.testing.assert_array_equal(loose, ~known)  # exactly the 8 nearest are known
    stored = np.asarray(deep.vectors, np.float32) @ probe[0]
    np.testing.assert_allclose(scores[known], stored[known], atol=1e-5)
    np.testing.assert_allclose(scores[~known], want_sims[0, -1], atol=1e-5)  # the 8th score: the floor
    assert (stored[~known] <= scores[~known] + 1e-5).all()
    limits.clear()
    many = np.repeat(probe, RECENT_QUERIES + 1, axis=0)
    assert deep.search(many, 3)[1].shape == (RECENT_QUERIES + 1, 3)
    assert limits == [(RECENT_QUERIES + 1, 3)]


def test_the_search_depth_follows_the_setting_and_stays_within_hnsws_list(monkeypatch):
    """DEFAULT_BOUND_DEPTH on FLAT and IVF_SQ8; HNSW's ef by default and at most (past it its
    graph search would widen); MILVUS_BOUND_DEPTH overrides, 0 turns the deeper search off, and
    a negative depth is refused."""
    monkeypatch.delenv("MILVUS_BOUND_DEPTH", raising=False)
    flat, ivf, hnsw = {"metric_type": "IP"}, {"params": {"nprobe": 32}}, {"params": {"ef": 128}}
    assert bound_depth(flat) == bound_depth(ivf) == DEFAULT_BOUND_DEPTH
    assert bound_depth(hnsw) == 128
    monkeypatch.setenv("MILVUS_BOUND_DEPTH", "1000")
    assert (bound_depth(ivf), bound_depth(hnsw)) == (1000, 128)
    monkeypatch.setenv("MILVUS_BOUND_DEPTH", "0")
    assert (bound_depth(flat), bound_depth(hnsw)) == (0, 0)
    monkeypatch.setenv("MILVUS_BOUND_DEPTH", "-1")
    with pytest.raises(ValueError, match="MILVUS_BOUND_DEPTH"):
        bound_depth(flat)


# ---- adding --------------------------------------------------------------------------------
def added_products(n: int = 2) -> list[Product]:
    return [
        Product(
            id=f"new{i}",
            name=f"Garden hose {i}",
            description="green garden hose usb adapter",
            brand=None,
            price=None,
            category_path=("Garden", "Hoses"),
            image=None,
        )
        for i in range(n)
    ]


@pytest.mark.fresh_copy
def test_add_is_visible_to_the_next_query(store):
    encoder = FakeEncoder()
    new = added_products(2)
    text = random_vectors(2, encoder.dims["text"], seed=9)
    out = append(store, new, {"text": text, "image": np.full((2, encoder.dims["image"]), np.nan, np.float32)})
    assert len(out.products) == N + 2 and out.row_of("new1") == N + 1
    assert store.is_stale() and not out.is_stale()
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    _, rows = out.modalities["text"].search(unit, 1)
    assert list(rows[:, 0]) == [N, N + 1]
    assert out.modalities["image"].ntotal == N // 2  # no image: not in that channel
    garden = out.category_index().filter(("Garden",))
    _, rows = out.modalities["text"].search(unit[:1], 10, garden.channel("text"))
    assert sorted(rows[0]) == [N, N + 1]
    assert out.lexical is not None and out.lexical.ntotal == N + 2  # transformed, vocabulary unchanged
    lexical_rows = out.lexical.matrix[out.positions("lexical")[[N, N + 1]]]
    assert (abs(lexical_rows - out.lexical.transform([encoder_text(p.name, p.description) for p in new])).max()) == 0
    again = reload(store)
    assert [p.id for p in again.products[-2:]] == ["new0", "new1"] and "Garden" in again.categories()


def test_duplicate_add_is_refused_and_changes_nothing(store):
    dup = make_products(1)  # s0000 is indexed
    with pytest.raises(DuplicateProduct):
        append(store, dup, {"text": random_vectors(1, 12)})
    assert len(reload(store).products) == N and not store.is_stale()


@pytest.mark.parametrize(
    "vectors",
    [
        {"text": np.ones((2, 5), np.float32)},  # wrong dimension
        {"text": np.ones((3, 12), np.float32)},  # one row too many
        {"sound": np.ones((2, 12), np.float32)},  # no such modality
    ],
)
def test_bad_add_is_refused_and_changes_nothing(store, vectors):
    with pytest.raises(ValueError):
        append(store, added_products(2), vectors)
    again = reload(store)
    assert len(again.products) == N and again.modalities["text"].ntotal == N
    assert Categorizer(again).predict_rows(np.array([0]))[0].category == "Watches"


def test_other_encoder_is_refused(store):
    with pytest.raises(IndexMismatch):
        if isinstance(store, MilvusIndexStore):
            MilvusIndexStore.open(store.location, encoder=FakeEncoder(version="v2"))
        else:
            open_store(store.path, encoder=FakeEncoder(version="v2"))
    if isinstance(store, MilvusIndexStore):
        MilvusIndexStore.open(store.location, encoder=FakeEncoder())  # the right one loads


# ---- deleting and relabelling ---------------------------------------------------------------
VICTIM = 6  # s0006: Watches, with an image and text


def fresh(store: IndexStore) -> IndexStore:
    """The store as a process that never loaded it reads it (no cached snapshot or segments)."""
    if isinstance(store, MilvusIndexStore):
        from indexer.store import milvus

        milvus._LOADED.pop((store.location.uri, store.location.collection), None)
    return reload(store)


def every_channel_hit(store: IndexStore, rows: list[int], k: int = N) -> set[str]:
    """Ids returned for stored queries of `rows`: fused, per channel alone, as one batch (the
    batch similarity-matrix route) and one query at a time (the search route), and the vote's
    neighbours."""
    categorizer = Categorizer(store)
    queries = stored_queries(store, rows)
    hits: set[str] = set()
    for channel in (None, "image", "text", "lexical"):
        chosen = queries if channel is None else {channel: queries[channel]}
        for neighbours in categorizer.neighbors(chosen, k=k):
            hits |= {n.id for n in neighbours}
        for i in range(len(rows)):
            one = {c: q[i : i + 1] for c, q in chosen.items()}
            hits |= {n.id for n in categorizer.neighbors(one, k=k)[0]}
    for prediction in categorizer.predict_vectors(queries, k=k):
        hits |= {n.id for n in prediction.neighbors}
    return hits


@pytest.mark.fresh_copy
@pytest.mark.parametrize("skip", [32, 0])  # deleted rows searched around (skip) or filtered out (a bitmap)
def test_delete_hides_the_product_from_every_read(store, skip, monkeypatch):
    from indexer.store import base

    monkeypatch.setattr(base, "SKIP_DELETED_ROWS", skip)
    victim = f"s{VICTIM:04d}"
    rows = [VICTIM, 9, 12]  # the victim itself, another Watches product, a product near it
    assert victim in every_channel_hit(store, rows)  # found everywhere before
    assert store.category_index().counts()[2] == {
        "name": "Watches",
        "count": 14,
        "subcategories": [{"name": "Sub", "count": 14}],
    }
    own_text = {"text": stored_queries(store, [VICTIM])["text"]}  # the victim is its own nearest
    out = delete(store, [victim])
    assert store.is_stale() and not out.is_stale()
    for seen in (out, reload(store), fresh(store)):
        shallow = Categorizer(seen, {"candidates": 5}).neighbors(own_text, k=5)[0]
        assert len(shallow) == 5 and victim not in {n.id for n in shallow}  # searched 1 deeper, not 1 short
        assert seen.row_of(victim) is None and seen.row_of("s0007") == 7
        assert seen.product_count() == N - 1 and seen.positions("image")[VICTIM] == -1
        assert seen.category_index().counts()[2] == {
            "name": "Watches",
            "count": 13,
            "subcategories": [{"name": "Sub", "count": 13}],
        }
        assert seen.labels()[VICTIM] == "" and VICTIM not in seen.category_index().filter(("Watches",)).rows
        assert victim not in every_channel_hit(seen, [9, 12])
        watches = seen.category_index().filter(("Watches",))
        found = Categorizer(seen).neighbors(stored_queries(seen, [9]), k=N, allowed=watches)[0]
        assert len(found) == 13 and victim not in {n.id for n in found}


@pytest.mark.fresh_copy
def test_relabel_moves_the_products_and_their_vote_at_once(store):
    """Every Watches product renamed into a category the index does not have yet: the next vote,
    the counts, the category filters (in Milvus: its filter expressions) all follow."""
    watches = list(range(0, N, 3))
    query = stored_queries(store, [9])
    assert Categorizer(store).predict_vectors(query)[0].category == "Watches"
    new_path = ("Timepieces", "Wrist", "Analog")
    out = relabel(store, {f"s{row:04d}": new_path for row in watches})
    for seen in (out, reload(store), fresh(store)):
        assert seen.products[9].category_path == new_path and seen.products[10].category_path == ("Baby Care", "Sub")
        assert seen.row_of("s0009") == 9 and seen.product_count() == N
        assert seen.categories() == ["Baby Care", "Computers", "Timepieces"] and seen.labels()[9] == "Timepieces"
        prediction = Categorizer(seen).predict_vectors(query)[0]
        assert prediction.category == "Timepieces" and prediction.category_path == list(new_path)
        assert {n.category for n in prediction.neighbors} == {"Timepieces"}
        counts = {c["name"]: c["count"] for c in seen.category_index().counts()}
        assert counts == {"Baby Care": 13, "Computers": 13, "Timepieces": 14}
        assert seen.category_index().filter(("Watches",)) is None
        wrist = seen.category_index().filter(("Timepieces", "Wrist"))
        assert list(wrist.rows) == watches
        _, rows = seen.modalities["text"].search(query["text"], N, wrist.channel("text"))
        assert sorted(rows[0][rows[0] >= 0]) == watches  # a Milvus category filter runs in Milvus


def test_relabel_to_the_same_path_changes_nothing(store):
    out = relabel(store, {"s0001": ("Baby Care", "Sub")})
    assert not store.is_stale() and out.products[1].category_path == ("Baby Care", "Sub")


@pytest.mark.parametrize(
    "bad",
    [
        ("delete", ["nope"]),
        ("delete", ["s0001", "nope"]),  # one unknown id refuses the whole call
        ("relabel", {"nope": ("A", "B")}),
        ("relabel", {"s0001": ("A", "")}),  # an empty level
        ("relabel", {"s0001": ()}),
        ("relabel", {"s0001": ("A >> B",)}),  # the separator inside a level
        ("relabel", {"s0001": tuple("abcdefghijk")}),  # 11 levels
        ("relabel", {"s0001": "Garden"}),  # a string is not a list of levels (not 6 levels G, a, r...)
    ],
)
def test_bad_changes_are_refused_and_change_nothing(store, bad):
    from indexer.catalog import CategoryPathError
    from indexer.store import ProductNotFound

    kind, what = bad
    expected = CategoryPathError if kind == "relabel" and "nope" not in what else ProductNotFound
    with pytest.raises(expected) as info:
        delete(store, what) if kind == "delete" else relabel(store, what)
    if expected is ProductNotFound:
        assert info.value.ids == ["nope"] and "'nope'" in str(info.value) and isinstance(info.value, KeyError)
    again = reload(store)
    assert not store.is_stale() and again.product_count() == N and again.row_of("s0001") == 1
    assert again.products[1].category_path == ("Baby Care", "Sub")
    from indexer.store import AuditLog

    assert AuditLog(store.path).history("s0001") == []


@pytest.mark.fresh_copy
def test_a_product_deleted_twice_or_relabelled_after_is_not_found_and_can_come_back(store):
    from indexer.store import ProductNotFound

    out = delete(store, ["s0001"])
    for again in (lambda s: delete(s, ["s0001"]), lambda s: relabel(s, {"s0001": ("A",)})):
        with pytest.raises(ProductNotFound):
            again(out)
    assert not out.is_stale()
    back = make_products(2)[1]  # the same id added again: a new row
    out = append(out, [back], {"text": random_vectors(1, 12, seed=4)})
    assert out.row_of("s0001") == N and out.product_count() == N
    out = delete(out, ["s0001"])
    assert out.row_of("s0001") is None and out.product_count() == N - 1


@pytest.mark.fresh_copy
def test_changes_are_recorded_in_the_audit_trail(store):
    from indexer.store import AuditLog

    out = append(store, added_products(1), {"text": random_vectors(1, 12, seed=5)}, actor="api-token")
    out = relabel(out, {"new0": ("Garden", "Tools")}, actor="review-token")
    delete(out, ["new0"], actor="api-token")
    history = AuditLog(store.path).history("new0")
    assert [(e["action"], e["actor"]) for e in history] == [
        ("add", "api-token"),
        ("relabel", "review-token"),
        ("delete", "api-token"),
    ]
    assert history[0]["before"] is None and history[0]["after"]["category_path"] == ["Garden", "Hoses"]
    assert history[1]["before"] == {"category_path": ["Garden", "Hoses"]}
    assert history[1]["after"] == {"category_path": ["Garden", "Tools"]}
    assert history[2]["before"]["id"] == "new0" and history[2]["after"] is None
    assert all(e["time"].endswith("Z") for e in history) and history == sorted(history, key=lambda e: e["time"])


KILLED_CHANGE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from indexer.store import delete, open_store
    from indexer.store import audit, milvus
    from indexer.store.local import segments

    backend, source, db, point = sys.argv[1:]

    def stop(*args, **kwargs):
        print("stopped", flush=True)
        time.sleep(120)  # killed here

    if point == "before-commit":
        segments.write_list = stop  # the delta is written and renamed, LIST not replaced
        milvus._commit_change = stop  # the entry is written and the rows upserted, state not moved
    else:
        audit.AuditLog.record_events = stop  # committed, not yet in the audit trail
    store = open_store(source)
    if backend == "milvus":
        loc = milvus.copy_to_milvus(store, milvus.MilvusLocation(db, "killed"))
        store = milvus.MilvusIndexStore.open(loc)
    delete(store, ["s0006"])
    """
)


@pytest.mark.parametrize("point", ["before-commit", "before-audit"])
@pytest.mark.parametrize("backend", ["faiss", "milvus"])  # Lite: a writer killed in its own process
def test_a_change_killed_at_any_point_is_applied_once_or_not_at_all(tmp_path, backend, point):
    """kill -9 while a delete is half done: the index loads; after the next writer, the product
    is either deleted with one audit event or untouched with none, whatever the backend."""
    import os
    import signal
    import subprocess
    import sys

    from indexer.store import AuditLog

    root, tests = Path(__file__).resolve().parents[2], Path(__file__).resolve().parents[1]
    publish_small(tmp_path / "faiss", FakeEncoder())
    db = tmp_path / "killed.db"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(tests)]))
    args = [sys.executable, "-c", KILLED_CHANGE, backend, str(tmp_path / "faiss"), str(db), point]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        assert proc.stdout.readline().strip() == "stopped"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    store = (
        MilvusIndexStore.open(MilvusLocation(str(db), "killed"))
        if backend == "milvus"
        else open_store(tmp_path / "faiss")
    )
    assert store.product_count() in (N, N - 1) and store.row_of("s0007") == 7  # loadable
    out = delete(store, ["s0009"])  # the next writer
    gone = out.row_of("s0006") is None
    events = [e["action"] for e in AuditLog(out.path).history("s0006")]
    assert events == (["delete"] if gone else [])
    assert AuditLog(out.path).history("s0009")[0]["action"] == "delete"
    assert ("s0006" in every_channel_hit(out, [9, 12])) is not gone
    if point == "before-audit":
        assert gone  # committed before the kill: the next writer recorded its event
    elif backend == "faiss":
        assert not gone  # LIST never named the delta: it never happened
    else:
        assert gone  # Milvus: the written change/<n> entry is finished by the next writer


# ---- Milvus specifics: locations, routing, the copy ----------------------------------------
def test_locations_parse_and_bad_ones_are_refused(tmp_path):
    assert MilvusLocation.parse("milvus://db.local:19530/shop") == MilvusLocation("http://db.local:19530", "shop")
    assert MilvusLocation.parse("milvus://db.local:19530").collection == "products"
    assert MilvusLocation.parse(tmp_path / "x.db").uri == str(tmp_path / "x.db")
    for bad in ("milvus://", "var/index"):
        with pytest.raises(ValueError):
            MilvusLocation.parse(bad)
    assert backends.parse_vector_store("faiss") is None and backends.parse_vector_store("") is None
    with pytest.raises(ValueError, match="VECTOR_STORE"):
        backends.parse_vector_store("redis://x")


def test_a_copy_into_milvus_keeps_deletes_and_relabels(tmp_path, milvus_db):
    """A FAISS index with deletes and relabels in its deltas copied into Milvus: the copy
    hides the same products and reads the same categories, row for row."""
    publish_small(tmp_path / "faiss", FakeEncoder())
    source = relabel(delete(open_store(tmp_path / "faiss"), ["s0003", "s0004"]), {"s0005": ("Garden",)})
    loc = copy_to_milvus(source, MilvusLocation(str(milvus_db.resolve()), "changed"), replace=True)
    copied = MilvusIndexStore.open(loc, local=tmp_path / "local")
    assert len(copied.products) == N and list(copied.deleted) == [3, 4] and copied.product_count() == N - 2
    assert copied.row_of("s0003") is None and copied.products[5].category_path == ("Garden",)
    assert copied.category_index().counts() == source.category_index().counts()
    queries = stored_queries(source, [6, 7])
    assert every_channel_hit(copied, [6, 7]) == every_channel_hit(source, [6, 7])
    assert not {"s0003", "s0004"} & every_channel_hit(copied, [6, 7])
    assert [p.category for p in Categorizer(copied).predict_vectors(queries)] == [
        p.category for p in Categorizer(source).predict_vectors(queries)
    ]


def test_routed_folder_loads_milvus_and_copy_refuses_to_overwrite(tmp_path, milvus_db, monkeypatch):
    publish_small(tmp_path / "faiss", FakeEncoder())
    loc = MilvusLocation(str(milvus_db.resolve()), "routed")
    copy_to_milvus(open_store(tmp_path / "faiss"), loc, replace=True)
    with pytest.raises(IndexStoreError, match="exists"):
        copy_to_milvus(open_store(tmp_path / "faiss"), loc)
    local = tmp_path / "local"
    monkeypatch.setenv("MILVUS_COLLECTION", "routed")
    backends.route(local, loc.uri)
    try:
        routed = open_store(local)
    finally:
        backends.route(local, None)
    assert isinstance(routed, MilvusIndexStore) and routed.path == local and len(routed.products) == N
    assert not isinstance(open_store(tmp_path / "faiss"), MilvusIndexStore)


def test_service_serves_and_adds_through_milvus_when_vector_store_is_set(tmp_path, monkeypatch):
    """VECTOR_STORE = a Lite database: predict, filtered search and an add with a photo go to
    Milvus; INDEX_DIR keeps only the local files (the uploaded photo, the embedding cache)."""
    from fakes import make_dataset
    from service_support import jpeg_bytes

    from indexer.pipeline.build import build_index
    from service.app import create_app
    from service.config import Config

    encoder = FakeEncoder()
    data = make_dataset(tmp_path / "data", per_category=3)
    build_index(data["folder"], tmp_path / "faiss", encoder=encoder, progress=False)
    db = tmp_path / "service.db"
    copy_to_milvus(open_store(tmp_path / "faiss"), db)
    monkeypatch.setenv("VECTOR_STORE", str(db))
    config = Config.from_env(index_dir=str(tmp_path / "local"), api_token="t")
    assert config.vector_store == str(db)
    (tmp_path / "local").mkdir()
    client = create_app(config, encoder=encoder).test_client()
    try:
        found = client.post("/api/v1/search", json={"title": "baby cotton romper", "category": "Watches", "k": 3})
        assert found.status_code == 200, found.get_data(as_text=True)
        assert [r["category"] for r in found.get_json()["results"]] == ["Watches"] * 3
        predicted = client.post("/api/v1/predict", json={"title": "analog wrist watch strap dial"})
        assert predicted.status_code == 200 and predicted.get_json()["category"] == "Watches"
        added = client.post(
            "/api/v1/products",
            headers={"Authorization": "Bearer t"},
            data={"title": "Garden hose", "category": "Garden >> Hoses", "image": (io.BytesIO(jpeg_bytes()), "h.jpg")},
        )
        assert added.status_code == 201, added.get_data(as_text=True)
        product_id = added.get_json()["id"]
        assert client.get(f"/api/v1/products/{product_id}/image").status_code == 200  # photo kept locally
        garden = client.post("/api/v1/search", json={"title": "garden hose", "category": "Garden", "k": 5})
        assert [r["id"] for r in garden.get_json()["results"]] == [product_id]
    finally:
        backends.route(tmp_path / "local", None)
    milvus = MilvusIndexStore.open(db)
    assert milvus.row_of(product_id) == len(milvus.products) - 1 == 9
    assert len(open_store(tmp_path / "faiss").products) == 9  # the FAISS index was not touched


# ---- the real index: identical nested figures through either store ----------------------------
@pytest.mark.integration
@pytest.mark.milvus_server
def test_real_nested_predictions_identical_through_milvus(service_index, tmp_path, request, monkeypatch):
    """FAISS's nested run is computed once and compared with Milvus Lite's and the server's (one
    test, not one per backend: the FAISS run is a third of its time)."""
    from indexer.categorizer import protocol as calibration

    path = service_index  # the session's real index (or SERVICE_TEST_INDEX, built by the same code)
    faiss_store = open_store(path)
    groups = calibration.near_duplicate_groups(faiss_store)
    labels = faiss_store.labels()
    folds = calibration.grouped_folds(labels, groups)
    sets = {"fused": calibration.FUSED}
    grid = calibration.PARAM_GRID[:2]
    a = calibration.nested_predictions(faiss_store, folds, groups, sets, grid)["fused"]
    accuracy = np.mean([p.category == label for p, label in zip(a.predictions, labels, strict=True)])
    assert accuracy > 0.8  # the figures compared are real ones, not a degenerate run
    cf = Categorizer(faiss_store)
    targets = {
        "lite": MilvusLocation(str(tmp_path / "real.db"), "real"),
        "server": MilvusLocation.parse(request.getfixturevalue("milvus_server").uri, "real"),
    }
    for where, target in targets.items():
        loc = copy_to_milvus(faiss_store, target, replace=True)
        request.addfinalizer(lambda loc=loc: drop(loc))
        # the nested protocol searches every product at once, past the service's 10 s deadline on a
        # slow 2-core machine (Milvus Lite scans in Python): a batch job's deadline, as bench_milvus sets
        monkeypatch.setattr(client_for(loc.uri), "timeout", 300.0)
        milvus_store = MilvusIndexStore.open(loc)
        assert milvus_store.manifest["categorizer"] == faiss_store.manifest["categorizer"], where
        np.testing.assert_array_equal(groups, calibration.near_duplicate_groups(milvus_store), err_msg=where)
        b = calibration.nested_predictions(milvus_store, folds, groups, sets, grid)["fused"]
        assert [p.category for p in a.predictions] == [p.category for p in b.predictions], where
        assert [p.confidence for p in a.predictions] == [p.confidence for p in b.predictions], where
        assert [f.entry for f in a.fits] == [f.entry for f in b.fits], where
        # and a single service-style query agrees too (Milvus search, fetched vectors)
        cm = Categorizer(milvus_store)
        for row in (0, 100, 500):
            pf = cf.predict_vectors(stored_queries(faiss_store, [row]))[0]
            pm = cm.predict_vectors(stored_queries(milvus_store, [row]))[0]
            assert pf.category == pm.category, (where, row)
            assert [n.row for n in pf.neighbors] == [n.row for n in pm.neighbors], (where, row)
