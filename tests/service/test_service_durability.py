"""The service over a damaged pointer, a full or read-only disk, a copied index and photos that
only a kept version names (issue 20), on a small index of the fake encoder so that each case
takes milliseconds:

- a flipped, emptied or rolled-back CURRENT and an edited manifest: a running service keeps its
  version and says so in /readyz and /metrics, a fresh start serves the newest intact version
  (never an older one silently), adds are refused with 503 until `repair`;
- ENOSPC / EROFS: adds answer 507 / 503 problem+json naming the cause, nothing is lost, reads go
  on, leftovers of dead writers are removed at the next start (a real tmpfs when run as root,
  else a fake that raises the same errors from the same calls);
- an index copied elsewhere serves its own photos; a photo a kept version names survives adds."""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import FakeEncoder, make_dataset, make_products, random_vectors
from service_support import jpeg_bytes

from indexer.__main__ import main
from indexer.pipeline.build import build_index
from indexer.store import open_store
from indexer.store.local.index import VERSIONS, publish, write_lock
from indexer.store.local.versions import CURRENT, read_current
from service.app import create_app
from service.config import Config
from service.media import UPLOADS

TOKEN = "durable-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
PHOTO = jpeg_bytes(color=(10, 200, 40))
OTHER_PHOTO = jpeg_bytes(color=(240, 20, 200))


@pytest.fixture(autouse=True)
def _fake_profile_registered(fake_profile):
    """Every test here opens indexes built with the fake profile."""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("durable")
    data = make_dataset(root / "data", per_category=4)
    build_index(data["folder"], root / "index", encoder=FakeEncoder(), progress=False)
    return data, root / "index"


