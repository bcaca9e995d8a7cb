r"""SegCLIP: a CLIP whose ViT gathers patches into learnable centres (Luo et al., "SegCLIP: Patch
Aggregation with Learnable Centers for Open-Vocabulary Semantic Segmentation", ICML 2023;
``ArrowLuo/SegCLIP``, ``modules/``).

The image tower, as SegCLIP's code builds it:

- patch embedding, a class token and positional embeddings, ``ln_pre``; the class token is then
  set aside and never enters a block;
- ``first_stage_layer`` transformer blocks on the patch tokens;
- the semantic group module: ``G`` learnable centres refined by cross-attention blocks over
  ``[centres; tokens]``; assignment logits ``centres . keys`` over the groups of every token,
  hard (one-hot, straight-through) for pooling, soft (a softmax over the groups) for reading
  masks; group embedding ``MLP(LN(centre + mean of its tokens' values))``;
- the remaining blocks on the ``G`` group tokens; the image embedding is their maximum;
- ``ln_post`` and the projection on the image embedding and on every group token.

The text tower is CLIP's (causal transformer, the end-of-text token's state, projection). For
training, the reconstruction branch of SegCLIP (``reconstruct_layer2``, ``layers_mae2`` and the
MAE decoder) rebuilds masked patches from the groups (:meth:`SegClip.reconstruction_loss`).

Every block of both towers and of the group module's cross-attention runs QuickGELU, as
SegCLIP's weights were trained; the group module's output MLP and the MAE decoder run exact GELU,
as their code has it.

Where this departs from SegCLIP's code (any image size, sets of images sharing centres, padded
images) is on the equations page's SegCLIP section.

Axis legend (einops):
    b   batch (images, or sets)   n   images per set    c   channels (width)
    l   tokens                    g   groups (centres)  h w patch grid
    a   attention heads           e   channels per head d   joint embedding width
    p   pixels of a patch (patch * patch * 3)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from cosegkit.errors import CosegShapeError, CosegValueError, WeightsUnavailableError
from cosegkit.layers._blocks import QuickGELU

__all__ = [
    "SEGCLIP_MEAN",
    "SEGCLIP_STD",
    "SegClip",
    "SegClipConfig",
    "SegClipImageOutput",
    "SegClipSetOutput",
    "SemanticGroups",
    "segclip_config_from_state_dict",
    "segclip_state_dict_to_cosegkit",
]

ARCHITECTURE = "segclip"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SEGCLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""CLIP's normalisation mean, which SegCLIP's pipelines use (``img_norm_cfg``, divided by 255)."""
SEGCLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's normalisation standard deviation, which SegCLIP's pipelines use."""
GUMBEL_TAU = 0.9
"""The temperature of the Gumbel-softmax assignment in training (SegCLIP's ``tau=0.9``)."""


@dataclass(frozen=True)
class SegClipConfig:
    """The sizes of a :class:`SegClip`.

    The defaults are SegCLIP's released model (``segclip.bin``): a ViT-B/16 at 224 px with the
    group module after 10 of 12 blocks, 8 groups, 2 cross-attention blocks, and CLIP's 12-layer
    text transformer of width 512.

    Attributes:
        embed_dim: width of the joint image-text space.
        image_size: the input size the positional embeddings were trained for.
        patch_size: side of a patch.
        width: width of the image transformer.
        layers: blocks of the image tower, before and after the group module.
        first_stage_layer: blocks before the group module (SegCLIP's ``first_stage_layer``).
        num_groups: learnable centres.
        cross_layers: cross-attention blocks that refine the centres.
        context_length: text positions.
        vocab_size: text vocabulary (CLIP's BPE: 49408).
        text_width: width of the text transformer.
        text_layers: blocks of the text transformer.
        head_width: channels per attention head (SegCLIP: ``width // 64`` heads everywhere).
        mae_decoder: build the MAE decoder of the reconstruction loss (training only; SegCLIP's
            released weights hold one).
        decoder_depth: blocks of the MAE decoder (SegCLIP: 3).
        decoder_heads: heads of the MAE decoder (SegCLIP: 8).

    Example:
        >>> from cosegkit.models.segclip import SegClipConfig
        >>> config = SegClipConfig()
        >>> config.heads, config.grid, config.decoder_width
        (12, 14, 384)
    """

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    first_stage_layer: int = 10
    num_groups: int = 8
    cross_layers: int = 2
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    head_width: int = 64
    mae_decoder: bool = True
    decoder_depth: int = 3
    decoder_heads: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "mae_decoder":
                continue
            least = 0 if f.name == "cross_layers" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CosegValueError(f"SegClipConfig.{f.name} must be an int >= {least}, got {value!r}")
        if not 1 <= self.first_stage_layer <= self.layers:
            raise CosegValueError(
                f"SegClipConfig.first_stage_layer must lie in 1..layers={self.layers}, got {self.first_stage_layer}"
            )
        if self.image_size % self.patch_size:
            raise CosegValueError(
                f"SegClipConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        for name, width in (("width", self.width), ("text_width", self.text_width)):
            if width % self.head_width:
                raise CosegValueError(
                    f"SegClipConfig.{name} ({width}) must be a multiple of head_width ({self.head_width})"
                )
        if self.mae_decoder and self.decoder_width % self.decoder_heads:
            raise CosegValueError(
                f"the MAE decoder's width (width // 2 = {self.decoder_width}) must be a multiple of decoder_heads "
                f"({self.decoder_heads})"
            )

    @property
    def heads(self) -> int:
        """Heads of the image transformer and of the group module."""
        return self.width // self.head_width

    @property
    def text_heads(self) -> int:
        """Heads of the text transformer."""
        return self.text_width // self.head_width

    @property
    def grid(self) -> int:
        """Side of the patch grid at ``image_size``."""
        return self.image_size // self.patch_size

    @property
    def decoder_width(self) -> int:
        """The MAE decoder's width, half the image transformer's (as in SegCLIP)."""
        return self.width // 2


class SegClipImageOutput(NamedTuple):
    """What :meth:`SegClip.encode_image` returns.

    Attributes:
        embedding: ``(B, D)`` the image embedding (the maximum over the group tokens, after
            ``ln_post`` and the projection), not normalised.
        groups: ``(B, G, D)`` each group token in the joint space, not normalised.
        soft: ``(B, G, h, w)`` each patch's soft assignment to the groups (sums to 1 over ``G``).
        hard: ``(B, G, h, w)`` the hard assignment (one-hot over ``G``; Gumbel noise and
            straight-through gradients in training).
        logits: ``(B, G, h, w)`` the assignment logits (centres . keys).

    Example:
        >>> import torch
        >>> from cosegkit.models.segclip import SegClipImageOutput
        >>> out = SegClipImageOutput(*(torch.zeros(1) for _ in range(5)))
        >>> out._fields
        ('embedding', 'groups', 'soft', 'hard', 'logits')
    """

    embedding: torch.Tensor
    groups: torch.Tensor
    soft: torch.Tensor
    hard: torch.Tensor
    logits: torch.Tensor


class SegClipSetOutput(NamedTuple):
    """What :meth:`SegClip.encode_set` returns: one grouping shared by the images of each set.

    Attributes:
        embedding: ``(B, D)`` the set embedding (the maximum over the set's group tokens).
        groups: ``(B, G, D)`` the set's group tokens in the joint space.
        soft: ``(B, N, G, h, w)`` each patch's soft assignment; zero on padded images.
        hard: ``(B, N, G, h, w)`` the hard assignment; zero on padded images.
        logits: ``(B, N, G, h, w)`` the assignment logits.

    Example:
        Three images grouped as one set by a tiny random model:

        >>> import torch
        >>> from cosegkit.models.segclip import SegClip, SegClipConfig
        >>> config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=2, first_stage_layer=1,
        ...                        num_groups=4, context_length=8, text_width=32, text_layers=1, head_width=16)
        >>> out = SegClip(config).eval().encode_set(torch.randn(1, 3, 3, 32, 32))
        >>> out.embedding.shape, out.groups.shape, out.soft.shape
        (torch.Size([1, 16]), torch.Size([1, 4, 16]), torch.Size([1, 3, 4, 4, 4]))
    """

    embedding: torch.Tensor
    groups: torch.Tensor
    soft: torch.Tensor
    hard: torch.Tensor
    logits: torch.Tensor


class Attention(nn.Module):
    """Multi-head attention with :class:`torch.nn.MultiheadAttention`'s parameters, on ``(B, L, C)``.

    The projections are held as ``in_proj_weight``/``in_proj_bias`` and ``out_proj``, so
    state dicts of CLIP and SegCLIP load unchanged; the maths is
    :func:`torch.nn.functional.scaled_dot_product_attention`.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``query`` ``(B, Q, C)`` to ``key`` ``(B, K, C)`` (default: ``query``); ``mask``
        is additive ``(Q, K)`` or boolean ``(B, 1, 1, K)``/``(B, 1, Q, K)`` (True: attend)."""
        key = query if key is None else key
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = rearrange(F.linear(query, w_q, b_q), "b l (a e) -> b a l e", a=self.heads)
        k = rearrange(F.linear(key, w_k, b_k), "b l (a e) -> b a l e", a=self.heads)
        v = rearrange(F.linear(key, w_v, b_v), "b l (a e) -> b a l e", a=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(rearrange(out, "b a l e -> b l (a e)"))


class ResidualBlock(nn.Module):
    """CLIP's pre-norm transformer block (attention, QuickGELU MLP), on ``(B, L, C)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.ln_1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * dim, dim))
        self.ln_2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask=mask)
        return x + self.mlp(self.ln_2(x))


class CrossAttentionBlock(nn.Module):
    """The centres attend to ``[centres; tokens]``: pre-norm cross-attention and a QuickGELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads)
        self.ln_x = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * dim, dim))
        self.ln_2 = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.ln_k(kv)
        q = q + self.attn(self.ln_x(q), kv, mask=mask)
        return q + self.mlp(self.ln_2(q))


