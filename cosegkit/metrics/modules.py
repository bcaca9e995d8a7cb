"""torchmetrics forms of P and J: accumulate over batches, synchronise across processes.

Each class wraps :func:`~cosegkit.metrics.precision_jaccard` (the per-image scores) and
:func:`~cosegkit.metrics.reduce_scores` (the dataset average).

States, chosen so that a distributed sync gives exactly the single-process result:

- ``reduction="images"`` (the protocol): the sums of P and of J and the image count
  (``dist_reduce_fx="sum"``). Sums are float64, so that adding up hundreds of thousands of
  per-image scores loses nothing visible at the four decimals papers print; on a device
  without float64 (Apple MPS) call ``metric.set_dtype(torch.float32)``.
- ``reduction="groups"`` (GroupSeg): every valid image's P, J and group id
  (``dist_reduce_fx="cat"``). A group's images may be spread over batches and processes
  (a distributed sampler splits them), so the per-group means can only be formed after the
  gather. Memory grows with the number of images: three numbers each.

Why the scores are not computed with ``torchmetrics.functional.classification``:
``binary_jaccard_index`` pools the confusion matrix over its whole input (one IoU for the
batch, not one per image) and thresholds every image at the same scalar, while the protocol
binarises each image at its own adaptive threshold and averages per-image scores. Counting
the pixels directly is three sums; it also keeps the protocol's ``1e-10`` denominator
explicit (its both-empty J = 0 coincides with torchmetrics' ``zero_division=0``, but the
formula is the protocol's).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from cosegkit._validation import is_compiling, shape_str
from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.metrics.functional import _check_groups, _resolve_rule, _resolve_size, precision_jaccard, reduce_scores

__all__ = ["CosegJaccard", "CosegMetrics", "CosegPrecision"]


class _CosegScores(Metric):
    """Accumulates the per-image P and J of :func:`precision_jaccard`; subclasses choose the output."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        *,
        preset: str = "ssnm",
        threshold: float | None = None,
        cap: float | None = None,
        size: int | tuple[int, int] | None = 224,
        from_logits: bool = False,
        antialias: bool = True,
        reduction: Literal["images", "groups"] = "images",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _resolve_rule(preset, threshold, cap)  # fail at construction, not at the first batch
        if size is not None:
            _resolve_size(size, torch.empty(0))
        if reduction not in ("images", "groups"):
            raise CosegValueError(f"reduction must be 'images' or 'groups', got {reduction!r}")
        self.preset = preset
        self.threshold = threshold
        self.cap = cap
        self.size = size
        self.from_logits = from_logits
        self.antialias = antialias
        self.reduction = reduction
        if reduction == "images":
            self.add_state("p_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("j_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("p_scores", [], dist_reduce_fx="cat")
            self.add_state("j_scores", [], dist_reduce_fx="cat")
            self.add_state("group_ids", [], dist_reduce_fx="cat")

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
    ) -> None:
        """Score a batch.

        Args:
            pred: predicted masks ``(B, N, 1, H, W)``, probabilities (or logits when the
                metric was built with ``from_logits=True``).
            target: ground-truth masks ``(B, N, 1, H', W')`` in [0, 1].
            valid: optional boolean ``(B, N)``; padded images do not count.
            groups: integer group ids ``(B,)`` (one per set) or ``(B, N)`` (one per image);
                required when ``reduction="groups"``, ignored otherwise.
        """
        p, j = precision_jaccard(
            pred,
            target,
            preset=self.preset,
            threshold=self.threshold,
            cap=self.cap,
            size=self.size,
            from_logits=self.from_logits,
            valid=valid,
            antialias=self.antialias,
        )
        keep = ~torch.isnan(p)
        if self.reduction == "images":
            if groups is not None and not is_compiling():
                _check_groups(groups, p)
            self.p_sum += p[keep].to(self.p_sum.dtype).sum()
            self.j_sum += j[keep].to(self.j_sum.dtype).sum()
            self.count += keep.sum().to(self.count.dtype)
            return
        if groups is None:
            raise CosegValueError(
                "this metric averages per group (reduction='groups'): pass the group id of every set "
                "(B,) or image (B, N) as update(pred, target, valid, groups=...)"
            )
        ids = _check_groups(groups, p)
        self.p_scores.append(p[keep])
        self.j_scores.append(j[keep])
        self.group_ids.append(ids[keep].to(torch.long))

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.get_default_dtype()
        if self.reduction == "images":
            if int(self.count) == 0:
                nan = torch.tensor(math.nan, dtype=dtype, device=self.p_sum.device)
                return nan, nan.clone()
            count = self.count.to(self.p_sum.dtype)
            return (self.p_sum / count).to(dtype), (self.j_sum / count).to(dtype)
        p = _cat(self.p_scores)
        j = _cat(self.j_scores)
        ids = _cat(self.group_ids).round().long()  # set_dtype may have made them floats
        if ids.shape != p.shape:
            raise CosegShapeError(f"corrupt metric state: {shape_str(ids)} group ids for {shape_str(p)} scores")
        return (
            reduce_scores(p, ids, reduction="groups").to(dtype),
            reduce_scores(j, ids, reduction="groups").to(dtype),
        )


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, list) and not state:
        return torch.empty(0)
    return dim_zero_cat(state)


