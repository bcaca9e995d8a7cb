r"""Precision P and Jaccard index J of co-segmentation, as SSNM and UFO compute them.

The field's P/J numbers (LCCo Table 1 included) come from the evaluation code of SSNM
(AAAI 2020, ``cj4L/SSNM-Coseg``: ``val.py`` and ``tools.py``) and UFO (IEEE TMM 2023,
``suyukun666/UFO``: the same two files). This module reproduces that code on tensors:

1. Prediction and ground truth are compared at ``size x size`` (224 there, the network
   resolution). The ground truth is resized bilinearly and binarised at 0.5; the predicted
   probabilities are resized bilinearly too (there they already come out at 224).
2. Each prediction is binarised at its own threshold
   :math:`t = \min(\mathrm{mean}(\hat M) + \mathrm{std}(\hat M), \mathrm{cap})`, with cap 0.8
   (SSNM) or 0.5 (UFO); ``"fixed"`` uses :math:`t = 0.5` (GroupSeg's rule).
3. Per image, :math:`P = |\{\hat B = G\}| / (HW)` (pixel accuracy over foreground and
   background) and :math:`J = |\hat B \cap G| / (|\hat B \cup G| + 10^{-10})`.
4. Both are averaged over all images of the dataset (:func:`~cosegkit.metrics.reduce_scores`).

Details taken from the reference code, each decided by it:

- **std** is the population standard deviation (``np.std``, ddof 0), not torch's unbiased
  default: ``generate_binary_map`` in ``tools.py`` runs on numpy arrays.
- **comparison** is strict, ``pred > t`` (``binary_map = pred > threshold``), so a pixel
  exactly at the threshold is background. The mean and std are taken in float64 and ``t``
  is rounded to the map's dtype before the comparison (float32 numpy there). In float64 a
  constant map is exactly its own threshold, so it is empty, where float32 sums make it
  all-object or empty by rounding luck; comparing in float32 keeps the reference's ties at
  the cap (an 8-bit value 204/255 rounds to float32(0.8), which is not above the cap).
- **ground truth**: the reference resizes the 8-bit mask with PIL's bilinear filter
  (``transforms.Resize`` on a PIL image, antialiased when shrinking), so the resized values
  are rounded to multiples of 1/255 before ``gt > 0.5``. On unrounded values that test is
  ``gt >= 0.5`` (127.5/255 rounds up to 128/255 > 0.5), which is what is computed here; both
  agree on every 8-bit mask given at the evaluation size, and on resized values exactly at
  0.5, which a 2x downscale of a binary mask gives wherever an edge halves a pixel pair.
  Resizing uses ``F.interpolate(..., mode="bilinear", antialias=True)``, torch's match for
  PIL's filter; the two differ only in the last bits, so a pixel whose resized value lies
  within about 1/255 of 0.5 can flip (measured on random masks: 0.1 to 0.2 % of the
  pixels, all of them that close to 0.5). Without antialiasing, 7 to 8 % differ.
- **both empty**: an image whose binary prediction and ground truth are both empty scores
  J = 0 (the 1e-10 in the denominator makes 0 / 0 into 0) and P = 1. This is the
  protocol's behaviour, kept so that numbers compare with the papers'; a "both empty is
  perfect" convention would raise J on sets with images that lack the object.

Axis legend: b batch of sets, n images per set, h w spatial, m = b * n images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from cosegkit._validation import is_compiling, resolve_valid, shape_str
from cosegkit.errors import CosegShapeError, CosegValueError

__all__ = ["PRESETS", "ThresholdPreset", "get_preset", "precision_jaccard", "reduce_scores", "thresholds"]

JACCARD_EPS = 1e-10
"""The constant in J's denominator, as in ``calc_precision_and_jaccard`` of SSNM/UFO."""


