"""Shared fixtures: synthetic images, and one real index built once per test run (shared by the
pytest-xdist workers `make test` starts); the hooks that keep tests sharing a fixture on one worker."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from filelock import FileLock
from xdist_groups import make_scheduler, order_and_record, shared_folder

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data" / "Flipkart"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    path = data_dir()
    if not (path / "Images").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"DATA_DIR {path} is missing in CI")
        pytest.skip(f"dataset not found at {path} (set DATA_DIR)")
    return path


@pytest.fixture
def fake_profile(monkeypatch):
    """The fake encoder under its profile name (tests/fakes.py) for this test only: the registry is
    global, and a profile left registered changes what later tests see. Returns the encoders made."""
    from fakes import FAKE_PROFILE, FakeEncoder

    import indexer.encoders as encoders

    made: list = []

    def factory(**options):
        made.append(FakeEncoder(**options))
        return made[-1]

    monkeypatch.setitem(encoders._FACTORIES, FAKE_PROFILE, factory)
    return made


@pytest.fixture(scope="session")
def embedded_encoder():
    from indexer.encoders import create_encoder

    return create_encoder("embedded")


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outside pytest-randomly's wrapper: after its shuffle
def pytest_collection_modifyitems(config, items):
    """On a pytest-xdist worker, order the tests and record those that share an expensive fixture
    (tests/xdist_groups.py)."""
    result = yield
    if os.environ.get("PYTEST_XDIST_WORKER"):
        order_and_record(config, items)
    return result


def pytest_xdist_make_scheduler(config, log):
    """`make test`'s scheduler: each group on one worker, in that order."""
    return make_scheduler(config, log)


@pytest.fixture(scope="session")
def real_index(tmp_path_factory, real_data_dir, request):
    """The 945-product index, embedded profile, built once per run and shared (read-only!): the
    first worker to ask builds it under a file lock, the others wait and read its summary."""
    from indexer.pipeline.build import BuildSummary

    shared = shared_folder(tmp_path_factory)
    out, done = shared / "real-index", shared / "real-index.summary.json"
    with FileLock(str(shared / "real-index.lock")):
        if not done.exists():
            from indexer.pipeline.build import build_index

            encoder = request.getfixturevalue("embedded_encoder")
            summary = build_index(real_data_dir, out, encoder=encoder, progress=False)
            done.write_text(json.dumps(dataclasses.asdict(summary)))
    return out, BuildSummary(**json.loads(done.read_text()))


@pytest.fixture(scope="session")
def service_index(request) -> Path:
    """The real 945-product index (read-only). SERVICE_TEST_INDEX may name a prebuilt one
    (built by the same code) to skip the session build while iterating."""
    prebuilt = os.environ.get("SERVICE_TEST_INDEX")
    if prebuilt:
        return Path(prebuilt)
    path, _ = request.getfixturevalue("real_index")
    return Path(path)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A Milvus standalone server (the `milvus` dev package) on free ports, started once per
    session by the first test that asks for it (about 30 s) and stopped at the end; its base
    folder (binary and data, ~0.5 GB) is removed. Skipped, outside CI, when the package is
    missing; in CI a missing package fails."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the `milvus` package (requirements-dev.txt) is missing in CI")
        pytest.skip("the `milvus` package is not installed (pip install -r requirements-dev.txt)")
    from milvus_server import EmbeddedMilvus

    server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus-server")).start()
    try:
        yield server
    finally:
        server.remove()
