"""Readers for the co-segmentation datasets' folder layouts, one function per layout.

Every reader returns a ``list[Group]`` sorted by group name, each group's files sorted by file
name, images matched to masks by file stem (``img_1001.jpg`` <-> ``img_1001.png``). Nothing is
decoded while reading (except the colour-coded masks of MSRC and VOC, which decide the groups),
so reading is fast; :func:`~cosegkit.data.load_group_item` loads one image and its mask,
whatever layout it came from.

Problems are never skipped silently:

- a missing root folder raises :class:`~cosegkit.data.types.DataError` naming the path and
  showing the expected tree;
- an image without a mask raises ``DataError`` naming it (``missing_masks="skip"`` leaves such
  images out with a warning that names them);
- a group with no images raises ``DataError`` listing the empty groups (``on_empty="warn"``
  leaves them out with a warning that names them);
- a reader that finds no group at all raises ``DataError``.

Class names (:attr:`Group.class_name`) are resolved against
:data:`~cosegkit.clip.DEFAULT_VOCABULARY` through its benchmark aliases (``"Aero"`` ->
``"airplane"``, ``"Mbike"`` -> ``"motorcycle"``); a name it does not know is kept, lower-cased,
with underscores as spaces.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from cosegkit.clip.vocabulary import DEFAULT_VOCABULARY, vocabulary_index
from cosegkit.data.io import _mask_utils, _open, _to_rgb, is_image_file
from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

__all__ = [
    "MSRC_COLOURS",
    "READERS",
    "VOC_CLASSES",
    "get_reader",
    "read_coco",
    "read_folder",
    "read_icoseg",
    "read_internet",
    "read_msrc",
    "read_pascal_voc",
    "read_processed",
    "read_voc_segmentation",
    "voc_colour",
]

_MISSING_MASKS = ("error", "skip")
_ON_EMPTY = ("error", "warn")
_SHOWN = 5  # how many file names an error message lists before "... and N more"


# ---------------------------------------------------------------------------------------------
# shared plumbing


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise CosegValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _listing(paths: Sequence[Path | str]) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN])
    more = len(paths) - _SHOWN
    return shown + (f" ... and {more} more" if more > 0 else "")


def _require_dir(path: Path, reader: str, tree: str) -> None:
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise DataError(f"{reader}: {path} {what}; expected this layout:\n{tree}")


def _subfolders(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted((p for p in path.iterdir() if p.is_file() and is_image_file(p)), key=lambda p: p.name)


def _class_name(name: str) -> str:
    """The vocabulary's word for a folder name, else the name lower-cased with spaces."""
    try:
        return DEFAULT_VOCABULARY[vocabulary_index(name)]
    except KeyError:
        return " ".join(name.replace("_", " ").split()).lower()


def _mask_index(mask_dir: Path) -> dict[str, Path]:
    """Mask files of a folder by stem; two masks of one stem are ambiguous."""
    index: dict[str, Path] = {}
    for path in _image_files(mask_dir):
        if path.stem in index:
            raise DataError(f"two masks with the stem {path.stem!r}: {index[path.stem]} and {path}; keep one")
        index[path.stem] = path
    return index


def _pair(
    images: list[Path],
    mask_dir: Path,
    *,
    group: str | None,
    reader: str,
    missing_masks: str,
    mask_stem: Callable[[str], str] = lambda stem: stem,
    stacklevel: int = 4,
) -> tuple[list[Path], list[Path]]:
    """Match each image to the mask of the same stem in ``mask_dir``."""
    index = _mask_index(mask_dir)
    kept, masks, missing = [], [], []
    for image in images:
        mask = index.get(mask_stem(image.stem))
        if mask is None:
            missing.append(image)
        else:
            kept.append(image)
            masks.append(mask)
    if missing:
        where = f"{mask_dir}" + ("" if mask_dir.is_dir() else " (that folder does not exist)")
        of_group = "" if group is None else f" of group {group!r}"
        message = (
            f"{reader}: {len(missing)} image(s){of_group} have no mask: {_listing(missing)}; expected a mask "
            f"named '{mask_stem('<stem>')}.<ext>' for each in {where}"
        )
        if missing_masks == "error":
            raise DataError(
                message
                + "; pass missing_masks='skip' to leave them out (cosegkit train/evaluate: --missing-masks skip)"
            )
        warnings.warn(
            message + "; left out (missing_masks='skip', --missing-masks skip)", UserWarning, stacklevel=stacklevel
        )
    return kept, masks


def _finish(
    groups: list[Group], empty: list[str], *, reader: str, on_empty: str, where: Path | str, stacklevel: int = 3
) -> list[Group]:
    """Report empty groups, refuse an empty result, sort by name."""
    if empty:
        message = f"{reader}: {len(empty)} group(s) under {where} have no images: {', '.join(empty)}"
        if on_empty == "error":
            raise DataError(
                message
                + "; remove them or pass on_empty='warn' to leave them out (cosegkit train/evaluate: --on-empty warn)"
            )
        warnings.warn(message + "; left out (on_empty='warn', --on-empty warn)", UserWarning, stacklevel=stacklevel)
    if not groups:
        raise DataError(f"{reader}: no group with images found under {where}")
    return sorted(groups, key=lambda g: g.name)


def _colour_counts(mask: Path) -> dict[int, int]:
    """Pixel count of every colour of a mask, colours as ``r << 16 | g << 8 | b``."""
    image = _open(mask, "mask", exif_transpose=False)
    if image.mode == "P":  # count palette indices, then name them by the file's own palette
        counts = np.bincount(np.asarray(image).ravel(), minlength=256)
        palette = (image.getpalette() or []) + [0] * 768
        out: dict[int, int] = {}
        for i in np.flatnonzero(counts).tolist():
            r, g, b = palette[3 * i : 3 * i + 3]
            code = (r << 16) | (g << 8) | b
            out[code] = out.get(code, 0) + int(counts[i])
        return out
    rgb = _to_rgb(image, mask, "mask")
    if rgb.dtype != np.uint8:
        rgb = np.rint(rgb * 255.0)
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    present, counts = np.unique(codes, return_counts=True)
    return dict(zip(present.tolist(), counts.tolist(), strict=True))


