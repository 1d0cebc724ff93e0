"""What an operator sees when the service starts: one clear line when the port is taken
(instead of gunicorn's five "Connection in use" retries), and the URLs to open.

Used by service/gunicorn.conf.py (on_starting, when_ready) and by `make run` before it
builds the index: `python -m service.serving PORT` exits 1 with the same message."""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterable, Sequence

Address = tuple[str, int]
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _bindable(host: str, port: int) -> bool | None:
    """True if (host, port) can be bound now, False if it is in use, None for any other
    failure (gunicorn reports those itself). Binds and closes at once, as gunicorn binds:
    SO_REUSEADDR on, so a port in TIME_WAIT counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return False if exc.errno == errno.EADDRINUSE else None
    return True


def free_port_near(host: str, port: int, tries: int = 20) -> int | None:
    """The first port after `port` that `host` can bind (None if none of `tries` is free)."""
    return next((p for p in range(port + 1, min(port + 1 + tries, 65536)) if _bindable(host, p)), None)


def busy_message(addresses: Iterable[object]) -> str | None:
    """One sentence naming the first TCP address of `addresses` that is in use, with a free
    port to use instead; None when every one can be bound. Unix sockets and fds are skipped."""
    for address in addresses:
        if not (isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int)):
            continue
        host, port = str(address[0]), address[1]
        if _bindable(host, port) is not False:
            continue
        where = f"port {port}" + (f" on {host}" if host not in WILDCARDS else "")
        suggestion = free_port_near(host, port)
        example = f"PORT={suggestion} make run" if suggestion else "PORT=<another port> make run"
        return (
            f"{where} is in use (another service, or this one already running): "
            f"stop it, or set PORT to a free port, e.g. {example}"
        )
    return None


def urls(addresses: Sequence[object]) -> list[str]:
    """The seller page's URL for each bound TCP address (a wildcard host shown as loopback)."""
    out = []
    for address in addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            host = WILDCARDS.get(str(address[0]), str(address[0]))
            out.append(f"http://{f'[{host}]' if ':' in host else host}:{address[1]}/")
    return out


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m service.serving PORT", file=sys.stderr)
        return 2
    message = busy_message([("0.0.0.0", int(argv[0]))])
    if message:
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
