"""A functional transcription of UFO's image model, for the tests to hold ``cosegkit``'s UFO against.

UFO (Su et al., "A Unified Transformer Framework for Group-based Segmentation", TMM 2023)
publishes its image model in ``model_image.py``, ``transformer.py`` and ``Intra_MLP.py`` of
``suyukun666/UFO``. This module re-states that model's ``forward`` in eval mode as plain
functions over a state dict in the format UFO's ``train.py`` saves (``net.state_dict()`` of the
``DataParallel``-wrapped net, so every key starts with ``module.``). It is written from the
logic of their files, step by step, and keeps every quirk of that logic:

- VGG16-BN taps after pool2..pool5 (layer indices 13, 23, 33, 43 of ``base``); pool1 is unused.
- ``incr_channel1[k]`` then ``incr_channel2[k]`` with no activation between, then the one shared
  ReLU ``incr_channel2[4]``.
- The group transformers act on levels 3 (``transformer_1``) and 2 (``transformer_2``) only,
  over the tokens of all images of a group jointly; attention scale ``dim ** -0.5`` with the full
  width (not the head width); pre-norm residual blocks; GELU feed-forward of hidden width 782.
- The intra-MLP: k = 4 nearest neighbours by squared L2 among the positions of the same image,
  the position itself pushed away by a ``-1e8`` block (at grids of fewer than five positions
  this still selects the position itself, as their code would), a 1x1 conv over the gathered
  neighbours, max over the neighbours, plus the level-3 features, sigmoid.
- The class branch reinterprets the memory of the per-image Gram vectors ``(B*N, 4096)`` as
  ``(B, 4096, N, 1)`` with ``.view``: a reinterpretation, not a transpose.
- The class vector scales every image of its group (``fuse_hsp``); the spatial mask is resized
  bilinearly (``align_corners=False``) to each level and added.
- Level 2 enters the decoder from ``newp[1]`` (the level-2 features before any transformer),
  level 1 from ``newp[0]``; each decoder stage adds the coarser stage's output after its index 1
  (the first ReLU). ``concat4``, ``concat3`` and ``concat2`` are one set of modules in UFO; the
  state dict holds the same tensors under the three names and this transcription reads each
  stage's weights under its own name.
- The mask head is conv3x3 -> ConvTranspose2d(2, 2, 8, 4, 2) -> Softmax2d; channel 0 is the
  prediction UFO's losses treat as foreground.

Only the hard-coded ``7, 7`` of the intra-MLP is generalised to the deepest grid of the input
(``H / 32, W / 32``), and the group size is a parameter; at 224 x 224 and groups of 5 this is
UFO's computation. The head width (512 in UFO) follows the state dict so that small tests can
use a narrower random model; UFO's checkpoints have 512.

Axis legend: b groups, n images per group, c channels, h w spatial, t tokens, k neighbours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["UFO_VGG_CFG", "ufo_forward", "ufo_keys_and_shapes", "ufo_state_dict"]

# UFO's VGG16 configuration: channel widths, "M" a 2x2 max-pool.
UFO_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# the indices of ``base`` after which UFO keeps the features (pool2, pool3, pool4, pool5)
UFO_TAPS = (13, 23, 33, 43)
UFO_FF_HIDDEN = 782
UFO_HEADS = 4
UFO_DEPTH = 4
UFO_NEIGHBOURS = 4
BN_EPS = 1e-5
LN_EPS = 1e-5


def _vgg_layers() -> list[tuple[str, int, int, int]]:
    """UFO's ``base`` ModuleList as (kind, index, in_channels, out_channels), kind in conv/bn/relu/pool."""
    layers = []
    index, in_channels = 0, 3
    for v in UFO_VGG_CFG:
        if v == "M":
            layers.append(("pool", index, in_channels, in_channels))
            index += 1
        else:
            layers.append(("conv", index, in_channels, v))
            layers.append(("bn", index + 1, v, v))
            layers.append(("relu", index + 2, v, v))
            index += 3
            in_channels = v
    return layers


