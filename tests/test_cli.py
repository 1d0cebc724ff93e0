"""`python -m indexer build | add | info | delete | relabel | history`: in-process with a registered fake profile, and
as a subprocess for the errors a newcomer meets first (exit 2, one clear line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import FAKE_PROFILE, make_dataset

from indexer.__main__ import main
from indexer.store import AuditLog, open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", per_category=3, corrupt=1, missing=1)


def run_cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "INDEX_DIR")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "indexer", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_build_add_info_in_process(fake_profile, dataset, tmp_path, capsys):
    index = tmp_path / "index"
    summary_json = tmp_path / "summary.json"
    rc = main(
        [
            "build",
            "--data",
            str(dataset["folder"]),
            "--out",
            str(index),
            "--profile",
            FAKE_PROFILE,
            "--quiet",
            "--report",
            "--json",
            str(summary_json),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "products: 9; indexed image: 7, text: 9" in out
    assert "skipped/reported: missing_image 1, unreadable_image 1" in out
    # --report lists every finding, the undecodable image included
    assert f"missing_image {dataset['missing_ids'][0]}" in out
    assert f"unreadable_image {dataset['corrupt_ids'][0]}" in out
    summary = json.loads(summary_json.read_text())
    assert summary["indexed"] == {"image": 7, "text": 9} and summary["profile"] == FAKE_PROFILE

    rc = main(["info", str(index)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "version 000001" in out and "profile fake: fake[image=fake/image-v1,text=fake/text-v1]" in out
    assert "products 9; image 7 x 16, text 9 x 12" in out
    assert "validation: missing_image 1, unreadable_image 1" in out
    assert "categories: Baby Care, Computers, Watches" in out
    rc = main(["info", str(index), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["counts"]["products"] == 9

    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="q", offset=50)
    rc = main(["add", "--index", str(index), "--data", str(extra["folder"]), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "added 3 products (0 already indexed); index now holds 12 products" in out
    assert fake_profile[-1].calls == {"image": 3, "text": 3}
    # adding the same folder again adds nothing
    rc = main(["add", "--index", str(index), "--data", str(extra["folder"]), "--quiet"])
    assert rc == 0 and "nothing to add: all 3 products" in capsys.readouterr().out
    assert len(open_store(index).products) == 12
    # the add went to a delta segment of version 1; compact folds it into version 2
    rc = main(["info", str(index)])
    assert rc == 0 and "deltas: 1 segments, 3 products" in capsys.readouterr().out
    rc = main(["compact", str(index)])
    out = capsys.readouterr().out
    assert rc == 0 and "compacted 1 delta segments (3 products) of version 000001 into version 000002" in out
    store = open_store(index)
    assert store.version == "000002" and store.deltas == () and len(store.products) == 12
    rc = main(["compact", str(index)])
    assert rc == 0 and "no deltas, nothing to compact" in capsys.readouterr().out


def test_env_defaults(fake_profile, dataset, tmp_path, monkeypatch, capsys):
    index = tmp_path / "env-index"
    monkeypatch.setenv("DATA_DIR", str(dataset["folder"]))
    monkeypatch.setenv("INDEX_DIR", str(index))
    monkeypatch.setenv("ENCODER_PROFILE", FAKE_PROFILE)
    monkeypatch.setenv("INDEX_FACTORY", "HNSW32")
    assert main(["build", "--quiet"]) == 0
    assert open_store(index).manifest["index_factory"] == "HNSW32"
    capsys.readouterr()
    assert main(["info"]) == 0
    assert f"index {index} version 000001" in capsys.readouterr().out


def test_add_to_missing_index_in_process(fake_profile, dataset, tmp_path, capsys):
    rc = main(["add", "--index", str(tmp_path / "none"), "--data", str(dataset["folder"])])
    assert rc == 2 and "error: no index at" in capsys.readouterr().err


def test_build_missing_data_dir_exits_2(tmp_path):
    missing = tmp_path / "no-such-dataset"
    proc = run_cli("build", "--data", str(missing), "--out", str(tmp_path / "index"))
    assert proc.returncode == 2
    assert f"error: data folder {missing} does not exist (set DATA_DIR or --data)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "index").exists()  # nothing created before the data is found


def test_build_without_data_exits_2():
    proc = run_cli("build")
    assert proc.returncode == 2
    assert "error: no dataset: pass --data DIR or set DATA_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_build_folder_without_catalog_exits_2(tmp_path):
    proc = run_cli("build", "--data", str(tmp_path), "--out", str(tmp_path / "index"))
    assert proc.returncode == 2 and "expected flipkart_com-ecommerce_sample_1050.csv" in proc.stderr


def test_info_missing_index_exits_2(tmp_path):
    proc = run_cli("info", str(tmp_path / "no-index"))
    assert proc.returncode == 2
    assert f"error: no index at {tmp_path / 'no-index'}" in proc.stderr
    assert "python -m indexer build" in proc.stderr and "Traceback" not in proc.stderr


def test_info_subprocess_on_fake_index(fake_profile, dataset, tmp_path, capsys):
    index = tmp_path / "index"
    assert (
        main(["build", "--data", str(dataset["folder"]), "--out", str(index), "--profile", FAKE_PROFILE, "--quiet"])
        == 0
    )
    proc = run_cli("info", str(index))  # no encoder needed to describe an index
    assert proc.returncode == 0, proc.stderr
    assert "products 9; image 7 x 16, text 9 x 12" in proc.stdout


def test_add_with_unknown_profile_exits_2(fake_profile, dataset, tmp_path, capsys):
    index = tmp_path / "index"
    assert (
        main(["build", "--data", str(dataset["folder"]), "--out", str(index), "--profile", FAKE_PROFILE, "--quiet"])
        == 0
    )
    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="q", offset=50)
    # a fresh process has no "fake" profile registered: refused, not crashed
    proc = run_cli("add", "--index", str(index), "--data", str(extra["folder"]))
    assert proc.returncode == 2 and "unknown encoder profile 'fake'" in proc.stderr
    assert len(open_store(index).products) == 9


def test_unknown_profile_rejected_by_argparse():
    proc = run_cli("build", "--data", "x", "--profile", "nope")
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr


def test_pipeline_encodes_ingests_and_copies_into_milvus(fake_profile, dataset, tmp_path, monkeypatch, capsys):
    """`pipeline` = encode (stubbed here: Ray is exercised by tests/test_encode_ray.py) + ingest + to-milvus."""
    from shard_rows import row, write_rows

    import indexer.pipeline.encode as encode_module

    calls = []

    class Summary:
        def lines(self):
            return ["encoded 12 products (stub)"]

    def fake_encode(data, out, **options):
        calls.append((data, options["ray_address"], options["workers"]))
        write_rows(Path(out), [[row(i) for i in range(12)]])
        return Summary()

    monkeypatch.setattr(encode_module, "encode_catalog", fake_encode)
    shards, index, db = tmp_path / "shards", tmp_path / "index", tmp_path / "catalogue.db"
    args = ["pipeline", "--data", str(dataset["folder"]), "--shards", str(shards), "--out", str(index)]
    rc = main([*args, "--profile", FAKE_PROFILE, "--workers", "3", "--store", str(db)])
    out = capsys.readouterr().out
    assert rc == 0 and calls == [(str(dataset["folder"]), None, 3)]
    assert "encoded 12 products (stub)" in out and "products: 12" in out and "into Milvus collection" in out
    assert len(open_store(index).products) == 12
    from indexer.store.milvus import MilvusIndexStore

    copied = MilvusIndexStore.open(db)
    assert [p.id for p in copied.products] == [p.id for p in open_store(index).products]


def test_delete_relabel_history(fake_profile, tmp_path, capsys):
    """`delete`, `relabel` and `history` on an index built and added to by the CLI: every change
    is in the product's trail; bad input exits 2 with one line and changes nothing."""
    data = make_dataset(tmp_path / "data", per_category=2)
    index = tmp_path / "index"
    assert (
        main(["build", "--data", str(data["folder"]), "--out", str(index), "--profile", FAKE_PROFILE, "--quiet"]) == 0
    )
    extra = make_dataset(tmp_path / "extra", per_category=1, prefix="q", offset=50)
    assert main(["add", "--index", str(index), "--data", str(extra["folder"]), "--quiet"]) == 0
    added, first, second = extra["rows"][0]["uniq_id"], data["rows"][0]["uniq_id"], data["rows"][1]["uniq_id"]
    live = data["rows"][2]["uniq_id"]
    capsys.readouterr()

    assert main(["relabel", str(index), added, "Garden >> Hoses >> Green"]) == 0
    out = capsys.readouterr().out
    assert f"relabelled {added}: Watches >> Watches Sub >> Watches item 50 -> Garden >> Hoses >> Green" in out
    assert "'Garden' is a new top-level category" in out
    assert main(["relabel", str(index), added, " Garden>>Hoses >> Green "]) == 0
    assert "already in Garden >> Hoses >> Green: nothing changed" in capsys.readouterr().out
    assert main(["delete", str(index), first, second, first]) == 0
    assert f"deleted 2 product(s) ({first}, {second}); index now holds 7 products" in capsys.readouterr().out
    store = open_store(index)
    assert store.row_of(first) is None and store.products[store.row_of(added)].category == "Garden"
    assert main(["info", str(index)]) == 0
    assert "deltas: 3 segments, 3 products, 2 deleted, 1 relabelled" in capsys.readouterr().out

    assert main(["history", str(index), added]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:3] for line in lines] == [["add", "cli"], ["relabel", "cli"]]
    assert lines[1].endswith("Watches >> Watches Sub >> Watches item 50 -> Garden >> Hoses >> Green")
    assert main(["history", str(index), first, "--json"]) == 0
    (event,) = json.loads(capsys.readouterr().out)
    assert event["action"] == "delete" and event["before"]["id"] == first and event["after"] is None
    assert main(["history", str(index), "never-seen"]) == 0
    assert "no recorded change for product never-seen" in capsys.readouterr().out

    for args, message in (
        (["delete", str(index), first], f"error: no product with id '{first}' in the index"),  # deleted already
        (["delete", str(index), live, "nope"], "error: no product with id 'nope' in the index"),  # all or nothing
        (["relabel", str(index), "nope", "A >> B"], "error: no product with id 'nope'"),
        (["relabel", str(index), added, "A >>  >> B"], "error: a category path has an empty level"),
        (["relabel", str(index), added, " >> "], "error: a category path has an empty level"),
        (["delete", str(tmp_path / "none"), first], "error: no index at"),
        (["history", str(tmp_path / "none"), first], "error: no index at"),
    ):
        assert main(args) == 2, args
        assert capsys.readouterr().err.startswith(message), args
    again = open_store(index)
    assert again.version == store.version and again.deltas == store.deltas  # nothing written
    assert again.row_of(live) is not None and AuditLog(index).history(live) == []


