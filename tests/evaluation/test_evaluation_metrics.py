"""Metric code of the evaluation package on hand-checkable cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation import clustering, crossval, projection, representations
from indexer.catalog.products import Product
from indexer.categorizer.protocol import grouped_folds, near_duplicate_groups
from indexer.store.local.index import IndexStore, ModalityIndex, make_faiss_index


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def memory_store(categories, image=None, text=None, image_rows=None, text_rows=None, manifest=None) -> IndexStore:
    """An in-memory IndexStore (no disk) from given vectors."""
    products = [
        Product(
            id=f"p{i}",
            name=f"product {i}",
            description="",
            brand=None,
            price=None,
            category_path=(c, f"{c} sub"),
            image=None,
        )
        for i, c in enumerate(categories)
    ]
    modalities = {}
    for name, vecs, rows in (("image", image, image_rows), ("text", text, text_rows)):
        if vecs is None:
            continue
        vecs = unit(vecs)
        rows = np.arange(len(vecs)) if rows is None else np.asarray(rows)
        modalities[name] = ModalityIndex(vecs, rows, make_faiss_index(vecs))
    return IndexStore(Path("/nonexistent"), "000001", {"profile": "memory", **(manifest or {})}, products, modalities)


# ---- clustering metrics --------------------------------------------------------------
def test_perfect_clustering_scores_one_even_with_permuted_cluster_ids():
    true = np.array(["a", "a", "b", "b", "c", "c"])
    clusters = np.array([2, 2, 0, 0, 1, 1])
    scores = clustering.cluster_scores(true, clusters)
    for key in ("ari", "nmi", "homogeneity", "completeness", "v_measure", "mapped_accuracy"):
        assert scores[key] == pytest.approx(1.0)
    assert scores["mapping"] == {"0": "b", "1": "c", "2": "a"}


def test_single_cluster_has_zero_ari_and_homogeneity():
    true = np.array(["a", "b", "a", "b"])
    scores = clustering.cluster_scores(true, np.zeros(4, int))
    assert scores["ari"] == pytest.approx(0.0)
    assert scores["homogeneity"] == pytest.approx(0.0)
    assert scores["completeness"] == pytest.approx(1.0)
    assert scores["mapped_accuracy"] == pytest.approx(0.5)


def test_hungarian_mapping_on_known_contingency():
    matrix = np.array([[0, 5, 1], [4, 0, 0], [1, 0, 6]])
    assert clustering.best_mapping(matrix) == {0: 1, 1: 0, 2: 2}
    # greedy choice (largest cell first: 6, then 5, then 4) agrees here; this one it does not:
    tricky = np.array([[10, 9], [9, 0]])
    assert clustering.best_mapping(tricky) == {0: 1, 1: 0}  # 9 + 9 beats 10 + 0


def test_contingency_counts_and_unknown_label():
    matrix, classes = clustering.contingency(np.array(["x", "y", "y"]), np.array([1, 0, 1]), ["x", "y"])
    assert classes == ["x", "y"]
    assert matrix.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="not among the categories"):
        clustering.contingency(np.array(["x", "z"]), np.array([0, 1]), ["x", "y"])


def test_cluster_scores_rejects_length_mismatch():
    with pytest.raises(ValueError, match="labels but"):
        clustering.cluster_scores(np.array(["a", "b"]), np.array([0]))


def test_kmeans_separates_blobs_and_is_deterministic():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    x = np.vstack([c + rng.normal(0, 0.3, (20, 2)) for c in centres])
    true = np.repeat(["a", "b", "c"], 20)
    first = clustering.kmeans_labels(x, 3)
    assert clustering.cluster_scores(true, first)["ari"] == pytest.approx(1.0)
    assert np.array_equal(first, clustering.kmeans_labels(x, 3))
    with pytest.raises(ValueError, match="cannot make"):
        clustering.kmeans_labels(x[:2], 3)


# ---- dimension reduction -------------------------------------------------------------
def test_pca_keeps_the_components_the_variance_needs():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((2, 10))
    x = rng.standard_normal((50, 2)) * [5.0, 3.0] @ basis + rng.normal(0, 1e-4, (50, 10))
    result = projection.pca_reduce(x, variance=0.9)
    assert result.n_components == 2
    assert result.variance_kept > 0.99
    assert result.reduced.shape == (50, 2)
    assert np.all(np.diff(result.explained) >= -1e-12)


def test_pca_cap_applies():
    rng = np.random.default_rng(0)
    result = projection.pca_reduce(rng.standard_normal((60, 40)), variance=0.99, max_components=5)
    assert result.n_components == 5
    assert result.variance_kept < 0.99


def test_tsne_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    a = projection.tsne_2d(x, iterations=250)
    b = projection.tsne_2d(x, iterations=250)
    assert a.shape == (40, 2)
    assert np.array_equal(a, b)


# ---- fused representation ------------------------------------------------------------
def test_fused_is_weighted_mean_of_cosines_and_handles_missing_image():
    rng = np.random.default_rng(0)
    img, txt = rng.standard_normal((3, 6)), rng.standard_normal((4, 5))
    store = memory_store(
        ["a", "a", "b", "b"],
        image=img,
        text=txt,
        image_rows=[0, 1, 3],
        manifest={"categorizer": {"weights": {"image": 1.0, "text": 3.0}}},
    )
    rep = representations.fused(store)
    assert rep.extra["weights"] == pytest.approx({"image": 0.25, "text": 0.75})
    assert rep.rows.tolist() == [0, 1, 2, 3]
    assert np.allclose(np.linalg.norm(rep.vectors, axis=1), 1.0, atol=1e-5)
    ui, ut = unit(img), unit(txt)
    assert float(rep.vectors[0] @ rep.vectors[1]) == pytest.approx(
        0.25 * ui[0] @ ui[1] + 0.75 * ut[0] @ ut[1], abs=1e-5
    )
    # product 2 has no image: its image block is zero and it is compared on text alone
    assert np.allclose(rep.vectors[2, :6], 0.0)
    assert np.allclose(rep.vectors[2, 6:], ut[2], atol=1e-5)
    assert rep.extra["missing"] == {"image": 1, "text": 0}
    assert "1 image missing" in rep.note


def test_modality_representation_leaves_out_products_without_it():
    rng = np.random.default_rng(0)
    store = memory_store(
        ["a", "b", "c"], image=rng.standard_normal((2, 4)), image_rows=[2, 0], text=rng.standard_normal((3, 4))
    )
    rep = representations.modality(store, "image")
    assert rep.rows.tolist() == [0, 2]
    assert "1 product(s) without image" in rep.note


# ---- grouping and folds --------------------------------------------------------------
def test_identical_images_share_a_group_and_a_fold():
    rng = np.random.default_rng(3)
    n = 40
    img = rng.standard_normal((n, 16))
    img[7] = img[3]  # byte-identical photos give identical vectors
    img[21] = img[3]
    txt = rng.standard_normal((n, 16))
    categories = ["a", "b"] * (n // 2)
    store = memory_store(categories, image=img, text=txt)
    groups = near_duplicate_groups(store)
    assert groups[3] == groups[7] == groups[21]
    assert len(np.unique(groups)) == n - 2
    folds = grouped_folds(store.labels(), groups)
    assert folds[3] == folds[7] == folds[21]
    assert crossval.groups_spanning_folds(groups, folds) == 0


def test_groups_spanning_folds_counts_leaks():
    groups = np.array([0, 0, 1, 1, 2])
    assert crossval.groups_spanning_folds(groups, np.array([0, 0, 1, 1, 1])) == 0
    assert crossval.groups_spanning_folds(groups, np.array([0, 1, 1, 1, 0])) == 1


def test_nearest_similarities_split_by_category():
    vecs = [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]
    store = memory_store(["a", "a", "b", "b"], image=vecs)
    sims = crossval.nearest_similarities(store, "image")
    u = unit(vecs)
    assert sims["within"][0] == pytest.approx(u[0] @ u[1], abs=1e-6)
    assert sims["across"][0] == pytest.approx(u[0] @ u[3], abs=1e-6)


# ---- classification metrics and the auto decision ------------------------------------
def test_classification_metrics_by_hand():
    true = np.array(["a", "a", "b", "b"], dtype=object)
    pred = np.array(["a", "b", "b", None], dtype=object)
    m = crossval.classification_metrics(true, pred, ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_category"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_category"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_category"]["b"]["recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["confusion"] == [[1, 1], [0, 1]]  # the None prediction counts as wrong, in no column


def test_coverage_curve_by_hand():
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([True, True, True, False, True, False])
    curve = crossval.coverage_curve(confidence, correct)
    assert curve["precision"].tolist() == pytest.approx([1, 1, 1, 0.75, 0.8, 4 / 6])
    assert curve["coverage"].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1])


def test_nested_operating_point_applies_each_folds_own_threshold():
    """Fold 0's fit chose 0.8, fold 1's 0.5: fold 0 accepts 0.9 (right), fold 1 accepts 0.8 (right)
    and 0.6 (wrong); fold 1 precision 0.5 < target; the figures are those of the held-out folds."""
    from indexer.categorizer.protocol import Fitted, NestedRun

    def fitted(conf, ok):
        return Fitted(
            view=None,
            train=None,
            modalities=("text",),
            entry={},
            inner_confidence=np.array(conf),
            inner_correct=np.array(ok),
        )

    folds = np.array([0, 1, 0, 1, 0, 1])
    run = NestedRun(
        predictions=[None] * 6, folds=folds, fits=[fitted([0.8, 0.7], [True, False]), fitted([0.5, 0.4], [True, False])]
    )
    result = crossval.ModalityResult(
        name="fused",
        rows=np.arange(6),
        true=np.array(["a"] * 6),
        predicted=np.array(["a"] * 6),
        confidence=np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3]),
        calibrated=np.zeros(6),
        correct=np.array([True, True, True, False, True, False]),
        level2_correct=np.ones(6, bool),
        metrics={},
    )
    point = crossval.operating_point([result], [run], target=0.99)
    assert [f["threshold"] for f in point["per_fold"]] == pytest.approx([0.8, 0.5])
    assert point["coverage"] == pytest.approx(3 / 6)
    assert point["precision"] == pytest.approx(2 / 3)
    assert point["folds_below_target"] == 1
    assert point["thresholds"]["min"] == pytest.approx(0.5) and point["thresholds"]["max"] == pytest.approx(0.8)
    # a fold whose training part never reaches the target sends everything to review
    run.fits[1] = fitted([0.5, 0.4], [False, False])
    point = crossval.operating_point([result], [run], target=0.99)
    assert point["folds_without_threshold"] == 1
    assert point["coverage"] == pytest.approx(1 / 6) and point["precision"] == pytest.approx(1.0)


def test_evaluation_stands_on_indexer_only():
    """House rule: evaluation imports indexer, never service."""
    import ast

    root = Path(__file__).resolve().parents[2] / "evaluation"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not any(n == "service" or n.startswith("service.") for n in names), path.name


def _rule(accepted: int, errors: int, coverage: float) -> dict:
    precision = None if not accepted else 1 - errors / accepted
    return {
        "coverage": {"mean": coverage, "sd": 0.0},
        "precision": {"mean": precision},
        "folds": 15,
        "folds_with_auto": 3 if accepted else 0,
        "folds_below_target": 1 if errors else 0,
        "accepted": accepted,
        "errors": errors,
    }


def test_the_first_screen_names_the_weakest_automated_kind_whichever_it_is():
    from evaluation.kinds import EMPIRICAL, decisions

    def sort(label, deployed):
        return {"label": label, "rules": {"deployed": deployed, EMPIRICAL: deployed}}

    table = {
        "sorts": {
            "photo+text": sort("photo + text", _rule(66, 0, 0.02)),
            "title": sort("title only", _rule(20, 0, 0.02)),
            "text": sort("text, no photo", _rule(500, 6, 0.13)),  # not one of the five kinds
            "photo": sort("photo only", _rule(0, 0, 0.0)),
            "mismatched": sort("mismatched", _rule(3, 3, 0.01)),  # its errors are its point, not a kind's
        },
        "fits": {},
        "target": 0.99,
        "delta": 0.1,
        "seeds": [0, 1, 2],
    }
    auto = decisions(table)
    assert auto["other_kinds_lowest_precision"] == pytest.approx(1 - 6 / 500)
    assert auto["other_kinds_lowest_kind"] == "text, no photo"
    assert auto["other_kinds_without_auto"] == ["photo only"]
    assert auto["mismatched_to_review"] == pytest.approx(0.99)