def _groups_by_colour(
    images: list[Path],
    masks: list[Path],
    colours: dict[str, tuple[int, int, int]],
    *,
    min_fraction: float,
    reader: str,
    on_empty: str,
    where: Path | str,
) -> list[Group]:
    """One group per named colour: the images whose colour-coded mask gives it more than ``min_fraction``."""
    members: dict[str, list[tuple[Path, Path]]] = {name: [] for name in colours}
    for image, mask in zip(images, masks, strict=True):
        count_of = _colour_counts(mask)
        total = sum(count_of.values())
        for name, (r, g, b) in colours.items():
            if count_of.get((r << 16) | (g << 8) | b, 0) / total > min_fraction:
                members[name].append((image, mask))
    groups, empty = [], []
    for name, pairs in members.items():
        if not pairs:
            empty.append(name)
            continue
        groups.append(
            Group(
                name=name,
                images=tuple(p[0] for p in pairs),
                masks=tuple(p[1] for p in pairs),
                class_name=_class_name(name),
                meta={"mask_colour": colours[name]},
            )
        )
    return _finish(groups, empty, reader=reader, on_empty=on_empty, where=where, stacklevel=4)


def _read_group_folders(
    image_root: Path,
    mask_dir_of: Callable[[str], Path] | None,
    *,
    reader: str,
    missing_masks: str,
    on_empty: str,
    class_name: Callable[[str], str] = _class_name,
    folders: Iterable[Path] | None = None,
) -> list[Group]:
    """One group per subfolder of ``image_root``; masks in ``mask_dir_of(group name)``."""
    _check_choice("missing_masks", missing_masks, _MISSING_MASKS)
    _check_choice("on_empty", on_empty, _ON_EMPTY)
    groups, empty = [], []
    for folder in _subfolders(image_root) if folders is None else folders:
        images = _image_files(folder)
        masks = None
        if images and mask_dir_of is not None:
            images, masks = _pair(
                images, mask_dir_of(folder.name), group=folder.name, reader=reader, missing_masks=missing_masks
            )
        if not images:
            empty.append(folder.name)
            continue
        groups.append(
            Group(
                name=folder.name,
                images=tuple(images),
                masks=None if masks is None else tuple(masks),
                class_name=class_name(folder.name),
            )
        )
    return _finish(groups, empty, reader=reader, on_empty=on_empty, where=image_root, stacklevel=4)


# ---------------------------------------------------------------------------------------------
# the layouts

_PASCAL_TREE = """\
    <root>/
        Pascal_10/<Class>/img_XXXX.jpg        images, one folder per class (Aero, Bicycle, ...)
        eval_pascal_10/<Class>/img_XXXX.png   masks of the same names, 0/255"""


def read_pascal_voc(root: str | Path, *, missing_masks: str = "error", on_empty: str = "error") -> list[Group]:
    """Read the PASCAL-VOC co-segmentation set (Faktor & Irani 2013) in its original layout.

    Expected tree::

        <root>/
            Pascal_10/<Class>/img_XXXX.jpg        images, one folder per class (Aero, Bicycle, ...)
            eval_pascal_10/<Class>/img_XXXX.png   masks of the same names, 0/255

    Class names come from the vocabulary (``Aero`` -> ``airplane``, ``Mbike`` -> ``motorcycle``,
    ``Monitor`` -> ``tv``, ``Plant`` -> ``potted plant``); unknown folders give their lower-cased
    name.

    Args:
        root: the folder holding ``Pascal_10`` and ``eval_pascal_10``.
        missing_masks: ``"error"`` (default) or ``"skip"`` (leave such images out, with a warning).
        on_empty: ``"error"`` (default) or ``"warn"`` (leave empty groups out, with a warning).

    Returns:
        One group per class folder, sorted by name.

    Raises:
        DataError: the root is missing, an image has no mask, or a group is empty.

    Example:
        On the real set, ``read_pascal_voc("data/pascal_voc_coseg")[0]`` is ``Aero`` (``airplane``, 66
        images). The same layout with one image:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data import load_group_item, read_pascal_voc
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     (Path(tmp) / "Pascal_10" / "Aero").mkdir(parents=True)
        ...     (Path(tmp) / "eval_pascal_10" / "Aero").mkdir(parents=True)
        ...     Image.new("RGB", (8, 6)).save(Path(tmp) / "Pascal_10" / "Aero" / "img_0001.jpg")
        ...     Image.new("L", (8, 6), 255).save(Path(tmp) / "eval_pascal_10" / "Aero" / "img_0001.png")
        ...     groups = read_pascal_voc(tmp)
        ...     image, mask = load_group_item(groups[0], 0)
        >>> groups[0].name, groups[0].class_name, len(groups[0])
        ('Aero', 'airplane', 1)
        >>> image.shape, mask.shape, mask.mean().item()
        (torch.Size([3, 6, 8]), torch.Size([1, 6, 8]), 1.0)
    """
    root = Path(root)
    reader = "read_pascal_voc"
    _require_dir(root / "Pascal_10", reader, _PASCAL_TREE)
    return _read_group_folders(
        root / "Pascal_10",
        lambda name: root / "eval_pascal_10" / name,
        reader=reader,
        missing_masks=missing_masks,
        on_empty=on_empty,
    )


_ICOSEG_TREE = """\
    <root>/
        dataset_public/
            images/<NNN group name>/<id>.jpg
            ground_truth/<NNN group name>/<id>.png"""


