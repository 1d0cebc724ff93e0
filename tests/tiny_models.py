"""Tiny randomly initialised weights for the `clip` profile, written to disk like real ones.

The encoder must load these through exactly the code path it uses for real weights
(a model-config JSON + a checkpoint file for open_clip, a sentence-transformers
folder for product text); only the sizes differ, so the tests run in seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TINY_CLIP_NAME = "tiny-test-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "head_width": 16, "layers": 1},
    # open_clip's SimpleTokenizer emits ids up to 49407, so the vocabulary keeps its full size
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_TEXT_DIM = 24
WORDS = [
    "watch",
    "analog",
    "wrist",
    "strap",
    "dial",
    "quartz",
    "baby",
    "cotton",
    "romper",
    "infant",
    "soft",
    "bib",
    "laptop",
    "battery",
    "usb",
    "keyboard",
    "mouse",
    "adapter",
    "item",
    "number",
    "brand",
    "key",
    "features",
    "of",
    "buy",
    "for",
    "rs",
    "online",
    "only",
    "genuine",
    "products",
    "day",
    "replacement",
    "guarantee",
    "free",
    "shipping",
    "cash",
    "on",
    "delivery",
    "montre",
    "bébé",
    "coton",
    "sub",
]


@dataclass(frozen=True)
class TinyWeights:
    clip_config: Path
    clip_checkpoint: Path
    text_dir: Path

    def options(self) -> dict:
        """`create_encoder("clip", **options)` arguments that load these files."""
        return {
            "model_config": str(self.clip_config),
            "pretrained": str(self.clip_checkpoint),
            "text_model": str(self.text_dir),
        }

    def env(self) -> dict:
        """The same configuration as environment variables."""
        return {
            "CLIP_MODEL_CONFIG": str(self.clip_config),
            "CLIP_PRETRAINED": str(self.clip_checkpoint),
            "CLIP_TEXT_MODEL": str(self.text_dir),
        }


def make_tiny_clip(folder: Path, seed: int = 0, name: str = TINY_CLIP_NAME) -> tuple[Path, Path]:
    """Write `<name>.json` (open_clip model config) and `<name>.pt` (its random state_dict)."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)  # not registered here: the encoder does that
    checkpoint = folder / f"{name}-seed{seed}.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


def make_tiny_sentence_model(folder: Path, seed: int = 0) -> Path:
    """Write a sentence-transformers folder: a 1-layer BERT (small WordPiece vocab) + mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    bert_dir = folder / "bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!-'éè"] + [
        f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"
    ]
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=TINY_TEXT_DIM,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=48)
    pooling = Pooling(TINY_TEXT_DIM, "mean")
    out = folder / "tiny-sentence-model"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))
    return out


def make_tiny_weights(folder: Path, seed: int = 0) -> TinyWeights:
    config, checkpoint = make_tiny_clip(folder / "clip", seed)
    text_dir = make_tiny_sentence_model(folder / "text", seed)
    return TinyWeights(config, checkpoint, text_dir)
