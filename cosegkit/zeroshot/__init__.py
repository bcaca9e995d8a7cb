"""Zero-shot co-segmentation: a frozen CLIP (CLIP-ES's softmax-GradCAM and CAA) or SegCLIP's groups.

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
from cosegkit.zeroshot.segclip import (
    SEGCLIP_GROUPINGS,
    SEGCLIP_READOUTS,
    SEGCLIP_TEMPLATES,
    SegClipCoseg,
    SegClipCosegOutput,
    group_affinity,
)

__all__ = [
    "BACKGROUND_WORDS",
    "BOX_PRECISIONS",
    "CAM_SCALINGS",
    "CLIP_ES_TEMPLATES",
    "DEFAULT_SYNONYMS",
    "SEGCLIP_GROUPINGS",
    "SEGCLIP_READOUTS",
    "SEGCLIP_TEMPLATES",
    "GroupMasks",
    "SegClipCoseg",
    "SegClipCosegOutput",
    "ZeroShotCoseg",
    "ZeroShotOutput",
    "affinity",
    "box_mask",
    "caa_refine",
    "connected_components",
    "encode_prompts",
    "group_affinity",
    "minmax_scale",
    "prompt_texts",
    "segment_group",
]
