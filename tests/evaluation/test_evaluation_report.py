"""The report end to end on a small synthetic index (random vectors + generated images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from evaluation import headline
from evaluation.__main__ import main
from evaluation.progress import Progress
from evaluation.report import ReportOptions, build_report, conclusion, quick_options, render_html, threshold_story
from indexer.catalog.products import Product
from indexer.categorizer.protocol import near_duplicate_groups
from indexer.store import open_store
from indexer.store.local.index import publish, write_lock

CATEGORIES = ["Kitchen", "Toys", "Watches"]
PER_CATEGORY = 12
WORDS = {
    "Kitchen": "steel pan pot cook lid kitchen",
    "Toys": "doll play kid fun toy block",
    "Watches": "strap dial analog wrist watch time",
}
QUICK = dict(
    tsne_iterations=250,
    max_errors=10,
    progress=False,
    bovw_params={"keypoints": 120, "vocabulary": 16, "vocabulary_sample": 3000, "max_side": 160},
)


def _image(path: Path, category_index: int, seed: int) -> None:
    """A textured picture (ORB needs corners), colour by category."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (200, 160), "white")
    draw = ImageDraw.Draw(img)
    base = np.array([(200, 40, 40), (40, 160, 40), (40, 40, 200)][category_index])
    for _ in range(12):
        x, y = rng.integers(0, 170), rng.integers(0, 130)
        colour = tuple(int(v) for v in np.clip(base + rng.integers(-40, 40, 3), 0, 255))
        draw.rectangle([x, y, x + rng.integers(8, 30), y + rng.integers(8, 30)], fill=colour, outline="black")
    img.save(path, format="JPEG", quality=90)


def make_index(root: Path, categories=CATEGORIES, seed: int = 0) -> Path:
    """Publish a small index: clustered vectors per category, images on disk.

    Product 0 has no image; products 1 and 2 have byte-identical images (and vectors);
    the last two products carry the vectors of another category (label noise -> errors).
    """
    rng = np.random.default_rng(seed)
    images = root / "data" / "Images"
    images.mkdir(parents=True)
    products, img_vecs, img_rows, txt_vecs = [], [], [], []
    centres_img = rng.standard_normal((len(categories), 24)) * 2
    centres_txt = rng.standard_normal((len(categories), 16)) * 2
    n = len(categories) * PER_CATEGORY
    for i in range(n):
        c = i % len(categories)
        vec_c = (c + 1) % len(categories) if i >= n - 2 else c
        pid = f"prod{i:03d}"
        path = images / f"{pid}.jpg"
        if i != 0:
            _image(path, c, seed=1 if i in (1, 2) else 100 + i)
            img_vecs.append(centres_img[vec_c] + rng.standard_normal(24))
            img_rows.append(i)
        txt_vecs.append(centres_txt[vec_c] + rng.standard_normal(16))
        cat = categories[c]
        products.append(
            Product(
                id=pid,
                name=f"{cat} item {i}",
                description=f"{WORDS.get(cat, cat)} model {i}",
                brand=None,
                price=None,
                category_path=(cat, f"{cat} sub {i % 2}"),
                image=f"{pid}.jpg" if i != 0 else None,
                image_path=path if i != 0 else None,
            )
        )
    img_vecs[1] = img_vecs[0]  # rows 1 and 2: identical photos, identical vectors
    index = root / "index"
    manifest = {
        "profile": "synthetic",
        "model_id": "synthetic[test]",
        "model_ids": {"image": "random/image", "text": "random/text"},
        "categories": list(categories),
    }
    with write_lock(index):
        publish(
            index,
            products,
            {"image": (np.array(img_vecs), np.array(img_rows)), "text": (np.array(txt_vecs), np.arange(n))},
            manifest,
        )
    return index


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-synthetic")
    index = make_index(root)
    out = root / "report"
    metrics = build_report(index, out, ReportOptions(**QUICK))
    return index, out, metrics


def without_run_details(metrics: dict) -> dict:
    """What must not change between runs: all but timings, cache hits, provenance, and the
    run-time row of the headline table (the conclusion quotes them)."""
    out = {k: v for k, v in metrics.items() if k not in ("timings", "run", "conclusion", "provenance", "headline")}
    out["headline"] = [r for r in metrics["headline"] if r["figure"] != "report run time, in process (s)"]
    return out


