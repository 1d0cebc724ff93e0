"""Defaults shared by the CLI, the service and the evaluation, so that they agree.

`make run`, `python -m indexer`, the service and `python -m evaluation` all read the index from
$INDEX_DIR, and from `var/index` (relative to the working directory) when it is unset.
"""

from __future__ import annotations

import os

DEFAULT_INDEX_DIR = "var/index"


def index_dir_default() -> str:
    """$INDEX_DIR when set and not empty, else DEFAULT_INDEX_DIR."""
    return os.environ.get("INDEX_DIR") or DEFAULT_INDEX_DIR


VERBOSE_ENV = "INDEXER_VERBOSE"  # 1: let Ray, transformers and friends print their info and warnings


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes", "on")


def quiet_third_party() -> None:
    """Keep the libraries' chatter (Ray's start-up warnings, transformers' notices, tokenizer
    fork notes) below warnings, unless INDEXER_VERBOSE=1: a newcomer reads them as failures.
    Our own messages and real errors still print."""
    import logging

    if verbose():
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for name in ("ray", "ray.data", "transformers", "sentence_transformers", "huggingface_hub", "timm", "open_clip"):
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_logging_level() -> int:
    """Ray's own logging level for ray.init: ERROR unless INDEXER_VERBOSE=1."""
    import logging

    return logging.INFO if verbose() else logging.ERROR
