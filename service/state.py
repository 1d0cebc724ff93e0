"""The loaded index, encoder and categorizer of one process, reloaded when stale.

Each gunicorn worker holds one `ServiceState`. Requests take an immutable `Loaded`
snapshot, so a reload in the middle of a request never mixes two index versions.
A newer version published by any process (another worker's add, a rebuild) is
noticed by `IndexStore.is_stale()` - one small file read - before each request.

A version that fails to load or verify is refused with one log line naming the file: a
running process keeps serving the version it has (reported in /readyz and /metrics); a
fresh start serves the newest version that verifies, and with none exits (see
`create_app`) naming the damaged file. The same holds for `CURRENT` itself (a damaged or
truncated pointer, or one rolled back to an older version: indexer.store.local.versions): a
running process never moves to an older version, nor to its own version with fewer deltas. A
refusal is retried only once the pointer changes (`indexer.store.live_fingerprint`: a new
publish, an add, `python -m indexer repair`).
Each (re)load checks checksums when `Config.verify_checksums` (INDEX_VERIFY_CHECKSUMS, default
on): O(index bytes), measured by bench/bench_verify.py. A fresh start first removes what dead
writers left in the index folder (staging folders of a compaction killed by a full disk...).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from indexer.categorizer import Categorizer
from indexer.encoders import Encoder, create_encoder, create_encoder_for
from indexer.store import (
    IndexDamaged,
    IndexMismatch,
    IndexNotFound,
    IndexStore,
    check_compatible,
    clean_leftovers,
    last_verified,
    live_fingerprint,
    open_store,
    read_current,
)

from . import metrics
from .config import Config

log = logging.getLogger(__name__)


class NotReady(RuntimeError):
    """No index (or no encoder) is loaded yet; the message says why."""


@dataclass(frozen=True)
class Loaded:
    store: IndexStore
    encoder: Encoder
    categorizer: Categorizer
    loaded_at: float

    @property
    def version(self) -> str:
        return self.store.version


def set_threads(n: int) -> None:
    """Intra-op threads for torch, FAISS and numpy's BLAS in this process (call again after fork).

    BLAS too: the search re-scores candidates with a matrix-vector product, and OpenBLAS's own
    threads (one per core by default) fight the other worker and the request threads for the
    2 cores; under load that multiplied the predict time (a profile at 100k SYNTHETIC products,
    not a benchmark figure). bench/bench_scale.py runs with the same limits."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    from indexer.encoders import set_text_threads

    n = max(1, int(n))
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")  # persists for the process (used as a call)
    set_text_threads(n)  # e5's OpenMP / USE's BLAS: workers x threads stays <= cores


def categorizer_for(store: IndexStore) -> Categorizer:
    """The manifest's categorizer; calibrated here when the build stored none (an index ingested
    with --no-calibrate stores an explicit uncalibrated entry: served as is, every decision review).
    The language model of the query kinds is loaded here too, not on the first request."""
    from indexer.categorizer import warm_up

    warm_up()
    if store.manifest.get("categorizer"):
        return Categorizer(store)
    from indexer.categorizer import calibrate

    log.info("index %s version %s has no calibrated categorizer: calibrating now", store.path, store.version)
    return Categorizer(store, params=calibrate(store))


