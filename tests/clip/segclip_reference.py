"""A functional re-statement of SegCLIP's released model (ArrowLuo/SegCLIP), for equality tests.

Plain torch on a state dict in SegCLIP's checkpoint format (the keys that ``torch.save`` of
their ``SegCLIP`` module writes, all under ``clip.`` and ``vis_mae_decoder.``): no module of
theirs or ours is used, so a model that loads ``segclip.bin`` can be tested against it. Written
from the logic of their ``modules/module_clip*.py``, ``module_seg_vit.py``, ``module_mae.py``,
``modeling.py`` and ``seg_segmentation/evaluation/{vit_seg,builder}.py``; the attention is
written out by hand (per-head softmax of scaled dot products), the layers in eval mode.

Facts of their code that the functions follow (checked against it, see the test module):

- The vision tower always has 12 blocks: ``SegViT`` builds ``first_stage_layer`` blocks
  (``layers0``) before the semantic group module and ``12 - first_stage_layer`` after it
  (``layers2``, plus the same number in ``layers_mae2`` for the reconstruction branch); the
  ``vision_layers`` that ``CLIP`` receives is never used. Heads are ``width // 64`` in every
  block of both towers and in the group module's grouped 1x1 convolutions. The group module
  has SegViT's defaults, 8 groups and 2 cross-attention layers, which ``CLIP`` cannot change;
  the released model is ViT-B/16 at 224 (width 768, ``first_stage_layer`` 10) with a 512-wide,
  12-layer text tower of context 77. The state dict here takes other sizes in the same format.
- Their group cross-attention feeds its keys batch-first to a sequence-first attention; see
  :func:`semantic_group` for what that computed and what these functions do.
- The class token and its position embedding are dropped before the first block: the image
  embedding is the max over the group tokens after ``layers2``, then ``ln_post`` and ``proj``.
- The hard assignment is the straight-through ``y_hard - y_soft.detach() + y_soft`` even in
  eval (equal to the one-hot up to rounding); in eval ``y_soft`` is the softmax of the
  logits without the temperature 0.9, in training ``softmax((logits + gumbel) / 0.9)``.

Axis legend: b batch, l patch tokens, g groups, c width, d embedding dim, t text tokens,
k classes, m templates, h w spatial.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

TOTAL_VISION_BLOCKS = 12  # SegViT: depths = [first_stage_layer, 12 - first_stage_layer]
GROUP_TAU = 0.9  # SemanticLearnerModule: gumbel_softmax(attn, tau=0.9, hard=True, dim=1)
MAE_DECODER_DEPTH = 3
MAE_DECODER_HEADS = 8
MAE_MASK_RATIO = 0.75
LAYER_NORMS = {
    "ln_pre", "ln_post", "ln_final", "norm", "cross_ln", "k_ln", "ln_1", "ln_2", "ln_x", "ln_k", "ln",
    "norm1", "norm2", "decoder_norm",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The state dict
# --------------------------------------------------------------------------------------------
def _mha_shapes(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}in_proj_weight", (3 * c, c)),
        (f"{prefix}in_proj_bias", (3 * c,)),
        (f"{prefix}out_proj.weight", (c, c)),
        (f"{prefix}out_proj.bias", (c,)),
    ]


def _ln_shapes(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}weight", (c,)), (f"{prefix}bias", (c,))]


def _linear_shapes(prefix: str, c_in: int, c_out: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}weight", (c_out, c_in)), (f"{prefix}bias", (c_out,))]


def _resblock_shapes(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    """CLIP's residual block: attn, ln_1, mlp.c_fc, mlp.c_proj, ln_2 (registration order)."""
    return [
        *_mha_shapes(f"{prefix}attn.", c),
        *_ln_shapes(f"{prefix}ln_1.", c),
        *_linear_shapes(f"{prefix}mlp.c_fc.", c, 4 * c),
        *_linear_shapes(f"{prefix}mlp.c_proj.", 4 * c, c),
        *_ln_shapes(f"{prefix}ln_2.", c),
    ]


