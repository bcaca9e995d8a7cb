"""Image sets from groups: random training sets with augmentation, and evaluation sets.

Axis legend: n images per set, c channels, h w spatial, s the square side of a sampled image.

Every item is a dict of tensors for one set: ``images (N, 3, S, S)`` in [0, 1], ``masks
(N, 1, S, S)`` in {0, 1}, ``valid (N,)`` bool, ``group`` (int) and ``indices (N,)`` (the
images' positions in their group, -1 for padding). :func:`collate_sets` stacks items into a
batch ``(B, N, ...)``, padding shorter sets and marking the padding in ``valid``, which is
what :class:`~cosegkit.LCCo` takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

__all__ = [
    "Augmentation",
    "EvalSets",
    "TrainSets",
    "collate_sets",
    "eval_chunks",
    "interleave",
]

Loader = Callable[[Group, int], tuple[torch.Tensor, "torch.Tensor | None"]]


def _item_seed(*keys: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def _default_loader(group: Group, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    from cosegkit.data.io import load_group_item

    return load_group_item(group, index)


@dataclass(frozen=True)
class Augmentation:
    """Per-image training augmentation that keeps image and mask aligned.

    Geometry (flip, scale-crop) is applied identically to image and mask (bilinear for the
    image, nearest for the mask); colour jitter touches the image only.

    Attributes:
        hflip: probability of a horizontal flip.
        scale: range of the crop's area as a fraction of the image (``RandomResizedCrop``).
        ratio: range of the crop's aspect ratio.
        brightness: jitter factor range ``1 ± brightness``.
        contrast: jitter factor range ``1 ± contrast``.
        saturation: jitter factor range ``1 ± saturation``.
        hue: hue shift range ``± hue`` (at most 0.5).

    Example:
        >>> import torch
        >>> from cosegkit.data.sampling import Augmentation
        >>> image, mask = torch.rand(3, 40, 60), torch.zeros(1, 40, 60)
        >>> mask[..., :30] = 1.0  # the left half is foreground
        >>> out_image, out_mask = Augmentation()(image, mask, 32, torch.Generator().manual_seed(0))
        >>> out_image.shape, out_mask.shape, out_mask.unique().tolist()
        (torch.Size([3, 32, 32]), torch.Size([1, 32, 32]), [0.0, 1.0])

        Geometry only, a certain flip: the mask's foreground moves to the right half.

        >>> flip = Augmentation(hflip=1.0, scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0)
        >>> _, out_mask = flip(image, mask, 32, torch.Generator().manual_seed(0))
        >>> out_mask[0, :, :16].sum().item(), out_mask[0, :, 16:].sum().item()
        (0.0, 512.0)
    """

    hflip: float = 0.5
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one image ``(3, H, W)`` and its mask ``(1, H, W)``; both come out ``size x size``."""

        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=generator))

        h, w = image.shape[-2:]
        top, left, ch, cw = 0, 0, h, w
        for _ in range(10):  # RandomResizedCrop's rejection sampling
            area = h * w * uniform(*self.scale)
            aspect = math.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw_try, ch_try = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw_try <= w and 0 < ch_try <= h:
                ch, cw = ch_try, cw_try
                top = int(torch.randint(0, h - ch + 1, (), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (), generator=generator))
                break
        image = TF.resized_crop(image, top, left, ch, cw, [size, size], antialias=True)
        mask = TF.resized_crop(mask, top, left, ch, cw, [size, size], interpolation=TF.InterpolationMode.NEAREST_EXACT)
        if float(torch.rand((), generator=generator)) < self.hflip:
            image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
        if self.brightness:
            image = TF.adjust_brightness(image, uniform(1 - self.brightness, 1 + self.brightness))
        if self.contrast:
            image = TF.adjust_contrast(image, uniform(1 - self.contrast, 1 + self.contrast))
        if self.saturation:
            image = TF.adjust_saturation(image, uniform(1 - self.saturation, 1 + self.saturation))
        if self.hue:
            image = TF.adjust_hue(image, uniform(-self.hue, self.hue))
        return image.clamp(0.0, 1.0), mask


