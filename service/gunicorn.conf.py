"""gunicorn settings: `gunicorn -c service/gunicorn.conf.py "service.app:create_app()"`.

preload_app loads the index and the encoder weights once in the master; workers
are forked from it and share those memory pages. Torch and FAISS run with one
thread while the master loads (no thread pool exists at fork time, so nothing can
deadlock in a child); each worker then sets its own thread count (TORCH_THREADS,
default 1: WEB_CONCURRENCY x TORCH_THREADS should not exceed the cores) and warms
its models up before taking traffic.

Serving model (chosen by measurement, bench/bench_slow_clients.py; README "Serving model"):
gthread workers (service.workers.ProblemThreadWorker) with GUNICORN_THREADS request threads
each, so clients that trickle their bodies hold a thread, not a worker; BODY_TIMEOUT
(service.config, default 30 s) bounds how long they hold it. Torch still runs one thread per
worker: requests of one worker share its core, the encoders serialise per model.

In front of the workers, HAProxy (service/front.py, started from on_starting / when_ready)
holds slow connections and answers 408 / 429 (docs/slow-clients.md); FRONT=none turns it off.

Environment: PORT (8000), WEB_CONCURRENCY (2), GUNICORN_THREADS (8), GUNICORN_WORKER_CLASS
(default service.workers.ProblemThreadWorker; "sync" for the old model), GUNICORN_TIMEOUT (60),
TORCH_THREADS (1), PROMETHEUS_MULTIPROC_DIR (default: a fresh temp folder),
GUNICORN_MAX_REQUESTS (0 = never recycle), GUNICORN_CONTROL_SOCKET (unset = off), LOG_LEVEL (info).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_THREADS", "1")
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # every worker writes its metric samples here; GET /metrics sums the live workers
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="service-metrics-")

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "service.workers.ProblemThreadWorker")
# gunicorn runs a "sync" worker_class with threads > 1 as gthread: sync means one thread
threads = 1 if worker_class == "sync" else int(os.environ.get("GUNICORN_THREADS", "8"))
# the longest request line gunicorn reads (its maximum); the app refuses targets over
# MAX_URL_BYTES (4096) with 414 problem+json, and the worker answers longer ones the same way
limit_request_line = 8190
preload_app = True
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms pid=%(p)s'
proc_name = "categorization-service"
# gunicornc's control socket has one default path per user: two services (or a test and
# a benchmark) would fight over it, so it is off unless GUNICORN_CONTROL_SOCKET names one.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

_multiproc_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
# A fresh metrics folder before the app is preloaded: samples of a previous run must not be summed in.
os.makedirs(_multiproc_dir, exist_ok=True)
for _name in os.listdir(_multiproc_dir):
    if _name.endswith(".db"):
        os.unlink(os.path.join(_multiproc_dir, _name))


def on_starting(server: Arbiter) -> None:
    """Before gunicorn binds: a port in use is one clear line and exit status 1, not five
    "Connection in use" retries. (With preload_app this runs once the index is loaded;
    `make run` checks the port before building the index.) Then the front takes that address
    (FRONT=haproxy, docs/slow-clients.md) and gunicorn moves to a private unix socket."""
    from service import front
    from service.serving import busy_message

    logging.basicConfig(level=loglevel.upper())
    message = busy_message(server.cfg.address)
    if message:
        server.log.error(message)
        on_exit(server)
        sys.exit(1)
    front.take_public_address(server)


def when_ready(server: Arbiter) -> None:
    """After preload, before the first fork: say once where to open the service, then move
    the loaded objects out of the cyclic GC's reach so collections in the workers do not
    write to (and so copy) the shared pages."""
    import gc

    from service import front
    from service.serving import urls

    front.start(server)  # HAProxy on the public address, if FRONT=haproxy
    public = front.public_address()
    for url in urls([public] if public else [listener.sock.getsockname() for listener in server.LISTENERS]):
        server.log.info("seller page: %s  API page: %sdocs", url, url)
    gc.collect()
    gc.freeze()


def post_fork(server: Arbiter, worker: Worker) -> None:
    from service.state import set_threads

    set_threads(int(os.environ.get("TORCH_THREADS", "1")))


def post_worker_init(worker: Worker) -> None:
    """One tiny forward pass per model, so the first real request is not the slow one."""
    from PIL import Image

    extensions = getattr(worker.wsgi, "extensions", {})
    state = extensions.get("service_state")
    live = state.peek() if state else None
    if live is None:
        return
    if "listings" in extensions:  # finish review decisions a killed worker recorded but did not apply
        extensions["listings"].recover()
    live.encoder.encode_texts(["warm up"])
    live.encoder.encode_images([Image.new("RGB", (live.encoder.image_size,) * 2, "white")])
    worker.log.info("worker %s warmed up on index version %s", worker.pid, live.version)


def child_exit(server: Arbiter, worker: Worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Arbiter) -> None:
    from service import front

    if _multiproc_dir.startswith(tempfile.gettempdir()) and "service-metrics-" in _multiproc_dir:
        shutil.rmtree(_multiproc_dir, ignore_errors=True)
    front.stop(server)  # last: exits with status 1 if HAProxy had died
