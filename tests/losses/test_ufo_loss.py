"""Tests of UFO's training losses against a transcription of the logic of UFO's ``loss.py``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.losses import (
    UFOLoss,
    UFOLossOutput,
    iou_loss,
    smooth_l1_mask_loss,
    ufo_classification_loss,
    ufo_iou_loss,
    weighted_bce_loss,
)
from cosegkit.models.ufo_output import UFOOutput

seeds = st.integers(0, 2**31 - 1)
TERMS = ("total", "mask", "classification", "smooth", "iou")


# ------------------------------------------------------------- the public code's logic


def reference_ufo_loss(prob: torch.Tensor, label: torch.Tensor, cls_prob: torch.Tensor, cls_label: torch.Tensor):
    """UFO's ``Loss.forward`` as its ``loss.py`` computes it, on probabilities.

    ``prob``, ``label``: ``(M, H, W)`` foreground probabilities and ground truth of the M images
    of the batch (UFO's ``B * 5``); ``cls_prob``, ``cls_label``: ``(B, C)``. Returns the total
    and the four terms in UFO's order (weighted BCE, class BCE, smooth L1, IoU).
    """
    # weighted BCE: one weight for object pixels, one for background, from the whole batch
    n_obj = (label == 1).sum().to(prob.dtype)
    n_bg = (label == 0).sum().to(prob.dtype)
    frac = n_obj / (n_obj + n_bg)
    weight = torch.zeros_like(label)
    weight = torch.where(label == 1, frac, weight)
    weight = torch.where(label == 0, 1 - frac, weight)
    m_loss = F.binary_cross_entropy(prob, label, weight=weight)  # mean over every pixel
    c_loss = F.binary_cross_entropy(cls_prob, cls_label)
    s_loss = F.smooth_l1_loss(prob, label)
    # IoU: one image at a time, no smoothing term
    per_image = []
    for k in range(prob.shape[0]):
        both = (prob[k] * label[k]).sum()
        either = label[k].sum() + prob[k].sum() - both
        per_image.append(1 - both / either)
    i_loss = sum(per_image) / prob.shape[0]
    return m_loss + c_loss + s_loss + i_loss, m_loss, c_loss, s_loss, i_loss


def reference_on_our_layout(logits, masks, class_logits, classes, valid=None):
    """The reference on cosegkit's tensors: the valid images as UFO's flat batch, sigmoid first."""
    if valid is None:
        valid = torch.ones(logits.shape[:2], dtype=torch.bool)
    prob = logits[valid][:, 0].sigmoid()  # (M, H, W), only the real images
    label = masks[valid][:, 0].to(prob.dtype)
    if classes.ndim == 1:
        classes = F.one_hot(classes, class_logits.shape[1])
    return reference_ufo_loss(prob, label, class_logits.sigmoid(), classes.to(class_logits.dtype))


def make_batch(b=2, n=5, h=16, w=16, c=7, *, dtype=torch.float32, seed=0, soft=False, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, n, 1, h, w, generator=gen) * scale).to(dtype)
    masks = (torch.rand(b, n, 1, h, w, generator=gen) < 0.3).to(dtype)
    if soft:  # a band of soft pixels, as a resized mask has on its borders
        band = torch.rand(b, n, 1, h, w, generator=gen) < 0.2
        masks = torch.where(band, torch.rand(b, n, 1, h, w, generator=gen).to(dtype), masks)
    class_logits = (torch.randn(b, c, generator=gen) * scale).to(dtype)
    classes = torch.randint(0, c, (b,), generator=gen)
    return logits, masks, class_logits, classes


def ufo_output(logits, class_logits, valid=None):
    if valid is None:
        valid = torch.ones(logits.shape[:2], dtype=torch.bool)
    return UFOOutput(masks=logits, class_logits=class_logits, class_probs=class_logits.sigmoid(), valid=valid)


# ------------------------------------------------------------------ equal to UFO's code


@pytest.mark.parametrize("soft", [False, True], ids=["binary", "soft-borders"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_ufo_code_at_its_sizes(dtype, soft):
    """Sets of 5 at 224 x 224 and 78 classes, as UFO trains; every term and the total within 1e-5."""
    logits, masks, class_logits, classes = make_batch(2, 5, 224, 224, 78, dtype=dtype, seed=1, soft=soft)
    ours = UFOLoss()(ufo_output(logits, class_logits), masks, classes)
    theirs = reference_on_our_layout(logits, masks, class_logits, classes)
    assert isinstance(ours, UFOLossOutput)
    for name, a, b in zip(TERMS, ours, theirs, strict=True):
        assert a.shape == () and a.dtype == dtype
        assert abs(a.item() - b.item()) < 1e-5, f"{name}: ours {a.item():.8f}, UFO's {b.item():.8f}"
        assert b.item() > 1e-3  # a term that is ~0 on both sides would prove nothing


@pytest.mark.parametrize("seed", range(4))
def test_equals_ufo_code_with_multi_hot_classes(seed):
    """UFO's own targets, multi-hot over its classes, are accepted as they are."""
    logits, masks, class_logits, _ = make_batch(3, 4, 32, 24, 78, seed=seed)
    gen = torch.Generator().manual_seed(100 + seed)
    multi_hot = (torch.rand(3, 78, generator=gen) < 0.05).float()
    ours = UFOLoss()(ufo_output(logits, class_logits), masks, multi_hot)
    theirs = reference_on_our_layout(logits, masks, class_logits, multi_hot)
    for name, a, b in zip(TERMS, ours, theirs, strict=True):
        assert abs(a.item() - b.item()) < 1e-5, name


def test_class_indices_are_the_one_hot_vectors():
    _, _, class_logits, classes = make_batch(4, 1, 2, 2, 9, seed=3)
    one_hot = F.one_hot(classes, 9).float()
    assert (
        ufo_classification_loss(class_logits, classes).item() == ufo_classification_loss(class_logits, one_hot).item()
    )


def test_hand_computed_weighted_bce():
    """One image of 4 pixels: object 1, background 2, one soft pixel of weight 0."""
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0]).reshape(1, 1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.5]).reshape(1, 1, 1, 2, 2)
    rho = 1 / 3  # one object pixel among the three that are 0 or 1
    bce_object = F.softplus(torch.tensor(-2.0))  # -log sigmoid(2)
    bce_background = F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(0.5))  # -log(1 - sigmoid(x))
    expected = (rho * bce_object + (1 - rho) * bce_background) / 4  # the soft pixel counts in the mean only
    assert weighted_bce_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_iou_eps_zero_is_ufo_formula_and_default_is_within_1e_6():
    logits, masks, class_logits, classes = make_batch(2, 3, 20, 20, 4, dtype=torch.float64, seed=5)
    theirs = reference_on_our_layout(logits, masks, class_logits, classes)[4]
    assert abs(ufo_iou_loss(logits, masks, eps=0.0).item() - theirs.item()) < 1e-12
    assert abs(ufo_iou_loss(logits, masks).item() - theirs.item()) < 1e-6