def test_delete_unknown_id_subprocess_exits_2_with_one_line(fake_profile, dataset, tmp_path):
    index = tmp_path / "index"
    assert (
        main(["build", "--data", str(dataset["folder"]), "--out", str(index), "--profile", FAKE_PROFILE, "--quiet"])
        == 0
    )
    proc = run_cli("delete", str(index), "nope")  # no encoder needed to delete
    assert proc.returncode == 2 and proc.stderr.strip() == "error: no product with id 'nope' in the index"
    proc = run_cli("relabel", str(index), dataset["rows"][0]["uniq_id"], "Garden >> Hoses")
    assert proc.returncode == 0 and "relabelled" in proc.stdout, proc.stderr


def test_one_index_dir_default_for_cli_service_and_evaluation(monkeypatch):
    """make, the CLI, the service and the evaluation read the same folder when INDEX_DIR is unset or set."""
    from evaluation.__main__ import main as evaluation_main
    from indexer.__main__ import parser
    from indexer.settings import DEFAULT_INDEX_DIR
    from service.config import Config

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert f"INDEX_DIR ?= {DEFAULT_INDEX_DIR}" in makefile
    for value, expected in ((None, DEFAULT_INDEX_DIR), ("elsewhere/idx", "elsewhere/idx")):
        if value is None:
            monkeypatch.delenv("INDEX_DIR", raising=False)
        else:
            monkeypatch.setenv("INDEX_DIR", value)
        assert parser().parse_args(["info"]).index == expected
        assert parser().parse_args(["build"]).out == expected
        assert Config.from_env().index_dir == expected
        seen: dict[str, str] = {}

        def fake_report(index, *args, seen=seen, **kwargs):
            seen["index"] = str(index)
            raise SystemExit(0)

        monkeypatch.setattr("evaluation.__main__.build_report", fake_report)
        with pytest.raises(SystemExit):
            evaluation_main(["report", "--out", "/nonexistent-report-dir"])
        assert seen["index"] == expected


