"""Loading images and masks from files, with errors that name the file.

Every dataset layout ends here: an image becomes a float RGB tensor ``(3, H, W)`` in [0, 1] and
a mask a float tensor ``(1, H, W)`` in {0, 1}, whatever the file's mode (greyscale, palette,
16-bit, CMYK, ...). A file that is missing, truncated or not an image raises
:class:`~cosegkit.data.types.DataError` naming it; so does a mask whose size differs from its
image's. :func:`load_group_item` loads one image of a reader's
:class:`~cosegkit.data.types.Group` with its mask, whatever the layout (mask files, MSRC colour
maps, COCO polygons).

Decisions, once for the whole package:

- **EXIF orientation** is applied (:func:`PIL.ImageOps.exif_transpose`) to images and masks, so a
  phone photo loads the way viewers show it. Pass ``exif_transpose=False`` to get the stored
  pixel grid (COCO's annotations, for one, are drawn on it).
- **Alpha** is dropped, not composited: an RGBA pixel ``(r, g, b, a)`` loads as ``(r, g, b)``, as
  ``PIL.Image.convert("RGB")`` does in the SSNM/UFO loaders. A palette image's transparency is
  dropped the same way.
- **Mask binarisation**, one rule for every non-palette mask: reduce to one value per pixel (the
  maximum over the colour channels for colour masks, the grey value otherwise), then
  ``foreground = value > R / 2`` where ``R`` is the smallest of 1, 255 and 65535 that is at least
  the mask's maximum. So 0/255 masks split at 127.5, 0/1 masks at 0.5, 16-bit 0/65535 masks at
  32767.5, and the noise of a lossy (JPEG) 0/255 mask, or of an empty JPEG mask, falls on the
  right side. Palette masks are read by index: see :func:`load_mask`.
"""

# c channels, h w spatial

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from cosegkit.data.types import DataError, Group

__all__ = [
    "IMAGE_EXTENSIONS",
    "check_pair",
    "coco_mask",
    "image_size",
    "is_image_file",
    "load_group_item",
    "load_image",
    "load_mask",
    "load_pair",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""File extensions read as images or masks (compared lower-cased)."""

# what PIL raises on a broken file, besides OSError (which includes UnidentifiedImageError)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)

_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})

# the colour tolerance for colour-coded masks stored in a lossy format (JPEG): MSRC's colours
# differ by at least 64 in some channel, so within 31 no pixel matches two of them
_LOSSY_COLOUR_TOLERANCE = 31


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` names an image by its extension (case-insensitive) and is not hidden.

    Hidden files (``.name``) are left out: macOS writes ``._img.jpg`` resource forks beside
    every image on foreign file systems, and they are not images.

    Example:
        >>> from cosegkit.data.io import is_image_file
        >>> is_image_file("a/IMG_1.JPG"), is_image_file("a/notes.txt"), is_image_file("a/._IMG_1.jpg")
        (True, False, False)
    """
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _open(path: str | Path, what: str, *, exif_transpose: bool) -> Image.Image:
    """Open and decode a file fully, so that truncation shows here and not later."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            if exif_transpose:
                ImageOps.exif_transpose(opened, in_place=True)  # in place: keeps .format
            image = opened
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot read {what} {path}: {type(error).__name__}: {error}") from error
    return image


def _to_rgb(image: Image.Image, path: Path, what: str) -> np.ndarray:
    """RGB pixels ``(H, W, 3)``: uint8 for 8-bit data, float32 in [0, 1] for 16-bit and float data."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float32)
        # "I" is how PIL opens 16-bit PNGs in older releases and 32-bit TIFFs: read as 16-bit
        values = np.clip(values, 0.0, 1.0) if mode == "F" else np.clip(values / 65535.0, 0.0, 1.0)
        return np.repeat(values[..., None], 3, axis=-1)
    try:
        if mode in ("P", "PA"):
            image = image.convert("RGBA")  # applies the palette; the alpha is dropped next
        return np.asarray(image.convert("RGB"))
    except ValueError as error:
        raise DataError(f"cannot convert {what} {path} from mode {mode!r} to RGB: {error}") from error


def load_image(path: str | Path, *, exif_transpose: bool = True) -> torch.Tensor:
    """Load an image file as float RGB in [0, 1].

    Greyscale (``1``, ``L``, 16-bit ``I;16``, 32-bit ``I``, float ``F``) is repeated over the
    three channels; 16-bit and ``I`` data are divided by 65535 and ``F`` data are clipped to
    [0, 1]. Palette, CMYK and YCbCr images are converted to RGB; alpha (``RGBA``, ``LA``, palette
    transparency) is dropped, not composited.

    Args:
        path: the image file.
        exif_transpose: apply the EXIF orientation tag (rotate / flip as a viewer shows it).

    Returns:
        The image, float32 of shape :math:`(3, H, W)`.

    Raises:
        DataError: the file is missing, truncated, not an image, or in a mode PIL cannot
            convert to RGB; the message names the file.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from cosegkit.data.io import load_image
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "grey.png"
        ...     Image.new("L", (8, 6), 51).save(path)
        ...     image = load_image(path)
        >>> image.shape, image.dtype, round(image.max().item(), 3)
        (torch.Size([3, 6, 8]), torch.float32, 0.2)
    """
    path = Path(path)
    image = _open(path, "image", exif_transpose=exif_transpose)
    pixels = _to_rgb(image, path, "image")
    if pixels.dtype == np.uint8:
        pixels = pixels.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))


