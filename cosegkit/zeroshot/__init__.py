"""Zero-shot co-segmentation with a frozen CLIP (CLIP-ES's softmax-GradCAM and CAA).

Needs only a :class:`~cosegkit.clip.FrozenClip` and tensors: no training, no masks.
"""

from cosegkit.zeroshot.caa import BOX_PRECISIONS, affinity, box_mask, caa_refine, connected_components, minmax_scale
from cosegkit.zeroshot.coseg import CAM_SCALINGS, ZeroShotCoseg, ZeroShotOutput
from cosegkit.zeroshot.groups import GroupMasks, segment_group
from cosegkit.zeroshot.prompts import (
    BACKGROUND_WORDS,
    CLIP_ES_TEMPLATES,
    DEFAULT_SYNONYMS,
    encode_prompts,
    prompt_texts,
)

__all__ = [
    "BACKGROUND_WORDS",
    "BOX_PRECISIONS",
    "CAM_SCALINGS",
    "CLIP_ES_TEMPLATES",
    "DEFAULT_SYNONYMS",
    "GroupMasks",
    "ZeroShotCoseg",
    "ZeroShotOutput",
    "affinity",
    "box_mask",
    "caa_refine",
    "connected_components",
    "encode_prompts",
    "minmax_scale",
    "prompt_texts",
    "segment_group",
]