def _icoseg_class(name: str) -> str:
    return _class_name(re.sub(r"^\d+[\s_\-.]*", "", name) or name)


def read_icoseg(root: str | Path, *, missing_masks: str = "error", on_empty: str = "error") -> list[Group]:
    """Read CMU-Cornell iCoseg in its original layout.

    Expected tree::

        <root>/
            dataset_public/
                images/<NNN group name>/<id>.jpg
                ground_truth/<NNN group name>/<id>.png

    ``root`` may also be the ``dataset_public`` folder itself. Group names are kept as they are
    (``"001 Alaskan Brown Bear"``); the class name drops the leading number and is resolved in
    the vocabulary, else lower-cased (``"alaskan brown bear"``).

    Args:
        root: the folder holding ``dataset_public`` (or ``dataset_public`` itself).
        missing_masks: ``"error"`` (default) or ``"skip"``.
        on_empty: ``"error"`` (default) or ``"warn"``.

    Returns:
        One group per image folder, sorted by name.

    Raises:
        DataError: the root is missing, an image has no mask, or a group is empty.

    Example:
        On the real set, ``read_icoseg("data/icoseg")[0]`` is ``001 Alaskan Brown Bear``. The same
        layout with one image:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data import load_group_item, read_icoseg
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     images = Path(tmp, "dataset_public", "images", "001 Alaskan Brown Bear")
        ...     truth = Path(tmp, "dataset_public", "ground_truth", "001 Alaskan Brown Bear")
        ...     images.mkdir(parents=True)
        ...     truth.mkdir(parents=True)
        ...     Image.new("RGB", (8, 6)).save(images / "100.jpg")
        ...     Image.new("L", (8, 6)).save(truth / "100.png")
        ...     groups = read_icoseg(tmp)
        ...     image, mask = load_group_item(groups[0], 0)
        >>> groups[0].name, groups[0].class_name, len(groups[0])
        ('001 Alaskan Brown Bear', 'alaskan brown bear', 1)
        >>> image.shape, mask.shape
        (torch.Size([3, 6, 8]), torch.Size([1, 6, 8]))
    """
    root = Path(root)
    reader = "read_icoseg"
    base = root if (root / "images").is_dir() and not (root / "dataset_public").exists() else root / "dataset_public"
    _require_dir(base / "images", reader, _ICOSEG_TREE)
    return _read_group_folders(
        base / "images",
        lambda name: base / "ground_truth" / name,
        reader=reader,
        missing_masks=missing_masks,
        on_empty=on_empty,
        class_name=_icoseg_class,
    )


MSRC_COLOURS: dict[str, tuple[int, int, int]] = {
    "building": (128, 0, 0),
    "grass": (0, 128, 0),
    "tree": (128, 128, 0),
    "cow": (0, 0, 128),
    "horse": (128, 0, 128),
    "sheep": (0, 128, 128),
    "sky": (128, 128, 128),
    "mountain": (64, 0, 0),
    "aeroplane": (192, 0, 0),
    "water": (64, 128, 0),
    "face": (192, 128, 0),
    "car": (64, 0, 128),
    "bicycle": (192, 0, 128),
    "flower": (64, 128, 128),
    "sign": (192, 128, 128),
    "bird": (0, 64, 0),
    "book": (128, 64, 0),
    "chair": (0, 192, 0),
    "road": (128, 64, 128),
    "cat": (0, 192, 128),
    "dog": (128, 192, 128),
    "body": (64, 64, 0),
    "boat": (192, 64, 0),
}
"""The colour of each class in MSRC v2's ground-truth maps (``GroundTruth/*_GT.bmp``).

Void (unlabelled) pixels are black ``(0, 0, 0)``. The table is the one documented with the
MSRC v2 database (its HTML label description), as reproduced in several public MSRC readers
(e.g. A. Osokin's ``createMsrcClassColorTable.m``, 2014, and the TextonBoost-split loaders). It
is PASCAL VOC's bit-interleaved colour map at MSRC's original label ids: 1-18 for ``building``
to ``chair``, then 21-25 for ``road``, ``cat``, ``dog``, ``body``, ``boat`` (ids 19 and 20 are
unused in MSRC v2). ``horse`` and ``mountain`` are in the maps though MSRC-21 evaluations drop
them.
"""

_MSRC_ALIASES = {"plane": "aeroplane", "airplane": "aeroplane"}

_MSRC_TREE = """\
    <root>/
        Images/<k>_<m>_s.bmp          images
        GroundTruth/<k>_<m>_s_GT.bmp  21-class colour maps (MSRC_COLOURS; void is black)"""


def _msrc_colour(name: str) -> tuple[int, int, int]:
    key = _MSRC_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in MSRC_COLOURS:
        raise CosegValueError(
            f"unknown MSRC class {name!r}; valid: {', '.join(MSRC_COLOURS)} (and 'plane' for aeroplane)"
        )
    return MSRC_COLOURS[key]