def _palette_foreground(image: Image.Image) -> np.ndarray:
    """Palette masks: index > 0 is foreground, except a PASCAL-VOC-style void index 255."""
    index = np.asarray(image)
    if index.ndim == 3:  # "PA": index and alpha
        index = index[..., 0]
    palette = image.getpalette() or []
    void_is_white = palette[765:768] == [255, 255, 255]  # a black/white palette mask, not VOC's border
    foreground = index > 0
    if not void_is_white:
        foreground &= index != 255
    return foreground


def _threshold(values: np.ndarray) -> np.ndarray:
    """``values > R / 2``, ``R`` the smallest of 1, 255, 65535 that is at least ``values.max()``."""
    peak = float(values.max()) if values.size else 0.0
    full_range = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
    return values > full_range / 2.0


def load_mask(
    path: str | Path,
    *,
    colour: tuple[int, int, int] | None = None,
    tolerance: int | None = None,
    exif_transpose: bool = True,
) -> torch.Tensor:
    """Load a binary mask file as float {0, 1}.

    The rule, for every format (see the module docstring):

    - **palette** (``P``) masks are read by index: foreground = index > 0, except index 255 which
      is PASCAL VOC's void / object border and counts as background, unless the palette maps 255
      to white (a black-and-white palette mask, whose 255 is its foreground);
    - **colour-coded** masks (``colour`` given, e.g. MSRC's 21-class maps): foreground = pixels of
      that RGB colour, every channel within ``tolerance`` of it;
    - **everything else**: one value per pixel (the maximum over R, G, B for colour files, alpha
      dropped; the grey value otherwise), foreground = ``value > R / 2`` with ``R`` the smallest
      of 1, 255, 65535 that is at least the mask's maximum. That reads 0/255 and 0/1 masks,
      16-bit masks, coloured-on-black masks, and lossy JPEG masks (their compression noise stays
      below 127.5, so an empty JPEG mask stays empty).

    Args:
        path: the mask file.
        colour: select the pixels of this ``(r, g, b)`` colour instead of thresholding.
        tolerance: largest per-channel difference from ``colour`` still counted as that colour.
            ``None``: 0 for lossless files, 31 for JPEG (under half the smallest difference
            between two MSRC colours, so no pixel matches two). JPEG's chroma subsampling still
            blurs the edges of saturated colours, so a JPEG colour map loses a rim of edge pixels.
        exif_transpose: apply the EXIF orientation tag, as :func:`load_image` does.

    Returns:
        The mask, float32 of shape :math:`(1, H, W)`, values in {0, 1}.

    Raises:
        DataError: the file is missing, truncated or not an image; the message names it.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from PIL import Image
        >>> from cosegkit.data.io import load_mask
        >>> values = np.zeros((6, 8), np.uint8)
        >>> values[2:4, 3:6] = 255
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "mask.png"
        ...     Image.fromarray(values).save(path)
        ...     mask = load_mask(path)
        >>> mask.shape, mask.sum().item(), mask.unique().tolist()
        (torch.Size([1, 6, 8]), 6.0, [0.0, 1.0])
    """
    path = Path(path)
    image = _open(path, "mask", exif_transpose=exif_transpose)
    if colour is not None:
        if len(colour) != 3:
            raise DataError(f"colour must be (r, g, b), got {colour!r} for mask {path}")
        if tolerance is None:
            lossy = image.format in _LOSSY_FORMATS
            tolerance = _LOSSY_COLOUR_TOLERANCE if lossy else 0
        rgb = _to_rgb(image, path, "mask")
        if rgb.dtype != np.uint8:
            rgb = np.rint(rgb * 255.0)
        difference = np.abs(rgb.astype(np.int32) - np.asarray(colour, dtype=np.int32))
        foreground = (difference <= tolerance).all(axis=-1)
    elif image.mode in ("P", "PA"):
        foreground = _palette_foreground(image)
    elif image.mode == "1":
        foreground = np.asarray(image)
    elif image.mode.startswith("I;16") or image.mode in ("I", "F", "L", "LA", "La"):
        values = np.asarray(image)
        foreground = _threshold(values[..., 0] if values.ndim == 3 else values)
    else:
        foreground = _threshold(_to_rgb(image, path, "mask").max(axis=-1))
    return torch.from_numpy(np.ascontiguousarray(foreground, dtype=np.float32)[None])


