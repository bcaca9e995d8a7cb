"""LCCo's losses: each a pure function plus a thin module."""

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

__all__ = [
    "ClassificationLoss",
    "IoULoss",
    "LCCoLoss",
    "LCCoLossOutput",
    "SuperpixelLoss",
    "classification_loss",
    "coarse_segmentation_loss",
    "downsample_mask",
    "iou_loss",
    "masked_images",
    "set_class_targets",
    "soft_iou_per_image",
    "superpixel_grid",
    "superpixel_loss",
    "targets_from_embeddings",
]
