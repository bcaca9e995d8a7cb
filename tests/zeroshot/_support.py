"""Helpers shared by the zero-shot tests: small CLIP configs, ways to run open_clip's tower by hand,
and transcriptions of CLIP-ES's steps (linyq2117/CLIP-ES) that cosegkit is held against."""

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


def clip_es_positional_embedding(visual: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The ViT's positional embedding resized to ``grid`` as CLIP-ES's ``upsample_pos_emb`` does.

    CLIP-ES (``clip/model.py``) keeps the class token's row, lays the patch rows out on the
    tower's grid and calls ``F.upsample(emb, size=new_size, mode='bilinear')``: bilinear, with
    ``align_corners`` unset, i.e. False. Written out here as loops: output pixel ``i`` of
    ``n`` samples the source at ``(i + 0.5) * g / n - 0.5`` (clamped at 0) between its two
    neighbours (the second clamped at the last row), along each axis.
    """
    pos = visual.positional_embedding.detach().double()
    gh, gw = visual.grid_size
    nh, nw = grid
    source = [[pos[1 + r * gw + c] for c in range(gw)] for r in range(gh)]

    def where(i: int, n: int, g: int) -> tuple[int, int, float]:
        x = max((i + 0.5) * g / n - 0.5, 0.0)
        lo = int(x)
        return lo, min(lo + 1, g - 1), x - lo

    rows = [pos[0]]
    for i in range(nh):
        y0, y1, ly = where(i, nh, gh)
        for j in range(nw):
            x0, x1, lx = where(j, nw, gw)
            top = (1 - lx) * source[y0][x0] + lx * source[y0][x1]
            bottom = (1 - lx) * source[y1][x0] + lx * source[y1][x1]
            rows.append((1 - ly) * top + ly * bottom)
    return torch.stack(rows).to(visual.positional_embedding.dtype)


def scale_cam_image(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` as CLIP-ES bundles it, with ``target_size=None``:
    for each map, ``img - min``, then ``img / (1e-7 + max)``; no resize."""
    out = []
    for img in maps:
        img = img - img.min()
        img = img / (1e-7 + img.max())
        out.append(img)
    return torch.stack(out).float()


def clip_es_gradcam_scaling(raw: torch.Tensor, scaling: str = "twice") -> torch.Tensor:
    """One image's CAM ``(h, w)`` (the weighted channel sum) as CLIP-ES's bundled GradCAM returns it.

    ``BaseCAM.compute_cam_per_layer``: ``np.maximum(cam, 0)`` in float32, then
    ``scale_cam_image`` per target layer; ``aggregate_multi_layers``: the layers concatenated,
    ``np.maximum(., 0)``, their mean, and ``scale_cam_image`` again. CLIP-ES has one target
    layer (``resblocks[-1].ln_1``) and passes ``target_size=None``, so nothing is resized in
    between. ``scaling="once"`` stops after the first ``scale_cam_image``.
    """
    cam = raw.clamp(min=0).float()[None]  # a batch of one image, one target
    per_layer = [scale_cam_image(cam)[:, None]]  # (1, 1, h, w): one target layer
    if scaling == "once":
        return per_layer[0][0, 0]
    stacked = torch.cat(per_layer, dim=1).clamp(min=0)
    return scale_cam_image(stacked.mean(dim=1))[0]
