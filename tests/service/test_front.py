"""The front's settings: checked before HAProxy starts, and service/haproxy.cfg valid with them."""

from __future__ import annotations

import os
import subprocess

import pytest

from service import front


def test_the_defaults_make_a_valid_haproxy_configuration(monkeypatch, tmp_path):
    binary = front.haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (make install installs it)")
    for name in ("HEADER_TIMEOUT", "BODY_TIMEOUT", "MAX_CONNECTIONS_PER_CLIENT", "FRONT_BUFFER_BYTES"):
        monkeypatch.delenv(name, raising=False)
    env = dict(os.environ, **front.front_env("127.0.0.1:8000", str(tmp_path / "gunicorn.sock")))
    check = subprocess.run([binary, "-c", "-f", str(front.CONFIG)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert env["HEADER_TIMEOUT"] == "10" and env["BODY_TIMEOUT"] == "30"
    assert env["MAX_CONNECTIONS_PER_CLIENT"] == "32"
    assert int(env["FRONT_LARGE_BODY_BYTES"]) == 1024 * 1024 - front.HEAD_ROOM_BYTES


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("MAX_CONNECTIONS_PER_CLIENT", "many", "MAX_CONNECTIONS_PER_CLIENT must be an integer, got 'many'"),
        ("HEADER_TIMEOUT", "0", "HEADER_TIMEOUT must be at least 1, got 0"),
        ("FRONT_BUFFER_BYTES", "4096", "FRONT_BUFFER_BYTES must be at least 131072, got 4096"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_it(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(front.FrontError, match=message):
        front.front_env("127.0.0.1:8000", "/tmp/gunicorn.sock")


def test_front_is_haproxy_or_none(monkeypatch):
    monkeypatch.delenv("FRONT", raising=False)
    assert front.mode() == "haproxy"
    monkeypatch.setenv("FRONT", "None")
    assert front.mode() == "none"
    monkeypatch.setenv("FRONT", "nginx")
    with pytest.raises(front.FrontError, match="FRONT must be 'haproxy' or 'none', got 'nginx'"):
        front.mode()


def test_connections_fit_the_open_file_limit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    assert front.default_max_connections() == (1024 - 64) // 2  # two descriptors a connection
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1_000_000))
    assert front.default_max_connections() == 4096
