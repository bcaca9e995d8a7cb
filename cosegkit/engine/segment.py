"""Co-segment a user's own images: files in, one mask PNG per image out, at its original size.

A photo collection streams through a :class:`torch.utils.data.DataLoader`: worker processes read
and resize the images of the next sets while the model runs on the current one, and each set's
masks are written by a background thread while the next set runs, so memory does not grow with
the number of photos.

**Sets.** :func:`plan_sets` cuts the images into sets: the images of each folder, in input order,
never mixed with another folder's (``by_folder=False`` mixes them), each folder's images cut into
``ceil(M / n)`` consecutive sets whose sizes differ by at most one, never more than ``n``. No
image is left alone when its folder has two or more: with ``n = 2`` and an odd count one set takes
three. The default ``n`` is the set size the model was trained with (``model.config["set_size"]``
when a trained model stores it), else :data:`DEFAULT_SET_SIZE`.

**Resuming.** ``<out>/manifest.jsonl`` maps each input file to its mask and set. Masks are written
atomically and each set's lines are appended once its masks are on disk (to
``manifest.part<rank>.jsonl`` while the command runs; folded into ``manifest.jsonl`` at the end).
Running the same command again skips every set whose masks are all written and listed, so a
killed run continues where it stopped. ``<out>/segment.json`` records the settings the masks were
made with; other settings are refused rather than mixed.

**Several processes.** Under ``torchrun`` (an initialised ``torch.distributed`` process group),
process ``rank`` of ``world`` takes every ``world``-th set still to do, from the ``rank``-th on.
"""

# n images per set, c channels, h w spatial, s network side

from __future__ import annotations

import ctypes
import glob
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from cosegkit.data.io import _DECODE_ERRORS, _to_rgb, is_image_file, load_image
from cosegkit.data.types import DataError
from cosegkit.engine._files import atomic_write
from cosegkit.engine.evaluate import mask_probs
from cosegkit.errors import CosegValueError
from cosegkit.metrics.functional import get_preset, thresholds

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SET_SIZE",
    "MANIFEST_NAME",
    "balanced_sets",
    "binarize",
    "collect_images",
    "default_workers",
    "overlay",
    "plan_sets",
    "read_for_network",
    "segment_files",
    "stored_setting",
]

DEFAULT_SET_SIZE = 5
"""Images per set when the model stores no training set size. It is ``cosegkit train``'s default
``N``, so a model trained with the defaults sees sets of the size it learnt on."""

DEFAULT_IMAGE_SIZE = 224
"""The network's input side when neither the call nor the model says (CLIP ViT-B-16's own size)."""

MANIFEST_NAME = "manifest.jsonl"
"""The manifest's name in the output folder (one JSON line per input file)."""

