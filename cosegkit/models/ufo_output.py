"""The typed output of :class:`~cosegkit.UFO`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["UFOOutput"]


@dataclass
class UFOOutput:
    """What :meth:`UFO.forward <cosegkit.UFO.forward>` returns.

    Attributes:
        masks: mask logits ``(B, N, 1, H, W)`` at input resolution. UFO's mask branch ends in
            a two-channel softmax whose channel 0 is the foreground; the logit is the
            difference of the two channels, so ``masks.sigmoid()`` is UFO's probability.
        class_logits: the group's class logits ``(B, C)`` from UFO's classification head, one
            per class of the training vocabulary; ``class_logits.sigmoid()`` is UFO's
            ``cls_pred``.
        class_probs: ``class_logits.sigmoid()``, ``(B, C)``.
        valid: boolean ``(B, N)``: which images are real (not padding).

    Example:
        >>> import torch
        >>> from cosegkit import UFO
        >>> model = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=4, dim=16, mlp_dim=24)
        >>> out = model(torch.rand(2, 3, 3, 64, 64))
        >>> out.masks.shape, out.class_logits.shape, out.valid.shape
        (torch.Size([2, 3, 1, 64, 64]), torch.Size([2, 4]), torch.Size([2, 3]))
    """

    masks: torch.Tensor
    class_logits: torch.Tensor
    class_probs: torch.Tensor
    valid: torch.Tensor