def read_msrc(
    root: str | Path,
    classes: Sequence[str] = ("bird", "car", "cat", "cow", "dog", "plane", "sheep"),
    *,
    min_fraction: float = 0.0,
    missing_masks: str = "error",
    on_empty: str = "error",
) -> list[Group]:
    """Read MSRC v2 as co-segmentation groups: one group per class, by ground-truth colour.

    Expected tree::

        <root>/
            Images/<k>_<m>_s.bmp          images
            GroundTruth/<k>_<m>_s_GT.bmp  21-class colour maps (MSRC_COLOURS; void is black)

    A class's group holds every image whose ground truth has more than ``min_fraction`` of its
    pixels in that class's colour (:data:`MSRC_COLOURS`); the default 0 takes every image where
    the class is annotated at all. The group's masks are the colour maps themselves, and
    ``group.meta["mask_colour"]`` tells :func:`~cosegkit.data.load_group_item` which colour is foreground. An
    image with two requested classes (a cow with sheep) joins both groups. This reads all of
    MSRC v2; the co-segmentation benchmark's "MSRC 7 x 10" is a hand-picked subset whose lists
    are not distributed with MSRC (its processed copy reads with :func:`read_processed`).

    Args:
        root: the folder holding ``Images`` and ``GroundTruth``.
        classes: MSRC class names (keys of :data:`MSRC_COLOURS`; ``"plane"`` = ``"aeroplane"``).
            The default is the benchmark's seven.
        min_fraction: the fraction of an image's pixels the class must exceed, in [0, 1).
        missing_masks: ``"error"`` (default) or ``"skip"`` (images without ``*_GT.bmp``).
        on_empty: ``"error"`` (default) or ``"warn"``: a class found in no image.

    Returns:
        One group per requested class, named as requested, sorted by name; ``class_name`` from
        the vocabulary (``"plane"`` -> ``"airplane"``).

    Raises:
        DataError: the root is missing, an image has no ground truth or a class no image.
        CosegValueError: an unknown class name or a ``min_fraction`` outside [0, 1).

    Example:
        On the real set, ``read_msrc("data/MSRC_ObjCategImageDatabase_v2")`` gives the groups
        ``bird``, ``car``, ``cat``, ``cow``, ``dog``, ``plane`` and ``sheep``. One image of a cow on
        grass, read as two groups:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data import MSRC_COLOURS, load_group_item, read_msrc
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Path(tmp, "Images").mkdir()
        ...     Path(tmp, "GroundTruth").mkdir()
        ...     Image.new("RGB", (8, 6)).save(Path(tmp, "Images", "1_1_s.bmp"))
        ...     colour_map = Image.new("RGB", (8, 6), MSRC_COLOURS["grass"])
        ...     colour_map.paste(MSRC_COLOURS["cow"], (2, 1, 6, 4))  # a 4 x 3 cow
        ...     colour_map.save(Path(tmp, "GroundTruth", "1_1_s_GT.bmp"))
        ...     groups = read_msrc(tmp, classes=("cow", "grass"))
        ...     image, cow = load_group_item(groups[0], 0)
        >>> [(g.name, len(g), g.meta["mask_colour"]) for g in groups]
        [('cow', 1, (0, 0, 128)), ('grass', 1, (0, 128, 0))]
        >>> image.shape, cow.shape, cow.sum().item()
        (torch.Size([3, 6, 8]), torch.Size([1, 6, 8]), 12.0)
    """
    root = Path(root)
    reader = "read_msrc"
    _check_choice("missing_masks", missing_masks, _MISSING_MASKS)
    _check_choice("on_empty", on_empty, _ON_EMPTY)
    if not 0.0 <= min_fraction < 1.0:
        raise CosegValueError(f"min_fraction must be in [0, 1), got {min_fraction}")
    colours = {name: _msrc_colour(name) for name in classes}
    if not colours:
        raise CosegValueError("classes is empty; name at least one MSRC class")
    _require_dir(root / "Images", reader, _MSRC_TREE)
    images, masks = _pair(
        _image_files(root / "Images"),
        root / "GroundTruth",
        group=None,
        reader=reader,
        missing_masks=missing_masks,
        mask_stem=lambda stem: f"{stem}_GT",
        stacklevel=3,
    )
    return _groups_by_colour(
        images, masks, colours, min_fraction=min_fraction, reader=reader, on_empty=on_empty, where=root
    )


VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""PASCAL VOC's 20 object classes, in label order (label ``k`` is ``VOC_CLASSES[k - 1]``)."""


def voc_colour(label: int) -> tuple[int, int, int]:
    """The colour of a PASCAL VOC label in VOC's palette (label 1, aeroplane, is ``(128, 0, 0)``).

    Example:
        >>> from cosegkit.data import voc_colour
        >>> voc_colour(1), voc_colour(15), voc_colour(255)  # aeroplane, person, void
        ((128, 0, 0), (192, 128, 128), (224, 224, 192))
    """
    r = g = b = 0
    c = label
    for bit in range(8):
        r |= ((c >> 0) & 1) << (7 - bit)
        g |= ((c >> 1) & 1) << (7 - bit)
        b |= ((c >> 2) & 1) << (7 - bit)
        c >>= 3
    return r, g, b


_VOC_TREE = """\
    <root>/                                  VOCdevkit/VOC2012 (or VOCdevkit, holding VOC2012)
        JPEGImages/<id>.jpg                  images
        SegmentationClass/<id>.png           class masks in VOC's palette (label k, void 255)
        ImageSets/Segmentation/<split>.txt   the image ids of each split, one per line"""


