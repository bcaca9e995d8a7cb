r"""Zero-shot co-segmentation with SegCLIP: the groups of a grouping ViT, read by the set's class text.

1. **The set's common class.** Every image's embedding (SegCLIP's: the maximum over its group
   tokens) is scored against the class prompts; the cosine similarities are summed over the
   set's valid images (as :class:`~cosegkit.zeroshot.ZeroShotCoseg` does) and the argmax is the
   common class, unless a class name is given.
2. **The groups.** Each image's patches are assigned to ``G`` groups (``grouping="image"``,
   SegCLIP's own), or the patches of the whole set to one set of ``G`` groups
   (``grouping="set"``: shared centres, as :class:`~cosegkit.SetGrouping` does).
3. **SegCLIP's read-out** (``ViTSegInference.encode_decode``). Each group's affinity to every
   class: a softmax over the vocabulary of ``logit_scale * cos(group, text)``, restricted to the
   ``top_k`` classes of the image embedding (plus the set's class), times the unrestricted
   softmax. The soft assignment is resized to the image (bilinear); each pixel takes its
   argmax group (``readout="hard"``, SegCLIP's) or all groups by their share
   (``readout="soft"``), and its probability is that group's affinity to the set's class.

Axis legend: ``b`` sets, ``n`` images per set, ``g`` groups, ``p`` classes (prompts),
``d`` joint embedding, ``h w`` patch grid, ``H W`` image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import check_image_set, resolve_valid
from cosegkit.errors import CosegValueError
from cosegkit.layers._blocks import masked_sum
from cosegkit.models.segclip import SEGCLIP_MEAN, SEGCLIP_STD, SegClip

__all__ = [
    "SEGCLIP_GROUPINGS",
    "SEGCLIP_READOUTS",
    "SEGCLIP_TEMPLATES",
    "SegClipCoseg",
    "SegClipCosegOutput",
    "group_affinity",
]

SEGCLIP_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
"""SegCLIP's segmentation prompt template (its ``"simple"`` template set)."""
SEGCLIP_GROUPINGS: tuple[str, ...] = ("image", "set")
"""``"image"``: each image grouped alone (SegCLIP); ``"set"``: one grouping over the set's images."""
SEGCLIP_READOUTS: tuple[str, ...] = ("hard", "soft")
"""``"hard"``: each pixel's argmax group (SegCLIP); ``"soft"``: every group by its soft share."""


@dataclass
class SegClipCosegOutput:
    """What :class:`SegClipCoseg` returns.

    Attributes:
        probs: ``(B, N, 1, H, W)`` in [0, 1]: each pixel's group's affinity to the set's class;
            0 on padded images.
        common_class: ``(B,)`` long, an index into ``SegClipCoseg.classnames``.
        class_scores: ``(B, P)``: each class's cosine similarity with the image embeddings,
            summed over the set's valid images.
        assignment: ``(B, N, G, h, w)``: the soft assignment of the patches to the groups.
        affinity: ``(B, N, G)``: each group's affinity to the set's class (with
            ``grouping="set"`` the same for every image of a set).
        valid: ``(B, N)`` boolean.

    Example:
        See :class:`SegClipCoseg` for one from a model; its fields:

        >>> import dataclasses
        >>> from cosegkit.zeroshot import SegClipCosegOutput
        >>> [f.name for f in dataclasses.fields(SegClipCosegOutput)]
        ['probs', 'common_class', 'class_scores', 'assignment', 'affinity', 'valid']
    """

    probs: torch.Tensor
    common_class: torch.Tensor
    class_scores: torch.Tensor
    assignment: torch.Tensor
    affinity: torch.Tensor
    valid: torch.Tensor