class _GroupMLP(nn.Module):
    """SegCLIP's ``proj_o``: LayerNorm, Linear, GELU, Linear, then QuickGELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(4 * dim, dim))
        self.act = QuickGELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.mlp(self.ln(x)))


def straight_through_assignment(
    logits: torch.Tensor, *, dim: int, training: bool, tau: float = GUMBEL_TAU
) -> torch.Tensor:
    """SegCLIP's hard assignment: one-hot of the (Gumbel-noised in training) softmax, straight-through.

    In training, ``softmax((logits + gumbel) / tau)``; in eval, ``softmax(logits)``. The
    argmax is taken one-hot and returned as ``one_hot - soft.detach() + soft``.

    Example:
        >>> import torch
        >>> from cosegkit.models.segclip import straight_through_assignment
        >>> hard = straight_through_assignment(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), dim=0, training=False)
        >>> hard.tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if training:
        gumbels = -torch.empty_like(logits).exponential_().log()
        soft = ((logits + gumbels) / tau).softmax(dim)
    else:
        soft = logits.softmax(dim)
    index = soft.argmax(dim, keepdim=True)
    hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


class SemanticGroups(nn.Module):
    r"""SegCLIP's semantic group module (``SemanticLearnerModule``), on the tokens of an image or of a set.

    ``G`` centres attend to ``[centres; tokens]`` through ``cross_layers`` blocks and are
    layer-normalised; keys and values are grouped 1x1 convolutions (groups = heads) of the
    layer-normalised tokens, keys normalised again. Logits :math:`A = Q K^\top` ``(G, L)``;
    the hard assignment is one-hot over the groups of each token
    (:func:`straight_through_assignment`), the soft one a softmax over the groups. Group
    embedding = ``proj_o(centre + hard @ values / max(1, tokens in the group))``.

    With ``valid`` (``(B, L)`` boolean), invalid tokens are neither keys of the cross-attention
    nor members of any group: the tokens of a set's padded images.

    Args:
        dim: token width.
        num_groups: centres.
        heads: attention heads, and the groups of the key and value convolutions.
        cross_layers: cross-attention blocks.

    Shape:
        - Input: :math:`(B, L, C)`, optional ``valid`` :math:`(B, L)`.
        - Output: groups :math:`(B, G, C)`; hard, soft and logits :math:`(B, G, L)`.

    Example:
        >>> import torch
        >>> from cosegkit.models.segclip import SemanticGroups
        >>> module = SemanticGroups(32, num_groups=4, heads=2).eval()
        >>> groups, hard, soft, logits = module(torch.randn(2, 10, 32))
        >>> groups.shape, hard.shape, bool(torch.allclose(soft.sum(1), torch.ones(2, 10)))
        (torch.Size([2, 4, 32]), torch.Size([2, 4, 10]), True)
    """

    def __init__(self, dim: int, *, num_groups: int = 8, heads: int = 12, cross_layers: int = 2) -> None:
        super().__init__()
        if dim % heads:
            raise CosegValueError(f"SemanticGroups: dim ({dim}) must be a multiple of heads ({heads})")
        self.norm = nn.LayerNorm(dim)
        self.semantic_center = nn.Parameter(torch.empty(num_groups, dim))
        nn.init.trunc_normal_(self.semantic_center, std=0.02)
        self.cross_att = nn.Sequential(*[CrossAttentionBlock(dim, heads) for _ in range(cross_layers)])
        self.cross_ln = nn.LayerNorm(dim)
        self.k_conv = nn.Conv1d(dim, dim, kernel_size=1, groups=heads, bias=False)
        self.k_ln = nn.LayerNorm(dim)
        self.v_conv = nn.Conv1d(dim, dim, kernel_size=1, groups=heads, bias=False)
        self.proj_o = _GroupMLP(dim)

    @property
    def num_groups(self) -> int:
        return self.semantic_center.shape[0]

    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b, g = tokens.shape[0], self.num_groups
        normed = rearrange(self.norm(tokens), "b l c -> b c l")
        q = repeat(self.semantic_center.to(tokens.dtype), "g c -> b g c", b=b)
        mask = None
        if valid is not None:  # the centres always attend to themselves
            keep = torch.cat([valid.new_ones(b, g), valid], dim=1)
            mask = rearrange(keep, "b k -> b 1 1 k")
        for block in self.cross_att:
            q = block(q, torch.cat([q, tokens], dim=1), mask)
        q = self.cross_ln(q)
        k = self.k_ln(rearrange(self.k_conv(normed), "b c l -> b l c"))
        v = rearrange(self.v_conv(normed), "b c l -> b l c")
        logits = torch.einsum("bgc,blc->bgl", q, k)
        hard = straight_through_assignment(logits, dim=1, training=self.training)
        soft = logits.softmax(dim=1)
        if valid is not None:
            member = rearrange(valid, "b l -> b 1 l").to(hard.dtype)
            hard, soft = hard * member, soft * member
        pooled = torch.einsum("bgl,blc->bgc", hard, v) / hard.sum(-1, keepdim=True).clamp_min(1.0)
        return self.proj_o(q + pooled), hard, soft, logits


