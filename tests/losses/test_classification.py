"""Tests of the classification loss of eq. (12) and of the sets' ground-truth classes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.losses import ClassificationLoss, classification_loss, masked_images, set_class_targets
from tests._support import make_tiny_clip

seeds = st.integers(0, 2**31 - 1)


def _eq12(v_hat: torch.Tensor, v_gt: torch.Tensor) -> torch.Tensor:
    """Eq. (12), literally, per set; then the mean over the sets of the batch."""
    per_set = []
    for v, g in zip(v_hat.double(), v_gt.double(), strict=True):
        p = v.shape[0]
        total = sum(g[i] * torch.log(v[i]) + (1 - g[i]) * torch.log(1 - v[i]) for i in range(p))
        per_set.append(-total / p)
    return torch.stack(per_set).mean()


# ---------------------------------------------------------------------------- loss


@given(b=st.integers(1, 4), p=st.integers(2, 12), seed=seeds, temperature=st.floats(0.2, 3.0))
def test_equals_equation_12(b, p, seed, temperature):
    torch.manual_seed(seed)
    probs = torch.softmax(torch.randn(b, p) * temperature, dim=-1).clamp(1e-5, 1 - 1e-5)
    target = torch.randint(0, p, (b,))
    one_hot = torch.zeros(b, p)
    one_hot[torch.arange(b), target] = 1
    expected = _eq12(probs, one_hot).float()
    by_index = classification_loss(probs, target)
    by_one_hot = classification_loss(probs, one_hot)
    torch.testing.assert_close(by_index, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_one_hot, by_index, atol=1e-6, rtol=1e-6)
    assert by_index.shape == ()


@given(b=st.integers(1, 3), p=st.integers(2, 8), seed=seeds)
def test_soft_targets_follow_equation_12(b, p, seed):
    torch.manual_seed(seed)
    probs = torch.rand(b, p) * 0.98 + 0.01
    soft = torch.rand(b, p)
    torch.testing.assert_close(classification_loss(probs, soft), _eq12(probs, soft).float(), atol=1e-5, rtol=1e-5)


def test_hand_computed_value():
    probs = torch.tensor([[0.5, 0.25, 0.25]])
    expected = -(math.log(0.5) + 2 * math.log(0.75)) / 3
    assert classification_loss(probs, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)


@given(b=st.integers(1, 4), p=st.integers(1, 12), seed=seeds)
def test_perfect_prediction_gives_about_zero(b, p, seed):
    torch.manual_seed(seed)
    target = torch.randint(0, p, (b,))
    probs = F.one_hot(target, p).float()
    assert 0 <= classification_loss(probs, target).item() < 1e-5


@given(b=st.integers(1, 4), p=st.integers(2, 12), seed=seeds, eps=st.sampled_from([1e-6, 1e-4, 1e-2]))
def test_bounded_by_minus_log_eps(b, p, seed, eps):
    torch.manual_seed(seed)
    target = torch.randint(0, p, (b,))
    one_hot = F.one_hot(target, p).float()
    worst = classification_loss(1 - one_hot, target, eps=eps)  # every term at its worst
    assert torch.isfinite(worst)
    assert worst.item() <= -math.log(eps) + 1e-4
    assert worst.item() == pytest.approx(-math.log(eps), rel=1e-2)
    # a confident wrong softmax: two of the P terms at their worst
    wrong = F.one_hot((target + 1) % p, p).float()
    loss = classification_loss(wrong, target, eps=eps)
    assert loss.item() <= -math.log(eps) + 1e-4
    assert loss.item() == pytest.approx(-2 * math.log(eps) / p, rel=1e-2, abs=1e-4)
    random = classification_loss(torch.softmax(torch.randn(b, p) * 10, -1), target, eps=eps)
    assert 0 <= random.item() <= -math.log(eps) + 1e-4


def test_gradient_pushes_towards_the_target():
    logits = torch.randn(3, 6, requires_grad=True)
    target = torch.tensor([0, 5, 2])
    classification_loss(torch.softmax(logits, -1), target).backward()
    assert torch.isfinite(logits.grad).all()
    # the target logit gets a negative gradient: raising it lowers the loss
    assert (logits.grad[torch.arange(3), target] < 0).all()


def test_module_equals_function():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 5), -1)
    target = torch.tensor([4, 0, 2])
    assert ClassificationLoss()(probs, target).item() == classification_loss(probs, target).item()
    assert ClassificationLoss(eps=1e-2)(probs, target).item() == classification_loss(probs, target, eps=1e-2).item()
    assert ClassificationLoss(eps=0.4)(probs, target).item() != ClassificationLoss()(probs, target).item()


@pytest.mark.parametrize(
    ("probs", "target", "error", "match"),
    [
        (torch.rand(2, 3, 4), torch.tensor([0, 1]), CosegShapeError, r"\(2, 3, 4\)"),
        (torch.rand(4), torch.tensor([0]), CosegShapeError, r"\(4,\)"),
        (torch.rand(2, 4), torch.tensor([0, 1, 2]), CosegShapeError, r"\(3,\)"),
        (torch.rand(2, 4), torch.tensor([0.0, 1.0]), CosegShapeError, "float"),
        (torch.rand(2, 4), torch.rand(2, 5), CosegShapeError, r"\(2, 5\)"),
        (torch.rand(2, 4), torch.zeros(2, 4, 1), CosegShapeError, r"\(2, 4, 1\)"),
        (torch.rand(2, 4), torch.tensor([0, 4]), CosegValueError, r"\[0, 4\)"),
        (torch.rand(2, 4), torch.tensor([-1, 0]), CosegValueError, "-1"),
    ],
)
def test_bad_inputs(probs, target, error, match):
    with pytest.raises(error, match=match) as info:
        classification_loss(probs, target)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------- ground-truth classes


class _PrototypeClip:
    """The tiny CLIP's image tower with a text bank made of centred image prototypes.

    A random tiny CLIP sends every image to the same class; aligning the text bank with the
    embeddings of a few images makes the ground-truth class depend on the images, so that a
    wrong pooling over the set shows up. ``set_class_targets`` only uses ``encode_images``
    and ``text_bank``.
    """

    def __init__(self, clip, prototypes: torch.Tensor) -> None:
        self.clip = clip
        emb = clip.encode_images(prototypes[None])[0]
        self.text_bank = F.normalize(emb - emb.mean(dim=0), dim=-1)

    def encode_images(self, images, *, dense=False):
        return self.clip.encode_images(images, dense=dense)


@pytest.fixture(scope="module")
def prototypes() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.rand(6, 3, 32, 32, generator=gen)


@pytest.fixture(scope="module")
def proto_clip(tiny_clip, prototypes):
    return _PrototypeClip(tiny_clip, prototypes)


def _literal_targets(clip, images, masks, valid=None):
    """The paragraph after eq. (12): mask, encode, cosine with the text bank, sum over the set, arg-max."""
    masked = images * masks
    emb = clip.encode_images(masked)
    cos = F.normalize(emb, dim=-1) @ F.normalize(clip.text_bank, dim=-1).T  # S^gt, (B, N, P)
    if valid is not None:
        cos = cos * valid[..., None].float()
    return cos.sum(dim=1), cos.sum(dim=1).argmax(dim=-1)


def _assert_same_class(got, expected, scores, tol=1e-5):
    """Equal arg-max, up to ties within ``tol``."""
    for g, e, s in zip(got.tolist(), expected.tolist(), scores, strict=True):
        assert g == e or abs(float(s[g] - s[e])) < tol, (got, expected)


def _prototype_sets(prototypes, b, n):
    labels = torch.randint(0, prototypes.shape[0], (b, n))
    images = (0.8 * prototypes[labels] + 0.2 * torch.rand(b, n, 3, 32, 32)).clamp(0, 1)
    return images


@given(b=st.integers(1, 3), n=st.integers(1, 4), seed=seeds)
def test_set_class_targets_with_the_tiny_clip(tiny_clip, b, n, seed):
    torch.manual_seed(seed)
    images = torch.rand(b, n, 3, 24, 40)
    masks = (torch.rand(b, n, 1, 24, 40) > 0.5).float()
    targets = set_class_targets(tiny_clip, images, masks)
    assert targets.shape == (b,)
    assert targets.dtype == torch.long
    assert ((targets >= 0) & (targets < tiny_clip.num_prompts)).all()
    scores, expected = _literal_targets(tiny_clip, images, masks)
    _assert_same_class(targets, expected, scores)


@given(b=st.integers(1, 3), n=st.integers(1, 4), seed=seeds)
def test_set_class_targets_equal_the_literal_computation(proto_clip, prototypes, b, n, seed):
    torch.manual_seed(seed)
    images = _prototype_sets(prototypes, b, n)
    masks = (torch.rand(b, n, 1, 32, 32) > 0.2).float()
    targets = set_class_targets(proto_clip, images, masks)
    scores, expected = _literal_targets(proto_clip, images, masks)
    _assert_same_class(targets, expected, scores)


def test_prototype_sets_have_different_classes(proto_clip, prototypes):
    # the set-up of the tests above can tell sets apart
    images = prototypes[:, None]  # six single-image sets
    targets = set_class_targets(proto_clip, images, torch.ones(6, 1, 1, 32, 32))
    assert len(set(targets.tolist())) >= 3


@given(b=st.integers(1, 3), n=st.integers(2, 5), seed=seeds)
def test_set_class_targets_are_permutation_invariant(proto_clip, prototypes, b, n, seed):
    torch.manual_seed(seed)
    images = _prototype_sets(prototypes, b, n)
    masks = (torch.rand(b, n, 1, 32, 32) > 0.2).float()
    perm = torch.randperm(n)
    targets = set_class_targets(proto_clip, images, masks)
    permuted = set_class_targets(proto_clip, images[:, perm], masks[:, perm])
    scores, _ = _literal_targets(proto_clip, images, masks)
    _assert_same_class(permuted, targets, scores)
    # sets of a batch do not see each other
    _assert_same_class(set_class_targets(proto_clip, images[-1:], masks[-1:]), targets[-1:], scores[-1:])


@given(b=st.integers(1, 3), n=st.integers(2, 5), seed=seeds)
def test_padded_images_do_not_change_the_targets(proto_clip, prototypes, b, n, seed):
    torch.manual_seed(seed)
    images = _prototype_sets(prototypes, b, n)
    masks = (torch.rand(b, n, 1, 32, 32) > 0.2).float()
    lengths = torch.randint(1, n + 1, (b,))
    valid = torch.arange(n)[None] < lengths[:, None]
    pad = ~valid[..., None, None, None]
    noisy_images = torch.where(pad, torch.rand_like(images), images)
    noisy_masks = torch.where(pad, (torch.rand_like(masks) > 0.5).float(), masks)

    targets = set_class_targets(proto_clip, images, masks, valid)
    noisy = set_class_targets(proto_clip, noisy_images, noisy_masks, valid)
    scores, expected = _literal_targets(proto_clip, images, masks, valid)
    _assert_same_class(noisy, targets, scores)
    _assert_same_class(targets, expected, scores)


def test_padded_images_are_really_left_out(proto_clip, prototypes):
    single = set_class_targets(proto_clip, prototypes[:, None], torch.ones(6, 1, 1, 32, 32))
    a = 0
    b = next(i for i in range(6) if single[i] != single[a])
    # one real image of prototype a, three padded copies of prototype b
    images = torch.stack([prototypes[a], prototypes[b], prototypes[b], prototypes[b]])[None]
    masks = torch.ones(1, 4, 1, 32, 32)
    valid = torch.tensor([[True, False, False, False]])
    assert set_class_targets(proto_clip, images, masks, valid).item() == single[a].item()
    assert set_class_targets(proto_clip, images, masks).item() == single[b].item()


def test_set_class_targets_with_a_float64_clip(tiny_clip):
    clip = make_tiny_clip().double()  # the fixture's weights, in float64
    torch.manual_seed(5)
    images = torch.rand(2, 3, 3, 32, 32)
    masks = (torch.rand(2, 3, 1, 32, 32) > 0.5).float()
    targets = set_class_targets(clip, images, masks)
    scores, expected = _literal_targets(tiny_clip, images, masks)
    _assert_same_class(targets, expected, scores, tol=1e-4)


def test_set_class_targets_check_the_images(tiny_clip):
    with pytest.raises(CosegShapeError):
        set_class_targets(tiny_clip, torch.rand(2, 3, 8, 8), torch.ones(2, 1, 8, 8))
    with pytest.raises(CosegValueError):
        set_class_targets(tiny_clip, torch.rand(1, 2, 3, 8, 8) * 255, torch.ones(1, 2, 1, 8, 8))
    with pytest.raises(CosegShapeError):
        set_class_targets(tiny_clip, torch.rand(1, 2, 3, 8, 8), torch.ones(1, 3, 1, 8, 8))


# ---------------------------------------------------------------------------- masked images


def test_masked_images_zero_the_background():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 3, 6, 5)
    masks = (torch.rand(2, 3, 1, 6, 5) > 0.5).float()
    out = masked_images(images, masks)
    assert out.shape == images.shape
    keep = masks.expand_as(images).bool()
    assert (out[~keep] == 0).all()
    assert torch.equal(out[keep], images[keep])


def test_masked_images_resize_the_masks():
    images = torch.rand(1, 2, 3, 8, 8)
    masks = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 1, 1, 2, 2).repeat(1, 2, 1, 1, 1)
    out = masked_images(images, masks)
    full = masks.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)  # nearest, by hand
    torch.testing.assert_close(out, images * full)
    assert out.shape == images.shape


def test_masked_images_shape_errors():
    with pytest.raises(CosegShapeError, match=r"\(1, 3, 1, 8, 8\)"):
        masked_images(torch.rand(1, 2, 3, 8, 8), torch.ones(1, 3, 1, 8, 8))
    with pytest.raises(CosegShapeError):
        masked_images(torch.rand(1, 2, 3, 8, 8), torch.ones(1, 2, 8, 8))
    with pytest.raises(CosegShapeError):
        masked_images(torch.rand(1, 2, 3, 8, 8), torch.ones(1, 2, 3, 8, 8))


def test_matches_torch_binary_cross_entropy_and_passes_nan_through() -> None:
    torch.manual_seed(0)
    probs = torch.rand(3, 7).softmax(-1)
    target = torch.tensor([1, 0, 6])
    expected = F.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), F.one_hot(target, 7).float())
    assert torch.allclose(classification_loss(probs, target), expected, atol=1e-6)
    # a diverged model's NaN probabilities give a NaN loss (the trainer reports it), not an error
    assert torch.isnan(classification_loss(torch.full((1, 7), float("nan")), torch.tensor([2])))
