"""Co-segmentation metrics: precision P and Jaccard index J under the SSNM/UFO protocol.

A pure function does the work (:func:`precision_jaccard`, :func:`reduce_scores`); the
torchmetrics classes accumulate it over batches and processes.
"""

from cosegkit.metrics.functional import (
    PRESETS,
    ThresholdPreset,
    get_preset,
    precision_jaccard,
    reduce_scores,
    thresholds,
)
from cosegkit.metrics.modules import CosegJaccard, CosegMetrics, CosegPrecision

__all__ = [
    "PRESETS",
    "CosegJaccard",
    "CosegMetrics",
    "CosegPrecision",
    "ThresholdPreset",
    "get_preset",
    "precision_jaccard",
    "reduce_scores",
    "thresholds",
]
