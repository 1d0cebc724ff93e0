"""The seller page (/), the OpenAPI document, and health/readiness probes."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from flask import Blueprint, current_app, jsonify, make_response, render_template, request
from flask.typing import ResponseReturnValue

from . import i18n
from .errors import problem, public

bp = Blueprint("web", __name__)

OPENAPI_FILE = Path(__file__).with_name("openapi.yaml")


@lru_cache(maxsize=1)
def openapi_spec() -> dict:
    return yaml.safe_load(OPENAPI_FILE.read_text(encoding="utf-8"))


def render_localized(template: str, **context: object) -> ResponseReturnValue:
    """`template` in the request's language (French unless `?lang=en` or the cookie says
    otherwise), with `t(key, **params)` for its words; an asked-for language is remembered."""
    lang, asked = i18n.choose(request)

    def t(key: str, **params: object) -> str:
        return i18n.translate(lang, key, **params)

    response = make_response(render_template(template, lang=lang, languages=i18n.LANGUAGES, t=t, **context))
    response.vary.add("Cookie")  # the same URL answers in the language the cookie names
    return i18n.remember(response, lang) if asked else response


@bp.get("/")
def index() -> ResponseReturnValue:
    cfg = current_app.config["SERVICE"]
    lang, _ = i18n.choose(request)
    max_upload_mb = i18n.megabytes(cfg.max_upload_bytes, lang)
    page = {
        "lang": lang,
        "strings": i18n.strings(lang),
        "maxUploadBytes": cfg.max_upload_bytes,
        "maxUploadMb": max_upload_mb,
    }
    return render_localized("index.html", max_upload_mb=max_upload_mb, page=page)


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(openapi_spec())


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Liveness: the process answers (the index may still be missing)."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Readiness: 200 only once the index and its encoder are loaded."""
    state = current_app.extensions["service_state"]
    refused = {"refused": state.refused} if state.refused else {}
    try:
        live = state.current()
    except Exception as exc:  # NotReady, or an unexpected load failure
        response = problem(503, f"index not loaded: {exc}", "Service Unavailable", **refused)
        response.headers["Retry-After"] = "5"
        return response
    store = live.store
    refused = {"refused": public(state.refused)} if state.refused else {}  # current() may have refused a new one
    return jsonify(
        status="ready",
        index_version=live.version,
        products=len(store.products),
        profile=store.profile,
        model_id=store.manifest.get("model_id"),
        threshold=live.categorizer.threshold,
        **refused,
    )