class SegClipVision(nn.Module):
    """SegCLIP's image tower (``VisualTransformer`` with ``SegViT``): see :class:`SegClip`."""

    def __init__(self, config: SegClipConfig) -> None:
        super().__init__()
        c = config
        width = c.width
        scale = width**-0.5
        self.patch_size = c.patch_size
        self.grid = c.grid
        self.conv1 = nn.Conv2d(3, width, kernel_size=c.patch_size, stride=c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(c.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList([ResidualBlock(width, c.heads) for _ in range(c.first_stage_layer)])
        self.grouping = SemanticGroups(width, num_groups=c.num_groups, heads=c.heads, cross_layers=c.cross_layers)
        later = c.layers - c.first_stage_layer
        self.group_blocks = nn.ModuleList([ResidualBlock(width, c.heads) for _ in range(later)])
        self.mae_blocks = nn.ModuleList([ResidualBlock(width, c.heads) for _ in range(later)])
        self.reconstruct = nn.Linear(c.num_groups, c.num_groups)
        self.reconstruct_act = QuickGELU()
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, c.embed_dim))

    def positions(self, h: int, w: int) -> torch.Tensor:
        """The positional embeddings ``(1 + h*w, C)`` of an ``h x w`` grid: bicubic from the trained grid."""
        cls, patches = self.positional_embedding[:1], self.positional_embedding[1:]
        if (h, w) == (self.grid, self.grid):
            return self.positional_embedding
        grid = rearrange(patches, "(h w) c -> 1 c h w", h=self.grid)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, rearrange(grid, "1 c h w -> (h w) c")])

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Patch tokens with the class token in front, positions added, ``ln_pre``: ``(B, 1 + h*w, C)``."""
        x = self.conv1(images)
        h, w = x.shape[-2:]
        x = rearrange(x, "b c h w -> b (h w) c")
        cls = repeat(self.class_embedding.to(x.dtype), "c -> b 1 c", b=x.shape[0])
        x = torch.cat([cls, x], dim=1) + self.positions(h, w).to(x.dtype)
        return self.ln_pre(x), h, w

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(x) @ self.proj


class MAEBlock(nn.Module):
    """The MAE decoder's block (timm's ``Block``: LayerNorm eps 1e-6, fused qkv with bias, GELU)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, 4 * dim))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.attn.qkv(self.norm1(x)), "b l (three a e) -> three b a l e", three=3, a=self.heads)
        x = x + self.attn.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b a l e -> b l (a e)"))
        return x + self.mlp(self.norm2(x))


