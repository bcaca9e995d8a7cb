"""The set-aware layers of LCCo, each usable on its own with plain tensors."""

from cosegkit.layers.coarse_decoder import CoarseMaskDecoder
from cosegkit.layers.correspondence import ImageSetCorrespondence, partner_index
from cosegkit.layers.grouping import (
    READOUTS,
    SetGrouping,
    SetGroupingOutput,
    clip_readout,
    coverage_readout,
    group_mask_logits,
    gumbel_assignment,
    readout_masks,
    score_readout,
    set_coverage,
)
from cosegkit.layers.interaction import ClipInteraction, ClipInteractionOutput, clip_similarity, distill_text
from cosegkit.layers.regularization import ClipRegularization, ClipRegularizationOutput

__all__ = [
    "READOUTS",
    "ClipInteraction",
    "ClipInteractionOutput",
    "ClipRegularization",
    "ClipRegularizationOutput",
    "CoarseMaskDecoder",
    "ImageSetCorrespondence",
    "SetGrouping",
    "SetGroupingOutput",
    "clip_readout",
    "clip_similarity",
    "coverage_readout",
    "distill_text",
    "group_mask_logits",
    "gumbel_assignment",
    "partner_index",
    "readout_masks",
    "score_readout",
    "set_coverage",
]