def segclip_key_shapes(
    *,
    width: int = 128,
    layers: int = TOTAL_VISION_BLOCKS,
    first_stage_layer: int = 10,
    patch_size: int = 8,
    image_size: int = 32,
    num_groups: int = 4,
    cross_layers: int = 2,
    embed_dim: int = 32,
    text_width: int = 128,
    text_layers: int = 2,
    context_length: int = 16,
    vocab_size: int = 49408,
    mae_decoder: bool = True,
) -> OrderedDict[str, tuple[int, ...]]:
    """The keys and shapes of SegCLIP's ``state_dict()``, in its registration order.

    ``layers`` is the total number of vision blocks; SegCLIP's code always builds 12, any other
    value gives a state dict of the same format that their code cannot load.
    """
    c, grid = width, image_size // patch_size
    heads = c // 64
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("clip.positional_embedding", (context_length, text_width)),
        ("clip.text_projection", (text_width, embed_dim)),
        ("clip.logit_scale", ()),
        ("clip.visual.class_embedding", (c,)),
        ("clip.visual.positional_embedding", (grid**2 + 1, c)),
        ("clip.visual.proj", (c, embed_dim)),
        ("clip.visual.conv1.weight", (c, 3, patch_size, patch_size)),
        *_ln_shapes("clip.visual.ln_pre.", c),
    ]
    vt = "clip.visual.transformer."
    for i in range(first_stage_layer):
        shapes += _resblock_shapes(f"{vt}layers0.{i}.", c)
    sl = f"{vt}semantic_layer2."
    shapes += [(f"{sl}semantic_center", (num_groups, c)), *_ln_shapes(f"{sl}norm.", c)]
    for j in range(cross_layers):
        p = f"{sl}cross_att.{j}."
        shapes += [
            *_mha_shapes(f"{p}attn.", c),
            *_ln_shapes(f"{p}ln_x.", c),
            *_ln_shapes(f"{p}ln_k.", c),
            *_linear_shapes(f"{p}mlp.c_fc.", c, 4 * c),
            *_linear_shapes(f"{p}mlp.c_proj.", 4 * c, c),
            *_ln_shapes(f"{p}ln_2.", c),
        ]
    shapes += [
        *_ln_shapes(f"{sl}cross_ln.", c),
        (f"{sl}k_conv.weight", (c, c // heads, 1)),
        *_ln_shapes(f"{sl}k_ln.", c),
        (f"{sl}v_conv.weight", (c, c // heads, 1)),
        *_ln_shapes(f"{sl}proj_o.ln.", c),
        *_linear_shapes(f"{sl}proj_o.mlp.fc1.", c, 4 * c),
        *_linear_shapes(f"{sl}proj_o.mlp.fc2.", 4 * c, c),
    ]
    for stage in ("layers2", "layers_mae2"):
        for i in range(layers - first_stage_layer):
            shapes += _resblock_shapes(f"{vt}{stage}.{i}.", c)
    shapes += _linear_shapes(f"{vt}reconstruct_layer2.rec_proj_a.a_fc.", num_groups, num_groups)
    shapes += _ln_shapes("clip.visual.ln_post.", c)
    for i in range(text_layers):
        shapes += _resblock_shapes(f"clip.transformer.resblocks.{i}.", text_width)
    shapes += [("clip.token_embedding.weight", (vocab_size, text_width)), *_ln_shapes("clip.ln_final.", text_width)]
    if mae_decoder:
        dd = c // 2
        shapes += [
            ("vis_mae_decoder.mask_token", (1, 1, dd)),
            ("vis_mae_decoder.decoder_pos_embed", (1, grid**2 + 1, dd)),
            *_linear_shapes("vis_mae_decoder.decoder_embed.", c, dd),
        ]
        for i in range(MAE_DECODER_DEPTH):
            p = f"vis_mae_decoder.decoder_blocks.{i}."
            shapes += [
                *_ln_shapes(f"{p}norm1.", dd),
                *_linear_shapes(f"{p}attn.qkv.", dd, 3 * dd),
                *_linear_shapes(f"{p}attn.proj.", dd, dd),
                *_ln_shapes(f"{p}norm2.", dd),
                *_linear_shapes(f"{p}mlp.fc1.", dd, 4 * dd),
                *_linear_shapes(f"{p}mlp.fc2.", 4 * dd, dd),
            ]
        shapes += [
            *_ln_shapes("vis_mae_decoder.decoder_norm.", dd),
            *_linear_shapes("vis_mae_decoder.decoder_pred.", dd, patch_size**2 * 3),
        ]
    return OrderedDict(shapes)


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """MAE's fixed 2-D sin-cos table with a zero class row, ``(1 + grid**2, dim)``, as SegCLIP builds it.

    The first half of the channels encodes the column index and the second half the row index
    (their ``np.meshgrid(grid_w, grid_h)`` puts w first, then ``emb_h`` reads ``grid[0]``).
    Computed in float64 like their numpy code, then cast to float32.
    """
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")

    def one_axis(half: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1)
    table = np.concatenate([np.zeros([1, dim]), table], axis=0)
    return torch.from_numpy(table).float()


def segclip_state_dict(
    *,
    width: int = 128,
    layers: int = TOTAL_VISION_BLOCKS,
    first_stage_layer: int = 10,
    patch_size: int = 8,
    image_size: int = 32,
    num_groups: int = 4,
    cross_layers: int = 2,
    embed_dim: int = 32,
    text_width: int = 128,
    text_layers: int = 2,
    context_length: int = 16,
    vocab_size: int = 49408,
    mae_decoder: bool = True,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A random state dict with exactly the keys and shapes of SegCLIP's ``state_dict()``.

    Widths must be multiples of 64 (SegCLIP's heads are ``width // 64``); the default 128 gives
    2 heads so that head splitting is exercised. ``layers`` counts all vision blocks (their
    code: always 12); ``num_groups`` and ``cross_layers`` are 8 and 2 in their model. Weights are scaled by ``fan_in ** -0.5``
    (residual branch outputs by a further 0.5), LayerNorm weights are ``1 + 0.2 N(0, 1)``,
    biases ``0.1 N(0, 1)``, ``logit_scale`` is ``log(1 / 0.07)``; ``decoder_pos_embed`` is the
    fixed sin-cos table. Activations stay O(1) through all blocks. The group module's
    ``cross_ln`` and ``k_ln`` weights are ``(4 / sqrt(width)) ** 0.5`` times that, so that the
    assignment logits have a std near 2 and the soft assignment is not a one-hot.
    """
    for name, value in (("width", width), ("text_width", text_width)):
        if value % 64:
            raise ValueError(f"{name} must be a multiple of 64 (SegCLIP's heads are width // 64), got {value}")
    shapes = segclip_key_shapes(
        width=width, layers=layers, first_stage_layer=first_stage_layer, patch_size=patch_size,
        image_size=image_size, num_groups=num_groups, cross_layers=cross_layers, embed_dim=embed_dim,
        text_width=text_width, text_layers=text_layers, context_length=context_length,
        vocab_size=vocab_size, mae_decoder=mae_decoder,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    state: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if key == "clip.logit_scale":
            value = torch.tensor(math.log(1 / 0.07))
        elif key == "vis_mae_decoder.decoder_pos_embed":
            value = sincos_pos_embed_2d(shape[-1], image_size // patch_size)[None]
        elif key.endswith(("bias", "in_proj_bias")):
            value = 0.1 * randn(*shape)
        elif key.endswith(("semantic_layer2.cross_ln.weight", "semantic_layer2.k_ln.weight")):
            # The assignment logits are unscaled dot products of these two LayerNorm outputs
            # (std ~ sqrt(width) at weight 1: a saturated softmax); scaled to std ~ 2.
            value = (4 / width**0.5) ** 0.5 * (1.0 + 0.2 * randn(*shape))
        elif key.rsplit(".", 2)[-2] in LAYER_NORMS:
            value = 1.0 + 0.2 * randn(*shape)
        elif key.endswith(("positional_embedding", "class_embedding", "semantic_center", "mask_token")):
            value = randn(*shape) * (0.5 if "visual" in key else 0.2)
        elif key == "clip.token_embedding.weight":
            value = randn(*shape)
        elif leaf in ("proj", "text_projection"):
            value = randn(*shape) * shape[0] ** -0.5
        elif key.endswith("conv1.weight"):
            value = randn(*shape) * (3 * patch_size**2) ** -0.5
        elif key.endswith("conv.weight"):  # k_conv / v_conv, fan_in = channels per group
            value = randn(*shape) * shape[1] ** -0.5
        else:  # linear weights (out, in)
            value = randn(*shape) * shape[1] ** -0.5
            if any(s in key for s in ("out_proj", "c_proj", "attn.proj", "mlp.fc2")):
                value = 0.5 * value  # residual branch outputs
        state[key] = value.reshape(shape).contiguous()
    return state


# --------------------------------------------------------------------------------------------
# Building blocks, on (b, l, c) tensors
# --------------------------------------------------------------------------------------------
def _layer_norm(x: Tensor, s: dict[str, Tensor], prefix: str, eps: float = 1e-5) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], s[f"{prefix}weight"], s[f"{prefix}bias"], eps)


def _linear(x: Tensor, s: dict[str, Tensor], prefix: str) -> Tensor:
    return x @ s[f"{prefix}weight"].T + s[f"{prefix}bias"]


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """Per-head softmax(q k^T / sqrt(e) + mask) v on (b, l, c) projections."""
    q, k, v = (rearrange(t, "b l (n e) -> b n l e", n=heads) for t in (q, k, v))
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        logits = logits + mask
    out = logits.softmax(dim=-1) @ v
    return rearrange(out, "b n l e -> b l (n e)")


def _mha(query: Tensor, context: Tensor, s: dict[str, Tensor], prefix: str, heads: int, mask=None) -> Tensor:
    """nn.MultiheadAttention's maths: packed in-projection rows [q; k; v], then out_proj."""
    w, b = s[f"{prefix}in_proj_weight"], s[f"{prefix}in_proj_bias"]
    wq, wk, wv = w.chunk(3)
    bq, bk, bv = b.chunk(3)
    out = _attention(query @ wq.T + bq, context @ wk.T + bk, context @ wv.T + bv, heads, mask)
    return _linear(out, s, f"{prefix}out_proj.")


def _resblock(x: Tensor, s: dict[str, Tensor], prefix: str, mask: Tensor | None = None) -> Tensor:
    heads = x.shape[-1] // 64
    h = _layer_norm(x, s, f"{prefix}ln_1.")
    x = x + _mha(h, h, s, f"{prefix}attn.", heads, mask)
    h = _quick_gelu(_linear(_layer_norm(x, s, f"{prefix}ln_2."), s, f"{prefix}mlp.c_fc."))
    return x + _linear(h, s, f"{prefix}mlp.c_proj.")


def _blocks(x: Tensor, s: dict[str, Tensor], prefix: str, mask: Tensor | None = None) -> Tensor:
    i = 0
    while f"{prefix}{i}.attn.in_proj_weight" in s:
        x = _resblock(x, s, f"{prefix}{i}.", mask)
        i += 1
    return x


def _grouped_conv1x1(x: Tensor, weight: Tensor, groups: int) -> Tensor:
    """Conv1d(c, c, 1, groups=heads, bias=False) on (b, l, c): a block-diagonal matrix."""
    x = rearrange(x, "b l (n i) -> b l n i", n=groups)
    w = rearrange(weight[..., 0], "(n o) i -> n o i", n=groups)
    return rearrange(torch.einsum("blni,noi->blno", x, w), "b l n o -> b l (n o)")


def semantic_group(
    tokens: Tensor, s: dict[str, Tensor], gumbel: Tensor | None = None, torch18_keys: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SegCLIP's SemanticLearnerModule on patch tokens ``(b, l, c)``.

    Their CrossAttentionBlock permutes the centres to (l, b, c) but passes the keys
    ``cat([centres, tokens])`` to ``nn.MultiheadAttention`` still as (b, s, c). On torch >= 1.11
    this raises a shape error at any batch size; on torch 1.8 (their README's version)
    ``k.contiguous().view(-1, bsz * heads, head_dim)`` reinterprets the memory, so image n
    attends to the rows ``s * b + n`` of the flattened (b s) keys: the right keys at batch 1,
    keys mixed across the images of a batch otherwise (their training ran so). By default this
    function attends each image to its own keys (their batch-1 result at any batch);
    ``torch18_keys=True`` reproduces torch 1.8's mixing.

    Returns:
        ``(groups (b, g, c), hard (b, g, l), soft (b, g, l), centres (b, g, c))``. ``hard`` is
        their straight-through one-hot over the groups (dim 1); with ``gumbel`` (the noise, of
        the logits' shape) its soft part is ``softmax((logits + gumbel) / 0.9)`` as in their
        training, without it the plain softmax of their eval.
    """
    p = "clip.visual.transformer.semantic_layer2."
    b, _, c = tokens.shape
    heads = c // 64
    normed = _layer_norm(tokens, s, f"{p}norm.")
    centres = s[f"{p}semantic_center"].expand(b, -1, -1)
    j = 0
    while f"{p}cross_att.{j}.attn.in_proj_weight" in s:
        q = f"{p}cross_att.{j}."
        context = _layer_norm(torch.cat([centres, tokens], dim=1), s, f"{q}ln_k.")  # raw tokens, not `normed`
        if torch18_keys:
            context = rearrange(rearrange(context, "b s c -> (b s) c"), "(s n) c -> n s c", n=b)
        centres = centres + _mha(_layer_norm(centres, s, f"{q}ln_x."), context, s, f"{q}attn.", heads)
        h = _quick_gelu(_linear(_layer_norm(centres, s, f"{q}ln_2."), s, f"{q}mlp.c_fc."))
        centres = centres + _linear(h, s, f"{q}mlp.c_proj.")
        j += 1
    centres = _layer_norm(centres, s, f"{p}cross_ln.")
    keys = _layer_norm(_grouped_conv1x1(normed, s[f"{p}k_conv.weight"], heads), s, f"{p}k_ln.")
    values = _grouped_conv1x1(normed, s[f"{p}v_conv.weight"], heads)
    logits = torch.einsum("bgc,blc->bgl", centres, keys)
    soft_hard = logits.softmax(dim=1) if gumbel is None else ((logits + gumbel) / GROUP_TAU).softmax(dim=1)
    one_hot = torch.zeros_like(logits).scatter_(1, soft_hard.argmax(dim=1, keepdim=True), 1.0)
    hard = one_hot - soft_hard + soft_hard  # their straight-through form, kept for bit-level equality
    soft = logits.softmax(dim=1)
    pooled = torch.einsum("bgl,blc->bgc", hard, values) / hard.sum(dim=-1, keepdim=True).clamp_min(1.0)
    h = _layer_norm(centres + pooled, s, f"{p}proj_o.ln.")
    h = _linear(F.gelu(_linear(h, s, f"{p}proj_o.mlp.fc1.")), s, f"{p}proj_o.mlp.fc2.")
    return _quick_gelu(h), hard, soft, centres


def interpolate_pos_embed(pos: Tensor, h: int, w: int) -> Tensor:
    """Their eval ``get_pos_embed``: the patch rows resized bicubically to ``h x w``, class row kept.

    Identity when ``h == w`` and ``h * w`` is the stored count; a non-square grid with the same
    count is still resized.
    """
    cls_row, grid_rows = pos[:1], pos[1:]
    n = grid_rows.shape[0]
    if n == h * w and h == w:
        return pos
    side = int(math.sqrt(n))
    grid = rearrange(grid_rows, "(i j) c -> 1 c i j", i=side, j=side)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return torch.cat([cls_row, rearrange(grid, "1 c h w -> (h w) c")], dim=0)


def _embed_patches(s: dict[str, Tensor], images: Tensor, interpolate: bool) -> Tensor:
    """conv1, class token, position embedding, ln_pre: ``(b, 1 + l, c)``."""
    x = F.conv2d(images, s["clip.visual.conv1.weight"], stride=s["clip.visual.conv1.weight"].shape[-1])
    h, w = x.shape[-2:]
    x = rearrange(x, "b c h w -> b (h w) c")
    cls_token = s["clip.visual.class_embedding"].expand(x.shape[0], 1, -1)
    pos = s["clip.visual.positional_embedding"]
    pos = interpolate_pos_embed(pos, h, w) if interpolate else pos  # training: raw table
    x = torch.cat([cls_token, x], dim=1) + pos
    return _layer_norm(x, s, "clip.visual.ln_pre.")


# --------------------------------------------------------------------------------------------
# The public forwards
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def reference_encode_image(
    state: dict[str, Tensor], images: Tensor, *, their_size_rule: bool = False, torch18_keys: bool = False
) -> dict:
    """Their ``CLIP.encode_image(images, return_hidden=True)`` in eval mode.

    Args:
        state: SegCLIP state dict (``clip.`` keys).
        images: ``(b, 3, H, W)``, already normalised; H and W multiples of the patch size.
        their_size_rule: SegCLIP's SegViT takes the segmentation branch only when the patch
            count is ``patch_len**2`` or ``4 * patch_len**2`` (``patch_len`` = native grid side);
            at any other count it silently takes the MAE reconstruction branch, whose empty
            ``mid_states['attns']`` then trips ``assert mask_ratio > 0.`` in
            ``VisualTransformer.forward`` (an AssertionError, or wrong outputs under ``python
            -O``). This function runs the segmentation branch at any size; with
            ``their_size_rule=True`` it raises ValueError where their code would not.
        torch18_keys: mix the group module's keys across the batch as torch 1.8 did
            (see :func:`semantic_group`); no effect at batch 1.

    Returns:
        ``image (b, d)``, ``hidden (b, 1 + g, d)`` (projected, the max-pooled class token
        first), ``soft (b, g, l)``, ``hard (b, g, l)``.
    """
    s = state
    x = _embed_patches(s, images, interpolate=True)
    patches = x[:, 1:]  # the class token never enters a block
    native = s["clip.visual.positional_embedding"].shape[0] - 1
    if their_size_rule and patches.shape[1] not in (native, 4 * native):
        raise ValueError(
            f"{patches.shape[1]} patch tokens: SegCLIP's SegViT would take its reconstruction branch "
            f"(it segments only {native} or {4 * native} tokens)"
        )
    patches = _blocks(patches, s, "clip.visual.transformer.layers0.")
    groups, hard, soft, _ = semantic_group(patches, s, torch18_keys=torch18_keys)
    groups = _blocks(groups, s, "clip.visual.transformer.layers2.")
    tokens = torch.cat([groups.max(dim=1, keepdim=True).values, groups], dim=1)
    hidden = _layer_norm(tokens, s, "clip.visual.ln_post.") @ s["clip.visual.proj"]
    return {"image": hidden[:, 0], "hidden": hidden, "soft": soft, "hard": hard}


def causal_mask(length: int) -> Tensor:
    """CLIP's additive causal mask: -inf above the diagonal."""
    return torch.full((length, length), float("-inf")).triu(1)


@torch.no_grad()
def reference_encode_text(state: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """Their ``CLIP.encode_text``: ``(b, t)`` int64 ids -> ``(b, d)``, read at the eot (largest id).

    Their mask is built at the length of ``tokens`` and the position table cut to it.
    """
    s = state
    t = tokens.shape[1]
    x = s["clip.token_embedding.weight"][tokens] + s["clip.positional_embedding"][:t]
    x = _blocks(x, s, "clip.transformer.resblocks.", causal_mask(t))
    hidden = _layer_norm(x, s, "clip.ln_final.") @ s["clip.text_projection"]
    return hidden[torch.arange(hidden.shape[0]), tokens.argmax(dim=-1)]


@torch.no_grad()
def reference_text_embedding(state: dict[str, Tensor], tokens_per_class: Tensor) -> Tensor:
    """Their ``build_seg_inference``: ``(k, m, t)`` ids -> ``(k, d)``, the unit-norm mean over templates
    of the unnormalised text embeddings."""
    k, m, _ = tokens_per_class.shape
    emb = reference_encode_text(state, rearrange(tokens_per_class, "k m t -> (k m) t"))
    emb = rearrange(emb, "(k m) d -> k m d", k=k, m=m).mean(dim=1)
    return emb / emb.norm(dim=-1, keepdim=True)


def resize_attn_map(attn: Tensor, h: int, w: int) -> Tensor:
    """Their ``resize_attn_map`` for ``(b, l, g)``: the feature grid from the image's aspect, bilinear.

    The grid is ``(h // round(scale), l // that)`` (or transposed when ``h > w``), with
    ``scale = sqrt(h * w // l)``. Returns ``(b, h, w, g)``.
    """
    n = attn.shape[1]
    scale = (h * w // n) ** 0.5
    if h > w:
        fw = w // int(np.round(scale))
        fh = n // fw
    else:
        fh = h // int(np.round(scale))
        fw = n // fh
    if fh * fw != n:
        raise ValueError(f"{n} tokens do not tile a {fh} x {fw} grid for a {h} x {w} image")
    maps = rearrange(attn, "b (i j) g -> b g i j", i=fh, j=fw)
    maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
    return rearrange(maps, "b g h w -> b h w g")


@torch.no_grad()
def reference_segment(
    state: dict[str, Tensor], image: Tensor, text_embedding: Tensor, with_bg: bool = True, bg_thresh: float = 0.8
) -> Tensor:
    """Their ``ViTSegInference.encode_decode`` for one image.

    Args:
        state: SegCLIP state dict.
        image: ``(1, 3, H, W)`` normalised.
        text_embedding: ``(k, d)`` unit-norm class embeddings (:func:`reference_text_embedding`).
        with_bg: a background channel first, set where no class reaches ``bg_thresh``.
        bg_thresh: their ``test_cfg.bg_thresh`` (0.80 in their VOC config, 0.65 COCO; the
            class default is 0.95), lowered to the largest group-class affinity when above it.

    Returns:
        ``(k + 1, H, W)`` with ``with_bg``, else ``(k, H, W)``: per pixel, the affinity of its
        argmax group to each class; the background channel is 0 or 1.
    """
    h, w = image.shape[-2:]
    out = reference_encode_image(state, image)
    # get_attn_maps(rescale=True): resized to the image, then (a no-op) resized again to it
    attn = resize_attn_map(rearrange(out["soft"], "b g l -> b l g"), h, w)
    attn = rearrange(
        F.interpolate(rearrange(attn, "b h w g -> b g h w"), size=(h, w), mode="bilinear", align_corners=False),
        "b g h w -> b h w g",
    )[0]
    one_hot = F.one_hot(attn.argmax(dim=-1), num_classes=attn.shape[-1]).to(attn.dtype)  # (h, w, g)

    groups = F.normalize(out["hidden"][0, 1:], dim=-1)  # (g, d)
    image_emb = F.normalize(out["image"], dim=-1)  # (1, d)
    scale = state["clip.logit_scale"].exp().clamp(max=100)
    k = text_embedding.shape[0]
    group_logits = groups @ text_embedding.T * scale  # (g, k)
    pre = group_logits.softmax(dim=-1)
    image_probs = (image_emb @ text_embedding.T * scale).softmax(dim=-1)  # (1, k)
    keep = torch.zeros_like(image_probs, dtype=torch.bool)
    keep.scatter_(-1, image_probs.topk(min(5, k), dim=-1).indices, True)
    affinity = group_logits.masked_fill(~keep, float("-inf")).softmax(dim=-1) * pre  # (g, k)

    per_pixel = rearrange(one_hot @ affinity, "h w k -> k h w")
    if not with_bg:
        return per_pixel
    background = torch.zeros(1, h, w, dtype=image.dtype)
    threshold = min(bg_thresh, affinity.max().item())
    background[0, per_pixel.max(dim=0).values < threshold] = 1
    return torch.cat([background, per_pixel], dim=0)


def patchify(images: Tensor, patch: int) -> Tensor:
    """MAE's patch order: ``(b, 3, H, W) -> (b, l, patch * patch * 3)``, channels last within a patch."""
    return rearrange(images, "b c (i p) (j q) -> b (i j) (p q c)", p=patch, q=patch)


def _mae_block(x: Tensor, s: dict[str, Tensor], prefix: str) -> Tensor:
    """timm ViT block, exact GELU, LayerNorm eps 1e-6, packed qkv with bias."""
    h = _layer_norm(x, s, f"{prefix}norm1.", eps=1e-6)
    q, k, v = _linear(h, s, f"{prefix}attn.qkv.").chunk(3, dim=-1)
    x = x + _linear(_attention(q, k, v, MAE_DECODER_HEADS), s, f"{prefix}attn.proj.")
    h = F.gelu(_linear(_layer_norm(x, s, f"{prefix}norm2.", eps=1e-6), s, f"{prefix}mlp.fc1."))
    return x + _linear(h, s, f"{prefix}mlp.fc2.")


@torch.no_grad()
def reference_mae_loss(
    state: dict[str, Tensor], images: Tensor, noise: Tensor, gumbel: Tensor | None = None, torch18_keys: bool = False
) -> Tensor:
    """Their visual reconstruction loss (``use_vision_mae_recon``), with the masking noise given.

    Masking at ratio 0.75 by argsort of ``noise`` ``(b, 1 + l)`` (entry 0 forced to -1 so the
    class token is kept, as their ``keep_cls``), the raw position table (training mode),
    SegViT's reconstruction branch on the kept patches (group, ``reconstruct_layer2``,
    ``layers_mae2``), a mean class token, then ``MAEDecoder.forward_vis``: the mean squared
    error over the masked patches of the normalised image.

    Args:
        gumbel: ``None`` for the deterministic form used by the tests (the eval softmax in the
            hard assignment; their training samples Gumbel noise there), or the noise itself,
            ``(b, g, kept patches)``, to reproduce a training step.
        torch18_keys: as in :func:`semantic_group`; their training ran with it.
    """
    s = state
    x = _embed_patches(s, images, interpolate=False)
    b, n, c = x.shape
    noise = noise.clone()
    noise[:, 0] = -1.0
    keep = int(n * (1 - MAE_MASK_RATIO))
    order = noise.argsort(dim=1)
    restore = order.argsort(dim=1)
    kept = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, c))
    masked = torch.ones(b, n)
    masked[:, :keep] = 0
    masked = torch.gather(masked, 1, restore)  # 1 where removed

    patches = _blocks(kept[:, 1:], s, "clip.visual.transformer.layers0.")
    groups, hard, _, _ = semantic_group(patches, s, gumbel, torch18_keys)
    vt = "clip.visual.transformer."
    mix = _linear(rearrange(hard, "b g l -> b l g"), s, f"{vt}reconstruct_layer2.rec_proj_a.a_fc.")
    patches = _quick_gelu(torch.einsum("bgc,blg->blc", groups, mix))
    hidden = _blocks(patches, s, f"{vt}layers_mae2.")
    hidden = torch.cat([hidden.mean(dim=1, keepdim=True), hidden], dim=1)

    d = "vis_mae_decoder."
    y = _linear(hidden, s, f"{d}decoder_embed.")
    y = torch.cat([y, s[f"{d}mask_token"].expand(b, n - y.shape[1], -1)], dim=1)
    y = torch.gather(y, 1, restore[..., None].expand(-1, -1, y.shape[-1])) + s[f"{d}decoder_pos_embed"]
    i = 0
    while f"{d}decoder_blocks.{i}.norm1.weight" in s:
        y = _mae_block(y, s, f"{d}decoder_blocks.{i}.")
        i += 1
    pred = _linear(_layer_norm(y, s, f"{d}decoder_norm.", eps=1e-6), s, f"{d}decoder_pred.")[:, 1:]
    per_patch = ((pred - patchify(images, s["clip.visual.conv1.weight"].shape[-1])) ** 2).mean(dim=-1)
    return (per_patch * masked[:, 1:]).sum() / masked[:, 1:].sum()


def reference_contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """Their ``_loose_similarity`` + cross-entropy both ways, halved; one process.

    ``logit_scale`` is the stored log-scale; the scale used is ``exp`` clamped at 100. Row i of
    the images is paired with row i of the texts.
    """
    image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
    text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
    scale = logit_scale.exp().clamp(max=100)
    t2v = scale * text_emb @ image_emb.T
    v2t = scale * image_emb @ text_emb.T
    labels = torch.arange(image_emb.shape[0])
    return (F.cross_entropy(t2v, labels) + F.cross_entropy(v2t, labels)) / 2
