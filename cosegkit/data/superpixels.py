"""Superpixels for the grouping layer's superpixel loss, computed in the data pipeline and cached.

:func:`superpixel_labels` segments one image with scikit-image (Felzenszwalb's graph method,
as SegCLIP, or SLIC); :class:`SuperpixelSets` adds the label maps of every image of a set to
the items of any set dataset, as ``superpixels`` ``(N, H, W)``, so that the loss
(:func:`cosegkit.losses.superpixel_loss`) never computes them in the forward pass. Label maps
are cached on disk by the content of the image they were computed on (and the method and its
parameters), so a resumed run, a second model trained on the same data or a later epoch
without augmentation reads them back instead of segmenting again.

Axis legend: n images per set, c channels, H W image size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cosegkit.errors import CosegValueError

__all__ = ["SUPERPIXEL_METHODS", "SuperpixelCache", "SuperpixelSets", "superpixel_labels"]

SUPERPIXEL_METHODS: dict[str, dict[str, Any]] = {
    "felzenszwalb": {"scale": 100.0, "sigma": 0.5, "min_size": 20},
    "slic": {"n_segments": 50, "compactness": 10.0, "sigma": 0.0},
}
"""The scikit-image methods :func:`superpixel_labels` runs, with their default parameters
(``skimage.segmentation.felzenszwalb`` and ``skimage.segmentation.slic``)."""


def _method_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    if method not in SUPERPIXEL_METHODS:
        raise CosegValueError(f"unknown superpixel method {method!r}; choose one of {sorted(SUPERPIXEL_METHODS)}")
    merged = {**SUPERPIXEL_METHODS[method], **(params or {})}
    unknown = sorted(set(merged) - set(SUPERPIXEL_METHODS[method]))
    if unknown:
        raise CosegValueError(
            f"unknown parameters {unknown} for superpixel method {method!r}; it takes {sorted(SUPERPIXEL_METHODS[method])}"
        )
    return merged


def superpixel_labels(image: torch.Tensor, method: str = "felzenszwalb", **params: Any) -> torch.Tensor:
    """Superpixel labels of one RGB image ``(3, H, W)`` in [0, 1]: ``(H, W)`` int32 from 0.

    Args:
        image: the image.
        method: ``"felzenszwalb"`` or ``"slic"`` (:data:`SUPERPIXEL_METHODS`).
        params: overrides of the method's parameters.

    Example:
        >>> import torch
        >>> from cosegkit.data.superpixels import superpixel_labels
        >>> image = torch.zeros(3, 32, 32)
        >>> image[0, :, 16:] = 1.0  # left black, right red
        >>> labels = superpixel_labels(image)
        >>> labels.shape, labels.dtype
        (torch.Size([32, 32]), torch.int32)
        >>> labels[:, :14].unique().tolist(), labels[:, 18:].unique().tolist()  # (the edge is a thin superpixel)
        ([0], [3])
    """
    try:
        from skimage.segmentation import felzenszwalb, slic
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("superpixels need scikit-image: pip install scikit-image") from err
    if image.ndim != 3 or image.shape[0] != 3:
        raise CosegValueError(f"expected one RGB image of shape (3, H, W), got {tuple(image.shape)}")
    kwargs = _method_params(method, params)
    array = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    if method == "felzenszwalb":
        labels = felzenszwalb(array, **kwargs)
    else:
        labels = slic(array, start_label=0, channel_axis=-1, **kwargs)
    return torch.from_numpy(np.ascontiguousarray(labels).astype(np.int32))


class SuperpixelCache:
    """Label maps on disk, one compressed ``.npz`` per image, named by a digest of its content.

    The digest covers the image's bytes (as 8-bit RGB, the precision a superpixel method
    sees), its size, the method and its parameters, so a cached map is never used for
    another image or setting. Writes are atomic: an interrupted run leaves no partial file.

    Example:
        >>> import tempfile, torch
        >>> from cosegkit.data.superpixels import SuperpixelCache
        >>> cache = SuperpixelCache(tempfile.mkdtemp())
        >>> image = torch.rand(3, 16, 16)
        >>> first = cache.labels(image)
        >>> len(list(cache.directory.iterdir())), torch.equal(cache.labels(image), first)  # read back
        (1, True)
    """

    def __init__(self, directory: str | os.PathLike[str] | None, method: str = "felzenszwalb", **params: Any) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.method = method
        self.params = _method_params(method, params)
        self._setting = json.dumps({"method": method, "params": self.params}, sort_keys=True).encode()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def key(self, image: torch.Tensor) -> str:
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        digest = hashlib.sha256(self._setting)
        digest.update(str(tuple(pixels.shape)).encode())
        digest.update(pixels.tobytes())
        return digest.hexdigest()[:32]

    def labels(self, image: torch.Tensor) -> torch.Tensor:
        """The label map of ``image`` ``(3, H, W)``: read from the cache, or computed and stored."""
        if self.directory is None:
            return superpixel_labels(image, self.method, **self.params)
        path = self.directory / f"{self.key(image)}.npz"
        if path.is_file():
            try:
                with np.load(path) as stored:
                    return torch.from_numpy(stored["labels"].astype(np.int32))
            except (OSError, ValueError, KeyError):
                pass  # an unreadable file: compute it again
        labels = superpixel_labels(image, self.method, **self.params)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, labels=labels.numpy().astype(np.uint16 if labels.max() < 65535 else np.int32))
        os.replace(tmp, path)
        return labels


class SuperpixelSets(Dataset):
    """A set dataset whose items also hold ``superpixels`` ``(N, H, W)`` (int32) of their images.

    The labels are computed on the images as the item gives them (after augmentation, at the
    training size), so they line up with the images and masks; padded images (``valid``
    False) get zeros.

    Args:
        sets: any dataset of set items with ``images`` ``(N, 3, H, W)`` and ``valid``.
        cache: a :class:`SuperpixelCache` (its method and parameters are used).

    Example:
        >>> import tempfile
        >>> from cosegkit.data.superpixels import SuperpixelCache, SuperpixelSets
        >>> from cosegkit.engine import TrainConfig, build_train_sets
        >>> sets = build_train_sets(TrainConfig(world_classes=4, image_size=32, set_size=3), length=2)
        >>> item = SuperpixelSets(sets, SuperpixelCache(tempfile.mkdtemp()))[0]
        >>> item["superpixels"].shape, item["superpixels"].dtype, item["images"].shape
        (torch.Size([3, 32, 32]), torch.int32, torch.Size([3, 3, 32, 32]))
    """

    def __init__(self, sets: torch.utils.data.Dataset, cache: SuperpixelCache) -> None:
        self.sets, self.cache = sets, cache

    def __len__(self) -> int:
        return len(self.sets)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.sets[index])
        images, valid = item["images"], item["valid"]
        maps = [
            self.cache.labels(image) if bool(ok) else torch.zeros(images.shape[-2:], dtype=torch.int32)
            for image, ok in zip(images, valid, strict=True)
        ]
        item["superpixels"] = torch.stack(maps)
        return item

    def unaugmented(self, group: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped sets' :meth:`~cosegkit.data.TrainSets.unaugmented` (an ``AttributeError`` without one)."""
        return self.sets.unaugmented(group, index)  # type: ignore[attr-defined]
