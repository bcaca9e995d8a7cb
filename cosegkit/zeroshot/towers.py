"""Passes through open_clip's image towers that CLIP-ES needs, by hooks on open_clip's own modules.

Nothing of open_clip is copied: the passes call the tower's own parts (patch embedding,
blocks, final norm, projection) in order, and read what they need with hooks:

- the output of the last block's first LayerNorm (``resblocks[-1].ln_1``), replaced by a
  leaf tensor that requires grad, so that one backward gives GradCAM's gradients there;
- the attention weights of the last blocks, by asking their ``nn.MultiheadAttention`` for
  its weights (``need_weights=True``, averaged over heads) in a forward pre-hook.

Axis legend: ``bn`` images, ``t`` tokens (class token first), ``c`` tower width, ``d``
joint embedding width, ``h w`` patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit import _names
from cosegkit.errors import CosegValueError

__all__ = [
    "POS_INTERPOLATIONS",
    "TowerPass",
    "attention_pool",
    "check_pos_interpolation",
    "check_tower",
    "interpolate_positional_embedding",
    "resnet_pass",
    "vit_pass",
]

SUPPORTED = (
    "open_clip's VisionTransformer (token or average pooling, no attentional pooler, blocks "
    "with nn.MultiheadAttention: GradCAM and CAA) and ModifiedResNet (GradCAM on layer4, no CAA)"
)


@dataclass
class TowerPass:
    """What one pass through the image tower leaves for GradCAM and CAA.

    Attributes:
        pooled: ``(bn, d)`` the tower's own image embedding (class token or as the tower pools), not
            normalised, with grad.
        patch_mean: ``(bn, d)`` the image embedding CLIP-ES scores, with grad: for a ViT the
            mean of the last block's patch tokens after ``ln_post`` and ``proj``; for a
            ResNet the attention pool's output.
        leaf: the GradCAM layer's output as a leaf that requires grad (differentiate with
            respect to it): ``(bn, t, c)`` for a ViT (class token first), ``(bn, c, h, w)`` for a ResNet.
        grid: the patch grid ``(h, w)``.
        attention: ``(bn, h*w, h*w)`` patch-to-patch attention averaged over heads and the
            last blocks, or None (ResNet).

    Example:
        GradCAM's ingredients from a tiny random ViT CLIP (32 px, patch 8: a 4 x 4 grid):

        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot.towers import vit_pass
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> tp = vit_pass(clip.model.visual, torch.randn(2, 3, 32, 32), attention_blocks=8)
        >>> (grad,) = torch.autograd.grad(tp.patch_mean.sum(), tp.leaf)  # gradients at the leaf
        >>> grad.shape == tp.leaf.shape, tp.leaf.shape
        (True, torch.Size([2, 17, 32]))
        >>> tp.as_grid(grad).shape  # the class token dropped, the patch tokens on the grid
        torch.Size([2, 32, 4, 4])
    """

    pooled: torch.Tensor
    patch_mean: torch.Tensor
    leaf: torch.Tensor
    grid: tuple[int, int]
    attention: torch.Tensor | None

    def as_grid(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like ``leaf`` (the activation or its gradient) as ``(bn, c, h, w)``."""
        if t.ndim == 4:
            return t
        return rearrange(t[:, 1:], "bn (h w) c -> bn c h w", h=self.grid[0], w=self.grid[1])


