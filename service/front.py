"""The I/O front: HAProxy (service/haproxy.cfg) in front of gunicorn, run by gunicorn's master.

Why: a gthread worker reads a request's head and body on a request thread, so 64 clients
trickling bytes held all 16 threads (/healthz timed out, /predict took 23 s). HAProxy holds
those connections in its event loop, ends them with 408 at HEADER_TIMEOUT / BODY_TIMEOUT and
caps connections per client address; gunicorn only sees requests that have fully arrived.
The choice was measured against gunicorn alone, nginx, waitress and uvicorn: docs/slow-clients.md.

How: `gunicorn -c service/gunicorn.conf.py ...` is still the one command (Procfile, `make run`).
Its hooks call `take_public_address` (on_starting: gunicorn listens on a private unix socket
instead of the address it was given), `start` (when_ready: HAProxy listens on that address)
and `stop` (on_exit). HAProxy dies with the master (PR_SET_PDEATHSIG), and the master stops
if HAProxy does. FRONT=none serves straight from gunicorn, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter

CONFIG = Path(__file__).with_name("haproxy.cfg")
DEFAULT_BUFFER_BYTES = 1024 * 1024
# head room in the buffer for the request head and HAProxy's header rewrites (tune.maxrewrite)
HEAD_ROOM_BYTES = 64 * 1024
START_SECONDS = 10.0


class FrontError(SystemExit):
    """The front cannot start; the message says why and what to do (gunicorn exits with it)."""


class _Front:
    """The running HAProxy, its private folder and the address it serves."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_dir: str | None = None
        self.public: str | None = None
        self.stopping = False
        self.failed: str | None = None  # why HAProxy stopped on its own: the master exits with it


_FRONT = _Front()


def mode() -> str:
    """FRONT: "haproxy" (default) or "none"; anything else stops the start with a clear line."""
    value = (os.environ.get("FRONT") or "haproxy").strip().lower()
    if value not in ("haproxy", "none"):
        raise FrontError(f"FRONT must be 'haproxy' or 'none', got {value!r}")
    return value


def _int_env(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FrontError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise FrontError(f"environment variable {name} must be at least {minimum}, got {value}")
    return value


def default_max_connections() -> int:
    """4096, or what the open-file limit allows (HAProxy needs two descriptors a connection and
    refuses to start when it cannot raise its limit that far: a user's limit is often 1024)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, (hard - 64) // 2))


def front_env(public: str, upstream: str) -> dict[str, str]:
    """The variables service/haproxy.cfg reads, checked here so a typo fails before HAProxy starts."""
    buffer = _int_env("FRONT_BUFFER_BYTES", DEFAULT_BUFFER_BYTES, 2 * HEAD_ROOM_BYTES)
    env = {
        "FRONT_BIND": public,
        "FRONT_UPSTREAM": f"unix@{upstream}",
        "FRONT_BUFFER_BYTES": str(buffer),
        "FRONT_LARGE_BODY_BYTES": str(buffer - HEAD_ROOM_BYTES),
    }
    for name, default, minimum in (
        ("HEADER_TIMEOUT", 10, 1),
        ("BODY_TIMEOUT", 30, 1),
        ("MAX_CONNECTIONS_PER_CLIENT", 32, 1),
        ("FRONT_MAX_CONNECTIONS", default_max_connections(), 16),
        ("FRONT_LARGE_UPLOADS", 4, 1),
        ("GUNICORN_TIMEOUT", 60, 1),
    ):
        env[name] = str(_int_env(name, default, minimum))
    return env


def take_public_address(server: Arbiter) -> None:
    """on_starting: remember the address gunicorn was asked to serve and bind gunicorn to a
    private unix socket instead (HAProxy takes the address in `start`)."""
    if mode() == "none":
        return
    binds = list(server.cfg.bind)
    if len(binds) != 1 or binds[0].startswith(("unix:", "fd://")):
        raise FrontError(f"the front serves one host:port address, got bind={binds}; set FRONT=none to bind these")
    if haproxy_binary() is None:
        raise FrontError(
            "haproxy is not installed: `make install` installs it (apt-get install haproxy), "
            "or set FRONT=none to serve from gunicorn alone (slow clients can then hold its threads)"
        )
    _FRONT.public = binds[0]  # free: gunicorn.conf.py's on_starting checked it (service.serving)
    _FRONT.run_dir = tempfile.mkdtemp(prefix="service-front-")
    server.cfg.set("bind", [f"unix:{_FRONT.run_dir}/gunicorn.sock"])


def haproxy_binary() -> str | None:
    """HAProxy's path: on PATH, or in the sbin folders Debian installs it to (not on a user's PATH)."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/local/sbin:/usr/sbin:/sbin")


def _die_with_parent() -> None:
    """In HAProxy's child process: get SIGTERM when gunicorn's master exits, even on kill -9."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def public_address() -> tuple[str, int] | None:
    """(host, port) HAProxy serves, None when there is no front (FRONT=none)."""
    if _FRONT.public is None or mode() == "none":
        return None
    host, _, port = _FRONT.public.rpartition(":")
    return host.strip("[]"), int(port)


def _probe_address(public: str) -> tuple[str, int]:
    host, _, port = public.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def _listening(public: str) -> bool:
    try:
        with socket.create_connection(_probe_address(public), timeout=0.5):
            return True
    except OSError:
        return False


def start(server: Arbiter) -> None:
    """when_ready: start HAProxy on the public address; stop with its error if it cannot."""
    if mode() == "none" or _FRONT.public is None or _FRONT.run_dir is None:
        return
    upstream = f"{_FRONT.run_dir}/gunicorn.sock"
    env = dict(os.environ, **front_env(_FRONT.public, upstream))
    stderr_path = Path(_FRONT.run_dir) / "haproxy.err"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [haproxy_binary() or "haproxy", "-db", "-f", str(CONFIG)],
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=_die_with_parent,  # noqa: PLW1509  # only sets a signal; no locks taken
        )
    deadline = time.monotonic() + START_SECONDS
    while proc.poll() is None and not _listening(_FRONT.public):
        if time.monotonic() > deadline:
            proc.kill()
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        error = stderr_path.read_text(errors="replace").strip()
        _cleanup()
        raise FrontError(f"the front (haproxy) could not serve {_FRONT.public}:\n{error}")
    _FRONT.proc = proc
    server.log.info("front: haproxy (pid %s) serves %s -> gunicorn at unix:%s", proc.pid, _FRONT.public, upstream)
    threading.Thread(target=_watch, args=(proc, stderr_path, server), name="front-watch", daemon=True).start()


def _watch(proc: subprocess.Popen[bytes], stderr_path: Path, server: Any) -> None:
    """The master stops when HAProxy does: a service nobody can reach must not look alive."""
    proc.wait()
    if not _FRONT.stopping:
        error = stderr_path.read_text(errors="replace").strip()[-2000:]
        _FRONT.failed = f"the front (haproxy) exited with status {proc.returncode}:\n{error}"
        server.log.error("front: haproxy exited (%s); stopping gunicorn\n%s", proc.returncode, error)
        os.kill(os.getpid(), signal.SIGTERM)


def stop(server: Arbiter | None = None) -> None:
    """on_exit: stop HAProxy and remove the private folder; exit non-zero (FrontError) when
    HAProxy had stopped on its own."""
    _FRONT.stopping = True
    proc = _FRONT.proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    _cleanup()
    if _FRONT.failed:
        raise FrontError(_FRONT.failed)


def _cleanup() -> None:
    if _FRONT.run_dir:
        shutil.rmtree(_FRONT.run_dir, ignore_errors=True)