class ServiceState:
    def __init__(self, config: Config, encoder: Encoder | None = None):
        self.config = config
        self.index_dir = Path(config.index_dir)
        if config.vector_store:  # IndexStore.load / append on index_dir now go to Milvus
            from indexer.store import route

            route(self.index_dir, config.vector_store)
        self._encoder = encoder
        self._loaded: Loaded | None = None
        self._lock = threading.RLock()
        self._last_attempt = -1e9
        self._failed_at = -1e9
        self._mismatched: str | None = None
        self.error: str | None = None
        self.refused: dict | None = None  # the newest version refused: {"version", "file", "reason"}
        self._refused_pointer: tuple | None = None  # the pointer when a version was refused: retried once it changes
        self.fatal = False  # damage, and no version that verifies: a fresh start must not serve
        self.reloads = 0

    # ---- loading -------------------------------------------------------------------------
    def _encoder_for(self, profile: str, manifest: dict | None = None) -> Encoder:
        if self._encoder is None or self._encoder.profile != profile:
            log.info("loading encoder profile %s", profile)
            self._encoder = create_encoder_for(manifest) if manifest else create_encoder(profile)
        return self._encoder

    def _load_store(self, store: IndexStore | None = None) -> Loaded:
        """Load (or take) a verified version, then its encoder and categorizer."""
        store = store or open_store(self.index_dir, checksums=self.config.verify_checksums)
        fresh = self._encoder is None or self._encoder.profile != store.profile
        encoder = self._encoder_for(store.profile, store.manifest)
        try:
            check_compatible(store.manifest, encoder)
        except IndexMismatch:
            # An encoder we were handed or loaded for an older version may be out of date
            # (same profile, other settings): load the profile afresh, once per model id.
            model = store.manifest.get("model_id")
            if fresh or model == self._mismatched:
                raise
            self._mismatched = model
            self._encoder = None
            encoder = self._encoder_for(store.profile, store.manifest)
            check_compatible(store.manifest, encoder)
        return Loaded(store, encoder, categorizer_for(store), time.time())

    def _refuse(self, version: str | None, exc: Exception) -> None:
        """Remember and report a refused version: one log line naming the file, /readyz, /metrics."""
        file = getattr(exc, "file", None)
        version = getattr(exc, "named", None) or version
        shown = None
        if file is not None:
            shown = file.name if file.parent == self.index_dir else f"{file.parent.name}/{file.name}"
        self.refused = {"version": version, "file": shown, "reason": str(exc)}
        self._refused_pointer = live_fingerprint(self.index_dir)
        metrics.record_refusal(version or "CURRENT")
        log.error("index version %s refused: %s (file %s)", version, exc, file or "n/a")

    def load(self) -> bool:
        """Load the live version, or the newest older one that verifies; on failure remember
        why (for /readyz) and return False. `fatal` is set when versions exist but none verifies."""
        with self._lock:
            self._last_attempt = time.monotonic()
            try:
                clean_leftovers(self.index_dir)
            except Exception:  # cleaning is a courtesy: a folder it cannot clean still serves
                log.exception("leftovers in %s not removed", self.index_dir)
            try:
                self._loaded = self._load_store()
            except IndexNotFound as exc:
                self.error = str(exc)
                log.warning("index not loaded: %s", exc)
                return False
            except IndexDamaged as exc:
                self._refuse(_current_or_none(self.index_dir), exc)
                store, _ = last_verified(self.index_dir, checksums=self.config.verify_checksums)
                if store is None:
                    self.error, self.fatal = str(exc), True
                    return False
                try:
                    self._loaded = self._load_store(store)
                except Exception as other:  # the fall-back's encoder or categorizer cannot load: say why
                    self.error = str(other) or type(other).__name__
                    log.exception("index version %s not loaded", store.version)
                    return False
            except Exception as exc:  # an encoder or categorizer that cannot load: not ready, say why
                self.error = str(exc) or type(exc).__name__
                log.exception("index not loaded")
                return False
            self.error = None
            metrics.set_served(self._loaded.version)
            log.info(
                "index %s version %s loaded: %d products",
                self.index_dir,
                self._loaded.version,
                self._loaded.store.product_count(),
            )
            return True

    def adopt(self, store: IndexStore) -> Loaded:
        """Use a store this process has just written (after an add) without re-reading it."""
        with self._lock:
            encoder = self._encoder_for(store.profile, store.manifest)
            loaded = Loaded(store, encoder, categorizer_for(store), time.time())
            self._loaded = loaded
            metrics.set_served(store.version)
            return loaded

    # ---- per request ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def peek(self) -> Loaded | None:
        return self._loaded

    def current(self) -> Loaded:
        """The live snapshot, reloaded first if another process published a newer version."""
        loaded = self._loaded
        if loaded is None:
            if time.monotonic() - self._last_attempt >= self.config.retry_load_seconds:
                self.load()
            loaded = self._loaded
            if loaded is None:
                raise NotReady(self.error or "index is loading")
            return loaded
        stale = loaded.store.is_stale()
        if stale and time.monotonic() - self._failed_at >= self.config.retry_load_seconds:
            with self._lock:
                pointer = live_fingerprint(self.index_dir)
                refused = self.refused is not None and self._refused_pointer == pointer
                if self._loaded is loaded and not refused:  # nobody reloaded while we waited for the lock
                    version = _current_or_none(self.index_dir)
                    try:
                        fresh = self._load_store()
                        _check_forward(loaded.store, fresh.store)
                        self._loaded = fresh
                        self.reloads += 1
                        self.refused = None
                        metrics.record_refusal(None)
                        metrics.set_served(fresh.version)
                        log.info("reloaded index version %s", fresh.version)
                    except Exception as exc:  # whatever a damaged version raises: keep serving ours
                        self._failed_at = time.monotonic()
                        self._refuse(version, exc)
                        log.warning("keeping index version %s", loaded.version)
                loaded = self._loaded or loaded  # never None here: a reload only replaces it
        elif not stale and self.refused is not None and live_fingerprint(self.index_dir) != self._refused_pointer:
            with self._lock:  # CURRENT was repaired to name what this process serves
                self.refused = None
                metrics.record_refusal(None)
        return loaded


def _check_forward(served: IndexStore, fresh: IndexStore) -> None:
    """A reload only moves forward: never to an older version, nor to the served version with
    fewer (or other) deltas: that is a pointer rolled back, not a publish."""
    if not (served.version.isdigit() and fresh.version.isdigit()):
        return  # a Milvus collection: no version numbers
    older = int(fresh.version) < int(served.version)
    lost = fresh.version == served.version and fresh.deltas[: len(served.deltas)] != served.deltas
    if older or lost:
        what = f"version {fresh.version}" if older else f"{len(fresh.deltas)} deltas of version {fresh.version}"
        raise IndexDamaged(
            f"index {served.path}: now names {what}, behind the version {served.version} with "
            f"{len(served.deltas)} deltas this process serves (rolled back); `python -m indexer repair` restores it",
            file=served.path / "CURRENT",
        )


def _current_or_none(index_dir: Path) -> str | None:
    try:
        return read_current(index_dir)
    except (IndexNotFound, IndexDamaged):
        return None
