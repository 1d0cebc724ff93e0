"""CLIP profile: open_clip image/text towers + a multilingual sentence model for product text.

Images go through an open_clip vision tower (default `ViT-B-32` / `laion2b_s34b_b79k`),
product text through a multilingual sentence-transformers model (default
`sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2`), so French and English
listings land in one text space. The CLIP text tower is kept for cross-modal search:
`encode_image_queries(texts)` maps free text into the *image* space.

Nothing is ever downloaded. Weights come from local paths, or from the Hugging Face hub
cache, looked up with local files only; every file is checked *before* open_clip or
sentence-transformers is called, so a machine without weights fails at once with
`EncoderUnavailable` naming the model, the file expected and the setting to change.

Configuration (constructor option > environment variable > default):

=============  ==================  ==========================================================
option         env var             default / meaning
=============  ==================  ==========================================================
model          CLIP_MODEL          `ViT-B-32`: open_clip architecture name; with a model
                                   config JSON, defaults to that file's stem
pretrained     CLIP_PRETRAINED     `laion2b_s34b_b79k`: an open_clip pretrained tag (looked up
                                   in the hub cache) or the path of a checkpoint file
model_config   CLIP_MODEL_CONFIG   none: path of an open_clip model-config JSON (custom
                                   architecture), registered under its file stem
text_model     CLIP_TEXT_MODEL     `sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2`:
                                   hub repo id (looked up in the cache) or a local
                                   sentence-transformers directory
cache_dir      HF_HUB_CACHE,       `$HF_HOME/hub`, else `~/.cache/huggingface/hub`
               HF_HOME
precision      CLIP_PRECISION      `fp32`; `bf16` runs the forward passes under CPU autocast
threads        (none)              torch intra-op threads
=============  ==================  ==========================================================

`model_ids` name the architecture, the pretrained tag or checkpoint file name, and the
first 12 hex digits of the weights file's sha256, so an index built with other weights
(even under the same name) is refused by `indexer.store.open_store(path, encoder=...)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from indexer.encoders.base import EncoderUnavailable, batches, empty, l2_normalize, sentence_vectors

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_V = TypeVar("_V")
_D = TypeVar("_D")

# No model hub here: forbid downloads before huggingface_hub is first imported. The
# loaders below also pass local paths only, so this holds even if it was imported earlier.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_TEXT_MODEL = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
PRECISIONS = ("bf16", "fp32")
DEFAULT_PRECISION = "fp32"
SHA_PREFIX = 12
# sentence-transformers weights, in the order preferred when several are present
TEXT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache, resolved now (not at import) so HF_HOME changes count."""
    if cache_dir:
        return Path(cache_dir)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "huggingface" / "hub"


