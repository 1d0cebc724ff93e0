"""How `make test` shares the suite between its pytest-xdist workers (tests/xdist_groups.py): the
order and groups on fake items, and a real two-worker run of this module's probes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from xdist_groups import GROUPS_FILE, SERVER_GROUP, order_and_record

ROOT = Path(__file__).resolve().parents[1]


def fake_item(nodeid: str, fixtures: dict[str, str] | None = None, marked_server: bool = False):
    """What order_and_record reads of a collected test: its id, fixtures (name -> scope), marker."""
    fixtures = fixtures or {}
    return SimpleNamespace(
        nodeid=nodeid,
        fixturenames=list(fixtures),
        _fixtureinfo=SimpleNamespace(name2fixturedefs={n: [SimpleNamespace(scope=s)] for n, s in fixtures.items()}),
        get_closest_marker=lambda name: object() if marked_server and name == "milvus_server" else None,
    )


def test_order_puts_the_real_index_first_then_groups_then_single_tests(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    worker_temp = tmp_path / "popen-gw1"  # a worker's basetemp: the run's folder is its parent
    config = SimpleNamespace(_tmp_path_factory=SimpleNamespace(getbasetemp=lambda: worker_temp))
    items = [
        fake_item("a.py::single_with_index", {"real_index": "session"}),
        fake_item("a.py::single"),
        fake_item("r.py::t1", {"report": "module", "real_index": "session"}),
        fake_item("r.py::t2", {"report": "module"}),
        fake_item("c.py::t[server]", {"store": "function"}, marked_server=True),
        fake_item("m.py::t1", {"milvus_server": "session", "service_index": "session"}),
        fake_item("m.py::t2", {"milvus_server": "session"}),
        fake_item("s.py::t1", {"shards": "class"}),
        fake_item("s.py::t2", {"shards": "class"}),
        fake_item("s.py::t3", {"shards": "class"}),
        fake_item("b.py::single_too"),
    ]
    order_and_record(config, items)
    assert [i.nodeid for i in items] == [
        # the largest unit that needs the real index: the server's group (3 tests), its build starts at once
        "c.py::t[server]",
        "m.py::t1",
        "m.py::t2",
        "s.py::t1",  # a group without the index
        "s.py::t2",
        "s.py::t3",
        "r.py::t1",  # a group with it
        "r.py::t2",
        "a.py::single",  # single tests, those without the index first, in their (random) order
        "b.py::single_too",
        "a.py::single_with_index",
    ]
    groups = json.loads((tmp_path / GROUPS_FILE).read_text())
    assert groups == {
        "c.py::t[server]": SERVER_GROUP,
        "m.py::t1": SERVER_GROUP,
        "m.py::t2": SERVER_GROUP,
        "r.py::t1": "r.py",
        "r.py::t2": "r.py",
        "s.py::t1": "s.py",
        "s.py::t2": "s.py",
        "s.py::t3": "s.py",
    }


# ---- a real run on two workers: the probes below, selected by -k --------------------------------
@pytest.fixture(scope="module")
def module_probe():
    return "built once"


@pytest.mark.parametrize("i", range(6))
def test_probe_sharing_a_module_fixture(module_probe, i):
    assert module_probe == "built once"


@pytest.mark.parametrize("i", range(6))
def test_probe_alone(i):
    assert i in range(6)


def test_tests_sharing_a_module_fixture_run_on_one_worker():
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider", "-p", "no:randomly"]
        + ["-k", "probe", "tests/test_xdist_groups.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"\[(gw\d)\] .*PASSED tests/test_xdist_groups.py::(test_probe_\w+)\[\d\]", proc.stdout)
    assert len(ran) == 12, proc.stdout[-3000:]
    shared = {worker for worker, name in ran if name == "test_probe_sharing_a_module_fixture"}
    assert len(shared) == 1, ran  # xdist's loadgroup would split them under pytest 9
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}, ran  # and both workers had work
