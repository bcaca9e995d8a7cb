"""Helpers shared by the tests: tiny open_clip configs and tiny models."""

from __future__ import annotations

import torch

from cosegkit.testing import TINY_CLIP, TINY_CLIP_RN, register_tiny_clips

__all__ = ["CLASSNAMES", "TINY_CLIP", "TINY_CLIP_RN", "make_tiny_clip", "register_tiny_clips", "tiny_lcco"]

CLASSNAMES = ("cat", "dog", "car", "bird", "person", "boat", "chair", "bottle")


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
