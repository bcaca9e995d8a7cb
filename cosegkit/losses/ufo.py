"""UFO's training losses (Su et al. 2023, ``loss.py`` of the public UFO code), on logits.

UFO trains with four terms of weight 1 each: a weighted binary cross-entropy of the masks, a
binary cross-entropy of the group's class, a smooth-L1 distance between the mask probability
and the ground truth, and an IoU loss. Each is a pure function here, taking logits (where UFO
takes probabilities) and a ``valid`` mask; :class:`UFOLoss` sums them.

Axis legend: b batch of sets, n images per set, c classes, h w spatial.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import reduce
from torch import nn

from cosegkit._validation import is_compiling, resolve_valid
from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.losses.iou import _check_mask_pair
from cosegkit.models.ufo_output import UFOOutput

__all__ = [
    "UFOLoss",
    "UFOLossOutput",
    "smooth_l1_mask_loss",
    "ufo_classification_loss",
    "ufo_iou_loss",
    "weighted_bce_loss",
]


def _valid_pixels(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Check a mask pair and return the boolean ``(B, N, 1, 1, 1)`` mask of real images."""
    _check_mask_pair(logits, target)
    b, n = logits.shape[:2]
    return resolve_valid(valid, b, n, logits.device)[:, :, None, None, None]


