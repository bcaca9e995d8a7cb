"""Tiny random models for offline smoke tests and documentation examples.

Nothing here downloads anything. :func:`register_tiny_clips` registers two very small
open_clip architectures, ``"coseg-test-tiny"`` (a 1-layer ViT, 32 px input, patch 8) and
``"coseg-test-tiny-rn"`` (a 1-block-per-stage ModifiedResNet, 64 px input), both with a
32-wide embedding. Build them with ``pretrained=None`` (random weights): they check that an
installation, a pipeline or a new layer runs; they know nothing about images.

Example:
    >>> from cosegkit.testing import register_tiny_clips, TINY_CLIP
    >>> register_tiny_clips()
    ['coseg-test-tiny', 'coseg-test-tiny-rn']
    >>> from cosegkit.clip import FrozenClip
    >>> FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog"]).embed_dim
    32
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_ARGS", "TINY_CLIP", "TINY_CLIP_CONFIGS", "TINY_CLIP_RN", "register_tiny_clips", "tiny_model"]

#: The flags with which the browser demo's test and its docs screenshot start Debian's headless
#: chromium: no GPU, no QUIC, and none of chromium's own calls home (component updates, sync,
#: field trials), which a machine without a network refuses many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

TINY_CLIP = "coseg-test-tiny"
TINY_CLIP_RN = "coseg-test-tiny-rn"
TINY_CLIP_CONFIGS: dict[str, dict] = {
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


def register_tiny_clips(folder: str | Path | None = None) -> list[str]:
    """Register the tiny open_clip architectures with open_clip (idempotent).

    Args:
        folder: where to write the config files open_clip reads (a temporary folder by
            default).

    Returns:
        The registered architecture names.

    Example:
        >>> import open_clip
        >>> import torch
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.testing import TINY_CLIP, TINY_CLIP_RN, register_tiny_clips
        >>> names = register_tiny_clips()
        >>> names, all(name in open_clip.list_models() for name in names)
        (['coseg-test-tiny', 'coseg-test-tiny-rn'], True)
        >>> register_tiny_clips() == names  # registering again changes nothing
        True

        Random weights (``pretrained=None``): the shapes are real, the embeddings meaningless.

        >>> clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog", "car"])
        >>> clip.image_size, clip.embed_dim, clip.text_bank.shape
        ((32, 32), 32, torch.Size([3, 32]))
        >>> embeddings, patches = clip.encode_images(torch.rand(2, 4, 3, 48, 64), dense=True)
        >>> embeddings.shape, patches.shape  # (B, N, D) and (B, N, D, h, w): a 4 x 4 grid of 8 px patches
        (torch.Size([2, 4, 32]), torch.Size([2, 4, 32, 4, 4]))
        >>> FrozenClip.from_name(TINY_CLIP_RN, pretrained=None, classnames=["cat", "dog"]).image_size
        (64, 64)
    """
    import open_clip

    missing = [name for name in TINY_CLIP_CONFIGS if name not in open_clip.list_models()]
    if missing:
        target = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="cosegkit-clip-configs-"))
        target.mkdir(parents=True, exist_ok=True)
        for name in missing:
            path = target / f"{name}.json"
            path.write_text(json.dumps(TINY_CLIP_CONFIGS[name]))
            open_clip.add_model_config(path)
    return list(TINY_CLIP_CONFIGS)


def tiny_model(seed: int = 0, **kwargs: Any) -> Any:
    """A tiny random :class:`~cosegkit.LCCo` in eval mode (timm's test ConvNeXt, the tiny ViT CLIP).

    For examples and smoke tests of whatever takes a model (export, evaluation, segmentation);
    ``kwargs`` override the constructor's arguments.

    Example:
        >>> import torch
        >>> from cosegkit.testing import tiny_model
        >>> model = tiny_model()
        >>> model.training, model.predict(torch.rand(1, 3, 3, 32, 32)).shape
        (False, torch.Size([1, 3, 1, 32, 32]))
    """
    import torch

    from cosegkit.models.lcco import LCCo

    register_tiny_clips()
    torch.manual_seed(seed)
    settings: dict[str, Any] = dict(
        encoder_name="tu-test_convnext",
        encoder_weights=None,
        clip_model=TINY_CLIP,
        clip_pretrained=None,
        classnames=("cat", "dog", "car", "bird"),
        decoder_channels=(32, 32, 16, 16),
        heads=4,
        clip_heads=4,
        top_k=2,
    )
    settings.update(kwargs)
    with _quiet_random_clip():
        model = LCCo(**settings)
    return model.eval()


def _quiet_random_clip() -> Any:
    """open_clip's "initialized randomly" notice, expected here, left out."""
    from cosegkit.clip.frozen import _drop_root_messages

    return _drop_root_messages("No pretrained weights loaded")