def group_affinity(
    groups: torch.Tensor,
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    top_k: int | None = 5,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""SegCLIP's affinity of every group to every class, ``(..., G, P)``.

    .. math::
        S = \min(e^{s}, 100)\,\hat E_g \hat T^\top,\quad
        A = \mathrm{softmax}_P(S \text{ outside the top-}k \text{ classes of the image} \to -\infty)
        \odot \mathrm{softmax}_P(S)

    with :math:`\hat E_g` the normalised group tokens, :math:`\hat T` the normalised class
    embeddings, and the top-:math:`k` taken from the image embedding's own softmax.

    Args:
        groups: ``(..., G, D)`` group tokens in the joint space.
        image: ``(..., D)`` the image (or set) embedding.
        text: ``(P, D)`` normalised class embeddings.
        logit_scale: the model's log logit scale :math:`s`.
        top_k: classes kept per image (SegCLIP: 5); ``None`` keeps all.
        keep: ``(...)`` long, a class kept whatever its rank (the set's class).

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot.segclip import group_affinity
        >>> text = torch.eye(3)
        >>> groups = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])  # a group near class 0, one near class 2
        >>> a = group_affinity(groups, torch.tensor([[1.0, 0.0, 0.0]]), text, 0.0, top_k=1)
        >>> a.argmax(-1).tolist(), bool((a[..., 1:] == 0).all())  # only class 0 survives the top-1 mask
        ([[0, 0]], True)
    """
    scale = torch.as_tensor(logit_scale, dtype=groups.dtype, device=groups.device).exp().clamp(max=100)
    scores = scale * F.normalize(groups, dim=-1) @ text.T  # (..., g, p)
    pre = scores.softmax(dim=-1)
    p = text.shape[0]
    if top_k is None or top_k >= p:
        return pre * pre
    ranks = (scale * F.normalize(image, dim=-1) @ text.T).softmax(dim=-1)  # (..., p)
    allowed = torch.zeros_like(ranks, dtype=torch.bool).scatter_(-1, ranks.topk(top_k, dim=-1).indices, True)
    if keep is not None:
        allowed.scatter_(-1, keep.unsqueeze(-1), True)
    masked = scores.masked_fill(~allowed.unsqueeze(-2), float("-inf"))
    return masked.softmax(dim=-1) * pre


class SegClipCoseg(nn.Module):
    """Co-segment image sets with a SegCLIP model and no training: its groups, read by the set's class.

    Args:
        model: a :class:`~cosegkit.models.segclip.SegClip` (e.g. :meth:`SegClip.from_segclip_checkpoint
            <cosegkit.models.segclip.SegClip.from_segclip_checkpoint>` of ``segclip.bin``); it is
            put in eval mode and frozen (``requires_grad_(False)``), as a zero-shot model is used.
        classnames: the vocabulary (class names).
        templates: prompt templates (default SegCLIP's ``"a photo of a {}."``); a class's
            embedding is the mean of its templates' embeddings, then normalised (SegCLIP's order).
        class_name: segment this class in every set instead of the set's argmax.
        image_size: the model's input size: ``None`` for its own (``model.image_size``), an
            int for a square, rounded up to a multiple of the patch; the masks come back at
            the input's size.
        grouping: ``"image"`` (SegCLIP) or ``"set"`` (:data:`SEGCLIP_GROUPINGS`).
        readout: ``"hard"`` (SegCLIP) or ``"soft"`` (:data:`SEGCLIP_READOUTS`).
        top_k: classes of the image embedding a group may take (SegCLIP: 5; the set's class is
            always allowed); ``None`` for all.

    Example:
        A tiny random SegCLIP (its masks mean nothing, their form does):

        >>> import torch
        >>> from cosegkit.models import SegClip, SegClipConfig
        >>> from cosegkit.zeroshot import SegClipCoseg
        >>> config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=2, first_stage_layer=1,
        ...                        num_groups=4, context_length=16, text_width=32, text_layers=1, head_width=16,
        ...                        mae_decoder=False)
        >>> zs = SegClipCoseg(SegClip(config), ["cat", "dog", "car"])
        >>> out = zs(torch.rand(2, 3, 3, 40, 40))  # 2 sets of 3 images
        >>> out.probs.shape, out.assignment.shape, out.common_class.shape
        (torch.Size([2, 3, 1, 40, 40]), torch.Size([2, 3, 4, 4, 4]), torch.Size([2]))
        >>> zs(torch.rand(1, 2, 3, 40, 40), class_name="dog").common_class.tolist()
        [1]
    """

    def __init__(
        self,
        model: SegClip,
        classnames: Sequence[str],
        *,
        templates: Sequence[str] = SEGCLIP_TEMPLATES,
        class_name: str | None = None,
        image_size: int | None = None,
        grouping: str = "image",
        readout: str = "hard",
        top_k: int | None = 5,
    ) -> None:
        super().__init__()
        if not isinstance(model, SegClip):
            raise CosegValueError(
                f"SegClipCoseg needs a cosegkit SegClip model, got {type(model).__name__}; load SegCLIP's "
                f"checkpoint with SegClip.from_segclip_checkpoint('segclip.bin')"
            )
        for what, names in (("classnames", classnames), ("templates", templates)):
            if isinstance(names, str):
                raise CosegValueError(
                    f"{what} must be a list of strings, not the single string {names!r}; pass [{names!r}]"
                )
        self.model = model.eval().requires_grad_(False)
        self.classnames: tuple[str, ...] = tuple(classnames)
        if not self.classnames or not all(isinstance(c, str) and c.strip() for c in self.classnames):
            raise CosegValueError(
                f"the zero-shot vocabulary needs at least one non-empty class name, got {list(classnames)[:8]}"
            )
        self.templates = tuple(templates)
        if not self.templates or not all(isinstance(t, str) and "{}" in t for t in self.templates):
            raise CosegValueError(f"every template needs one '{{}}' for the class name, got {list(templates)}")
        if grouping not in SEGCLIP_GROUPINGS:
            raise CosegValueError(f"grouping must be one of {SEGCLIP_GROUPINGS}, got {grouping!r}")
        if readout not in SEGCLIP_READOUTS:
            raise CosegValueError(f"readout must be one of {SEGCLIP_READOUTS}, got {readout!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise CosegValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
        ):
            raise CosegValueError(f"image_size must be a positive int or None, got {image_size!r}")
        self.grouping, self.readout, self.top_k, self.image_size = grouping, readout, top_k, image_size
        self.register_buffer("text_bank", self._encode_classes(), persistent=False)
        self.register_buffer("mean", torch.tensor(SEGCLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(SEGCLIP_STD).view(1, 3, 1, 1), persistent=False)
        if class_name is not None:
            self.class_index(class_name)
        self.class_name = class_name

    @torch.no_grad()
    def _encode_classes(self) -> torch.Tensor:
        import open_clip

        texts = [t.format(name) for name in self.classnames for t in self.templates]
        tokens = open_clip.tokenize(texts, context_length=self.model.config.context_length)
        device = self.model.logit_scale.device
        emb = rearrange(self.model.encode_text(tokens.to(device)), "(p t) d -> p t d", t=len(self.templates))
        return F.normalize(emb.mean(dim=1), dim=-1)

    def class_index(self, name: str) -> int:
        """The index of ``name`` in ``classnames``."""
        if name not in self.classnames:
            raise CosegValueError(
                f"unknown class name {name!r}: it is not among the {len(self.classnames)} zero-shot class names "
                f"(they start {list(self.classnames)[:8]})"
            )
        return self.classnames.index(name)

    def input_size(self) -> int:
        """The side the images are resized to: ``image_size`` (or the model's), rounded up to a multiple of the patch."""
        size = self.model.image_size if self.image_size is None else self.image_size
        patch = self.model.patch_size
        return max(1, math.ceil(size / patch)) * patch

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(K, 3, H, W)`` in [0, 1] resized (bicubic, antialiased) to :meth:`SegClipCoseg.input_size` and
        normalised with CLIP's statistics, as the model takes them."""
        size = self.input_size()
        x = images.float()
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return ((x - self.mean) / self.std).to(self.model.logit_scale.dtype)

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, valid: torch.Tensor | None = None, *, class_name: str | None = None
    ) -> SegClipCosegOutput:
        """Co-segment ``images`` ``(B, N, 3, H, W)`` in [0, 1]; ``valid`` ``(B, N)`` marks real images."""
        check_image_set(images)
        b, n, _, height, width = images.shape
        valid = resolve_valid(valid, b, n, images.device)
        x = self.normalise(rearrange(images, "b n c h w -> (b n) c h w"))
        if self.grouping == "image":
            per_image, shared = self.model.encode_image(x), None
        else:  # the class from each image's own embedding, as per image; one pass of the first blocks
            per_image, shared = self.model.encode_image_and_set(rearrange(x, "(b n) c h w -> b n c h w", b=b), valid)
        text = self.text_bank.to(per_image.embedding.dtype)
        embeddings = rearrange(F.normalize(per_image.embedding, dim=-1), "(b n) d -> b n d", b=b)
        scores = masked_sum(embeddings.float() @ text.float().T, valid)  # (b, p)
        name = class_name if class_name is not None else self.class_name
        if name is not None:
            common = torch.full((b,), self.class_index(name), dtype=torch.long, device=images.device)
        else:
            common = scores.argmax(dim=-1)
        if shared is None:
            keep = common.repeat_interleave(n)
            aff = group_affinity(
                per_image.groups, per_image.embedding, text, self.model.logit_scale, top_k=self.top_k, keep=keep
            )  # (bn, g, p)
            aff = rearrange(
                aff.gather(-1, keep.view(-1, 1, 1).expand(-1, aff.shape[1], 1))[..., 0], "(b n) g -> b n g", b=b
            )
            soft = rearrange(per_image.soft, "(b n) g h w -> b n g h w", b=b)
        else:
            aff = group_affinity(
                shared.groups, shared.embedding, text, self.model.logit_scale, top_k=self.top_k, keep=common
            )
            aff = aff.gather(-1, common.view(-1, 1, 1).expand(-1, aff.shape[1], 1))[..., 0]  # (b, g)
            aff = aff[:, None].expand(b, n, aff.shape[-1])
            soft = shared.soft
        probs = self._read(soft, aff, (height, width)) * rearrange(valid, "b n -> b n 1 1 1").to(soft.dtype)
        return SegClipCosegOutput(
            probs=probs.clamp(0, 1).to(images.dtype),
            common_class=common,
            class_scores=scores,
            assignment=soft,
            affinity=aff,
            valid=valid,
        )

    def _read(self, soft: torch.Tensor, affinity: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Pixel probabilities ``(B, N, 1, H, W)`` from the soft assignment and the groups' affinities."""
        b = soft.shape[0]
        full = F.interpolate(
            rearrange(soft, "b n g h w -> (b n) g h w").float(), size=size, mode="bilinear", align_corners=False
        )
        if self.readout == "hard":
            full = F.one_hot(full.argmax(dim=1), full.shape[1]).permute(0, 3, 1, 2).to(full.dtype)
        probs = torch.einsum("kghw,kg->khw", full, rearrange(affinity, "b n g -> (b n) g").float())
        return rearrange(probs, "(b n) h w -> b n 1 h w", b=b)

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mask probabilities ``(B, N, 1, H, W)`` in [0, 1]."""
        return self(images, valid).probs

    def extra_repr(self) -> str:
        return (
            f"classes={len(self.classnames)}, templates={len(self.templates)}, grouping={self.grouping}, "
            f"readout={self.readout}, top_k={self.top_k}, image_size={self.input_size()}"
        )