@pytest.fixture()
def index(built, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(built[1], copy)
    return copy


def app_for(index_dir: Path):
    config = Config(index_dir=str(index_dir), api_token=TOKEN, retry_load_seconds=0.0)
    return create_app(config, encoder=FakeEncoder()).test_client()


def add(client, pid: str, photo: bytes | None = PHOTO, title: str = "durable watch"):
    payload = {"id": pid, "title": title, "category": "Watches >> Wrist Watches"}
    if photo is not None:
        payload["image_base64"] = base64.b64encode(photo).decode()
    return client.post("/api/v1/products", headers=AUTH, json=payload)


def predict(client):
    return client.post("/api/v1/predict", json={"title": "analog wrist watch strap"})


def publish_next(index_dir: Path, prefix: str) -> str:
    """Another version (as a rebuild would publish), made live."""
    with write_lock(index_dir):
        manifest = dict(open_store(index_dir).manifest)
        for key in ("seal", "deltas", "files", "catalog"):
            manifest.pop(key, None)
        vectors = {
            "image": (random_vectors(6, 16, 2), list(range(6))),
            "text": (random_vectors(6, 12, 3), list(range(6))),
        }
        return publish(index_dir, make_products(6, prefix), vectors, manifest)


def metric(client, name: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


# ---- CURRENT damaged, emptied, rolled back; a manifest edited ----------------------------------------
def test_a_flipped_byte_in_current_keeps_the_running_service_and_a_restart_serves_the_intact_version(index):
    client = app_for(index)
    good = predict(client).get_json()
    version = read_current(index)
    data = bytearray((index / CURRENT).read_bytes())
    data[20] ^= 0x01
    (index / CURRENT).write_bytes(bytes(data))
    for _ in range(3):  # every call answers, from the version it had (was: 500 on every call)
        again = predict(client)
        assert again.status_code == 200 and again.get_json()["neighbors"] == good["neighbors"]
    ready = client.get("/readyz").get_json()
    assert ready["index_version"] == version and ready["refused"]["file"] == "CURRENT"
    assert "CURRENT" in ready["refused"]["reason"] and "damaged" in ready["refused"]["reason"]
    assert metric(client, "index_version_refused") == -1.0 and metric(client, "index_version_served") == int(version)
    refused_add = add(client, "while-damaged")
    assert refused_add.status_code == 503 and refused_add.mimetype == PROBLEM
    assert "cannot take adds" in refused_add.get_json()["detail"]
    restarted = app_for(index)  # was: 503 after a restart
    ready = restarted.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["index_version"] == version
    assert ready.get_json()["refused"]["file"] == "CURRENT"
    assert predict(restarted).status_code == 200
    assert main(["repair", str(index), "--yes"]) == 0
    assert add(app_for(index), "after-repair").status_code == 201


@pytest.mark.parametrize("current", [b"", b"000042\n", None])
def test_an_empty_missing_or_dangling_current_serves_the_newest_intact_version_at_start(index, current):
    version = read_current(index)
    if current is None:
        (index / CURRENT).unlink()
    else:
        (index / CURRENT).write_bytes(current)
    client = app_for(index)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["index_version"] == version
    assert ready.get_json()["refused"]["file"] == "CURRENT"


def test_a_rolled_back_current_is_never_served(index):
    first = read_current(index)
    old_pointer = (index / CURRENT).read_bytes()
    publish_next(index, "r2-")
    newest = publish_next(index, "r3-")
    client = app_for(index)
    assert client.get("/readyz").get_json()["index_version"] == newest
    (index / CURRENT).write_bytes(old_pointer)  # two versions back, its own seal intact
    assert predict(client).get_json()["index_version"] == newest  # was: served silently
    ready = client.get("/readyz").get_json()
    assert ready["index_version"] == newest and ready["refused"]["version"] == first
    assert "published after it" in ready["refused"]["reason"]
    restarted = app_for(index)
    assert restarted.get("/readyz").get_json()["index_version"] == newest  # a fresh start, too
    response = add(restarted, "while-rolled-back")
    assert response.status_code == 503 and "repair" in response.get_json()["detail"]
    assert not (index / UPLOADS / "while-rolled-back.jpg").exists()
    assert main(["repair", str(index), "--yes"]) == 0
    assert add(restarted, "after-repair").status_code == 201
    assert "refused" not in restarted.get("/readyz").get_json()


def test_an_edited_threshold_is_refused_running_and_at_start(index):
    older = read_current(index)
    newest = publish_next(index, "t-")
    client = app_for(index)
    served = predict(client).get_json()
    file = index / VERSIONS / newest / "manifest.json"
    manifest = json.loads(file.read_text())
    manifest["categorizer"] = dict(manifest.get("categorizer") or {}, threshold=0.0)
    file.write_text(json.dumps(manifest, indent=2, sort_keys=True))  # was: served without a word
    again = predict(client)
    assert again.status_code == 200 and again.get_json()["threshold"] == served["threshold"]
    ready = client.get("/readyz").get_json()
    assert ready["index_version"] == newest and ready["refused"]["file"] == f"{newest}/manifest.json"
    assert "does not match its seal" in ready["refused"]["reason"]
    restarted = app_for(index)
    ready = restarted.get("/readyz").get_json()
    assert ready["index_version"] == older and ready["refused"]["version"] == newest  # older, and said so
    assert "does not match its seal" in ready["refused"]["reason"]


# ---- disk full, read-only ------------------------------------------------------------------------------
def fail_writes(monkeypatch, index_dir: Path, code: int) -> None:
    """Every write under `index_dir` fails with `code` at the system call the real disk would
    fail in: opening for writing (EROFS) or syncing the written bytes (ENOSPC, as a delayed
    allocation reports it)."""
    root = str(index_dir.resolve())
    real_open, real_fsync, real_mkdir = os.open, os.fsync, os.mkdir

    def inside(path) -> bool:
        return os.path.realpath(os.fspath(path)).startswith(root)

    def guarded_open(path, flags, *args, **kwargs):
        if code == errno.EROFS and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_fsync(fd):
        if code == errno.ENOSPC:
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "fsync", guarded_fsync)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    import builtins

    real_builtin_open = builtins.open

    def guarded_builtin_open(file, mode="r", *args, **kwargs):
        if code == errno.EROFS and any(c in mode for c in "wax+") and isinstance(file, (str, Path)) and inside(file):
            raise OSError(code, os.strerror(code), os.fspath(file))
        return real_builtin_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_builtin_open)