def ufo_keys_and_shapes(num_classes: int = 78, dim: int = 512) -> list[tuple[str, tuple[int, ...]]]:
    """Every key of UFO's ``Model.state_dict()`` (without the ``module.`` prefix) with its shape.

    In the order ``state_dict()`` lists them: the modules in the order ``Model.__init__``
    registers them. ``num_batches_tracked`` entries have shape ``()``.
    """
    keys: list[tuple[str, tuple[int, ...]]] = []

    def conv(name: str, c_out: int, c_in: int, size: int) -> None:
        keys.append((f"{name}.weight", (c_out, c_in, size, size)))
        keys.append((f"{name}.bias", (c_out,)))

    def conv_transpose(name: str, c_in: int, c_out: int, size: int) -> None:
        keys.append((f"{name}.weight", (c_in, c_out, size, size)))
        keys.append((f"{name}.bias", (c_out,)))

    def linear(name: str, c_out: int, c_in: int, bias: bool = True) -> None:
        keys.append((f"{name}.weight", (c_out, c_in)))
        if bias:
            keys.append((f"{name}.bias", (c_out,)))

    for kind, index, c_in, c_out in _vgg_layers():
        if kind == "conv":
            conv(f"base.{index}", c_out, c_in, 3)
        elif kind == "bn":
            for field in ("weight", "bias", "running_mean", "running_var"):
                keys.append((f"base.{index}.{field}", (c_out,)))
            keys.append((f"base.{index}.num_batches_tracked", ()))
    conv("sp1.0", 64, dim, 1)
    conv("sp2.0", 32, 64**2, 1)
    linear("cls_m.0", dim, 32**2)
    linear("cls.0", num_classes, dim)
    for k, c_in in enumerate((128, 256, 512, 512)):
        conv(f"incr_channel1.{k}", dim, c_in, 3)
    for k in range(4):
        conv(f"incr_channel2.{k}", dim, dim, 3)
    for name in ("concat4", "concat3", "concat2"):
        conv(f"{name}.0", dim, dim, 1)
        conv(f"{name}.2", dim, dim, 3)
        conv_transpose(f"{name}.4", dim, dim, 4)
    conv("concat1.0", dim, dim, 1)
    conv("concat1.2", dim, dim, 3)
    conv("mask.0", 2, dim, 3)
    conv_transpose("mask.1", 2, 2, 8)
    conv("intra.0", dim, dim, 1)
    for name in ("transformer_1", "transformer_2"):
        for layer in range(UFO_DEPTH):
            p = f"{name}.layers.{layer}"
            keys.append((f"{p}.0.fn.norm.weight", (dim,)))
            keys.append((f"{p}.0.fn.norm.bias", (dim,)))
            linear(f"{p}.0.fn.fn.to_qkv", 3 * dim, dim, bias=False)
            linear(f"{p}.0.fn.fn.to_out.0", dim, dim)
            keys.append((f"{p}.1.fn.norm.weight", (dim,)))
            keys.append((f"{p}.1.fn.norm.bias", (dim,)))
            linear(f"{p}.1.fn.fn.net.0", UFO_FF_HIDDEN, dim)
            linear(f"{p}.1.fn.fn.net.3", dim, UFO_FF_HIDDEN)
    return keys


def _init_value(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A random value for one key, scaled so that activations stay of order one."""

    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    if key.endswith("num_batches_tracked"):
        return torch.tensor(1000, dtype=torch.long)
    if key.endswith("running_mean"):
        return normal(0.1)
    if key.endswith("running_var"):
        return uniform(1.0, 3.0)
    is_batch_norm = key.startswith("base.") and len(shape) == 1
    if (is_batch_norm or ".norm." in key) and key.endswith("weight"):
        return uniform(0.8, 1.2)
    if key.endswith("bias"):
        if key.startswith(("sp1.", "sp2.", "cls_m.")):
            return normal(0.01)  # the class branch is driven by the images, not by its biases
        return normal(0.05 if key.startswith("base.") else 0.1)
    fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
    if ".fn.fn.to_qkv" in key:
        return normal(2.0 / shape[1] ** 0.5)  # attention logits of order one at scale dim ** -0.5
    if key.startswith("concat") and key.endswith(".4.weight"):
        # a transposed conv of stride s sums in_channels * (k / s) ** 2 terms per output
        fan_in = shape[0] * shape[2] * shape[3] // 4  # stride 2
    if key == "mask.1.weight":
        fan_in = shape[0] * shape[2] * shape[3] // 16  # stride 4
    if key.startswith(("sp1.", "sp2.", "cls_m.")):
        # their inputs are positive (after a ReLU, or Gram matrices of such): weights centred over
        # the inputs cancel the common part, so that the products that follow stay of order one
        # and depend on the images rather than on the sum of the random weights
        weight = normal(1.0 / fan_in**0.5)
        return weight - weight.flatten(1).mean(dim=1).view(-1, *[1] * (len(shape) - 1))
    if key == "mask.0.weight":
        return normal(0.15 / fan_in**0.5)  # mask logits of order one: probabilities spread over (0, 1)
    return normal((2.0 / fan_in) ** 0.5)


def ufo_state_dict(
    seed: int = 0, num_classes: int = 78, dim: int = 512, prefix: str = "module."
) -> dict[str, torch.Tensor]:
    """A random state dict with exactly the keys and shapes UFO's ``train.py`` saves.

    ``concat4``, ``concat3`` and ``concat2`` hold the same tensor objects, as the shared modules
    of UFO's model do. Values are random with moderate scales (positive BatchNorm running
    variances, small running means) so that a forward pass has outputs spread over (0, 1).
    """
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in ufo_keys_and_shapes(num_classes=num_classes, dim=dim):
        if key.startswith(("concat3.", "concat2.")):
            state[prefix + key] = state[prefix + "concat4." + key.split(".", 1)[1]]
        else:
            state[prefix + key] = _init_value(key, shape, generator)
    return state


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix of a DataParallel checkpoint, if present."""
    return {key.removeprefix("module."): value for key, value in state.items()}


