"""Catalog: lenient category-tree parsing, and a validation report that never crashes."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fakes import product_image, product_row, write_csv

from indexer.catalog.products import (
    CSV_NAME,
    CatalogError,
    Product,
    ValidationReport,
    find_csv,
    format_category_path,
    load_catalog,
    parse_category_tree,
)

EXPECTED = ("Watches", "Wrist Watches", "Sonata Wrist Watches")


@pytest.mark.parametrize(
    "raw",
    [
        '["Watches >> Wrist Watches >> Sonata Wrist Watches"]',  # JSON list (the usual form)
        "Watches >> Wrist Watches >> Sonata Wrist Watches",  # bare string
        '"Watches >> Wrist Watches >> Sonata Wrist Watches"',  # JSON string
        '[""Watches >> Wrist Watches >> Sonata Wrist Watches""]',  # CSV quotes left doubled
        "['Watches >> Wrist Watches >> Sonata Wrist Watches']",  # Python-style single quotes
        '  ["Watches>>Wrist   Watches >>Sonata Wrist Watches"]\n',  # odd spacing
    ],
)
def test_category_tree_quoting_variants(raw):
    assert parse_category_tree(raw) == EXPECTED


def test_category_tree_truncated_levels():
    # the published CSV cuts long paths with "...": the cut level keeps its text ...
    assert parse_category_tree('["Watches >> Wrist Watches >> Sonata Wrist Wat..."]') == (
        "Watches",
        "Wrist Watches",
        "Sonata Wrist Wat...",
    )
    # ... but a level cut down to nothing but the dots is no level at all
    assert parse_category_tree('["Watches >> Wrist Watches >> ..."]') == ("Watches", "Wrist Watches")


def test_category_tree_keeps_inner_apostrophes():
    assert parse_category_tree("""["Baby Care >> Baby Girls' Clothes >> Kid's Top"]""") == (
        "Baby Care",
        "Baby Girls' Clothes",
        "Kid's Top",
    )
    assert parse_category_tree("""['Kids >> Boys' >> Shorts']""") == ("Kids", "Boys'", "Shorts")


@pytest.mark.parametrize("raw", [None, float("nan"), "", "   ", "[]", '[""]', '[""]', '""'])
def test_category_tree_missing(raw):
    assert parse_category_tree(raw) == ()


def test_format_category_path_round_trips():
    assert parse_category_tree(format_category_path(EXPECTED)) == EXPECTED


def test_product_record_round_trip(tmp_path):
    product = Product("id1", "Name", "Desc", None, 12.5, EXPECTED, "id1.jpg", tmp_path / "id1.jpg")
    record = product.to_record()
    assert json.loads(json.dumps(record)) == record  # JSON-safe
    assert Product.from_record(record) == product
    assert product.category == "Watches"
    assert Product("x", "", "", None, None, (), None).category is None


@pytest.mark.integration
def test_every_real_row_parses(real_data_dir):
    catalog = load_catalog(real_data_dir)
    assert len(catalog) == 945
    assert all(p.category_path for p in catalog.products)
    tops = Counter(p.category for p in catalog.products)
    assert len(tops) == 7
    assert set(tops.values()) == {135}  # 150 per category minus 15 held back
    assert "missing_category" not in catalog.report.counts()
    assert catalog.report.counts() == {"missing_image": 3}
    assert all(p.image_path is None for p in catalog.products if p.id in catalog.report.ids("missing_image"))
    assert sum(p.image_path is not None for p in catalog.products) == 942


def _synthetic(tmp_path):
    """Five rows: clean, missing image file, empty text, duplicate id, no image named."""
    images = tmp_path / "Images"
    images.mkdir(parents=True)
    rows = [
        product_row("good", "Watches", 0),
        product_row("noimage", "Computers", 1),
        product_row("notext", "Baby Care", 2, product_name="", description=""),
        product_row("good", "Computers", 3),  # duplicate id
        product_row("nofile", "Watches", 4, image=""),
        product_row("", "Watches", 5, image="noid.jpg", product_category_tree=""),  # no id, no category
    ]
    for pid in ("good", "notext", "noid"):
        product_image("Watches", 0).save(images / f"{pid}.jpg")
    write_csv(tmp_path, rows)
    return rows


def test_validation_report_lists_problems_and_keeps_other_modality(tmp_path):
    _synthetic(tmp_path)
    catalog = load_catalog(tmp_path)
    report = catalog.report
    by_id = {p.id: p for p in catalog.products}
    assert report.counts() == {"duplicate_id": 1, "empty_text": 1, "missing_category": 1, "missing_image": 2}
    assert sorted(report.ids("missing_image")) == ["nofile", "noimage"]
    assert report.ids("empty_text") == ["notext"]
    assert report.ids("duplicate_id") == ["good"]
    assert "line 5" in report.issues["duplicate_id"][0]["detail"]
    assert (
        "noimage.jpg not found" in report.issues["missing_image"][0]["detail"]
        or "noimage.jpg not found" in report.issues["missing_image"][1]["detail"]
    )
    # the first occurrence of a duplicated id wins; nothing else is dropped
    assert len(catalog) == 5
    assert by_id["good"].category == "Watches"
    # a product without image keeps its text, and one without text keeps its image
    assert by_id["noimage"].image_path is None and by_id["noimage"].description
    assert by_id["notext"].image_path == tmp_path / "Images" / "notext.jpg"
    assert by_id["notext"].category == "Baby Care"
    # a row with no id gets a stable stand-in id, and no category is reported, not fatal
    noid = by_id["row-7"]
    assert noid.category_path == () and noid.image_path is not None
    assert report.ids("missing_category") == ["row-7"]
    # every finding renders as one readable line
    lines = report.lines()
    assert len(lines) == 5 and any(line.startswith("missing_image noimage: ") for line in lines)
    assert catalog.categories() == ["Baby Care", "Computers", "Watches"]


def test_price_and_brand_parsing(tmp_path):
    write_csv(
        tmp_path,
        [
            product_row("a", "Watches", 0, discounted_price="12.5", brand=""),
            product_row("b", "Watches", 1, discounted_price="n/a", retail_price=""),
            product_row("c", "Watches", 2, discounted_price="", retail_price="80"),  # falls back to retail
        ],
    )
    (tmp_path / "Images").mkdir()
    products = {p.id: p for p in load_catalog(tmp_path).products}
    assert products["a"].price == 12.5 and products["a"].brand is None
    assert products["b"].price is None and products["b"].brand == "Brand1"
    assert products["c"].price == 80.0


def test_unreadable_catalog_gives_clear_error(tmp_path):
    (tmp_path / CSV_NAME).write_bytes(b"\xff\xfe\x00garbage\x00\xff" * 50)
    with pytest.raises(CatalogError, match="cannot read catalog|lacks columns"):
        load_catalog(tmp_path)


def test_catalog_without_required_columns(tmp_path):
    (tmp_path / CSV_NAME).write_text("uniq_id,product_name\n1,x\n")
    with pytest.raises(CatalogError, match="lacks columns: product_category_tree, image, description"):
        load_catalog(tmp_path)


def test_catalog_path_that_is_a_directory(tmp_path):
    (tmp_path / CSV_NAME).mkdir()
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path)