def leftovers(index_dir: Path) -> list[str]:
    found = [
        p for p in index_dir.rglob("*") if p.name.startswith((".staging-", ".incoming-")) or p.name.endswith(".tmp")
    ]
    return sorted(str(p.relative_to(index_dir)) for p in found)


@pytest.mark.parametrize(
    "code,status,cause,words",
    [(errno.ENOSPC, 507, "disk_full", "disk is full"), (errno.EROFS, 503, "read_only", "read-only file system")],
)
@pytest.mark.parametrize("photo", [PHOTO, None], ids=["photo", "text-only"])
def test_adds_on_a_full_or_read_only_disk_answer_with_the_cause_and_lose_nothing(
    index, monkeypatch, code, status, cause, words, photo
):
    client = app_for(index)
    assert add(client, "before", OTHER_PHOTO).status_code == 201
    before = open_store(index)
    fail_writes(monkeypatch, index, code)
    response = add(client, "during", photo)  # was: 500 "internal error"
    assert response.status_code == status and response.mimetype == PROBLEM, response.get_data(as_text=True)
    body = response.get_json()
    assert body["cause"] == cause and words in body["detail"] and "not added" in body["detail"]
    assert predict(client).status_code == 200  # reads keep working
    assert client.get("/api/v1/products/before").status_code == 200
    monkeypatch.undo()
    after = open_store(index, checksums=True)
    assert (after.version, after.deltas, len(after.products)) == (before.version, before.deltas, len(before.products))
    assert (index / UPLOADS / "before.jpg").read_bytes() == OTHER_PHOTO
    assert leftovers(index) == []
    assert add(client, "during", photo).status_code == 201  # the disk is back: the same add goes through


@pytest.mark.parametrize("code,status", [(errno.ENOSPC, 507), (errno.EROFS, 503)])
@pytest.mark.parametrize("method", ["DELETE", "PATCH"])
def test_deletes_and_relabels_on_a_full_or_read_only_disk_answer_with_the_cause(
    index, monkeypatch, code, status, method
):
    client = app_for(index)
    pid = open_store(index).products[0].id
    before = open_store(index)
    fail_writes(monkeypatch, index, code)
    body = {"category": "Garden >> Hoses"} if method == "PATCH" else None
    response = client.open(f"/api/v1/products/{pid}", method=method, headers=AUTH, json=body)
    assert response.status_code == status and response.mimetype == PROBLEM, response.get_data(as_text=True)
    assert "nothing stored before was lost" in response.get_json()["detail"]
    assert client.get(f"/api/v1/products/{pid}").status_code == 200  # reads keep working
    monkeypatch.undo()
    after = open_store(index, checksums=True)
    assert (after.version, after.deltas) == (before.version, before.deltas) and leftovers(index) == []


def test_leftovers_of_dead_writers_are_removed_at_the_next_start(index):
    finished = subprocess.Popen(["true"])  # noqa: S603,S607 - a pid that has surely exited
    finished.wait()
    staging = index / VERSIONS / f".staging-{finished.pid}-x"
    staging.mkdir()
    (staging / "text.npy").write_bytes(b"\0" * 4096)
    live = index / VERSIONS / read_current(index)
    (live / "deltas" / ".staging-killed-add").mkdir(parents=True)
    (live / "deltas" / "000099").mkdir()  # renamed, never committed to LIST
    (index / f".{CURRENT}.tmp").write_bytes(b"000009\n")
    assert len(leftovers(index)) == 3
    client = app_for(index)
    assert client.get("/readyz").status_code == 200
    assert leftovers(index) == [] and not (live / "deltas" / "000099").exists()