def test_iou_equals_lcco_iou_on_binary_truth_but_not_on_soft():
    """Why UFO's IoU has a function of its own: the product form and the min/max form part on soft truth."""
    logits, masks, *_ = make_batch(2, 3, 16, 16, dtype=torch.float64, seed=6)
    assert ufo_iou_loss(logits, masks).item() == pytest.approx(iou_loss(logits, masks).item(), abs=1e-12)
    _, soft, *_ = make_batch(2, 3, 16, 16, dtype=torch.float64, seed=6, soft=True)
    assert abs(ufo_iou_loss(logits, soft).item() - iou_loss(logits, soft).item()) > 1e-3


# ------------------------------------------------------------------------------ padding


def test_padded_images_change_no_term():
    """Sets of 3 and 2 real images, padded to 5 with arbitrary content: every term as without padding."""
    logits, masks, class_logits, classes = make_batch(2, 3, 16, 16, 6, seed=7)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    gen = torch.Generator().manual_seed(8)
    pad_logits = torch.randn(2, 2, 1, 16, 16, generator=gen) * 1e3
    pad_logits[0, 0, 0, 0, 0], pad_logits[1, 1, 0, 0, 0] = float("inf"), float("nan")
    pad_masks = torch.rand(2, 2, 1, 16, 16, generator=gen)  # soft values, unlike any real mask
    # the last image of set 1 is padding too: arbitrary content there as well
    logits[1, 2], masks[1, 2] = -1e4, torch.rand(1, 16, 16, generator=gen)
    padded_logits = torch.cat([logits, pad_logits], dim=1).requires_grad_()
    padded_masks = torch.cat([masks, pad_masks], dim=1)
    padded_valid = torch.cat([valid, torch.zeros(2, 2, dtype=torch.bool)], dim=1)

    base = UFOLoss()(ufo_output(logits, class_logits, valid), masks, classes)
    padded = UFOLoss()(ufo_output(padded_logits, class_logits, padded_valid), padded_masks, classes)
    theirs = reference_on_our_layout(logits, masks, class_logits, classes, valid)
    for name, a, b, c in zip(TERMS, base, padded, theirs, strict=True):
        assert torch.isfinite(b), name
        assert b.item() == pytest.approx(a.item(), abs=1e-6), name
        assert b.item() == pytest.approx(c.item(), abs=1e-5), name
    padded.total.backward()
    grad = padded_logits.grad
    assert torch.isfinite(grad).all()
    assert (grad[~padded_valid] == 0).all()
    assert (grad[padded_valid] != 0).any()


