r"""Zero-shot co-segmentation: a frozen CLIP, the set's own class, softmax-GradCAM and CAA.

1. **The set's common class.** Every image is scored against the foreground prompts with
   CLIP's own image embedding at the CLIP's own input size (as :class:`~cosegkit.clip.FrozenClip`
   encodes images for LCCo; a second, plain pass when the CAM runs at another size); the
   scores are summed over the set's valid images (:math:`\sigma` of LCCo's text
   distillation) and the argmax is the common class, unless a class name is given.
2. **Softmax-GradCAM** (CLIP-ES). Each image's patch-averaged embedding is scored against the
   bank ``[foreground classes; background words]`` and a softmax taken over the bank; the
   gradient of the common class's probability at the last block's first LayerNorm gives
   GradCAM's channel weights; CAM = ReLU(weighted sum of channels), min-max scaled twice as
   CLIP-ES's GradCAM scales it (``cam_scaling``). One backward pass serves every image of
   every set in the batch (the images are independent in the forward pass, so the gradient
   of the summed probabilities is each image's own).
3. **CAA** (CLIP-ES): CLIP's own attention of the last blocks, normalised, restricted to the
   boxes of the CAM's confident regions, applied to the CAM (:func:`~cosegkit.zeroshot.caa.caa_refine`).

Axis legend: ``b`` sets, ``n`` images per set, ``p`` foreground prompts, ``q`` the softmax
bank (foreground and background), ``c`` channels, ``h w`` patch grid, ``H W`` image.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from cosegkit import _names
from cosegkit._validation import check_image_set, resolve_valid
from cosegkit.errors import CosegValueError
from cosegkit.layers._blocks import masked_sum
from cosegkit.zeroshot.caa import caa_refine, check_box_precision, minmax_scale
from cosegkit.zeroshot.prompts import BACKGROUND_WORDS, CLIP_ES_TEMPLATES, DEFAULT_SYNONYMS, encode_prompts
from cosegkit.zeroshot.towers import check_pos_interpolation, check_tower, resnet_pass, vit_pass

__all__ = ["CAM_SCALINGS", "ZeroShotCoseg", "ZeroShotOutput"]

#: How often the GradCAM map is min-max scaled (:func:`~cosegkit.zeroshot.minmax_scale`):
#: ``"twice"``, as CLIP-ES's GradCAM does (pytorch-grad-cam's ``scale_cam_image`` once per
#: target layer and once more after averaging the layers), or ``"once"``.
CAM_SCALINGS: tuple[str, ...] = _names.CAM_SCALINGS


@dataclass
class ZeroShotOutput:
    """What :class:`ZeroShotCoseg` returns.

    Attributes:
        probs: ``(B, N, 1, H, W)`` in [0, 1]: the refined CAM of the set's common class at the
            input's resolution; 0 on padded images.
        common_class: ``(B,)`` long, an index into ``ZeroShotCoseg.classnames``.
        class_scores: ``(B, P)``: :math:`\\sigma`, each foreground prompt's cosine similarity
            summed over the set's valid images.
        cams: ``(B, N, h, w)`` the softmax-GradCAM before refinement, min-max scaled (twice by
            default, as CLIP-ES, see ``cam_scaling``), on the patch grid.
        refined: ``(B, N, h, w)`` the CAM after CAA (equal to ``cams`` when CAA is off or the
            tower has no attention), on the patch grid.
        valid: ``(B, N)`` boolean.

    Example:
        From a tiny random ViT CLIP (patch 8: 40 px images give a 5 x 5 grid), the second set padded:

        >>> import dataclasses
        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot import ZeroShotCoseg
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "car"])
        >>> zs = ZeroShotCoseg(clip, background=["grass", "sky"])
        >>> valid = torch.tensor([[True, True, True], [True, True, False]])
        >>> out = zs(torch.rand(2, 3, 3, 40, 40), valid)
        >>> for field in dataclasses.fields(out):
        ...     value = getattr(out, field.name)
        ...     print(field.name, tuple(value.shape), value.dtype)
        probs (2, 3, 1, 40, 40) torch.float32
        common_class (2,) torch.int64
        class_scores (2, 3) torch.float32
        cams (2, 3, 5, 5) torch.float32
        refined (2, 3, 5, 5) torch.float32
        valid (2, 3) torch.bool
        >>> torch.equal(out.common_class, out.class_scores.argmax(dim=-1)), bool((out.probs[1, 2] == 0).all())
        (True, True)
    """

    probs: torch.Tensor
    common_class: torch.Tensor
    class_scores: torch.Tensor
    cams: torch.Tensor
    refined: torch.Tensor
    valid: torch.Tensor


def _near(name: str, names: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f"near matches: {', '.join(map(repr, near))}" if near else f"the vocabulary starts {list(names)[:8]}"


class ZeroShotCoseg(nn.Module):
    """Co-segment image sets with a frozen CLIP and no training (CLIP-ES, with the set naming its class).

    Args:
        clip: a :class:`~cosegkit.clip.FrozenClip` with an open_clip VisionTransformer (GradCAM
            and CAA) or ModifiedResNet (GradCAM on ``layer4``, no CAA) image tower.
        classnames: the foreground vocabulary (default: the CLIP's own class names).
        templates: prompt templates (default: CLIP-ES's ``"a clean origami {}."``).
        synonyms: class name to synonyms fused into one prompt (default:
            :data:`~cosegkit.zeroshot.prompts.DEFAULT_SYNONYMS`; ``{}`` for none).
        background: background words of the softmax bank (default: CLIP-ES's 25,
            :data:`~cosegkit.zeroshot.prompts.BACKGROUND_WORDS`); a word that is also a
            foreground class is left out of the background.
        class_name: segment this class in every set instead of the set's argmax.
        image_size: the CLIP input size: ``None`` keeps the input's size, each side rounded up
            to a multiple of the patch (CLIP-ES), an int or ``(H, W)`` resizes to it (rounded
            the same way). A ResNet tower takes the CLIP's own size when ``None``, and an
            explicit size rounded up to a multiple of 32 (its stride), its attention pool's
            positional embedding resized to the larger grid as a ViT's is.
        attention_blocks: CAA averages the attention of this many last blocks (CLIP-ES: 8).
        box_threshold: CAA's box threshold, a fraction of the CAM's maximum (CLIP-ES: 0.4).
        box_precision: ``"uint8"`` (CLIP-ES's ``scoremap2bbox``: the box threshold applied to
            the CAM's 8-bit copy) or ``"float"`` (to the CAM itself)
            (:func:`~cosegkit.zeroshot.box_mask`, :data:`~cosegkit.zeroshot.BOX_PRECISIONS`).
        refine: apply CAA (ViT towers only).
        score: which image embedding the softmax scores: ``"patch_mean"``, the mean of the
            last block's patch tokens (CLIP-ES), or ``"pooled"``, the tower's own embedding
            (the class token for open_clip's ViTs).
        cam_scaling: ``"twice"`` (CLIP-ES's GradCAM: ``(x - min) / (max + 1e-7)``, then the
            same again on the result) or ``"once"``. The second pass lifts to 1 the peak of a
            weak CAM, one whose spread (max - min) is not large against the 1e-7
            (:data:`~cosegkit.zeroshot.CAM_SCALINGS`).
        pos_interpolation: how a positional embedding (a ViT's, or a ResNet's attention
            pool's) is resized to a grid other than its own: ``"bilinear"`` (CLIP-ES) or ``"bicubic"``
            (:func:`~cosegkit.zeroshot.towers.interpolate_positional_embedding`).

    Example:
        A tiny random CLIP (its masks mean nothing, their form does):

        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot import ZeroShotCoseg
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "car"])
        >>> zs = ZeroShotCoseg(clip, background=["grass", "sky"])
        >>> out = zs(torch.rand(2, 3, 3, 40, 40))  # 2 sets of 3 images
        >>> out.probs.shape, out.common_class.shape, out.class_scores.shape
        (torch.Size([2, 3, 1, 40, 40]), torch.Size([2]), torch.Size([2, 3]))
        >>> bool(((out.probs >= 0) & (out.probs <= 1)).all())
        True
        >>> zs(torch.rand(1, 2, 3, 40, 40), class_name="dog").common_class.tolist()
        [1]
    """

    def __init__(
        self,
        clip,
        *,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = CLIP_ES_TEMPLATES,
        synonyms: Mapping[str, Sequence[str]] | None = None,
        background: Sequence[str] = BACKGROUND_WORDS,
        class_name: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        attention_blocks: int = 8,
        box_threshold: float = 0.4,
        refine: bool = True,
        score: str = "patch_mean",
        cam_scaling: str = "twice",
        pos_interpolation: str = "bilinear",
        box_precision: str = "uint8",
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tower = check_tower(clip.model.visual)
        for what, names in (("classnames", classnames), ("templates", templates)):
            if isinstance(names, str):  # tuple() would split it into characters
                raise CosegValueError(
                    f"{what} must be a list of strings, not the single string {names!r}; pass [{names!r}]"
                )
        self.classnames: tuple[str, ...] = tuple(clip.classnames if classnames is None else classnames)
        if not self.classnames:
            raise CosegValueError(
                "the zero-shot vocabulary is empty (classnames=[]); give at least one class name, "
                "or classnames=None for the CLIP's own vocabulary"
            )
        if isinstance(background, str):
            raise CosegValueError(f"background must be a list of words, not the single string {background!r}")
        background = tuple(background)
        if not background:
            raise CosegValueError(
                "the background list is empty; softmax-GradCAM needs background words to push the "
                "background down (the default is CLIP-ES's 25, cosegkit.zeroshot.BACKGROUND_WORDS)"
            )
        fg = set(self.classnames)
        self.background: tuple[str, ...] = tuple(w for w in background if w not in fg)
        if not self.background:
            raise CosegValueError(
                f"every background word is also a foreground class: {list(background)[:8]}; give background "
                f"words that are not class names (the default is CLIP-ES's 25, cosegkit.zeroshot.BACKGROUND_WORDS)"
            )
        self.templates = tuple(templates)
        self.synonyms = dict(DEFAULT_SYNONYMS if synonyms is None else synonyms)
        if isinstance(attention_blocks, bool) or not isinstance(attention_blocks, int) or attention_blocks < 1:
            raise CosegValueError(f"attention_blocks must be >= 1, got {attention_blocks}")
        if not 0 <= box_threshold < 1:
            raise CosegValueError(f"box_threshold must be in [0, 1), got {box_threshold}")
        self.attention_blocks = int(attention_blocks)
        self.box_threshold = float(box_threshold)
        self.refine = bool(refine)
        if score not in ("patch_mean", "pooled"):
            raise CosegValueError(f"score must be 'patch_mean' (CLIP-ES) or 'pooled', got {score!r}")
        self.score = score
        if cam_scaling not in CAM_SCALINGS:
            raise CosegValueError(f"cam_scaling must be 'twice' (CLIP-ES) or 'once', got {cam_scaling!r}")
        self.cam_scaling = cam_scaling
        self.pos_interpolation = check_pos_interpolation(pos_interpolation)
        self.box_precision = check_box_precision(box_precision)
        self.image_size = image_size
        fg_bank = encode_prompts(clip, self.classnames, self.templates, self.synonyms)  # checks the names
        bg_bank = encode_prompts(clip, self.background, self.templates, self.synonyms)
        self.register_buffer("foreground_bank", fg_bank, persistent=False)
        self.register_buffer("background_bank", bg_bank, persistent=False)
        if class_name is not None:
            self.class_index(class_name)  # an unknown name fails here, not at the first call
        self.class_name = class_name

    # ------------------------------------------------------------------ helpers
    def class_index(self, name: str) -> int:
        """The index of ``name`` in ``classnames``; an unknown name's error lists near matches."""
        if name not in self.classnames:
            raise CosegValueError(
                f"unknown class name {name!r}: it is not in the zero-shot vocabulary of "
                f"{len(self.classnames)} names; {_near(name, self.classnames)}"
            )
        return self.classnames.index(name)

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """The CLIP input size for images of ``h x w``."""
        visual = self.clip.model.visual
        if self.tower == "resnet" and self.image_size is None:
            return tuple(self.clip.image_size)
        if self.image_size is None:
            size = (h, w)
        elif isinstance(self.image_size, int):
            size = (self.image_size, self.image_size)
        else:
            size = tuple(self.image_size)
        ph, pw = (32, 32) if self.tower == "resnet" else visual.patch_size  # a ResNet's grid has stride 32
        return (max(1, math.ceil(size[0] / ph)) * ph, max(1, math.ceil(size[1] / pw)) * pw)

    def set_scores(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\sigma` ``(B, P)``: each foreground prompt's cosine similarity with CLIP's own
        embedding of each image (at the CLIP's own input size, as LCCo's distillation sees it),
        summed over the valid images. Its argmax is the set's class; one plain CLIP pass, no
        gradients.

        Example:
            >>> import torch
            >>> from cosegkit.testing import register_tiny_clips
            >>> from cosegkit.clip import FrozenClip
            >>> from cosegkit.zeroshot import ZeroShotCoseg
            >>> _ = register_tiny_clips()
            >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "car"])
            >>> zs = ZeroShotCoseg(clip, background=["grass", "sky"])
            >>> images = torch.rand(2, 3, 3, 32, 32)
            >>> torch.equal(zs.set_scores(images).argmax(-1), zs(images).common_class)
            True
        """
        check_image_set(images)
        valid = resolve_valid(valid, images.shape[0], images.shape[1], images.device)
        return self._sigma(self.clip.encode_checked(images), valid)

    def _sigma(self, embeddings: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """:math:`\\sigma` from L2-normalised image embeddings ``(B, N, D)``."""
        return masked_sum(embeddings.float() @ self.foreground_bank.float().T, valid)

    # ------------------------------------------------------------------ forward
    def forward(
        self, images: torch.Tensor, valid: torch.Tensor | None = None, *, class_name: str | None = None
    ) -> ZeroShotOutput:
        """Co-segment ``images`` ``(B, N, 3, H, W)`` in [0, 1]; ``valid`` ``(B, N)`` marks real images.

        Gradients are taken inside (the CLIP stays frozen); it runs under ``torch.no_grad()``
        and ``torch.inference_mode()`` callers alike.
        """
        check_image_set(images)
        b, n, _, height, width = images.shape
        valid = resolve_valid(valid, b, n, images.device)
        name = class_name if class_name is not None else self.class_name
        with torch.inference_mode(False), torch.enable_grad():
            # clones are normal tensors even when the caller runs in inference mode
            x = self.clip.preprocess(images.clone(), self.input_size(height, width))
            valid = valid.clone()
            visual = self.clip.model.visual
            if self.tower == "vit":
                tp = vit_pass(visual, x, self.attention_blocks, pos_interpolation=self.pos_interpolation)
            else:
                tp = resnet_pass(visual, x, self.pos_interpolation)
            fg = self.foreground_bank.to(tp.pooled.dtype)
            bank = torch.cat([fg, self.background_bank.to(fg.dtype)])  # (q, d)
            if tuple(x.shape[-2:]) == tuple(self.clip.image_size):
                pooled = rearrange(F.normalize(tp.pooled.detach().float(), dim=-1), "(b n) d -> b n d", b=b)
            else:  # the class as LCCo's distillation sees it: the CLIP at its own input size
                pooled = self.clip.encode_checked(images.clone())
            scores = self._sigma(pooled, valid)  # (b, p)
            if name is not None:
                common = torch.full((b,), self.class_index(name), dtype=torch.long, device=images.device)
            else:
                common = scores.argmax(dim=-1)
            scale = self.clip.model.logit_scale.exp().float() if hasattr(self.clip.model, "logit_scale") else 100.0
            scored = tp.patch_mean if self.score == "patch_mean" else tp.pooled
            emb = rearrange(F.normalize(scored.float(), dim=-1), "(b n) d -> b n d", b=b)
            probs = (scale * emb @ bank.float().T).softmax(dim=-1)  # (b, n, q)
            target = probs.gather(-1, common.view(b, 1, 1).expand(b, n, 1))[..., 0]
            (grad,) = torch.autograd.grad((target * valid).sum(), tp.leaf)
        act, grad = tp.as_grid(tp.leaf.detach()).float(), tp.as_grid(grad).float()
        weights = reduce(grad, "bn c h w -> bn c 1 1", "mean")
        cam = minmax_scale(F.relu((weights * act).sum(dim=1)))  # (bn, h, w)
        if self.cam_scaling == "twice":  # CLIP-ES's GradCAM scales again after averaging its target layers
            cam = minmax_scale(cam)
        refined = cam
        if self.refine and tp.attention is not None:
            refined = caa_refine(cam, tp.attention, self.box_threshold, self.box_precision)
        keep = rearrange(valid, "b n -> (b n) 1 1").to(cam.dtype)
        cam, refined = cam * keep, refined * keep
        full = F.interpolate(refined[:, None], size=(height, width), mode="bilinear", align_corners=False)
        full = full.clamp(0, 1)
        return ZeroShotOutput(
            probs=rearrange(full, "(b n) 1 h w -> b n 1 h w", b=b).to(images.dtype),
            common_class=common,
            class_scores=scores.detach(),
            cams=rearrange(cam, "(b n) h w -> b n h w", b=b),
            refined=rearrange(refined, "(b n) h w -> b n h w", b=b),
            valid=valid,
        )

    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mask probabilities ``(B, N, 1, H, W)`` in [0, 1], as :meth:`LCCo.predict <cosegkit.LCCo.predict>`."""
        return self(images, valid).probs

    def extra_repr(self) -> str:
        return (
            f"tower={self.tower}, classes={len(self.classnames)}, background={len(self.background)}, "
            f"templates={len(self.templates)}, attention_blocks={self.attention_blocks}, "
            f"box_threshold={self.box_threshold}, refine={self.refine}, cam_scaling={self.cam_scaling}, "
            f"pos_interpolation={self.pos_interpolation}, box_precision={self.box_precision}"
        )