@dataclass(frozen=True)
class ThresholdPreset:
    """How a predicted probability map becomes a binary mask.

    Exactly one field is set: ``threshold`` for a fixed threshold, or ``cap`` for the
    adaptive threshold :math:`\\min(\\mathrm{mean} + \\mathrm{std}, \\mathrm{cap})` of each image.

    Attributes:
        threshold: a fixed threshold in [0, 1].
        cap: the upper bound of the adaptive threshold (``math.inf``: no bound).

    Example:
        >>> import torch
        >>> from cosegkit.metrics import ThresholdPreset, get_preset, precision_jaccard
        >>> rule = ThresholdPreset(cap=0.5)
        >>> rule == get_preset("ufo"), rule.threshold, rule.cap
        (True, None, 0.5)
        >>> ThresholdPreset(threshold=0.3, cap=0.5)  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        cosegkit.errors.CosegValueError: a threshold preset needs exactly one of threshold (fixed) and cap (adaptive),
        got threshold=0.3, cap=0.5
        >>> gt = torch.zeros(1, 1, 1, 4, 4)  # (B, N, 1, H, W)
        >>> gt[..., :1, :] = 1  # the top row is the object
        >>> pred = 0.1 + 0.3 * gt  # right, but never above 0.5
        >>> for rule in (ThresholdPreset(threshold=0.5), ThresholdPreset(cap=0.8)):
        ...     p, j = precision_jaccard(pred, gt, threshold=rule.threshold, cap=rule.cap, size=None)
        ...     print(rule, tuple(j.shape), p.tolist(), j.tolist())
        ThresholdPreset(threshold=0.5, cap=None) (1, 1) [[0.75]] [[0.0]]
        ThresholdPreset(threshold=None, cap=0.8) (1, 1) [[1.0]] [[1.0]]
    """

    threshold: float | None = None
    cap: float | None = None

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.cap is None):
            raise CosegValueError(
                f"a threshold preset needs exactly one of threshold (fixed) and cap (adaptive), "
                f"got threshold={self.threshold}, cap={self.cap}"
            )
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise CosegValueError(f"a fixed threshold must lie in [0, 1], got {self.threshold}")
        if self.cap is not None and not self.cap > 0.0:
            raise CosegValueError(f"the cap of the adaptive threshold must be positive, got {self.cap}")


PRESETS: dict[str, ThresholdPreset] = {
    "ssnm": ThresholdPreset(cap=0.8),
    "ufo": ThresholdPreset(cap=0.5),
    "fixed": ThresholdPreset(threshold=0.5),
}
"""Named binarisation rules: ``"ssnm"`` (adaptive, cap 0.8: SSNM ``tools.py``), ``"ufo"``
(adaptive, cap 0.5: UFO ``tools.py``, ``th=0.5``), ``"fixed"`` (0.5: GroupSeg)."""