def read_voc_segmentation(
    root: str | Path,
    split: str = "train",
    classes: Sequence[str] = VOC_CLASSES,
    *,
    min_fraction: float = 0.0,
    missing_masks: str = "error",
    on_empty: str = "error",
) -> list[Group]:
    """Read a PASCAL VOC segmentation split as co-segmentation groups, one group per class.

    Expected tree::

        <root>/                                  VOCdevkit/VOC2012 (or VOCdevkit, holding VOC2012)
            JPEGImages/<id>.jpg                  images
            SegmentationClass/<id>.png           class masks in VOC's palette (label k, void 255)
            ImageSets/Segmentation/<split>.txt   the image ids of each split, one per line

    This is the training data of the co-segmentation methods trained "on PASCAL" (the VOC 2012
    segmentation training split, grouped by class); the PASCAL *test* set is the separate
    co-segmentation set that :func:`read_pascal_voc` reads. A class's group holds every image
    of the split whose mask gives that class more than ``min_fraction`` of its pixels; an image
    with a person on a horse joins both groups. Its mask is that class's pixels: the group's
    ``meta["mask_colour"]`` (:func:`voc_colour`) tells :func:`~cosegkit.data.load_group_item`
    which colour is foreground, so void (255) and every other class are background. The masks
    are decoded once here to find the classes (a fraction of a second per hundred images).

    Args:
        root: the ``VOC2012`` folder, or the ``VOCdevkit`` folder that holds it.
        split: the name of a list in ``ImageSets/Segmentation`` (``"train"``, ``"val"``,
            ``"trainval"``).
        classes: which of :data:`VOC_CLASSES` to read (default all 20).
        min_fraction: the fraction of an image's pixels the class must exceed, in [0, 1).
        missing_masks: ``"error"`` (default) or ``"skip"``: an id of the split without a mask.
        on_empty: ``"error"`` (default) or ``"warn"``: a class found in no image of the split.

    Returns:
        One group per requested class, named by VOC (``"aeroplane"``), sorted by name;
        ``class_name`` from the vocabulary (``"aeroplane"`` -> ``"airplane"``).

    Raises:
        DataError: the root or the split list is missing, an image of the list is missing, a mask
            is missing (unless skipped) or a class has no image.
        CosegValueError: an unknown class name or a ``min_fraction`` outside [0, 1).

    Example:
        On the real set, ``read_voc_segmentation("VOCdevkit/VOC2012")`` gives 20 groups from the
        1,464 training images. The same layout with one image of a person on a horse:

        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from cosegkit.data import load_group_item, read_voc_segmentation, voc_colour
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     voc = Path(tmp, "VOCdevkit", "VOC2012")
        ...     for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        ...         (voc / folder).mkdir(parents=True)
        ...     _ = (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000001")
        ...     Image.new("RGB", (8, 6)).save(voc / "JPEGImages/2007_000001.jpg")
        ...     labels = np.zeros((6, 8), np.uint8)
        ...     labels[1:5, 1:7], labels[1:3, 3:5], labels[5] = 13, 15, 255  # horse, person, void
        ...     mask = Image.fromarray(labels)  # an "L" image becomes "P" with a palette
        ...     mask.putpalette([c for k in range(256) for c in voc_colour(k)])
        ...     mask.save(voc / "SegmentationClass/2007_000001.png")
        ...     groups = read_voc_segmentation(Path(tmp, "VOCdevkit"), classes=("horse", "person"))
        ...     horse = load_group_item(groups[0], 0)[1]
        >>> [(g.name, g.class_name, len(g)) for g in groups]
        [('horse', 'horse', 1), ('person', 'person', 1)]
        >>> horse.shape, horse.sum().item()  # 24 horse pixels, less the 4 the person covers
        (torch.Size([1, 6, 8]), 20.0)
    """
    root = Path(root)
    reader = "read_voc_segmentation"
    _check_choice("missing_masks", missing_masks, _MISSING_MASKS)
    _check_choice("on_empty", on_empty, _ON_EMPTY)
    if not 0.0 <= min_fraction < 1.0:
        raise CosegValueError(f"min_fraction must be in [0, 1), got {min_fraction}")
    unknown = [c for c in classes if c not in VOC_CLASSES]
    if unknown:
        raise CosegValueError(f"unknown VOC classes {unknown}; choose from {', '.join(VOC_CLASSES)}")
    if not classes:
        raise CosegValueError("classes is empty; name at least one VOC class")
    if not (root / "JPEGImages").is_dir() and (root / "VOC2012").is_dir():
        root = root / "VOC2012"
    _require_dir(root / "JPEGImages", reader, _VOC_TREE)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        lists = sorted(p.stem for p in listing.parent.glob("*.txt")) if listing.parent.is_dir() else []
        raise DataError(
            f"{reader}: no split list {listing}; the splits there are {lists or 'none'}. Expected this layout:\n"
            f"{_VOC_TREE}"
        )
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    images = []
    for image_id in ids:
        path = root / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise DataError(f"{reader}: {listing} lists {image_id!r} but {path} does not exist")
        images.append(path)
    images, masks = _pair(
        images, root / "SegmentationClass", group=None, reader=reader, missing_masks=missing_masks, stacklevel=3
    )
    colours = {name: voc_colour(VOC_CLASSES.index(name) + 1) for name in classes}
    return _groups_by_colour(
        images, masks, colours, min_fraction=min_fraction, reader=reader, on_empty=on_empty, where=f"{root} ({split})"
    )


_INTERNET_TREE = """\
    <root>/
        Data/
            Airplane100/*.jpg               images (the 100-image subsets; the full sets
            Airplane100/GroundTruth/*.png   have no '100' suffix)
            Car100/...  Horse100/..."""

_INTERNET_SUBSETS = ("100", "full", "all")


