"""cosegkit: image co-segmentation with LCCo (Lending CLIP to Co-Segmentation).

Tensor conventions: an image-set batch is ``(B, N, 3, H, W)``, float RGB in [0, 1]; feature
sets are ``(B, N, C, h, w)``; per-image vectors ``(B, N, D)``; the CLIP text bank ``(P, D)``;
masks ``(B, N, 1, H, W)`` logits at input resolution; an optional boolean ``valid`` of shape
``(B, N)`` marks padding in batches of sets of different sizes.
"""

__version__ = "0.1.0.dev0"

from cosegkit.clip import DEFAULT_TEMPLATES, DEFAULT_VOCABULARY, FrozenClip
from cosegkit.errors import CosegError, CosegShapeError, CosegValueError, WeightsUnavailableError
from cosegkit.layers import (
    ClipInteraction,
    ClipInteractionOutput,
    ClipRegularization,
    ClipRegularizationOutput,
    CoarseMaskDecoder,
    ImageSetCorrespondence,
    SetGrouping,
    SetGroupingOutput,
)
from cosegkit.losses import (
    ClassificationLoss,
    IoULoss,
    LCCoLoss,
    LCCoLossOutput,
    SuperpixelLoss,
    UFOLoss,
    UFOLossOutput,
    classification_loss,
    coarse_segmentation_loss,
    iou_loss,
    set_class_targets,
    superpixel_loss,
)
from cosegkit.metrics import CosegJaccard, CosegMetrics, CosegPrecision, precision_jaccard, reduce_scores
from cosegkit.models import (
    UFO,
    GroupingReadout,
    LCCo,
    LCCoOutput,
    SetAwareNetwork,
    SetAwareOutput,
    UFOOutput,
    load_model,
)
from cosegkit.zeroshot import ZeroShotCoseg, ZeroShotOutput

__all__ = [
    "DEFAULT_TEMPLATES",
    "DEFAULT_VOCABULARY",
    "UFO",
    "ClassificationLoss",
    "ClipInteraction",
    "ClipInteractionOutput",
    "ClipRegularization",
    "ClipRegularizationOutput",
    "CoarseMaskDecoder",
    "CosegError",
    "CosegJaccard",
    "CosegMetrics",
    "CosegPrecision",
    "CosegShapeError",
    "CosegValueError",
    "FrozenClip",
    "GroupingReadout",
    "ImageSetCorrespondence",
    "IoULoss",
    "LCCo",
    "LCCoLoss",
    "LCCoLossOutput",
    "LCCoOutput",
    "SetAwareNetwork",
    "SetAwareOutput",
    "SetGrouping",
    "SetGroupingOutput",
    "SuperpixelLoss",
    "UFOLoss",
    "UFOLossOutput",
    "UFOOutput",
    "WeightsUnavailableError",
    "ZeroShotCoseg",
    "ZeroShotOutput",
    "__version__",
    "classification_loss",
    "coarse_segmentation_loss",
    "iou_loss",
    "load_model",
    "precision_jaccard",
    "reduce_scores",
    "set_class_targets",
    "superpixel_loss",
]