def test_padding_is_not_counted_in_the_object_fraction():
    """Padded images full of object would lower the background weight if they counted."""
    logits, masks, *_ = make_batch(1, 2, 8, 8, seed=9)
    valid = torch.tensor([[True, False]])
    full = masks.clone()
    full[0, 1] = 1.0
    empty = masks.clone()
    empty[0, 1] = 0.0
    assert weighted_bce_loss(logits, full, valid).item() == weighted_bce_loss(logits, empty, valid).item()
    assert weighted_bce_loss(logits, full).item() != weighted_bce_loss(logits, empty).item()


# --------------------------------------------------------------------- values, gradients


@given(b=st.integers(1, 3), n=st.integers(1, 4), seed=seeds)
def test_perfect_prediction_gives_about_zero_mask_terms(b, n, seed):
    torch.manual_seed(seed)
    masks = (torch.rand(b, n, 1, 8, 8) < 0.4).float()
    masks[..., 0, 0] = 1.0  # every image shows the object
    logits = masks * 60 - 30  # confident and right
    losses = UFOLoss()(ufo_output(logits, torch.zeros(b, 3)), masks, torch.zeros(b, dtype=torch.long))
    assert losses.mask.item() < 1e-6
    assert losses.smooth.item() < 1e-6
    assert losses.iou.item() < 1e-6


def test_confident_right_class_gives_about_zero():
    classes = torch.tensor([2, 0])
    logits = F.one_hot(classes, 4).float() * 60 - 30
    assert ufo_classification_loss(logits, classes).item() < 1e-6


