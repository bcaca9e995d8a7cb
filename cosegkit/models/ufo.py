r"""UFO, a peer of LCCo: the group transformer of Su et al., "A Unified Transformer Framework for
Group-based Segmentation" (IEEE TMM 2023), image model (``suyukun666/UFO``, ``model_image.py``).

Every image of a group goes through an smp encoder, read at strides 4, 8, 16 and 32; each level
is widened to ``dim`` channels. Then, as UFO's code does:

- a transformer over the tokens of the *whole group* at strides 32 and 16 (``transformer.py``);
- the intra-MLP at stride 32: each position's ``k`` nearest neighbours in its own image (L2, the
  position itself excluded), a 1x1 convolution, the max over the neighbours, the level added
  back, a sigmoid: the spatial modulation (``Intra_MLP.py``);
- the group's class vector, from second-order statistics: a per-image Gram matrix of reduced
  stride-32 features, the group's Gram matrices reduced again and their Gram matrix taken over
  the group; it feeds the classification head (one sigmoid per class) and modulates every level
  channel-wise (the semantic modulation);
- a top-down decoder fusing the four modulated levels, and the mask branch at stride 4, brought
  to input resolution by a transposed convolution.

Where this departs from UFO's code (any group size, any image size, padded groups, other
encoders, mask logits) is listed on the equations page's UFO section.

Axis legend (einops):
    b   batch of groups    n   images per group    c   channels    h w spatial
    t   tokens of a group  k   neighbours          g   Gram entries
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import check_image_set, resolve_valid
from cosegkit.errors import CosegValueError, WeightsUnavailableError
from cosegkit.models.lcco import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LCCo,
    _encoder_stats,
    _read_safetensors,
    build_encoder,
    model_folder,
    read_checkpoint_file,
    write_model_folder,
)
from cosegkit.models.ufo_output import UFOOutput

__all__ = ["UFO", "UFO_STRIDE", "UFOOutput", "ufo_state_dict_to_cosegkit"]

ARCHITECTURE = "ufo"
UFO_STRIDE = 32
"""The deepest stride UFO reads; inputs are padded to a multiple of it."""
UFO_MLP_RATIO = 782 / 512  # UFO's transformer hidden width over its model width
_KNN_BLOCK = 1e8  # UFO's INF: added to each position's distance to itself in the intra-MLP


# ---------------------------------------------------------------------------------------- parts
class GroupAttentionLayer(nn.Module):
    """One pre-norm transformer layer of UFO's ``transformer.py``: attention, then a GELU MLP.

    UFO scales the attention logits by ``dim ** -0.5`` (the model width, not the head width);
    so does this layer.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise CosegValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.scale = dim**-0.5
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, T, dim)`` tokens; ``keep``: optional boolean ``(B, T)``, False for tokens no one attends to."""
        q, k, v = rearrange(self.qkv(self.attn_norm(x)), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        mask = None if keep is None else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        x = x + self.proj(rearrange(out, "b h t d -> b t (h d)"))
        return x + self.ff(self.ff_norm(x))


class GroupTransformer(nn.Module):
    """UFO's transformer over all tokens of a group: ``(B, N, C, h, w)`` in and out.

    Padded images (``valid`` False) are attended to by no token, so the valid images' output
    is what the group without them gives.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GroupAttentionLayer(dim, heads, mlp_dim) for _ in range(depth))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        n, h, w = x.shape[1], x.shape[3], x.shape[4]
        tokens = rearrange(x, "b n c h w -> b (n h w) c")
        keep = None if valid is None else valid.repeat_interleave(h * w, dim=1)
        for layer in self.layers:
            tokens = layer(tokens, keep)
        return rearrange(tokens, "b (n h w) c -> b n c h w", n=n, h=h, w=w)


class TopDownFusion(nn.Module):
    """One of UFO's ``concat`` blocks: 1x1 conv, ReLU, (+ the coarser level), 3x3 conv, ReLU, then
    an optional 2x transposed-conv upsampling (``concat_r``; ``concat_1`` has none)."""

    def __init__(self, dim: int, upsample: bool) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(dim, dim, 1)
        self.mix = nn.Conv2d(dim, dim, 3, padding=1)
        self.up = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(self.reduce(x))
        if coarser is not None:
            x = x + coarser
        return self.up(F.relu(self.mix(x)))