def _header_orientation(image: Image.Image) -> int:
    """The EXIF orientation from the file header, without decoding the pixels."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # an eXIf chunk after the pixel data would need a full decode; PNG masks have none
    return int(image.getexif().get(ExifTags.Base.Orientation, 1))


def image_size(path: str | Path, *, exif_transpose: bool = True) -> tuple[int, int]:
    """The ``(width, height)`` of an image file, read from its header without decoding it.

    Args:
        path: the image or mask file.
        exif_transpose: report the size after the EXIF orientation is applied, as
            :func:`load_image` loads it.

    Returns:
        ``(width, height)`` in pixels.

    Raises:
        DataError: the file is missing or not an image; the message names it.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from cosegkit.data.io import image_size
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     exif = Image.Exif()
        ...     exif[0x0112] = 6  # EXIF orientation: a phone photo to be turned 90 degrees
        ...     Image.new("RGB", (8, 6)).save(f"{tmp}/phone.jpg", exif=exif)
        ...     sizes = image_size(f"{tmp}/phone.jpg"), image_size(f"{tmp}/phone.jpg", exif_transpose=False)
        >>> sizes  # (width, height) as viewers show it, then as stored
        ((6, 8), (8, 6))
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if exif_transpose and _header_orientation(image) in (5, 6, 7, 8):  # the 90-degree ones
                width, height = height, width
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    return width, height


def _size_error(image_path: Path, mask_path: Path, image_wh: tuple[int, int], mask_wh: tuple[int, int]) -> DataError:
    message = (
        f"mask {mask_path} is {mask_wh[0]}x{mask_wh[1]} (width x height) but its image {image_path} is "
        f"{image_wh[0]}x{image_wh[1]}; a mask must have its image's size"
    )
    raw = image_size(image_path, exif_transpose=False)
    if raw != image_wh and raw == mask_wh:
        message += (
            "; the image's EXIF orientation tag rotates it and the mask matches the stored pixels: "
            "load with exif_transpose=False"
        )
    return DataError(message)


def check_pair(image_path: str | Path, mask_path: str | Path, *, exif_transpose: bool = True) -> None:
    """Check, from the file headers only, that a mask has its image's size.

    Args:
        image_path: the image file.
        mask_path: its mask file.
        exif_transpose: compare the sizes after the EXIF orientation is applied.

    Raises:
        DataError: either file is unreadable, or the sizes differ; the message names both files
            and both sizes.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from cosegkit.data.io import check_pair
        >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +ELLIPSIS
        ...     Image.new("RGB", (8, 6)).save(f"{tmp}/cat.jpg")
        ...     Image.new("L", (8, 6)).save(f"{tmp}/cat.png")
        ...     Image.new("L", (6, 8)).save(f"{tmp}/dog.png")
        ...     check_pair(f"{tmp}/cat.jpg", f"{tmp}/cat.png")  # the same size: passes silently
        ...     check_pair(f"{tmp}/cat.jpg", f"{tmp}/dog.png")
        Traceback (most recent call last):
        ...
        cosegkit.data.types.DataError: mask ...dog.png is 6x8 (width x height) but its image ...cat.jpg is 8x6; ...
    """
    image_path, mask_path = Path(image_path), Path(mask_path)
    image_wh = image_size(image_path, exif_transpose=exif_transpose)
    mask_wh = image_size(mask_path, exif_transpose=exif_transpose)
    if image_wh != mask_wh:
        raise _size_error(image_path, mask_path, image_wh, mask_wh)


