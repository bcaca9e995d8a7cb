"""What every dataset reader produces: named groups of image and mask files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cosegkit.errors import CosegValueError

__all__ = ["DataError", "Group"]


class DataError(CosegValueError):
    """A dataset file or folder is missing, unreadable or inconsistent; the message names it."""


@dataclass(frozen=True)
class Group:
    """One co-segmentation group: images that share an object, with their masks.

    Attributes:
        name: the group's name (a class or folder name, e.g. ``"Aero"``).
        images: image files, in a stable (sorted) order.
        masks: the mask file of each image, in the same order (``None`` for unlabelled data).
        class_name: the common object's class in words, when the layout tells it (e.g.
            ``"airplane"``), else the group name.
        meta: reader-specific extras (e.g. the COCO category id and per-image annotation ids).
    """

    name: str
    images: tuple[Path, ...]
    masks: tuple[Path, ...] | None
    class_name: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.masks is not None and len(self.masks) != len(self.images):
            raise DataError(f"group {self.name!r} has {len(self.images)} images but {len(self.masks)} masks")
        if not self.class_name:
            object.__setattr__(self, "class_name", self.name)

    def __len__(self) -> int:
        return len(self.images)
