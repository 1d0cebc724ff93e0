"""Flask application factory: `gunicorn "service.app:create_app()"`.

The index and encoder are loaded here, so with gunicorn's preload_app the master
loads the model weights once and the forked workers share those pages.
"""

from __future__ import annotations

import logging
import sqlite3

from flask import Flask, request

from indexer.encoders import Encoder

from . import api, batch, docs, errors, listing_api, metrics, review_page, web
from .config import Config
from .inputs import BodyDeadline, check_url, decode_budget
from .listings import Listings
from .recalibration import Recalibrator
from .state import ServiceState, set_threads

log = logging.getLogger(__name__)


def create_app(config: Config | None = None, encoder: Encoder | None = None, load: bool = True) -> Flask:
    """Build the app; `config` defaults to the environment, `encoder` may be shared (tests)."""
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.update(
        SERVICE=config,
        MAX_CONTENT_LENGTH=config.max_upload_bytes,
        MAX_FORM_MEMORY_SIZE=config.max_upload_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider has it
    set_threads(config.torch_threads)
    state = ServiceState(config, encoder=encoder)
    app.extensions["service_state"] = state
    app.extensions["decode_budget"] = decode_budget(config)
    listings = app.extensions["listings"] = Listings(state)
    app.extensions["recalibrator"] = listings.recalibrator = Recalibrator(
        state, lambda: listings.audit, config.recalibrate_after
    )
    errors.register(app)
    app.before_request(lambda: check_url(request.environ, config))
    app.wsgi_app = BodyDeadline(app.wsgi_app, config.body_timeout)  # type: ignore[method-assign]
    metrics.install(app)
    app.register_blueprint(web.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(listing_api.bp)
    app.register_blueprint(batch.bp)
    app.register_blueprint(review_page.bp)
    app.register_blueprint(metrics.bp)
    if load and state.load() and (live := state.peek()) is not None:
        metrics.set_index_size(live.store.product_count())
        try:
            app.extensions["listings"].recover()  # listings a killed process left half-filed
        except (OSError, sqlite3.Error) as exc:  # a read-only or full disk: serve reads, recover later
            log.warning("listings not recovered at start (%s): retried on the next listing request", exc)
    elif load and state.fatal:
        # versions exist but none verifies: serving nothing beats serving damage (gunicorn's
        # master exits here, during preload, with this line)
        raise SystemExit(f"refusing to serve {config.index_dir}: no index version verifies; {state.error}")
    return app