def _sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine positions ``(1 + grid**2, dim)``, a zero row for the class token."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    table = torch.cat([encode(ys), encode(xs)], dim=1)  # MAE's grid puts w first: emb_h from rows
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


class MAEDecoder(nn.Module):
    """SegCLIP's MAE decoder of masked patches (``vis_mae_decoder``), for :meth:`SegClip.reconstruction_loss`."""

    def __init__(self, config: SegClipConfig) -> None:
        super().__init__()
        dim = config.decoder_width
        self.patch_size = config.patch_size
        self.decoder_embed = nn.Linear(config.width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        # a parameter without gradient in SegCLIP's code: kept one so their state dicts load
        self.decoder_pos_embed = nn.Parameter(_sincos_2d(dim, config.grid)[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList([MAEBlock(dim, config.decoder_heads) for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, config.patch_size**2 * 3)

    def forward(self, hidden: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Patches ``(B, L, p)`` predicted from the kept tokens ``hidden`` ``(B, 1 + M, C)``."""
        x = self.decoder_embed(hidden)
        missing = ids_restore.shape[1] - x.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(x.shape[0], missing, -1)], dim=1)
        x = torch.gather(x, 1, repeat(ids_restore, "b l -> b l c", c=x.shape[-1]))
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class SegClip(nn.Module):
    """SegCLIP's model: a ViT that groups its patches into learnable centres, and CLIP's text tower.

    Build it with :class:`SegClipConfig` sizes, load SegCLIP's released checkpoint with
    :meth:`from_segclip_checkpoint`, or a model written by :meth:`save_pretrained` with
    :meth:`from_pretrained`. Images go in normalised with :data:`SEGCLIP_MEAN` and
    :data:`SEGCLIP_STD`; texts as CLIP token ids (``open_clip.tokenize``, which gives SegCLIP's
    tokenizer's ids).

    Args:
        config: the sizes (default: SegCLIP's released ViT-B/16).

    Example:
        >>> import torch
        >>> from cosegkit.models.segclip import SegClip, SegClipConfig
        >>> config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=3, first_stage_layer=2,
        ...                        num_groups=4, context_length=8, text_width=32, text_layers=1, head_width=16)
        >>> model = SegClip(config).eval()
        >>> out = model.encode_image(torch.randn(2, 3, 32, 32))
        >>> out.embedding.shape, out.groups.shape, out.soft.shape
        (torch.Size([2, 16]), torch.Size([2, 4, 16]), torch.Size([2, 4, 4, 4]))
        >>> model.encode_text(torch.randint(1, 100, (3, 8))).shape
        torch.Size([3, 16])
    """

    def __init__(self, config: SegClipConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SegClipConfig()
        self.visual = SegClipVision(config)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.text_width))
        self.text_blocks = nn.ModuleList(
            [ResidualBlock(config.text_width, config.text_heads) for _ in range(config.text_layers)]
        )
        self.ln_final = nn.LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(torch.empty(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.mae_decoder = MAEDecoder(config) if config.mae_decoder else None
        self._init_weights()

    def _init_weights(self) -> None:
        """SegCLIP's initialisation: truncated normal (0.02) for the image tower's linears, CLIP's for the text."""
        for m in self.visual.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.config.text_width, self.config.text_layers
        for block in self.text_blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def num_groups(self) -> int:
        return self.config.num_groups

    # ------------------------------------------------------------------ image tower
    def _check_images(self, images: torch.Tensor, dims: int, what: str) -> None:
        if images.ndim != dims or images.shape[-3] != 3:
            raise CosegShapeError(
                f"SegClip.{what}: expected images of shape {'(B, N, 3, H, W)' if dims == 5 else '(B, 3, H, W)'}, got {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise CosegShapeError(
                f"SegClip.{what}: images of {h}x{w} px are smaller than one patch ({self.patch_size} px); resize them up"
            )

    def _first_stage(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x, h, w = self.visual.embed(images)
        x = x[:, 1:]  # SegCLIP sets the class token aside: it enters no block
        for block in self.visual.blocks:
            x = block(x)
        return x, h, w

    def _groups_to_joint(self, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.visual.group_blocks:
            groups = block(groups)
        cls = groups.max(dim=1, keepdim=True).values
        joint = self.visual.project(torch.cat([cls, groups], dim=1))
        return joint[:, 0], joint[:, 1:]

    def encode_image(self, images: torch.Tensor) -> SegClipImageOutput:
        """Group each image's patches and embed the image and its groups.

        Args:
            images: ``(B, 3, H, W)``, normalised; any size of at least one patch (a grid other
                than the trained one interpolates the positional embeddings bicubically, as
                SegCLIP's code does in eval).

        Returns:
            A :class:`SegClipImageOutput`.
        """
        self._check_images(images, 4, "encode_image")
        return self._group_images(*self._first_stage(images))

    def encode_set(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> SegClipSetOutput:
        """Group the patches of every image of a set with one set of centres (shared groups).

        The first blocks run on each image alone; the group module then takes all tokens of
        the set's valid images at once, so a group gathers patches across the images; the
        later blocks run on the set's ``G`` group tokens.

        Args:
            images: ``(B, N, 3, H, W)``, normalised.
            valid: ``(B, N)`` boolean, False for padded images (default: all valid).

        Returns:
            A :class:`SegClipSetOutput`.
        """
        valid = self._check_set(images, valid)
        x, h, w = self._first_stage(rearrange(images, "b n c hh ww -> (b n) c hh ww"))
        return self._group_set(x, valid, h, w)

    def encode_image_and_set(
        self, images: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[SegClipImageOutput, SegClipSetOutput]:
        """:meth:`encode_image` of every image (flattened to ``B * N``) and :meth:`encode_set`,
        sharing one pass of the first blocks.

        Example:
            >>> import torch
            >>> from cosegkit.models.segclip import SegClip, SegClipConfig
            >>> config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=2,
            ...                        first_stage_layer=1, num_groups=4, context_length=8, text_width=32,
            ...                        text_layers=1, head_width=16)
            >>> model = SegClip(config).eval()
            >>> images = torch.randn(2, 3, 3, 32, 32)
            >>> alone, shared = model.encode_image_and_set(images)
            >>> alone.groups.shape, shared.groups.shape
            (torch.Size([6, 4, 16]), torch.Size([2, 4, 16]))
            >>> bool(torch.allclose(alone.embedding, model.encode_image(images.flatten(0, 1)).embedding, atol=1e-6))
            True
        """
        valid = self._check_set(images, valid)
        x, h, w = self._first_stage(rearrange(images, "b n c hh ww -> (b n) c hh ww"))
        return self._group_images(x, h, w), self._group_set(x, valid, h, w)

    def _check_set(self, images: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Check a batch of sets and its ``valid`` mask; the mask (all True when ``None``)."""
        self._check_images(images, 5, "encode_set")
        b, n = images.shape[:2]
        if valid is None:
            return torch.ones(b, n, dtype=torch.bool, device=images.device)
        if valid.shape != (b, n):
            raise CosegShapeError(f"SegClip.encode_set: valid must be (B, N) = {(b, n)}, got {tuple(valid.shape)}")
        if not bool(valid.any(dim=1).all()):
            raise CosegValueError("SegClip.encode_set: every set needs at least one valid image")
        return valid

    def _group_set(self, x: torch.Tensor, valid: torch.Tensor, h: int, w: int) -> SegClipSetOutput:
        """One grouping per set from the first-stage tokens ``(B * N, h*w, C)`` of its images."""
        b, n = valid.shape
        tokens = rearrange(x, "(b n) l c -> b (n l) c", b=b)
        token_valid = repeat(valid, "b n -> b (n l)", l=h * w)
        groups, hard, soft, logits = self.visual.grouping(tokens, token_valid)
        embedding, groups = self._groups_to_joint(groups)
        grid = {"n": n, "h": h, "w": w}
        return SegClipSetOutput(
            embedding,
            groups,
            rearrange(soft, "b g (n h w) -> b n g h w", **grid),
            rearrange(hard, "b g (n h w) -> b n g h w", **grid),
            rearrange(logits, "b g (n h w) -> b n g h w", **grid),
        )

    def _group_images(self, x: torch.Tensor, h: int, w: int) -> SegClipImageOutput:
        """Each image's grouping and embeddings from its first-stage tokens ``(B, h*w, C)``."""
        groups, hard, soft, logits = self.visual.grouping(x)
        embedding, groups = self._groups_to_joint(groups)
        grid = {"h": h, "w": w}
        return SegClipImageOutput(
            embedding,
            groups,
            rearrange(soft, "b g (h w) -> b g h w", **grid),
            rearrange(hard, "b g (h w) -> b g h w", **grid),
            rearrange(logits, "b g (h w) -> b g h w", **grid),
        )

    # ------------------------------------------------------------------ text tower
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's text embedding ``(B, D)`` of token ids ``(B, L)`` (``L`` at most ``context_length``),
        read at the end-of-text token (the largest id), not normalised."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise CosegShapeError(
                f"SegClip.encode_text: expected int token ids (B, L), got {tuple(tokens.shape)} {tokens.dtype}"
            )
        length = tokens.shape[1]
        if length > self.config.context_length:
            raise CosegShapeError(
                f"SegClip.encode_text: {length} tokens exceed the context length {self.config.context_length}; "
                f"tokenize with context_length={self.config.context_length}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        for block in self.text_blocks:
            x = block(x, causal)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection

    # ------------------------------------------------------------------ training
    def reconstruction_loss(
        self, images: torch.Tensor, *, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """SegCLIP's reconstruction loss: masked patches rebuilt from the groups of the kept ones.

        The embedded tokens (class token kept) are shuffled by ``noise`` and the first
        ``int((1 + L) * (1 - mask_ratio))`` kept; the first blocks and the group module run on
        the kept patches; ``reconstruct`` maps the hard assignment back to them, QuickGELU, the
        reconstruction blocks; their mean is the class token; the MAE decoder predicts every
        patch; the loss is the squared error on the removed patches (of the normalised image).

        Args:
            images: ``(B, 3, H, W)`` normalised, at ``image_size``.
            mask_ratio: the share of tokens removed (SegCLIP: 0.75).
            noise: ``(B, 1 + L)`` the shuffling noise (default: uniform); the class token is kept.

        Returns:
            The scalar loss.
        """
        if self.mae_decoder is None:
            raise CosegValueError("this SegClip has no MAE decoder; build it with SegClipConfig(mae_decoder=True)")
        self._check_images(images, 4, "reconstruction_loss")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise CosegShapeError(
                f"SegClip.reconstruction_loss: the MAE decoder's positions are for {self.image_size} px, got "
                f"{tuple(images.shape[-2:])}; resize the images to {self.image_size}"
            )
        if not 0.0 < mask_ratio < 1.0:
            raise CosegValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        x, _, _ = self.visual.embed(images)
        b, length, width = x.shape
        noise = torch.rand(b, length, device=x.device) if noise is None else noise.clone()
        noise[:, 0] = -1.0  # the class token is always kept
        ids_shuffle = noise.argsort(dim=1)
        ids_restore = ids_shuffle.argsort(dim=1)
        keep = int(length * (1 - mask_ratio))
        kept = torch.gather(x, 1, repeat(ids_shuffle[:, :keep], "b l -> b l c", c=width))
        removed = torch.ones(b, length, device=x.device)
        removed[:, :keep] = 0
        removed = torch.gather(removed, 1, ids_restore)
        tokens = kept[:, 1:]
        for block in self.visual.blocks:
            tokens = block(tokens)
        groups, hard, _, _ = self.visual.grouping(tokens)
        back = self.visual.reconstruct(rearrange(hard, "b g m -> b m g")).to(groups.dtype)
        tokens = self.visual.reconstruct_act(torch.einsum("bgc,bmg->bmc", groups, back))
        for block in self.visual.mae_blocks:
            tokens = block(tokens)
        hidden = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        pred = self.mae_decoder(hidden, ids_restore)
        p = self.patch_size
        target = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)
        per_patch = (pred - target).pow(2).mean(dim=-1)
        weight = removed[:, 1:]
        return (per_patch * weight).sum() / weight.sum()

    # ------------------------------------------------------------------ files
    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_kwargs: Any,
    ) -> Path:
        """Write ``config.json`` (``"architecture": "segclip"``) and ``model.safetensors``.

        ``push_to_hub``, ``repo_id`` and ``push_kwargs`` upload the folder to the hub as
        :meth:`LCCo.save_pretrained <cosegkit.LCCo.save_pretrained>` does.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from cosegkit.models.segclip import SegClip, SegClipConfig
            >>> config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=2,
            ...                        first_stage_layer=1, num_groups=4, context_length=8, text_width=32,
            ...                        text_layers=1, head_width=16, mae_decoder=False)
            >>> folder = SegClip(config).save_pretrained(Path(tempfile.mkdtemp()) / "segclip")
            >>> SegClip.from_pretrained(folder).config == config
            True
        """
        from cosegkit.hub import save_then_push
        from cosegkit.models.lcco import write_model_folder

        return save_then_push(
            lambda: write_model_folder(directory, ARCHITECTURE, asdict(self.config), self),
            push_to_hub=push_to_hub,
            repo_id=repo_id,
            **push_kwargs,
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> SegClip:
        """Load a model written by :meth:`save_pretrained`: a folder, or a Hugging Face hub id ``"ORG/NAME"``.

        Raises:
            WeightsUnavailableError: a missing or foreign folder, or a hub id that cannot be fetched.
        """
        from safetensors.torch import load_file

        from cosegkit.models.lcco import LCCo

        path = Path(directory)
        if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(directory)):
            path = LCCo._download(str(directory))  # a hub id ORG/NAME, as LCCo.from_pretrained takes one
        try:
            data = json.loads((path / CONFIG_NAME).read_text())
        except (OSError, ValueError) as err:
            raise WeightsUnavailableError(
                f"{str(path)!r} is not a SegCLIP model folder (no readable {CONFIG_NAME}); for SegCLIP's own "
                f"checkpoint (segclip.bin) use SegClip.from_segclip_checkpoint"
            ) from err
        if data.get("architecture") != ARCHITECTURE:
            raise WeightsUnavailableError(
                f"{str(path)!r} holds a {data.get('architecture', 'lcco')!r} model, not SegCLIP; load it with "
                f"cosegkit.load_model"
            )
        if not (path / WEIGHTS_NAME).is_file():
            raise WeightsUnavailableError(f"{str(path)!r} lacks {WEIGHTS_NAME}")
        model = cls(SegClipConfig(**data["model"]))
        model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        return model.to(map_location)

    @classmethod
    def from_segclip_checkpoint(
        cls, path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
    ) -> SegClip:
        """Load a checkpoint in the format SegCLIP saves (the released ``segclip.bin``).

        The file is a ``torch.save``-d state dict of SegCLIP's ``SegCLIP`` model (keys
        ``clip.visual...``, ``clip.transformer...``, ``vis_mae_decoder...``), read with
        ``weights_only=True``. The sizes are read from the tensors
        (:func:`segclip_config_from_state_dict`); the text reconstruction decoder
        (``seq_mae_decoder``, SegCLIP's masked-text loss) is not part of this model and is left out.

        Raises:
            WeightsUnavailableError: the file cannot be read, or is not a SegCLIP state dict.
        """
        from cosegkit.models.lcco import read_checkpoint_file

        state = read_checkpoint_file(path, "SegCLIP", "pass the state dict file SegCLIP releases (segclip.bin)")
        if not isinstance(state, Mapping):
            raise WeightsUnavailableError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict")
        state = segclip_state_dict_to_cosegkit(state)
        model = cls(segclip_config_from_state_dict(state))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"{os.fspath(path)!r} does not fit SegCLIP's model: missing {sorted(missing)[:4]}, "
                f"unexpected {sorted(unexpected)[:4]}"
            )
        return model.to(map_location)


_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^clip\.visual\.transformer\.layers0\.", "visual.blocks."),
    (r"^clip\.visual\.transformer\.semantic_layer2\.", "visual.grouping."),
    (r"^clip\.visual\.transformer\.layers2\.", "visual.group_blocks."),
    (r"^clip\.visual\.transformer\.layers_mae2\.", "visual.mae_blocks."),
    (r"^clip\.visual\.transformer\.reconstruct_layer2\.rec_proj_a\.a_fc\.", "visual.reconstruct."),
    (r"^clip\.transformer\.resblocks\.", "text_blocks."),
    (r"^clip\.", ""),
    (r"^vis_mae_decoder\.", "mae_decoder."),
)


def segclip_state_dict_to_cosegkit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a SegCLIP state dict (``segclip.bin``'s keys) to :class:`SegClip`'s.

    A ``module.`` prefix (``DistributedDataParallel``) is dropped; the text reconstruction
    decoder (``seq_mae_decoder.*``) is left out.

    Raises:
        WeightsUnavailableError: a key outside SegCLIP's model.

    Example:
        >>> import torch
        >>> from cosegkit.models.segclip import segclip_state_dict_to_cosegkit
        >>> sorted(segclip_state_dict_to_cosegkit({
        ...     "clip.visual.transformer.layers0.0.ln_1.weight": torch.ones(2),
        ...     "clip.visual.transformer.semantic_layer2.semantic_center": torch.ones(2, 2),
        ...     "clip.transformer.resblocks.1.ln_2.bias": torch.ones(2),
        ...     "vis_mae_decoder.mask_token": torch.ones(1, 1, 2)}))
        ['mae_decoder.mask_token', 'text_blocks.1.ln_2.bias', 'visual.blocks.0.ln_1.weight', 'visual.grouping.semantic_center']
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsUnavailableError(f"not a SegCLIP state dict: entry {key!r} is a {type(value).__name__}")
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith("seq_mae_decoder."):
            continue
        if not (name.startswith("clip.") or name.startswith("vis_mae_decoder.")):
            raise WeightsUnavailableError(
                f"not a SegCLIP state dict: key {key!r} is neither clip.* nor vis_mae_decoder.* (SegCLIP's model saves both)"
            )
        for pattern, replacement in _RENAMES:
            name, hits = re.subn(pattern, replacement, name)
            if hits:
                break
        out[name] = value
    return out


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for key in state if (m := pattern.match(key))})


def segclip_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> SegClipConfig:
    """The :class:`SegClipConfig` of a state dict in :class:`SegClip`'s keys, read from the tensors' shapes.

    As SegCLIP's code reads its sizes: the width and patch from the patch embedding, the grid
    from the positional embeddings, 64 channels per head; the blocks before and after the
    group module are counted.

    Raises:
        WeightsUnavailableError: a tensor the sizes are read from is missing.
    """
    try:
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round(math.sqrt(state["visual.positional_embedding"].shape[0] - 1))
        text_width = state["ln_final.weight"].shape[0]
        decoder = "mae_decoder.decoder_embed.weight" in state
        return SegClipConfig(
            embed_dim=state["text_projection"].shape[1],
            image_size=patch * grid,
            patch_size=patch,
            width=width,
            layers=_count(state, "visual.blocks.") + _count(state, "visual.group_blocks."),
            first_stage_layer=_count(state, "visual.blocks."),
            num_groups=state["visual.grouping.semantic_center"].shape[0],
            cross_layers=_count(state, "visual.grouping.cross_att."),
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            text_width=text_width,
            text_layers=_count(state, "text_blocks."),
            head_width=64,
            mae_decoder=decoder,
            decoder_depth=_count(state, "mae_decoder.decoder_blocks.") if decoder else 3,
        )
    except KeyError as err:
        raise WeightsUnavailableError(f"not a SegCLIP state dict: it lacks {err.args[0]!r}") from err
    except CosegValueError as err:
        raise WeightsUnavailableError(f"the state dict's sizes do not make a SegCLIP model: {err}") from err