def _masked(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and target with padded images zeroed, so that their content (even NaN) reaches nothing."""
    logits = torch.where(keep, logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
    target = torch.where(keep, target.to(logits.dtype), torch.zeros((), dtype=logits.dtype, device=logits.device))
    return logits, target


def _pixel_mean(loss: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of a per-pixel loss ``(B, N, 1, H, W)`` over the pixels of the real images."""
    loss = torch.where(keep, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    pixels = keep.sum() * loss.shape[-1] * loss.shape[-2]
    return loss.sum() / pixels


def weighted_bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    r"""UFO's weighted binary cross-entropy of the masks (``Weighed_Bce_Loss``), on logits.

    With :math:`\rho` the fraction of object among the pixels of the batch whose ground truth
    is exactly 0 or 1 (all real images together, not per image), every pixel gets the weight

    .. math::
        w = \begin{cases} \rho & g = 1 \\ 1 - \rho & g = 0 \\ 0 & \text{otherwise} \end{cases}
        \qquad
        \mathcal L_{wbce} = \frac{1}{|\Omega|} \sum_{\Omega} w \, \mathrm{BCE}(\sigma(x), g),

    averaged over all pixels :math:`\Omega` of the real images (pixels of weight 0 count in
    the denominator, as in UFO's ``F.binary_cross_entropy(x, label, weight=w)``). The weights are
    UFO's as written: the object, usually the smaller part, gets the smaller weight :math:`\rho`.
    Soft ground-truth pixels (neither 0 nor 1, e.g. from resizing) get weight 0.

    Departure: UFO applies ``F.binary_cross_entropy`` to probabilities, whose log is clamped at
    -100; here the same loss is computed from the logits
    (``F.binary_cross_entropy_with_logits``). The two agree within float rounding where the
    probability is not saturated. Where it is, in float32: for :math:`x \gtrsim 16.6` the
    sigmoid rounds to 1, so a background pixel costs ``-log(0)`` clamped to 100 in UFO (here
    :math:`x`) and gets no gradient at all (here :math:`(1 - \rho)/|\Omega|`); for :math:`x \lesssim -27.6` an object pixel's gradient shrinks by
    :math:`\sigma(x) / 10^{-12}` in UFO (the backward of ``F.binary_cross_entropy`` clamps
    :math:`p(1-p)` at :math:`10^{-12}`), and below :math:`x \approx -104` the sigmoid is 0 and
    the cost 100. Here the cost is always :math:`\mathrm{softplus}` of the logit and the gradient
    :math:`w(\sigma(x) - g)/|\Omega|`: a confidently wrong pixel is always pushed back. Padded
    images (``valid`` False) count nowhere: not in :math:`\rho`, not in :math:`|\Omega|`.

    Args:
        logits: mask logits :math:`x`, ``(B, N, 1, H, W)``.
        target: ground-truth masks :math:`g`, same shape, values in [0, 1].
        valid: optional boolean ``(B, N)``; padded images do not count.

    Returns:
        A scalar tensor.

    Shape:
        - logits, target: :math:`(B, N, 1, H, W)`
        - valid: :math:`(B, N)`
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from cosegkit.losses import weighted_bce_loss
        >>> target = torch.zeros(1, 2, 1, 4, 4)  # (B, N, 1, H, W)
        >>> target[..., :1, :] = 1  # a quarter of the pixels is object: rho = 0.25
        >>> loss = weighted_bce_loss(torch.zeros(1, 2, 1, 4, 4), target)  # p = 0.5 everywhere
        >>> loss.shape, round(loss.item(), 4)  # (0.25 * 0.25 + 0.75 * 0.75) * log 2
        (torch.Size([]), 0.4332)
    """
    keep = _valid_pixels(logits, target, valid)
    x, g = _masked(logits, target, keep)
    is_object = (g == 1) & keep
    is_background = (g == 0) & keep
    objects = is_object.sum().to(x.dtype)
    rho = objects / (objects + is_background.sum()).clamp_min(1)
    weight = torch.where(is_object, rho, torch.where(is_background, 1 - rho, torch.zeros_like(rho)))
    loss = F.binary_cross_entropy_with_logits(x, g, weight=weight, reduction="none")
    return _pixel_mean(loss, keep)


def smooth_l1_mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    r"""UFO's smooth-L1 loss (``S_Loss``) between the mask probability and the ground truth.

    .. math::
        \mathcal L_{s} = \frac{1}{|\Omega|} \sum_{\Omega} \mathrm{SmoothL1}_{\beta=1}(\sigma(x) - g)
        = \frac{1}{|\Omega|} \sum_{\Omega} \tfrac12 (\sigma(x) - g)^2,

    the second form because probability and ground truth both lie in [0, 1], so their
    difference never leaves the quadratic part. Averaged over the pixels of the real images.

    Args:
        logits: mask logits :math:`x`, ``(B, N, 1, H, W)``.
        target: ground-truth masks :math:`g`, same shape, values in [0, 1].
        valid: optional boolean ``(B, N)``; padded images do not count.

    Returns:
        A scalar tensor in [0, 0.5].

    Shape:
        - logits, target: :math:`(B, N, 1, H, W)`
        - valid: :math:`(B, N)`
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from cosegkit.losses import smooth_l1_mask_loss
        >>> target = torch.ones(2, 3, 1, 4, 4)  # (B, N, 1, H, W)
        >>> smooth_l1_mask_loss(torch.zeros(2, 3, 1, 4, 4), target).item()  # 0.5 * (0.5 - 1) ** 2
        0.125
    """
    keep = _valid_pixels(logits, target, valid)
    x, g = _masked(logits, target, keep)
    loss = F.smooth_l1_loss(x.sigmoid(), g, reduction="none", beta=1.0)
    return _pixel_mean(loss, keep)


def ufo_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *, eps: float = 1e-6
) -> torch.Tensor:
    r"""UFO's IoU loss (``IOU``): one minus the soft IoU of each image, averaged over the images.

    .. math::
        \mathcal L_{iou} = \frac{1}{|V|} \sum_{i \in V} 1 -
        \frac{\sum p_i g_i + \varepsilon}{\sum g_i + \sum p_i - \sum p_i g_i + \varepsilon},
        \qquad p = \sigma(x),

    over the real images :math:`V`. This is the product form of UFO's ``_iou``; LCCo's
    :func:`~cosegkit.losses.iou_loss` uses the min/max form, equal to it for binary ground
    truth but not for soft ground truth, hence a function of its own. UFO has no
    :math:`\varepsilon`; the default ``1e-6`` changes each image's loss by at most
    :math:`\varepsilon / \text{union}` and makes an empty prediction of an empty mask cost 0
    instead of ``0 / 0``. ``eps=0`` is UFO's formula exactly.

    Args:
        logits: mask logits :math:`x`, ``(B, N, 1, H, W)``.
        target: ground-truth masks :math:`g`, same shape, values in [0, 1].
        valid: optional boolean ``(B, N)``; padded images do not count.
        eps: smoothing term in numerator and denominator.

    Returns:
        A scalar tensor in [0, 1].

    Shape:
        - logits, target: :math:`(B, N, 1, H, W)`
        - valid: :math:`(B, N)`
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from cosegkit.losses import ufo_iou_loss
        >>> target = torch.zeros(1, 2, 1, 4, 4)  # (B, N, 1, H, W)
        >>> target[..., :2, :] = 1  # the top half is the object
        >>> round(ufo_iou_loss(torch.zeros(1, 2, 1, 4, 4), target).item(), 4)  # 1 - 4 / (8 + 8 - 4)
        0.6667
        >>> round(ufo_iou_loss(target * 60 - 30, target).item(), 4)  # confident and right
        0.0
    """
    keep = _valid_pixels(logits, target, valid)
    x, g = _masked(logits, target, keep)
    p = x.sigmoid()
    inter = reduce(p * g, "b n 1 h w -> b n", "sum")
    union = reduce(g, "b n 1 h w -> b n", "sum") + reduce(p, "b n 1 h w -> b n", "sum") - inter
    loss = 1 - (inter + eps) / (union + eps)
    keep = keep.flatten(1)
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    return loss.sum() / keep.sum()


def ufo_classification_loss(class_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    r"""UFO's classification loss (``Cls_Loss``): binary cross-entropy of the group's class, on logits.

    .. math::
        \mathcal L_c = -\frac{1}{BC} \sum_{b, c} y_{bc} \log \sigma(z_{bc})
        + (1 - y_{bc}) \log(1 - \sigma(z_{bc})).

    UFO's target :math:`y` is the multi-hot vector of the COCO classes of the group; cosegkit's
    readers and worlds know one class per set, so ``classes`` may be ``(B,)`` class indices,
    turned into one-hot vectors, or ``(B, C)`` multi-hot (or soft) targets as UFO's.

    Departure: UFO applies ``F.binary_cross_entropy`` to ``sigmoid(z)`` (log clamped at -100);
    here it is ``F.binary_cross_entropy_with_logits`` on :math:`z`, equal where the sigmoid is
    not saturated (see :func:`weighted_bce_loss`).

    Args:
        class_logits: the group's class logits :math:`z`, ``(B, C)``.
        classes: ``(B,)`` integer class of each set, or ``(B, C)`` targets in [0, 1].

    Returns:
        A scalar tensor.

    Shape:
        - class_logits: :math:`(B, C)`
        - classes: :math:`(B)` or :math:`(B, C)`
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from cosegkit.losses import ufo_classification_loss
        >>> logits = torch.zeros(2, 4)  # (B, C): undecided
        >>> round(ufo_classification_loss(logits, torch.tensor([1, 3])).item(), 4)  # log 2
        0.6931
        >>> multi_hot = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # the same as (B, C)
        >>> round(ufo_classification_loss(logits, multi_hot).item(), 4)
        0.6931
    """
    if not is_compiling():
        if class_logits.ndim != 2:
            raise CosegShapeError(
                f"expected class logits of shape (B, C), got {tuple(class_logits.shape)}; "
                f"pass the model's output.class_logits"
            )
        b, c = class_logits.shape
        if classes.ndim == 1:
            if classes.shape[0] != b or classes.is_floating_point():
                raise CosegShapeError(
                    f"expected integer classes of shape ({b},), one per set, got {tuple(classes.shape)} "
                    f"{classes.dtype}; pass class indices as a long tensor, or (B, C) multi-hot targets"
                )
            if bool((classes < 0).any()) or bool((classes >= c).any()):
                raise CosegValueError(
                    f"classes must lie in [0, {c}) for {c} class logits, got {classes.tolist()}; "
                    f"build the model with as many classes as the data's vocabulary"
                )
        elif classes.shape != class_logits.shape:
            raise CosegShapeError(f"expected classes of shape ({b},) or ({b}, {c}), got {tuple(classes.shape)}")
        elif not bool(torch.isfinite(classes).all()) or bool((classes < 0).any()) or bool((classes > 1).any()):
            raise CosegValueError("multi-hot class targets must hold values in [0, 1] (1 for each class present)")
    if classes.ndim == 1:
        classes = F.one_hot(classes, class_logits.shape[1])
    return F.binary_cross_entropy_with_logits(class_logits, classes.to(class_logits.dtype))


class UFOLossOutput(NamedTuple):
    """UFO's total loss and its four terms, each a scalar tensor.

    Attributes:
        total: the weighted sum; call ``.backward()`` on it.
        mask: :func:`weighted_bce_loss`.
        classification: :func:`ufo_classification_loss`.
        smooth: :func:`smooth_l1_mask_loss`.
        iou: :func:`ufo_iou_loss`.

    Example:
        >>> import torch
        >>> from cosegkit.losses import UFOLossOutput
        >>> zero = torch.zeros(())
        >>> losses = UFOLossOutput(total=zero + 3, mask=zero + 1, classification=zero + 1, smooth=zero, iou=zero + 1)
        >>> losses.total.item(), losses._fields
        (3.0, ('total', 'mask', 'classification', 'smooth', 'iou'))
    """

    total: torch.Tensor
    mask: torch.Tensor
    classification: torch.Tensor
    smooth: torch.Tensor
    iou: torch.Tensor


class UFOLoss(nn.Module):
    r"""UFO's training loss (``Loss`` of its ``loss.py``), the four terms weighted and summed.

    .. math::
        \mathcal L = \lambda_m \mathcal L_{wbce} + \lambda_c \mathcal L_c
        + \lambda_s \mathcal L_s + \lambda_i \mathcal L_{iou},

    with :func:`weighted_bce_loss`, :func:`ufo_classification_loss`,
    :func:`smooth_l1_mask_loss` and :func:`ufo_iou_loss`; UFO weighs all four 1. Padded images
    (``output.valid`` False) count in no term.

    Args:
        mask_weight: :math:`\lambda_m`.
        classification_weight: :math:`\lambda_c`.
        smooth_weight: :math:`\lambda_s`.
        iou_weight: :math:`\lambda_i`.

    Example:
        >>> import torch
        >>> from cosegkit.losses import UFOLoss
        >>> from cosegkit.models.ufo_output import UFOOutput
        >>> logits = torch.zeros(2, 3, 1, 8, 8)  # mask logits (B, N, 1, H, W)
        >>> class_logits = torch.zeros(2, 5)  # (B, C)
        >>> output = UFOOutput(masks=logits, class_logits=class_logits, class_probs=class_logits.sigmoid(),
        ...                    valid=torch.ones(2, 3, dtype=torch.bool))
        >>> masks = torch.ones(2, 3, 1, 8, 8)  # ground truth (B, N, 1, H, W)
        >>> losses = UFOLoss()(output, masks, torch.tensor([0, 4]))  # each set's class
        >>> losses._fields
        ('total', 'mask', 'classification', 'smooth', 'iou')
        >>> [round(v.item(), 4) for v in losses]  # rho = 1: total = mask + classification + smooth + iou
        [2.0113, 0.6931, 0.6931, 0.125, 0.5]
    """

    def __init__(
        self,
        *,
        mask_weight: float = 1.0,
        classification_weight: float = 1.0,
        smooth_weight: float = 1.0,
        iou_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if min(mask_weight, classification_weight, smooth_weight, iou_weight) < 0:
            raise CosegValueError(
                f"loss weights must be non-negative, got mask_weight={mask_weight}, "
                f"classification_weight={classification_weight}, smooth_weight={smooth_weight}, "
                f"iou_weight={iou_weight}"
            )
        self.mask_weight = mask_weight
        self.classification_weight = classification_weight
        self.smooth_weight = smooth_weight
        self.iou_weight = iou_weight

    def forward(self, output: UFOOutput, masks: torch.Tensor, classes: torch.Tensor) -> UFOLossOutput:
        """Total loss of one batch.

        Args:
            output: the model's :class:`~cosegkit.models.ufo_output.UFOOutput`, or anything with
                ``masks`` (logits ``(B, N, 1, H, W)``), ``class_logits`` ``(B, C)`` and
                ``valid`` ``(B, N)``.
            masks: ground-truth masks ``(B, N, 1, H, W)`` in [0, 1].
            classes: each set's class, ``(B,)`` long, or ``(B, C)`` multi-hot.

        Returns:
            A :class:`UFOLossOutput`; call ``.total.backward()``.
        """
        if not is_compiling() and output.class_logits.shape[:1] != output.masks.shape[:1]:
            raise CosegShapeError(
                f"output.class_logits {tuple(output.class_logits.shape)} and output.masks "
                f"{tuple(output.masks.shape)} disagree on the number of sets B; pass one model output"
            )
        valid = output.valid
        l_mask = weighted_bce_loss(output.masks, masks, valid)
        l_cls = ufo_classification_loss(output.class_logits, classes)
        l_smooth = smooth_l1_mask_loss(output.masks, masks, valid)
        l_iou = ufo_iou_loss(output.masks, masks, valid)
        total = (
            self.mask_weight * l_mask
            + self.classification_weight * l_cls
            + self.smooth_weight * l_smooth
            + self.iou_weight * l_iou
        )
        return UFOLossOutput(total, l_mask, l_cls, l_smooth, l_iou)

    def extra_repr(self) -> str:
        return (
            f"mask_weight={self.mask_weight}, classification_weight={self.classification_weight}, "
            f"smooth_weight={self.smooth_weight}, iou_weight={self.iou_weight}"
        )
