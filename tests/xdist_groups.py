"""How `make test` shares the suite between its pytest-xdist workers (one per core).

Groups: every test of the session's Milvus server (those using the `milvus_server` fixture or
marked `milvus_server`: one server; some tests kill and restart it),
and every test of a module that uses one of its module- or class-scoped fixtures (the Ray
instance and its shards, the real report, the module's Milvus copies), run on one worker, so that
the fixture is built once. Other tests go to whichever worker is free.

Order: the real 945-product index is built once per run, under a file lock (conftest.real_index),
by the first worker that needs it (about 2 minutes, one core busy); a second worker that needed it
meanwhile would wait. So the largest unit that needs it is handed out first, then the groups that
do not need it, then those that do (the long ones start early: the Ray shards, the real report, the
server), each largest first; then the single tests that fill the gaps, those without the index first.

xdist's own `--dist loadgroup` cannot carry the groups with pytest 9: it appends them to
`item._nodeid`, an attribute pytest 9 no longer reads (node ids are `item._id`), so every test was
scheduled alone and the real report and the Ray shards were each computed on both workers. Here
each worker orders its collection as above and writes the groups to a file in the run's temporary
folder; the controller's scheduler (`make_scheduler`) reads it when it splits the collection (every
worker has collected by then) and hands the units out in collection order.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

SHARED_SCOPES = ("class", "module", "package")
REAL_INDEX_FIXTURES = ("real_index", "service_index")
GROUPS_FILE = "xdist-groups.json"
SERVER_GROUP = "milvus-server"


def group_of(item: pytest.Item) -> str | None:
    """The group of a collected test, or None when it may run anywhere."""
    if "milvus_server" in item.fixturenames or item.get_closest_marker("milvus_server") is not None:
        return SERVER_GROUP
    fixtures = item._fixtureinfo.name2fixturedefs.values()
    if any(d.scope in SHARED_SCOPES for defs in fixtures for d in defs):
        return item.nodeid.split("::")[0]
    return None


def shared_folder(factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of the whole run: a worker's parent folder under pytest-xdist (what every
    worker and the controller see), the run's own without it. O(1)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def needs_real_index(item: pytest.Item) -> bool:
    return any(name in item.fixturenames for name in REAL_INDEX_FIXTURES)


def order_and_record(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker: reorder `items` in place (see the module docstring; stable, so the random order
    pytest-randomly chose stays within each rank), and write {node id: group} into the run's shared
    folder. Every worker collects and orders the same tests, so they write the same file (by rename)."""
    unit = {item.nodeid: group_of(item) or item.nodeid for item in items}
    size = Counter(unit.values())
    needs = {u for item in items if needs_real_index(item) for u in [unit[item.nodeid]]}
    first = max((u for u in size if u in needs), key=lambda u: size[u], default=None)

    def rank(item: pytest.Item) -> tuple[int, int]:
        u = unit[item.nodeid]
        if u == first:
            return (0, 0)
        single = u == item.nodeid
        return (1 + 2 * single + (u in needs), -size[u])

    items.sort(key=rank)
    groups = {nodeid: u for nodeid, u in unit.items() if u != nodeid}
    shared = shared_folder(config._tmp_path_factory)  # type: ignore[attr-defined]
    part = shared / f"{GROUPS_FILE}.{os.environ['PYTEST_XDIST_WORKER']}"
    part.write_text(json.dumps(groups))
    os.replace(part, shared / GROUPS_FILE)


def make_scheduler(config: pytest.Config, log):
    """xdist's scope scheduler with our units as scopes, handed out in the workers' collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                # the controller's own folder is the run's (it may run inside another run's worker)
                path = config._tmp_path_factory.getbasetemp() / GROUPS_FILE  # type: ignore[attr-defined]
                self._groups = json.loads(path.read_text()) if path.exists() else {}
            return self._groups.get(nodeid, nodeid)

    config.option.loadscopereorder = False  # the order is order_and_record's
    return GroupScheduling(config, log)
