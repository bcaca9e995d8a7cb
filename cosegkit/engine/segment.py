"""Co-segment a user's own images: files in, one mask PNG per image out, at its original size."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cosegkit.data.io import is_image_file, load_image
from cosegkit.data.sampling import eval_chunks
from cosegkit.data.types import DataError
from cosegkit.engine.evaluate import mask_probs
from cosegkit.errors import CosegValueError
from cosegkit.metrics.functional import get_preset, thresholds

__all__ = ["binarize", "collect_images", "overlay", "segment_files"]


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


@torch.inference_mode()
def segment_files(
    model: torch.nn.Module,
    files: Sequence[Path],
    out_dir: str | os.PathLike[str],
    *,
    set_size: int | None = None,
    image_size: int = 224,
    preset: str = "ssnm",
    overlays: bool = False,
    skip_bad: bool = False,
    device: torch.device | str = "cpu",
    on_set: Callable[[list[Path], Any], None] | None = None,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Co-segment ``files`` and write ``<out_dir>/<stem>.png`` (0/255) for each.

    All files form one set, or consecutive sets of ``set_size`` (the last one smaller).
    Each image is resized to ``image_size`` for the network; its probability map is resized
    back to the image's own size and binarised by ``preset`` (the threshold is taken from
    the map at network resolution, as the P/J protocol does).

    Args:
        model: an :class:`~cosegkit.LCCo`, or a ``cosegkit.zeroshot.ZeroShotCoseg`` (no
            training: a frozen CLIP names and segments the set's common class).
        files: image files (any size, any format Pillow reads).
        out_dir: output folder (created).
        set_size: images per set; ``None`` puts all of them in one set.
        image_size: the network's input side.
        preset: ``"ssnm"``, ``"ufo"`` or ``"fixed"``.
        overlays: also write ``<stem>_overlay.png``.
        skip_bad: skip unreadable files and go on (they are returned); otherwise the first
            unreadable file raises :class:`~cosegkit.data.DataError` naming it, before any
            mask is written.
        device: where to run.
        on_set: called after each set as ``on_set(files, output)`` with the set's files and
            the model's output for it (an ``LCCoOutput``, or a ``ZeroShotOutput`` whose
            ``common_class`` names the class found), e.g. to report it.

    Returns:
        ``(written mask paths, [(skipped file, reason), ...])``.

    Example:
        Three images of different sizes and one broken file, co-segmented as one set by a tiny
        random LCCo (its masks mean nothing; a trained model's do):

        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from cosegkit import LCCo
        >>> from cosegkit.engine.segment import collect_images, segment_files
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()  # a tiny random CLIP, "coseg-test-tiny", for offline examples
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name, size in (("cat", (48, 40)), ("dog", (64, 64)), ("fox", (30, 50))):
        ...     Image.new("RGB", size, (200, 120, 40)).save(folder / f"{name}.png")
        >>> _ = (folder / "broken.png").write_bytes(b"not an image")
        >>> files = collect_images([folder])
        >>> [p.name for p in files]
        ['broken.png', 'cat.png', 'dog.png', 'fox.png']
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None,
        ...              clip_model="coseg-test-tiny", clip_pretrained=None, classnames=["cat", "dog", "fox"],
        ...              decoder_channels=(16, 16, 8, 8), heads=2, clip_heads=2, top_k=2)
        >>> written, skipped = segment_files(model, files, folder / "masks", image_size=64, skip_bad=True)
        >>> [p.name for p in written], [p.name for p, reason in skipped]
        (['cat.png', 'dog.png', 'fox.png'], ['broken.png'])
        >>> for path in written:  # one 0/255 mask per image, at the image's own size
        ...     mask, image = np.asarray(Image.open(path)), np.asarray(Image.open(folder / path.name))
        ...     print(path.name, mask.shape, mask.dtype, mask.shape == image.shape[:2],
        ...           set(np.unique(mask).tolist()) <= {0, 255})
        cat.png (40, 48) uint8 True True
        dog.png (64, 64) uint8 True True
        fox.png (50, 30) uint8 True True

        No trained model: a ``ZeroShotCoseg`` over a frozen CLIP, reporting the class each set
        was found to share (a random CLIP's choice, here):

        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot import ZeroShotCoseg
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "fox"])
        >>> zs = ZeroShotCoseg(clip, background=["grass", "sky"])
        >>> found = []
        >>> written, _ = segment_files(zs, files[1:], folder / "zs", image_size=32, set_size=2,
        ...                            on_set=lambda f, out: found.append((len(f), zs.classnames[out.common_class[0]])))
        >>> len(written), [n for n, name in found], all(name in zs.classnames for n, name in found)
        (3, [2, 1], True)
    """
    get_preset(preset)
    if not files:
        raise CosegValueError("no images to segment")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise CosegValueError(f"the output folder {str(out_dir)!r} is a file; pass a folder as --out")
    images: list[torch.Tensor] = []
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        try:
            images.append(load_image(path))
            kept.append(Path(path))
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}; pass --skip-bad (skip_bad=True) to segment the other images") from err
            skipped.append((Path(path), str(err)))
    if not kept:
        raise DataError("none of the images could be read")
    stems = [p.stem for p in kept]
    if len(set(stems)) != len(stems):
        stems = [f"{i:04d}_{p.stem}" for i, p in enumerate(kept)]  # different folders, same names
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    written: list[Path] = []
    for chunk in eval_chunks(len(kept), set_size):
        batch = torch.stack(
            [
                F.interpolate(images[i][None], size=(image_size, image_size), mode="bilinear", antialias=True)[0]
                for i in chunk
            ]
        ).clamp(0, 1)
        output = model(batch[None].to(device))
        probs = mask_probs(output)[0, :, 0].cpu()  # (n, S, S)
        for k, i in enumerate(chunk):
            h, w = images[i].shape[-2:]
            full = F.interpolate(probs[k][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            mask = full > thresholds(probs[k], preset)
            target = out / f"{stems[i]}.png"
            Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(target)
            written.append(target)
            if overlays:
                overlay(images[i], mask).save(out / f"{stems[i]}_overlay.png")
        if on_set is not None:
            on_set([kept[i] for i in chunk], output)
    return written, skipped