def cached_hub_file(repo_id: str, filename: str, cache_dir: Path) -> Path | None:
    """Path of `repo_id/filename` in the hub cache, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir))
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        with open(path, "rb") as fh:
            _SHA_CACHE[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _SHA_CACHE[key]


@dataclass(frozen=True)
class ClipWeights:
    """A resolved open_clip checkpoint: what to pass to open_clip and how to name it."""

    model: str
    label: str  # pretrained tag, or checkpoint file name
    checkpoint: Path
    preprocess: dict  # mean/std/interpolation/resize_mode of a pretrained tag, else {}
    quick_gelu: bool

    @property
    def model_id(self) -> str:
        return f"open_clip/{self.model}@{self.label}#sha256:{file_sha256(self.checkpoint)[:SHA_PREFIX]}"


@dataclass(frozen=True)
class TextWeights:
    """A resolved sentence-transformers folder and the weights file that identifies it."""

    name: str
    directory: Path
    weights: Path

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.weights.name}#sha256:{file_sha256(self.weights)[:SHA_PREFIX]}"


def register_model_config(path: str | os.PathLike) -> str:
    """Register an open_clip model-config JSON; returns the architecture name (file stem)."""
    import open_clip

    path = Path(path)
    if not path.is_file():
        raise EncoderUnavailable(
            f"clip profile: model config {path} (CLIP_MODEL_CONFIG / model_config=) does not exist"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderUnavailable(f"clip profile: model config {path} is not readable JSON: {exc}") from exc
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise EncoderUnavailable(f"clip profile: model config {path} lacks {', '.join(missing)}")
    if open_clip.get_model_config(path.stem) != config:
        open_clip.add_model_config(path)
    return path.stem


def resolve_clip_weights(model: str, pretrained: str, cache_dir: Path) -> ClipWeights | str:
    """The checkpoint for `model`/`pretrained`, or a message saying what is missing."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    if open_clip.get_model_config(model) is None:
        return (
            f"open_clip has no architecture {model!r} (CLIP_MODEL / model=); give its config JSON "
            f"with CLIP_MODEL_CONFIG=/path/{model}.json (model_config=)"
        )
    tag_cfg = get_pretrained_cfg(model, pretrained)
    if tag_cfg:
        preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        hub = tag_cfg.get("hf_hub", "")
        expected = []
        if hub:  # "org/repo/" means open_clip's default file name, "org/repo/file.bin" a given one
            repo_id, filename = os.path.split(hub)
            names: tuple[str, ...]
            if not filename:
                names = OPEN_CLIP_WEIGHT_FILES
            elif filename.endswith(".safetensors"):
                names = (filename,)
            else:  # open_clip prefers a .safetensors twin when the repo has one
                names = (os.path.splitext(filename)[0] + ".safetensors", filename)
            for name in names:
                found = cached_hub_file(repo_id, name, cache_dir)
                if found:
                    return ClipWeights(model, pretrained, found, preprocess, quick_gelu)
            expected.append(f"{' or '.join(names)} of hub repo {repo_id} in the Hugging Face cache {cache_dir}")
        if tag_cfg.get("url"):
            legacy = Path.home() / ".cache" / "clip" / os.path.basename(tag_cfg["url"])
            if legacy.is_file():
                return ClipWeights(model, pretrained, legacy, preprocess, quick_gelu)
            expected.append(f"{legacy}")
        return (
            f"no weights for open_clip {model} / {pretrained}: expected {'; or '.join(expected)} "
            "(cache set by HF_HUB_CACHE or HF_HOME; nothing is downloaded here). Put the file there, "
            "or set CLIP_PRETRAINED=/path/to/checkpoint (pretrained=)"
        )
    path = Path(pretrained).expanduser()
    if path.is_file():
        return ClipWeights(model, path.name, path, {}, False)
    known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
    return (
        f"no weights for open_clip {model}: CLIP_PRETRAINED / pretrained= is {pretrained!r}, which is "
        f"neither an existing checkpoint file nor a pretrained tag of {model} (tags: {known})"
    )