def test_report_files_exist_and_html_is_self_contained(synthetic):
    _, out, _ = synthetic
    html = (out / "report.html").read_text()
    assert (out / "metrics.json").is_file()
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    for name in (
        "pca_variance",
        "ari_comparison",
        "neighbour_similarity",
        "precision_coverage",
        "tsne_image",
        "tsne_text",
        "tsne_fused",
        "tsne_tfidf",
        "tsne_bovw",
        "contingency_fused",
        "confusion_image",
        "confusion_text",
        "confusion_fused",
    ):
        assert name in figures, name
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") >= len(figures)
    for external in ("src='figures", 'src="figures', "src='http", 'src="http', "<link", "<script src"):
        assert external not in html, external
    assert "synthetic" in html and "common practice" in html


def test_metrics_structure_and_ranges(synthetic):
    _, out, metrics = synthetic
    data = json.loads((out / "metrics.json").read_text())
    assert data == json.loads(json.dumps(metrics))
    assert data["profile"] == "synthetic"
    assert data["n_products"] == len(CATEGORIES) * PER_CATEGORY
    assert set(data["clustering"]) == {"image", "text", "fused", "tfidf", "bovw"}
    for name, c in data["clustering"].items():
        for key in ("ari", "nmi", "homogeneity", "completeness"):
            assert isinstance(c[key], float) and -1.0 <= c[key] <= 1.0, (name, key)
        assert "common practice" in c["tsne_kmeans"]["note"]
        assert -1.0 <= c["tsne_kmeans"]["ari"] <= 1.0
    assert data["clustering"]["image"]["n"] == data["n_products"] - 1  # product 0 has no image
    assert data["clustering"]["fused"]["n"] == data["n_products"]
    assert data["clustering"]["fused"]["ari"] > 0.5  # clearly separated centres
    stab = data["clustering"]["fused"]["stability"]
    assert len(stab["ari_pca_space"]) == len(stab["kmeans_seeds"]) == 3
    assert len(stab["ari_tsne"]) == len(stab["tsne_perplexities"]) == 3
    assert stab["ari_pca_space"][0] == data["clustering"]["fused"]["ari"]
    assert stab["range_tsne"] == pytest.approx(max(stab["ari_tsne"]) - min(stab["ari_tsne"]))
    assert set(data["classification"]) == {"image", "text", "fused"}
    for c in data["classification"].values():
        assert 0.0 <= c["accuracy"] <= 1.0 and 0.0 <= c["macro_f1"] <= 1.0 and 0.0 <= c["level2_accuracy"] <= 1.0
        assert set(c["per_category"]) == set(CATEGORIES)
        assert np.array(c["confusion"]).sum() == c["pooled_predictions"] == c["n"] * len(data["cv"]["seeds"])
        assert c["nested"] is True and len(c["accuracy_per_seed"]) == len(data["cv"]["seeds"])
        assert c["accuracy"] == pytest.approx(np.mean(c["accuracy_per_seed"]))
        assert c["accuracy_over_folds"]["min"] <= c["accuracy"] <= c["accuracy_over_folds"]["max"]
    assert data["classification"]["image"]["left_out"] == 1
    assert data["classification"]["fused"]["accuracy"] > 0.8
    former = data["former_rule"]
    assert set(former) >= {"threshold", "coverage", "precision", "trade_off", "thresholds", "per_fold"}
    assert 0.0 <= former["coverage"] <= 1.0 and former["nested"] is True
    assert set(former["trade_off"]) == {"0.98", "0.99", "0.995"}
    # a stricter target never decides more products automatically
    covers = [former["trade_off"][t]["coverage"] for t in ("0.98", "0.99", "0.995")]
    assert covers == sorted(covers, reverse=True)
    assert len(former["per_fold"]) == data["cv"]["folds"] * len(data["cv"]["seeds"])
    # the automatic decisions stated first are the deployed rule's, read off the kinds table
    auto = data["auto_decision"]
    deployed = data["kinds"]["sorts"]["photo+text"]["rules"]["deployed"]
    assert auto["photo+text"]["coverage"] == deployed["coverage"]["mean"]
    assert auto["photo+text"]["folds"] == data["cv"]["folds"] * len(data["cv"]["seeds"])
    assert auto["guarantee"] and "90%" in auto["guarantee"]
    assert auto["deployment"] is None  # published without a deployment fit: every kind says "none in the manifest"
    assert all(k["deployment"] is None for k in data["thresholds"]["kinds"].values())
    random_split = data["random_split"]["fused"]
    assert random_split["accuracy"] >= 0.0 and random_split["seeds"] == data["cv"]["seeds"][:1]
    assert data["run"]["serving"]["knn_ms_median"] > 0 and data["run"]["serving"]["index_bytes_per_product"] > 0
    assert len(data["conclusion"]) >= 4 and data["conclusion"][0].startswith("Is it feasible?")
    assert data["near_duplicates"]["groups_spanning_folds"] == 0
    assert data["errors"]["count"] >= 2  # the two mislabeled products
    assert data["timings"]["total"] > 0 and "cross-validation" in data["timings"]