def test_floats_are_rounded_for_people():
    from indexer.__main__ import _rounded

    assert _rounded({"image": 0.30000001192092896, "text": [0.35000000149, 1], "k": 15}) == {
        "image": 0.3,
        "text": [0.35, 1],
        "k": 15,
    }


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`python -m indexer info --json | head -1`: the pipe closes before the CLI writes."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "INDEX_DIR")}
    code = (
        "import sys\n"
        "from indexer import __main__ as cli\n"
        "def fake(args):\n"
        "    for _ in range(100000):\n"
        "        print('x' * 100)\n"
        "    return 0\n"
        "cli.cmd_info = fake  # parser() looks the command up when it is built\n"
        "sys.exit(cli.main(['info', 'anywhere']))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_info_tells_the_threshold_of_each_kind():
    """`info` says the served rule as the service applies it: per kind of listing its threshold on
    the combiner score or "review", never one threshold for all (nor "not calibrated" when the fit
    ran and certified nothing)."""
    from indexer.__main__ import categorizer_lines

    fitted = {
        "k": 10,
        "weights": {"image": 0.3, "text": 0.7},
        "threshold": 0.97,
        "threshold_rule": {"method": "learn-then-test, fixed sequence", "target": 0.99, "delta": 0.1},
        "kinds": {
            "photo+text": {"threshold": 0.97, "n": 805, "coverage": 0.051},
            "title": {"threshold": None, "n": 890, "coverage": 0.0},
        },
        "disagreement": {"threshold": 0.5643},
    }
    lines = categorizer_lines(fitted)
    assert "one threshold per kind of listing (learn-then-test, fixed sequence, precision 0.99 with 90%" in lines[0]
    assert "  photo+text: auto when the combiner score >= 0.9700 (in-sample coverage 0.051 of 805" in lines[1]
    assert lines[2] == "  title: review (no threshold certified on 890 calibration listings)"
    assert lines[3] == "  photo and text disagreeing by >= 0.564: review"
    none_certified = {**fitted, "threshold": None, "kinds": {"title": {"threshold": None, "n": 890}}}
    assert not any("not calibrated" in line for line in categorizer_lines(none_certified))
    legacy = {"k": 10, "weights": {"text": 1.0}, "threshold": 0.876, "cv": {"accuracy": 0.95}}
    assert "auto when confidence >= 0.876" in categorizer_lines(legacy)[0]
    skipped = {"threshold": None, "cv": {"skipped": "too few products to cross-validate (3)"}}
    assert categorizer_lines(skipped) == [
        "categorizer: no auto threshold (too few products to cross-validate (3)): every decision is 'review'"
    ]
    assert categorizer_lines({"calibrated": False})[0].startswith("categorizer: not calibrated")


def test_rebuild_carries_or_forgets_the_changes(fake_profile, tmp_path, capsys):
    """`build` over an index with a delete and a relabel says what it carried; `--forget-changes`
    brings both back as in the CSV, and `history` says a rebuild did it."""
    data = make_dataset(tmp_path / "data", per_category=2)
    index = tmp_path / "index"
    command = ["build", "--data", str(data["folder"]), "--out", str(index), "--profile", FAKE_PROFILE, "--quiet"]
    assert main(command) == 0
    gone, moved = data["rows"][0]["uniq_id"], data["rows"][2]["uniq_id"]
    assert main(["delete", str(index), gone]) == 0 and main(["relabel", str(index), moved, "Garden >> Hoses"]) == 0
    capsys.readouterr()
    assert main(command) == 0
    assert (
        "catalogue changes carried from the audit trail: 1 deleted, 1 relabelled, 0 re-added" in capsys.readouterr().out
    )
    store = open_store(index)
    assert store.row_of(gone) is None and store.products[store.row_of(moved)].category == "Garden"
    assert main([*command, "--forget-changes"]) == 0
    out = capsys.readouterr().out
    assert "catalogue changes forgotten (--forget-changes), back as in the CSV: 1 deleted, 1 relabelled" in out
    store = open_store(index)
    assert store.row_of(gone) is not None and store.products[store.row_of(moved)].category != "Garden"
    assert main(["history", str(index), gone]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["delete", "rebuild"] and "back as in the CSV" in lines[1]