def resolve_text_weights(text_model: str, cache_dir: Path) -> TextWeights | str:
    """The sentence-transformers folder for `text_model`, or a message saying what is missing."""
    local = Path(text_model).expanduser()
    if local.is_dir():
        directory, where, name = local, f"directory {local}", local.name
    else:
        if text_model.count("/") != 1 or text_model.startswith((".", "/", "~")):
            return (
                f"no sentence-transformers model {text_model!r}: CLIP_TEXT_MODEL / text_model= is neither "
                "an existing directory nor a hub repo id (org/name)"
            )
        config = cached_hub_file(text_model, "config.json", cache_dir)
        if config is None:
            return (
                f"no sentence-transformers model {text_model}: it is not in the Hugging Face cache "
                f"{cache_dir} (HF_HUB_CACHE / HF_HOME; nothing is downloaded here). Put its snapshot "
                "there, or set CLIP_TEXT_MODEL=/path/to/sentence-transformers-dir (text_model=)"
            )
        directory, where, name = config.parent, f"the cached snapshot {config.parent}", text_model
    if not (directory / "config.json").is_file() and not (directory / "modules.json").is_file():
        return f"sentence-transformers model {text_model}: {where} has no modules.json or config.json"
    for filename in TEXT_WEIGHT_FILES:
        if (directory / filename).is_file():
            return TextWeights(name, directory, directory / filename)
    return (
        f"sentence-transformers model {text_model}: {where} has no weights (expected {' or '.join(TEXT_WEIGHT_FILES)})"
    )


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a truncated, foreign or mismatched weights file raises while loading."""
    errors: tuple[type[BaseException], ...] = (
        OSError,
        RuntimeError,
        ValueError,
        KeyError,
        EOFError,
        pickle.UnpicklingError,
    )
    try:
        from safetensors import SafetensorError

        errors += (SafetensorError,)
    except ImportError:
        pass
    return errors


def _option(value: _V | None, env: str, default: _D) -> _V | str | _D:
    return value if value not in (None, "") else (os.environ.get(env) or default)


class ClipEncoder:
    """open_clip image vectors (CLIP embed dim), multilingual sentence vectors for product text.

    `encode_image_queries(texts)` uses the CLIP text tower instead: its vectors live in the
    image space (`dims["image"]`), for searching the image index with words.
    """

    profile = "clip"

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        model_config: str | os.PathLike | None = None,
        text_model: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        precision: str | None = None,
        threads: int | None = None,
    ):
        precision = _option(precision, "CLIP_PRECISION", DEFAULT_PRECISION)
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
        cache = hub_cache_dir(cache_dir)
        text_model = str(_option(text_model, "CLIP_TEXT_MODEL", DEFAULT_TEXT_MODEL))
        text_weights = resolve_text_weights(text_model, cache)  # before the slow imports
        try:
            import open_clip
        except ImportError as exc:
            raise EncoderUnavailable(
                f"clip profile needs open_clip_torch ({exc}); pip install -r requirements.txt"
            ) from exc
        config_path: str | os.PathLike | None = _option(model_config, "CLIP_MODEL_CONFIG", None)
        config_model = register_model_config(config_path) if config_path else None
        model = _option(model, "CLIP_MODEL", config_model or DEFAULT_MODEL)
        if config_model and model != config_model:
            raise ValueError(
                f"CLIP_MODEL / model= is {model!r} but the model config {config_path} defines {config_model!r} "
                "(open_clip names an architecture after its config file)"
            )
        pretrained = str(_option(pretrained, "CLIP_PRETRAINED", DEFAULT_PRETRAINED))
        clip_weights = resolve_clip_weights(model, pretrained, cache)
        # Every file is checked before any weights load, and all that is missing is named at once.
        missing = [m for m in (clip_weights, text_weights) if isinstance(m, str)]
        if missing:
            raise EncoderUnavailable("clip profile unavailable: " + " | ".join(missing))
        assert isinstance(clip_weights, ClipWeights) and isinstance(text_weights, TextWeights)  # neither is missing

        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.precision = precision
        self.clip_weights, self.text_weights = clip_weights, text_weights
        self._clip, self._preprocess, self._tokenizer = self._load_clip(clip_weights)
        self._text_model = self._load_text_model(text_weights)
        size = self._clip.visual.image_size
        self.image_size = int(max(size) if isinstance(size, (tuple, list)) else size)
        self.model_ids = {"image": clip_weights.model_id, "text": text_weights.model_id}
        text_dim = self._text_model.get_embedding_dimension()
        assert text_dim is not None  # a sentence-transformers model always has an output dimension
        self.dims = {
            "image": int(open_clip.get_model_config(model)["embed_dim"]),
            "text": int(text_dim),
        }

    @staticmethod
    def _load_clip(weights: ClipWeights) -> tuple[Any, Any, Any]:  # open_clip is untyped: model, transform, tokenizer
        import open_clip

        pre = weights.preprocess
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                weights.model,
                pretrained=str(weights.checkpoint),
                force_quick_gelu=weights.quick_gelu,
                image_mean=pre.get("mean"),
                image_std=pre.get("std"),
                image_interpolation=pre.get("interpolation"),
                image_resize_mode=pre.get("resize_mode"),
                device="cpu",
            )
            tokenizer = open_clip.get_tokenizer(weights.model)
        except _load_errors() as exc:
            raise EncoderUnavailable(
                f"clip profile: open_clip {weights.model} cannot load {weights.checkpoint}: {exc}"
            ) from exc
        return model.eval(), preprocess, tokenizer

    @staticmethod
    def _load_text_model(weights: TextWeights) -> SentenceTransformer:
        from sentence_transformers import SentenceTransformer

        try:
            return SentenceTransformer(str(weights.directory), device="cpu", local_files_only=True)
        except _load_errors() as exc:
            raise EncoderUnavailable(
                f"clip profile: sentence-transformers cannot load {weights.directory}: {exc}"
            ) from exc

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "bf16":
            return self._torch.autocast("cpu", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """open_clip's own inference transform (resize, centre crop, the weights' mean/std)."""
        return self._preprocess(image).numpy().astype(np.float32, copy=False)

    def encode_arrays(self, arrays: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        torch = self._torch
        out = []
        for chunk in batches(list(arrays), batch_size):
            with torch.inference_mode(), self._autocast():
                out.append(self._clip.encode_image(torch.from_numpy(np.stack(chunk))).float().numpy())
        return l2_normalize(np.concatenate(out)) if out else empty(self.dims["image"])

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        return self.encode_arrays([self.preprocess(im) for im in images], batch_size)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Product text -> the multilingual sentence space (`dims["text"]`)."""
        if len(texts) == 0:
            return empty(self.dims["text"])
        context = contextlib.ExitStack()
        context.enter_context(self._torch.inference_mode())
        context.enter_context(self._autocast())
        return sentence_vectors(self._text_model, texts, batch_size, context)

    def encode_image_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Free text -> the CLIP *image* space (`dims["image"]`), to search the image index by words."""
        torch = self._torch
        out = []
        for chunk in batches(list(texts), batch_size):
            tokens = self._tokenizer(list(chunk))
            with torch.inference_mode(), self._autocast():
                out.append(self._clip.encode_text(tokens).float().numpy())
        return l2_normalize(np.concatenate(out)) if out else empty(self.dims["image"])
