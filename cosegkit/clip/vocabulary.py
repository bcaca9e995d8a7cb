"""The default prompt vocabulary and templates.

The vocabulary is the set of class names whose CLIP text embeddings form the text bank
:math:`\\mathcal H^{txt}` of LCCo. The paper only asks that it be "complete"; the default here
is COCO's 80 classes plus the classes of the four co-segmentation benchmarks (PASCAL-VOC,
MSRC, Internet, iCoseg) that COCO lacks. Benchmark class names that are synonyms of a COCO
name (``aeroplane`` / ``airplane``, ``motorbike`` / ``motorcycle``...) map to that name
through :data:`BENCHMARK_ALIASES` instead of adding a near-duplicate prompt, which would
split the set-level vote of eq. (6)-(7) between two names for the same thing.
"""

from __future__ import annotations

__all__ = [
    "BENCHMARK_ALIASES",
    "BENCHMARK_CLASSES",
    "COCO_CLASSES",
    "COSEG_EXTRA_CLASSES",
    "DEFAULT_TEMPLATES",
    "DEFAULT_VOCABULARY",
    "vocabulary_index",
]

COCO_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
"""The 80 object categories of COCO, in COCO's order."""

COSEG_EXTRA_CLASSES: tuple[str, ...] = (
    "cheetah",
    "panda",
    "helicopter",
    "hot air balloon",
    "goose",
    "statue",
    "pyramid",
    "stone monument",
    "windmill",
    "monk",
    "gymnast",
    "skater",
)
"""Classes of the co-segmentation benchmarks (mostly iCoseg) that COCO does not have."""

DEFAULT_VOCABULARY: tuple[str, ...] = COCO_CLASSES + COSEG_EXTRA_CLASSES
"""COCO's 80 classes followed by :data:`COSEG_EXTRA_CLASSES` (92 names)."""

BENCHMARK_CLASSES: dict[str, tuple[str, ...]] = {
    "pascal_voc": (
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ),
    "msrc": ("bird", "car", "cat", "cow", "dog", "plane", "sheep"),
    "internet": ("airplane", "car", "horse"),
    "icoseg": (
        "bear",
        "brown bear",
        "cheetah",
        "elephant",
        "helicopter",
        "hot air balloon",
        "panda",
        "goose",
        "kite",
        "statue",
        "pyramid",
        "stone monument",
        "windmill",
        "monk",
        "gymnast",
        "skater",
        "person",
        "airplane",
        "car",
    ),
}
"""Class names of the co-segmentation benchmarks, as their folders or papers name them."""

BENCHMARK_ALIASES: dict[str, str] = {
    "aeroplane": "airplane",
    "aero": "airplane",
    "plane": "airplane",
    "motorbike": "motorcycle",
    "mbike": "motorcycle",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "plant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
    "monitor": "tv",
    "brown bear": "bear",
}
"""Benchmark names that are synonyms of a :data:`DEFAULT_VOCABULARY` entry."""

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
"""The paper's prompt template."""


def vocabulary_index(name: str, vocabulary: tuple[str, ...] | list[str] = DEFAULT_VOCABULARY) -> int:
    """Position of a class name in a vocabulary, resolving benchmark aliases and case.

    Args:
        name: a class name, e.g. a dataset folder name such as ``"Aero"`` or ``"Mbike"``.
        vocabulary: the vocabulary to search.

    Returns:
        The index of the name in ``vocabulary``.

    Raises:
        KeyError: the name is in neither the vocabulary nor the alias table.

    Example:
        >>> from cosegkit.clip import vocabulary_index, DEFAULT_VOCABULARY
        >>> DEFAULT_VOCABULARY[vocabulary_index("Mbike")]
        'motorcycle'
    """
    key = name.strip().lower().replace("_", " ")
    lowered = [v.lower() for v in vocabulary]
    for candidate in (key, BENCHMARK_ALIASES.get(key, key), BENCHMARK_ALIASES.get(key.replace(" ", ""), key)):
        if candidate in lowered:
            return lowered.index(candidate)
    raise KeyError(f"{name!r} is not in the vocabulary of {len(vocabulary)} names nor an alias of one")