def test_find_csv(tmp_path):
    with pytest.raises(CatalogError, match="does not exist.*DATA_DIR"):
        find_csv(tmp_path / "nope")
    with pytest.raises(CatalogError, match="found 0"):
        find_csv(tmp_path)
    (tmp_path / "MANIFEST.csv").write_text("image\n")
    (tmp_path / "other.csv").write_text("x\n")
    assert find_csv(tmp_path) == tmp_path / "other.csv"  # MANIFEST.csv is not a catalog
    (tmp_path / "third.csv").write_text("x\n")
    with pytest.raises(CatalogError, match="found 2"):
        find_csv(tmp_path)
    (tmp_path / CSV_NAME).write_text("x\n")
    assert find_csv(tmp_path) == tmp_path / CSV_NAME


def test_report_merge_and_dict():
    a, b = ValidationReport(), ValidationReport()
    a.add("missing_image", "1", "x.jpg not found")
    b.add("missing_image", "2")
    b.add("unreadable_image", "3", "truncated")
    a.merge(b)
    assert a.counts() == {"missing_image": 2, "unreadable_image": 1}
    assert a.to_dict()["issues"]["missing_image"][1] == {"id": "2", "detail": ""}
    assert a.lines() == ["missing_image 1: x.jpg not found", "missing_image 2", "unreadable_image 3: truncated"]