def test_identical_images_grouped_in_the_synthetic_index(synthetic):
    index, _, _ = synthetic
    groups = near_duplicate_groups(open_store(index))
    assert groups[1] == groups[2]


def test_misclassified_products_listed_with_thumbnails(synthetic):
    _, out, _ = synthetic
    html = (out / "report.html").read_text()
    errors_section = html.split("5. Error analysis")[1].split("<h2>Provenance")[0]
    assert html.index("Conclusion") < html.index("1. Representations") < html.index("<h2>Provenance")
    n = len(CATEGORIES) * PER_CATEGORY
    assert f"item {n - 1}" in errors_section or f"item {n - 2}" in errors_section
    assert "data:image/png;base64," in errors_section


def test_identical_inputs_identical_metrics(synthetic, tmp_path):
    index, out, metrics = synthetic
    again = build_report(index, tmp_path / "again", ReportOptions(**QUICK))
    assert again["run"]["bovw_cache_hit"] is False
    assert without_run_details(again) == without_run_details(metrics)
    cached = build_report(index, tmp_path / "again", ReportOptions(**QUICK))
    assert cached["run"]["bovw_cache_hit"] is True
    assert without_run_details(cached) == without_run_details(metrics)


def test_cli_quick_run(synthetic, tmp_path, capsys):
    index, _, _ = synthetic
    code = main(
        ["report", "--index", str(index), "--out", str(tmp_path / "cli"), "--skip-tsne", "--skip-bovw", "--quiet"]
    )
    assert code == 0
    data = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert set(data["clustering"]) == {"image", "text", "fused", "tfidf"}
    assert "tsne_kmeans" not in data["clustering"]["fused"]
    assert "report written to" in capsys.readouterr().out


