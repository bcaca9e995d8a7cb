"""cosegkit: image co-segmentation with LCCo (Lending CLIP to Co-Segmentation).

Tensor conventions: an image-set batch is ``(B, N, 3, H, W)``, float RGB in [0, 1]; feature
sets are ``(B, N, C, h, w)``; per-image vectors ``(B, N, D)``; the CLIP text bank ``(P, D)``;
masks ``(B, N, 1, H, W)`` logits at input resolution; an optional boolean ``valid`` of shape
``(B, N)`` marks padding in batches of sets of different sizes.

The names below are imported on first use (:pep:`562`), so ``import cosegkit`` and
``cosegkit --help`` do not load torch; ``from cosegkit import LCCo`` loads what ``LCCo`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:  # what static tools and IDEs read; at run time each name is imported on first use
    from cosegkit.clip import (
        DEFAULT_TEMPLATES,
        DEFAULT_VOCABULARY,
        FrozenClip,
    )
    from cosegkit.errors import (
        CosegError,
        CosegShapeError,
        CosegValueError,
        WeightsUnavailableError,
    )
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
    from cosegkit.metrics import (
        CosegJaccard,
        CosegMetrics,
        CosegPrecision,
        precision_jaccard,
        reduce_scores,
    )
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
    from cosegkit.zeroshot import (
        ZeroShotCoseg,
        ZeroShotOutput,
    )

_LAZY: dict[str, str] = {
    "DEFAULT_TEMPLATES": "cosegkit.clip",
    "DEFAULT_VOCABULARY": "cosegkit.clip",
    "FrozenClip": "cosegkit.clip",
    "CosegError": "cosegkit.errors",
    "CosegShapeError": "cosegkit.errors",
    "CosegValueError": "cosegkit.errors",
    "WeightsUnavailableError": "cosegkit.errors",
    "ClipInteraction": "cosegkit.layers",
    "ClipInteractionOutput": "cosegkit.layers",
    "ClipRegularization": "cosegkit.layers",
    "ClipRegularizationOutput": "cosegkit.layers",
    "CoarseMaskDecoder": "cosegkit.layers",
    "ImageSetCorrespondence": "cosegkit.layers",
    "SetGrouping": "cosegkit.layers",
    "SetGroupingOutput": "cosegkit.layers",
    "ClassificationLoss": "cosegkit.losses",
    "IoULoss": "cosegkit.losses",
    "LCCoLoss": "cosegkit.losses",
    "LCCoLossOutput": "cosegkit.losses",
    "SuperpixelLoss": "cosegkit.losses",
    "UFOLoss": "cosegkit.losses",
    "UFOLossOutput": "cosegkit.losses",
    "classification_loss": "cosegkit.losses",
    "coarse_segmentation_loss": "cosegkit.losses",
    "iou_loss": "cosegkit.losses",
    "set_class_targets": "cosegkit.losses",
    "superpixel_loss": "cosegkit.losses",
    "CosegJaccard": "cosegkit.metrics",
    "CosegMetrics": "cosegkit.metrics",
    "CosegPrecision": "cosegkit.metrics",
    "precision_jaccard": "cosegkit.metrics",
    "reduce_scores": "cosegkit.metrics",
    "GroupingReadout": "cosegkit.models",
    "LCCo": "cosegkit.models",
    "LCCoOutput": "cosegkit.models",
    "SetAwareNetwork": "cosegkit.models",
    "SetAwareOutput": "cosegkit.models",
    "UFO": "cosegkit.models",
    "UFOOutput": "cosegkit.models",
    "load_model": "cosegkit.models",
    "ZeroShotCoseg": "cosegkit.zeroshot",
    "ZeroShotOutput": "cosegkit.zeroshot",
}
"""Each public name and the module that defines it."""

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


_SUBMODULES: frozenset[str] = frozenset(
    ("clip", "data", "demo", "diagnostics", "engine", "errors", "export", "layers", "losses", "metrics", "models")
    + ("testing", "zeroshot")
)
"""The subpackages and modules reachable as attributes (``cosegkit.engine.train``) after ``import cosegkit``."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name in _SUBMODULES:
            return importlib.import_module(f"cosegkit.{name}")
        raise AttributeError(f"module 'cosegkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