def get_preset(name: str) -> ThresholdPreset:
    """Look up a binarisation preset by name.

    Raises:
        KeyError: for an unknown name; the message lists the valid ones.

    Example:
        >>> from cosegkit.metrics import get_preset
        >>> get_preset("ufo")
        ThresholdPreset(threshold=None, cap=0.5)
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def _resolve_rule(preset: str, threshold: float | None, cap: float | None) -> ThresholdPreset:
    rule = get_preset(preset)
    if threshold is not None and cap is not None:
        raise CosegValueError(
            f"give threshold (a fixed threshold) or cap (the adaptive threshold's bound), not both; "
            f"got threshold={threshold}, cap={cap}"
        )
    if threshold is not None:
        return ThresholdPreset(threshold=float(threshold))
    if cap is not None:
        return ThresholdPreset(cap=float(cap))
    return rule


def _resolve_size(size: int | tuple[int, int] | None, target: torch.Tensor) -> tuple[int, int]:
    if size is None:
        return int(target.shape[-2]), int(target.shape[-1])
    if isinstance(size, int) and not isinstance(size, bool):
        pair: tuple = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        pair = tuple(size)
    else:
        raise CosegValueError(f"size must be an int, a pair (H, W) or None, got {size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise CosegValueError(f"size must hold positive integers, got {size!r}")
    return pair


def _check_masks(pred: torch.Tensor, target: torch.Tensor, *, from_logits: bool) -> None:
    if is_compiling():
        return
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor):
            raise CosegValueError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if pred.ndim != 5 or pred.shape[2] != 1:
        hint = ""
        if pred.ndim == 4:
            hint = "; a (B, 1, H, W) batch of single images becomes B one-image sets with pred.unsqueeze(1)"
        elif pred.ndim == 3:
            hint = "; a single map (1, H, W) needs a batch and a set axis: pred[None, None]"
        raise CosegShapeError(f"expected predicted masks of shape (B, N, 1, H, W), got {shape_str(pred)}{hint}")
    if 0 in pred.shape:
        raise CosegShapeError(f"expected non-empty predicted masks, got shape {shape_str(pred)}")
    if target.ndim != 5 or target.shape[:3] != pred.shape[:3]:
        hint = "; add the channel axis with target.unsqueeze(2)" if target.ndim == 4 else ""
        raise CosegShapeError(
            f"ground-truth masks of shape {shape_str(target)} do not match the predicted masks "
            f"{shape_str(pred)} in (B, N, 1); the spatial size may differ{hint}"
        )
    if 0 in target.shape:
        raise CosegShapeError(f"expected non-empty ground-truth masks, got shape {shape_str(target)}")
    if not pred.is_floating_point():
        raise CosegValueError(
            f"expected floating-point predictions (probabilities, or logits with from_logits=True), "
            f"got dtype {pred.dtype}; use pred.float()"
        )
    if not bool(torch.isfinite(pred).all()):
        raise CosegValueError("predicted masks contain NaN or Inf values")
    if not from_logits:
        lo, hi = torch.aminmax(pred.detach())
        if lo < 0 or hi > 1:
            raise CosegValueError(
                f"expected probabilities in [0, 1], got values in [{lo.item():.3g}, {hi.item():.3g}]; "
                f"pass from_logits=True for logits (or pred.sigmoid())"
            )
    t = target.detach()
    if t.dtype != torch.bool:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CosegValueError("ground-truth masks contain NaN or Inf values")
        lo, hi = torch.aminmax(t)
        if lo < 0 or hi > 1:
            hint = "; 8-bit masks need target / 255" if hi <= 255 and lo >= 0 else ""
            raise CosegValueError(
                f"expected ground-truth masks in [0, 1] (0 background, 1 object), got values in "
                f"[{lo.item():.3g}, {hi.item():.3g}]{hint}"
            )


def _resize(x: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def _thresholds(probs: torch.Tensor, rule: ThresholdPreset) -> torch.Tensor:
    """Per-map thresholds ``(..., 1, 1)`` of probability maps ``(..., h, w)``, in the maps' dtype."""
    if rule.threshold is not None:
        return torch.full((*probs.shape[:-2], 1, 1), rule.threshold, dtype=probs.dtype, device=probs.device)
    # statistics in float64 (exact for a constant map), compared in the map's dtype
    wide = probs.to(torch.float32 if probs.device.type == "mps" else torch.float64)
    mean = wide.mean(dim=(-2, -1), keepdim=True)
    std = wide.std(dim=(-2, -1), correction=0, keepdim=True)  # population std, as np.std
    return (mean + std).clamp(max=rule.cap).to(probs.dtype)


def thresholds(probs: torch.Tensor, preset: str = "ssnm") -> torch.Tensor:
    """The threshold a preset puts on each probability map, as :func:`precision_jaccard` applies it.

    Args:
        probs: probability maps ``(..., h, w)`` in [0, 1].
        preset: ``"ssnm"``, ``"ufo"`` or ``"fixed"``.

    Returns:
        ``(..., 1, 1)`` in the maps' dtype; a map's binary mask is ``probs > thresholds``.

    Example:
        >>> import torch
        >>> from cosegkit.metrics import thresholds
        >>> maps = torch.tensor([[[0.9, 0.1], [0.2, 0.1]]])
        >>> thresholds(maps, "fixed").flatten().tolist(), (maps > thresholds(maps)).tolist()
        ([0.5], [[[True, False], [False, False]]])
    """
    return _thresholds(probs, get_preset(preset))


