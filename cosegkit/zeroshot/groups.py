r"""Zero-shot masks of a whole group: its common class decided from all of its images.

:class:`~cosegkit.zeroshot.ZeroShotCoseg` names a set's class from the images it is given.
A group larger than what fits in one forward pass is run in chunks, and chunks could then
disagree on the class. :func:`segment_group` decides the class once for the group:
:math:`\sigma` (each foreground prompt's similarity) summed over *every* image of the group,
chunk by chunk, and its argmax; then every image's mask is the CAM of that class.

The masks of a chunk depend only on its images and the class, so the first pass (which
scores the chunks with their own argmax class) already gives the masks of every chunk whose
own class is the group's; only the other chunks run again, with ``class_name=``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cosegkit.errors import CosegValueError

__all__ = ["GroupMasks", "segment_group"]


@dataclass
class GroupMasks:
    """What :func:`segment_group` returns.

    Attributes:
        probs: ``(n, 1, H, W)`` the refined CAM of the group's class for every image, in [0, 1]
            (``dtype`` float), or ``round(255 p)`` (``dtype=torch.uint8``); on the CPU.
        class_index: the group's class, an index into the zero-shot model's ``classnames``.
        class_name: that class's name.
        class_scores: ``(P,)`` float64 :math:`\\sigma` summed over the whole group.
        rerun: how many images were run a second time (their chunk's own argmax was another class).

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot import GroupMasks
        >>> group = GroupMasks(torch.zeros(4, 1, 8, 8), 1, "dog", torch.tensor([0.5, 2.0], dtype=torch.float64), 0)
        >>> group.class_name, group.probs.shape[0], int(group.class_scores.argmax()) == group.class_index
        ('dog', 4, True)
    """

    probs: torch.Tensor
    class_index: int
    class_name: str
    class_scores: torch.Tensor
    rerun: int


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, n))) for start in range(0, n, size)]


def _store(probs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    probs = probs.detach().float().cpu()
    if dtype == torch.uint8:
        return probs.clamp(0, 1).mul(255).round().to(torch.uint8)
    return probs.to(dtype)


def segment_group(
    zs,
    images: Sequence[torch.Tensor],
    *,
    chunk_size: int = 16,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int], None] | None = None,
) -> GroupMasks:
    """Zero-shot masks of a group, its class decided from the whole group.

    Args:
        zs: a :class:`~cosegkit.zeroshot.ZeroShotCoseg`. With its ``class_name`` set, that
            class is the group's.
        images: the group's images, each ``(3, H, W)`` in [0, 1], all of one size; any
            sequence (a lazy one that loads on indexing is fine: chunks are stacked as needed).
        chunk_size: images per forward pass. The masks do not depend on it (each image's
            CAM depends on the image and the class only), the memory does.
        device: where to run (default: where ``zs`` is).
        dtype: the dtype of ``GroupMasks.probs``: a float dtype, or ``torch.uint8`` for
            ``round(255 p)`` (a quarter of the memory).
        progress: called with the number of images of each chunk of the first pass.

    Returns:
        A :class:`GroupMasks`.

    Example:
        A tiny random CLIP; seven images in chunks of three all get the group's class:

        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot import ZeroShotCoseg
        >>> from cosegkit.zeroshot.groups import segment_group
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "car"])
        >>> zs = ZeroShotCoseg(clip, background=["grass", "sky"])
        >>> images = list(torch.rand(7, 3, 32, 32))
        >>> group = segment_group(zs, images, chunk_size=3)
        >>> group.probs.shape, group.class_scores.shape, group.class_name in zs.classnames
        (torch.Size([7, 1, 32, 32]), torch.Size([3]), True)
        >>> whole = zs(torch.stack(images)[None])  # one pass over the whole group: the same class and masks
        >>> int(whole.common_class) == group.class_index, torch.allclose(whole.probs[0], group.probs, atol=1e-5)
        (True, True)
    """
    n = len(images)
    if n < 1:
        raise CosegValueError("segment_group needs at least one image")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise CosegValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if device is None:
        device = zs.foreground_bank.device

    def run(indices: list[int], class_name: str | None = None):
        batch = torch.stack([images[i] for i in indices])[None].to(device)
        return zs(batch, class_name=class_name)

    chunks = _chunks(n, chunk_size)
    sigma: torch.Tensor | None = None
    first: list[tuple[int, torch.Tensor]] = []
    for indices in chunks:
        out = run(indices)
        scores = out.class_scores[0].detach().double().cpu()
        sigma = scores if sigma is None else sigma + scores
        first.append((int(out.common_class[0]), _store(out.probs[0], dtype)))
        if progress is not None:
            progress(len(indices))
    assert sigma is not None
    forced = zs.class_name
    index = zs.class_index(forced) if forced is not None else int(sigma.argmax())
    name = zs.classnames[index]
    parts, rerun = [], 0
    for indices, (own, probs) in zip(chunks, first, strict=True):
        if own != index:
            probs = _store(run(indices, class_name=name).probs[0], dtype)
            rerun += len(indices)
        parts.append(probs)
    return GroupMasks(torch.cat(parts), index, name, sigma, rerun)
