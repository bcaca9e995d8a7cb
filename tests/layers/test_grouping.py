"""SetGrouping: reference equality, set properties, padding, straight-through gradients, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cosegkit.layers.grouping as grouping_module
from cosegkit import CosegShapeError, CosegValueError, SetGrouping
from cosegkit.layers import gumbel_assignment, set_coverage
from tests.layers.reference import grouping_reference, segclip_semantic_learner


def make(
    channels: int = 8, groups: int = 4, heads: int = 2, layers: int = 2, seed: int = 0, activation: str = "gelu"
) -> SetGrouping:
    torch.manual_seed(seed)
    module = SetGrouping(channels, num_groups=groups, heads=heads, layers=layers, activation=activation).eval()
    with torch.no_grad():  # centres away from their tiny init, so groups differ clearly
        module.centres.normal_()
    return module


def check_against_reference(module, x, valid=None, hard=False):
    out = module(x, valid)
    for b in range(x.shape[0]):
        row = None if valid is None else valid[b].tolist()
        features, assignment, emb, coverage, scores, distortion = grouping_reference(module, x[b], row, hard=hard)
        torch.testing.assert_close(out.features[b], features, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.assignment[b], assignment, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.group_embeddings[b], emb, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.coverage[b], coverage, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.scores[b], scores, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.distortion[b], distortion, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_matches_reference_loop(n: int, layers: int, activation: str) -> None:
    module = make(8, groups=3, heads=2, layers=layers, activation=activation)
    check_against_reference(module, torch.randn(2, n, 8, 3, 4))


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("layers", [0, 2])
def test_quick_gelu_matches_segclips_semantic_learner(monkeypatch, n: int, layers: int) -> None:
    """With ``activation="quick_gelu"``, SetGrouping is SegCLIP's ``SemanticLearnerModule`` on the set's tokens.

    Training forward with the same Gumbel noise on both sides; for one image (``n = 1``) the
    set is SegCLIP's input, for several their tokens concatenated image by image. With the
    default GELU the same weights give other group embeddings.
    """
    real = grouping_module.gumbel_assignment
    c, g, h, w = 16, 4, 3, 4
    noise = -torch.empty(g, n * h * w).exponential_(generator=torch.Generator().manual_seed(7)).log()
    monkeypatch.setattr(
        grouping_module,
        "gumbel_assignment",
        lambda logits, tau, dim: real(logits + noise, tau, dim=dim, noise=False),
    )
    quick = make(c, groups=g, heads=4, layers=layers, activation="quick_gelu").train()
    with torch.no_grad():
        for p in quick.parameters():  # away from the LayerNorms' ones and zeros, so every step shows
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, n, c, h, w)
    tokens = torch.cat([x[0, i].reshape(c, -1).T for i in range(n)])  # (L, C), image by image
    out = quick(x)
    outputs, hard_attn, _, _, attn = segclip_semantic_learner(quick, tokens, noise=noise, tau=quick.tau)
    as_groups = out.assignment[0].permute(1, 0, 2, 3).reshape(g, -1)  # (G, n h w)
    torch.testing.assert_close(out.logits[0].permute(1, 0, 2, 3).reshape(g, -1), attn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(as_groups, hard_attn, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.group_embeddings[0], outputs, atol=1e-5, rtol=1e-4)

    gelu = make(c, groups=g, heads=4, layers=layers, activation="gelu").train()
    gelu.load_state_dict(quick.state_dict())  # the activation has no weights: the same module otherwise
    assert not torch.allclose(gelu(x).group_embeddings[0], outputs, atol=1e-3)


def test_activation_is_a_validated_setting() -> None:
    from cosegkit.layers._blocks import QuickGELU

    quick, gelu = SetGrouping(8, heads=2, activation="quick_gelu"), SetGrouping(8, heads=2)
    assert gelu.activation == "gelu" and "activation='quick_gelu'" in repr(quick)
    for block in quick.blocks:
        assert isinstance(block.mlp[1], QuickGELU)
    assert isinstance(quick.embed[-1], QuickGELU) and isinstance(quick.embed[1][1], torch.nn.GELU)  # SegCLIP's Mlp
    assert all(isinstance(block.mlp[1], torch.nn.GELU) for block in gelu.blocks)
    assert isinstance(gelu.embed[-1], torch.nn.GELU)
    assert list(quick.state_dict()) == list(gelu.state_dict())  # weights load across the two
    with pytest.raises(CosegValueError, match=r"activation must be one of \['gelu', 'quick_gelu'\], got 'relu'"):
        SetGrouping(8, heads=2, activation="relu")


def test_matches_reference_with_padding() -> None:
    x = torch.randn(3, 4, 8, 2, 3)
    valid = torch.tensor([[True, True, False, True], [True, False, False, False], [False, True, True, True]])
    check_against_reference(make(8, groups=5, heads=4), x, valid)


def test_training_forward_is_the_hard_assignment(monkeypatch) -> None:
    """Without noise, the training forward equals the reference with one-hot assignments."""
    real = grouping_module.gumbel_assignment
    monkeypatch.setattr(
        grouping_module, "gumbel_assignment", lambda logits, tau, dim: real(logits, tau, dim=dim, noise=False)
    )
    module = make(8, groups=4, heads=2).train()
    x = torch.randn(2, 3, 8, 3, 3)
    valid = torch.tensor([[True, True, True], [True, False, True]])
    check_against_reference(module, x, valid, hard=True)
    out = module(x, valid)
    assert set(out.assignment.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.assignment.sum(dim=2)[valid], torch.ones(5, 3, 3))


@settings(deadline=None, max_examples=25)
@given(b=st.integers(1, 3), n=st.integers(1, 5), h=st.integers(1, 4), w=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_permutation_equivariance_and_invariance(b: int, n: int, h: int, w: int, seed: int) -> None:
    module = make(8, groups=4, heads=2, seed=seed % 5)
    torch.manual_seed(seed)
    x = torch.randn(b, n, 8, h, w)
    out = module(x)
    assert out.features.shape == x.shape and out.assignment.shape == (b, n, 4, h, w)
    perm = torch.randperm(n)
    moved = module(x[:, perm])
    torch.testing.assert_close(moved.features, out.features[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved.assignment, out.assignment[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved.logits, out.logits[:, perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(moved.group_embeddings, out.group_embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved.coverage, out.coverage, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved.scores, out.scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(moved.distortion, out.distortion, atol=1e-5, rtol=1e-4)


@settings(deadline=None, max_examples=20)
@given(n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_sets_in_a_batch_are_independent(n: int, seed: int) -> None:
    module = make(8)
    torch.manual_seed(seed)
    a, c = torch.randn(1, n, 8, 3, 3), torch.randn(1, n, 8, 3, 3)
    both = module(torch.cat([a, c]))
    for i, alone in enumerate((module(a), module(c))):
        for name in ("features", "assignment", "group_embeddings", "coverage", "scores", "distortion"):
            torch.testing.assert_close(getattr(both, name)[i : i + 1], getattr(alone, name), atol=1e-5, rtol=1e-4)


@settings(deadline=None, max_examples=20)
@given(n=st.integers(1, 4), pad=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_padding_neither_contributes_nor_changes_valid_outputs(n: int, pad: int, seed: int) -> None:
    module = make(8)
    torch.manual_seed(seed)
    x = torch.randn(1, n, 8, 3, 2)
    padded = torch.cat([x, 100 * torch.randn(1, pad, 8, 3, 2)], dim=1)
    valid = torch.tensor([[True] * n + [False] * pad])
    out, ref = module(padded, valid), module(x)
    torch.testing.assert_close(out.features[:, :n], ref.features, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.assignment[:, :n], ref.assignment, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.group_embeddings, ref.group_embeddings, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.coverage, ref.coverage, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.distortion, ref.distortion, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.features[:, n:], padded[:, n:])  # padding keeps its features
    assert out.assignment[:, n:].abs().sum() == 0  # and belongs to no group


def test_the_centres_see_every_image_of_the_set() -> None:
    """A change to one image moves the group embeddings and the other images' features."""
    module = make(8)
    x = torch.randn(1, 3, 8, 3, 3)
    y = x.clone()
    y[:, 2] = torch.randn(8, 3, 3)
    a, b = module(x), module(y)
    assert not torch.allclose(a.group_embeddings, b.group_embeddings)
    assert not torch.allclose(a.features[:, 0], b.features[:, 0])


