"""Helpers shared by the zero-shot tests: small CLIP configs and ways to run open_clip's tower by hand."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from cosegkit.clip import FrozenClip
from tests._support import CLASSNAMES

TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}

#: a 3-layer ViT, width 48 (3 heads of 16), patch 8, 32 px: a 4 x 4 patch grid at its own size
DEEP_VIT = "coseg-test-zeroshot-vit3"
DEEP_VIT_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 48, "patch_size": 8, "head_width": 16},
    "text_cfg": TEXT_CFG,
}


def vit_config(**vision) -> dict:
    """A 1-layer, 32-wide, 32 px ViT config with ``vision`` overrides."""
    cfg = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16, **vision}
    return {"embed_dim": 32, "vision_cfg": cfg, "text_cfg": TEXT_CFG}


def register(folder: Path, name: str, config: dict) -> str:
    """Register an open_clip config under ``name`` (once), written to ``folder``."""
    if name not in open_clip.list_models():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    return name


def build_clip(name: str, classnames=CLASSNAMES, seed: int = 0) -> FrozenClip:
    torch.manual_seed(seed)
    return FrozenClip.from_name(name, pretrained=None, classnames=classnames)


@torch.no_grad()
def sharpen_attention(clip: FrozenClip, factor: float) -> FrozenClip:
    """Scale the query and key projections of every ViT block by ``factor`` (logits by ``factor**2``).

    A random CLIP's attention is nearly uniform, and CAA's three rounds of normalisation and
    its squaring make the transition matrix more uniform still: the refined map before
    min-max scaling then varies by well under 1% of its mean (up to 370x less than its mean
    for ``DEEP_VIT``), and the scaling magnifies float32 rounding (batch size, order) by as
    much, past 1e-5. A trained CLIP attends far more sharply; with ``factor=4`` the ratio
    stays below 10, so the set properties hold to float tolerance on the refined maps too.
    """
    for block in clip.model.visual.transformer.resblocks:
        width = block.attn.embed_dim
        block.attn.in_proj_weight[: 2 * width] *= factor
        block.attn.in_proj_bias[: 2 * width] *= factor
    return clip


def normalise(clip, images: torch.Tensor) -> torch.Tensor:
    """``(n, 3, H, W)`` in [0, 1] to CLIP's normalised pixels, with no resizing."""
    return (images - clip.mean) / clip.std


@contextlib.contextmanager
def positional_embedding(visual: nn.Module, pos: torch.Tensor):
    """Temporarily give open_clip's ViT another positional embedding (to run it on another grid)."""
    old = visual.positional_embedding
    visual.positional_embedding = nn.Parameter(pos, requires_grad=False)
    try:
        yield
    finally:
        visual.positional_embedding = old


def bicubic_positional_embedding(visual: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The ViT's positional embedding with its patch part resized (bicubic) to ``grid``."""
    pos = visual.positional_embedding.detach()
    gh, gw = visual.grid_size
    patches = pos[1:].T.reshape(1, -1, gh, gw)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patches.reshape(pos.shape[1], -1).T])
