"""Tests of the IoU loss of eq. (10) and the coarse segmentation loss of eq. (11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.losses import IoULoss, coarse_segmentation_loss, downsample_mask, iou_loss, soft_iou_per_image

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9))
seeds = st.integers(0, 2**31 - 1)


def _binary(shape, p=0.5):
    return (torch.rand(shape) < p).float()


def _numpy_binary_iou_loss(pred: np.ndarray, gt: np.ndarray) -> float:
    """1 − |A∩B| / |A∪B| per image, averaged; an empty prediction of an empty mask scores IoU 1."""
    losses = []
    h, w = pred.shape[-2:]
    for p, g in zip(pred.reshape(-1, h * w), gt.reshape(-1, h * w), strict=True):
        a, b = p.astype(bool), g.astype(bool)
        inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
        losses.append(0.0 if union == 0 else 1.0 - inter / union)
    return float(np.mean(losses))


# ---------------------------------------------------------------------------- values


@given(shape=shapes, seed=seeds)
def test_perfect_prediction_gives_zero(shape, seed):
    torch.manual_seed(seed)
    b, n, h, w = shape
    gt = _binary((b, n, 1, h, w))
    assert iou_loss(gt, gt, from_logits=False).item() == pytest.approx(0.0, abs=1e-6)
    logits = gt * 60 - 30  # ±30
    assert iou_loss(logits, gt).item() == pytest.approx(0.0, abs=1e-5)


@given(shape=shapes, seed=seeds, scale=st.floats(0.1, 20.0), p=st.floats(0.0, 1.0))
def test_loss_in_unit_interval(shape, seed, scale, p):
    torch.manual_seed(seed)
    b, n, h, w = shape
    logits = torch.randn(b, n, 1, h, w) * scale
    target = _binary((b, n, 1, h, w), p)
    loss = iou_loss(logits, target)
    assert loss.shape == ()
    assert torch.isfinite(loss)
    assert -1e-6 <= loss.item() <= 1.0 + 1e-6
    soft = torch.rand(b, n, 1, h, w)  # soft targets too
    assert -1e-6 <= iou_loss(logits, soft).item() <= 1.0 + 1e-6


@given(shape=shapes, seed=seeds, p=st.floats(0.0, 1.0), q=st.floats(0.0, 1.0))
def test_binary_inputs_give_one_minus_iou(shape, seed, p, q):
    torch.manual_seed(seed)
    b, n, h, w = shape
    pred = _binary((b, n, 1, h, w), p)
    gt = _binary((b, n, 1, h, w), q)
    expected = _numpy_binary_iou_loss(pred.numpy(), gt.numpy())
    assert iou_loss(pred, gt, from_logits=False).item() == pytest.approx(expected, abs=1e-5)


def test_hand_computed_iou():
    pred = torch.zeros(1, 1, 1, 4, 4)
    gt = torch.zeros(1, 1, 1, 4, 4)
    pred[..., :2, :] = 1  # 8 pixels
    gt[..., 1:3, :] = 1  # 8 pixels, 4 shared
    # intersection 4, union 12
    assert iou_loss(pred, gt, from_logits=False).item() == pytest.approx(1 - 4 / 12, abs=1e-6)


def test_soft_iou_is_min_over_max():
    probs = torch.tensor([0.2, 0.9, 0.5, 0.0]).view(1, 1, 1, 2, 2)
    gt = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 2, 2)
    # sum(min) = 0 + 0.9 + 0.5 + 0 = 1.4, sum(max) = 0.2 + 1 + 1 + 0 = 2.2
    assert soft_iou_per_image(probs, gt).item() == pytest.approx(1.4 / 2.2, abs=1e-5)
    assert iou_loss(probs, gt, from_logits=False).item() == pytest.approx(1 - 1.4 / 2.2, abs=1e-5)
    # from_logits applies a sigmoid first
    logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    assert iou_loss(logits, gt).item() == pytest.approx(1 - 1.4 / 2.2, abs=1e-4)


def test_empty_prediction_of_an_empty_mask():
    empty = torch.zeros(2, 3, 1, 5, 5)
    assert iou_loss(empty, empty, from_logits=False).item() == pytest.approx(0.0, abs=1e-6)
    assert iou_loss(torch.full_like(empty, -30.0), empty).item() == pytest.approx(0.0, abs=1e-4)


def test_fully_wrong_prediction_gives_one():
    gt = _binary((2, 3, 1, 6, 6))
    gt[..., 0, 0] = 1  # no image is empty
    gt[..., 0, 1] = 0  # nor full
    assert iou_loss(1 - gt, gt, from_logits=False).item() == pytest.approx(1.0, abs=1e-5)
    assert iou_loss((1 - gt) * 60 - 30, gt).item() == pytest.approx(1.0, abs=1e-5)
    # predicting an empty mask of a non-empty object
    assert iou_loss(torch.zeros_like(gt), gt, from_logits=False).item() == pytest.approx(1.0, abs=1e-5)


def test_per_image_averaging():
    gt = torch.zeros(1, 2, 1, 4, 4)
    gt[:, :, :, :1, :1] = 1  # a small object
    pred = gt.clone()
    pred[0, 1] = 1 - gt[0, 1]  # image 0 perfect (IoU 1), image 1 disjoint (IoU 0)
    assert iou_loss(pred, gt, from_logits=False).item() == pytest.approx(0.5, abs=1e-6)
    # per image, not pooled over the set: the pooled IoU would be 1 / 16
    pred2 = torch.zeros(1, 2, 1, 4, 4)
    pred2[0, 0, 0, :1, :1] = 1
    pred2[0, 1] = 1
    gt2 = pred2.clone()
    gt2[0, 1] = 0
    gt2[0, 1, 0, 3, 3] = 1
    # image 0: IoU 1; image 1: IoU 1/16
    assert iou_loss(pred2, gt2, from_logits=False).item() == pytest.approx((0 + (1 - 1 / 16)) / 2, abs=1e-5)


def test_averaging_over_sets():
    gt = torch.ones(2, 1, 1, 3, 3)
    pred = torch.stack([torch.ones(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)])
    assert iou_loss(pred, gt, from_logits=False).item() == pytest.approx(0.5, abs=1e-6)


@given(shape=shapes, seed=seeds)
def test_valid_excludes_padded_images(shape, seed):
    torch.manual_seed(seed)
    b, n, h, w = shape
    n += 1  # room for at least one padded image
    logits = torch.randn(b, n, 1, h, w) * 3
    gt = _binary((b, n, 1, h, w))
    lengths = torch.randint(1, n + 1, (b,))
    valid = torch.arange(n)[None] < lengths[:, None]

    garbage_logits = torch.where(valid[..., None, None, None], logits, torch.randn_like(logits) * 100)
    garbage_gt = torch.where(valid[..., None, None, None], gt, torch.rand_like(gt))
    loss = iou_loss(garbage_logits, garbage_gt, valid)

    per_image = [iou_loss(logits[i : i + 1, j : j + 1], gt[i : i + 1, j : j + 1]) for i, j in valid.nonzero().tolist()]
    expected = torch.stack(per_image).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    # an all-true valid mask is the same as no mask
    torch.testing.assert_close(iou_loss(logits, gt, torch.ones(b, n, dtype=torch.bool)), iou_loss(logits, gt))


@given(shape=shapes, seed=seeds)
def test_permuting_images_leaves_the_loss_unchanged(shape, seed):
    torch.manual_seed(seed)
    b, n, h, w = shape
    logits = torch.randn(b, n, 1, h, w)
    gt = _binary((b, n, 1, h, w))
    perm = torch.randperm(n)
    torch.testing.assert_close(iou_loss(logits[:, perm], gt[:, perm]), iou_loss(logits, gt), atol=1e-6, rtol=1e-5)


def test_gradient_is_finite_and_nonzero():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 1, 8, 8, requires_grad=True)
    gt = _binary((2, 3, 1, 8, 8))
    iou_loss(logits, gt).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    # gradient descent lowers the loss
    with torch.no_grad():
        stepped = logits - 10 * logits.grad
    assert iou_loss(stepped, gt) < iou_loss(logits.detach(), gt)


def test_padded_images_get_no_gradient():
    logits = torch.randn(1, 3, 1, 4, 4, requires_grad=True)
    gt = _binary((1, 3, 1, 4, 4))
    valid = torch.tensor([[True, True, False]])
    iou_loss(logits, gt, valid).backward()
    assert logits.grad[0, 2].abs().sum() == 0
    assert logits.grad[0, :2].abs().sum() > 0


@pytest.mark.parametrize("from_logits", [True, False])
def test_module_equals_function(from_logits):
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 1, 7, 5)
    gt = _binary((2, 3, 1, 7, 5))
    valid = torch.tensor([[True, False, True], [True, True, True]])
    module = IoULoss(from_logits=from_logits)
    assert module(pred, gt).item() == iou_loss(pred, gt, from_logits=from_logits).item()
    assert module(pred, gt, valid).item() == iou_loss(pred, gt, valid, from_logits=from_logits).item()


def test_shape_mismatch():
    pred = torch.zeros(2, 3, 1, 8, 8)
    with pytest.raises(CosegShapeError, match=r"\(2, 3, 1, 4, 4\)") as info:
        iou_loss(pred, torch.zeros(2, 3, 1, 4, 4))
    assert isinstance(info.value, ValueError)
    assert "downsample_mask" in str(info.value)
    with pytest.raises(CosegShapeError, match="unsqueeze"):
        iou_loss(pred, torch.zeros(2, 3, 8, 8))
    with pytest.raises(CosegShapeError, match=r"\(2, 3, 8, 8\)"):
        iou_loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(CosegShapeError):
        iou_loss(pred, torch.zeros(2, 2, 1, 8, 8))
    with pytest.raises(CosegShapeError, match=r"\(2, 3\)"):
        iou_loss(pred, pred, torch.ones(3, 2, dtype=torch.bool))


@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan"), 255.0])
def test_targets_outside_unit_interval(bad):
    gt = torch.zeros(1, 2, 1, 4, 4)
    gt[0, 1, 0, 2, 2] = bad
    with pytest.raises(CosegValueError, match=r"\[0, 1\]"):
        iou_loss(torch.zeros(1, 2, 1, 4, 4), gt)


def test_set_without_valid_image():
    pred = torch.zeros(2, 2, 1, 4, 4)
    with pytest.raises(CosegValueError, match="set"):
        iou_loss(pred, pred, torch.tensor([[True, True], [False, False]]))


# ---------------------------------------------------------------------------- coarse


def test_downsample_mask_is_an_area_average():
    mask = torch.zeros(1, 1, 1, 4, 4)
    mask[..., :2, 2:] = 1  # the top-right quadrant
    small = downsample_mask(mask, (2, 2))
    assert small.shape == (1, 1, 1, 2, 2)
    torch.testing.assert_close(small[0, 0, 0], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))

    mask = torch.zeros(1, 1, 1, 4, 4)
    mask[..., 0, 0] = 1  # one pixel of the top-left 2x2 cell
    mask[..., 2:, 2:] = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(downsample_mask(mask, (2, 2))[0, 0, 0], torch.tensor([[0.25, 0.0], [0.0, 0.75]]))


@given(
    b=st.integers(1, 3),
    n=st.integers(1, 3),
    gh=st.integers(1, 4),
    gw=st.integers(1, 4),
    f=st.integers(1, 4),
    seed=seeds,
)
def test_downsample_mask_block_means(b, n, gh, gw, f, seed):
    torch.manual_seed(seed)
    mask = _binary((b, n, 1, gh * f, gw * f))
    small = downsample_mask(mask, (gh, gw))
    expected = mask.reshape(b, n, 1, gh, f, gw, f).mean(dim=(4, 6))
    torch.testing.assert_close(small, expected)
    assert small.shape == (b, n, 1, gh, gw)


@given(seed=seeds, b=st.integers(1, 2), n=st.integers(1, 3))
def test_coarse_loss_equals_iou_loss_against_pooled_target(seed, b, n):
    torch.manual_seed(seed)
    coarse = torch.randn(b, n, 1, 4, 4) * 2
    gt = _binary((b, n, 1, 32, 32))
    pooled = gt.reshape(b, n, 1, 4, 8, 4, 8).mean(dim=(4, 6))  # area pooling by hand
    expected = iou_loss(coarse, pooled)
    torch.testing.assert_close(coarse_segmentation_loss(coarse, gt), expected)
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[0, -1] = n == 1
    torch.testing.assert_close(coarse_segmentation_loss(coarse, gt, valid), iou_loss(coarse, pooled, valid))


def test_coarse_loss_is_zero_for_a_matching_coarse_mask():
    gt = torch.zeros(1, 2, 1, 16, 16)
    gt[..., :8, 8:] = 1  # whole 8x8 blocks: the pooled target is binary
    coarse = downsample_mask(gt, (2, 2)) * 60 - 30
    assert coarse_segmentation_loss(coarse, gt).item() == pytest.approx(0.0, abs=1e-5)


def test_coarse_loss_shape_mismatch():
    coarse = torch.zeros(2, 3, 1, 4, 4)
    with pytest.raises(CosegShapeError, match=r"\(2, 2, 1, 32, 32\)"):
        coarse_segmentation_loss(coarse, torch.zeros(2, 2, 1, 32, 32))
    with pytest.raises(CosegShapeError):
        coarse_segmentation_loss(coarse, torch.zeros(1, 3, 1, 32, 32))
    with pytest.raises(CosegShapeError):
        coarse_segmentation_loss(coarse, torch.zeros(2, 3, 32, 32))
