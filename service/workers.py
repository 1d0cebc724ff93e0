"""gunicorn worker for the service: gthread (a thread per request, idle keep-alive
connections parked in a poller), with gunicorn's own error answers as problem+json.

Why threads: with sync workers a client that trickles its body holds a whole worker;
two such clients stopped the service (/healthz answered after 27 s). With
WEB_CONCURRENCY x GUNICORN_THREADS request threads, a trickling client holds one thread
(and service.inputs.BodyDeadline ends it after BODY_TIMEOUT seconds). bench/bench_slow_clients.py
measures both models.

gunicorn answers some requests before the app sees them (a request line over
limit_request_line -> 414, malformed headers -> 400, too many header bytes -> 431) with
an HTML page; this worker sends the same status as application/problem+json.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker


def write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's error page as RFC 9457 problem+json (same status, reason as title)."""
    body = json.dumps(
        {"type": "about:blank", "title": reason, "status": status_int, "detail": mesg or reason},
        ensure_ascii=True,
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    util.write_nonblock(sock, head + body)


class ProblemThreadWorker(ThreadWorker):
    """gunicorn's gthread worker whose pre-application errors are problem+json."""

    def init_process(self) -> None:
        # base.Worker.handle_error writes through gunicorn.util.write_error: in this worker
        # process (and only here) it writes problem+json instead of HTML.
        util.write_error = write_problem
        super().init_process()
