"""The total training loss of LCCo, eq. (9)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cosegkit.errors import CosegValueError
from cosegkit.layers.grouping import group_mask_logits
from cosegkit.losses.classification import classification_loss
from cosegkit.losses.iou import coarse_segmentation_loss, iou_loss
from cosegkit.losses.superpixel import superpixel_loss
from cosegkit.models.output import LCCoOutput

__all__ = ["LCCoLoss", "LCCoLossOutput"]


class LCCoLossOutput(NamedTuple):
    """The total loss and its terms (terms of switched-off modules are ``None``).

    Attributes:
        total: :math:`\\mathcal L_{total}` of eq. (9), a scalar tensor; call ``.backward()`` on it.
        iou: :math:`\\mathcal L_{iou}` of eq. (10), a scalar tensor.
        coarse: :math:`\\mathcal L_{cs}` of eq. (11), a scalar tensor, or ``None`` without coarse masks.
        classification: :math:`\\mathcal L_c` of eq. (12), a scalar tensor, or ``None`` without
            class probabilities.
        superpixel: the grouping layer's superpixel loss
            (:func:`~cosegkit.losses.superpixel_loss`), or ``None`` when it is off.
        grouping: the grouping mask loss :math:`\\mathcal L_{gm}`, or ``None`` without a
            grouping layer (or with ``grouping_weight=0``).
        distortion: the grouping's k-means distortion (its batch mean), or ``None`` when
            ``distortion_weight=0``.

    Example:
        >>> import torch
        >>> from cosegkit.losses import LCCoLoss, LCCoLossOutput
        >>> from cosegkit.models.output import LCCoOutput
        >>> output = LCCoOutput(  # a model without the regularization module: no class_probs
        ...     masks=torch.zeros(1, 2, 1, 8, 8),  # mask logits (B, N, 1, H, W)
        ...     valid=torch.ones(1, 2, dtype=torch.bool),
        ...     coarse_masks=torch.zeros(1, 2, 1, 2, 2),  # coarse logits (B, N, 1, h, w)
        ... )
        >>> losses = LCCoLoss()(output, torch.ones(1, 2, 1, 8, 8))
        >>> isinstance(losses, LCCoLossOutput), losses._fields
        (True, ('total', 'iou', 'coarse', 'classification', 'superpixel', 'grouping', 'distortion'))
        >>> losses.total.shape, round(losses.iou.item(), 4), round(losses.coarse.item(), 4), losses.classification
        (torch.Size([]), 0.5, 0.5, None)
        >>> round(losses.total.item(), 4)  # iou + lambda1 * coarse
        1.0
    """

    total: torch.Tensor
    iou: torch.Tensor
    coarse: torch.Tensor | None
    classification: torch.Tensor | None
    superpixel: torch.Tensor | None = None
    grouping: torch.Tensor | None = None
    distortion: torch.Tensor | None = None


class LCCoLoss(nn.Module):
    r"""Eq. (9): :math:`\mathcal L_{total} = \mathcal L_{iou} + \lambda_1 \mathcal L_{cs} + \lambda_2 \mathcal L_c`.

    - :math:`\mathcal L_{iou}`: :func:`~cosegkit.losses.iou_loss` of the masks, eq. (10);
    - :math:`\mathcal L_{cs}`: :func:`~cosegkit.losses.coarse_segmentation_loss` of the
      coarse masks against the area-downsampled ground truth, eq. (11), when the model has
      the coarse decoder;
    - :math:`\mathcal L_c`: :func:`~cosegkit.losses.classification_loss` of the class
      probabilities against the set's ground-truth class, eq. (12), when the model has the
      regularization module. The class comes from ``output.class_targets`` (fill it by
      passing ``masks`` to the model's forward) or from ``class_targets``.

    The paper does not give :math:`\lambda_1, \lambda_2`; both default to 1.

    With a grouping layer (``use_grouping=True``) the total gains
    :math:`\lambda_g \mathcal L_{gm}`, the grouping mask loss: eq. (11)'s IoU loss of the
    grouping's own mask logits (:func:`~cosegkit.layers.group_mask_logits`, each token the
    score of its group) against the ground truth downsampled to the token grid, so that the
    group scored highest is the co-segment (an extension, see the equations page); and with
    ``superpixel_weight`` :math:`\lambda_3 > 0`,
    the total gains :math:`\lambda_3 \mathcal L_{sp}`, SegCLIP's superpixel loss
    (:func:`~cosegkit.losses.superpixel_loss`) of the grouping's assignment against the
    superpixels of the images (``superpixels=``, from the data pipeline:
    :mod:`cosegkit.data.superpixels`). An extension: off (0) by default.

    Args:
        lambda1: weight of the coarse segmentation loss.
        lambda2: weight of the classification loss.
        superpixel_weight: weight :math:`\lambda_3` of the superpixel loss.
        grouping_weight: weight :math:`\lambda_g` of the grouping mask loss.
        distortion_weight: weight :math:`\lambda_d` of the grouping's k-means distortion
            (``distortion`` of :class:`~cosegkit.SetGroupingOutput`).

    Example:
        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()  # a tiny random CLIP, "coseg-test-tiny", for offline examples
        >>> from cosegkit import LCCo, LCCoLoss
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None,
        ...              clip_model="coseg-test-tiny", clip_pretrained=None,
        ...              decoder_channels=(32, 32, 16, 16), heads=4, clip_heads=4)
        >>> images, masks = torch.rand(2, 3, 3, 64, 64), (torch.rand(2, 3, 1, 64, 64) > 0.5).float()
        >>> losses = LCCoLoss()(model(images, masks=masks), masks)
        >>> losses.total.backward()
        >>> sorted(k for k, v in losses._asdict().items() if v is not None)
        ['classification', 'coarse', 'iou', 'total']
    """

    def __init__(
        self,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        superpixel_weight: float = 0.0,
        grouping_weight: float = 1.0,
        distortion_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if min(lambda1, lambda2, superpixel_weight, grouping_weight, distortion_weight) < 0:
            raise CosegValueError(
                f"loss weights must be non-negative, got lambda1={lambda1}, lambda2={lambda2}, "
                f"superpixel_weight={superpixel_weight}, grouping_weight={grouping_weight}, "
                f"distortion_weight={distortion_weight}"
            )
        self.distortion_weight = distortion_weight
        self.grouping_weight = grouping_weight
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.superpixel_weight = superpixel_weight

    def forward(
        self,
        output: LCCoOutput,
        masks: torch.Tensor,
        class_targets: torch.Tensor | None = None,
        *,
        weight: torch.Tensor | None = None,
        superpixels: torch.Tensor | None = None,
    ) -> LCCoLossOutput:
        """Total loss of one batch.

        Args:
            output: the model's :class:`~cosegkit.models.output.LCCoOutput`.
            masks: ground-truth masks ``(B, N, 1, H, W)`` in [0, 1].
            class_targets: optional ``(B,)`` ground-truth classes, overriding
                ``output.class_targets``.
            weight: optional pixel weights ``(B, N, 1, H, W)`` in [0, 1] for the IoU terms
                (eq. 10 and 11): a pixel of weight 0 is ignored (see
                :func:`~cosegkit.losses.iou_loss` and
                :func:`~cosegkit.losses.coarse_segmentation_loss`). Training on pseudo masks
                passes their confidence; ``None`` (or all ones) is the plain loss. The
                classification term does not use it.
            superpixels: ``(B, N, H, W)`` integer superpixel labels of the images, for the
                superpixel loss (needed when ``superpixel_weight > 0`` and the model has a
                grouping layer).

        Returns:
            An :class:`LCCoLossOutput`; call ``.total.backward()``.
        """
        valid = output.valid
        l_iou = iou_loss(output.masks, masks, valid, weight=weight)
        total = l_iou
        l_cs = l_c = None
        if output.coarse_masks is not None:
            l_cs = coarse_segmentation_loss(output.coarse_masks, masks, valid, weight=weight)
            total = total + self.lambda1 * l_cs
        if output.class_probs is not None:
            target = class_targets if class_targets is not None else output.class_targets
            if target is None:
                raise CosegValueError(
                    "the model has the CLIP regularization module, but no ground-truth class was "
                    "given: call the model with model(images, masks=masks) so it computes "
                    "output.class_targets, or pass class_targets= to the loss"
                )
            l_c = classification_loss(output.class_probs, target)
            total = total + self.lambda2 * l_c
        l_sp = l_gm = None
        if self.grouping_weight > 0 and output.grouping is not None:
            logits = group_mask_logits(output.grouping.assignment, output.grouping.scores)
            l_gm = coarse_segmentation_loss(logits, masks, valid, weight=weight)
            total = total + self.grouping_weight * l_gm
        if self.superpixel_weight > 0 and output.grouping is not None:
            if superpixels is None:
                raise CosegValueError(
                    f"superpixel_weight={self.superpixel_weight} needs the images' superpixels: pass "
                    f"superpixels= (B, N, H, W) labels, e.g. from cosegkit.data.superpixels.SuperpixelSets"
                )
            l_sp = superpixel_loss(output.grouping.assignment, superpixels, valid)
            total = total + self.superpixel_weight * l_sp
        l_d = None
        if self.distortion_weight > 0 and output.grouping is not None:
            l_d = output.grouping.distortion.mean()
            total = total + self.distortion_weight * l_d
        return LCCoLossOutput(total, l_iou, l_cs, l_c, l_sp, l_gm, l_d)

    def extra_repr(self) -> str:
        return (
            f"lambda1={self.lambda1}, lambda2={self.lambda2}, superpixel_weight={self.superpixel_weight}, "
            f"grouping_weight={self.grouping_weight}, distortion_weight={self.distortion_weight}"
        )