def check_tower(visual: nn.Module) -> str:
    """``"vit"`` or ``"resnet"`` for a supported open_clip tower; a clear error otherwise.

    Example:
        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot.towers import check_tower
        >>> _ = register_tiny_clips()
        >>> vit = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> rn = FrozenClip.from_name("coseg-test-tiny-rn", pretrained=None, classnames=["cat", "dog"])
        >>> check_tower(vit.model.visual), check_tower(rn.model.visual)
        ('vit', 'resnet')

        Another module is refused with what is supported:

        >>> check_tower(torch.nn.Linear(4, 4))  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: zero-shot co-segmentation supports open_clip's VisionTransformer (...)
        and ModifiedResNet (...); got an image tower of type Linear
    """
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, ModifiedResNet):
        return "resnet"
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None:
            raise CosegValueError(
                f"zero-shot co-segmentation supports {SUPPORTED}; this VisionTransformer has an "
                f"attentional pooler (CoCa-style), whose image embedding is not a patch average"
            )
        blocks = visual.transformer.resblocks
        bad = [type(b).__name__ for b in blocks if not isinstance(getattr(b, "attn", None), nn.MultiheadAttention)]
        if bad or not hasattr(blocks[-1], "ln_1"):
            raise CosegValueError(
                f"zero-shot co-segmentation supports {SUPPORTED}; this VisionTransformer's blocks "
                f"({bad[0] if bad else type(blocks[-1]).__name__}) have no reachable attention weights "
                f"(no nn.MultiheadAttention 'attn' and 'ln_1'), so neither GradCAM's layer nor CAA's "
                f"attention can be read"
            )
        if visual.pool_type not in ("tok", "avg"):
            raise CosegValueError(
                f"zero-shot co-segmentation supports {SUPPORTED}; this VisionTransformer pools with "
                f"{visual.pool_type!r}"
            )
        return "vit"
    raise CosegValueError(
        f"zero-shot co-segmentation supports {SUPPORTED}; got an image tower of type {type(visual).__name__}"
    )


#: How :func:`interpolate_positional_embedding` may resize: CLIP-ES's ``"bilinear"`` (the default)
#: or ``"bicubic"`` (as open_clip and timm resize a checkpoint's embedding).
POS_INTERPOLATIONS: tuple[str, ...] = _names.POS_INTERPOLATIONS


def check_pos_interpolation(mode: str) -> str:
    """``mode`` if it is one of :data:`POS_INTERPOLATIONS`; a clear error otherwise.

    Example:
        >>> from cosegkit.zeroshot.towers import check_pos_interpolation
        >>> check_pos_interpolation("bilinear")
        'bilinear'
        >>> check_pos_interpolation("nearest")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: pos_interpolation must be 'bilinear' (CLIP-ES) or 'bicubic', got 'nearest'
    """
    if mode not in POS_INTERPOLATIONS:
        raise CosegValueError(f"pos_interpolation must be 'bilinear' (CLIP-ES) or 'bicubic', got {mode!r}")
    return mode


