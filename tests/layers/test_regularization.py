"""ClipRegularization: reference equality, set-level invariance, padding, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit import ClipRegularization, CosegShapeError, CosegValueError
from tests.layers.reference import regularization_reference

C, D, P = 8, 16, 10


def make(seed: int = 0, **kwargs) -> ClipRegularization:
    torch.manual_seed(seed)
    return ClipRegularization(C, D, P, **kwargs).eval()


def inputs(b: int, n: int, h: int = 3, w: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, C, h, w, generator=g), torch.randn(b, n, P, generator=g), torch.randn(P, D, generator=g)


#: the paper's eq. (7)-(8) at their most literal
LITERAL = {"residual": False, "unit_scale": False, "class_pool": "max", "class_prior": 0.0}
#: the literal eq. (7)-(8), cosegkit's default reading (the layer's defaults), each change alone, the paper variant
OPTIONS = [
    LITERAL,
    {},
    {**LITERAL, "class_pool": "mean"},
    {**LITERAL, "class_prior": 3.0},
    {**LITERAL, "unit_scale": True},
    {**LITERAL, "residual": True},
    {"variant": "paper"},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_matches_per_image_reference(n: int, options: dict) -> None:
    module = make(**options)
    feats, sim, text = inputs(3, n)
    out = module(feats, sim, text)
    for b in range(3):
        f, v, best = regularization_reference(module, feats[b], sim[b], text)
        torch.testing.assert_close(out.features[b], f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.class_probs[b], v, atol=1e-6, rtol=1e-5)
        assert int(out.common_class[b]) == best


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_reference_with_padding(options: dict) -> None:
    module = make(**options)
    feats, sim, text = inputs(2, 3)
    valid = torch.tensor([[True, False, True], [False, True, False]])
    out = module(feats, sim, text, valid)
    for b in range(2):
        f, v, best = regularization_reference(module, feats[b], sim[b], text, valid[b].tolist())
        torch.testing.assert_close(out.class_probs[b], v, atol=1e-6, rtol=1e-5)
        assert int(out.common_class[b]) == best
        torch.testing.assert_close(out.features[b][valid[b]], f[valid[b]], atol=1e-5, rtol=1e-5)


@given(b=st.integers(1, 3), n=st.integers(1, 5), h=st.integers(1, 4), w=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_shapes_permutation_and_probabilities(b: int, n: int, h: int, w: int, seed: int) -> None:
    module = make()
    feats, sim, text = inputs(b, n, h, w, seed)
    out = module(feats, sim, text)
    assert out.features.shape == feats.shape
    assert out.class_probs.shape == (b, P) and out.common_class.shape == (b,)
    torch.testing.assert_close(out.class_probs.sum(-1), torch.ones(b))
    assert torch.equal(out.common_class, out.class_probs.argmax(-1))
    perm = torch.randperm(n)
    permuted = module(feats[:, perm], sim[:, perm], text)
    torch.testing.assert_close(permuted.features, out.features[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(permuted.class_probs, out.class_probs)  # set-level: unchanged
    assert torch.equal(permuted.common_class, out.common_class)


@given(n=st.integers(1, 4), pad=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_padding_and_batch_independence(n: int, pad: int, seed: int) -> None:
    module = make(class_pool="max")
    feats, sim, text = inputs(2, n + pad, seed=seed)
    sim[0, n:] = 100.0  # padded rows would dominate the max pool if they counted
    valid = torch.tensor([[True] * n + [False] * pad, [True] * (n + pad)])
    out = module(feats, sim, text, valid)
    alone = module(feats[:1, :n], sim[:1, :n], text)
    torch.testing.assert_close(out.class_probs[:1], alone.class_probs)
    torch.testing.assert_close(out.features[:1, :n], alone.features, atol=1e-5, rtol=1e-4)
    second = module(feats[1:], sim[1:], text)
    torch.testing.assert_close(out.class_probs[1:], second.class_probs)


def test_chosen_text_embedding_modulates_the_features() -> None:
    module = make()
    feats, sim, text = inputs(1, 2)
    out = module(feats, sim, text)
    other = text.clone()
    other[out.common_class[0]] += 1.0  # change only the chosen class's embedding
    assert not torch.allclose(module(feats, sim, other).features, out.features)
    unchosen = text.clone()
    unchosen[(out.common_class[0] + 1) % P] += 1.0
    torch.testing.assert_close(module(feats, sim, unchosen).features, out.features)


def test_gradients() -> None:
    module = make().train()
    feats, sim, text = inputs(2, 3)
    out = module(feats, sim, text)
    (out.features.square().mean() - out.class_probs[:, 0].log().mean()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_errors() -> None:
    module = make()
    feats, sim, text = inputs(2, 3)
    with pytest.raises(CosegShapeError, match=r"similarity of shape \(2, 3, 10\)"):
        module(feats, sim[..., :5], text)
    with pytest.raises(CosegShapeError, match="num_prompts=10"):
        module(feats, sim, torch.randn(11, D))
    with pytest.raises(CosegShapeError):
        module(feats[0], sim, text)
    with pytest.raises(CosegValueError, match="no image as real"):
        module(feats, sim, text, torch.zeros(2, 3, dtype=torch.bool))
