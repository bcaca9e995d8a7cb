"""What every dataset reader produces: named groups of image and mask files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cosegkit.errors import CosegValueError

__all__ = ["DataError", "Group"]


class DataError(CosegValueError):
    """A dataset file or folder is missing, unreadable or inconsistent; the message names it.

    It is a :class:`~cosegkit.errors.CosegValueError`, so ``except ValueError`` catches it too.

    Example:
        >>> from cosegkit.data.readers import read_pascal_voc
        >>> read_pascal_voc("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cosegkit.data.types.DataError: read_pascal_voc: /no/such/folder/Pascal_10 does not exist; expected ...
            <root>/
                Pascal_10/<Class>/img_XXXX.jpg        images, one folder per class (Aero, Bicycle, ...)
                eval_pascal_10/<Class>/img_XXXX.png   masks of the same names, 0/255
    """


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

    Example:
        >>> from pathlib import Path
        >>> from cosegkit.data.types import Group
        >>> images, masks = (Path("img_1.jpg"), Path("img_2.jpg")), (Path("img_1.png"), Path("img_2.png"))
        >>> group = Group("Aero", images, masks, class_name="airplane")
        >>> group.name, group.class_name, len(group)
        ('Aero', 'airplane', 2)
        >>> Group("my_cats", images, masks=None).class_name  # unlabelled; the class name defaults to the name
        'my_cats'
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
