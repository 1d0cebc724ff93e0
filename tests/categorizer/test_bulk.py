"""Bulk categorization (indexer.categorizer.bulk) and `python -m indexer predict`, on a tiny index
built with the fake encoder: results in input order, a problem per malformed line, the rest decided."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from fakes import FakeEncoder, make_dataset, product_image

from indexer.__main__ import main
from indexer.categorizer import Categorizer
from indexer.categorizer.bulk import BulkListing, BulkProblem, predict_listings, read_csv, read_json_lines
from indexer.pipeline.build import build_index
from indexer.store import open_store


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("bulk")
    dataset = make_dataset(root / "data", per_category=6)
    build_index(dataset["folder"], root / "index", encoder=FakeEncoder(), progress=False)
    return root / "index", dataset


def jpeg(category: str, i: int) -> bytes:
    out = io.BytesIO()
    product_image(category, i).save(out, "JPEG", quality=90)
    return out.getvalue()


def lines(*records) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records]


def test_json_lines_are_read_one_listing_per_line_with_a_problem_per_bad_line(tmp_path):
    (tmp_path / "w.jpg").write_bytes(jpeg("Watches", 1))
    resolve = {"w.jpg": tmp_path / "w.jpg"}.get
    items = list(
        read_json_lines(
            lines(
                {"id": "a", "title": "analog watch"},
                "",
                "{not json",
                {"title": 3},
                {"image": "w.jpg"},
                {"image": "../etc/passwd"},
                {"image": "gone.jpg"},
                {"image_base64": "***"},
                {"image_base64": base64.b64encode(b"x").decode(), "image": "w.jpg"},
                {"description": "   "},
                [1, 2],
            ),
            resolve,
        )
    )
    assert isinstance(items[0], BulkListing) and (items[0].line, items[0].id, items[0].title) == (
        1,
        "a",
        "analog watch",
    )
    assert [(i.line, i.status) for i in items if isinstance(i, BulkProblem)] == [
        (3, 400),
        (4, 400),
        (6, 400),
        (7, 404),
        (8, 400),
        (9, 400),
        (10, 400),
        (11, 400),
    ]
    assert items[3].image == tmp_path / "w.jpg" and items[3].line == 5


def test_csv_records_keep_their_file_line_numbers_and_the_catalogue_columns_work():
    text = (
        "uniq_id,product_name,description,image\n"
        'p1,"Baby romper","soft\ncotton",\n'  # a record over two lines
        "p2,Laptop battery,,\n"
        "p3,too,many,fields,here\n"
        "p4,,,\n"
    )
    items = list(read_csv(io.BytesIO(text.encode()), None))
    assert [(i.line, type(i).__name__) for i in items] == [
        (2, "BulkListing"),
        (4, "BulkListing"),
        (5, "BulkProblem"),
        (6, "BulkProblem"),
    ]
    assert items[0].description == "soft\ncotton" and items[1].id == "p2"
    bad = list(read_csv(io.BytesIO(b"colour,size\nred,M\n"), None))
    assert len(bad) == 1 and "none of the listing columns" in bad[0].detail
    latin1 = list(read_csv(io.BytesIO("title\ncaf\xe9 cr\xe8me\nbaby romper\n".encode("latin-1")), None))
    assert isinstance(latin1[0], BulkProblem) and "UTF-8" in latin1[0].detail
    assert isinstance(latin1[1], BulkListing)


def test_predictions_come_in_input_order_and_bad_lines_do_not_stop_the_rest(index):
    path, _ = index
    store, encoder = open_store(path), FakeEncoder()
    records = []
    for i in range(10):
        category = ["Watches", "Baby Care", "Computers"][i % 3]
        records.append(
            {"id": f"l{i}", "title": f"{category} item", "image_base64": base64.b64encode(jpeg(category, i)).decode()}
        )
    records.insert(4, "{broken")
    records.insert(7, {"id": "bad-photo", "image_base64": base64.b64encode(b"not a photo").decode()})
    results = list(predict_listings(store, encoder, Categorizer(store), read_json_lines(lines(*records)), batch_size=3))
    assert [r["line"] for r in results] == list(range(1, 13))
    problems = {r["line"]: r["status"] for r in results if "status" in r}
    assert problems == {5: 400, 8: 422}
    decided = [r for r in results if "status" not in r]
    assert len(decided) == 10 and all(r["decision"] in ("auto", "review") and r["reasons"] for r in decided)
    expected = [["Watches", "Baby Care", "Computers"][i % 3] for i in range(10)]
    assert [r["category"] for r in decided] == expected


def test_the_cli_writes_one_row_per_listing(index, tmp_path, monkeypatch, capsys, fake_profile):
    path, dataset = index
    listings = tmp_path / "listings.csv"
    with open(listings, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "image"])
        for row in dataset["rows"][:5]:
            writer.writerow([row["uniq_id"], row["product_name"], row["image"]])
        writer.writerow(["x", "", "missing.jpg"])
    out = tmp_path / "results.csv"
    images = dataset["folder"] / "Images"
    rc = main(
        [
            "predict",
            "--input",
            str(listings),
            "--images",
            str(images),
            "--out",
            str(out),
            "--index",
            str(path),
            "--quiet",
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["id"] for r in rows] == [r["uniq_id"] for r in dataset["rows"][:5]] + ["x"]
    truth = [json.loads(r["product_category_tree"])[0].split(" >> ")[0] for r in dataset["rows"][:5]]
    assert [r["category"] for r in rows[:5]] == truth
    assert rows[5]["status"] == "404" and "missing.jpg" in rows[5]["error"]
    printed = capsys.readouterr().out
    assert "6 listings" in printed and "problems: 1" in printed
    assert main(["predict", "--input", str(tmp_path / "x.txt"), "--out", str(out), "--index", str(path)]) == 2