def test_gradients_reach_the_centres_and_every_parameter_through_the_straight_through_estimator() -> None:
    torch.manual_seed(0)
    module = SetGrouping(8, num_groups=4, heads=2).train()
    x = torch.randn(2, 3, 8, 3, 3, requires_grad=True)
    out = module(x)
    assert set(out.assignment.unique().tolist()) <= {0.0, 1.0}
    (out.features.square().mean() + out.group_embeddings.square().mean() + out.scores.square().mean()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0
    # through the one-hot assignment alone: a loss on the assignment reaches the centres
    module.zero_grad()
    module(x.detach()).assignment.mul(torch.randn(2, 3, 4, 3, 3)).sum().backward()
    assert module.centres.grad.abs().sum() > 0 and module.to_k.weight.grad.abs().sum() > 0
    # and the grouping mask logits train the scores and, through the assignment, the centres
    from cosegkit.layers import group_mask_logits

    module.zero_grad()
    out = module(x.detach())
    group_mask_logits(out.assignment, out.scores).mul(torch.randn(2, 3, 1, 3, 3)).sum().backward()
    assert module.score.weight.grad.abs().sum() > 0 and module.centres.grad.abs().sum() > 0


def test_gumbel_noise_only_in_training() -> None:
    module = make(8)
    x = torch.randn(1, 2, 8, 4, 4)
    torch.testing.assert_close(module(x).assignment, module(x).assignment)  # eval: deterministic
    module.train()
    draws = {tuple(module(x).assignment.argmax(dim=2).flatten().tolist()) for _ in range(10)}
    assert len(draws) > 1  # training: the noise changes the hard assignment


def test_gumbel_assignment_is_one_hot_of_the_noiseless_argmax() -> None:
    logits = torch.randn(5, 4, 7)
    hard = gumbel_assignment(logits, 0.9, dim=1, noise=False)
    torch.testing.assert_close(hard.argmax(dim=1), logits.argmax(dim=1))
    torch.testing.assert_close(hard.sum(dim=1), torch.ones(5, 7))


def test_set_coverage_counts_images() -> None:
    a = torch.zeros(1, 4, 2, 1, 1)
    a[0, :, 0] = 1.0
    a[0, 0, 0], a[0, 0, 1] = 0.0, 1.0  # group 1 in image 0 only, group 0 in the other three
    valid = torch.tensor([[True, True, True, False]])  # image 3 is padding
    torch.testing.assert_close(set_coverage(a, valid), torch.tensor([[2 / 3, 1 / 3]]))


def test_errors() -> None:
    module = make(8)
    with pytest.raises(CosegShapeError, match=r"\(B, N, C, h, w\)"):
        module(torch.randn(2, 8, 3, 3))
    with pytest.raises(CosegShapeError, match="8 channels"):
        module(torch.randn(1, 2, 6, 3, 3))
    with pytest.raises(CosegValueError, match="no image as real"):
        module(torch.randn(2, 2, 8, 3, 3), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(CosegShapeError, match="valid of shape"):
        module(torch.randn(2, 2, 8, 3, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(CosegValueError, match="num_groups must be a positive integer, got 0"):
        SetGrouping(8, num_groups=0)
    with pytest.raises(CosegValueError, match="must divide"):
        SetGrouping(10, heads=4)
    with pytest.raises(CosegValueError, match="layers"):
        SetGrouping(8, heads=2, layers=-1)
    with pytest.raises(CosegValueError, match="tau"):
        SetGrouping(8, heads=2, tau=0)


def test_distortion_trains_the_assignment_only_and_falls_for_homogeneous_groups() -> None:
    """k-means: a partition along a clear two-cluster split distorts less than a random one."""
    module = make(8, groups=2, heads=2, layers=0)
    x = torch.randn(1, 2, 8, 4, 4, requires_grad=True)
    out = module.train()(x)
    out.distortion.sum().backward()
    assert module.centres.grad.abs().sum() > 0  # the assignment gets the gradient
    from cosegkit.layers.grouping import _distortion

    tokens = torch.randn(1, 6, 4, requires_grad=True)
    fixed = torch.eye(2)[torch.tensor([0, 0, 1, 1, 0, 1])].T[None]  # a fixed partition
    # the features are fixed targets: with a fixed partition nothing is left to differentiate
    assert not _distortion(tokens, fixed, torch.ones(1, 6, dtype=torch.bool)).requires_grad

    pattern = torch.tensor([5.0] * 4 + [-5.0] * 4)  # two clusters that survive the LayerNorm
    tokens = torch.cat([torch.randn(1, 8, 8) + pattern, torch.randn(1, 8, 8) - pattern], dim=1)
    live = torch.ones(1, 16, dtype=torch.bool)
    split = torch.zeros(1, 2, 16)
    split[0, 0, :8], split[0, 1, 8:] = 1.0, 1.0
    shuffled = split[:, :, torch.randperm(16)]
    assert _distortion(tokens, split, live) < 0.5 * _distortion(tokens, shuffled, live)