def _resize_pair(
    image: torch.Tensor, mask: torch.Tensor | None, size: int, *, soft_mask: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize an image (bilinear, antialiased) and its mask (the same, or nearest-exact) to ``size``."""
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    if mask is None:
        mask = torch.zeros(1, size, size)
    elif soft_mask:
        mask = F.interpolate(
            mask[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        mask = mask[0].clamp(0.0, 1.0)
    else:
        mask = F.interpolate(mask[None].float(), size=(size, size), mode="nearest-exact")[0]
    return image.clamp(0.0, 1.0), mask


def _check_groups(groups: Sequence[Group]) -> list[Group]:
    groups = list(groups)
    if not groups:
        raise DataError("no groups to sample from; check the dataset root and reader")
    empty = [g.name for g in groups if len(g) == 0]
    if empty:
        raise DataError(f"groups without images: {empty}")
    return groups


def _padded_item(
    images: list[torch.Tensor], masks: list[torch.Tensor], indices: list[int], group: int, set_size: int, size: int
) -> dict[str, torch.Tensor]:
    n = len(images)
    pad = set_size - n
    channels = masks[0].shape[0] if masks else 1  # 1, or more when a loader adds channels (pseudo masks)
    return {
        "images": torch.stack(images + [torch.zeros(3, size, size)] * pad),
        "masks": torch.stack(masks + [torch.zeros(channels, size, size)] * pad),
        "valid": torch.tensor([True] * n + [False] * pad),
        "group": torch.tensor(group),
        "indices": torch.tensor(indices + [-1] * pad),
    }


class TrainSets(Dataset):
    """Random training sets: ``set_size`` distinct images of one group, augmented per image.

    Item ``i`` is a deterministic function of ``(seed, epoch, i)``, so runs are reproducible
    whatever the number of data-loader workers; call :meth:`set_epoch` each epoch to draw
    new sets. The group of item ``i`` is drawn uniformly over groups (``balance="groups"``)
    or in proportion to their sizes (``balance="images"``). A group smaller than
    ``set_size`` gives all its images, padded (``valid`` False).

    Args:
        groups: groups from a reader; every image needs a mask.
        set_size: images per set ``N``.
        image_size: side ``S`` of the square training images.
        length: items per epoch (default: the number of images over ``set_size``, at least
            the number of groups).
        augment: an :class:`Augmentation`, or ``None`` for a plain resize.
        balance: how groups are drawn.
        seed: base seed.
        loader: ``(group, index) -> (image, mask)``; by default
            :func:`cosegkit.data.load_group_item`. Its mask may have several channels; the
            augmentation transforms them alike.
        require_masks: refuse groups without masks (the default). ``False`` when the loader
            makes the masks itself (pseudo masks), so the groups need none.

    Example:
        >>> import torch
        >>> from cosegkit.data import Group, TrainSets, collate_sets
        >>> fake = lambda g, i: (torch.rand(3, 40, 30), (torch.rand(1, 40, 30) > 0.5).float())
        >>> groups = [Group("cats", tuple(f"{i}.jpg" for i in range(7)), tuple(f"{i}.png" for i in range(7)))]
        >>> ds = TrainSets(groups, set_size=5, image_size=32, length=2, loader=fake)
        >>> batch = collate_sets([ds[0], ds[1]])
        >>> batch["images"].shape, batch["masks"].shape, batch["valid"].shape
        (torch.Size([2, 5, 3, 32, 32]), torch.Size([2, 5, 1, 32, 32]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        groups: Sequence[Group],
        set_size: int,
        image_size: int,
        *,
        length: int | None = None,
        augment: Augmentation | None = Augmentation(),
        balance: Literal["groups", "images"] = "groups",
        seed: int = 0,
        loader: Loader | None = None,
        require_masks: bool = True,
    ) -> None:
        self.groups = _check_groups(groups)
        unlabelled = [g.name for g in self.groups if g.masks is None and "segmentations" not in g.meta]
        if unlabelled and require_masks:
            raise DataError(f"training needs masks, but these groups have none: {unlabelled[:10]}")
        if set_size < 1 or image_size < 1:
            raise CosegValueError(f"set_size and image_size must be positive, got {set_size} and {image_size}")
        if balance not in ("groups", "images"):
            raise CosegValueError(f"balance must be 'groups' or 'images', got {balance!r}")
        self.set_size = set_size
        self.image_size = image_size
        self.augment = augment
        self.balance = balance
        self.seed = seed
        self.epoch = 0
        self.loader = loader or _default_loader
        total = sum(len(g) for g in self.groups)
        self.length = length if length is not None else max(total // set_size, len(self.groups))
        sizes = torch.tensor([len(g) for g in self.groups], dtype=torch.float64)
        self._weights = torch.ones_like(sizes) if balance == "groups" else sizes

    def set_epoch(self, epoch: int) -> None:
        """Draw different sets in the next epoch (same item index, new randomness)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"item {index} out of range for {self.length} sets")
        g = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, index))
        gi = int(torch.multinomial(self._weights, 1, generator=g))
        group = self.groups[gi]
        chosen = torch.randperm(len(group), generator=g)[: self.set_size].tolist()
        images, masks = [], []
        for i in chosen:
            image, mask = self.loader(group, i)
            if mask is None:
                raise DataError(f"image {group.images[i]} of group {group.name!r} has no mask")
            if self.augment is not None:
                image, mask = self.augment(image, mask, self.image_size, g)
            else:
                image, mask = _resize_pair(image, mask, self.image_size)
            images.append(image)
            masks.append(mask)
        return _padded_item(images, masks, chosen, gi, self.set_size, self.image_size)

    def unaugmented(self, group: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index`` of group ``group`` and its mask as an item would hold them without augmentation.

        The loader's pair resized to ``image_size x image_size`` (what ``augment=None`` gives);
        :class:`~cosegkit.engine.class_targets.ClassTargetCache` embeds it once per image.

        Example:
            >>> import torch
            >>> from cosegkit.data import Group, TrainSets
            >>> fake = lambda g, i: (torch.full((3, 40, 30), i / 10), torch.ones(1, 40, 30))
            >>> groups = [Group("cats", tuple(f"{i}.jpg" for i in range(4)), tuple(f"{i}.png" for i in range(4)))]
            >>> image, mask = TrainSets(groups, set_size=2, image_size=16, loader=fake).unaugmented(0, 3)
            >>> image.shape, mask.shape, round(float(image.mean()), 3)
            (torch.Size([3, 16, 16]), torch.Size([1, 16, 16]), 0.3)
        """
        g = self.groups[group]
        if not 0 <= index < len(g):
            raise IndexError(f"image {index} out of range for group {g.name!r} of {len(g)} images")
        image, mask = self.loader(g, index)
        if mask is None:
            raise DataError(f"image {g.images[index]} of group {g.name!r} has no mask")
        return _resize_pair(image, mask, self.image_size)


def interleave(length: int, set_size: int) -> list[int]:
    """UFO's image order for chunked evaluation (``test.py``, before it cuts groups).

    With ``block = ceil(length / set_size)``, the order lists images ``0, block, 2 * block,
    ...``, then ``1, 1 + block, ...``, and so on: every block-th image, starting from each
    offset in turn. Cutting this order into consecutive chunks of ``set_size`` spreads each
    set over the whole (sorted) group instead of taking neighbours.

    Example:
        >>> interleave(7, 3)
        [0, 3, 6, 1, 4, 2, 5]
    """
    block = math.ceil(length / set_size)
    return [i for start in range(block) for i in range(start, length, block)]


def eval_chunks(
    length: int,
    set_size: int | None,
    chunking: Literal["contiguous", "interleaved"] = "contiguous",
    *,
    wrap: bool = False,
) -> list[list[int]]:
    """Split the ``length`` images of a group into evaluation sets.

    - ``set_size=None``: the whole group is one set.
    - ``"contiguous"``: consecutive chunks of ``set_size`` in the group's order; the last set
      holds the leftovers (smaller, no duplicates). This is the chunking of SSNM's and UFO's
      ``val.py``, where their P/J numbers come from.
    - ``"interleaved"``: UFO's ``test.py`` (the masks it writes): the group is first put in
      :func:`interleave` order, then cut into consecutive chunks of ``set_size``.

    ``wrap=True`` fills the short last set as SSNM/UFO do for their fixed group size: with the
    first images of the (reordered) group, cycling if the group is smaller than a set. Those
    images then appear twice; :class:`EvalSets` scores each image once (``score``). Use it
    only to reproduce numbers produced that way.

    Example:
        >>> eval_chunks(7, 3)
        [[0, 1, 2], [3, 4, 5], [6]]
        >>> eval_chunks(7, 3, "interleaved")
        [[0, 3, 6], [1, 4, 2], [5]]
        >>> eval_chunks(7, 3, "interleaved", wrap=True)
        [[0, 3, 6], [1, 4, 2], [5, 0, 3]]
    """
    if length < 1:
        raise CosegValueError(f"a group needs at least one image, got {length}")
    if chunking not in ("contiguous", "interleaved"):
        raise CosegValueError(f"chunking must be 'contiguous' or 'interleaved', got {chunking!r}")
    if set_size is not None and (isinstance(set_size, bool) or not isinstance(set_size, int) or set_size < 1):
        raise CosegValueError(f"set_size must be a positive integer or None, got {set_size!r}")
    if set_size is None or (set_size >= length and not wrap):
        return [list(range(length))]
    order = interleave(length, set_size) if chunking == "interleaved" else list(range(length))
    chunks = [order[s : s + set_size] for s in range(0, length, set_size)]
    if wrap:
        missing = set_size - len(chunks[-1])
        chunks[-1] = chunks[-1] + [order[k % length] for k in range(missing)]
    return chunks


class EvalSets(Dataset):
    """Evaluation sets: each group as one set, or in chunks (see :func:`eval_chunks`).

    Images are resized to ``image_size x image_size`` (bilinear, antialiased). Masks are
    prepared for scoring by the protocol of :func:`cosegkit.metrics.precision_jaccard`:

    - ``masks="bilinear"`` (default): the binary mask is resized bilinearly with
      antialiasing, as SSNM/UFO resize their 8-bit ground truth, and kept soft (values in
      [0, 1]); :func:`~cosegkit.metrics.precision_jaccard` at ``size=image_size`` then
      thresholds it at 0.5 exactly as the protocol does. Soft masks are valid targets for
      the losses too.
    - ``masks="nearest"``: binary masks resized by nearest neighbour (``nearest-exact``),
      for code that needs {0, 1} at the network resolution. Scoring these differs from the
      protocol along object borders.

    ``original_masks=True`` adds each image's binary mask at its original size under
    ``"original_masks"`` (a list of ``(1, H_i, W_i)`` tensors per set; :func:`collate_sets`
    keeps it a list of lists), for scoring at full resolution with ``size=None``.

    Every item carries ``score (N,)``: True for the images to score. It equals ``valid``
    except under ``wrap=True``, where the images repeated to fill the last set are run
    through the model (``valid``) but scored only once, as SSNM/UFO do.

    Args:
        groups: groups from a reader (masks may be absent: then ``masks`` is all zeros and
            ``has_mask`` False).
        set_size: images per set, or ``None`` for whole groups.
        image_size: side ``S`` of the evaluation images.
        chunking: ``"contiguous"`` (default) or ``"interleaved"`` (UFO's ``test.py``).
        wrap: fill short sets by wrapping around (UFO/SSNM comparability only).
        masks: ``"bilinear"`` (soft, the protocol's resize) or ``"nearest"`` (binary).
        original_masks: also return the masks at their original size.
        loader: ``(group, index) -> (image, mask)``.

    Example:
        >>> import torch
        >>> from cosegkit.data import EvalSets, Group
        >>> fake = lambda g, i: (torch.rand(3, 20, 24), torch.ones(1, 20, 24))
        >>> ds = EvalSets([Group("a", tuple("0123456"), tuple("0123456"))], set_size=5, image_size=16, loader=fake)
        >>> [int(item["valid"].sum()) for item in ds]
        [5, 2]
        >>> wrapped = EvalSets(ds.groups, set_size=5, image_size=16, wrap=True, loader=fake)
        >>> wrapped[1]["indices"].tolist(), wrapped[1]["valid"].tolist(), wrapped[1]["score"].tolist()
        ([5, 6, 0, 1, 2], [True, True, True, True, True], [True, True, False, False, False])
    """

    def __init__(
        self,
        groups: Sequence[Group],
        set_size: int | None = None,
        image_size: int = 224,
        *,
        chunking: Literal["contiguous", "interleaved"] = "contiguous",
        wrap: bool = False,
        masks: Literal["bilinear", "nearest"] = "bilinear",
        original_masks: bool = False,
        loader: Loader | None = None,
    ) -> None:
        self.groups = _check_groups(groups)
        if masks not in ("bilinear", "nearest"):
            raise CosegValueError(f"masks must be 'bilinear' or 'nearest', got {masks!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise CosegValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.image_size = image_size
        self.masks = masks
        self.original_masks = original_masks
        self.loader = loader or _default_loader
        self.sets: list[tuple[int, list[int], list[bool]]] = []
        for gi, group in enumerate(self.groups):
            seen: set[int] = set()
            for chunk in eval_chunks(len(group), set_size, chunking, wrap=wrap):
                score = []
                for i in chunk:  # first appearance only, also within a set that wraps onto itself
                    score.append(i not in seen)
                    seen.add(i)
                self.sets.append((gi, chunk, score))
        self.set_size = max(len(chunk) for _, chunk, _ in self.sets)

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        gi, chunk, score = self.sets[index]
        group = self.groups[gi]
        images, masks, sizes, originals = [], [], [], []
        has_mask = True
        for i in chunk:
            image, mask = self.loader(group, i)
            has_mask = has_mask and mask is not None
            sizes.append(image.shape[-2:])
            if self.original_masks:
                originals.append(mask if mask is not None else torch.zeros(1, *image.shape[-2:]))
            image, mask = _resize_pair(image, mask, self.image_size, soft_mask=self.masks == "bilinear")
            images.append(image)
            masks.append(mask)
        item: dict[str, Any] = _padded_item(images, masks, chunk, gi, len(chunk), self.image_size)
        item["score"] = torch.tensor(score)
        item["sizes"] = torch.tensor([list(s) for s in sizes])
        item["has_mask"] = torch.tensor(has_mask)
        if self.original_masks:
            item["original_masks"] = originals
        return item


def collate_sets(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack set items into a batch, padding sets to the largest ``N`` (``valid`` False).

    Per-image tensors (``images``, ``masks``, ``valid``, ``score``, ``indices``, ``sizes``)
    become ``(B, N, ...)``; per-set scalars (``group``, ``has_mask``) become ``(B,)``; lists
    (``original_masks``) are kept as a list of the items' lists, without padding.

    Example:
        >>> import torch
        >>> from cosegkit.data import collate_sets
        >>> one = {"images": torch.zeros(2, 3, 8, 8), "valid": torch.ones(2, dtype=torch.bool), "group": torch.tensor(0)}
        >>> two = {"images": torch.zeros(1, 3, 8, 8), "valid": torch.ones(1, dtype=torch.bool), "group": torch.tensor(1)}
        >>> batch = collate_sets([one, two])
        >>> batch["images"].shape, batch["valid"].tolist()
        (torch.Size([2, 2, 3, 8, 8]), [[True, True], [True, False]])
    """
    if not items:
        raise CosegValueError("cannot collate an empty list of sets")
    n = max(int(item["valid"].shape[0]) for item in items)
    fill = {"valid": False, "score": False, "indices": -1}
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if not isinstance(values[0], torch.Tensor):
            batch[key] = values
            continue
        if values[0].ndim == 0:
            batch[key] = torch.stack(values)
            continue
        padded = []
        for v in values:
            missing = n - v.shape[0]
            if missing:
                pad = torch.full((missing, *v.shape[1:]), fill.get(key, 0), dtype=v.dtype)
                v = torch.cat([v, pad])
            padded.append(v)
        batch[key] = torch.stack(padded)
    return batch
