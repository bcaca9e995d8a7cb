"""LCCo's and UFO's losses: each a pure function plus a thin module."""

from cosegkit.losses.classification import (
    ClassificationLoss,
    classification_loss,
    masked_images,
    set_class_targets,
    targets_from_embeddings,
)
from cosegkit.losses.iou import IoULoss, coarse_segmentation_loss, downsample_mask, iou_loss, soft_iou_per_image
from cosegkit.losses.lcco import LCCoLoss, LCCoLossOutput
from cosegkit.losses.superpixel import SuperpixelLoss, superpixel_grid, superpixel_loss
from cosegkit.losses.ufo import (
    UFOLoss,
    UFOLossOutput,
    smooth_l1_mask_loss,
    ufo_classification_loss,
    ufo_iou_loss,
    weighted_bce_loss,
)

__all__ = [
    "ClassificationLoss",
    "IoULoss",
    "LCCoLoss",
    "LCCoLossOutput",
    "SuperpixelLoss",
    "UFOLoss",
    "UFOLossOutput",
    "classification_loss",
    "coarse_segmentation_loss",
    "downsample_mask",
    "iou_loss",
    "masked_images",
    "set_class_targets",
    "smooth_l1_mask_loss",
    "soft_iou_per_image",
    "superpixel_grid",
    "superpixel_loss",
    "targets_from_embeddings",
    "ufo_classification_loss",
    "ufo_iou_loss",
    "weighted_bce_loss",
]
