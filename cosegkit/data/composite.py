r"""A co-segmentation world composed of real object cut-outs, from any reader's images and masks.

Every image of a generated set holds ``K`` objects cut out of masked photos (one per photo, so
``K`` different photos per image): one of the set's common (*target*) class plus ``K - 1``
distractors of other classes, pasted onto a background. Any reader's groups work
(:func:`~cosegkit.data.get_reader`: ``pascal_voc``, ``folder``, ``coco``...): a group's
``class_name`` is its objects' class, each (image, mask) pair gives one cut-out. The cut-outs
are loaded once, cropped to their mask's bounding box and cached in memory at a working
resolution, so generation is NumPy and Pillow work on small arrays (several hundred
128 x 128 images per second on one core; ``benchmarks/composite_speed.py``).

What the world promises (the argument of :mod:`cosegkit.data.synthetic`, for real objects):

- **Deterministic by seed.** A sample's ``seed`` (an int or a tuple of ints) fixes everything.
  Item ``i`` of :class:`CompositeCosegDataset` is ``world.sample_set(set_size, seed=(seed, i))``,
  so set ``i`` is made without making sets ``0 .. i - 1``, and data loading with any number of
  workers gives the same data.
- **The target is defined by the set alone.** From one image, which object is the target
  cannot be told better than by chance (:math:`1/K`):

  1. The target class :math:`t` is uniform over the :math:`C` classes, an image's :math:`K - 1`
     distractor classes a uniform draw without replacement from the other :math:`C - 1`; so the
     classes of an image are a uniform :math:`K`-subset and the target is uniform among them.
     A distractor class may recur in several images of a set (it is drawn per image); the
     target's is in every image.
  2. An object's cut-out is a uniform draw among its class's cut-outs, whatever its role (the
     target's cut-outs of one set come from distinct photos while the class has enough of them:
     an image still sees a uniform draw). Readers whose photos hold several classes
     (``voc_segmentation``, ``coco``, ``msrc``) are the one exception: a distractor's cut-out is
     drawn among the photos the image does not use yet, the target's first, so the distractor
     cannot come from the target's photo while the target can come from any. Its scale, flip, colour jitter and place are drawn
     i.i.d. per object, without looking at its role; the draw order is a uniform permutation.
  3. Occlusion is constrained symmetrically: places are redrawn until *every* object keeps at
     least ``min_visible`` of its pixels; after ``max_tries`` a role-blind fallback puts the
     objects in distinct cells of a grid, shrunk to fit, without overlap.
  4. The caption names the classes present in a uniformly random order.
  5. The background is a photo **whose classes are all absent from the image** (and that gave
     no cut-out to it), box-averaged to an ``8 x 8`` grid of cells, a random ``6 x 6`` window of
     it upsampled smoothly to the image (flipped at random): the photo's colours and coarse
     layout, none of its shapes. Being of no class present, it favours no object of the image.
     (A procedural background would be as role-blind, but further from real scenes.)

- **Split by photo.** ``photos=`` builds the world from a subset of the photos (cut-outs and
  backgrounds alike), e.g. :func:`split_photos`'s training or held-out part; every generated
  object records its source photo (``source_photos`` of :class:`CompositeSet`), every image its
  background photo.

Example:
    >>> import tempfile
    >>> from cosegkit.data.composite import CompositeWorld
    >>> from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
    >>> with tempfile.TemporaryDirectory() as root:  # any masked groups will do; here, written ones
    ...     groups = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32), root, 3)
    ...     world = CompositeWorld(groups, image_size=48, seed=0)
    >>> len(world.classes), len(world.cutouts)
    (5, 15)
    >>> s = world.sample_set(4, seed=1)
    >>> s.images.shape, s.masks.shape, all(s.target in present for present in s.present_classes)
    (torch.Size([4, 3, 48, 48]), torch.Size([4, 1, 48, 48]), True)

Axis legend: ``n`` images per set, ``c`` channels (RGB), ``h w`` spatial (``S x S``), ``k``
objects in an image.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from cosegkit.data.io import load_group_item
from cosegkit.data.synthetic import (
    Seed,
    SyntheticBatch,
    SyntheticCosegDataset,
    _caption,
    _check_seed,
    _make_rng,
    _positive_int,
    _range_pair,
    _sample_batch,
)
from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

__all__ = ["CompositeCosegDataset", "CompositeSet", "CompositeWorld", "CutOut", "ObjectPose", "split_photos"]

_THUMB = 8  # background photos are box-averaged to THUMB x THUMB cells
_WINDOW = 6  # a random WINDOW x WINDOW window of the cells is upsampled to the image


@dataclass(frozen=True)
class CutOut:
    """One object cut out of a masked photo, cropped to its mask's bounding box.

    Attributes:
        rgba: the cut-out at the world's working resolution, ``(h, w, 4)`` uint8 RGBA (alpha
            255 on the object, 0 off it).
        class_index: the object's class, an index into ``CompositeWorld.classes``.
        photo: the source photo's path, as the reader gave it.

    Example:
        >>> import numpy as np
        >>> cut = CutOut(np.zeros((3, 4, 4), dtype=np.uint8), class_index=0, photo="cat.jpg")
        >>> cut.rgba.shape, cut.photo
        ((3, 4, 4), 'cat.jpg')
    """

    rgba: np.ndarray
    class_index: int
    photo: str


@dataclass(frozen=True)
class ObjectPose:
    """Where and how one object was pasted: its box in the image, flip and colour gain.

    Attributes:
        y: the box's top row, in pixels.
        x: the box's left column, in pixels.
        height: the box's height (the resized cut-out's), in pixels.
        width: the box's width, in pixels.
        flipped: whether the cut-out was mirrored left to right.
        gain: the RGB multipliers of its colour jitter.

    Example:
        >>> ObjectPose(y=2, x=5, height=10, width=8, flipped=False, gain=(1.0, 0.9, 1.1)).width
        8
    """

    y: int
    x: int
    height: int
    width: int
    flipped: bool
    gain: tuple[float, float, float]


@dataclass(frozen=True)
class CompositeSet:
    """One generated image set of the composite world.

    Attributes:
        images: ``(N, 3, S, S)`` float32 RGB in [0, 1].
        masks: ``(N, 1, S, S)`` float32 in {0, 1}: the target's visible pixels.
        target: the target's class index into ``CompositeWorld.classes``.
        target_name: the target's class name.
        captions: one caption per image naming its classes in a random order, e.g.
            ``"a dog, a person and a car"``.
        present_classes: per image, the class of each object in draw order (bottom first).
        visible_fractions: per image, aligned with ``present_classes``: the fraction of each
            object's pixels left visible by the objects drawn over it.
        source_photos: per image, aligned with ``present_classes``: the photo each object was
            cut out of.
        background_photos: per image, the photo its background was made from.
        poses: per image, aligned with ``present_classes``: each object's :class:`ObjectPose`.
        object_maps: ``(N, 1, S, S)`` int64: the draw index of the object visible at each
            pixel, ``-1`` on the background; ``object_maps[i] == j`` is object ``j``'s visible
            mask in image ``i``.
        class_maps: ``(N, 1, S, S)`` int64: the class visible at each pixel, ``-1`` on the
            background.

    Example:
        >>> import torch
        >>> from cosegkit.data.composite import CompositeWorld
        >>> world = CompositeWorld.from_arrays(  # four one-photo classes, made up
        ...     [torch.rand(3, 20, 20)] * 4, [torch.ones(1, 20, 20)] * 4, ["a", "b", "c", "d"], image_size=32)
        >>> s = world.sample_set(2, seed=0)
        >>> s.object_maps.shape, s.class_maps.dtype, len(s.source_photos[0]) == len(s.present_classes[0])
        (torch.Size([2, 1, 32, 32]), torch.int64, True)
        >>> torch.equal(s.masks, (s.class_maps == s.target).float())
        True
    """

    images: torch.Tensor
    masks: torch.Tensor
    target: int
    target_name: str
    captions: list[str]
    present_classes: list[list[int]]
    visible_fractions: list[list[float]]
    source_photos: list[list[str]]
    background_photos: list[str]
    poses: list[list[ObjectPose]]
    object_maps: torch.Tensor
    class_maps: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)


def _photo_key(path: str | pathlib.Path) -> str:
    return str(path)


def split_photos(
    groups: Sequence[Group], held_out: float = 0.3, *, seed: int = 0
) -> tuple[frozenset[str], frozenset[str]]:
    """Split the groups' photos into a training part and a held-out part, class by class.

    Each class's photos are shuffled by ``seed`` and ``round(held_out * count)`` of them (at
    least one, and at least one left for training) are held out. A photo listed under several
    classes goes to the part its first class sends it to. Pass either part as
    ``CompositeWorld(groups, photos=...)``.

    Args:
        groups: groups from any reader.
        held_out: the fraction of each class's photos held out, in (0, 1).
        seed: fixes the split.

    Returns:
        ``(train_photos, held_out_photos)``: disjoint sets of photo paths (as strings).

    Raises:
        CosegValueError: ``held_out`` is outside (0, 1), or a class has fewer than 2 photos.

    Example:
        >>> from pathlib import Path
        >>> from cosegkit.data.types import Group
        >>> group = Group("cat", tuple(Path(f"{i}.jpg") for i in range(10)), None)
        >>> train, held = split_photos([group], 0.3, seed=0)
        >>> len(train), len(held), train.isdisjoint(held)
        (7, 3, True)
    """
    if not 0 < float(held_out) < 1:
        raise CosegValueError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
    by_class: dict[str, list[str]] = {}
    for group in groups:
        by_class.setdefault(group.class_name, []).extend(_photo_key(p) for p in group.images)
    rng = np.random.default_rng(_check_seed(seed))
    train: set[str] = set()
    held: set[str] = set()
    for name, photos in by_class.items():
        unique = sorted(set(photos) - train - held)
        if len(unique) < 2:
            raise CosegValueError(f"class {name!r} has {len(unique)} unassigned photo(s); a split needs at least 2")
        order = rng.permutation(len(unique))
        n_held = min(max(round(float(held_out) * len(unique)), 1), len(unique) - 1)
        held.update(unique[i] for i in order[:n_held])
        train.update(unique[i] for i in order[n_held:])
    return frozenset(train), frozenset(held)


class CompositeWorld:
    """Real object cut-outs from masked photos, and a generator of co-segmentation sets.

    Construction loads every selected photo once: each (image, mask) pair with a non-empty mask
    gives a :class:`CutOut` (the photo's other pixels are unused), and every photo a background
    thumbnail. Images without a mask (``masks=None`` groups) and empty masks are skipped with a
    warning naming how many.

    Args:
        groups: groups from any reader; groups with the same ``class_name`` form one class.
        image_size: side ``S`` of the square images, in pixels (>= 16).
        objects_per_image: ``K`` objects per image, an int or an inclusive ``(low, high)``
            range drawn uniformly per image (the target plus ``K - 1`` distractors).
        seed: the world's seed, mixed into every seeded sample (``sample_set(seed=s)`` draws
            from ``(world seed, *s)``): worlds of different seeds give different sets for the
            same sample seeds. Construction itself is not random.
        photos: build the world from these photos only (paths or strings, as the reader gave
            them), e.g. one part of :func:`split_photos`; ``None``: every photo.
        object_size: the longer side of a pasted object, as a fraction of ``S``, an inclusive
            ``(low, high)`` range drawn uniformly per object.
        min_visible: the smallest fraction of its pixels every object keeps visible, in (0, 1].
        max_tries: random placements tried per image before the non-overlapping grid fallback.
        jitter: colour jitter strength: each object's RGB is multiplied by a brightness in
            ``[1 - jitter, 1 + jitter]`` times a per-channel gain in ``[1 - jitter/2, 1 + jitter/2]``.

    Attributes:
        classes: the class names, in class-index order (first appearance in ``groups``).
        cutouts: every :class:`CutOut`.

    Example:
        >>> import torch
        >>> world = CompositeWorld.from_arrays(
        ...     [torch.rand(3, 30, 20) for _ in range(6)], [torch.ones(1, 30, 20)] * 6,
        ...     ["cat", "dog", "cow", "cat", "dog", "cow"], image_size=32, objects_per_image=2)
        >>> world.classes, world.num_classes
        (['cat', 'dog', 'cow'], 3)
        >>> images, masks, targets = world.sample_batch(2, 3, seed=0)
        >>> images.shape, masks.shape, targets.shape
        (torch.Size([2, 3, 3, 32, 32]), torch.Size([2, 3, 1, 32, 32]), torch.Size([2]))
    """

    def __init__(
        self,
        groups: Sequence[Group],
        *,
        image_size: int = 128,
        objects_per_image: int | tuple[int, int] = (2, 3),
        seed: int = 0,
        photos: Collection[str | pathlib.Path] | None = None,
        object_size: float | tuple[float, float] = (0.35, 0.7),
        min_visible: float = 0.5,
        max_tries: int = 30,
        jitter: float = 0.2,
    ) -> None:
        self._configure(image_size, objects_per_image, seed, object_size, min_visible, max_tries, jitter)
        if isinstance(groups, Group) or not all(isinstance(g, Group) for g in groups):
            raise CosegValueError("expected a sequence of Group (what the readers return), e.g. get_reader('folder')(root)")
        keep = None if photos is None else {_photo_key(p) for p in photos}
        items = []
        for group in groups:
            for index, path in enumerate(group.images):
                if keep is None or _photo_key(path) in keep:
                    items.append((group, index))
        if not items:
            raise DataError("no photo of the groups is in photos=; pass paths as the reader gives them")
        loaded = []
        for group, index in items:
            image, mask = load_group_item(group, index)
            loaded.append((image, mask, group.class_name, _photo_key(group.images[index])))
        self._build(loaded)

    @classmethod
    def from_arrays(
        cls,
        images: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        class_names: Sequence[str],
        *,
        photos: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> CompositeWorld:
        """A world from images and masks already in memory.

        Args:
            images: float ``(3, H, W)`` RGB in [0, 1], one per photo.
            masks: ``(1, H, W)`` or ``(H, W)`` in {0, 1}, one per photo.
            class_names: the class of each photo's object.
            photos: a name per photo (default ``"0"``, ``"1"``, ...).
            **kwargs: the constructor's keyword arguments (``photos=`` excepted).

        Returns:
            A :class:`CompositeWorld`.

        Example:
            >>> import torch
            >>> world = CompositeWorld.from_arrays([torch.rand(3, 9, 9)] * 4, [torch.ones(9, 9)] * 4, "abcd", image_size=32)
            >>> world.cutouts[0].rgba.shape, world.cutouts[3].photo
            ((9, 9, 4), '3')
        """
        if not len(images) == len(masks) == len(class_names):
            raise CosegValueError(
                f"expected as many images, masks and class names, got {len(images)}, {len(masks)}, {len(class_names)}"
            )
        names = [str(i) for i in range(len(images))] if photos is None else [str(p) for p in photos]
        if len(names) != len(images) or len(set(names)) != len(names):
            raise CosegValueError("photos must give a distinct name to every image")
        self = cls.__new__(cls)
        self._configure(
            kwargs.pop("image_size", 128),
            kwargs.pop("objects_per_image", (2, 3)),
            kwargs.pop("seed", 0),
            kwargs.pop("object_size", (0.35, 0.7)),
            kwargs.pop("min_visible", 0.5),
            kwargs.pop("max_tries", 30),
            kwargs.pop("jitter", 0.2),
        )
        if kwargs:
            raise CosegValueError(f"unexpected keyword arguments {sorted(kwargs)}")
        loaded = []
        for image, mask, name, photo in zip(images, masks, class_names, names, strict=True):
            mask = torch.as_tensor(mask)
            loaded.append((torch.as_tensor(image), mask if mask.ndim == 3 else mask[None], str(name), photo))
        self._build(loaded)
        return self

    def _configure(
        self,
        image_size: Any,
        objects_per_image: Any,
        seed: Any,
        object_size: Any,
        min_visible: Any,
        max_tries: Any,
        jitter: Any,
    ) -> None:
        self.image_size = _positive_int(image_size, "image_size", 16)
        k_lo, k_hi = _range_pair(objects_per_image, "objects_per_image")
        k_lo = _positive_int(k_lo, "objects_per_image (low)")
        k_hi = _positive_int(k_hi, "objects_per_image (high)", k_lo)
        self.objects_per_image = (k_lo, k_hi)
        s_lo, s_hi = (float(x) for x in _range_pair(object_size, "object_size"))
        if not 0 < s_lo <= s_hi <= 1:
            raise CosegValueError(f"object_size must satisfy 0 < low <= high <= 1, got {object_size!r}")
        if s_lo * self.image_size < 4:
            raise CosegValueError(f"objects of {s_lo} * {self.image_size} px are under 4 px; raise object_size or image_size")
        self.object_size = (s_lo, s_hi)
        if not 0 < float(min_visible) <= 1:
            raise CosegValueError(f"min_visible must be in (0, 1], got {min_visible!r}")
        self.min_visible = float(min_visible)
        self.max_tries = _positive_int(max_tries, "max_tries")
        if not 0 <= float(jitter) < 1:
            raise CosegValueError(f"jitter must be in [0, 1), got {jitter!r}")
        self.jitter = float(jitter)
        self.seed = _check_seed(seed, "seed")

    def _build(self, loaded: list[tuple[torch.Tensor, torch.Tensor | None, str, str]]) -> None:
        """Cut-outs at the working resolution and background thumbnails from loaded photos."""
        working = math.ceil(self.object_size[1] * self.image_size)  # the largest side ever pasted
        self.classes: list[str] = []
        self.cutouts: list[CutOut] = []
        self._images: list[Image.Image] = []  # the cut-outs as PIL images, for resizing
        photo_classes: dict[str, set[int]] = {}
        thumbs: dict[str, np.ndarray] = {}
        skipped = 0
        for image, mask, name, photo in loaded:
            if name not in self.classes:
                self.classes.append(name)
            c = self.classes.index(name)
            photo_classes.setdefault(photo, set()).add(c)
            rgb = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            if photo not in thumbs:
                small = Image.fromarray(rgb).resize((_THUMB, _THUMB), Image.Resampling.BOX)
                thumbs[photo] = np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255
            on = None if mask is None else mask[0].numpy() > 0.5
            if on is None or not on.any():
                skipped += 1
                continue
            rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            rgba = np.concatenate([rgb[y0:y1, x0:x1], (on[y0:y1, x0:x1, None] * 255).astype(np.uint8)], axis=2)
            cut = Image.fromarray(rgba, "RGBA")
            longer = max(cut.size)
            if longer > working:
                w, h = cut.size
                cut = cut.resize((max(1, round(w * working / longer)), max(1, round(h * working / longer))), Image.Resampling.BOX)
            self.cutouts.append(CutOut(np.asarray(cut), c, photo))
            self._images.append(cut)
        if skipped:
            warnings.warn(f"{skipped} photo(s) without a mask or with an empty mask give no cut-out", stacklevel=3)
        self.num_classes = len(self.classes)
        by_class = [[i for i, cut in enumerate(self.cutouts) if cut.class_index == c] for c in range(self.num_classes)]
        empty = [self.classes[c] for c, members in enumerate(by_class) if not members]
        if empty:
            raise DataError(f"classes {empty} have no non-empty mask; give every class at least one masked photo")
        if not self.objects_per_image[1] < self.num_classes:
            raise CosegValueError(
                f"the world has {self.num_classes} classes; it needs more than the most objects per image "
                f"({self.objects_per_image[1]}), or images could hold every class and the target would be "
                f"undefined: lower objects_per_image or add classes"
            )
        self._by_class = [np.array(members) for members in by_class]
        self._fingerprint: str | None = None
        self._photos = sorted(thumbs)
        self._thumbs = np.stack([thumbs[p] for p in self._photos])
        # photo x class: whether the photo holds the class (its background shows it)
        self._photo_has = np.zeros((len(self._photos), self.num_classes), dtype=bool)
        for i, p in enumerate(self._photos):
            self._photo_has[i, sorted(photo_classes[p])] = True
        t = (np.arange(self.image_size) + 0.5) / self.image_size * (_WINDOW - 1)
        i0 = np.minimum(np.floor(t).astype(np.int64), _WINDOW - 2)
        w = (t - i0).astype(np.float32)
        self._up = np.zeros((self.image_size, _WINDOW), dtype=np.float32)
        self._up[np.arange(self.image_size), i0] = 1 - w
        self._up[np.arange(self.image_size), i0 + 1] = w

    @property
    def class_names(self) -> list[str]:
        """The class names, in class-index order (e.g. a CLIP prompt vocabulary)."""
        return list(self.classes)

    @property
    def photos(self) -> list[str]:
        """Every photo the world uses (for cut-outs or backgrounds), sorted."""
        return list(self._photos)

    def fingerprint(self) -> str:
        """A short hash of what the world generates: its settings and the pixels it draws from.

        Equal for worlds built from the same photos with the same settings, wherever the photos
        lie on disk; it names cached work done on the world (e.g. a CLIP pre-trained on it,
        :func:`~cosegkit.engine.pretrain.pretrain_clip`).

        Example:
            >>> import torch
            >>> images, masks = [torch.full((3, 9, 9), i / 4) for i in range(4)], [torch.ones(9, 9)] * 4
            >>> world = CompositeWorld.from_arrays(images, masks, "abcd", image_size=32)
            >>> again = CompositeWorld.from_arrays(images, masks, "abcd", image_size=32)
            >>> other = CompositeWorld.from_arrays(images[::-1], masks, "abcd", image_size=32)
            >>> len(world.fingerprint()), world.fingerprint() == again.fingerprint(), world.fingerprint() == other.fingerprint()
            (16, True, False)
        """
        if self._fingerprint is None:
            settings = {
                "world": "composite",
                "classes": self.classes,
                "image_size": self.image_size,
                "objects_per_image": list(self.objects_per_image),
                "object_size": list(self.object_size),
                "min_visible": self.min_visible,
                "max_tries": self.max_tries,
                "jitter": self.jitter,
                "seed": self.seed,
            }
            digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
            for cut in self.cutouts:
                digest.update(np.array([cut.class_index, *cut.rgba.shape], dtype=np.int64).tobytes())
                digest.update(np.ascontiguousarray(cut.rgba).tobytes())
            digest.update(np.ascontiguousarray(self._thumbs).tobytes())
            digest.update(self._photo_has.tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"CompositeWorld({self.num_classes} classes, {len(self.cutouts)} cut-outs, image_size={self.image_size}, "
            f"objects_per_image={self.objects_per_image}, object_size={self.object_size}, min_visible={self.min_visible})"
        )

    # ------------------------------------------------------------------------ sampling

    def sample_set(
        self,
        set_size: int,
        *,
        seed: Seed | None = None,
        generator: np.random.Generator | torch.Generator | None = None,
        target: int | None = None,
    ) -> CompositeSet:
        """Generate one image set whose images share a target class.

        Args:
            set_size: images in the set, ``N >= 1``.
            seed: an int or a tuple of ints that fixes the set (same seed and world seed,
                same set); as in :meth:`~cosegkit.data.synthetic.SyntheticWorld.sample_set`,
                trailing zeros are ignored.
            generator: a NumPy or torch generator to draw from instead of ``seed``. With
                neither, a seed is drawn from torch's global RNG.
            target: the target's class index; drawn uniformly when ``None``.

        Returns:
            A :class:`CompositeSet`.

        Shape:
            - images: :math:`(N, 3, S, S)`, masks, object and class maps: :math:`(N, 1, S, S)`.

        Example:
            >>> import torch
            >>> world = CompositeWorld.from_arrays([torch.rand(3, 9, 9)] * 4, [torch.ones(9, 9)] * 4, "abcd", image_size=32)
            >>> s = world.sample_set(3, seed=7, target=2)
            >>> s.target, s.target_name, s.masks.unique().tolist()
            (2, 'c', [0.0, 1.0])
        """
        n = _positive_int(set_size, "set_size")
        rng = _make_rng(seed, generator)
        if seed is not None:
            words = _check_seed(seed)
            world = self.seed if isinstance(self.seed, list) else [self.seed]
            rng = np.random.default_rng([*world, *(words if isinstance(words, list) else [words])])
        if target is None:
            t = int(rng.integers(self.num_classes))
        elif isinstance(target, (int, np.integer)) and not isinstance(target, bool) and 0 <= target < self.num_classes:
            t = int(target)
        else:
            raise CosegValueError(f"target must be a class index in [0, {self.num_classes}), got {target!r}")
        own = self._by_class[t]
        # the target's cut-outs: distinct photos across the set while the class has enough
        target_cuts = rng.choice(own, size=n, replace=n > len(own))
        s = self.image_size
        images = np.empty((n, 3, s, s), dtype=np.float32)
        owners = np.empty((n, s, s), dtype=np.int64)
        captions, present, fractions, sources, backgrounds, poses = [], [], [], [], [], []
        for i in range(n):
            classes, frac, photos, background, caption, pose = self._draw_image(
                rng, t, int(target_cuts[i]), images[i], owners[i]
            )
            poses.append(pose)
            present.append(classes)
            fractions.append(frac)
            sources.append(photos)
            backgrounds.append(background)
            captions.append(caption)
        class_maps = np.empty_like(owners)
        for i, classes in enumerate(present):
            class_maps[i] = np.array([*classes, -1], dtype=np.int64)[owners[i]]
        class_maps_t = torch.from_numpy(class_maps).unsqueeze(1)
        return CompositeSet(
            images=torch.from_numpy(images),
            masks=(class_maps_t == t).float(),
            target=t,
            target_name=self.classes[t],
            captions=captions,
            present_classes=present,
            visible_fractions=fractions,
            source_photos=sources,
            background_photos=backgrounds,
            poses=poses,
            object_maps=torch.from_numpy(owners).unsqueeze(1),
            class_maps=class_maps_t,
        )

    def sample_batch(
        self,
        batch_size: int,
        set_size: int,
        *,
        seed: Seed | None = None,
        generator: np.random.Generator | torch.Generator | None = None,
    ) -> SyntheticBatch:
        """Generate ``batch_size`` sets of ``set_size`` images, stacked.

        With a seed, set ``b`` is ``sample_set(set_size, seed=(seed, b))`` (for a tuple seed,
        ``(*seed, b)``), the same as item ``b`` of ``CompositeCosegDataset(world, set_size,
        length, seed=seed)``. With a generator, the sets are drawn from it one after another.

        Returns:
            A :class:`~cosegkit.data.synthetic.SyntheticBatch` ``(images, masks, targets)``,
            as the synthetic world's.

        Shape:
            - images: :math:`(B, N, 3, S, S)`, masks: :math:`(B, N, 1, S, S)`, targets: :math:`(B,)`.

        Example:
            >>> import torch
            >>> world = CompositeWorld.from_arrays([torch.rand(3, 9, 9)] * 4, [torch.ones(9, 9)] * 4, "abcd", image_size=32)
            >>> world.sample_batch(2, 3, seed=0).images.shape
            torch.Size([2, 3, 3, 32, 32])
        """
        return _sample_batch(self, batch_size, set_size, seed, generator)

    # ------------------------------------------------------------------------ drawing

    def _draw_image(
        self, rng: np.random.Generator, target: int, target_cut: int, canvas: np.ndarray, owner: np.ndarray
    ) -> tuple[list[int], list[float], list[str], str, str, list[ObjectPose]]:
        """Draw one image into ``canvas (3, S, S)``; ``owner (S, S)`` gets each pixel's draw index."""
        s = self.image_size
        k = int(rng.integers(self.objects_per_image[0], self.objects_per_image[1] + 1))
        others = rng.choice(self.num_classes - 1, size=k - 1, replace=False)
        others = others + (others >= target)
        cuts = [target_cut]
        used = {self.cutouts[target_cut].photo}
        for c in others.tolist():  # a uniform cut-out of the class from a photo not used yet
            pool = [i for i in self._by_class[c] if self.cutouts[i].photo not in used]
            if not pool:
                raise DataError(f"class {self.classes[c]!r} has no cut-out from a photo not already in the image")
            cuts.append(int(pool[int(rng.integers(len(pool)))]))
            used.add(self.cutouts[cuts[-1]].photo)
        order = rng.permutation(k)  # draw order, bottom first
        cuts = [cuts[j] for j in order]
        classes = [self.cutouts[i].class_index for i in cuts]

        # every object: the same role-blind draws of size, flip and colour jitter
        sizes = rng.uniform(*self.object_size, size=k) * s
        flips = rng.random(k) < 0.5
        gains = rng.uniform(1 - self.jitter, 1 + self.jitter, size=(k, 1)) * rng.uniform(
            1 - self.jitter / 2, 1 + self.jitter / 2, size=(k, 3)
        )
        rgbs, alphas = [], []
        for j, i in enumerate(cuts):
            rgb, alpha = self._resize(self._images[i], sizes[j], bool(flips[j]))
            rgbs.append(rgb * gains[j].astype(np.float32)[:, None, None])
            alphas.append(alpha)

        for _ in range(self.max_tries):
            ys = [int(rng.integers(0, s - a.shape[0] + 1)) for a in alphas]
            xs = [int(rng.integers(0, s - a.shape[1] + 1)) for a in alphas]
            fractions = self._layout(alphas, ys, xs, owner)
            if min(fractions) >= self.min_visible:
                break
        else:  # role-blind fallback: distinct cells of a grid, objects shrunk to fit, no overlap
            g = math.ceil(math.sqrt(k))
            cell = s // g
            cells = rng.permutation(g * g)[:k]
            for j, i in enumerate(cuts):
                if max(alphas[j].shape) > cell:
                    rgb, alphas[j] = self._resize(self._images[i], cell, bool(flips[j]))
                    rgbs[j] = rgb * gains[j].astype(np.float32)[:, None, None]
            ys = [int((c // g) * cell + rng.integers(0, cell - a.shape[0] + 1)) for c, a in zip(cells, alphas, strict=True)]
            xs = [int((c % g) * cell + rng.integers(0, cell - a.shape[1] + 1)) for c, a in zip(cells, alphas, strict=True)]
            fractions = self._layout(alphas, ys, xs, owner)

        background = self._background(rng, set(classes), used, canvas)
        for j in range(k):
            h, w = alphas[j].shape
            region = canvas[:, ys[j] : ys[j] + h, xs[j] : xs[j] + w]
            region[:, alphas[j]] = rgbs[j][:, alphas[j]]
        np.clip(canvas, 0.0, 1.0, out=canvas)
        caption = _caption([self.classes[classes[j]] for j in rng.permutation(k)])
        poses = [
            ObjectPose(ys[j], xs[j], *alphas[j].shape, bool(flips[j]), tuple(float(g) for g in gains[j]))
            for j in range(k)
        ]
        return classes, fractions, [self.cutouts[i].photo for i in cuts], background, caption, poses

    def _resize(self, rgba: Image.Image, longer: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        """A cut-out with its longer side ``longer`` px: RGB ``(3, h, w)`` in [0, 1] and mask ``(h, w)``."""
        w, h = rgba.size
        scale = longer / max(w, h)
        size = (min(max(1, round(w * scale)), self.image_size), min(max(1, round(h * scale)), self.image_size))
        out = rgba.resize(size, Image.Resampling.BILINEAR) if size != rgba.size else rgba
        if flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        a = np.asarray(out)
        return a[..., :3].transpose(2, 0, 1).astype(np.float32) / np.float32(255), a[..., 3] >= 128

    def _layout(self, alphas: list[np.ndarray], ys: list[int], xs: list[int], owner: np.ndarray) -> list[float]:
        """Paint draw indices into ``owner`` in draw order; each object's visible fraction."""
        owner.fill(-1)
        for j, a in enumerate(alphas):
            h, w = a.shape
            owner[ys[j] : ys[j] + h, xs[j] : xs[j] + w][a] = j
        fractions = []
        for j, a in enumerate(alphas):
            h, w = a.shape
            area = int(a.sum())
            visible = int((owner[ys[j] : ys[j] + h, xs[j] : xs[j] + w][a] == j).sum())
            fractions.append(visible / area if area else 0.0)
        return fractions

    def _background(self, rng: np.random.Generator, classes: set[int], used: set[str], canvas: np.ndarray) -> str:
        """A heavily low-passed photo of no class in the image; returns the photo's path."""
        eligible = ~self._photo_has[:, sorted(classes)].any(1)
        candidates = [i for i in np.flatnonzero(eligible).tolist() if self._photos[i] not in used]
        if not candidates:
            raise DataError(f"no photo is free of the classes {[self.classes[c] for c in sorted(classes)]} for a background")
        p = candidates[int(rng.integers(len(candidates)))]
        y0, x0 = (int(v) for v in rng.integers(0, _THUMB - _WINDOW + 1, size=2))
        control = self._thumbs[p][:, y0 : y0 + _WINDOW, x0 : x0 + _WINDOW]
        if rng.random() < 0.5:
            control = control[:, :, ::-1]
        canvas[:] = self._up @ control @ self._up.T
        return self._photos[p]


# ---------------------------------------------------------------------------- dataset


class CompositeCosegDataset(SyntheticCosegDataset):
    """A map-style dataset of composite sets: item ``i`` is a fixed function of ``(seed, i)``.

    Item ``i`` is ``world.sample_set(set_size, seed=(seed, i))`` as the dict of
    :class:`~cosegkit.data.synthetic.SyntheticCosegDataset` (``images``, ``masks``, ``target``,
    ``captions``), so a trainer can take either world.

    Args:
        world: the :class:`CompositeWorld` to draw from.
        set_size: images per set, ``N``.
        length: number of items.
        seed: the dataset's seed.

    Example:
        >>> import torch
        >>> world = CompositeWorld.from_arrays([torch.rand(3, 9, 9)] * 4, [torch.ones(9, 9)] * 4, "abcd", image_size=32)
        >>> ds = CompositeCosegDataset(world, set_size=3, length=5)
        >>> ds[4]["images"].shape, ds[4]["target"].dtype, len(ds[4]["captions"])
        (torch.Size([3, 3, 32, 32]), torch.int64, 3)
    """

    world_type = CompositeWorld
