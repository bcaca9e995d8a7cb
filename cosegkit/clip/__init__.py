"""Frozen CLIP and the prompt vocabulary."""

from cosegkit.clip.frozen import FrozenClip
from cosegkit.clip.vocabulary import (
    BENCHMARK_ALIASES,
    BENCHMARK_CLASSES,
    COCO_CLASSES,
    COSEG_EXTRA_CLASSES,
    DEFAULT_TEMPLATES,
    DEFAULT_VOCABULARY,
    vocabulary_index,
)

__all__ = [
    "BENCHMARK_ALIASES",
    "BENCHMARK_CLASSES",
    "COCO_CLASSES",
    "COSEG_EXTRA_CLASSES",
    "DEFAULT_TEMPLATES",
    "DEFAULT_VOCABULARY",
    "FrozenClip",
    "vocabulary_index",
]