def _conv(s: dict[str, torch.Tensor], name: str, x: torch.Tensor, padding: int = 0) -> torch.Tensor:
    return F.conv2d(x, s[f"{name}.weight"], s[f"{name}.bias"], stride=1, padding=padding)


def _vgg_taps(s: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """UFO's ``base`` in eval mode, keeping the output after layers 13, 23, 33, 43."""
    taps = []
    for kind, index, _, _ in _vgg_layers():
        if kind == "conv":
            x = _conv(s, f"base.{index}", x, padding=1)
        elif kind == "bn":
            p = f"base.{index}"
            x = F.batch_norm(
                x,
                s[f"{p}.running_mean"],
                s[f"{p}.running_var"],
                s[f"{p}.weight"],
                s[f"{p}.bias"],
                training=False,
                eps=BN_EPS,
            )
        elif kind == "relu":
            x = F.relu(x)
        else:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        if index in UFO_TAPS:
            taps.append(x)
    return taps


def _group_transformer(s: dict[str, torch.Tensor], name: str, x: torch.Tensor, group_size: int) -> torch.Tensor:
    """UFO's ``Transformer``: pre-norm attention and feed-forward over the tokens of a whole group."""
    dim, h, w = x.shape[1:]
    tokens = rearrange(x, "(b n) c h w -> b (n h w) c", n=group_size)
    for layer in range(UFO_DEPTH):
        p = f"{name}.layers.{layer}"
        y = F.layer_norm(tokens, (dim,), s[f"{p}.0.fn.norm.weight"], s[f"{p}.0.fn.norm.bias"], eps=LN_EPS)
        q, k, v = F.linear(y, s[f"{p}.0.fn.fn.to_qkv.weight"]).chunk(3, dim=-1)
        q, k, v = (rearrange(z, "b t (h d) -> b h t d", h=UFO_HEADS) for z in (q, k, v))
        attention = (torch.einsum("bhid,bhjd->bhij", q, k) * dim**-0.5).softmax(dim=-1)
        mixed = rearrange(torch.einsum("bhij,bhjd->bhid", attention, v), "b h t d -> b t (h d)")
        tokens = F.linear(mixed, s[f"{p}.0.fn.fn.to_out.0.weight"], s[f"{p}.0.fn.fn.to_out.0.bias"]) + tokens
        y = F.layer_norm(tokens, (dim,), s[f"{p}.1.fn.norm.weight"], s[f"{p}.1.fn.norm.bias"], eps=LN_EPS)
        y = F.gelu(F.linear(y, s[f"{p}.1.fn.fn.net.0.weight"], s[f"{p}.1.fn.fn.net.0.bias"]))
        tokens = F.linear(y, s[f"{p}.1.fn.fn.net.3.weight"], s[f"{p}.1.fn.fn.net.3.bias"]) + tokens
    return rearrange(tokens, "b (n h w) c -> (b n) c h w", n=group_size, h=h, w=w)


def _intra_mlp(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """UFO's intra-MLP: the spatial mask from each position's 4 nearest positions in its own image."""
    bn, c, h, w = x.shape
    points = rearrange(x, "bn c h w -> bn (h w) c")
    square = torch.norm(points, dim=2, keepdim=True) ** 2
    # the same expression, in the same order, as their knn_l2 (u = 1: only the diagonal is blocked)
    block = torch.diag_embed(torch.full((bn, h * w), -1e8, dtype=x.dtype, device=x.device))
    minus_distance = 2 * torch.matmul(points, points.transpose(2, 1)) - square - square.transpose(2, 1) + block
    neighbours = torch.topk(minus_distance, UFO_NEIGHBOURS, largest=True, sorted=False).indices  # (bn, t, k)
    batch = torch.arange(bn, device=x.device).view(bn, 1, 1)
    gathered = points[batch, neighbours, :]  # (bn, t, k, c)
    gathered = gathered.permute(0, 3, 2, 1)  # (bn, c, k, t)
    gathered = _conv(s, "intra.0", gathered)
    pooled = torch.max(gathered, dim=2).values  # (bn, c, t)
    return torch.sigmoid(pooled.reshape(bn, c, h, w) + x)


def _class_vector(s: dict[str, torch.Tensor], x: torch.Tensor, group_size: int) -> torch.Tensor:
    """UFO's class branch up to the modulation vector, with its reshapes as their ``.view`` calls do."""
    x = F.relu(_conv(s, "sp1.0", x))
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = torch.bmm(x, x.transpose(1, 2))
    x = x.reshape(x.shape[0], -1)  # (b*n, 64*64): one Gram vector per image
    # their x.view(x.size(0) // group_size, x.size(1), -1, 1): the (n, 4096) block of a group is
    # read as (4096, n) in memory order, not transposed
    x = x.reshape(x.shape[0] // group_size, x.shape[1], -1, 1)
    x = F.relu(_conv(s, "sp2.0", x))
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = torch.bmm(x, x.transpose(1, 2))
    x = x.reshape(x.shape[0], -1)  # (b, 32*32)
    return F.relu(F.linear(x, s["cls_m.0.weight"], s["cls_m.0.bias"]))


def _decoder_stage(
    s: dict[str, torch.Tensor], name: str, y: torch.Tensor, coarser: torch.Tensor | None
) -> torch.Tensor:
    """One ``concat_r`` stage: conv1x1, ReLU, (+ coarser), conv3x3, ReLU, ConvTranspose2d(4, 2, 1)."""
    y = F.relu(_conv(s, f"{name}.0", y))
    if coarser is not None:
        y = y + coarser
    y = F.relu(_conv(s, f"{name}.2", y, padding=1))
    return F.conv_transpose2d(y, s[f"{name}.4.weight"], s[f"{name}.4.bias"], stride=2, padding=1)


def ufo_forward(
    state: dict[str, torch.Tensor], images: torch.Tensor, group_size: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """UFO's image ``Model.forward`` in eval mode, over a state dict in UFO's key format.

    Args:
        state: UFO's state dict, with or without the ``module.`` prefix.
        images: what UFO's network receives: the images of consecutive groups, ImageNet-normalised.
        group_size: images per group (UFO fixes 5).

    Returns:
        ``(cls_pred, mask_pred)``: class probabilities per group and the foreground probability
        (softmax channel 0) per image.

    Shape:
        - images: :math:`(B \\cdot N, 3, H, W)`, H and W divisible by 32
        - cls_pred: :math:`(B, C)`
        - mask_pred: :math:`(B \\cdot N, H, W)`

    Example:
        >>> state = ufo_state_dict(seed=0, num_classes=10, dim=64)
        >>> cls_pred, mask_pred = ufo_forward(state, torch.randn(6, 3, 64, 64), group_size=3)
        >>> tuple(cls_pred.shape), tuple(mask_pred.shape)
        ((2, 10), (6, 64, 64))
    """
    s = _strip(state)
    p = _vgg_taps(s, images)
    newp, newp_t = [], []
    for k, feature in enumerate(p):
        z = _conv(s, f"incr_channel1.{k}", feature, padding=1)
        z = _conv(s, f"incr_channel2.{k}", z, padding=1)
        newp.append(F.relu(z))
        if k == 3:
            newp_t.append(_group_transformer(s, "transformer_1", newp[k], group_size))
        elif k == 2:
            newp_t.append(_group_transformer(s, "transformer_2", newp[k], group_size))
        else:
            newp_t.append(None)

    spa_mask = _intra_mlp(s, newp[3])

    cls_vector = _class_vector(s, newp[3], group_size)
    cls_pred = torch.sigmoid(F.linear(cls_vector, s["cls.0.weight"], s["cls.0.bias"]))

    # fuse_hsp: the group's vector scales every image of its group
    g = cls_vector.repeat_interleave(group_size, dim=0)[:, :, None, None]
    spa = [F.interpolate(spa_mask, size=list(level.shape[2:]), mode="bilinear") for level in newp]

    y4 = _decoder_stage(s, "concat4", newp_t[3] * g + spa[3], None)
    y3 = _decoder_stage(s, "concat3", newp_t[2] * g + spa[2], y4)
    y2 = _decoder_stage(s, "concat2", newp[1] * g + spa[1], y3)
    y1 = F.relu(_conv(s, "concat1.0", newp[0] * g + spa[0])) + y2
    y1 = F.relu(_conv(s, "concat1.2", y1, padding=1))

    y = _conv(s, "mask.0", y1, padding=1)
    y = F.conv_transpose2d(y, s["mask.1.weight"], s["mask.1.bias"], stride=4, padding=2)
    mask_pred = torch.softmax(y, dim=1)[:, 0]
    return cls_pred, mask_pred
