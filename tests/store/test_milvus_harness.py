"""The Milvus server harness (tests/milvus_server.py) restarts a server that does not become
healthy, as a supervisor would; checked here on a stand-in process, not a real server."""

from __future__ import annotations

import subprocess
import sys

import pytest
from milvus_server import EmbeddedMilvus


class _Package:
    """The package's MilvusServer as the harness uses it; healthy only after `unhealthy` starts."""

    def __init__(self, unhealthy: int) -> None:
        self.unhealthy, self.starts = unhealthy, 0
        self.server_proc: subprocess.Popen | None = None
        self.proc_fds: dict = {}
        self.webservice_port = self.wait_for_started = None

    def start(self) -> None:
        self.starts += 1
        self.server_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def wait_started(self, timeout: int) -> None:
        if self.starts <= self.unhealthy:
            raise TimeoutError("Milvus not startd")


def harness(tmp_path, unhealthy: int) -> EmbeddedMilvus:
    server = EmbeddedMilvus.__new__(EmbeddedMilvus)
    server.base_dir, server.metrics_port, server.started_in = tmp_path, 0, 0.0
    server._server = _Package(unhealthy)
    (tmp_path / "logs").mkdir(parents=True)
    (tmp_path / "logs" / "milvus-stderr.log").write_text("etcd: waiting for the old session\n")
    return server


def test_a_start_that_never_becomes_healthy_is_retried_then_reported_with_the_log(tmp_path):
    server = harness(tmp_path, unhealthy=1)
    with pytest.warns(UserWarning, match="killed and started again"):
        server.start(timeout=1, attempts=2)
    assert server._server.starts == 2 and server.pid is not None
    server.kill()
    stuck = harness(tmp_path / "stuck", unhealthy=5)
    with pytest.raises(TimeoutError, match="after each of 2 start"), pytest.warns(UserWarning):
        stuck.start(timeout=1, attempts=2)
    assert stuck.pid is None  # the unhealthy process is not left running
    with pytest.raises(TimeoutError, match="waiting for the old session"):
        harness(tmp_path / "once", unhealthy=1).start(timeout=1)
