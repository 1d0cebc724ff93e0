"""Which tests one pytest-xdist worker runs together, so that an expensive shared fixture is built once.

A group: every test of the session's Milvus server (one server; some tests kill and restart it), and
every test of a module that uses one of its module- or class-scoped fixtures (the Ray instance and
its shards, the real report, the module's Milvus copies). Other tests go to whichever worker is free.

xdist's own `--dist loadgroup` cannot carry this with pytest 9: it appends the group to
`item._nodeid`, an attribute pytest 9 no longer reads (node ids are `item._id`), so every test was
scheduled alone and, for one, the real report and the Ray shards were each computed on both workers.
Here each worker writes the groups it collected to a file in the run's temporary folder, and the
controller's scheduler (`GroupScheduling`, from `pytest_xdist_make_scheduler` in conftest.py) reads
it when it splits the collection: the workers have all collected by then.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED_SCOPES = ("class", "module", "package")
GROUPS_FILE = "xdist-groups.json"
SERVER_GROUP = "milvus-server"


def group_of(item: pytest.Item) -> str | None:
    """The group of a collected test, or None when it may run anywhere."""
    if "milvus_server" in item.fixturenames:
        return SERVER_GROUP
    fixtures = item._fixtureinfo.name2fixturedefs.values()
    if any(d.scope in SHARED_SCOPES for defs in fixtures for d in defs):
        return item.nodeid.split("::")[0]
    return None


def write_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker: {node id: group} of its collection, into the run's shared folder (every worker
    collects the same tests, so they write the same file; atomically, by rename)."""
    groups = {item.nodeid: group for item in items if (group := group_of(item)) is not None}
    shared = Path(config.option.basetemp).parent
    part = shared / f"{GROUPS_FILE}.{os.environ['PYTEST_XDIST_WORKER']}"
    part.write_text(json.dumps(groups))
    os.replace(part, shared / GROUPS_FILE)


def make_scheduler(config: pytest.Config, log):
    """xdist's scope scheduler with our groups as scopes. Scopes are handed out largest first
    (xdist's --loadscope-reorder), so the groups start before the single tests that fill the gaps."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                path = config._tmp_path_factory.getbasetemp() / GROUPS_FILE
                self._groups = json.loads(path.read_text()) if path.exists() else {}
            return self._groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)