def read_internet(
    root: str | Path, *, subset: str = "100", missing_masks: str = "error", on_empty: str = "error"
) -> list[Group]:
    """Read the Internet (Object Discovery) dataset of Rubinstein et al. 2013.

    Expected tree::

        <root>/
            Data/
                Airplane100/*.jpg               images (the 100-image subsets; the full sets
                Airplane100/GroundTruth/*.png   have no '100' suffix)
                Car100/...  Horse100/...

    ``root`` may also be the ``Data`` folder itself. Images without the common object have
    empty masks; that is part of the benchmark, not an error.

    Args:
        root: the folder holding ``Data``.
        subset: ``"100"`` (default: the folders whose name ends in ``100``, the benchmark's
            3 x 100), ``"full"`` (the others: the full sets) or ``"all"``. If some full-set
            images lack ground truth, pass ``missing_masks="skip"``.
        missing_masks: ``"error"`` (default) or ``"skip"``.
        on_empty: ``"error"`` (default) or ``"warn"``.

    Returns:
        One group per class folder (``"Airplane100"``), sorted by name; ``class_name`` without
        the number (``"airplane"``).

    Raises:
        DataError: the root is missing, no folder matches ``subset``, an image has no mask, or
            a group is empty.

    Example:
        On the real set, ``read_internet("data/ObjectDiscovery")`` gives ``Airplane100``,
        ``Car100`` and ``Horse100`` (100 images each). The same layout with one image per folder:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data import load_group_item, read_internet
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("Airplane100", "Airplane"):  # the 100-image subset and the full set
        ...         folder = Path(tmp, "Data", name)
        ...         (folder / "GroundTruth").mkdir(parents=True)
        ...         Image.new("RGB", (8, 6)).save(folder / "0001.jpg")
        ...         Image.new("L", (8, 6)).save(folder / "GroundTruth" / "0001.png")
        ...     groups, full = read_internet(tmp), read_internet(tmp, subset="full")
        ...     image, mask = load_group_item(groups[0], 0)
        >>> [(g.name, g.class_name, len(g)) for g in groups + full]
        [('Airplane100', 'airplane', 1), ('Airplane', 'airplane', 1)]
        >>> image.shape, mask.shape, mask.sum().item()  # an empty mask: no airplane in this image
        (torch.Size([3, 6, 8]), torch.Size([1, 6, 8]), 0.0)
    """
    root = Path(root)
    reader = "read_internet"
    _check_choice("subset", subset, _INTERNET_SUBSETS)
    data = root / "Data"
    if not data.is_dir() and root.is_dir() and any((f / "GroundTruth").is_dir() for f in _subfolders(root)):
        data = root
    _require_dir(data, reader, _INTERNET_TREE)
    folders = _subfolders(data)
    if subset == "100":
        chosen = [f for f in folders if f.name.endswith("100")]
    elif subset == "full":
        chosen = [f for f in folders if not f.name.endswith("100")]
    else:
        chosen = folders
    if not chosen:
        raise DataError(
            f"{reader}: no class folder for subset={subset!r} under {data}; found "
            f"{[f.name for f in folders] or 'no folders'}; expected this layout:\n{_INTERNET_TREE}"
        )
    return _read_group_folders(
        data,
        lambda name: data / name / "GroundTruth",
        reader=reader,
        missing_masks=missing_masks,
        on_empty=on_empty,
        class_name=lambda name: _class_name(re.sub(r"\d+$", "", name) or name),
        folders=chosen,
    )


_PROCESSED_TREE = """\
    <root>/                     e.g. iCoseg8/, MSRC7/, Internet_Datasets300/, PASCAL_VOC/
        image/<class>/*.jpg
        groundtruth/<class>/*   masks of the same stems: .png, .bmp or .jpg"""


def read_processed(
    root: str | Path, dataset: str | None = None, *, missing_masks: str = "error", on_empty: str = "error"
) -> list[Group]:
    """Read the processed layout that SSNM and UFO distribute their test sets in.

    Expected tree::

        <root>/                     e.g. iCoseg8/, MSRC7/, Internet_Datasets300/, PASCAL_VOC/
            image/<class>/*.jpg
            groundtruth/<class>/*   masks of the same stems: .png, .bmp or .jpg

    Masks stored as JPEG (the Internet set's) binarise by the threshold rule of
    :func:`~cosegkit.data.load_mask`, which is made for their compression noise.

    Args:
        root: the dataset folder (``.../iCoseg8``), or its parent when ``dataset`` is given.
        dataset: the dataset folder's name under ``root`` (``"iCoseg8"``), or ``None``.
        missing_masks: ``"error"`` (default) or ``"skip"``.
        on_empty: ``"error"`` (default) or ``"warn"``.

    Returns:
        One group per class folder, sorted by name.

    Raises:
        DataError: the folder is missing, an image has no mask, or a group is empty.

    Example:
        ``read_processed("data/SSNM_test", dataset="iCoseg8")`` reads SSNM's iCoseg test set. The
        same layout with one image, its mask a JPEG:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data import load_group_item, read_processed
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     images, truth = Path(tmp, "iCoseg8", "image", "cheetah"), Path(tmp, "iCoseg8", "groundtruth", "cheetah")
        ...     images.mkdir(parents=True)
        ...     truth.mkdir(parents=True)
        ...     Image.new("RGB", (8, 6)).save(images / "1.jpg")
        ...     Image.new("L", (8, 6), 255).save(truth / "1.jpg")
        ...     groups = read_processed(tmp, dataset="iCoseg8")
        ...     image, mask = load_group_item(groups[0], 0)
        >>> groups[0].name, len(groups[0]), groups[0].masks[0].name
        ('cheetah', 1, '1.jpg')
        >>> image.shape, mask.shape, mask.mean().item()
        (torch.Size([3, 6, 8]), torch.Size([1, 6, 8]), 1.0)
    """
    root = Path(root) if dataset is None else Path(root) / dataset
    reader = "read_processed"
    _require_dir(root / "image", reader, _PROCESSED_TREE)
    return _read_group_folders(
        root / "image",
        lambda name: root / "groundtruth" / name,
        reader=reader,
        missing_masks=missing_masks,
        on_empty=on_empty,
    )


_FOLDER_TREE = """\
    <root>/
        images/<group>/*.jpg    one folder per group of images sharing an object
        masks/<group>/*.png     optional: masks of the same stems (leave masks/ out for unlabelled images)"""