class CosegMetrics(_CosegScores):
    """P and J together, under the SSNM/UFO protocol: ``compute()`` returns ``{"P": ..., "J": ...}``.

    One pass over the masks gives both numbers; see
    :func:`~cosegkit.metrics.precision_jaccard` for the protocol.

    Args:
        preset: binarisation rule: ``"ssnm"`` (adaptive threshold, cap 0.8), ``"ufo"``
            (cap 0.5) or ``"fixed"`` (0.5); see :data:`~cosegkit.metrics.PRESETS`.
        threshold: a fixed threshold, overriding the preset.
        cap: the adaptive threshold's bound, overriding the preset.
        size: evaluation size (int, ``(H, W)``, or ``None`` for the ground truth's own).
        from_logits: the predictions are logits; a sigmoid is applied first.
        antialias: antialias bilinear downscaling (as PIL, the reference, does).
        reduction: ``"images"``: the mean over all images (the SSNM/UFO protocol);
            ``"groups"``: the mean per group, then over groups (GroupSeg); ``update`` then
            needs ``groups``.
        kwargs: passed to :class:`torchmetrics.Metric` (``dist_sync_on_step``,
            ``process_group``, ...).

    Example:
        >>> import torch
        >>> from cosegkit.metrics import CosegMetrics
        >>> metric = CosegMetrics(size=None)
        >>> gt = torch.zeros(2, 3, 1, 8, 8)
        >>> gt[..., 2:6, 2:6] = 1
        >>> metric.update(0.1 + 0.8 * gt, gt)  # perfect
        >>> metric.update(torch.full_like(gt, 0.1), gt)  # nothing found: P 0.75, J 0
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items()}
        {'P': 0.875, 'J': 0.5}
    """

    def compute(self) -> dict[str, torch.Tensor]:
        p, j = self._scores()
        return {"P": p, "J": j}


class CosegPrecision(_CosegScores):
    """Precision P (pixel accuracy of the binarised masks) under the SSNM/UFO protocol.

    Arguments as for :class:`CosegMetrics`; see :func:`~cosegkit.metrics.precision_jaccard`
    for the protocol. Its states equal those of a :class:`CosegJaccard` built with the same
    arguments, so a :class:`torchmetrics.MetricCollection` of the two shares them (its
    compute groups) and scores the masks once.

    Example:
        >>> import torch
        >>> from cosegkit.metrics import CosegPrecision
        >>> metric = CosegPrecision(size=None)
        >>> gt = torch.zeros(1, 2, 1, 4, 4)
        >>> gt[..., :2, :] = 1
        >>> metric(torch.full_like(gt, 0.2), gt)  # nothing found: half the pixels are right
        tensor(0.5000)
    """

    def compute(self) -> torch.Tensor:
        return self._scores()[0]


class CosegJaccard(_CosegScores):
    """Jaccard index J (foreground IoU of the binarised masks) under the SSNM/UFO protocol.

    Arguments as for :class:`CosegMetrics`; see :func:`~cosegkit.metrics.precision_jaccard`.
    An image whose prediction and ground truth are both empty scores 0, as under the
    protocol's formula.

    Example:
        >>> import torch
        >>> from cosegkit.metrics import CosegJaccard
        >>> metric = CosegJaccard(size=None, reduction="groups")
        >>> gt = torch.zeros(2, 2, 1, 4, 4)
        >>> gt[..., :2, :] = 1
        >>> pred = 0.1 + 0.8 * gt
        >>> pred[1] = 0.1  # the second set finds nothing
        >>> metric.update(pred, gt, groups=torch.tensor([0, 1]))
        >>> metric.compute()
        tensor(0.5000)
    """

    def compute(self) -> torch.Tensor:
        return self._scores()[1]