@pytest.mark.parametrize("scale", [2.0, 50.0])
def test_gradients_are_finite_and_reach_every_input(scale):
    """Finite even with logits far in saturation (scale 50); non-zero everywhere while the sigmoid is not rounded."""
    logits, masks, class_logits, classes = make_batch(2, 3, 12, 12, 5, seed=10, scale=scale)
    logits.requires_grad_()
    class_logits.requires_grad_()
    UFOLoss()(ufo_output(logits, class_logits), masks, classes).total.backward()
    for grad in (logits.grad, class_logits.grad):
        assert grad is not None and torch.isfinite(grad).all()
        if scale == 2.0:
            assert (grad != 0).all()


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (0.5, 2.0, 0.0, 3.0), (0.0, 0.0, 1.0, 0.0)], ids=["default", "mixed", "smooth"]
)
def test_total_is_the_weighted_sum_of_the_functions(weights):
    logits, masks, class_logits, classes = make_batch(2, 3, 10, 10, 5, seed=11)
    valid = torch.tensor([[True, False, True], [True, True, True]])
    names = ("mask_weight", "classification_weight", "smooth_weight", "iou_weight")
    losses = UFOLoss(**dict(zip(names, weights, strict=True)))(ufo_output(logits, class_logits, valid), masks, classes)
    terms = (
        weighted_bce_loss(logits, masks, valid),
        ufo_classification_loss(class_logits, classes),
        smooth_l1_mask_loss(logits, masks, valid),
        ufo_iou_loss(logits, masks, valid),
    )
    for got, want in zip(losses[1:], terms, strict=True):
        assert got.item() == want.item()
    total = sum(w * t for w, t in zip(weights, terms, strict=True))
    assert losses.total.item() == pytest.approx(total.item(), rel=1e-6)


def test_any_object_with_the_fields_is_accepted():
    logits, masks, class_logits, classes = make_batch(1, 2, 8, 8, 3, seed=12)
    duck = SimpleNamespace(masks=logits, class_logits=class_logits, valid=torch.ones(1, 2, dtype=torch.bool))
    assert UFOLoss()(duck, masks, classes) == UFOLoss()(ufo_output(logits, class_logits), masks, classes)


def test_repr_names_the_weights():
    assert "mask_weight=1.0, classification_weight=1.0, smooth_weight=1.0, iou_weight=1.0" in repr(UFOLoss())


@given(b=st.integers(1, 3), n=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9), seed=seeds)
def test_permuting_images_in_a_set_changes_nothing(b, n, h, w, seed):
    torch.manual_seed(seed)
    logits = torch.randn(b, n, 1, h, w) * 3
    masks = (torch.rand(b, n, 1, h, w) < 0.5).float()
    valid = torch.rand(b, n) < 0.7
    valid[:, 0] = True  # every set keeps a real image
    class_logits, classes = torch.randn(b, 4), torch.randint(0, 4, (b,))
    losses = UFOLoss()(ufo_output(logits, class_logits, valid), masks, classes)
    for value in losses:
        assert value.shape == () and torch.isfinite(value) and value.item() >= 0
    assert losses.smooth.item() <= 0.5 and losses.iou.item() <= 1 + 1e-6
    order = torch.stack([torch.randperm(n) for _ in range(b)])  # one permutation per set
    pick = order[:, :, None, None, None].expand_as(logits)
    permuted = UFOLoss()(
        ufo_output(logits.gather(1, pick), class_logits, valid.gather(1, order)), masks.gather(1, pick), classes
    )
    for name, a, p in zip(TERMS, losses, permuted, strict=True):
        assert p.item() == pytest.approx(a.item(), abs=1e-6), name


# ------------------------------------------------------------------- departures, measured


