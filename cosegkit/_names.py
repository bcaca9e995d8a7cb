"""The names the command line offers as choices, in a module that imports nothing heavy.

``cosegkit --help`` builds every subcommand's parser from these, so it answers without
importing torch. The modules that implement each choice import their tuple from here, and a
test holds each tuple equal to what its module implements (the readers, for instance).
"""

from __future__ import annotations

READER_NAMES: tuple[str, ...] = (
    "pascal_voc",
    "icoseg",
    "msrc",
    "internet",
    "processed",
    "coco",
    "voc_segmentation",
    "folder",
)
"""Every dataset layout a reader reads (the keys of :data:`cosegkit.data.readers.READERS`)."""

GENERATED_DATASETS: tuple[str, ...] = ("synthetic", "composite")
DATASETS: tuple[str, ...] = (*GENERATED_DATASETS, *READER_NAMES)
BOX_PRECISIONS: tuple[str, ...] = ("uint8", "float")
CAM_SCALINGS: tuple[str, ...] = ("twice", "once")
POS_INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic")