@pytest.fixture()
def tmpfs(tmp_path):
    """A 6 MB tmpfs (root only): the real ENOSPC and EROFS."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)  # noqa: S603,S607
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)  # noqa: S603,S607


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def test_a_real_full_then_read_only_disk(built, tmpfs):
    index = tmpfs / "index"
    shutil.copytree(built[1], index)
    client = app_for(index)
    assert add(client, "before", OTHER_PHOTO).status_code == 201
    filler = fill(tmpfs)
    response = add(client, "full", PHOTO)
    assert response.status_code == 507 and response.get_json()["cause"] == "disk_full", response.get_json()
    assert predict(client).status_code == 200
    compact = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "indexer", "compact", str(index)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert compact.returncode != 0 and "No space left" in compact.stderr + compact.stdout
    filler.unlink()
    assert add(client, "full", PHOTO).status_code == 201
    # read-only: the same folder through a read-only bind mount (the running process keeps its
    # audit trail open for writing, so the file system itself cannot be remounted read-only)
    view = tmpfs.parent / "readonly-view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(index), str(view)], check=True)  # noqa: S603,S607
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)  # noqa: S603,S607
        readonly = app_for(view)  # a start on a read-only folder serves
        assert readonly.get("/readyz").status_code == 200 and predict(readonly).status_code == 200
        response = add(readonly, "readonly", PHOTO)
        assert response.status_code == 503 and response.get_json()["cause"] == "read_only", response.get_json()
        pid = open_store(view).products[0].id
        refused = readonly.delete(f"/api/v1/products/{pid}", headers=AUTH)
        assert refused.status_code == 503 and refused.get_json()["cause"] == "read_only", refused.get_json()
        assert predict(readonly).status_code == 200 and readonly.get(f"/api/v1/products/{pid}").status_code == 200
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)  # noqa: S603,S607
    app_for(index)  # the next start removes whatever the failed writers left
    assert leftovers(index) == []
    store = open_store(index, checksums=True)
    assert {"before", "full"} <= {p.id for p in store.products} and "readonly" not in {p.id for p in store.products}


# ---- paths and photos ----------------------------------------------------------------------------------
def test_a_copied_index_serves_its_own_photos(index, tmp_path):
    client = app_for(index)
    assert add(client, "copied", PHOTO).status_code == 201
    live = index / VERSIONS / read_current(index)
    record = json.loads((live / "deltas" / "000001" / "products.jsonl").read_text())
    assert record["image_path"] == "uploads/copied.jpg"  # was: the absolute path of this folder
    moved = tmp_path / "moved"
    shutil.copytree(index, moved)
    (index / UPLOADS / "copied.jpg").write_bytes(OTHER_PHOTO)  # the original changes ...
    copy = app_for(moved)
    served = copy.get("/api/v1/products/copied/image?size=64")
    assert served.status_code == 200
    own = app_for(index).get("/api/v1/products/copied/image?size=64")
    assert served.data != own.data  # ... and the copy serves its own photo, not the original's
    shutil.rmtree(index)  # ... and the original goes away
    assert copy.get("/api/v1/products/copied/image?size=64").status_code == 200
    assert open_store(moved).products[open_store(moved).row_of("copied")].image_path == moved / UPLOADS / "copied.jpg"


def test_a_photo_a_kept_version_names_survives_later_adds(built, index):
    client = app_for(index)
    assert add(client, "dropped-later", PHOTO).status_code == 201
    build_index(built[0]["folder"], index, encoder=FakeEncoder(), progress=False, added="drop")
    assert open_store(index).row_of("dropped-later") is None  # dropped from the live version ...
    assert add(app_for(index), "next", OTHER_PHOTO).status_code == 201
    assert (index / UPLOADS / "dropped-later.jpg").read_bytes() == PHOTO  # ... but a kept version names it
