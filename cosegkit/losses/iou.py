"""The soft IoU loss :math:`\\eta` of LCCo eq. (10)-(11).

Axis legend: b batch of sets, n images per set, h w spatial.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from cosegkit._validation import is_compiling, resolve_valid
from cosegkit.errors import CosegShapeError, CosegValueError

__all__ = ["IoULoss", "coarse_segmentation_loss", "downsample_mask", "iou_loss", "soft_iou_per_image"]


def _check_mask_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if is_compiling():
        return
    if pred.ndim != 5 or pred.shape[2] != 1:
        raise CosegShapeError(f"expected predicted masks of shape (B, N, 1, H, W), got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        hint = ""
        if target.ndim == pred.ndim and target.shape[-2:] != pred.shape[-2:]:
            hint = "; resize the ground truth to the prediction's size (downsample_mask does it)"
        elif target.ndim == 4:
            hint = "; add the channel axis with target.unsqueeze(2)"
        raise CosegShapeError(
            f"ground-truth masks of shape {tuple(target.shape)} do not match the predicted masks "
            f"{tuple(pred.shape)}{hint}"
        )
    if not bool(torch.isfinite(target).all()) or bool((target < 0).any()) or bool((target > 1).any()):
        raise CosegValueError("ground-truth masks must hold values in [0, 1] (0 background, 1 object)")


def _check_weight(pred: torch.Tensor, weight: torch.Tensor) -> None:
    if is_compiling():
        return
    if weight.shape != pred.shape:
        raise CosegShapeError(
            f"pixel weights of shape {tuple(weight.shape)} do not match the predicted masks {tuple(pred.shape)}"
        )
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()) or bool((weight > 1).any()):
        raise CosegValueError("pixel weights must hold values in [0, 1] (0 ignores a pixel, 1 counts it fully)")


def soft_iou_per_image(
    probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-6, weight: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Soft IoU of every image, :math:`\sum \min(p, g) / \sum \max(p, g)`, ``(B, N)``.

    The min/max form is the soft Jaccard index of the IoU loss used by Su et al. 2023 (the
    loss LCCo cites for :math:`\eta`); for binary maps it is exactly the IoU. ``eps`` in
    numerator and denominator makes an empty prediction of an empty mask score 1.

    With pixel weights ``weight`` (same shape, in [0, 1]) both sums are weighted,
    :math:`\sum w \min(p, g) / \sum w \max(p, g)`: for a binary target that is
    :math:`\sum w p g / \sum w (p + g - p g)`, the IoU over the pixels that count (weight 0
    ignores a pixel: it changes neither sum and gets no gradient). Weights of 1 give exactly
    the unweighted value.

    Example:
        >>> import torch
        >>> from cosegkit.losses import soft_iou_per_image
        >>> target = torch.zeros(2, 3, 1, 4, 4)  # (B, N, 1, H, W)
        >>> target[..., :2, :] = 1  # the top half is the object
        >>> soft_iou_per_image(target, target)  # (B, N): a perfect prediction scores 1
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
        >>> soft_iou_per_image(torch.full_like(target, 0.5), target).round(decimals=4)  # 4 / 12
        tensor([[0.3333, 0.3333, 0.3333],
                [0.3333, 0.3333, 0.3333]])
    """
    low, high = torch.minimum(probs, target), torch.maximum(probs, target)
    if weight is not None:
        low, high = low * weight, high * weight
    inter = reduce(low, "b n 1 h w -> b n", "sum")
    union = reduce(high, "b n 1 h w -> b n", "sum")
    return (inter + eps) / (union + eps)


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    from_logits: bool = True,
    eps: float = 1e-6,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""IoU loss of eq. (10): :math:`\frac{1}{N}\sum_i \eta(\hat M_i, M_i^{gt})`, averaged over sets.

    :math:`\eta = 1 - \mathrm{softIoU}` per image (see :func:`soft_iou_per_image`), averaged
    over the valid images of the batch. It is 0 for a perfect prediction and lies in [0, 1].

    Args:
        pred: predicted masks ``(B, N, 1, H, W)``: logits (default) or probabilities.
        target: ground-truth masks, same shape, values in [0, 1].
        valid: optional boolean ``(B, N)``; padded images do not count.
        from_logits: apply a sigmoid to ``pred`` first.
        eps: smoothing term.
        weight: optional pixel weights, same shape, in {0, 1} or [0, 1]: the IoU of each image
            is taken over the weighted pixels only (training on pseudo masks ignores the
            pixels whose pseudo label is not confident). ``None``, or all ones, is the plain loss.

    Returns:
        A scalar tensor.

    Example:
        >>> import torch
        >>> from cosegkit.losses import iou_loss
        >>> gt = (torch.rand(2, 3, 1, 8, 8) > 0.5).float()
        >>> iou_loss(gt, gt, from_logits=False).item()
        0.0

        Pixels of weight 0 do not count: a prediction wrong only there scores a perfect 0.

        >>> pred, weight = gt.clone(), torch.ones_like(gt)
        >>> pred[..., :4, :], weight[..., :4, :] = 1 - gt[..., :4, :], 0.0  # wrong in the top half, ignored there
        >>> iou_loss(pred, gt, from_logits=False, weight=weight).item(), iou_loss(pred, gt, from_logits=False) > 0
        (0.0, tensor(True))
    """
    _check_mask_pair(pred, target)
    b, n = pred.shape[:2]
    valid = resolve_valid(valid, b, n, pred.device)
    probs = pred.sigmoid() if from_logits else pred
    if weight is not None:
        _check_weight(pred, weight)
        weight = weight.to(probs.dtype)
    loss = 1.0 - soft_iou_per_image(probs, target.to(probs.dtype), eps, weight)
    w = valid.to(loss.dtype)
    return (loss * w).sum() / w.sum()


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downsample masks ``(B, N, 1, H, W)`` to ``size``: the soft :math:`M^{gt}_{i\\downarrow}`.

    Each coarse cell holds the fraction of its pixels that belong to the object.

    Example:
        >>> import torch
        >>> from cosegkit.losses import downsample_mask
        >>> mask = torch.zeros(1, 1, 1, 4, 4)  # (B, N, 1, H, W)
        >>> mask[..., :2, :3] = 1
        >>> small = downsample_mask(mask, (2, 2))
        >>> small.shape
        torch.Size([1, 1, 1, 2, 2])
        >>> small[0, 0, 0]  # the top-right cell is half object
        tensor([[1.0000, 0.5000],
                [0.0000, 0.0000]])
    """
    b = mask.shape[0]
    flat = mask.flatten(0, 1).float()
    if tuple(flat.shape[-2:]) == tuple(size):
        return mask.float()
    return F.adaptive_avg_pool2d(flat, size).unflatten(0, (b, -1))