SETTINGS_NAME = "segment.json"
_ORIENTATION = 0x0112  # EXIF orientation; 5 to 8 swap width and height
_SWAPPING = frozenset({5, 6, 7, 8})
_WRITES_IN_FLIGHT = 2  # sets whose masks may wait for the writer thread
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_MMAP_THRESHOLD = 128 * 1024  # glibc's starting threshold, held fixed in the workers


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files from paths, folders (their image files, sorted) and glob patterns, without duplicates.

    A path that does not exist and matches no file raises :class:`FileNotFoundError`.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.engine.segment import collect_images
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.jpg", "c.PNG"):
        ...     Image.new("RGB", (8, 6)).save(folder / name, format="PNG" if name.lower().endswith("png") else "JPEG")
        >>> _ = (folder / "notes.txt").write_text("not an image")
        >>> [p.name for p in collect_images([folder])]  # a folder: its image files, sorted
        ['a.jpg', 'b.png', 'c.PNG']
        >>> [p.name for p in collect_images([folder / "b.png", f"{folder}/*.jpg", folder])]  # no duplicates
        ['b.png', 'a.jpg', 'c.PNG']
        >>> collect_images([folder / "missing.png"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        FileNotFoundError: '.../missing.png' is neither a file, a folder nor a pattern matching files
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise FileNotFoundError(f"{str(item)!r} is neither a file, a folder nor a pattern matching files")
            found += [m for m in matches if m.is_file() and is_image_file(m)]
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]  # type: ignore[func-returns-value]


def balanced_sets(length: int, set_size: int | None) -> list[list[int]]:
    """Cut ``length`` images, in order, into sets of at most ``set_size`` that differ by at most one.

    ``ceil(length / set_size)`` consecutive sets, the larger ones first. A set of one image is
    never made from two or more images: with ``set_size=2`` and an odd ``length`` one set takes
    three. ``set_size=None`` makes one set of all of them.

    Example:
        >>> from cosegkit.engine.segment import balanced_sets
        >>> balanced_sets(10, 3)  # not 3 + 3 + 3 + 1
        [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
        >>> balanced_sets(5, 2)  # no image alone
        [[0, 1, 2], [3, 4]]
        >>> balanced_sets(4, 8), balanced_sets(1, 5), balanced_sets(3, None)
        ([[0, 1, 2, 3]], [[0]], [[0, 1, 2]])
    """
    if length < 1:
        raise CosegValueError(f"need at least one image, got {length}")
    if set_size is not None and (isinstance(set_size, bool) or not isinstance(set_size, int) or set_size < 1):
        raise CosegValueError(f"set_size must be a positive integer or None, got {set_size!r}")
    count = 1 if set_size is None else math.ceil(length / set_size)
    if count > 1 and length // count == 1 and set_size != 1:
        count -= 1  # a set of one would have no partner to co-segment with
    base, extra = divmod(length, count)
    sets, start = [], 0
    for k in range(count):
        size = base + (k < extra)
        sets.append(list(range(start, start + size)))
        start += size
    return sets


def plan_sets(
    files: Sequence[str | os.PathLike[str]], set_size: int | None, *, by_folder: bool = True
) -> list[list[int]]:
    """The sets :func:`segment_files` co-segments: lists of indices into ``files``.

    With ``by_folder`` the files of each folder form their own group (groups in the order their
    first file comes); otherwise all files form one group. Each group, in input order, is cut by
    :func:`balanced_sets`.

    Example:
        >>> from cosegkit.engine.segment import plan_sets
        >>> files = ["cats/1.jpg", "cats/2.jpg", "cats/3.jpg", "dogs/1.jpg", "dogs/2.jpg", "cats/4.jpg"]
        >>> plan_sets(files, 3)  # cats: 4 images in 2 + 2, dogs: 2
        [[0, 1], [2, 5], [3, 4]]
        >>> plan_sets(files, 3, by_folder=False)
        [[0, 1, 2], [3, 4, 5]]
    """
    groups: dict[Any, list[int]] = {}
    for i, path in enumerate(files):
        groups.setdefault(Path(path).parent if by_folder else None, []).append(i)
    return [
        [members[j] for j in chunk] for members in groups.values() for chunk in balanced_sets(len(members), set_size)
    ]


def stored_setting(model: torch.nn.Module, key: str) -> int | None:
    """A positive integer the model's ``config`` stores under ``key`` (``"image_size"``, ``"set_size"``), or None.

    A trained :class:`~cosegkit.LCCo` stores how it was trained in ``model.config``; a model saved
    by an older cosegkit, or a :class:`~cosegkit.zeroshot.ZeroShotCoseg`, has no such entry.

    Example:
        >>> import torch
        >>> from cosegkit.engine.segment import stored_setting
        >>> model = torch.nn.Identity()
        >>> stored_setting(model, "image_size") is None
        True
        >>> model.config = {"image_size": 64}
        >>> stored_setting(model, "image_size")
        64
    """
    config = getattr(getattr(model, "module", model), "config", None)
    value = config.get(key) if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def default_workers() -> int:
    """Data-loader worker processes by default: up to 4, and no more than the CPUs.

    Example:
        >>> from cosegkit.engine.segment import default_workers
        >>> 1 <= default_workers() <= 4
        True
    """
    return max(1, min(4, os.cpu_count() or 1))


def binarize(probs: torch.Tensor, preset: str = "ssnm") -> torch.Tensor:
    """Binarise one probability map ``(h, w)`` by a P/J preset's rule (the threshold from this map).

    Example:
        >>> import torch
        >>> binarize(torch.tensor([[0.9, 0.1], [0.2, 0.1]])).tolist()
        [[True, False], [False, False]]
    """
    return probs > thresholds(probs, preset)


def overlay(
    image: torch.Tensor, mask: torch.Tensor, colour: tuple[float, float, float] = (1.0, 0.15, 0.1)
) -> Image.Image:
    """The image ``(3, H, W)`` in [0, 1] with the mask ``(H, W)`` tinted, as a PIL image.

    Masked pixels are blended half and half with ``colour`` (RGB in [0, 1]); the others are
    darkened to 70 %.

    Example:
        >>> import torch
        >>> from cosegkit.engine.segment import overlay
        >>> image = torch.full((3, 4, 6), 0.2)  # a dark grey 6 x 4 image
        >>> mask = torch.zeros(4, 6, dtype=torch.bool)
        >>> mask[1:3, 2:5] = True
        >>> picture = overlay(image, mask)
        >>> picture.mode, picture.size  # PIL sizes are (width, height)
        ('RGB', (6, 4))
        >>> picture.getpixel((3, 2)), picture.getpixel((0, 0))  # inside the mask, outside
        ((153, 45, 38), (36, 36, 36))
    """
    tint = torch.tensor(colour).view(3, 1, 1)
    out = torch.where(mask[None].bool(), 0.5 * image + 0.5 * tint, 0.7 * image)
    return Image.fromarray((out.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


# ---------------------------------------------------------------------- reading
def _check_header(path: Path) -> None:
    """Open the file's header (no decoding): what is not an image at all fails here, naming it."""
    try:
        with Image.open(path) as opened:
            opened.size  # noqa: B018
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


def read_for_network(path: str | os.PathLike[str], side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image resized to ``(3, side, side)`` in [0, 1], and its own ``(H, W)`` as ``load_image`` reads it.

    A JPEG is decoded at a reduced scale (libjpeg's DCT scaling by 1/2, 1/4 or 1/8, never below
    ``side``) before the antialiased resize: for a side of 224 a 2048 x 1536 photo is decoded as
    512 x 384, and no full-size copy exists. Other formats are decoded fully, as :func:`~cosegkit.data.load_image`
    does. The EXIF orientation is applied.

    Raises:
        DataError: the file cannot be decoded; the message names it.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.engine.segment import read_for_network
        >>> path = Path(tempfile.mkdtemp()) / "photo.jpg"
        >>> Image.new("RGB", (640, 480), (200, 120, 40)).save(path)
        >>> image, size = read_for_network(path, 64)
        >>> image.shape, image.dtype, size
        (torch.Size([3, 64, 64]), torch.float32, (480, 640))
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if opened.getexif().get(_ORIENTATION) in _SWAPPING:
                width, height = height, width
            if opened.format == "JPEG":
                opened.draft(None, (side, side))
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)
            pixels = _to_rgb(opened, path, "image")
    except _DECODE_ERRORS as error:
        raise DataError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # a writable copy (PIL arrays are read-only)
    image = image.float() / 255.0 if pixels.dtype == np.uint8 else image.float()
    image = F.interpolate(image[None], size=(side, side), mode="bilinear", antialias=True)[0].clamp(0, 1)
    return image, (height, width)


class _NetworkInputs(Dataset):
    """Item ``i``: ``(i, image (3, s, s) or None, (H, W), error or None)``; errors are returned, not raised."""

    def __init__(self, files: Sequence[Path], side: int) -> None:
        self.files, self.side = list(files), side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, tuple[int, int], str | None]:
        try:
            image, size = read_for_network(self.files[i], self.side)
        except DataError as err:
            return i, None, (0, 0), str(err)
        return i, image, size, None


def _as_list(items: list) -> list:
    return items


def _fixed_mmap_threshold(worker_id: int | None = None) -> bool:
    """Hold glibc's mmap threshold at 128 KiB in this process; True where it was set (glibc only).

    Run in each data-loader worker (``worker_init_fn``). glibc raises the threshold each time a
    block it had mmapped is freed, up to that block's size; after the first decoded photo is
    freed, the next ones (a JPEG decoded at 512 x 384 is 0.6 MB, 2.4 MB once float) come from the
    brk heap instead. A forked worker's heap is its parent's, shared copy-on-write: the freed
    buffers scatter over it, page after page becomes the worker's own copy, and what is freed
    at the heap's middle is not given back. With the tiny test model the two workers' private
    memory grew from 58 to 468 MB between 40 and 1200 photos (``benchmarks/segment_bench.py``);
    with the threshold held, large buffers are mmapped and unmapped when freed, and it stays
    flat (34, 40 and 38 MB for 40, 400 and 1200). Elsewhere (no glibc) nothing is done.

    Args:
        worker_id: the worker's number, which the data loader passes; unused.
    """
    try:
        process = ctypes.CDLL(None)  # the symbols the interpreter is linked with: its C library's
    except (OSError, TypeError):  # Windows has no such handle
        return False
    mallopt = getattr(process, "mallopt", None)
    gnu = getattr(process, "gnu_get_libc_version", None)
    if mallopt is None or gnu is None:  # mallopt's parameter numbers are glibc's
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))


