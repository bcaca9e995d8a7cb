"""The typed output of :class:`~cosegkit.LCCo`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cosegkit.layers.grouping import SetGroupingOutput

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
        common_class: :math:`i^*`, ``(B,)`` long, eq. (6): an index into the vocabulary; the
            class that regularised the features, so the given one when the forward pass was
            given ``common_class`` (the class oracle; the module's own choice is then
            ``class_probs.argmax(-1)``).
        topk_indices: the distilled prompts, ``(B, K)`` long; needs the interaction module.
        similarity: CLIP image-text similarity :math:`S`, ``(B, N, P)``.
        class_targets: the ground-truth common class of each set, ``(B,)`` long, computed
            from the masked images when ``masks`` were given to the forward pass.
        valid: boolean ``(B, N)``: which images are real (not padding).
        grouping: the :class:`~cosegkit.SetGroupingOutput` of the grouping layer
            (assignment, group embeddings, coverage); needs ``use_grouping=True``.

    Example:
        >>> import dataclasses
        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()  # a tiny random CLIP, "coseg-test-tiny", for offline examples
        >>> from cosegkit import LCCo
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None,
        ...              clip_model="coseg-test-tiny", clip_pretrained=None, classnames=["cat", "dog", "car", "bird"],
        ...              decoder_channels=(32, 32, 16, 16), heads=4, clip_heads=4, top_k=3)
        >>> images = torch.rand(2, 3, 3, 32, 48)  # B = 2 sets of N = 3 images, 32 x 48
        >>> masks = (torch.rand(2, 3, 1, 32, 48) > 0.5).float()
        >>> with torch.no_grad():
        ...     out = model(images, masks=masks)  # masks fill class_targets
        >>> for field in dataclasses.fields(out):
        ...     value = getattr(out, field.name)
        ...     if value is not None:  # grouping: the model has no grouping layer
        ...         print(field.name, tuple(value.shape), value.dtype)
        masks (2, 3, 1, 32, 48) torch.float32
        valid (2, 3) torch.bool
        coarse_masks (2, 3, 1, 4, 4) torch.float32
        class_probs (2, 4) torch.float32
        common_class (2,) torch.int64
        topk_indices (2, 3) torch.int64
        similarity (2, 3, 4) torch.float32
        class_targets (2,) torch.int64
        >>> out.coarse_masks.shape[-2:]  # the tiny CLIP's patch grid: 32 px input, patch 8
        torch.Size([4, 4])
    """

    masks: torch.Tensor
    valid: torch.Tensor
    coarse_masks: torch.Tensor | None = None
    class_probs: torch.Tensor | None = None
    common_class: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    similarity: torch.Tensor | None = None
    class_targets: torch.Tensor | None = None
    grouping: SetGroupingOutput | None = None
