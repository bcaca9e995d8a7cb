"""ImageSetCorrespondence: reference equality, set properties, N = 1, padding, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit import CosegShapeError, CosegValueError, ImageSetCorrespondence
from cosegkit.layers import partner_index
from tests.layers.reference import isfc_reference


def make(channels: int = 8, heads: int = 2, seed: int = 0, **kwargs) -> ImageSetCorrespondence:
    torch.manual_seed(seed)
    return ImageSetCorrespondence(channels, heads=heads, **kwargs).eval()


#: the paper's eq. (2), cosegkit's default reading (the layer's defaults), and a softmax temperature
OPTIONS = [{"residual": False}, {}, {"residual": True, "temperature": 0.5}, {"variant": "paper"}]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_matches_per_pair_reference(n: int, options: dict) -> None:
    module = make(8, heads=2, **options)
    x = torch.randn(2, n, 8, 3, 4)
    out = module(x)
    for b in range(2):
        torch.testing.assert_close(out[b], isfc_reference(module, x[b]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_reference_with_padding(options: dict) -> None:
    module = make(8, heads=4, **options)
    x = torch.randn(3, 4, 8, 2, 3)
    valid = torch.tensor([[True, True, False, True], [True, False, False, False], [False, True, True, True]])
    out = module(x, valid)
    for b in range(3):
        ref = isfc_reference(module, x[b], valid[b].tolist())
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_partner_index_skips_self_and_padding() -> None:
    valid = torch.tensor([[True, True, True], [True, False, False]])
    index, live = partner_index(valid)
    assert index[0].tolist() == [[1, 2], [0, 2], [0, 1]]
    assert live[0].all()
    # the lone valid image of set 1 gets a self-loop in its first slot and nothing else
    assert index[1, 0, 0] == 0 and live[1, 0].tolist() == [True, False]


@given(
    b=st.integers(1, 3),
    n=st.integers(1, 5),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_shape_and_permutation_equivariance(b: int, n: int, h: int, w: int, seed: int) -> None:
    module = make(8, heads=2, seed=seed % 7)
    torch.manual_seed(seed)
    x = torch.randn(b, n, 8, h, w)
    out = module(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    perm = torch.randperm(n)
    torch.testing.assert_close(module(x[:, perm]), out[:, perm], atol=1e-5, rtol=1e-4)


@given(n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_sets_in_a_batch_do_not_interact(n: int, seed: int) -> None:
    module = make(8, heads=2)
    torch.manual_seed(seed)
    a, c = torch.randn(1, n, 8, 3, 3), torch.randn(1, n, 8, 3, 3)
    both = module(torch.cat([a, c]))
    torch.testing.assert_close(both[:1], module(a), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[1:], module(c), atol=1e-5, rtol=1e-4)


@given(n=st.integers(1, 4), pad=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_padded_images_change_nothing(n: int, pad: int, seed: int) -> None:
    module = make(8, heads=2)
    torch.manual_seed(seed)
    x = torch.randn(1, n, 8, 3, 2)
    padded = torch.cat([x, 100 * torch.randn(1, pad, 8, 3, 2)], dim=1)
    valid = torch.tensor([[True] * n + [False] * pad])
    out = module(padded, valid)
    torch.testing.assert_close(out[:, :n], module(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, n:], padded[:, n:])  # padding passes through untouched


def test_single_image_features_flow() -> None:
    module = make(8, heads=2)
    x = torch.randn(1, 1, 8, 4, 4, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    assert not torch.allclose(out, module(torch.randn(1, 1, 8, 4, 4)))  # depends on the input
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_gradients_reach_every_parameter() -> None:
    module = make(8, heads=2).train()
    module(torch.randn(2, 3, 8, 3, 3)).square().mean().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_errors() -> None:
    module = make(8, heads=2)
    with pytest.raises(CosegShapeError, match=r"\(B, N, C, h, w\).*\(2, 8, 3, 3\)"):
        module(torch.randn(2, 8, 3, 3))
    with pytest.raises(CosegShapeError, match="8 channels"):
        module(torch.randn(1, 2, 6, 3, 3))
    with pytest.raises(CosegShapeError, match="N >= 1"):
        module(torch.randn(1, 0, 8, 3, 3))
    with pytest.raises(CosegValueError, match="no image as real"):
        module(torch.randn(2, 2, 8, 3, 3), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(CosegShapeError, match=r"valid of shape"):
        module(torch.randn(2, 2, 8, 3, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(CosegValueError, match="must divide"):
        ImageSetCorrespondence(10, heads=4)
    with pytest.raises(ValueError):  # the family is rooted in ValueError
        ImageSetCorrespondence(8, heads=2, kernel_size=2)