def read_folder(
    root: str | Path, *, missing_masks: str = "error", on_empty: str = "error", masks: bool = True
) -> list[Group]:
    """Read your own images: one folder of images per group, masks optional.

    Expected tree::

        <root>/
            images/<group>/*.jpg    one folder per group of images sharing an object
            masks/<group>/*.png     optional: masks of the same stems (leave masks/ out for unlabelled images)

    Without ``masks/`` every group is unlabelled (``masks=None``), for segmenting new images
    or training on pseudo masks. With it, every image needs its mask, unless ``masks=False``.

    Args:
        root: the folder holding ``images`` (and ``masks``).
        missing_masks: ``"error"`` (default) or ``"skip"``.
        on_empty: ``"error"`` (default) or ``"warn"``.
        masks: ``False`` reads the images only and never looks at ``masks/``: every group is
            unlabelled, whatever ``masks/`` holds (training on pseudo masks reads this way).

    Returns:
        One group per folder of ``images/``, sorted by name.

    Raises:
        DataError: ``images/`` is missing or holds images directly (not in group folders), an
            image has no mask, or a group is empty.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from cosegkit.data.io import load_group_item
        >>> from cosegkit.data.readers import read_folder
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("a.jpg", "b.jpg"):
        ...         path = pathlib.Path(tmp, "images", "my_cats", name)
        ...         path.parent.mkdir(parents=True, exist_ok=True)
        ...         Image.new("RGB", (8, 6)).save(path)
        ...     groups = read_folder(tmp)
        ...     image, mask = load_group_item(groups[0], 1)
        >>> groups[0].name, groups[0].class_name, len(groups[0]), groups[0].masks
        ('my_cats', 'my cats', 2, None)
        >>> image.shape, mask
        (torch.Size([3, 6, 8]), None)

        ``masks=False`` ignores a ``masks/`` folder, even one that lacks some groups:

        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for group in ("cats", "dogs"):
        ...         path = pathlib.Path(tmp, "images", group, "a.jpg")
        ...         path.parent.mkdir(parents=True)
        ...         Image.new("RGB", (8, 6)).save(path)
        ...     pathlib.Path(tmp, "masks", "cats").mkdir(parents=True)  # no masks for the dogs
        ...     Image.new("L", (8, 6)).save(pathlib.Path(tmp, "masks", "cats", "a.png"))
        ...     [(g.name, g.masks) for g in read_folder(tmp, masks=False)]
        [('cats', None), ('dogs', None)]
    """
    root = Path(root)
    reader = "read_folder"
    _require_dir(root / "images", reader, _FOLDER_TREE)
    loose = _image_files(root / "images")
    if loose:
        raise DataError(
            f"{reader}: {len(loose)} image(s) lie directly in {root / 'images'} ({_listing(loose)}); "
            f"put each group in its own folder, e.g. {root / 'images' / 'group1' / loose[0].name}"
        )
    mask_root = root / "masks"
    return _read_group_folders(
        root / "images",
        (lambda name: mask_root / name) if masks and mask_root.is_dir() else None,
        reader=reader,
        missing_masks=missing_masks,
        on_empty=on_empty,
    )


# ---------------------------------------------------------------------------------------------
# COCO


