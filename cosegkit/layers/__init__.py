"""The set-aware layers of LCCo, each usable on its own with plain tensors."""

from cosegkit.layers.coarse_decoder import CoarseMaskDecoder
from cosegkit.layers.correspondence import ImageSetCorrespondence, partner_index
from cosegkit.layers.interaction import ClipInteraction, ClipInteractionOutput, clip_similarity, distill_text
from cosegkit.layers.regularization import ClipRegularization, ClipRegularizationOutput

__all__ = [
    "ClipInteraction",
    "ClipInteractionOutput",
    "ClipRegularization",
    "ClipRegularizationOutput",
    "CoarseMaskDecoder",
    "ImageSetCorrespondence",
    "clip_similarity",
    "distill_text",
    "partner_index",
]
