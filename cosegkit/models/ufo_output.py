"""The typed output of :class:`~cosegkit.models.UFO`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["UFOOutput"]


@dataclass
class UFOOutput:
    """What :meth:`UFO.forward <cosegkit.models.UFO.forward>` returns.

    Attributes:
        masks: mask logits ``(B, N, 1, H, W)`` at input resolution. UFO's mask branch ends in
            a two-channel softmax whose channel 0 is the foreground; the logit is the
            difference of the two channels, so ``masks.sigmoid()`` is UFO's probability.
        class_logits: the group's class logits ``(B, C)`` from UFO's classification head, one
            per class of the training vocabulary; ``class_logits.sigmoid()`` is UFO's
            ``cls_pred``.
        class_probs: ``class_logits.sigmoid()``, ``(B, C)``.
        valid: boolean ``(B, N)``: which images are real (not padding).
    """

    masks: torch.Tensor
    class_logits: torch.Tensor
    class_probs: torch.Tensor
    valid: torch.Tensor
