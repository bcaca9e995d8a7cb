"""Co-segmentation masks from an LCCo's grouping layer alone.

Axis legend: b batch of sets, n images per set, g groups, h w token grid, H W image size,
d CLIP width, p prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import check_image_set, resolve_valid
from cosegkit.clip.frozen import FrozenClip
from cosegkit.errors import CosegValueError
from cosegkit.layers._blocks import masked_sum
from cosegkit.layers.grouping import READOUTS, SetGroupingOutput, clip_readout, coverage_readout, score_readout
from cosegkit.layers.interaction import clip_similarity

__all__ = ["GroupingReadout", "GroupingReadoutOutput", "token_masks_to_images"]


def token_masks_to_images(masks: torch.Tensor, size: tuple[int, int], stride: int = 1) -> torch.Tensor:
    """Token-grid masks ``(M, 1, h, w)`` at image size ``size``: bilinear, then cropped.

    The model pads its input to ``stride``, so the token grid covers the padded image: the
    masks are resized to the padded size and the padding cropped off.

    Example:
        >>> import torch
        >>> from cosegkit.models.readout import token_masks_to_images
        >>> token_masks_to_images(torch.rand(3, 1, 2, 2), (60, 64), stride=32).shape  # grid of a 64 x 64 padded input
        torch.Size([3, 1, 60, 64])
    """
    h, w = size
    padded = (h + (-h) % stride, w + (-w) % stride)
    probs = F.interpolate(masks.float(), size=padded, mode="bilinear", align_corners=False)
    return probs[..., :h, :w].clamp(0, 1)


@dataclass
class GroupingReadoutOutput:
    """What :class:`GroupingReadout` returns.

    Attributes:
        probs: ``(B, N, 1, H, W)``: the chosen group's share of every pixel (its assignment,
            resized bilinearly to the images).
        chosen: ``(B,)`` long: the group picked in each set.
        grouping: the grouping layer's output.
        set_class: ``(B,)`` long: the prompt the ``"clip"`` read-out matched; ``None`` for the
            other read-outs.
        valid: ``(B, N)`` boolean.

    Example:
        >>> import torch
        >>> from cosegkit import GroupingReadout, LCCo
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None, decoder_channels=(32, 32, 16, 16),
        ...              use_correspondence=False, use_interaction=False, use_regularization=False,
        ...              use_grouping=True, num_groups=4, heads=4)
        >>> out = GroupingReadout(model, "coverage").eval()(torch.rand(1, 2, 3, 64, 64))
        >>> out.probs.shape, out.chosen.shape, out.grouping.assignment.shape, out.set_class
        (torch.Size([1, 2, 1, 64, 64]), torch.Size([1]), torch.Size([1, 2, 4, 2, 2]), None)
    """

    probs: torch.Tensor
    chosen: torch.Tensor
    grouping: SetGroupingOutput
    valid: torch.Tensor
    set_class: torch.Tensor | None = None


class GroupingReadout(nn.Module):
    r"""Co-segment with the grouping layer of a trained LCCo, ignoring its mask head.

    The model runs as usual (its encoder, the modules before the grouping level and the
    grouping layer itself); the masks are the group that the read-out picks in each set:

    - ``"score"`` (:func:`~cosegkit.layers.score_readout`, the default): the group of highest
      learned score (trained by LCCo's grouping mask loss);
    - ``"coverage"`` (:func:`~cosegkit.layers.coverage_readout`): the group present in the
      most images of the set, the smallest of those tied; needs nothing but the grouping;
    - ``"clip"`` (:func:`~cosegkit.layers.clip_readout`): the group whose CLIP patch tokens
      best match the set's class. The class is the model's own :math:`i^*` when it has the
      regularization module, else the prompt of highest CLIP similarity summed over the set's
      images (eq. 6 without training). Needs a CLIP with dense tokens: the model's, or
      ``clip``.

    :func:`cosegkit.engine.evaluate` scores it like any model.

    Args:
        model: an :class:`~cosegkit.LCCo` built with ``use_grouping=True``.
        method: ``"score"``, ``"coverage"`` or ``"clip"``.
        clip: the CLIP of the ``"clip"`` read-out when the model has none.

    Example:
        >>> import torch
        >>> from cosegkit import GroupingReadout, LCCo
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None, decoder_channels=(32, 32, 16, 16),
        ...              use_correspondence=False, use_interaction=False, use_regularization=False,
        ...              use_grouping=True, num_groups=4, heads=4)
        >>> readout = GroupingReadout(model).eval()
        >>> out = readout(torch.rand(2, 3, 3, 64, 48))
        >>> out.probs.shape, out.chosen.shape, bool(((out.probs >= 0) & (out.probs <= 1)).all())
        (torch.Size([2, 3, 1, 64, 48]), torch.Size([2]), True)
    """

    def __init__(self, model: torch.nn.Module, method: str = "score", *, clip: FrozenClip | None = None) -> None:
        super().__init__()
        if not getattr(model, "use_grouping", False):
            raise CosegValueError(
                "GroupingReadout needs an LCCo with a grouping layer; build it with use_grouping=True"
            )
        if method not in READOUTS:
            raise CosegValueError(f"unknown read-out {method!r}; choose one of {list(READOUTS)}")
        self.clip = clip if clip is not None else getattr(model, "clip", None)
        if method == "clip" and self.clip is None:
            raise CosegValueError(
                "the 'clip' read-out needs a CLIP: this model has none, so pass clip=FrozenClip.from_name(...)"
            )
        self.model, self.method = model, method

    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> GroupingReadoutOutput:
        """Masks ``(B, N, 1, H, W)`` of the chosen groups of ``images`` ``(B, N, 3, H, W)``."""
        check_image_set(images)
        b, n, _, h, w = images.shape
        valid = resolve_valid(valid, b, n, images.device)
        out = self.model(images, valid)
        grouping = out.grouping
        set_class = None
        if self.method == "score":
            masks, chosen = score_readout(grouping.assignment, grouping.scores, valid)
        elif self.method == "coverage":
            masks, chosen = coverage_readout(grouping.assignment, valid)
        else:
            emb, tokens = self.clip.encode_checked(images, dense=True)
            text = self.clip.text_bank.to(emb.dtype)
            if out.common_class is not None:
                set_class = out.common_class
            else:
                set_class = masked_sum(clip_similarity(emb, text), valid).argmax(dim=-1)
            masks, chosen = clip_readout(grouping.assignment, tokens.to(emb.dtype), text[set_class], valid)
        stride = int(getattr(self.model, "output_stride", 1))
        probs = token_masks_to_images(rearrange(masks, "b n 1 h w -> (b n) 1 h w"), (h, w), stride)
        probs = rearrange(probs, "(b n) 1 h w -> b n 1 h w", b=b)
        return GroupingReadoutOutput(probs=probs, chosen=chosen, grouping=grouping, valid=valid, set_class=set_class)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mask probabilities ``(B, N, 1, H, W)``; switches to eval mode."""
        if self.training:
            self.eval()
        return self(images, valid).probs