def coarse_segmentation_loss(
    coarse_logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    eps: float = 1e-6,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coarse segmentation loss of eq. (11): the IoU loss against the downsampled ground truth.

    Args:
        coarse_logits: ``(B, N, 1, h, w)`` logits of the coarse decoder.
        target: full-resolution ground truth ``(B, N, 1, H, W)``, downsampled to ``(h, w)``
            by area averaging.
        valid: optional boolean ``(B, N)``.
        weight: optional full-resolution pixel weights like ``target``, in [0, 1]. Each
            coarse cell then weighs ``mean(w)`` over its pixels, and its target is the
            weighted fraction of object, ``mean(w * g) / mean(w)`` (0 where the cell weighs 0):
            ignored pixels neither count nor dilute the cell's target. All ones is the plain loss.

    Returns:
        A scalar tensor.

    Example:
        >>> import torch
        >>> from cosegkit.losses import coarse_segmentation_loss
        >>> target = torch.zeros(1, 2, 1, 16, 16)  # full resolution (B, N, 1, H, W)
        >>> target[..., :8, :] = 1  # the top half is the object
        >>> coarse = torch.full((1, 2, 1, 4, 4), -20.0)  # coarse logits (B, N, 1, h, w)
        >>> coarse[..., :2, :] = 20.0  # confident and right on the 4 x 4 grid
        >>> coarse_segmentation_loss(coarse, target).shape
        torch.Size([])
        >>> round(coarse_segmentation_loss(coarse, target).item(), 4)
        0.0
        >>> round(coarse_segmentation_loss(torch.zeros(1, 2, 1, 4, 4), target).item(), 4)  # p = 0.5 everywhere
        0.6667
    """
    if not is_compiling() and (target.ndim != 5 or target.shape[:3] != coarse_logits.shape[:3]):
        raise CosegShapeError(
            f"ground-truth masks of shape {tuple(target.shape)} do not match the coarse masks "
            f"{tuple(coarse_logits.shape)} in (B, N, 1)"
        )
    size = tuple(coarse_logits.shape[-2:])
    if weight is None:
        small = downsample_mask(target, size)
        return iou_loss(coarse_logits, small, valid, from_logits=True, eps=eps)
    if not is_compiling() and weight.shape != target.shape:
        raise CosegShapeError(
            f"pixel weights of shape {tuple(weight.shape)} do not match the ground-truth masks {tuple(target.shape)}"
        )
    weight = weight.float()
    small_weight = downsample_mask(weight, size)
    covered = downsample_mask(weight * target.float(), size)
    small = torch.where(small_weight > 0, covered / small_weight.clamp_min(1e-12), torch.zeros_like(covered))
    return iou_loss(coarse_logits, small.clamp(0.0, 1.0), valid, from_logits=True, eps=eps, weight=small_weight)


class IoULoss(nn.Module):
    """Module form of :func:`iou_loss`.

    Args:
        from_logits: apply a sigmoid to the prediction first.
        eps: smoothing term.

    Example:
        >>> import torch
        >>> from cosegkit.losses import IoULoss
        >>> IoULoss()(torch.zeros(1, 2, 1, 4, 4), torch.ones(1, 2, 1, 4, 4)).item()
        0.5
    """

    def __init__(self, *, from_logits: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.from_logits = from_logits
        self.eps = eps

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return iou_loss(pred, target, valid, from_logits=self.from_logits, eps=self.eps, weight=weight)