def read_coco(
    annotations_json: str | Path,
    image_root: str | Path,
    *,
    categories: Sequence[str | int] | None = None,
    min_area: float = 0.0,
    min_images: int = 0,
    ssnm_filter: bool = False,
    include_crowd: bool = True,
    on_empty: str = "error",
) -> list[Group]:
    """Read COCO instance annotations as co-segmentation groups, one group per category.

    Expected files::

        annotations_json                e.g. annotations/instances_train2017.json
        image_root/<file_name>          e.g. train2017/000000000009.jpg, as the json names them

    A category's group holds the images with an instance of it whose area exceeds
    ``min_area``; a category with fewer than ``min_images`` such images (or none) is left out by
    that filter, while a category with no instance at all is an empty group (``on_empty``). Masks are not
    files: ``group.masks`` is ``None`` and ``group.meta`` keeps what
    :func:`~cosegkit.data.coco_mask` needs (``category_id``, ``annotations`` (the json's path),
    ``annotation_ids``, ``image_ids``, ``image_sizes`` and ``segmentations``, per image). The mask
    of an image is the union of *all* its instances of the category (small ones included; crowd
    regions too unless ``include_crowd=False``). :func:`~cosegkit.data.load_group_item` loads image and mask.

    ``ssnm_filter=True`` applies the SSNM/UFO training-set rule: categories with at least 100
    images holding an instance of area > 4000 pixels, each group holding those images (that
    leaves 78 of COCO 2017 train's 80 categories, about 200k image-category pairs).

    Args:
        annotations_json: a COCO instances file.
        image_root: the folder the json's ``file_name`` entries are relative to.
        categories: the category names or ids to read; ``None`` for all.
        min_area: an image joins a category's group if one of its instances of it has
            ``area > min_area`` (COCO's ``area`` field, pixels); the default 0 keeps every
            instance with pixels.
        min_images: drop categories with fewer images than this.
        ssnm_filter: set ``min_area=4000`` and ``min_images=100`` (then leave both at their
            defaults).
        include_crowd: count crowd (``iscrowd=1``) annotations in masks and filters.
        on_empty: ``"error"`` (default) or ``"warn"``: a category with no instance at all.

    Returns:
        One group per category, named by the category's name, sorted by name.

    Raises:
        ImportError: pycocotools is not installed (``pip install "cosegkit[coco]"``).
        DataError: a file is missing or malformed, an image file is missing, a category has no
            instance, or no category passes the filters.
        CosegValueError: an unknown category, or ``ssnm_filter`` with other thresholds.

    Example:
        On COCO itself: ``read_coco("coco/annotations/instances_train2017.json", "coco/train2017",
        ssnm_filter=True)``. A json with one image and one cat instance (a polygon
        ``[x1, y1, x2, y2, ...]``):

        >>> import json, tempfile
        >>> from PIL import Image
        >>> from cosegkit.data import load_group_item, read_coco
        >>> cat = {"id": 5, "image_id": 1, "category_id": 17, "area": 12.0, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]}
        >>> coco = {
        ...     "images": [{"id": 1, "file_name": "cat.jpg", "width": 8, "height": 6}],
        ...     "categories": [{"id": 17, "name": "cat"}],
        ...     "annotations": [cat],
        ... }
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with open(f"{tmp}/instances.json", "w") as file:
        ...         json.dump(coco, file)
        ...     Image.new("RGB", (8, 6)).save(f"{tmp}/cat.jpg")
        ...     groups = read_coco(f"{tmp}/instances.json", tmp)
        ...     image, mask = load_group_item(groups[0], 0)
        >>> groups[0].name, len(groups[0]), groups[0].masks, groups[0].meta["category_id"]
        ('cat', 1, None, 17)
        >>> image.shape, mask.shape, mask.sum().item()
        (torch.Size([3, 6, 8]), torch.Size([1, 6, 8]), 12.0)
    """
    _mask_utils()  # fail early, before parsing a large json
    _check_choice("on_empty", on_empty, _ON_EMPTY)
    if ssnm_filter:
        if min_area not in (0, 4000) or min_images not in (0, 100):
            raise CosegValueError(
                f"ssnm_filter=True sets min_area=4000 and min_images=100; got min_area={min_area}, "
                f"min_images={min_images}: pass one or the other"
            )
        min_area, min_images = 4000.0, 100
    annotations_json, image_root = Path(annotations_json), Path(image_root)
    reader = "read_coco"
    if not annotations_json.is_file():
        raise DataError(f"{reader}: annotation file {annotations_json} not found (a COCO instances_*.json)")
    _require_dir(image_root, reader, "    <image_root>/<file_name>   the images the json's 'images' entries name")
    try:
        with annotations_json.open(encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{reader}: cannot parse {annotations_json}: {error}") from error
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise DataError(
            f"{reader}: {annotations_json} is not a COCO instances file (needs 'images', 'annotations' and "
            "'categories')"
        )

    names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    if len(set(names.values())) != len(names):
        raise DataError(f"{reader}: {annotations_json} has two categories of one name; names must be unique")
    if categories is None:
        chosen = set(names)
    else:
        by_name = {v: k for k, v in names.items()}
        chosen = set()
        for category in categories:
            if isinstance(category, int) and category in names:
                chosen.add(category)
            elif isinstance(category, str) and category in by_name:
                chosen.add(by_name[category])
            else:
                raise CosegValueError(
                    f"category {category!r} is not in {annotations_json}; it has {len(names)}: "
                    f"{', '.join(sorted(names.values())[: _SHOWN * 2])}..."
                )

    images = {int(i["id"]): i for i in data["images"]}
    # (category, image) -> annotations, and which pairs have an instance large enough
    instances: dict[tuple[int, int], list[dict]] = {}
    large: set[tuple[int, int]] = set()
    for annotation in data["annotations"]:
        key = (int(annotation["category_id"]), int(annotation["image_id"]))
        if key[0] not in chosen or (annotation.get("iscrowd", 0) and not include_crowd):
            continue
        if key[1] not in images:
            raise DataError(f"{reader}: annotation {annotation.get('id')} names image {key[1]}, absent from 'images'")
        instances.setdefault(key, []).append(annotation)
        if float(annotation.get("area", 0.0)) > min_area:
            large.add(key)

    per_category: dict[int, list[int]] = {c: [] for c in chosen}
    for category, image_id in sorted(large):
        per_category[category].append(image_id)

    annotated = {category for category, _ in instances}
    groups, empty, missing = [], [], []
    for category, image_ids in per_category.items():
        if category not in annotated:
            empty.append(names[category])  # no instance at all: reported by on_empty
            continue
        if not image_ids or len(image_ids) < min_images:
            continue  # left out by the filters the caller asked for
        image_ids = sorted(image_ids, key=lambda i: str(images[i]["file_name"]))
        paths = tuple(image_root / str(images[i]["file_name"]) for i in image_ids)
        missing.extend(p for p in paths if not p.is_file())
        anns = [instances[(category, i)] for i in image_ids]
        groups.append(
            Group(
                name=names[category],
                images=paths,
                masks=None,
                class_name=_class_name(names[category]),
                meta={
                    "category_id": category,
                    "annotations": annotations_json,
                    "image_ids": tuple(image_ids),
                    "annotation_ids": tuple(tuple(a.get("id") for a in per_image) for per_image in anns),
                    "image_sizes": tuple((int(images[i]["height"]), int(images[i]["width"])) for i in image_ids),
                    "segmentations": tuple(tuple(a["segmentation"] for a in per_image) for per_image in anns),
                },
            )
        )
    if missing:
        missing = sorted(set(missing))
        raise DataError(
            f"{reader}: {len(missing)} image file(s) named in {annotations_json} are not under {image_root}: "
            f"{_listing(missing)}"
        )
    if not groups and not empty:
        raise DataError(
            f"{reader}: no category of {annotations_json} has {max(min_images, 1)} or more images with an "
            f"instance of area > {min_area}"
        )
    return _finish(groups, empty, reader=reader, on_empty=on_empty, where=annotations_json)


READERS: dict[str, Callable[..., list[Group]]] = {
    "pascal_voc": read_pascal_voc,
    "icoseg": read_icoseg,
    "msrc": read_msrc,
    "internet": read_internet,
    "processed": read_processed,
    "coco": read_coco,
    "voc_segmentation": read_voc_segmentation,
    "folder": read_folder,
}
"""Every reader by layout name."""


def get_reader(name: str) -> Callable[..., list[Group]]:
    """The reader of a layout by name.

    Args:
        name: a key of :data:`READERS`.

    Returns:
        The reader function.

    Raises:
        KeyError: unknown name; the message lists the valid ones.

    Example:
        >>> from cosegkit.data.readers import get_reader
        >>> get_reader("pascal_voc").__name__
        'read_pascal_voc'
    """
    try:
        return READERS[name]
    except KeyError:
        raise KeyError(f"unknown dataset layout {name!r}; valid: {', '.join(sorted(READERS))}") from None
