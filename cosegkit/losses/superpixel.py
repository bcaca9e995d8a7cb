"""SegCLIP's superpixel loss: a token's group should be its superpixel's group.

Axis legend: b batch of sets, n images per set, g groups, h w token grid, H W image size,
t tokens of one image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import is_compiling, resolve_valid, shape_str
from cosegkit.errors import CosegShapeError, CosegValueError

__all__ = ["SuperpixelLoss", "superpixel_grid", "superpixel_loss"]


def superpixel_grid(superpixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Superpixel labels ``(B, N, H, W)`` sampled at the centres of an ``h x w`` token grid.

    Token ``(y, x)`` takes the label of pixel ``(floor((y + 0.5) H / h), floor((x + 0.5) W / w))``
    (nearest-neighbour resizing of the label map), so its label is that of the superpixel
    under its centre.

    Example:
        >>> import torch
        >>> from cosegkit.losses import superpixel_grid
        >>> labels = torch.arange(16).reshape(1, 1, 4, 4)
        >>> superpixel_grid(labels, (2, 2))[0, 0].tolist()
        [[5, 7], [13, 15]]
    """
    big_h, big_w = superpixels.shape[-2:]
    h, w = size
    ys = ((torch.arange(h, device=superpixels.device) + 0.5) * big_h / h).long().clamp_max(big_h - 1)
    xs = ((torch.arange(w, device=superpixels.device) + 0.5) * big_w / w).long().clamp_max(big_w - 1)
    return superpixels[..., ys[:, None], xs[None, :]]


def superpixel_loss(
    assignment: torch.Tensor, superpixels: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Symmetric KL between each token's assignment and its superpixel's mean assignment.

    SegCLIP's ``clutering_loss``: with :math:`a_t \in \mathbb R^G` token :math:`t`'s
    assignment (one-hot with straight-through gradients in training) and :math:`\bar a_t` the
    mean of :math:`a` over the tokens of the same image in the same superpixel,

    .. math::
        \mathcal L_{sp} = \frac{1}{2 T G} \sum_t \Big[
            \mathrm{KL}\big(\sigma(\bar a_t) \,\|\, \sigma(a_t)\big)
            + \mathrm{KL}\big(\sigma(a_t) \,\|\, \sigma(\bar a_t)\big) \Big],

    :math:`\sigma` the softmax over the groups and :math:`T` the number of tokens of the valid
    images. A token's superpixel is the one under its centre (:func:`superpixel_grid`).

    Args:
        assignment: ``(B, N, G, h, w)``, e.g. ``SetGroupingOutput.assignment`` (:class:`~cosegkit.SetGroupingOutput`).
        superpixels: ``(B, N, H, W)`` integer labels per image at any resolution (the data
            pipeline's, :mod:`cosegkit.data.superpixels`); labels are compared within an image
            only.
        valid: optional boolean ``(B, N)``: padded images do not count.

    Returns:
        A scalar tensor; 0 when every superpixel's tokens share one group.

    Example:
        >>> import torch
        >>> from cosegkit.losses import superpixel_loss
        >>> labels = torch.zeros(1, 1, 4, 4, dtype=torch.long)
        >>> labels[..., 2:] = 1  # two superpixels: the left and the right half
        >>> a = torch.zeros(1, 1, 2, 2, 2)
        >>> a[0, 0, 0, :, 0] = a[0, 0, 1, :, 1] = 1.0  # group 0 left, group 1 right: agrees
        >>> superpixel_loss(a, labels).item()
        0.0
        >>> a = torch.zeros(1, 1, 2, 2, 2)
        >>> a[0, 0, 0, 0], a[0, 0, 1, 1] = 1.0, 1.0  # group 0 top, group 1 bottom: cuts both superpixels
        >>> round(superpixel_loss(a, labels).item(), 4)
        0.0578
    """
    if not is_compiling():
        if assignment.ndim != 5:
            raise CosegShapeError(f"expected an assignment of shape (B, N, G, h, w), got {shape_str(assignment)}")
        if superpixels.ndim != 4 or tuple(superpixels.shape[:2]) != tuple(assignment.shape[:2]):
            raise CosegShapeError(
                f"expected superpixel labels of shape ({assignment.shape[0]}, {assignment.shape[1]}, H, W), "
                f"one label map per image, got {shape_str(superpixels)}"
            )
        if superpixels.is_floating_point():
            raise CosegValueError(f"superpixel labels must be integers, got dtype {superpixels.dtype}")
    b, n, g, h, w = assignment.shape
    valid = resolve_valid(valid, b, n, assignment.device)
    labels = superpixel_grid(superpixels.long(), (h, w)).flatten(2)  # (b, n, t)
    labels = labels - labels.amin(dim=2, keepdim=True)  # 0-based within each image
    span = int(labels.amax()) + 1 if labels.numel() else 1
    ids = labels + torch.arange(b * n, device=labels.device).view(b, n, 1) * span  # unique over images
    a = rearrange(assignment, "b n g h w -> b n (h w) g")[valid]  # (v, t, g)
    ids = ids[valid]
    flat_ids, flat_a = ids.flatten(), a.reshape(-1, g)
    _, segment = torch.unique(flat_ids, return_inverse=True)
    count = torch.zeros(int(segment.max()) + 1, device=a.device, dtype=a.dtype).index_add_(
        0, segment, torch.ones_like(segment, dtype=a.dtype)
    )
    total = torch.zeros(count.shape[0], g, device=a.device, dtype=a.dtype).index_add_(0, segment, flat_a)
    mean = (total / count[:, None])[segment]  # (v * t, g)
    coef = flat_a.shape[0] * g
    kl_1 = F.kl_div(F.log_softmax(flat_a, dim=-1), F.softmax(mean, dim=-1), reduction="sum") / coef
    kl_2 = F.kl_div(F.log_softmax(mean, dim=-1), F.softmax(flat_a, dim=-1), reduction="sum") / coef
    return (kl_1 + kl_2) / 2


class SuperpixelLoss(nn.Module):
    """Module form of :func:`superpixel_loss`.

    Example:
        >>> import torch
        >>> from cosegkit.losses import SuperpixelLoss
        >>> SuperpixelLoss()(torch.full((1, 2, 3, 4, 4), 1 / 3), torch.zeros(1, 2, 16, 16, dtype=torch.long)).item()
        0.0
    """

    def forward(
        self, assignment: torch.Tensor, superpixels: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        return superpixel_loss(assignment, superpixels, valid)
