"""Pixel weights in the IoU losses (training on pseudo masks): ones change nothing, zeros ignore."""

from __future__ import annotations

import pytest
import torch

from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.losses import LCCoLoss, coarse_segmentation_loss, downsample_mask, iou_loss, soft_iou_per_image
from cosegkit.models.output import LCCoOutput

B, N, H, W = 2, 3, 16, 16


def _data(soft: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, N, 1, H, W, generator=g)
    target = torch.rand(B, N, 1, H, W, generator=g)
    target = target if soft else (target > 0.5).float()
    coarse = torch.randn(B, N, 1, 4, 4, generator=g)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    return logits, target, coarse, valid


@pytest.mark.parametrize("soft", [False, True])
def test_weights_of_ones_equal_the_unweighted_losses_exactly(soft) -> None:
    logits, target, coarse, valid = _data(soft)
    ones = torch.ones_like(target)
    assert torch.equal(iou_loss(logits, target, valid, weight=ones), iou_loss(logits, target, valid))
    assert torch.equal(
        iou_loss(logits.sigmoid(), target, from_logits=False, weight=ones),
        iou_loss(logits.sigmoid(), target, from_logits=False),
    )
    assert torch.equal(
        coarse_segmentation_loss(coarse, target, valid, weight=ones), coarse_segmentation_loss(coarse, target, valid)
    )
    out = LCCoOutput(masks=logits, valid=valid, coarse_masks=coarse)
    a, b = LCCoLoss(lambda1=0.7)(out, target, weight=ones), LCCoLoss(lambda1=0.7)(out, target)
    assert torch.equal(a.total, b.total) and torch.equal(a.iou, b.iou) and torch.equal(a.coarse, b.coarse)


def test_the_weighted_iou_is_the_iou_over_the_confident_pixels() -> None:
    logits, target, _, _ = _data()
    p = logits.sigmoid()
    w = (torch.rand(B, N, 1, H, W, generator=torch.Generator().manual_seed(5)) > 0.3).float()
    inter = (w * p * target).sum(dim=(2, 3, 4))
    union = (w * (p + target - p * target)).sum(dim=(2, 3, 4))
    expected = 1 - ((inter + 1e-6) / (union + 1e-6)).mean()
    assert torch.allclose(iou_loss(logits, target, weight=w), expected, atol=1e-6)
    # the same as cutting the ignored pixels out
    kept = soft_iou_per_image(p * w, target * w)
    assert torch.allclose(soft_iou_per_image(p, target, weight=w), kept, atol=1e-6)


def test_zero_weight_pixels_get_zero_gradient() -> None:
    logits, target, coarse, valid = _data()
    w = torch.ones_like(target)
    w[..., : H // 2, :] = 0.0  # the top half of every image is ignored
    w[0, 1] = 0.0  # and one whole image
    logits.requires_grad_(True)
    coarse.requires_grad_(True)
    iou_loss(logits, target, valid, weight=w).backward()
    assert torch.all(logits.grad[w == 0] == 0)
    assert logits.grad[..., H // 2 :, :].abs().sum() > 0
    # the coarse loss: a coarse cell whose pixels are all ignored gets no gradient
    coarse_segmentation_loss(coarse, target, valid, weight=w).backward()
    small = downsample_mask(w, (4, 4))
    assert torch.all(coarse.grad[small == 0] == 0) and coarse.grad[small > 0].abs().sum() > 0
    # the total loss, from the model's outputs back
    logits.grad = coarse.grad = None
    out = LCCoOutput(masks=logits, valid=valid, coarse_masks=coarse)
    LCCoLoss()(out, target, weight=w).total.backward()
    assert torch.all(logits.grad[w == 0] == 0) and torch.all(coarse.grad[small == 0] == 0)


def test_ignored_pixels_do_not_change_the_loss() -> None:
    logits, target, coarse, valid = _data()
    w = torch.ones_like(target)
    w[..., :, : W // 2] = 0.0
    other = logits.clone()
    other[..., :, : W // 2] = torch.randn(B, N, 1, H, W // 2)  # other predictions where ignored
    other_target = target.clone()
    other_target[..., :, : W // 2] = 1 - other_target[..., :, : W // 2]  # and other labels there
    assert torch.allclose(iou_loss(logits, target, weight=w), iou_loss(other, other_target, weight=w))
    a = coarse_segmentation_loss(coarse, target, weight=w)
    assert torch.allclose(a, coarse_segmentation_loss(coarse, other_target, weight=w))


def test_the_coarse_target_is_the_weighted_object_fraction() -> None:
    target = torch.zeros(1, 1, 1, 4, 4)
    target[..., 0, :2] = 1.0  # top-left cell: two object pixels, two background
    w = torch.ones_like(target)
    w[..., 1, :2] = 0.0  # ... and the background ones ignored: that cell is all object
    logits = torch.full((1, 1, 1, 2, 2), -30.0)
    logits[..., 0, 0] = 30.0  # confident: object in the top-left cell only
    assert coarse_segmentation_loss(logits, target, weight=w).item() == pytest.approx(0.0, abs=1e-5)
    assert coarse_segmentation_loss(logits, target).item() > 0.2  # unweighted, that cell is half object


def test_bad_weights_are_refused() -> None:
    logits, target, coarse, _ = _data()
    with pytest.raises(CosegShapeError, match="pixel weights"):
        iou_loss(logits, target, weight=torch.ones(B, N, 1, H, W - 1))
    with pytest.raises(CosegValueError, match=r"\[0, 1\]"):
        iou_loss(logits, target, weight=torch.full_like(target, 2.0))
    with pytest.raises(CosegShapeError, match="pixel weights"):
        coarse_segmentation_loss(coarse, target, weight=torch.ones(B, N, 1, H, W - 1))