# ---------------------------------------------------------------------- the manifest
def _read_records(out: Path) -> list[dict[str, Any]]:
    """Manifest lines from ``manifest.jsonl`` then the part files; a torn last line is ignored."""
    records = []
    for path in [out / MANIFEST_NAME, *sorted(out.glob("manifest.part*.jsonl"))]:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a killed process was writing
            if isinstance(record, dict) and "image" in record:
                records.append(record)
    return records


def _finished_sets(records: list[dict[str, Any]], out: Path, overlays: bool) -> set[tuple[str, ...]]:
    """The sets (their files, in order) whose every mask (and overlay) is listed and on disk."""
    seen: dict[tuple[str, ...], dict[str, bool]] = {}
    for record in records:
        members = record.get("set_files")
        if not isinstance(members, list):
            continue
        mask = record.get("mask")
        written = isinstance(mask, str) and (out / mask).is_file()
        if written and overlays:
            written = (out / (Path(mask).stem + "_overlay.png")).is_file()
        seen.setdefault(tuple(members), {})[record["image"]] = written or record.get("error") is not None
    return {members for members, images in seen.items() if all(images.get(image, False) for image in members)}


def _settings_conflict(out: Path, settings: dict[str, Any]) -> str | None:
    path = out / SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    flags = {"image_size": "--image-size", "preset": "--preset", "model": "--model"}
    differ = [
        f"{flag} {before.get(key)} there, {settings[key]} now"
        for key, flag in flags.items()
        if before.get(key, settings[key]) != settings[key]
    ]
    return "; ".join(differ) or None


