"""superpixel_loss against SegCLIP's pairwise form; padding, gradients, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cosegkit import CosegShapeError, CosegValueError, SuperpixelLoss, superpixel_loss
from cosegkit.layers import gumbel_assignment
from cosegkit.losses import superpixel_grid


def segclip_form(assignment: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
    """SegCLIP's clustering loss, image by image: an L x L same-superpixel matrix per image."""
    b, n, g, h, w = assignment.shape
    labels = superpixel_grid(superpixels, (h, w))
    terms, count = 0.0, 0
    for i in range(b):
        for j in range(n):
            a = assignment[i, j].reshape(g, -1).T  # (L, G)
            lab = labels[i, j].reshape(-1)
            same = (lab[:, None] == lab[None, :]).to(a.dtype)
            mean = same @ a / same.sum(dim=-1, keepdim=True).clamp_min(1.0)
            kl_1 = F.kl_div(F.log_softmax(a, dim=-1), F.softmax(mean, dim=-1), reduction="sum")
            kl_2 = F.kl_div(F.log_softmax(mean, dim=-1), F.softmax(a, dim=-1), reduction="sum")
            terms = terms + (kl_1 + kl_2) / 2
            count += a.numel()
    return terms / count


@settings(deadline=None, max_examples=25)
@given(
    b=st.integers(1, 2), n=st.integers(1, 3), g=st.integers(1, 5), grid=st.integers(1, 4), seed=st.integers(0, 2**16)
)
def test_matches_segclip_pairwise_form(b: int, n: int, g: int, grid: int, seed: int) -> None:
    torch.manual_seed(seed)
    hard = gumbel_assignment(torch.randn(b, n, g, grid, grid), dim=2)
    labels = torch.randint(0, 4, (b, n, 4 * grid, 4 * grid)) + 7  # labels need not start at 0
    torch.testing.assert_close(superpixel_loss(hard, labels), segclip_form(hard, labels))
    soft = torch.randn(b, n, g, grid, grid).softmax(dim=2)
    torch.testing.assert_close(superpixel_loss(soft, labels), segclip_form(soft, labels))


def test_labels_are_compared_within_an_image_only() -> None:
    """Two images sharing label values but grouped differently: each agrees with its own superpixels."""
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.long)  # one superpixel per image
    a = torch.zeros(1, 2, 2, 2, 2)
    a[0, 0, 0], a[0, 1, 1] = 1.0, 1.0  # image 0 all group 0, image 1 all group 1
    assert superpixel_loss(a, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_zero_when_groups_follow_superpixels_and_positive_otherwise() -> None:
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    labels[..., 4:] = 1
    agree = torch.zeros(1, 1, 2, 4, 4)
    agree[0, 0, 0, :, :2], agree[0, 0, 1, :, 2:] = 1.0, 1.0
    assert superpixel_loss(agree, labels).item() == pytest.approx(0.0, abs=1e-7)
    cut = torch.zeros(1, 1, 2, 4, 4)
    cut[0, 0, 0, :2], cut[0, 0, 1, 2:] = 1.0, 1.0
    assert superpixel_loss(cut, labels).item() > 0.01


def test_padding_does_not_count() -> None:
    torch.manual_seed(0)
    a = torch.randn(1, 3, 4, 3, 3).softmax(dim=2)
    labels = torch.randint(0, 3, (1, 3, 6, 6))
    valid = torch.tensor([[True, True, False]])
    expected = superpixel_loss(a[:, :2], labels[:, :2])
    junk = a.clone()
    junk[:, 2] = torch.randn(4, 3, 3).softmax(dim=0)
    torch.testing.assert_close(superpixel_loss(junk, labels, valid), expected)


def test_gradients_reach_the_logits_through_the_hard_assignment() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 2, (1, 2, 8, 8))
    SuperpixelLoss()(gumbel_assignment(logits, dim=2), labels).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_errors() -> None:
    a = torch.rand(1, 2, 3, 4, 4)
    with pytest.raises(CosegShapeError, match=r"\(B, N, G, h, w\)"):
        superpixel_loss(a[0], torch.zeros(1, 2, 8, 8, dtype=torch.long))
    with pytest.raises(CosegShapeError, match=r"\(1, 2, H, W\)"):
        superpixel_loss(a, torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(CosegValueError, match="integers"):
        superpixel_loss(a, torch.zeros(1, 2, 8, 8))
