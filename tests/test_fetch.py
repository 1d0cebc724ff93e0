"""data.fetch: offline failure, verify + atomic unpack of a zip in the published layout,
bad archives rejected with nothing left behind. Never leaves the machine."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from fakes import product_row, write_csv
from PIL import Image

from data import fetch as fetch_mod
from data.fetch import FetchError, fetch
from indexer.catalog.products import CSV_NAME, load_catalog

ROOT = Path(__file__).resolve().parents[1]


def _jpeg_bytes(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(path: Path, root: str = "Flipkart", images: bool = True, extra: dict | None = None) -> Path:
    """A zip in the published layout: Flipkart/<csv> + Flipkart/Images/*.jpg."""
    csv_dir = path.parent / "csv-src"
    rows = [product_row("a" * 32, "Watches", 0), product_row("b" * 32, "Computers", 1)]
    csv_path = write_csv(csv_dir, rows)
    prefix = f"{root}/" if root else ""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}{CSV_NAME}", csv_path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)
        if images:
            for row, colour in zip(rows, [(255, 0, 0), (0, 0, 255)], strict=True):
                archive.writestr(
                    f"{prefix}Images/{row['image']}", _jpeg_bytes(colour), compress_type=zipfile.ZIP_STORED
                )
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_fails_with_clear_message_and_no_traceback(tmp_path):
    dest = tmp_path / "dest"
    url = f"http://127.0.0.1:{closed_port()}/dataset.zip"
    proc = subprocess.run(
        [sys.executable, "-m", "data.fetch", "--dest", str(dest), "--url", url, "--timeout", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "DATA_DIR" in proc.stderr and "local copy" in proc.stderr
    assert url in proc.stderr
    assert leftovers(dest) == []


def test_file_url_verified_and_unpacked(tmp_path):
    archive = make_zip(tmp_path / "dataset.zip")
    dest = tmp_path / "dest"
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    path = fetch(archive.as_uri(), dest, sha256=sha)
    assert path == dest / "Flipkart"
    assert leftovers(dest) == ["Flipkart"]  # no temp zip, no staging folder
    assert (path / CSV_NAME).is_file()
    assert sorted(p.name for p in (path / "Images").iterdir()) == ["a" * 32 + ".jpg", "b" * 32 + ".jpg"]
    catalog = load_catalog(path)  # what DATA_DIR consumers will do
    assert len(catalog) == 2 and catalog.report.counts() == {}


def test_http_download_via_local_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    make_zip(served / "dataset.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        dest = tmp_path / "dest"
        rc = fetch_mod.main(["--dest", str(dest), "--url", f"http://127.0.0.1:{port}/dataset.zip"])
        assert rc == 0
        assert (dest / "Flipkart" / CSV_NAME).is_file()
        rc = fetch_mod.main(["--dest", str(dest), "--url", f"http://127.0.0.1:{port}/nothing.zip"])
        assert rc == 1  # HTTP 404, reported
    finally:
        server.shutdown()
        server.server_close()
    assert leftovers(dest) == ["Flipkart"]


def _expect_rejected(tmp_path, archive: Path, needle: str, capsys, **kwargs):
    dest = tmp_path / "dest"
    rc = fetch_mod.main(["--dest", str(dest), "--url", archive.as_uri(), *[f"--{k}={v}" for k, v in kwargs.items()]])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err
    assert leftovers(dest) == [], "a rejected archive must leave nothing behind"


def test_garbage_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"this is not a zip archive at all" * 100)
    _expect_rejected(tmp_path, bad, "not a zip archive", capsys)


def test_truncated_zip_is_rejected(tmp_path, capsys):
    good = make_zip(tmp_path / "good.zip").read_bytes()
    bad = tmp_path / "bad.zip"
    bad.write_bytes(good[: len(good) // 2])
    _expect_rejected(tmp_path, bad, "corrupt", capsys)


def test_crc_damage_is_rejected(tmp_path, capsys):
    archive = make_zip(tmp_path / "dataset.zip")
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("Flipkart/Images/" + "a" * 32 + ".jpg")
    # flip bytes inside the stored (uncompressed) member's data, past its local header
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    archive.write_bytes(bytes(data))
    _expect_rejected(tmp_path, archive, "fails its CRC check", capsys)


def test_wrong_layout_is_rejected(tmp_path, capsys):
    no_images = make_zip(tmp_path / "noimg.zip", images=False)
    _expect_rejected(tmp_path, no_images, "no images", capsys)
    no_csv = tmp_path / "nocsv.zip"
    with zipfile.ZipFile(no_csv, "w") as zf:
        zf.writestr("Flipkart/Images/x.jpg", _jpeg_bytes((0, 0, 0)))
    _expect_rejected(tmp_path, no_csv, CSV_NAME, capsys)


def test_unsafe_member_path_is_rejected(tmp_path, capsys):
    archive = make_zip(tmp_path / "evil.zip", extra={"../escape.txt": b"x"})
    _expect_rejected(tmp_path, archive, "unsafe path", capsys)
    assert not (tmp_path / "escape.txt").exists()


def test_sha256_mismatch_is_rejected(tmp_path, capsys):
    archive = make_zip(tmp_path / "dataset.zip")
    _expect_rejected(tmp_path, archive, "sha256 mismatch", capsys, sha256="0" * 64)


def test_existing_dataset_kept_unless_forced(tmp_path):
    archive = make_zip(tmp_path / "dataset.zip")
    dest = tmp_path / "dest"
    (dest / "Flipkart").mkdir(parents=True)
    (dest / "Flipkart" / "marker").write_text("old copy")
    with pytest.raises(FetchError, match="already exists"):
        fetch(archive.as_uri(), dest)
    assert (dest / "Flipkart" / "marker").read_text() == "old copy"
    fetch(archive.as_uri(), dest, force=True)
    assert not (dest / "Flipkart" / "marker").exists()
    assert (dest / "Flipkart" / CSV_NAME).is_file()
    assert leftovers(dest) == ["Flipkart"]


def test_failed_forced_fetch_keeps_the_old_copy(tmp_path):
    dest = tmp_path / "dest"
    (dest / "Flipkart").mkdir(parents=True)
    (dest / "Flipkart" / "marker").write_text("old copy")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FetchError):
        fetch(bad.as_uri(), dest, force=True)
    assert (dest / "Flipkart" / "marker").read_text() == "old copy"
    assert leftovers(dest) == ["Flipkart"]


def test_zip_with_another_top_folder_or_none(tmp_path):
    for i, root in enumerate(("", "Dataset projet/Flipkart")):
        archive = make_zip(tmp_path / f"layout{i}.zip", root=root, extra={"__MACOSX/._junk": b"x"})
        dest = tmp_path / f"dest{i}"
        path = fetch(archive.as_uri(), dest)
        assert (path / CSV_NAME).is_file() and len(list((path / "Images").iterdir())) == 2
        assert leftovers(dest) == ["Flipkart"]  # only the dataset folder, not the zip's wrappers


def test_disk_full_while_unpacking_leaves_old_copy_and_no_debris(tmp_path, monkeypatch, capsys):
    archive = make_zip(tmp_path / "dataset.zip")
    dest = tmp_path / "dest"
    (dest / "Flipkart").mkdir(parents=True)
    (dest / "Flipkart" / "marker").write_text("old copy")

    def extract_then_fail(self, path=None, *args, **kwargs):
        Path(path, "Flipkart").mkdir(parents=True)
        Path(path, "Flipkart", "partial.jpg").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", extract_then_fail)
    rc = fetch_mod.main(["--dest", str(dest), "--url", archive.as_uri(), "--force"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "Traceback" not in err
    assert leftovers(dest) == ["Flipkart"]
    assert sorted(p.name for p in (dest / "Flipkart").iterdir()) == ["marker"]


def test_failed_swap_puts_the_old_copy_back(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "dataset.zip")
    dest = tmp_path / "dest"
    (dest / "Flipkart").mkdir(parents=True)
    (dest / "Flipkart" / "marker").write_text("old copy")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == dest / "Flipkart" and ".fetch-" in str(src):
            raise OSError(5, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="I/O error"):
        fetch(archive.as_uri(), dest, force=True)
    assert (dest / "Flipkart" / "marker").read_text() == "old copy"
    assert leftovers(dest) == ["Flipkart"]