# ---------------------------------------------------------------------- segmenting
def _write_set(
    items: list[tuple[int, tuple[int, int]]],
    probs: torch.Tensor,
    threshold_preset: str,
    files: Sequence[Path],
    names: Sequence[str],
    out: Path,
    overlays: bool,
    records: list[dict[str, Any]],
    manifest: Any,
) -> None:
    """Upsample, binarise and write one set's masks, then append its manifest lines."""
    with torch.inference_mode():
        for k, (i, (h, w)) in enumerate(items):
            full = F.interpolate(probs[k][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            mask = full > thresholds(probs[k], threshold_preset)
            picture = Image.fromarray(mask.numpy().astype(np.uint8) * 255)
            atomic_write(out / names[i], lambda tmp, p=picture: p.save(tmp, format="PNG"))
            if overlays:
                tinted = overlay(load_image(files[i]), mask)
                target = out / (Path(names[i]).stem + "_overlay.png")
                atomic_write(target, lambda tmp, p=tinted: p.save(tmp, format="PNG"))
    manifest.write("".join(json.dumps(r) + "\n" for r in records))
    manifest.flush()


@torch.inference_mode()
def segment_files(
    model: torch.nn.Module,
    files: Sequence[Path],
    out_dir: str | os.PathLike[str],
    *,
    set_size: int | Literal["all"] | None = None,
    image_size: int | None = None,
    by_folder: bool = True,
    preset: str = "ssnm",
    overlays: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    device: torch.device | str = "cpu",
    model_key: str | None = None,
    on_set: Callable[[int, list[Path], Any], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Co-segment ``files`` and write ``<out_dir>/<stem>.png`` (0/255) for each, with a manifest.

    The files are cut into sets by :func:`plan_sets`. Worker processes read each image and resize
    it to ``image_size`` for the network (:func:`read_for_network`); its probability map is
    resized back to the image's own size and binarised by ``preset`` (the threshold is taken from
    the map at network resolution, as the P/J protocol does). ``<out_dir>/manifest.jsonl`` holds
    one line per file: ``{"image", "mask", "set", "set_files"}``, or ``"error"`` for a skipped
    file. Two files with the same stem get their index as a prefix (``0003_<stem>.png``).

    Sets already written by an earlier call into the same folder, with the same settings, are
    skipped (see the module's notes); under ``torchrun`` each process takes its share of the
    sets.

    Args:
        model: an :class:`~cosegkit.LCCo`, or a :class:`~cosegkit.zeroshot.ZeroShotCoseg` (no
            training: a frozen CLIP names and segments the set's common class); not a class
            oracle (:func:`~cosegkit.models.lcco.refuse_class_oracle`).
        files: image files (any size, any format Pillow reads), e.g. from :func:`collect_images`.
        out_dir: output folder (created).
        set_size: images per set at most; ``None``: the model's stored training set size, else
            :data:`DEFAULT_SET_SIZE`; ``"all"``: each folder's images (all images, without
            ``by_folder``) in one set.
        image_size: the network's input side; ``None``: the model's stored training size
            (``model.config["image_size"]``), else :data:`DEFAULT_IMAGE_SIZE`.
        by_folder: never put images of different folders in one set.
        preset: ``"ssnm"``, ``"ufo"`` or ``"fixed"``.
        overlays: also write ``<stem>_overlay.png``.
        skip_bad: skip unreadable files and go on (they are returned and listed in the
            manifest); otherwise a file that is not an image raises
            :class:`~cosegkit.data.DataError` naming it before any mask is written (a file whose
            header reads but whose pixels do not raises when its set comes).
        workers: data-loader worker processes; ``None``: :func:`default_workers`; 0 reads in
            this process.
        device: where to run.
        model_key: what identifies the model (e.g. its folder), recorded with the settings: an
            output folder holding masks of another model is refused instead of resumed.
        on_set: called after each set's forward pass as ``on_set(set_number, files, output)``
            (``set_number`` from 1 in the plan) with the model's output for it (an
            ``LCCoOutput``, or a ``ZeroShotOutput`` whose ``common_class`` names the class found).
        log: called with one-line progress notes (the plan, sets already done).

    Returns:
        ``(mask paths of every readable file, in input order; [(skipped file, reason), ...])``.

    Example:
        Three images of different sizes and one broken file, co-segmented by a tiny random
        LCCo (its masks mean nothing; a trained model's do):

        >>> import json, tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from cosegkit.engine.segment import collect_images, segment_files
        >>> from cosegkit.testing import tiny_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name, size in (("cat", (48, 40)), ("dog", (64, 64)), ("fox", (30, 50))):
        ...     Image.new("RGB", size, (200, 120, 40)).save(folder / f"{name}.png")
        >>> _ = (folder / "broken.png").write_bytes(b"not an image")
        >>> files = collect_images([folder])
        >>> [p.name for p in files]
        ['broken.png', 'cat.png', 'dog.png', 'fox.png']
        >>> model = tiny_model()
        >>> written, skipped = segment_files(model, files, folder / "masks", image_size=64, skip_bad=True, workers=0)
        >>> [p.name for p in written], [p.name for p, reason in skipped]
        (['cat.png', 'dog.png', 'fox.png'], ['broken.png'])
        >>> for path in written:  # one 0/255 mask per image, at the image's own size
        ...     mask, image = np.asarray(Image.open(path)), np.asarray(Image.open(folder / path.name))
        ...     print(path.name, mask.shape, mask.dtype, mask.shape == image.shape[:2],
        ...           set(np.unique(mask).tolist()) <= {0, 255})
        cat.png (40, 48) uint8 True True
        dog.png (64, 64) uint8 True True
        fox.png (50, 30) uint8 True True
        >>> lines = (folder / "masks" / "manifest.jsonl").read_text().splitlines()
        >>> [(Path(r["image"]).name, r["mask"], r["set"]) for r in map(json.loads, lines)]
        [('broken.png', None, None), ('cat.png', 'cat.png', 1), ('dog.png', 'dog.png', 1), ('fox.png', 'fox.png', 1)]

        No trained model: a ``ZeroShotCoseg`` over a frozen CLIP, reporting the class each set
        was found to share (a random CLIP's choice, here); 3 images with ``set_size=2`` make one
        set of 3 rather than leave one alone:

        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot import ZeroShotCoseg
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "fox"])
        >>> zs = ZeroShotCoseg(clip, background=["grass", "sky"])
        >>> found = []
        >>> def report(number, set_files, output):
        ...     found.append((number, len(set_files), zs.classnames[output.common_class[0]]))
        >>> written, _ = segment_files(zs, files[1:], folder / "zs", image_size=32, set_size=2, workers=0,
        ...                            on_set=report)
        >>> len(written), [(k, n) for k, n, name in found], all(name in zs.classnames for k, n, name in found)
        (3, [(1, 3)], True)
    """
    from cosegkit.models.lcco import refuse_class_oracle

    refuse_class_oracle(model, "segment new images")
    get_preset(preset)
    if not files:
        raise CosegValueError("no images to segment")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CosegValueError(f"the output folder {str(out_dir)!r} is a file; pass a folder as --out")
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise CosegValueError(
            f"workers must be a non-negative integer (0: read in this process), got {workers!r}; set --workers"
        )
    if set_size is None:
        set_size = stored_setting(model, "set_size") or DEFAULT_SET_SIZE
    if set_size == "all":
        set_size = None
    elif isinstance(set_size, bool) or not isinstance(set_size, int) or set_size < 1:
        raise CosegValueError(f"set_size must be a positive integer, 'all' or None, got {set_size!r}; set --set-size")
    side = image_size if image_size is not None else stored_setting(model, "image_size") or DEFAULT_IMAGE_SIZE
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        raise CosegValueError(f"image_size must be a positive integer, got {side!r}; set --image-size")
    rank, world = (torch_dist.get_rank(), torch_dist.get_world_size()) if _distributed() else (0, 1)

    # which files are images at all: decided before anything is written
    readable: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in map(Path, files):
        try:
            _check_header(path)
            readable.append(path)
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}; pass --skip-bad (skip_bad=True) to segment the other images") from err
            skipped.append((path, str(err)))
    if not readable:
        raise DataError("none of the images could be read; check the inputs, or the --skip-bad messages above")
    stems = [p.stem for p in readable]
    names = [f"{s}.png" for s in stems]
    if len(set(stems)) != len(stems):
        names = [f"{i:04d}_{s}.png" for i, s in enumerate(stems)]  # different folders, same names
    plan = plan_sets(readable, set_size, by_folder=by_folder)
    set_files = [[str(readable[i]) for i in chunk] for chunk in plan]

    key = model_key or type(getattr(model, "module", model)).__name__
    settings = {"image_size": side, "preset": preset, "model": key}
    conflict = _settings_conflict(out, settings)
    if conflict:
        raise CosegValueError(
            f"--out {str(out_dir)!r} holds masks made with other settings ({conflict}); pass another --out, "
            f"or delete {SETTINGS_NAME} and {MANIFEST_NAME} there to overwrite them"
        )
    finished = _finished_sets(_read_records(out), out, overlays)
    done = [k for k, members in enumerate(set_files) if tuple(members) in finished]
    _barrier(world)  # every process has read the folder before any writes to it
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (out / SETTINGS_NAME).is_file():
        atomic_write(out / SETTINGS_NAME, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=2) + "\n"))
    todo = [k for k in range(len(plan)) if tuple(set_files[k]) not in finished]
    mine = todo[rank::world]
    if log is not None:
        sizes = sorted({len(chunk) for chunk in plan})
        log(
            f"{len(readable)} images in {len(plan)} sets of {' or '.join(map(str, sizes))} "
            f"({'each folder apart' if by_folder else 'folders mixed'}), network side {side}"
            + (f"; {len(done)} sets already written in {out}, continuing" if done else "")
            + (f"; process {rank} of {world} takes {len(mine)} sets" if world > 1 else "")
        )

    model.eval()
    loader = DataLoader(
        _NetworkInputs(readable, side),
        batch_sampler=[plan[k] for k in mine],
        num_workers=workers if mine else 0,
        collate_fn=_as_list,
        worker_init_fn=_fixed_mmap_threshold,
    )
    with (
        open(out / f"manifest.part{rank}.jsonl", "a", encoding="utf-8") as manifest,
        ThreadPoolExecutor(max_workers=1) as writer,
    ):
        pending: list[Future] = []
        for k, batch in zip(mine, loader, strict=True):
            entry = {"set": k + 1, "set_files": set_files[k]}
            records, good = [], []
            for i, image, size, error in batch:  # in the set's order
                if error is None:
                    good.append((i, image, size))
                    records.append({"image": str(readable[i]), "mask": names[i], **entry})
                elif skip_bad:
                    records.append({"image": str(readable[i]), "mask": None, **entry, "error": error})
                else:
                    raise DataError(f"{error}; pass --skip-bad (skip_bad=True) to segment the other images")
            output, probs = None, torch.empty(0)
            if good:
                output = model(torch.stack([image for _, image, _ in good])[None].to(device))
                probs = mask_probs(output)[0, :, 0].cpu()  # (n, s, s)
            while len(pending) >= _WRITES_IN_FLIGHT:
                pending.pop(0).result()
            items = [(i, size) for i, _, size in good]
            pending.append(
                writer.submit(_write_set, items, probs, preset, readable, names, out, overlays, records, manifest)
            )
            if on_set is not None and output is not None:
                on_set(k + 1, [readable[i] for i, _, _ in good], output)
        for future in pending:
            future.result()
    _barrier(world)
    if rank == 0:
        _fold_manifest(out, files, skipped)
    _barrier(world)
    records = {r["image"]: r for r in _read_records(out)}
    written = [out / r["mask"] for p in readable if (r := records.get(str(p))) and r.get("mask")]
    errors = [(p, r["error"]) for p in readable if (r := records.get(str(p))) and r.get("error")]
    return written, skipped + errors


def _fold_manifest(out: Path, files: Sequence[Path], skipped: Sequence[tuple[Path, str]]) -> None:
    """Write ``manifest.jsonl``: this call's files in input order, then other files listed before."""
    latest: dict[str, dict[str, Any]] = {}
    for record in _read_records(out):
        latest[record["image"]] = record  # the part files come last: their lines win
    for path, reason in skipped:
        latest[str(path)] = {"image": str(path), "mask": None, "set": None, "error": reason}
    position = {str(p): n for n, p in enumerate(files)}
    ordered = sorted(latest, key=lambda image: (position.get(image, len(position)), image))
    text = "".join(json.dumps(latest[image]) + "\n" for image in ordered)
    atomic_write(out / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for part in out.glob("manifest.part*.jsonl"):
        part.unlink()


def _distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def _barrier(world: int) -> None:
    if world > 1:
        torch_dist.barrier()
