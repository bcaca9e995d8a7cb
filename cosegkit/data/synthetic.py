r"""A procedurally generated co-segmentation world, deterministic by seed.

Objects are coloured, textured shapes (``"red striped circle"``, ``"cyan dotted star"``...) on
smooth low-contrast backgrounds. Every image of a set holds the set's common (*target*) object
plus distractor objects of other classes, at random places, sizes and rotations, overlapping
each other; the mask is the visible part of the target. Generation is vectorised NumPy over
pixel grids (several hundred 128 x 128 images per second on one core), so co-segmentation can
be learned and measured on a CPU in minutes, and an installation checked in seconds.

What the world promises:

- **Deterministic by seed.** The world's ``seed`` picks its classes; a sample's ``seed`` (an
  int or a tuple of ints) fixes everything else. Item ``i`` of
  :class:`SyntheticCosegDataset` is ``world.sample_set(set_size, seed=(seed, i))``, so data
  loading with any number of workers gives the same data. (Bit-identical on one platform and
  NumPy version; other CPUs may round a few boundary pixels differently.)
- **The target is defined by the set alone.** Look at one image: which of its objects is the
  target cannot be told better than by chance (:math:`1/K` for :math:`K` objects). Look at the
  set: the target is the class every image shares. The argument:

  1. The target class :math:`t` is uniform over the :math:`C` classes, and an image's
     :math:`K - 1` distractors are a uniform draw without replacement from the other
     :math:`C - 1`. So the set :math:`S` of classes in an image is a uniform :math:`K`-subset
     of all classes, and given :math:`S` the target is uniform over :math:`S`:
     :math:`P(t = c \mid S) = 1/K` for every :math:`c \in S`. Equivalently, for a class
     :math:`c`, the distribution of the other classes present is the same whether :math:`c` is
     the target (:math:`K - 1` uniform others) or a distractor (the target, uniform among the
     others, plus :math:`K - 2` uniform others: again :math:`K - 1` uniform others).
  2. Everything else about an object — size, position, rotation, texture phase, colour jitter,
     draw depth — is drawn i.i.d. per object, without looking at its role; the draw order is a
     uniform permutation of the :math:`K` objects; :math:`K` is drawn before any class.
  3. Occlusion is constrained symmetrically: a layout is redrawn until *every* object keeps at
     least ``min_visible`` of its pixels visible (a target-only constraint would make "the
     least occluded object" a better-than-chance guess). After ``max_tries`` failed layouts a
     role-blind fallback puts the objects in distinct cells of a grid, without overlap.
  4. The caption lists the objects in a uniformly random order (never target first).

  Hence the joint distribution of (image, caption) is invariant under swapping the roles of any
  two objects in it, and a single-image model's posterior over which object is the target is
  uniform over the objects present. Over the world, a class is the target of an image as often
  as it is any one particular distractor of an image: per image, :math:`P(c \text{ is the
  target}) = 1/C` and :math:`P(c \text{ is a distractor}) = (K - 1)/C`, i.e. :math:`1/C` per
  distractor slot. Across a set of :math:`N` images the target is in every image, while a
  given distractor class is in all of them with probability about
  :math:`((K - 1)/(C - 1))^{N}`, so a set-aware model can find it. The tests check each of
  these claims statistically.

Example:
    >>> from cosegkit.data.synthetic import SyntheticWorld
    >>> world = SyntheticWorld(num_classes=12, image_size=64, seed=0)
    >>> s = world.sample_set(4, seed=1)
    >>> s.images.shape, s.masks.shape, s.target_name == world.classes[s.target].name
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 1, 64, 64]), True)
    >>> all(s.target in present for present in s.present_classes)
    True

Axis legend: ``b`` batch of sets, ``n`` images per set, ``c`` channels (RGB), ``h w`` spatial
(``S x S``), ``k`` objects in an image.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

__all__ = [
    "COLOURS",
    "SHAPES",
    "TEXTURES",
    "ObjectClass",
    "SyntheticBatch",
    "SyntheticCosegDataset",
    "SyntheticSet",
    "SyntheticWorld",
    "write_folder_dataset",
]

#: Shapes of the vocabulary. Each fits in the unit disc of its local frame and stays
#: distinguishable under rotation (the "diamond" is an elongated rhombus, not a turned square).
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
    "crescent",
    "heart",
)

#: The vocabulary's colours, each name with its RGB in [0, 1].
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.72, 0.18),
    "blue": (0.12, 0.28, 0.95),
    "yellow": (0.96, 0.90, 0.10),
    "purple": (0.58, 0.16, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "cyan": (0.10, 0.86, 0.92),
    "white": (0.97, 0.97, 0.97),
}

#: Textures of the vocabulary, drawn in the object's colour and a dark shade of it.
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

_SHADE = 0.45  # the second colour of a texture: the object's colour times this
_NOISE_SD = 0.02  # per-pixel Gaussian grain added to every image


@dataclass(frozen=True)
class ObjectClass:
    """One class of the synthetic vocabulary: a shape in a colour with a texture.

    Attributes:
        shape: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS`.
        texture: one of :data:`TEXTURES`.

    Example:
        >>> ObjectClass("circle", "red", "striped").name
        'red striped circle'
    """

    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        """The class in words, ``"<colour> <texture> <shape>"``."""
        return f"{self.colour} {self.texture} {self.shape}"


@dataclass(frozen=True)
class SyntheticSet:
    """One generated image set.

    Attributes:
        images: ``(N, 3, S, S)`` float32 RGB in [0, 1].
        masks: ``(N, 1, S, S)`` float32 in {0, 1}: the target's visible pixels.
        target: the target's class index into ``SyntheticWorld.classes``.
        target_name: the target's class name.
        captions: one caption per image, naming its objects in a random order, e.g.
            ``"a blue plain square and a red striped circle"``.
        present_classes: per image, the class indices of its objects in draw order (bottom
            first; the last one is fully visible).
        visible_fractions: per image, aligned with ``present_classes``: the fraction of each
            object's pixels left visible by the objects drawn over it.
        class_maps: ``(N, 1, S, S)`` int64: the class index of the object visible at each
            pixel, ``-1`` on the background. ``class_maps == c`` is class ``c``'s visible mask.

    Example:
        >>> import torch
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> s = SyntheticWorld(num_classes=6, image_size=32, seed=0).sample_set(3, seed=1)
        >>> len(s), s.images.shape, s.masks.shape, s.class_maps.shape, s.class_maps.dtype
        (3, torch.Size([3, 3, 32, 32]), torch.Size([3, 1, 32, 32]), torch.Size([3, 1, 32, 32]), torch.int64)
        >>> torch.equal(s.masks, (s.class_maps == s.target).float())  # the target's visible pixels
        True
        >>> all(s.target in present for present in s.present_classes)
        True
    """

    images: torch.Tensor
    masks: torch.Tensor
    target: int
    target_name: str
    captions: list[str]
    present_classes: list[list[int]]
    visible_fractions: list[list[float]]
    class_maps: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)


class SyntheticBatch(NamedTuple):
    """A batch of sets: ``images (B, N, 3, S, S)``, ``masks (B, N, 1, S, S)``, ``targets (B,)``.

    Example:
        >>> from cosegkit.data.synthetic import SyntheticBatch, SyntheticWorld
        >>> batch = SyntheticWorld(num_classes=5, image_size=32, seed=0).sample_batch(2, 3, seed=0)
        >>> isinstance(batch, SyntheticBatch), batch.images.shape, batch.masks.shape
        (True, torch.Size([2, 3, 3, 32, 32]), torch.Size([2, 3, 1, 32, 32]))
        >>> batch.targets.shape, batch.targets.dtype
        (torch.Size([2]), torch.int64)
        >>> images, masks, targets = batch  # a named tuple: it unpacks
    """

    images: torch.Tensor
    masks: torch.Tensor
    targets: torch.Tensor


Seed = int | Sequence[int]


def _check_seed(seed: Any, name: str = "seed") -> int | list[int]:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        words = [int(seed)]
    elif isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) > 0:
        words = list(seed)
    else:
        raise CosegValueError(f"expected {name} to be a non-negative int or a tuple of them, got {seed!r}")
    if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 0 for w in words):
        raise CosegValueError(f"expected {name} to be a non-negative int or a tuple of them, got {seed!r}")
    return [int(w) for w in words] if len(words) > 1 else int(words[0])


def _make_rng(seed: Seed | None, generator: np.random.Generator | torch.Generator | None) -> np.random.Generator:
    """A NumPy generator from a seed, a NumPy/torch generator, or torch's global RNG."""
    if seed is not None and generator is not None:
        raise CosegValueError("pass either seed or generator, not both")
    if generator is not None:
        if isinstance(generator, np.random.Generator):
            return generator
        if isinstance(generator, torch.Generator):
            return np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
        raise CosegValueError(
            f"expected generator to be a numpy.random.Generator or torch.Generator, got {type(generator).__name__}"
        )
    if seed is None:  # reproducible under torch.manual_seed
        return np.random.default_rng(int(torch.randint(0, 2**62, ())))
    return np.random.default_rng(_check_seed(seed))


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise CosegValueError(f"expected {name} to be an int >= {minimum}, got {value!r}")
    return int(value)


def _range_pair(value: Any, name: str) -> tuple[Any, Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2:
        return value[0], value[1]
    raise CosegValueError(f"expected {name} to be a number or a (low, high) pair, got {value!r}")


# ---------------------------------------------------------------------------- shapes


def _radial_polygon(radii: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Edges of a polygon with vertices at equally spaced angles and the given radii."""
    m = len(radii)
    angles = 2 * np.pi * np.arange(m) / m
    ax, ay = np.array(radii) * np.cos(angles), np.array(radii) * np.sin(angles)
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    return ax, ay, bx - ax, by - ay


_POLYGONS: dict[str, tuple[np.ndarray, ...]] = {
    "square": _radial_polygon([1.0] * 4),
    "triangle": _radial_polygon([1.0] * 3),
    "hexagon": _radial_polygon([1.0] * 6),
    "diamond": _radial_polygon([1.0, 0.55] * 2),
    "star": _radial_polygon([1.0, 0.42] * 5),
}


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether local points ``(u, v)`` (units of the object's radius) lie inside ``shape``."""
    if shape in _POLYGONS:  # star-shaped polygon: find the edge facing each point's angle
        ax, ay, ex, ey = _POLYGONS[shape]
        m = len(ax)
        k = (np.floor(np.arctan2(v, u) * (m / (2 * np.pi))).astype(np.int64)) % m
        return ex[k] * (v - ay[k]) - ey[k] * (u - ax[k]) >= 0
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((au <= 0.95) & (av <= 0.3))
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.64)
    if shape == "heart":  # (x² + y² − 1)³ − x² y³ ≤ 0, scaled and centred into the unit disc
        x, y = 1.3 * u, 0.125 - 1.3 * v
        q = x * x + y * y - 1.0
        return q * q * q - x * x * y * y * y <= 0
    raise KeyError(f"unknown shape {shape!r}; valid shapes are {list(SHAPES)}")


def _texture(texture: str, u: np.ndarray, v: np.ndarray, phase: np.ndarray) -> np.ndarray | None:
    """Where the texture shows the object's own colour (``None``: everywhere)."""
    if texture == "plain":
        return None
    if texture == "striped":
        return (np.floor(u * 2.5 + phase[0]) % 2) == 0
    if texture == "checkered":
        return ((np.floor(u * 1.7 + phase[0]) + np.floor(v * 1.7 + phase[1])) % 2) == 0
    if texture == "dotted":
        du = (u * 1.7 + phase[0]) % 1.0 - 0.5
        dv = (v * 1.7 + phase[1]) % 1.0 - 0.5
        return du * du + dv * dv > 0.09
    raise KeyError(f"unknown texture {texture!r}; valid textures are {list(TEXTURES)}")


def _caption(names: Sequence[str]) -> str:
    phrases = [("an " if name[0] in "aeiou" else "a ") + name for name in names]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


@dataclass
class _Placed:
    """An object's pose and its rasterised footprint in its bounding box."""

    y0: int
    x0: int
    u: np.ndarray
    v: np.ndarray
    inside: np.ndarray


# ---------------------------------------------------------------------------- the world


def _sample_batch(world: Any, batch_size: int, set_size: int, seed: Any, generator: Any) -> SyntheticBatch:
    """``batch_size`` sets of ``world.sample_set``, stacked: set ``j`` from seed ``(*seed, j)`` or drawn from ``generator``."""
    b = _positive_int(batch_size, "batch_size")
    if seed is not None and generator is not None:
        raise CosegValueError("pass either seed or generator, not both")
    if generator is not None:
        rng = _make_rng(None, generator)
        sets = [world.sample_set(set_size, generator=rng) for _ in range(b)]
    else:
        base = _check_seed(seed) if seed is not None else int(torch.randint(0, 2**62, ()))
        words = base if isinstance(base, list) else [base]
        sets = [world.sample_set(set_size, seed=(*words, j)) for j in range(b)]
    return SyntheticBatch(
        images=torch.stack([x.images for x in sets]),
        masks=torch.stack([x.masks for x in sets]),
        targets=torch.tensor([x.target for x in sets], dtype=torch.int64),
    )


class SyntheticWorld:
    """A vocabulary of synthetic object classes and a generator of co-segmentation sets.

    The full vocabulary is every combination of :data:`SHAPES`, :data:`COLOURS` and
    :data:`TEXTURES` (320 classes); the world uses ``num_classes`` of them, drawn by ``seed``.
    Construction is cheap (no images are made until sampled).

    Args:
        num_classes: classes in the world; more than the most objects per image (otherwise
            every image would hold every class and the set could not tell the target).
        image_size: side ``S`` of the square images, in pixels (>= 16).
        objects_per_image: ``K`` objects per image, an int or an inclusive ``(low, high)``
            range drawn uniformly per image (the target plus ``K - 1`` distractors).
        seed: picks the world's classes from the full vocabulary.
        object_size: object radius as a fraction of ``image_size``, an inclusive
            ``(low, high)`` range drawn uniformly per object.
        min_visible: the smallest fraction of its pixels that every object (target or not)
            keeps visible under the objects drawn over it, in (0, 1].
        max_tries: random layouts tried per image before the non-overlapping grid fallback.

    Attributes:
        classes: the world's :class:`ObjectClass` list; a class index is a position in it.

    Example:
        >>> world = SyntheticWorld(num_classes=5, image_size=32, seed=0)
        >>> [c.name for c in world.classes][:2]
        ['orange dotted triangle', 'red dotted star']
        >>> images, masks, targets = world.sample_batch(2, 3, seed=0)
        >>> images.shape, masks.shape, targets.shape
        (torch.Size([2, 3, 3, 32, 32]), torch.Size([2, 3, 1, 32, 32]), torch.Size([2]))
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 128,
        objects_per_image: int | tuple[int, int] = (2, 4),
        seed: int = 0,
        *,
        object_size: float | tuple[float, float] = (0.12, 0.22),
        min_visible: float = 0.5,
        max_tries: int = 30,
    ) -> None:
        total = len(SHAPES) * len(COLOURS) * len(TEXTURES)
        self.image_size = _positive_int(image_size, "image_size", 16)
        k_lo, k_hi = _range_pair(objects_per_image, "objects_per_image")
        k_lo = _positive_int(k_lo, "objects_per_image (low)")
        k_hi = _positive_int(k_hi, "objects_per_image (high)", k_lo)
        if k_hi > 64:
            raise CosegValueError(f"objects_per_image is at most 64, got {objects_per_image!r}")
        self.objects_per_image = (k_lo, k_hi)
        self.num_classes = _positive_int(num_classes, "num_classes")
        if not k_hi < self.num_classes <= total:
            raise CosegValueError(
                f"num_classes must be more than the most objects per image ({k_hi}) and at most "
                f"{total} (the whole vocabulary), got {num_classes}; with num_classes <= {k_hi} "
                f"images could hold every class and the target would be undefined"
            )
        s_lo, s_hi = (float(x) for x in _range_pair(object_size, "object_size"))
        if not 0 < s_lo <= s_hi <= 0.5:
            raise CosegValueError(f"object_size must satisfy 0 < low <= high <= 0.5, got {object_size!r}")
        if s_lo * self.image_size < 2:
            raise CosegValueError(
                f"objects of radius {s_lo} * {self.image_size} px are under 2 px; raise object_size or image_size"
            )
        self.object_size = (s_lo, s_hi)
        if not 0 < float(min_visible) <= 1:
            raise CosegValueError(f"min_visible must be in (0, 1], got {min_visible!r}")
        self.min_visible = float(min_visible)
        self.max_tries = _positive_int(max_tries, "max_tries")
        self.seed = _check_seed(seed, "seed")
        picked = np.sort(np.random.default_rng(self.seed).choice(total, self.num_classes, replace=False))
        self.classes: list[ObjectClass] = []
        colours = list(COLOURS)
        for combo in picked.tolist():
            shape, rest = divmod(combo, len(colours) * len(TEXTURES))
            colour, texture = divmod(rest, len(TEXTURES))
            self.classes.append(ObjectClass(SHAPES[shape], colours[colour], TEXTURES[texture]))
        self._rgb = np.array([COLOURS[c.colour] for c in self.classes], dtype=np.float32)
        self._grids: dict[Any, np.ndarray] = {}

    @property
    def class_names(self) -> list[str]:
        """The class names, in class-index order (e.g. a CLIP prompt vocabulary)."""
        return [c.name for c in self.classes]

    def fingerprint(self) -> str:
        """A short hash of the world's settings, which fix everything it generates.

        It names cached work done on the world (e.g. a CLIP pre-trained on it,
        :func:`~cosegkit.engine.pretrain.pretrain_clip`).

        Example:
            >>> world = SyntheticWorld(num_classes=6, image_size=32)
            >>> world.fingerprint() == SyntheticWorld(num_classes=6, image_size=32).fingerprint()
            True
            >>> world.fingerprint() == SyntheticWorld(num_classes=6, image_size=32, seed=1).fingerprint()
            False
        """
        settings = {
            "world": "synthetic",
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "objects_per_image": list(self.objects_per_image),
            "object_size": list(self.object_size),
            "min_visible": self.min_visible,
            "max_tries": self.max_tries,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"SyntheticWorld(num_classes={self.num_classes}, image_size={self.image_size}, "
            f"objects_per_image={self.objects_per_image}, seed={self.seed}, object_size={self.object_size}, "
            f"min_visible={self.min_visible})"
        )

    # ------------------------------------------------------------------------ sampling

    def sample_set(
        self,
        set_size: int,
        *,
        seed: Seed | None = None,
        generator: np.random.Generator | torch.Generator | None = None,
        target: int | None = None,
    ) -> SyntheticSet:
        """Generate one image set whose images share a target class.

        Args:
            set_size: images in the set, ``N >= 1``.
            seed: an int or a tuple of ints that fixes the set (same seed, same set). Seeds
                go through :class:`numpy.random.SeedSequence`, which ignores trailing zeros:
                ``s``, ``(s,)`` and ``(s, 0)`` give the same set, so item 0 of
                ``SyntheticCosegDataset(..., seed=s)`` is ``sample_set(seed=s)``. Keep
                training and held-out data apart by their first word (e.g. seeds 0 and 1).
            generator: a NumPy or torch generator to draw from instead of ``seed``. With
                neither, a seed is drawn from torch's global RNG (so ``torch.manual_seed``
                makes it reproducible).
            target: the target's class index; drawn uniformly when ``None``.

        Returns:
            A :class:`SyntheticSet`.

        Shape:
            - images: :math:`(N, 3, S, S)`, masks and class maps: :math:`(N, 1, S, S)`.

        Example:
            >>> world = SyntheticWorld(num_classes=8, image_size=48)
            >>> s = world.sample_set(3, seed=7, target=2)
            >>> s.images.shape, s.target, s.masks.unique().tolist()
            (torch.Size([3, 3, 48, 48]), 2, [0.0, 1.0])
            >>> world.classes[2].name in s.captions[0]
            True
        """
        n = _positive_int(set_size, "set_size")
        rng = _make_rng(seed, generator)
        if target is None:
            t = int(rng.integers(self.num_classes))
        elif isinstance(target, (int, np.integer)) and not isinstance(target, bool) and 0 <= target < self.num_classes:
            t = int(target)
        else:
            raise CosegValueError(f"target must be a class index in [0, {self.num_classes}), got {target!r}")
        s = self.image_size
        images = np.empty((n, 3, s, s), dtype=np.float32)
        owners = np.empty((n, s, s), dtype=np.int16)
        captions, present, fractions = [], [], []
        for i in range(n):
            classes, frac, caption = self._draw_image(rng, t, images[i], owners[i])
            present.append(classes)
            fractions.append(frac)
            captions.append(caption)
        class_maps = np.full((n, s, s), -1, dtype=np.int64)
        for i, classes in enumerate(present):
            lookup = np.array([*classes, -1], dtype=np.int64)  # owner -1 (background) -> last entry
            class_maps[i] = lookup[owners[i]]
        class_maps_t = torch.from_numpy(class_maps).unsqueeze(1)
        return SyntheticSet(
            images=torch.from_numpy(images),
            masks=(class_maps_t == t).float(),
            target=t,
            target_name=self.classes[t].name,
            captions=captions,
            present_classes=present,
            visible_fractions=fractions,
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
        ``(*seed, b)``), the same as item ``b`` of ``SyntheticCosegDataset(world, set_size,
        length, seed=seed)``. With a generator, the sets are drawn from it one after another.

        Returns:
            A :class:`SyntheticBatch` ``(images, masks, targets)``.

        Shape:
            - images: :math:`(B, N, 3, S, S)`, masks: :math:`(B, N, 1, S, S)`, targets: :math:`(B,)`.

        Example:
            >>> world = SyntheticWorld(num_classes=6, image_size=32)
            >>> batch = world.sample_batch(4, 2, seed=0)
            >>> batch.images.shape, batch.targets.dtype
            (torch.Size([4, 2, 3, 32, 32]), torch.int64)
        """
        return _sample_batch(self, batch_size, set_size, seed, generator)

    # ------------------------------------------------------------------------ drawing

    def _draw_image(
        self, rng: np.random.Generator, target: int, canvas: np.ndarray, owner: np.ndarray
    ) -> tuple[list[int], list[float], str]:
        """Draw one image into ``canvas (3, S, S)``; ``owner (S, S)`` gets each pixel's draw index."""
        s = self.image_size
        k = int(rng.integers(self.objects_per_image[0], self.objects_per_image[1] + 1))
        others = rng.choice(self.num_classes - 1, size=k - 1, replace=False)
        others = others + (others >= target)  # uniform over the classes other than the target
        classes = rng.permutation(np.concatenate([[target], others]))  # draw order, bottom first
        shapes = [self.classes[c].shape for c in classes]

        for _ in range(self.max_tries):
            radii = rng.uniform(*self.object_size, size=k) * s
            cx = rng.uniform(radii, s - radii)
            cy = rng.uniform(radii, s - radii)
            angles = rng.uniform(0.0, 2 * np.pi, size=k)
            placed, fractions = self._layout(shapes, radii, cx, cy, angles, owner)
            if min(fractions) >= self.min_visible:
                break
        else:  # role-blind fallback: distinct cells of a grid, no overlap
            g = math.ceil(math.sqrt(k))
            cell = s / g
            cells = rng.permutation(g * g)[:k]
            radii = np.minimum(rng.uniform(*self.object_size, size=k) * s, 0.49 * cell)
            slack = cell / 2 - radii
            cx = (cells % g + 0.5) * cell + rng.uniform(-slack, slack)
            cy = (cells // g + 0.5) * cell + rng.uniform(-slack, slack)
            angles = rng.uniform(0.0, 2 * np.pi, size=k)
            placed, fractions = self._layout(shapes, radii, cx, cy, angles, owner)

        self._background(rng, canvas)
        jitter = rng.uniform(0.85, 1.0, size=(k, 3)).astype(np.float32)
        phases = rng.uniform(0.0, 1.0, size=(k, 2))
        for j, (c, p) in enumerate(zip(classes.tolist(), placed, strict=True)):
            primary = self._rgb[c] * jitter[j]
            h, w = p.inside.shape
            region = canvas[:, p.y0 : p.y0 + h, p.x0 : p.x0 + w]
            own = _texture(self.classes[c].texture, p.u, p.v, phases[j])
            if own is None:
                region[:, p.inside] = primary[:, None]
            else:
                shade = np.where(own[p.inside], np.float32(1.0), np.float32(_SHADE))
                region[:, p.inside] = primary[:, None] * shade[None]
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(_NOISE_SD)
        np.clip(canvas, 0.0, 1.0, out=canvas)

        caption_order = rng.permutation(k)
        caption = _caption([self.classes[int(classes[j])].name for j in caption_order])
        return classes.tolist(), fractions, caption

    def _layout(
        self,
        shapes: Sequence[str],
        radii: np.ndarray,
        cx: np.ndarray,
        cy: np.ndarray,
        angles: np.ndarray,
        owner: np.ndarray,
    ) -> tuple[list[_Placed], list[float]]:
        """Rasterise objects in draw order into ``owner``; each object's visible fraction."""
        s = self.image_size
        owner.fill(-1)
        placed, areas = [], []
        for j, shape in enumerate(shapes):
            r = radii[j]
            x0, x1 = max(int(cx[j] - r), 0), min(math.ceil(cx[j] + r) + 1, s)
            y0, y1 = max(int(cy[j] - r), 0), min(math.ceil(cy[j] + r) + 1, s)
            dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx[j]) / r
            dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy[j]) / r
            cos, sin = np.float32(math.cos(angles[j])), np.float32(math.sin(angles[j]))
            u = dx[None, :] * cos + dy[:, None] * sin
            v = dy[:, None] * cos - dx[None, :] * sin
            inside = _inside(shape, u, v)
            owner[y0:y1, x0:x1][inside] = j
            placed.append(_Placed(y0, x0, u, v, inside))
            areas.append(int(inside.sum()))
        fractions = []
        for j, (p, area) in enumerate(zip(placed, areas, strict=True)):
            h, w = p.inside.shape
            visible = int((owner[p.y0 : p.y0 + h, p.x0 : p.x0 + w] == j).sum())
            fractions.append(visible / area if area else 0.0)
        return placed, fractions

    def _grid(self, key: str, g: int = 0) -> np.ndarray:
        """Cached coordinate grids and bilinear upsampling matrices."""
        if (key, g) not in self._grids:
            s = self.image_size
            if key == "xy":
                yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / np.float32(s)
                self._grids[key, g] = np.stack([xx, yy])
            else:  # (S, g) bilinear interpolation weights from g control points
                t = (np.arange(s) + 0.5) / s * (g - 1)
                i0 = np.minimum(np.floor(t).astype(np.int64), g - 2)
                w = (t - i0).astype(np.float32)
                m = np.zeros((s, g), dtype=np.float32)
                m[np.arange(s), i0] = 1 - w
                m[np.arange(s), i0 + 1] = w
                self._grids[key, g] = m
        return self._grids[key, g]

    def _background(self, rng: np.random.Generator, canvas: np.ndarray) -> None:
        """A low-contrast textured background: smooth noise, a gradient, or soft stripes."""
        kind = int(rng.integers(3))
        base = (rng.uniform(0.2, 0.6) + rng.uniform(-0.06, 0.06, size=3)).astype(np.float32)
        if kind == 0:  # smooth noise: a few control points, bilinearly upsampled
            g = int(rng.integers(3, 7))
            control = base[:, None, None] + rng.uniform(-0.12, 0.12, size=(3, g, g)).astype(np.float32)
            m = self._grid("up", g)
            canvas[:] = m @ control @ m.T
            return
        xx, yy = self._grid("xy")
        phi = rng.uniform(0.0, 2 * np.pi)
        along = np.float32(math.cos(phi)) * xx + np.float32(math.sin(phi)) * yy  # in [-√2, √2]
        if kind == 1:  # linear gradient towards a second colour
            delta = rng.uniform(-0.2, 0.2, size=3).astype(np.float32)
            canvas[:] = base[:, None, None] + delta[:, None, None] * (along * np.float32(0.5 / math.sqrt(2)))[None]
        else:  # soft stripes
            period = rng.uniform(0.06, 0.25)
            amp = np.float32(rng.uniform(0.03, 0.08))
            wave = amp * np.sin(along * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 2 * np.pi)))
            canvas[:] = base[:, None, None] + wave[None]


# ---------------------------------------------------------------------------- dataset


class SyntheticCosegDataset(Dataset):
    """A map-style dataset of synthetic sets: item ``i`` is a fixed function of ``(seed, i)``.

    Item ``i`` is ``world.sample_set(set_size, seed=(seed, i))`` as a dict
    ``{"images": (N, 3, S, S), "masks": (N, 1, S, S), "target": () int64, "captions":
    list[str]}``, whatever the access order or the number of loader workers. PyTorch's default
    collate stacks it into ``(B, N, 3, S, S)``, ``(B, N, 1, S, S)``, ``(B,)``, and transposes
    the captions into ``N`` tuples of ``B`` strings (``captions[n][b]``).

    Args:
        world: the :class:`SyntheticWorld` to draw from.
        set_size: images per set, ``N``.
        length: number of items.
        seed: the dataset's seed.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> ds = SyntheticCosegDataset(SyntheticWorld(num_classes=6, image_size=32), set_size=3, length=8)
        >>> batch = next(iter(DataLoader(ds, batch_size=4)))
        >>> batch["images"].shape, batch["masks"].shape, batch["target"].shape
        (torch.Size([4, 3, 3, 32, 32]), torch.Size([4, 3, 1, 32, 32]), torch.Size([4]))
    """

    world_type: type = SyntheticWorld
    """The world class this dataset draws from (a subclass of the dataset names its own)."""

    def __init__(self, world: SyntheticWorld, set_size: int, length: int, seed: int = 0) -> None:
        if not isinstance(world, self.world_type):
            raise CosegValueError(f"expected a {self.world_type.__name__}, got {type(world).__name__}")
        self.world = world
        self.set_size = _positive_int(set_size, "set_size")
        self.length = _positive_int(length, "length", 0)
        self.seed = _check_seed(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"dataset indices are ints, got {type(index).__name__}")
        i = int(index) + self.length if index < 0 else int(index)
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        words = self.seed if isinstance(self.seed, list) else [self.seed]
        s = self.world.sample_set(self.set_size, seed=(*words, i))
        return {
            "images": s.images,
            "masks": s.masks,
            "target": torch.tensor(s.target, dtype=torch.int64),
            "captions": s.captions,
        }


def write_folder_dataset(world: SyntheticWorld, root: str | Path, images_per_group: int, seed: int = 0) -> list[Group]:
    """Write one generated group per class in the generic folder layout.

    Writes ``root/images/<class name>/<i>.png`` (RGB) and ``root/masks/<class name>/<i>.png``
    (8-bit, 0 or 255), ``i`` zero-padded to 4 digits so that names sort in order. Group ``c``
    is ``world.sample_set(images_per_group, seed=(seed, c), target=c)``.

    Args:
        world: the world whose classes become the groups.
        root: the dataset folder; ``root/images`` and ``root/masks`` must not hold files yet.
        images_per_group: images of each group.
        seed: fixes the written data.

    Returns:
        The written :class:`~cosegkit.data.Group` of each class, in class-index order.

    Raises:
        DataError: ``root/images`` or ``root/masks`` already holds something.

    Example:
        >>> import tempfile
        >>> world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=2)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     groups = write_folder_dataset(world, root, images_per_group=2)
        ...     print(len(groups), groups[0].images[1].relative_to(root).as_posix())
        3 images/red checkered ring/0001.png
    """
    from PIL import Image

    n = _positive_int(images_per_group, "images_per_group")
    words = _check_seed(seed)
    words = words if isinstance(words, list) else [words]
    root = Path(root)
    for sub in ("images", "masks"):
        if (root / sub).is_dir() and any((root / sub).iterdir()):
            raise DataError(f"{root / sub} is not empty; write the synthetic dataset to a new folder")
    width = max(4, len(str(n - 1)))
    groups = []
    for c, cls in enumerate(world.classes):
        s = world.sample_set(n, seed=(*words, c), target=c)
        image_dir, mask_dir = root / "images" / cls.name, root / "masks" / cls.name
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        rgb = (s.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        masks = (s.masks[:, 0] * 255).to(torch.uint8).numpy()
        images, mask_files = [], []
        for i in range(n):
            image_path, mask_path = image_dir / f"{i:0{width}d}.png", mask_dir / f"{i:0{width}d}.png"
            Image.fromarray(rgb[i]).save(image_path)
            Image.fromarray(masks[i]).save(mask_path)
            images.append(image_path)
            mask_files.append(mask_path)
        groups.append(Group(name=cls.name, images=tuple(images), masks=tuple(mask_files), class_name=cls.name))
    return groups