def precision_jaccard(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    preset: str = "ssnm",
    threshold: float | None = None,
    cap: float | None = None,
    size: int | tuple[int, int] | None = 224,
    from_logits: bool = False,
    valid: torch.Tensor | None = None,
    antialias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-image precision P and Jaccard index J under the SSNM/UFO protocol.

    See the module docstring for the protocol and where each detail comes from. In short,
    per image, at the evaluation size:

    .. math::
        \hat B = \hat M > \min(\mathrm{mean}(\hat M) + \mathrm{std}(\hat M), \mathrm{cap}),\quad
        G = M^{gt} \ge 0.5,\quad
        P = \frac{|\{\hat B = G\}|}{HW},\quad
        J = \frac{|\hat B \cap G|}{|\hat B \cup G| + 10^{-10}}

    An image whose binary prediction and ground truth are both empty scores P = 1, J = 0,
    as under the protocol's formula.

    Args:
        pred: predicted masks ``(B, N, 1, H, W)``: probabilities in [0, 1] (what
            :meth:`LCCo.predict <cosegkit.LCCo.predict>` returns), or logits with
            ``from_logits=True`` (``LCCoOutput.masks``).
        target: ground-truth masks ``(B, N, 1, H', W')`` in [0, 1] (float, bool or 0/1
            integers), at any resolution.
        preset: binarisation rule, a key of :data:`PRESETS`: ``"ssnm"`` (adaptive, cap 0.8),
            ``"ufo"`` (adaptive, cap 0.5) or ``"fixed"`` (0.5).
        threshold: a fixed threshold, overriding the preset.
        cap: the adaptive threshold's bound, overriding the preset (``math.inf``: none).
            Give at most one of ``threshold`` and ``cap``.
        size: evaluation size, an int (square) or ``(H, W)``; ``None`` evaluates at the
            ground truth's own resolution (the prediction is resized to it).
        from_logits: apply a sigmoid to ``pred`` first.
        valid: optional boolean ``(B, N)``; padded images (False) are not scored.
        antialias: antialias bilinear downscaling, as PIL's resize (the reference) does.

    Returns:
        ``(P, J)``, each ``(B, N)`` in the prediction's floating dtype (float32 at least),
        with NaN at padded images so that they cannot be averaged in by accident; reduce with
        :func:`reduce_scores`, which skips them.

    Raises:
        CosegShapeError: if the shapes are not ``(B, N, 1, H, W)`` and ``(B, N, 1, H', W')``.
        CosegValueError: for values outside [0, 1] (probabilities, ground truth), NaN, or a
            bad ``size``/``threshold``/``cap``.
        KeyError: for an unknown preset; the message lists the valid names.

    Shape:
        - pred: :math:`(B, N, 1, H, W)`
        - target: :math:`(B, N, 1, H', W')`
        - valid: :math:`(B, N)`
        - output: two tensors :math:`(B, N)`

    Example:
        >>> import torch
        >>> from cosegkit.metrics import precision_jaccard
        >>> gt = torch.zeros(1, 2, 1, 4, 4)
        >>> gt[..., :2, :] = 1  # the top half is the object
        >>> pred = 0.1 + 0.8 * gt  # confident and right
        >>> pred[0, 1, 0, 0, :2] = 0.1  # two object pixels missed in the second image
        >>> p, j = precision_jaccard(pred, gt, size=None)
        >>> p.shape, p, j
        (torch.Size([1, 2]), tensor([[1.0000, 0.8750]]), tensor([[1.0000, 0.7500]]))
    """
    rule = _resolve_rule(preset, threshold, cap)
    _check_masks(pred, target, from_logits=from_logits)
    out_size = _resolve_size(size, target)
    b, n = pred.shape[:2]
    valid = resolve_valid(valid, b, n, pred.device)

    with torch.no_grad():
        probs = pred.detach()
        if probs.dtype not in (torch.float32, torch.float64):
            probs = probs.float()  # half precision would move the threshold
        if from_logits:
            probs = probs.sigmoid()
        probs = _resize(rearrange(probs, "b n 1 h w -> (b n) 1 h w"), out_size, antialias)
        gt = rearrange(target.detach().to(device=probs.device, dtype=probs.dtype), "b n 1 h w -> (b n) 1 h w")
        gt = _resize(gt, out_size, antialias) >= 0.5

        binary = probs > _thresholds(probs, rule)

        correct = reduce((binary == gt).to(probs.dtype), "m 1 h w -> m", "sum")
        inter = reduce((binary & gt).to(probs.dtype), "m 1 h w -> m", "sum")
        union = reduce((binary | gt).to(probs.dtype), "m 1 h w -> m", "sum")
        precision = correct / math.prod(out_size)
        jaccard = inter / (union + JACCARD_EPS)

        precision = rearrange(precision, "(b n) -> b n", b=b).masked_fill(~valid, math.nan)
        jaccard = rearrange(jaccard, "(b n) -> b n", b=b).masked_fill(~valid, math.nan)
    return precision, jaccard


def _check_groups(groups: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Return integer group ids of ``scores``' shape; ``(B,)`` ids of sets are broadcast over N."""
    if not isinstance(groups, torch.Tensor):
        groups = torch.as_tensor(groups)
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise CosegValueError(f"expected integer group ids, got dtype {groups.dtype}; use groups.long()")
    if groups.shape == scores.shape:
        return groups.to(scores.device)
    if scores.ndim == 2 and groups.shape == scores.shape[:1]:
        return groups.to(scores.device)[:, None].expand_as(scores)
    per_set = f" or ({scores.shape[0]},), one id per set" if scores.ndim == 2 else ""
    raise CosegShapeError(
        f"expected group ids of shape {tuple(scores.shape)}, one per image{per_set}, got {tuple(groups.shape)}"
    )


def reduce_scores(
    scores: torch.Tensor,
    groups: torch.Tensor | None = None,
    *,
    reduction: Literal["images", "groups"] = "images",
) -> torch.Tensor:
    """Average per-image scores into one number; NaN entries (padded images) are skipped.

    - ``"images"`` (the SSNM/UFO protocol): the mean over all images.
    - ``"groups"`` (GroupSeg): the mean of each group's images, then the mean over groups,
      so that every group weighs the same whatever its size.

    Args:
        scores: per-image scores of any shape, e.g. the ``(B, N)`` P or J of
            :func:`precision_jaccard`; NaN marks images that do not count.
        groups: integer group ids, one per image (``scores``' shape) or, for ``(B, N)``
            scores, one per set ``(B,)``. Needed for ``"groups"``; ignored for ``"images"``.
            Ids may be any integers; images with the same id form a group, wherever they
            sit in the batch.
        reduction: ``"images"`` or ``"groups"``.

    Returns:
        A scalar tensor; NaN when no score counts.

    Example:
        >>> import torch
        >>> from cosegkit.metrics import reduce_scores
        >>> scores = torch.tensor([1.0, 0.0, 0.0, 0.5])
        >>> groups = torch.tensor([7, 7, 7, 3])  # a group of three, a group of one
        >>> reduce_scores(scores)  # (1 + 0 + 0 + 0.5) / 4
        tensor(0.3750)
        >>> reduce_scores(scores, groups, reduction="groups")  # (1 / 3 + 0.5) / 2
        tensor(0.4167)
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise CosegValueError(f"expected floating-point scores, got {getattr(scores, 'dtype', type(scores).__name__)}")
    if reduction not in ("images", "groups"):
        raise CosegValueError(f"reduction must be 'images' or 'groups', got {reduction!r}")
    keep = ~torch.isnan(scores)
    if reduction == "images":
        if groups is not None:
            _check_groups(groups, scores)
        return scores[keep].mean()
    if groups is None:
        raise CosegValueError("reduction='groups' needs the group id of every image (or set): pass groups=...")
    ids = _check_groups(groups, scores)[keep]
    values = scores[keep]
    if values.numel() == 0:
        return values.sum() * math.nan
    _, inverse = torch.unique(ids, return_inverse=True)
    counts = torch.bincount(inverse).to(values.dtype)
    sums = torch.zeros_like(counts).index_add_(0, inverse, values)
    return (sums / counts).mean()
