"""A real Milvus server for the tests and benches: the standalone binary that the PyPI package
`milvus` (2.3.5, "embedded Milvus", a dev requirement) ships, on free ports of 127.0.0.1.

The package's own `start()` picks the first free port from 19530 up (and 2379 for its etcd, ...),
so two runs on one machine could pick the same ones between its check and the server's bind,
and its embedded etcd always listens for peers on 2380, so a second server on the machine
fails to start. Here every port is one the kernel handed out (bind to port 0), the etcd ones
included (an etcd config file named by `etcd.config.path`, a key the package's config template
lacks and this module adds), so CI and a developer's run never collide.

`kill()` is a kill -9; `restart()` starts the same server on the same ports and data folder
(the package's port check binds without SO_REUSEADDR, which fails while the killed server's
connections sit in TIME_WAIT, so the check here binds with it, as the server itself does).

The server process is tied to the process that starts it (PR_SET_PDEATHSIG): a test run killed
by a timeout or kill -9 takes its server with it instead of leaving an orphan holding ports and
gigabytes.

Start-up takes about 30 s on 2 cores (the binary, ~0.5 GB, is unpacked into the base folder
on the first start), so tests share one server per session (tests/conftest.py `milvus_server`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
import types
import warnings
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the forked child, before exec: SIGKILL when the parent dies (Linux only)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bind_reusing(port: int) -> socket.socket | None:
    """The package's port check, with SO_REUSEADDR (TIME_WAIT connections do not block a restart)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def _package_data() -> Path:
    import milvus

    return Path(milvus.__file__).parent / "data"


def _template(base_dir: Path, etcd_config: Path) -> Path:
    """The package's config template with `etcd.config.path` added under `etcd:`."""
    source = _package_data() / "config.yaml.template"
    lines = source.read_text(encoding="utf-8").splitlines()
    at = lines.index("etcd:") + 1
    lines[at:at] = ["  config:", f"    path: {etcd_config}"]
    out = base_dir / "milvus.yaml.template"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


class EmbeddedMilvus:
    """One Milvus standalone server process with its data under `base_dir`."""

    def __init__(self, base_dir: str | Path) -> None:
        import milvus
        from milvus import MilvusServer, MilvusServerConfig

        # the package starts the binary with subprocess.Popen: the same, tied to this process
        milvus.subprocess = types.SimpleNamespace(  # type: ignore[attr-defined]
            Popen=functools.partial(subprocess.Popen, preexec_fn=_die_with_parent),
            TimeoutExpired=subprocess.TimeoutExpired,
        )

        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        client, peer = free_port(), free_port()
        etcd_config = self.base_dir / "etcd.yaml"
        etcd_config.write_text(
            f"name: default\n"
            f"listen-client-urls: http://127.0.0.1:{client}\n"
            f"advertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n",
            encoding="utf-8",
        )
        config = MilvusServerConfig(template=str(_template(self.base_dir, etcd_config)))
        config.glog_conf_file = str(_package_data() / "glog.conf")
        config.try_bind_port = _bind_reusing  # type: ignore[method-assign]
        self._server: Any = MilvusServer(config)
        self._server.set_base_dir(str(self.base_dir))
        ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
        ports["etcd_port"] = client
        config.update(**ports)
        self.metrics_port = free_port()
        self.started_in = 0.0

    @property
    def port(self) -> int:
        return int(self._server.listen_port)

    @property
    def uri(self) -> str:
        """The address to give VECTOR_STORE or `to-milvus` (a collection name may follow)."""
        return f"milvus://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._server.server_proc
        return proc.pid if proc is not None else None

    def start(self, timeout: float = 300, attempts: int = 1) -> EmbeddedMilvus:
        """Start and wait until the server says it is healthy (its /healthz), at most `timeout` s
        per attempt. After a kill -9, Milvus 2.3.5 standalone once stayed unhealthy for 300 s (a
        local run, quiet machine): with `attempts` > 1 a server not healthy in time is killed and
        started again, as a supervisor would (systemd's Restart=), and a warning says so."""
        t0 = time.perf_counter()
        for attempt in range(1, attempts + 1):
            self._server.webservice_port = self.metrics_port
            self._server.wait_for_started = False
            self._server.start()
            try:
                self._server.wait_started(timeout=int(timeout * 1000))
                break
            except TimeoutError:
                tail = self.log_tail()
                self.kill()
                if attempt == attempts:
                    raise TimeoutError(
                        f"Milvus was not healthy {timeout:.0f} s after each of {attempts} start(s); "
                        f"its log ends:\n{tail}"
                    ) from None
                warnings.warn(
                    f"Milvus not healthy {timeout:.0f} s after a start: killed and started again", stacklevel=2
                )
        self.started_in = time.perf_counter() - t0
        return self

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's stdout and stderr logs (the package writes them under logs/)."""
        out = []
        for name in ("stdout", "stderr"):
            path = self.base_dir / "logs" / f"milvus-{name}.log"
            if path.exists():
                out += [f"[{name}] {line}" for line in path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)

    def kill(self) -> None:
        """kill -9 the server process (no shutdown of any kind), and wait for it to be gone."""
        proc = self._server.server_proc
        if proc is None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self._server.server_proc = None
        for fd in self._server.proc_fds.values():
            fd.close()
        self._server.proc_fds.clear()

    def restart(self, timeout: float = 150, attempts: int = 2) -> EmbeddedMilvus:
        """The same server again: same ports, same data folder."""
        self.kill()
        return self.start(timeout, attempts)

    def stop(self) -> None:
        """A normal stop (SIGTERM, then SIGKILL after the package's grace period)."""
        if self._server.server_proc is not None:
            self._server.stop()

    def memory_mb(self) -> dict[str, float]:
        """RSS and PSS of the server process (/proc/<pid>/smaps_rollup), MB."""
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) / 1024
        return {"rss": fields["Rss"], "pss": fields["Pss"]}

    def remove(self) -> None:
        """Stop, then delete the base folder (binary and data, about 0.5 GB)."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