def interpolate_positional_embedding(
    pos: torch.Tensor, grid: tuple[int, int], new: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """A ViT's positional embedding ``(1 + gh*gw, c)`` resized to a ``new`` patch grid.

    The class token's row is kept; the patch rows, laid out on the ``grid``, are resized
    with ``mode`` (``align_corners=False``, no antialiasing). The default, ``"bilinear"``, is
    what CLIP-ES's code does (``upsample_pos_emb`` in its ``clip/model.py``, PyTorch's
    ``F.upsample(..., mode='bilinear')``); ``"bicubic"`` is how open_clip and timm resize a
    checkpoint's embedding. The two differ by up to 0.12 on the demo's CLIP, whose entries
    reach 0.46 (see :doc:`/zeroshot`, "Two numerical details of CLIP-ES's code, followed").

    Shape:
        :math:`(1 + g_h g_w, C) \\to (1 + n_h n_w, C)`.

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot.towers import interpolate_positional_embedding
        >>> pos = torch.randn(1 + 4 * 4, 8)
        >>> interpolate_positional_embedding(pos, (4, 4), (6, 3)).shape
        torch.Size([19, 8])
        >>> torch.equal(interpolate_positional_embedding(pos, (4, 4), (4, 4)), pos)  # same grid: unchanged
        True

        A step on a 1 x 4 grid widened to 1 x 6: bilinear stays between the neighbours, bicubic
        overshoots them:

        >>> step = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0])[:, None]  # the class token, then the grid
        >>> [round(v, 2) for v in interpolate_positional_embedding(step, (1, 4), (1, 6))[1:, 0].tolist()]
        [0.0, 0.0, 0.17, 0.83, 1.0, 1.0]
        >>> [round(v, 2) for v in interpolate_positional_embedding(step, (1, 4), (1, 6), "bicubic")[1:, 0].tolist()]
        [0.0, -0.09, 0.14, 0.86, 1.09, 1.0]
    """
    check_pos_interpolation(mode)
    if tuple(grid) == tuple(new):
        return pos
    cls, grid_pos = pos[:1], pos[1:]
    grid_pos = rearrange(grid_pos, "(h w) c -> 1 c h w", h=grid[0], w=grid[1])
    grid_pos = F.interpolate(grid_pos.float(), size=new, mode=mode, align_corners=False).to(pos.dtype)
    return torch.cat([cls, rearrange(grid_pos, "1 c h w -> (h w) c")])


def _attention_weights_hooks(attn: nn.MultiheadAttention, store: list[torch.Tensor]) -> list:
    def ask_weights(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def keep_weights(module, args, kwargs, output):
        store.append(output[1].detach())

    return [
        attn.register_forward_pre_hook(ask_weights, with_kwargs=True),
        attn.register_forward_hook(keep_weights, with_kwargs=True),
    ]


def vit_pass(
    visual: nn.Module, x: torch.Tensor, attention_blocks: int, *, pos_interpolation: str = "bilinear"
) -> TowerPass:
    """Run open_clip's VisionTransformer on normalised pixels ``(bn, 3, H, W)``, H and W multiples of the patch.

    All blocks but the last run without gradients; the last runs with gradients from its
    ``ln_1`` output on. The attention of the last ``attention_blocks`` blocks is averaged.
    On a patch grid other than the tower's own, the positional embedding is resized by
    :func:`interpolate_positional_embedding` with ``pos_interpolation`` (CLIP-ES: bilinear).

    Example:
        A tiny random ViT CLIP (patch 8) on 48 x 32 pixels, a 6 x 4 patch grid:

        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot.towers import vit_pass
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> tp = vit_pass(clip.model.visual, torch.randn(2, 3, 48, 32), attention_blocks=8)
        >>> tp.pooled.shape, tp.patch_mean.shape, tp.grid
        (torch.Size([2, 32]), torch.Size([2, 32]), (6, 4))
        >>> tp.leaf.shape, tp.leaf.requires_grad, tp.patch_mean.requires_grad  # 1 class token + 24 patches
        (torch.Size([2, 25, 32]), True, True)
        >>> tp.attention.shape  # patch to patch, the class token left out
        torch.Size([2, 24, 24])
    """
    ph, pw = visual.patch_size
    gh, gw = x.shape[-2] // ph, x.shape[-1] // pw
    blocks = visual.transformer.resblocks
    first_kept = max(0, len(blocks) - attention_blocks)
    maps: list[torch.Tensor] = []
    handles = []
    leaf: dict[str, torch.Tensor] = {}

    def make_leaf(module, args, output):
        leaf["ln_1"] = output.detach().requires_grad_(True)
        return leaf["ln_1"]

    try:
        for block in blocks[first_kept:]:
            handles += _attention_weights_hooks(block.attn, maps)
        handles.append(blocks[-1].ln_1.register_forward_hook(make_leaf))
        with torch.no_grad():
            y = rearrange(visual.conv1(x), "bn c h w -> bn (h w) c")
            cls = visual.class_embedding.to(y.dtype).expand(y.shape[0], 1, -1)
            pos = interpolate_positional_embedding(
                visual.positional_embedding, visual.grid_size, (gh, gw), pos_interpolation
            )
            y = torch.cat([cls, y], dim=1) + pos.to(y.dtype)
            y = visual.ln_pre(visual.patch_dropout(y))
            batch_first = getattr(visual.transformer, "batch_first", True)
            if not batch_first:
                raise CosegValueError("sequence-first open_clip transformers are not supported; update open_clip")
            for block in blocks[:-1]:
                y = block(y)
        with torch.enable_grad():
            y = blocks[-1](y)
            if visual.final_ln_after_pool:  # open_clip pools first, then normalises
                patch_mean = visual.ln_post(y[:, 1:].mean(dim=1))
                pooled = visual.ln_post(y[:, 0]) if visual.pool_type == "tok" else patch_mean
            else:
                tokens = visual.ln_post(y)
                patch_mean = tokens[:, 1:].mean(dim=1)
                pooled = tokens[:, 0] if visual.pool_type == "tok" else patch_mean
            if visual.proj is not None:
                patch_mean, pooled = patch_mean @ visual.proj, pooled @ visual.proj
    finally:
        for handle in handles:
            handle.remove()
    attention = torch.stack(maps).mean(dim=0)[:, 1:, 1:] if maps else None
    return TowerPass(pooled, patch_mean, leaf["ln_1"], (gh, gw), attention)


def attention_pool(pool: nn.Module, x: torch.Tensor, pos_interpolation: str = "bilinear") -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` on a feature grid of any size ``(bn, c, h, w) -> (bn, d)``.

    The same computation as the module's own forward (the grid's mean as the query token,
    positional embedding, one multi-head attention, the query's output), with the positional
    embedding resized to the grid by :func:`interpolate_positional_embedding` when the grid is
    not the tower's own (as MaskCLIP runs a ResNet CLIP at other sizes). On the tower's own
    grid it equals ``pool(x)``.

    Example:
        >>> import torch
        >>> from open_clip.modified_resnet import AttentionPool2d
        >>> from cosegkit.zeroshot.towers import attention_pool
        >>> pool = AttentionPool2d(spacial_dim=2, embed_dim=16, num_heads=2, output_dim=8).eval()
        >>> x = torch.randn(3, 16, 2, 2)
        >>> torch.allclose(attention_pool(pool, x), pool(x), atol=1e-6)
        True
        >>> attention_pool(pool, torch.randn(3, 16, 5, 4)).shape  # a larger grid
        torch.Size([3, 8])
    """
    pos = pool.positional_embedding
    side = math.isqrt(pos.shape[0] - 1)
    grid = tuple(x.shape[-2:])
    if grid != (side, side):
        pos = interpolate_positional_embedding(pos, (side, side), grid, pos_interpolation)
    t = rearrange(x, "bn c h w -> (h w) bn c")
    t = torch.cat([t.mean(dim=0, keepdim=True), t], dim=0)
    t = t + pos[:, None, :].to(t.dtype)
    out, _ = F.multi_head_attention_forward(
        query=t,
        key=t,
        value=t,
        embed_dim_to_check=t.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return out[0]


def resnet_pass(visual: nn.Module, x: torch.Tensor, pos_interpolation: str = "bilinear") -> TowerPass:
    """Run open_clip's ModifiedResNet; GradCAM's layer is ``layer4``'s output. No attention (no CAA).

    Images of the tower's own size run as the tower does; other sizes (multiples of 32) pool
    with the positional embedding resized to the larger grid (:func:`attention_pool`).

    Example:
        A tiny random ResNet CLIP at its own 64 px:

        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot.towers import resnet_pass
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny-rn", pretrained=None, classnames=["cat", "dog"])
        >>> tp = resnet_pass(clip.model.visual, torch.randn(2, 3, 64, 64))
        >>> tp.pooled.shape, tp.patch_mean is tp.pooled  # the attention pool's output, both
        (torch.Size([2, 32]), True)
        >>> tp.leaf.shape, tp.grid, tp.attention  # layer4's channels on its grid; no attention
        (torch.Size([2, 256, 2, 2]), (2, 2), None)
        >>> resnet_pass(clip.model.visual, torch.randn(2, 3, 128, 96)).grid  # a larger input, a larger grid
        (4, 3)
    """
    with torch.no_grad():
        y = visual.layer3(visual.layer2(visual.layer1(visual.stem(x))))
        y = visual.layer4(y)
    leaf = y.detach().requires_grad_(True)
    with torch.enable_grad():
        pooled = attention_pool(visual.attnpool, leaf, pos_interpolation)
    return TowerPass(pooled, pooled, leaf, tuple(leaf.shape[-2:]), None)