def load_pair(
    image_path: str | Path,
    mask_path: str | Path | None,
    *,
    colour: tuple[int, int, int] | None = None,
    exif_transpose: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load an image and its mask, checking that their sizes match.

    Args:
        image_path: the image file.
        mask_path: its mask file, or ``None`` for an unlabelled image.
        colour: for colour-coded masks, the colour of the foreground (see :func:`load_mask`).
        exif_transpose: apply the EXIF orientation tag to both.

    Returns:
        ``(image, mask)``: float32 :math:`(3, H, W)` in [0, 1] and :math:`(1, H, W)` in {0, 1}
        (``None`` when ``mask_path`` is ``None``).

    Raises:
        DataError: a file is unreadable, or the mask's size differs from the image's; the
            message names the files and both sizes.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from cosegkit.data.io import load_pair
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.new("RGB", (8, 6), (200, 120, 40)).save(f"{tmp}/cat.jpg")
        ...     mask = Image.new("L", (8, 6))
        ...     mask.paste(255, (2, 1, 6, 4))  # a 4 x 3 foreground box
        ...     mask.save(f"{tmp}/cat.png")
        ...     image, mask = load_pair(f"{tmp}/cat.jpg", f"{tmp}/cat.png")
        ...     unlabelled = load_pair(f"{tmp}/cat.jpg", None)
        >>> image.shape, image.dtype, mask.shape, mask.sum().item()
        (torch.Size([3, 6, 8]), torch.float32, torch.Size([1, 6, 8]), 12.0)
        >>> unlabelled[0].shape, unlabelled[1]
        (torch.Size([3, 6, 8]), None)
    """
    image = load_image(image_path, exif_transpose=exif_transpose)
    if mask_path is None:
        return image, None
    mask = load_mask(mask_path, colour=colour, exif_transpose=exif_transpose)
    if mask.shape[-2:] != image.shape[-2:]:
        image_wh = (image.shape[-1], image.shape[-2])
        mask_wh = (mask.shape[-1], mask.shape[-2])
        raise _size_error(Path(image_path), Path(mask_path), image_wh, mask_wh)
    return image, mask


_COCO_HINT = 'reading COCO annotations needs pycocotools: pip install "cosegkit[coco]"'


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:
        raise ImportError(_COCO_HINT) from error
    return mask_utils


def coco_mask(group: Group, index: int) -> torch.Tensor:
    """The mask of image ``index`` of a :func:`~cosegkit.data.read_coco` group: the union of its instances.

    Args:
        group: a group made by :func:`~cosegkit.data.read_coco`.
        index: the image's position in the group.

    Returns:
        Float32 :math:`(1, H, W)` in {0, 1}, ``(H, W)`` the size the json gives the image.

    Raises:
        ImportError: pycocotools is not installed.
        DataError: the group is not a COCO group, or an annotation cannot be decoded.

    Example:
        Two overlapping cats in one image, given as polygons ``[x1, y1, x2, y2, ...]``: a 4 x 4 and
        a 6 x 4 box that share 2 x 2 pixels.

        >>> import json, tempfile
        >>> from PIL import Image
        >>> from cosegkit.data.io import coco_mask
        >>> from cosegkit.data.readers import read_coco
        >>> coco = {
        ...     "images": [{"id": 1, "file_name": "cats.jpg", "width": 8, "height": 6}],
        ...     "categories": [{"id": 17, "name": "cat"}],
        ...     "annotations": [
        ...         {"id": 1, "image_id": 1, "category_id": 17, "area": 16, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
        ...         {"id": 2, "image_id": 1, "category_id": 17, "area": 24, "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
        ...     ],
        ... }
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with open(f"{tmp}/instances.json", "w") as file:
        ...         json.dump(coco, file)
        ...     Image.new("RGB", (8, 6)).save(f"{tmp}/cats.jpg")
        ...     groups = read_coco(f"{tmp}/instances.json", tmp)
        >>> mask = coco_mask(groups[0], 0)  # reads the json's polygons, not the files
        >>> mask.shape, mask.dtype, mask.sum().item()  # 16 + 24 - 4 pixels
        (torch.Size([1, 6, 8]), torch.float32, 36.0)
    """
    if "segmentations" not in group.meta:
        raise DataError(f"group {group.name!r} was not made by read_coco: its meta has no COCO segmentations")
    mask_utils = _mask_utils()
    height, width = group.meta["image_sizes"][index]
    union = np.zeros((height, width), dtype=np.uint8)
    for annotation_id, segmentation in zip(
        group.meta["annotation_ids"][index], group.meta["segmentations"][index], strict=True
    ):
        try:
            if isinstance(segmentation, list):  # polygons
                if not segmentation:
                    continue
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                if sum(segmentation["counts"]) != height * width:
                    raise ValueError(
                        f"its RLE counts sum to {sum(segmentation['counts'])}, not {height} x {width} pixels"
                    )
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:  # compressed RLE
                rle = segmentation
            with warnings.catch_warnings():
                # pycocotools 2.0.x under NumPy 2 warns on every decode; the result is right
                warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
                decoded = mask_utils.decode(rle)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise DataError(
                f"cannot decode annotation {annotation_id} of {group.meta.get('annotations')} "
                f"(image {group.images[index]}): {error}"
            ) from error
        if decoded.shape != union.shape:
            raise DataError(
                f"annotation {annotation_id} of {group.meta.get('annotations')} is {decoded.shape[1]}x"
                f"{decoded.shape[0]} but its image is {width}x{height} in the json"
            )
        np.maximum(union, decoded, out=union)
    return torch.from_numpy(union.astype(np.float32)[None])


def load_group_item(group: Group, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Load image ``index`` of a group and its mask, whatever reader made the group.

    Dispatches on ``group.meta``: COCO groups (:func:`~cosegkit.data.read_coco`) build the mask from their
    annotations, MSRC groups (:func:`~cosegkit.data.read_msrc`) select ``meta["mask_colour"]`` in the colour
    map, others load the mask file; unlabelled groups (``masks=None``, not COCO) give ``None``.
    The mask's size is checked against the image's.

    COCO images load without EXIF transposition (COCO's annotations are drawn on the stored
    pixels); all others with it (:func:`~cosegkit.data.load_image`).

    Args:
        group: a group from any reader.
        index: the image's position in the group.

    Returns:
        ``(image, mask)``: float32 :math:`(3, H, W)` in [0, 1] and :math:`(1, H, W)` in {0, 1},
        or ``None`` for an unlabelled group.

    Raises:
        IndexError: ``index`` is out of range.
        DataError: a file is unreadable or the mask's size differs from the image's; the message
            names the files.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data.io import load_group_item
        >>> from cosegkit.data.types import Group
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.new("RGB", (8, 6)).save(f"{tmp}/cat.jpg")
        ...     Image.new("L", (8, 6), 255).save(f"{tmp}/cat.png")
        ...     labelled = Group("cats", images=(Path(tmp, "cat.jpg"),), masks=(Path(tmp, "cat.png"),))
        ...     image, mask = load_group_item(labelled, 0)
        ...     unlabelled = load_group_item(Group("cats", images=(Path(tmp, "cat.jpg"),), masks=None), 0)
        >>> image.shape, mask.shape, mask.mean().item()
        (torch.Size([3, 6, 8]), torch.Size([1, 6, 8]), 1.0)
        >>> unlabelled[0].shape, unlabelled[1]
        (torch.Size([3, 6, 8]), None)
    """
    image_path = group.images[index]
    if "segmentations" in group.meta:
        image = load_image(image_path, exif_transpose=False)
        mask = coco_mask(group, index)
        if mask.shape[-2:] != image.shape[-2:]:
            raise DataError(
                f"image {image_path} is {image.shape[-1]}x{image.shape[-2]} (width x height) but "
                f"{group.meta.get('annotations')} gives it {mask.shape[-1]}x{mask.shape[-2]}"
            )
        return image, mask
    if group.masks is None:
        return load_image(image_path), None
    return load_pair(image_path, group.masks[index], colour=group.meta.get("mask_colour"))