def test_saturated_logits_depart_from_ufo_as_documented():
    """float32 rounds sigmoid(x) to 1 above x ~ 16.6: UFO's BCE then costs a background pixel 100, with no gradient."""
    x = [40.0, 200.0, -40.0, 40.0, -40.0, 1.0]
    g = [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # wrong, wrong, wrong (low side), right, right, unsure
    logits = torch.tensor(x).reshape(1, 1, 1, 2, 3).requires_grad_()
    target = torch.tensor(g).reshape(1, 1, 1, 2, 3)
    rho = 1 / 2  # 3 object pixels of 6
    weight = torch.tensor([1 - rho if t == 0 else rho for t in g])
    softplus_1 = F.softplus(torch.tensor(-1.0)).item()
    ours_per_pixel = torch.tensor([40.0, 200.0, 40.0, 0.0, 0.0, softplus_1])
    theirs_per_pixel = torch.tensor([100.0, 100.0, 40.0, 0.0, 0.0, softplus_1])  # log clamped at -100
    ours = weighted_bce_loss(logits, target)
    assert ours.item() == pytest.approx((weight * ours_per_pixel).sum().item() / 6, rel=1e-6)

    prob_logits = logits.detach().clone().requires_grad_()
    theirs = reference_ufo_loss(prob_logits.sigmoid()[0, :, 0], target[0, :, 0], torch.full((1, 1), 0.5),
                                torch.ones(1, 1))[1]  # fmt: skip
    assert theirs.item() == pytest.approx((weight * theirs_per_pixel).sum().item() / 6, rel=1e-5)
    assert theirs.item() - ours.item() == pytest.approx((0.5 * (100 - 40) + 0.5 * (100 - 200)) / 6, rel=1e-4)

    ours.backward()
    theirs.backward()
    ours_grad, theirs_grad = logits.grad.flatten(), prob_logits.grad.flatten()
    assert (theirs_grad[:2] == 0).all()  # UFO: confidently wrong background pixels get no gradient
    assert torch.allclose(ours_grad[:2], torch.full((2,), 0.5 / 6))  # here: (1 - rho) / |Omega|, pushed back
    assert 0 < -theirs_grad[2] < 1e-6  # UFO: the low side's gradient shrinks by sigmoid(-40) / 1e-12
    assert ours_grad[2].item() == pytest.approx(-0.5 / 6)
    assert torch.allclose(ours_grad[3:], theirs_grad[3:], atol=1e-7)  # unsaturated or right: equal


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("fn", "args", "error", "match"),
    [
        (weighted_bce_loss, (torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 4, 4)), CosegShapeError, r"unsqueeze\(2\)"),
        (smooth_l1_mask_loss, (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)), CosegShapeError, r"\(B, N, 1, H, W\)"),
        (ufo_iou_loss, (torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 8, 8)), CosegShapeError, "resize"),
        (weighted_bce_loss, (torch.zeros(1, 2, 1, 4, 4), torch.full((1, 2, 1, 4, 4), 255.0)), CosegValueError, r"\[0, 1\]"),
        (
            ufo_iou_loss,
            (torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4), torch.ones(2, 1, dtype=torch.bool)),
            CosegShapeError,
            r"valid of shape \(B, N\) = \(1, 2\)",
        ),
        (ufo_classification_loss, (torch.zeros(2, 3, 1), torch.tensor([0, 1])), CosegShapeError, r"\(B, C\), got \(2, 3, 1\)"),
        (ufo_classification_loss, (torch.zeros(2, 3), torch.tensor([0, 1, 2])), CosegShapeError, r"shape \(2,\), one per set"),
        (ufo_classification_loss, (torch.zeros(2, 3), torch.tensor([0.0, 1.0])), CosegShapeError, "long tensor"),
        (ufo_classification_loss, (torch.zeros(2, 3), torch.tensor([0, 3])), CosegValueError, r"\[0, 3\) for 3 class"),
        (ufo_classification_loss, (torch.zeros(2, 3), torch.zeros(2, 4)), CosegShapeError, r"\(2,\) or \(2, 3\), got \(2, 4\)"),
        (ufo_classification_loss, (torch.zeros(2, 3), torch.full((2, 3), 2.0)), CosegValueError, "multi-hot"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused_with_what_to_do(fn, args, error, match):
    with pytest.raises(error, match=match):
        fn(*args)


def test_negative_weight_is_refused():
    with pytest.raises(CosegValueError, match="iou_weight=-1"):
        UFOLoss(iou_weight=-1)


def test_a_set_without_a_real_image_is_refused():
    logits, masks, class_logits, classes = make_batch(2, 2, 4, 4, 3)
    valid = torch.tensor([[True, False], [False, False]])
    with pytest.raises(CosegValueError, match=r"set\(s\) \[1\]"):
        UFOLoss()(ufo_output(logits, class_logits, valid), masks, classes)


def test_an_output_whose_parts_disagree_is_refused():
    logits, masks, class_logits, classes = make_batch(2, 2, 4, 4, 3)
    with pytest.raises(CosegShapeError, match="disagree on the number of sets B"):
        UFOLoss()(ufo_output(logits, class_logits[:1]), masks, classes[:1])