def nearest_neighbours(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, P, k)`` of each point's ``k`` nearest others by L2 distance, as UFO's ``knn_l2``.

    The point itself is pushed away by UFO's block of :math:`-10^8` (``u = 1``): it is chosen
    only when the image has fewer than ``k + 1`` positions.

    Example:
        >>> import torch
        >>> points = torch.tensor([[[0.0], [1.0], [3.0], [7.0]]])  # one image, 4 positions, 1 channel
        >>> nearest_neighbours(points, 1)[0, :, 0].tolist()
        [1, 0, 1, 2]
    """
    square = points.pow(2).sum(-1, keepdim=True)
    eye = torch.eye(points.shape[1], dtype=points.dtype, device=points.device)
    minus_distance = 2 * points @ points.transpose(1, 2) - square - square.transpose(1, 2) - _KNN_BLOCK * eye
    return minus_distance.topk(min(k, points.shape[1]), dim=-1).indices


# ---------------------------------------------------------------------------------------- model
class UFO(nn.Module):
    r"""UFO's image model for co-segmentation, on any smp encoder, any group size and image size.

    With ``encoder_name="vgg16_bn"`` and UFO's widths (the defaults) the layers and their
    arithmetic are those of ``model_image.py``: :meth:`from_ufo_checkpoint` loads the authors'
    ``image_best.pth`` and, at 224 px and groups of 5, gives UFO's outputs (held by the tests
    to 1e-5 against a transcription of their forward).

    Args:
        encoder_name: an smp encoder; UFO's is ``"vgg16_bn"``. It is read at strides 4, 8, 16
            and 32: VGG's after each pooling, as UFO taps it (pool2 to pool5), any other
            encoder at its stride 4 to 32 stages (``encoder_depth`` 5).
        encoder_weights: an smp weights tag (``"imagenet"``), a local weights file, or ``None``.
        num_classes: outputs of the classification head (UFO's 78 COCO categories); taken from
            ``classnames`` when those are given.
        classnames: the training classes in class-index order (saved with the model, so its
            class predictions can be named).
        dim: the width of every level after the encoder (UFO's 512).
        depth: layers of each group transformer (UFO's 4).
        heads: attention heads (UFO's 4).
        mlp_dim: the transformers' hidden width; ``None`` keeps UFO's ratio to ``dim``,
            :math:`\mathrm{round}(782 \cdot \mathrm{dim} / 512)` (UFO's 782 at 512).
        neighbours: ``k`` of the intra-MLP (UFO's 4).
        gram_channels: the channels of the image-level and group-level Gram matrices of the
            class branch (UFO's 64 and 32).
        image_size: the square side the model was trained at, or ``None`` (saved with the
            model; ``cosegkit evaluate``, ``segment`` and ``export`` resize to it).
        set_size: the group size it was trained with, or ``None`` (saved with the model).

    Example:
        >>> import torch
        >>> from cosegkit.models import UFO
        >>> model = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=6, dim=32, mlp_dim=48)
        >>> out = model(torch.rand(2, 3, 3, 64, 96))  # 2 groups of 3 images, 64 x 96
        >>> out.masks.shape, out.class_logits.shape
        (torch.Size([2, 3, 1, 64, 96]), torch.Size([2, 6]))
    """

    def __init__(
        self,
        *,
        encoder_name: str = "vgg16_bn",
        encoder_weights: str | os.PathLike[str] | None = "imagenet",
        num_classes: int = 78,
        classnames: Sequence[str] | None = None,
        dim: int = 512,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int | None = None,
        neighbours: int = 4,
        gram_channels: Sequence[int] = (64, 32),
        image_size: int | None = None,
        set_size: int | None = None,
    ) -> None:
        super().__init__()
        if classnames is not None:
            classnames = [str(c) for c in classnames]
            if not classnames:
                raise CosegValueError("classnames is empty; pass the training classes, or None with num_classes")
            num_classes = len(classnames)
        sizes = {"num_classes": num_classes, "dim": dim, "depth": depth, "heads": heads, "neighbours": neighbours}
        for name, value in {**sizes, "mlp_dim": 1 if mlp_dim is None else mlp_dim}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CosegValueError(f"{name} must be a positive integer, got {value!r}")
        if mlp_dim is None:
            mlp_dim = max(1, round(UFO_MLP_RATIO * dim))
        gram_channels = tuple(int(c) for c in gram_channels)
        if len(gram_channels) != 2 or min(gram_channels) < 1:
            raise CosegValueError(f"gram_channels must be two positive integers, got {gram_channels!r}")
        self.encoder = build_encoder(encoder_name, encoder_weights, 5)
        self.vgg_taps = type(self.encoder).__name__ == "VGGEncoder"
        channels = list(self.encoder.out_channels)
        taps = [1, 2, 3, 5] if self.vgg_taps else [2, 3, 4, 5]
        mean, std = _encoder_stats(encoder_name)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[i], dim, 3, padding=1), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU())
            for i in taps
        )
        self.deep_transformer = GroupTransformer(dim, depth, heads, mlp_dim)  # stride 32: UFO's transformer_1
        self.mid_transformer = GroupTransformer(dim, depth, heads, mlp_dim)  # stride 16: UFO's transformer_2
        self.intra_mlp = nn.Conv2d(dim, dim, 1)
        c1, c2 = gram_channels
        self.image_gram = nn.Conv2d(dim, c1, 1)
        self.group_gram = nn.Conv2d(c1 * c1, c2, 1)
        self.class_embed = nn.Linear(c2 * c2, dim)
        self.classifier = nn.Linear(dim, num_classes)
        self.coarse_fusion = TopDownFusion(dim, upsample=True)  # one block for strides 32, 16 and 8, as in UFO
        self.fine_fusion = TopDownFusion(dim, upsample=False)
        self.mask_conv = nn.Conv2d(dim, 2, 3, padding=1)
        self.mask_up = nn.ConvTranspose2d(2, 2, 8, stride=4, padding=2)
        self.neighbours = neighbours
        self.config: dict[str, Any] = {
            "encoder_name": encoder_name,
            "num_classes": num_classes,
            "classnames": classnames,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_dim": mlp_dim,
            "neighbours": neighbours,
            "gram_channels": list(gram_channels),
        }
        self.image_size = image_size
        self.set_size = set_size

    # ------------------------------------------------------------------ how it was trained
    image_size = LCCo.image_size  # the same stored settings, read and checked the same way
    set_size = LCCo.set_size

    @property
    def class_oracle(self) -> bool:
        """Never true for UFO, which chooses its group's class itself (unlike :attr:`LCCo.class_oracle <cosegkit.LCCo.class_oracle>`)."""
        return False

    @property
    def classnames(self) -> list[str] | None:
        """The training classes in class-index order, when known."""
        return self.config.get("classnames")

    # ------------------------------------------------------------------ forward
    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.encoder(x)
        if self.vgg_taps:  # smp gives VGG's stages before their pooling; UFO taps pool2..pool5
            return [F.max_pool2d(feats[1], 2), F.max_pool2d(feats[2], 2), F.max_pool2d(feats[3], 2), feats[5]]
        return list(feats[2:6])

    def _spatial_modulation(self, deep: torch.Tensor) -> torch.Tensor:
        """The intra-MLP: ``(B*N, C, h, w)`` stride-32 features to a sigmoid map of the same shape."""
        h, w = deep.shape[-2:]
        points = rearrange(deep, "bn c h w -> bn (h w) c")
        idx = nearest_neighbours(points, self.neighbours)  # (bn, hw, k)
        projected = rearrange(self.intra_mlp(deep), "bn c h w -> bn (h w) c")  # a 1x1 conv commutes with the gather
        gathered = torch.gather(
            projected.unsqueeze(1).expand(-1, idx.shape[1], -1, -1),
            2,
            idx.unsqueeze(-1).expand(-1, -1, -1, projected.shape[-1]),
        )  # (bn, hw, k, c)
        pooled = rearrange(gathered.amax(dim=2), "bn (h w) c -> bn c h w", h=h, w=w)
        return torch.sigmoid(pooled + deep)

    def _group_vector(self, deep: torch.Tensor, b: int, valid: torch.Tensor | None) -> torch.Tensor:
        """The group's class vector ``(B, dim)`` from second-order statistics of the stride-32 level.

        UFO reinterprets the group's concatenated image Gram vectors, ``(N * g,)``, as a
        ``(g, N)`` matrix (``x.view(bs, g, -1, 1)``); so does this, over the valid images of
        each group in their order.
        """
        x = F.relu(self.image_gram(deep)).flatten(2)  # (bn, c1, hw)
        grams = (x @ x.transpose(1, 2)).flatten(1)  # (bn, g)
        g = grams.shape[1]
        weight, bias = self.group_gram.weight.flatten(1), self.group_gram.bias
        if valid is None:
            columns = [grams.reshape(b, g, -1)]  # each group's memory as UFO's view reads it
        else:
            per_image = rearrange(grams, "(b n) g -> b n g", b=b)
            columns = [per_image[i][valid[i]].reshape(g, -1)[None] for i in range(b)]
        vectors = []
        for col in columns:  # (groups, g, n): the whole batch at once, or one group at a time
            y = F.relu(torch.einsum("og,bgn->bon", weight, col) + bias[:, None])
            vectors.append((y @ y.transpose(1, 2)).flatten(1))
        return F.relu(self.class_embed(torch.cat(vectors)))

    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None, **unused: Any) -> UFOOutput:
        """Co-segment batches of image groups.

        Args:
            images: ``(B, N, 3, H, W)`` RGB in [0, 1], any ``N >= 1`` and any size (padded to a
                multiple of 32 inside, the masks cropped back).
            valid: optional boolean ``(B, N)``; False marks padding. Padded images are left out
                of the group transformers and the class branch, so the valid images' outputs
                are those of the group without them (in eval mode); their own masks are
                meaningless.
            **unused: keyword arguments of :meth:`LCCo.forward <cosegkit.LCCo.forward>` that do
                not apply to UFO (``masks``, ``class_targets``) are accepted and ignored, so
                the two models train in one loop.

        Returns:
            :class:`~cosegkit.models.ufo_output.UFOOutput`.

        Shape:
            - images: :math:`(B, N, 3, H, W)`
            - masks: :math:`(B, N, 1, H, W)`; class_logits: :math:`(B, C)`
        """
        if unused.get("common_class") is not None:
            raise CosegValueError(
                "common_class gives LCCo's CLIP regularization each set's class; UFO has no such module "
                "(a class oracle is an LCCo setting: cosegkit train --class-oracle without --model ufo)"
            )
        check_image_set(images)
        b, n, _, h, w = images.shape
        checked = resolve_valid(valid, b, n, images.device)
        group_valid = None if valid is None else checked
        dtype = self.classifier.weight.dtype
        x = rearrange(images.to(dtype), "b n c h w -> (b n) c h w")
        x = (x - self.pixel_mean.to(dtype)) / self.pixel_std.to(dtype)
        ph, pw = (-h) % UFO_STRIDE, (-w) % UFO_STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        levels = [lateral(f) for lateral, f in zip(self.lateral, self._levels(x), strict=True)]

        def as_set(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t, "(b n) c h w -> b n c h w", b=b)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t, "b n c h w -> (b n) c h w")

        deep_t = flat(self.deep_transformer(as_set(levels[3]), group_valid))
        mid_t = flat(self.mid_transformer(as_set(levels[2]), group_valid))
        spatial = self._spatial_modulation(levels[3])
        vector = self._group_vector(levels[3], b, group_valid)  # (b, dim)
        class_logits = self.classifier(vector)
        semantic = vector.repeat_interleave(n, dim=0)[:, :, None, None]  # UFO's fuse_hsp

        def modulate(f: torch.Tensor) -> torch.Tensor:
            spa = F.interpolate(spatial, size=f.shape[-2:], mode="bilinear", align_corners=False)
            return f * semantic + spa

        y = self.coarse_fusion(modulate(deep_t))
        y = self.coarse_fusion(modulate(mid_t), y)
        y = self.coarse_fusion(modulate(levels[1]), y)
        y = self.fine_fusion(modulate(levels[0]), y)
        two = self.mask_up(self.mask_conv(y))  # UFO's softmax over these two: channel 0 is the object
        logits = (two[:, :1] - two[:, 1:])[..., :h, :w]
        return UFOOutput(
            masks=as_set(logits),
            class_logits=class_logits,
            class_probs=class_logits.sigmoid(),
            valid=checked,
        )

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None, **unused: Any) -> torch.Tensor:
        """Mask probabilities ``(B, N, 1, H, W)``; switches the model to eval mode.

        Example:
            >>> import torch
            >>> from cosegkit.models import UFO
            >>> model = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=3, dim=16, mlp_dim=24)
            >>> probs = model.predict(torch.rand(1, 2, 3, 64, 64))
            >>> probs.shape, bool(((probs >= 0) & (probs <= 1)).all())
            (torch.Size([1, 2, 1, 64, 64]), True)
        """
        if self.training:
            self.eval()
        return self(images, valid, **unused).masks.sigmoid()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train: all of them."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_kwargs: Any,
    ) -> Path:
        """Write ``config.json`` (with ``"architecture": "ufo"``) and ``model.safetensors``.

        :meth:`from_pretrained` and :func:`cosegkit.load_model` rebuild the model from
        the folder without downloading anything. ``push_to_hub``, ``repo_id`` and
        ``push_kwargs`` upload it to the hub as :meth:`LCCo.save_pretrained
        <cosegkit.LCCo.save_pretrained>` does.
        """
        from cosegkit.hub import save_then_push

        return save_then_push(
            lambda: write_model_folder(directory, ARCHITECTURE, dict(self.config), self),
            push_to_hub=push_to_hub,
            repo_id=repo_id,
            **push_kwargs,
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> UFO:
        """Load a model written by :meth:`save_pretrained`: a folder, a run folder, or a Hugging Face hub id.

        Raises:
            WeightsUnavailableError: missing or foreign files, a folder holding another
                architecture, or a hub id that cannot be fetched.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from cosegkit.models import UFO
            >>> model = UFO(encoder_name="resnet18", encoder_weights=None, classnames=["cat", "dog"], dim=16,
            ...             mlp_dim=24, image_size=64, set_size=3)
            >>> folder = model.save_pretrained(Path(tempfile.mkdtemp()) / "ufo")
            >>> loaded = UFO.from_pretrained(folder)
            >>> loaded.classnames, loaded.image_size, loaded.set_size
            (['cat', 'dog'], 64, 3)
        """
        path = Path(name_or_path)
        path = model_folder(path) if path.is_dir() else LCCo._download(str(name_or_path))
        kwargs = read_ufo_config(path)
        if not (path / WEIGHTS_NAME).is_file():
            raise WeightsUnavailableError(f"{str(path)!r} lacks {WEIGHTS_NAME}")
        model = cls(encoder_weights=None, **kwargs)
        model.load_state_dict(_read_safetensors(path / WEIGHTS_NAME))
        return model.to(map_location)

    @classmethod
    def from_ufo_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        classnames: Sequence[str] | None = None,
        image_size: int | None = 224,
        set_size: int | None = 5,
    ) -> UFO:
        """Load a checkpoint in the format UFO's ``train.py`` saves (e.g. the released ``image_best.pth``).

        The file is a ``torch.save``-d state dict of UFO's ``Model`` (VGG16-BN), with or without
        the ``module.`` prefix of ``DataParallel``; it is read with ``weights_only=True``
        (no code is unpickled). UFO's three ``concat_r`` blocks are one module in their code,
        so the checkpoint holds the same tensors under ``concat4``, ``concat3`` and ``concat2``;
        a file where they differ is refused.

        Args:
            path: the ``.pth`` file.
            classnames: names of the checkpoint's classes (UFO's 78 COCO categories), if known.
            image_size: the size UFO trains and tests at (224).
            set_size: UFO's group size (5).

        Raises:
            WeightsUnavailableError: the file cannot be read, or is not a UFO image-model state dict.
        """
        state = read_checkpoint_file(path, "UFO", "pass the state dict file UFO's train.py saves (e.g. image_best.pth)")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise WeightsUnavailableError(
                f"{os.fspath(path)!r} does not hold a state dict (got {type(state).__name__})"
            )
        converted = ufo_state_dict_to_cosegkit(state, source=os.fspath(path))
        num_classes = int(converted["classifier.weight"].shape[0])
        dim = int(converted["classifier.weight"].shape[1])
        depth = 1 + max(int(k.split(".")[2]) for k in converted if k.startswith("deep_transformer.layers."))
        mlp_dim = int(converted["deep_transformer.layers.0.ff.0.weight"].shape[0])
        c1 = int(converted["image_gram.weight"].shape[0])
        c2 = int(converted["group_gram.weight"].shape[0])
        if classnames is not None and len(classnames) != num_classes:
            raise CosegValueError(
                f"the checkpoint's classification head has {num_classes} classes, got {len(classnames)} classnames"
            )
        model = cls(
            encoder_name="vgg16_bn",
            encoder_weights=None,
            num_classes=num_classes,
            classnames=classnames,
            dim=dim,
            depth=depth,
            mlp_dim=mlp_dim,
            gram_channels=(c1, c2),
            image_size=image_size,
            set_size=set_size,
        )
        missing, unexpected = model.load_state_dict(converted, strict=False)
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"{os.fspath(path)!r} is not a UFO image-model checkpoint with VGG16-BN: missing {sorted(missing)[:4]}, "
                f"unexpected {sorted(unexpected)[:4]}"
            )
        return model


# UFO's module names (model_image.py / transformer.py) to this file's
_RENAMES: list[tuple[str, str]] = [
    (r"^base\.(\d+)\.", r"encoder.features.\1."),
    (r"^incr_channel1\.(\d+)\.", r"lateral.\1.0."),
    (r"^incr_channel2\.(\d+)\.", r"lateral.\1.1."),
    (r"^transformer_1\.", "deep_transformer."),
    (r"^transformer_2\.", "mid_transformer."),
    (r"\.layers\.(\d+)\.0\.fn\.norm\.", r".layers.\1.attn_norm."),
    (r"\.layers\.(\d+)\.0\.fn\.fn\.to_qkv\.", r".layers.\1.qkv."),
    (r"\.layers\.(\d+)\.0\.fn\.fn\.to_out\.0\.", r".layers.\1.proj."),
    (r"\.layers\.(\d+)\.1\.fn\.norm\.", r".layers.\1.ff_norm."),
    (r"\.layers\.(\d+)\.1\.fn\.fn\.net\.0\.", r".layers.\1.ff.0."),
    (r"\.layers\.(\d+)\.1\.fn\.fn\.net\.3\.", r".layers.\1.ff.2."),
    (r"^intra\.0\.", "intra_mlp."),
    (r"^sp1\.0\.", "image_gram."),
    (r"^sp2\.0\.", "group_gram."),
    (r"^cls_m\.0\.", "class_embed."),
    (r"^cls\.0\.", "classifier."),
    (r"^concat4\.0\.", "coarse_fusion.reduce."),
    (r"^concat4\.2\.", "coarse_fusion.mix."),
    (r"^concat4\.4\.", "coarse_fusion.up."),
    (r"^concat1\.0\.", "fine_fusion.reduce."),
    (r"^concat1\.2\.", "fine_fusion.mix."),
    (r"^mask\.0\.", "mask_conv."),
    (r"^mask\.1\.", "mask_up."),
]


def ufo_state_dict_to_cosegkit(
    state: dict[str, torch.Tensor], *, source: str = "the state dict"
) -> dict[str, torch.Tensor]:
    """Rename a state dict of UFO's image ``Model`` to :class:`UFO`'s names.

    The ``module.`` prefix of ``DataParallel`` is dropped; ``concat3`` and ``concat2`` must
    equal ``concat4`` (one module in UFO's code) and are then dropped.

    Raises:
        WeightsUnavailableError: a key of no UFO module, or ``concat2``/``concat3`` unlike ``concat4``.

    Example:
        >>> import torch
        >>> from cosegkit.models.ufo import ufo_state_dict_to_cosegkit
        >>> w = torch.zeros(512, 512, 1, 1)
        >>> state = {"module.concat4.0.weight": w, "module.concat3.0.weight": w, "module.concat2.0.weight": w,
        ...          "module.transformer_1.layers.0.0.fn.fn.to_qkv.weight": torch.zeros(1536, 512)}
        >>> sorted(ufo_state_dict_to_cosegkit(state))
        ['coarse_fusion.reduce.weight', 'deep_transformer.layers.0.qkv.weight']
    """
    plain = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in plain.items():
        shared = re.match(r"^concat([23])\.(.*)$", key)
        if shared:
            twin = plain.get(f"concat4.{shared.group(2)}")
            if twin is None or twin.shape != value.shape or not torch.equal(twin, value):
                raise WeightsUnavailableError(
                    f"{source}: {key!r} differs from concat4.{shared.group(2)}; UFO's concat2, concat3 and concat4 "
                    f"are one module, so this is not a checkpoint of UFO's image model"
                )
            continue
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        if new == key:
            raise WeightsUnavailableError(
                f"{source}: {key!r} belongs to no module of UFO's image model (model_image.py); pass the state "
                f"dict UFO's train.py saves for the image model (the video models are not supported)"
            )
        out[new] = value
    return out


def read_ufo_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The constructor arguments stored in a UFO model folder's ``config.json``.

    Raises:
        WeightsUnavailableError: no readable config, or one of another architecture.
    """
    config_file = Path(path) / CONFIG_NAME
    try:
        data = json.loads(config_file.read_text())
        kwargs = dict(data["model"])
    except FileNotFoundError as err:
        raise WeightsUnavailableError(f"{str(Path(path))!r} is not a UFO model folder: no {CONFIG_NAME} in it") from err
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise WeightsUnavailableError(f"{str(config_file)!r} is not a valid model config: {err}") from err
    if data.get("architecture", "lcco") != ARCHITECTURE:
        raise WeightsUnavailableError(
            f"{str(Path(path))!r} holds an {data.get('architecture', 'lcco')!r} model, not a UFO; load it with "
            f"cosegkit.load_model"
        )
    return kwargs
