"""Encoders by profile name: the one way the build, the service and the evaluation
get vectors, in the manner of open_clip's `create_model_and_transforms` registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from indexer.encoders.base import Encoder, EncoderUnavailable, encode_text_queries, l2_normalize, model_id

DEFAULT_PROFILE = "embedded"

_FACTORIES: dict[str, Callable[..., Encoder]] = {}


def register_profile(name: str, factory: Callable[..., Encoder]) -> None:
    """Make `create_encoder(name)` build an encoder with `factory(**options)`."""
    _FACTORIES[name] = factory


def list_profiles() -> list[str]:
    return sorted(_FACTORIES)


def create_encoder(profile: str = DEFAULT_PROFILE, **options: Any) -> Encoder:
    """Build the encoder of a named profile; options override its env/config defaults."""
    try:
        factory = _FACTORIES[profile]
    except KeyError:
        raise ValueError(f"unknown encoder profile {profile!r}; known profiles: {', '.join(list_profiles())}") from None
    return factory(**options)


def create_encoder_for(manifest: Mapping[str, Any]) -> Encoder:
    """The encoder an index was built with: its profile and the options it recorded
    (e.g. the embedded profile's text model), so the service follows the index."""
    return create_encoder(manifest.get("profile", DEFAULT_PROFILE), **dict(manifest.get("encoder_options") or {}))


def set_text_threads(n: int) -> None:
    """OpenMP/BLAS threads of the multilingual text towers (see textmodels.set_text_threads)."""
    from indexer.encoders.textmodels import set_text_threads as _set

    _set(n)


def _embedded(**options: Any) -> Encoder:
    from indexer.encoders.embedded import EmbeddedEncoder

    return EmbeddedEncoder(**options)


def _clip(**options: Any) -> Encoder:
    from indexer.encoders.clip import ClipEncoder

    return ClipEncoder(**options)


register_profile("embedded", _embedded)
register_profile("clip", _clip)

__all__ = [
    "DEFAULT_PROFILE",
    "Encoder",
    "EncoderUnavailable",
    "create_encoder",
    "create_encoder_for",
    "set_text_threads",
    "encode_text_queries",
    "l2_normalize",
    "list_profiles",
    "model_id",
    "register_profile",
]
