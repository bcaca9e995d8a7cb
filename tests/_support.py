"""Helpers shared by the tests: tiny open_clip configs and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY_CLIP = "coseg-test-tiny"
TINY_CLIP_RN = "coseg-test-tiny-rn"
TINY_CLIP_CONFIGS = {
    TINY_CLIP: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    TINY_CLIP_RN: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
}
CLASSNAMES = ("cat", "dog", "car", "bird", "person", "boat", "chair", "bottle")


def register_tiny_clips(folder: Path) -> None:
    """Write the tiny open_clip configs to ``folder`` and register them with open_clip."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in TINY_CLIP_CONFIGS.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)



def make_tiny_clip(**kwargs):
    """A random tiny ViT CLIP (D = 32) over :data:`CLASSNAMES`."""
    from cosegkit.clip import FrozenClip

    torch.manual_seed(1234)
    kwargs.setdefault("classnames", CLASSNAMES)
    return FrozenClip.from_name(kwargs.pop("model_name", TINY_CLIP), pretrained=None, **kwargs)


def tiny_lcco(**kwargs):
    """A tiny LCCo (timm test encoder, tiny CLIP) for model-level tests; kwargs override."""
    from cosegkit import LCCo

    torch.manual_seed(0)
    defaults = dict(
        encoder_name="tu-test_convnext",
        encoder_weights=None,
        clip_model=TINY_CLIP,
        clip_pretrained=None,
        classnames=CLASSNAMES,
        decoder_channels=(32, 32, 16, 16),
        heads=4,
        clip_heads=4,
        top_k=3,
    )
    defaults.update(kwargs)
    return LCCo(**defaults)
