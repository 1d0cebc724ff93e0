"""Helpers shared by the service tests: the index they read, writable copies, free ports."""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

from indexer.store.local.index import CURRENT, VERSIONS, read_current


def copy_index(src: Path, dst: Path) -> Path:
    """A writable copy of the live version of `src` (plus its embedding cache and its sealed CURRENT)."""
    version = read_current(src)
    (dst / VERSIONS).mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / VERSIONS / version, dst / VERSIONS / version)
    if (src / "cache.sqlite").is_file():
        shutil.copy2(src / "cache.sqlite", dst / "cache.sqlite")
    shutil.copy2(src / CURRENT, dst / CURRENT)
    return dst


def edit_manifest(index_dir: Path, change) -> Path:
    """Change the live version's manifest in place (`change(manifest)` edits the dict), sealed again
    and CURRENT pointed at it, as a writer that publishes it would: a test's stand-in for an index
    published with other settings (an edit that skips this is refused as damage)."""
    import json

    from indexer.store.local.seals import seal_manifest
    from indexer.store.local.versions import write_current

    version = read_current(index_dir)
    file = index_dir / VERSIONS / version / "manifest.json"
    manifest = json.loads(file.read_text())
    seal = manifest.pop("seal", {})
    change(manifest)
    data, _ = seal_manifest(manifest, version=seal.get("version", version), previous=seal.get("previous"))
    file.write_bytes(data)
    write_current(index_dir, version)
    return index_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_products(store, n: int = 1, category: str | None = None):
    """The first n products (row order) that have a readable photo, optionally of one category."""
    out = []
    for product in store.products:
        if product.image_path is None or (category and product.category != category):
            continue
        path = photo_path(store, product)
        if path is not None:
            out.append((product, path))
        if len(out) == n:
            break
    return out


def photo_path(store, product) -> Path | None:
    from service.media import image_file

    return image_file(product, store, os.environ.get("DATA_DIR"))


def jpeg_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def start_gunicorn(index_dir: Path, port: int, env: dict, log_path: Path, timeout: float = 240):
    """gunicorn with service/gunicorn.conf.py on 127.0.0.1:port (through its front unless
    env says FRONT=none), returned once /readyz answers 200."""
    import http.client
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, INDEX_DIR=str(index_dir), PROMETHEUS_MULTIPROC_DIR=str(log_path.parent / "metrics"), **env)
    env.pop("PYTHONPATH", None)
    command = [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command + ["service.app:create_app()"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError("gunicorn exited:\n" + log_path.read_text()[-3000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError("gunicorn did not become ready:\n" + log_path.read_text()[-3000:])
        time.sleep(0.5)


def stop_process(proc, seconds: float = 40) -> int:
    """SIGTERM, then SIGKILL after `seconds`; the exit code."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


LISTING_STRINGS = Path(__file__).resolve().parents[1] / "service" / "static" / "listing-strings.js"


def node_binary() -> str | None:
    """A JavaScript runtime without a browser: the one bundled with playwright (requirements-dev.txt),
    else a system `node`."""
    try:
        import playwright

        bundled = Path(playwright.__file__).parent / "driver" / "node"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("node")


def say_reasons(reasons: list[dict], lang: str) -> list[str]:
    """The API's `reasons` as the pages say them in `lang` (listing-strings.js `reasonSentence`,
    run by node with a page whose <html lang> is `lang`), plus `reasonList`'s joined sentence last."""
    import json
    import subprocess

    node = node_binary()
    if node is None:
        import pytest

        pytest.skip("no JavaScript runtime (pip install -r requirements-dev.txt brings playwright's)")
    script = (
        f"globalThis.document = {{ documentElement: {{ lang: {json.dumps(lang)} }} }};\n"
        + LISTING_STRINGS.read_text(encoding="utf-8")
        + f"\nconst reasons = {json.dumps(reasons)};"
        + "\nprocess.stdout.write(JSON.stringify([...reasons.map(reasonSentence), reasonList(reasons)]));\n"
    )
    done = subprocess.run([node, "-"], input=script, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)
