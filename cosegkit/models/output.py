"""The typed output of :class:`~cosegkit.LCCo`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LCCoOutput"]


@dataclass
class LCCoOutput:
    """What :meth:`LCCo.forward <cosegkit.LCCo.forward>` returns.

    Fields of switched-off modules are ``None``.

    Attributes:
        masks: mask logits :math:`\\hat M_i`, ``(B, N, 1, H, W)`` at input resolution.
        coarse_masks: coarse mask logits :math:`\\hat M^c_i` of eq. (11) on the CLIP patch
            grid, ``(B, N, 1, h, w)``; needs the CLIP interaction module.
        class_probs: :math:`v`, ``(B, P)``, eq. (7); needs the CLIP regularization module.
        common_class: :math:`i^*`, ``(B,)`` long, eq. (6): an index into the vocabulary.
        topk_indices: the distilled prompts, ``(B, K)`` long; needs the interaction module.
        similarity: CLIP image-text similarity :math:`S`, ``(B, N, P)``.
        class_targets: the ground-truth common class of each set, ``(B,)`` long, computed
            from the masked images when ``masks`` were given to the forward pass.
        valid: boolean ``(B, N)``: which images are real (not padding).
    """

    masks: torch.Tensor
    valid: torch.Tensor
    coarse_masks: torch.Tensor | None = None
    class_probs: torch.Tensor | None = None
    common_class: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    similarity: torch.Tensor | None = None
    class_targets: torch.Tensor | None = None
