"""Tests of the total training loss of eq. (9)."""

from __future__ import annotations

import pytest
import torch

from cosegkit.errors import CosegValueError
from cosegkit.losses import LCCoLoss, LCCoLossOutput, classification_loss, coarse_segmentation_loss, iou_loss
from tests._support import tiny_lcco

B, N, H, W = 2, 3, 64, 64


@pytest.fixture(scope="module")
def model():
    return tiny_lcco()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(B, N, 3, H, W, generator=gen)
    masks = (torch.rand(B, N, 1, H, W, generator=gen) > 0.5).float()
    return images, masks


@pytest.fixture(scope="module")
def output(model, batch):
    images, masks = batch
    with torch.no_grad():
        return model(images, masks=masks)


@pytest.mark.parametrize(("lambda1", "lambda2"), [(1.0, 1.0), (0.3, 2.5), (0.0, 0.7), (4.0, 0.0)])
def test_total_is_the_weighted_sum(output, batch, lambda1, lambda2):
    _, masks = batch
    assert output.coarse_masks is not None and output.class_probs is not None and output.class_targets is not None
    losses = LCCoLoss(lambda1, lambda2)(output, masks)
    assert isinstance(losses, LCCoLossOutput)

    l_iou = iou_loss(output.masks, masks, output.valid)
    l_cs = coarse_segmentation_loss(output.coarse_masks, masks, output.valid)
    l_c = classification_loss(output.class_probs, output.class_targets)
    torch.testing.assert_close(losses.iou, l_iou)
    torch.testing.assert_close(losses.coarse, l_cs)
    torch.testing.assert_close(losses.classification, l_c)
    torch.testing.assert_close(losses.total, l_iou + lambda1 * l_cs + lambda2 * l_c)
    # each term is there: none of them is zero for a random model
    assert l_iou > 0 and l_cs > 0 and l_c > 0


def test_default_weights_are_one(output, batch):
    _, masks = batch
    losses = LCCoLoss()(output, masks)
    torch.testing.assert_close(losses.total, losses.iou + losses.coarse + losses.classification)
    assert "lambda1=1.0" in repr(LCCoLoss())


def test_zero_weights_leave_the_iou_loss(output, batch):
    _, masks = batch
    losses = LCCoLoss(0.0, 0.0)(output, masks)
    torch.testing.assert_close(losses.total, losses.iou)
    assert losses.coarse is not None and losses.classification is not None


def test_terms_of_switched_off_modules_are_none(batch):
    images, masks = batch
    model = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False)
    output = model(images, masks=masks)
    losses = LCCoLoss(1.0, 1.0)(output, masks)
    assert losses.coarse is None
    assert losses.classification is None
    torch.testing.assert_close(losses.total, iou_loss(output.masks, masks, output.valid))


def test_padded_images_are_left_out(model, batch):
    images, masks = batch
    valid = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        output = model(images, valid=valid, masks=masks)
    losses = LCCoLoss()(output, masks)
    torch.testing.assert_close(losses.iou, iou_loss(output.masks, masks, valid))
    torch.testing.assert_close(losses.coarse, coarse_segmentation_loss(output.coarse_masks, masks, valid))
    garbage = torch.where(valid[..., None, None, None], masks, 1 - masks)
    torch.testing.assert_close(LCCoLoss()(output, garbage).total, losses.total)


def test_regularization_needs_class_targets(model, batch):
    images, masks = batch
    with torch.no_grad():
        output = model(images)  # no masks: no class targets
    assert output.class_targets is None
    assert output.class_probs is not None
    with pytest.raises(CosegValueError, match="masks=") as info:
        LCCoLoss()(output, masks)
    assert isinstance(info.value, ValueError)
    assert "class_targets=" in str(info.value)

    targets = torch.tensor([1, 4])
    losses = LCCoLoss()(output, masks, class_targets=targets)
    torch.testing.assert_close(losses.classification, classification_loss(output.class_probs, targets))


def test_class_targets_argument_overrides_the_output(output, batch):
    _, masks = batch
    p = output.class_probs.shape[1]
    other = (output.class_targets + 1) % p
    losses = LCCoLoss(0.0, 1.0)(output, masks, class_targets=other)
    torch.testing.assert_close(losses.classification, classification_loss(output.class_probs, other))
    default = LCCoLoss(0.0, 1.0)(output, masks)
    assert not torch.allclose(losses.classification, default.classification)
    torch.testing.assert_close(default.classification, classification_loss(output.class_probs, output.class_targets))


@pytest.mark.parametrize(("lambda1", "lambda2"), [(-1.0, 1.0), (1.0, -0.1), (-2.0, -2.0)])
def test_negative_weights_are_rejected(lambda1, lambda2):
    with pytest.raises(CosegValueError, match=str(min(lambda1, lambda2))):
        LCCoLoss(lambda1, lambda2)


def test_total_is_finite_and_trains_the_decoder(batch):
    images, masks = batch
    model = tiny_lcco()
    model.train()
    losses = LCCoLoss()(model(images, masks=masks), masks)
    assert torch.isfinite(losses.total)
    assert losses.total.shape == ()
    losses.total.backward()

    def grads(module):
        return [p.grad for p in module.parameters() if p.requires_grad]

    for name in ("head", "center", "blocks", "correspondence", "interaction", "coarse", "regularization"):
        g = grads(getattr(model, name))
        assert g, name
        assert all(x is not None and torch.isfinite(x).all() for x in g), name
        assert any(x.abs().sum() > 0 for x in g), name
    assert all(p.grad is None for p in model.clip.model.parameters())


def test_each_term_reaches_its_module(batch):
    images, masks = batch
    model = tiny_lcco()
    model.train()
    output = model(images, masks=masks)
    # the coarse loss alone trains the coarse decoder; the classification loss alone the regularization module
    coarse_only = coarse_segmentation_loss(output.coarse_masks, masks, output.valid)
    coarse_only.backward(retain_graph=True)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.coarse.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.head.parameters())
    model.zero_grad()
    classification_loss(output.class_probs, output.class_targets).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.regularization.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.head.parameters())