def test_cli_missing_index_is_a_clear_error(tmp_path, capsys):
    code = main(["report", "--index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no index at" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_cli_without_index_flag(monkeypatch, tmp_path, capsys):
    """No --index and no INDEX_DIR: the default var/index is used; where there is none, a clear
    error (run from an empty folder, so a developer's own var/index is not reported on)."""
    monkeypatch.delenv("INDEX_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--out", str(tmp_path / "out")]) == 2
    assert "no index at var/index" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_single_category_index_refused(tmp_path):
    index = make_index(tmp_path, categories=["Only"])
    with pytest.raises(ValueError, match="at least 2"):
        build_report(index, tmp_path / "out", ReportOptions(**QUICK))


def test_report_on_an_index_with_a_lexical_channel(tmp_path):
    """The Categorizer adds the index's lexical (TF-IDF) channel to text queries; the report says so."""
    import inspect

    lexical = pytest.importorskip("indexer.store.lexical")
    if "lexical" not in inspect.signature(publish).parameters:
        pytest.skip("this store cannot publish a lexical channel")
    index = make_index(tmp_path)
    store = open_store(index)
    texts = [
        store.product_text(p) if hasattr(store, "product_text") else p.name + ". " + p.description
        for p in store.products
    ]
    vectors = {m: store.vectors_by_row(m) for m in store.modalities}
    with write_lock(index):
        publish(
            index,
            store.products,
            vectors,
            store.manifest,
            lexical=lexical.LexicalIndex.fit(texts, np.arange(len(texts))),
        )
    assert open_store(index).lexical is not None
    metrics = build_report(index, tmp_path / "out", ReportOptions(**{**QUICK, "skip_tsne": True, "skip_bovw": True}))
    assert metrics["classification"]["text"]["modalities"] == ["text", "lexical"]
    assert metrics["classification"]["fused"]["modalities"] == ["image", "text", "lexical"]
    assert metrics["classification"]["image"]["modalities"] == ["image"]
    assert 0.0 <= metrics["classification"]["fused"]["accuracy"] <= 1.0


# ---- the first screen: headline table, then the conclusion read off it ----------------------
def _text(fragment: str) -> str:
    """Visible text of an HTML fragment (tags and <style> dropped)."""
    import re

    fragment = re.sub(r"<style>.*?</style>", "", fragment, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", fragment).split())


def _row(figure: str, value: float | None, target: float = 0.9, op: str = ">=") -> headline.Row:
    return headline.Row(figure, target, op, value, headline.status_of(value, target, op))


def test_verdict_is_read_off_the_table():
    all_met = [_row("accuracy", 0.95), _row("run time", 100.0, 300.0, "<=")]
    some_missed = [_row("accuracy", 0.95), _row("coverage", 0.28), _row("run time", 301.0, 300.0, "<=")]
    none_met = [_row("accuracy", 0.5), _row("coverage", 0.28)]
    assert headline.verdict(all_met).startswith("Is it feasible? Yes: 2 of 2")
    partly = headline.verdict(some_missed)
    assert partly.startswith("Is it feasible? Partly: 1 of 3 headline targets met")
    assert "coverage 0.280 (target ≥ 0.9)" in partly and "run time 301.0 (target ≤ 300)" in partly
    assert "Yes" not in partly
    assert headline.verdict(none_met).startswith("Is it feasible? No: 0 of 2")
    unmeasured = headline.verdict([_row("accuracy", 0.95), _row("French queries", None)])
    assert unmeasured.startswith("Is it feasible? Partly") and "not measured in this run: French queries" in unmeasured
    with pytest.raises(ValueError, match="empty"):
        headline.verdict([])
    with pytest.raises(ValueError, match="unknown comparison"):
        headline.status_of(0.5, 0.9, ">")


def test_table_statuses_follow_the_values():
    metrics = {"classification": {"fused": {"accuracy": 0.96}, "text": {"accuracy": 0.5}}, "timings": {"total": 400.0}}
    rows = {r.figure: r for r in headline.table(metrics)}
    assert rows["nested CV accuracy, fused"].status == headline.MET
    assert rows["nested CV accuracy, text"].status == headline.MISSED
    assert rows["report run time, in process (s)"].status == headline.MISSED  # 400 s > 300 s
    assert (
        rows["nested CV accuracy, image"].status == headline.UNMEASURED
        and rows["nested CV accuracy, image"].value is None
    )


def test_conclusion_agrees_with_the_table_it_is_given(synthetic):
    """Feed the report's own metrics a table with misses: the conclusion must say so, whatever
    the accuracy figures say; and "Yes" only for a table with no miss."""
    _, _, metrics = synthetic
    misses = [
        _row("nested CV accuracy, fused", 0.946, 0.95),
        _row("automatic decisions: coverage (nested)", 0.278, 0.85),
        _row("nested CV accuracy, text", 0.97, 0.93),
    ]
    said = conclusion({**metrics, "headline": headline.as_json(misses)})[0]
    assert said.startswith("Is it feasible? Partly: 1 of 3 headline targets met")
    assert "nested CV accuracy, fused 0.946" in said and "automatic decisions: coverage (nested) 0.278" in said
    all_met = [_row("nested CV accuracy, fused", 0.99, 0.95)]
    assert conclusion({**metrics, "headline": headline.as_json(all_met)})[0].startswith("Is it feasible? Yes")
    # and the report's own table and conclusion agree
    rows = headline.from_json(metrics["headline"])
    assert metrics["conclusion"][0] == headline.verdict(rows)
    assert [r.figure for r in rows] == [t[0] for t in headline.TARGETS]
    for r in rows:
        assert r.status == headline.status_of(r.value, r.target, r.op)


def test_first_screen_is_the_headline_table_then_the_conclusion(synthetic):
    _, out, metrics = synthetic
    html = (out / "report.html").read_text()
    body = html.split("<body>", 1)[1]
    table_at = body.index("<table")
    assert body[table_at:].startswith("<table id='headline'>"), "the first table is not the headline table"
    before = _text(body[:table_at])
    assert before == "Automatic product categorization: feasibility report Headline figures", before
    after_table = body[table_at:].split("</table>", 1)[1]
    assert after_table.lstrip().startswith("<h2>Conclusion</h2>")
    # the table shows every headline row with its status, in order
    table = _text(body[table_at : table_at + body[table_at:].index("</table>")])
    position = 0
    for r in headline.from_json(metrics["headline"]):
        note = f" ({r.note})" if r.note else ""
        cell = f"{r.figure} {r.target_text} {r.value_text()}{note} {r.status}"
        assert cell in table[position:], cell
        position = table.index(cell, position)
    run_time = next(r for r in headline.from_json(metrics["headline"]) if r.figure == headline.RUN_TIME)
    assert run_time.note.startswith("load average ")  # a timed figure says how busy the machine was
    # the conclusion's first paragraph is the verdict
    first_paragraph = after_table.split("<p>", 1)[1].split("</p>", 1)[0]
    assert _text(first_paragraph) == _text(html_escape(metrics["conclusion"][0]))
    assert "Quick run" not in html


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_long_model_ids_only_in_provenance_at_the_end(tmp_path):
    index = make_index(tmp_path)
    long_id = "org/" + "very-long-model-name-" * 14  # a 300-character id, like a joined profile's
    store = open_store(index)
    vectors = {m: store.vectors_by_row(m) for m in store.modalities}
    with write_lock(index):
        publish(index, store.products, vectors, {**store.manifest, "model_id": long_id})
    options = ReportOptions(**{**QUICK, "skip_tsne": True, "skip_bovw": True})
    metrics = build_report(index, tmp_path / "out", options)
    html = (tmp_path / "out" / "report.html").read_text()
    provenance_at = html.index("<h2>Provenance</h2>")
    assert html.rfind("<h2>") == provenance_at, "Provenance is not the last section"
    assert long_id not in html[:provenance_at] and "random/image" not in html[:provenance_at]
    tail = html[provenance_at:]
    assert long_id in tail and "random/image" in tail and "git commit" in tail and "load average" in tail
    p = metrics["provenance"]
    assert p["model_id"] == long_id and p["date"] and p["git_commit"]
    assert len(p["machine"]["load_average_at_start"]) == 3 and len(p["load_average_at_end"]) == 3


def test_one_threshold_story_each_labelled(synthetic):
    """Each deployed threshold is said once, in its kind's labelled row; the former rule's cut (another
    scale) only in its own section, labelled as the raw vote share's."""
    _, _, metrics = synthetic
    m = json.loads(json.dumps(metrics))
    m["thresholds"]["kinds"]["photo+text"]["deployment"] = {
        "threshold": 0.8771,
        "n": 805,
        "coverage": 0.05,
        "precision": 1.0,
    }
    html = render_html(m, {}, [])
    assert html.count("Thresholds per kind of listing") == 1
    assert html.count("0.877") == 1  # the deployment threshold is said once, in its labelled row
    story = _text(html.split("Thresholds per kind of listing")[1].split("</table>")[0])
    assert "photo+text: photo with title and description" in story and "0.877 (in-sample on the 805 listings" in story
    ev = m["thresholds"]["kinds"]["photo+text"]["evaluation"]
    assert (f"{ev['mean']:.3f} (mean of" if ev["mean"] is not None else "none certified in any of") in story
    former = _text(html.split("Former rule, for comparison")[1].split("</table>")[0])
    assert "Not what the service does" in former and "on the raw vote share (another scale" in former
    # the story is derived from the folds' fits and the manifest, not set by hand
    fits = metrics["kinds"]["fits"]["kinds"]
    story = threshold_story(metrics["kinds"], metrics["auto_decision"]["deployment"])
    assert {k: v["evaluation"]["mean"] for k, v in story["kinds"].items()} == {
        k: v["thresholds"]["mean"] for k, v in fits.items()
    }


def test_first_screen_states_the_deployed_rule_and_the_former_one_comes_later(synthetic):
    """Headline, conclusion and first table carry the deployed rule's figures (with the guarantee
    and the empirical per-kind rule beside them); the former raw-share rule only further down."""
    _, out, metrics = synthetic
    m = json.loads(json.dumps(metrics))
    pt = m["auto_decision"]["photo+text"]
    pt.update(
        coverage=0.023,
        precision=1.0,
        errors=0,
        accepted=66,
        folds=15,
        folds_with_auto=2,
        folds_holding=2,
        folds_below_target=0,
    )
    emp = m["auto_decision"]["sorts"]["photo+text"]["empirical"]
    emp.update(coverage=0.78, precision=0.9919, folds=15, folds_below_target=4)
    m["former_rule"]["coverage"] = 0.711
    m["headline"] = headline.as_json(headline.table(m))
    rows = {r.figure: r for r in headline.from_json(m["headline"])}
    assert rows[headline.AUTO_COVERAGE].value == 0.023 and rows[headline.AUTO_COVERAGE].status == headline.MISSED
    assert "not guaranteed: 4 of 15 folds fell below" in rows[headline.AUTO_COVERAGE].note
    assert (
        rows[headline.FOLDS_BELOW].value_text() == "0"
        and "13 of 15 folds decided nothing" in rows[headline.FOLDS_BELOW].note
    )
    said = " ".join(conclusion(m))
    assert "What is guaranteed: " + m["auto_decision"]["guarantee"] in said
    assert "2.3 % decided automatically at a measured precision of 100.0 % (target 80%: missed)" in said
    assert "99% on average, not guaranteed: 4 of 15 folds fell below" in said
    assert "71.1" not in said  # the former rule's coverage is not a conclusion
    m["conclusion"] = conclusion(m)
    html = render_html(m, {}, [])
    first = html.split("<h2>1. Representations")[0]
    assert "Automatic decisions per kind of listing (the service's rule, nested)" in first
    assert "Former rule" not in first and "0.711" not in first
    assert html.index("<h2>1. Representations") < html.index("Former rule, for comparison")
    assert _text(html).count("What is guaranteed") >= 1


def test_progress_lines_count_up_to_the_plan(synthetic, tmp_path, capsys):
    index, _, _ = synthetic
    code = main(["report", "--index", str(index), "--out", str(tmp_path / "q"), "--quick"])
    assert code == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("step ")]
    done = [line for line in lines if " done in " in line]
    n = int(done[0].split()[1].split("/")[1])
    assert [int(line.split()[1].split("/")[0]) for line in done] == list(range(1, n + 1))
    assert done[-1].startswith(f"step {n}/{n} figures done in") and "(elapsed" in done[-1]
    assert "quick run: not the reported figures" in captured.out
    data = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert data["quick"] is True and len(data["cv"]["seeds"]) == 1 and data["random_split"] is None
    assert "tsne_kmeans" not in data["clustering"]["fused"] and "bovw" not in data["clustering"]
    html = (tmp_path / "q" / "report.html").read_text()
    assert html.index("Quick run: not the reported figures") < html.index("<table id='headline'>")
    assert "(1 fold seed instead of 3, " in html


def test_quiet_prints_no_progress(synthetic, tmp_path, capsys):
    index, _, _ = synthetic
    assert main(["report", "--index", str(index), "--out", str(tmp_path / "q"), "--quick", "--quiet"]) == 0
    assert "step " not in capsys.readouterr().err


def test_heartbeat_during_a_long_step():
    import io
    import time

    stream = io.StringIO()
    progress = Progress(["one", "two"], stream=stream, heartbeat=0.05)
    with progress.step("one"):
        progress.note("fold seed 1 of 3")
        time.sleep(0.3)
    with progress.step("two"):
        pass
    lines = stream.getvalue().splitlines()
    beats = [line for line in lines if "in this step" in line]
    assert len(beats) >= 2 and all(b.startswith("step 1/2 one ... fold seed 1 of 3,") for b in beats)
    assert lines[-1].startswith("step 2/2 two done in")
    assert set(progress.timings) == {"one", "two"} and progress.timings["one"] >= 0.3


def test_quick_options_keep_the_seed_and_mark_the_run():
    quick = quick_options(ReportOptions(seed=7))
    assert quick.quick and quick.seeds == (7,) and quick.folds == ReportOptions().folds
    assert quick.skip_tsne and quick.skip_bovw and not quick.stability_checks and not quick.random_split
    assert not ReportOptions().quick


def test_heartbeat_child_prints_while_told_a_step_runs():
    """The child process beats on its own clock (a GIL-holding C call in the report cannot stop it)."""
    import subprocess
    import sys
    import time

    from evaluation import progress

    start = time.time()
    child = subprocess.Popen(
        [sys.executable, "-I", progress.__file__, "0.1", str(start)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    child.stdin.write(json.dumps({"label": "step 3/9 t-sne image", "start": time.time(), "note": "fold seed 1"}) + "\n")
    child.stdin.flush()
    time.sleep(0.5)
    child.stdin.write(json.dumps({"label": "", "start": 0.0, "note": ""}) + "\n")  # the step ended
    child.stdin.flush()
    time.sleep(0.4)
    _, err = child.communicate(timeout=10)  # closing stdin ends the child
    assert child.returncode == 0
    beats = err.splitlines()
    assert len(beats) >= 2, err
    assert all(b.startswith("step 3/9 t-sne image ... fold seed 1,") and "in this step (elapsed" in b for b in beats)
