"""ClipInteraction and the coarse decoder: reference equality, set properties, padding, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit import ClipInteraction, CosegShapeError, CosegValueError
from cosegkit.layers import CoarseMaskDecoder, clip_similarity, distill_text
from tests.layers.reference import interaction_reference

C, D, P = 8, 16, 10


def make(top_k: int = 3, seed: int = 0, **kwargs) -> ClipInteraction:
    torch.manual_seed(seed)
    return ClipInteraction(C, D, top_k=top_k, heads=4, **kwargs).eval()


def inputs(b: int, n: int, h: int = 3, w: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, C, h, w, generator=g), torch.randn(b, n, D, generator=g), torch.randn(P, D, generator=g)


#: the paper's eq. (5) at its most literal
LITERAL = {"residual": False, "unit_scale": False}
#: the literal eq. (5), cosegkit's default reading (the layer's defaults), each change alone, the paper variant
OPTIONS = [LITERAL, {}, {**LITERAL, "unit_scale": True}, {**LITERAL, "residual": True}, {"variant": "paper"}]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_matches_per_image_reference(n: int, options: dict) -> None:
    module = make(**options)
    feats, emb, text = inputs(2, n)
    out = module(feats, emb, text)
    for b in range(2):
        f, fused, z, s, topk = interaction_reference(module, feats[b], emb[b], text)
        torch.testing.assert_close(out.features[b], f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.set_embeddings[b], fused, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.semantic_embeddings[b], z, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.similarity[b], s, atol=1e-5, rtol=1e-5)
        assert out.topk_indices[b].tolist() == topk.tolist()


@pytest.mark.parametrize("options", OPTIONS)
def test_matches_reference_with_padding(options: dict) -> None:
    module = make(**options)
    feats, emb, text = inputs(2, 4)
    valid = torch.tensor([[True, False, True, False], [False, False, False, True]])
    out = module(feats, emb, text, valid)
    for b in range(2):
        f, _, z, _, topk = interaction_reference(module, feats[b], emb[b], text, valid[b].tolist())
        keep = valid[b]
        torch.testing.assert_close(out.features[b][keep], f[keep], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.semantic_embeddings[b][keep], z[keep], atol=1e-5, rtol=1e-5)
        assert out.topk_indices[b].tolist() == topk.tolist()


def test_distill_text_picks_the_sets_best_prompts() -> None:
    s = torch.tensor([[[0.1, 0.9, 0.2, 0.0], [0.3, 0.8, 0.1, 0.0]]])  # sigma = [0.4, 1.7, 0.3, 0.0]
    assert distill_text(s, 2).tolist() == [[1, 0]]
    # a padded image voting strongly for prompt 3 changes nothing
    padded = torch.cat([s, torch.tensor([[[0.0, 0.0, 0.0, 50.0]]])], dim=1)
    assert distill_text(padded, 2, torch.tensor([[True, True, False]])).tolist() == [[1, 0]]
    assert distill_text(padded, 2).tolist() == [[3, 1]]


def test_clip_similarity_is_cosine() -> None:
    img, txt = torch.randn(1, 2, 5), torch.randn(3, 5)
    expected = torch.stack([torch.cosine_similarity(img[0, i][None], txt, dim=1) for i in range(2)])
    torch.testing.assert_close(clip_similarity(img, txt)[0], expected)


@given(
    b=st.integers(1, 3),
    n=st.integers(1, 5),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_shapes_and_permutation(b: int, n: int, h: int, w: int, seed: int) -> None:
    module = make(top_k=4)
    feats, emb, text = inputs(b, n, h, w, seed)
    out = module(feats, emb, text)
    assert out.features.shape == feats.shape
    assert out.set_embeddings.shape == out.semantic_embeddings.shape == (b, n, D)
    assert out.similarity.shape == (b, n, P) and out.topk_indices.shape == (b, 4)
    perm = torch.randperm(n)
    permuted = module(feats[:, perm], emb[:, perm], text)
    torch.testing.assert_close(permuted.features, out.features[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(permuted.semantic_embeddings, out.semantic_embeddings[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(permuted.similarity, out.similarity[:, perm])
    assert torch.equal(permuted.topk_indices, out.topk_indices)  # a set-level output


@given(n=st.integers(1, 4), pad=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_padding_and_batch_independence(n: int, pad: int, seed: int) -> None:
    module = make()
    feats, emb, text = inputs(2, n + pad, seed=seed)
    valid = torch.tensor([[True] * n + [False] * pad, [True] * (n + pad)])
    out = module(feats, emb, text, valid)
    alone = module(feats[:1, :n], emb[:1, :n], text)
    torch.testing.assert_close(out.features[:1, :n], alone.features, atol=1e-5, rtol=1e-4)
    assert torch.equal(out.topk_indices[:1], alone.topk_indices)
    second = module(feats[1:], emb[1:], text)
    torch.testing.assert_close(out.features[1:], second.features, atol=1e-5, rtol=1e-4)


def test_residual_option_adds_the_input() -> None:
    plain, res = make(seed=3, residual=False), make(seed=3, residual=True)
    feats, emb, text = inputs(1, 3)
    torch.testing.assert_close(res(feats, emb, text).features, plain(feats, emb, text).features + feats)


def test_gradients_reach_every_parameter() -> None:
    module = make().train()
    feats, emb, text = inputs(2, 3)
    out = module(feats, emb, text)
    (out.features.square().mean() + out.set_embeddings.square().mean()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_errors() -> None:
    module = make(top_k=3)
    feats, emb, text = inputs(2, 3)
    with pytest.raises(CosegShapeError, match=r"image_embeddings of shape \(2, 3, 16\)"):
        module(feats, emb[:, :2], text)
    with pytest.raises(CosegShapeError, match=r"\(P, 16\)"):
        module(feats, emb, text[:, :8])
    with pytest.raises(CosegValueError, match="top_k=3 is larger than the vocabulary of 2"):
        module(feats, emb, text[:2])
    with pytest.raises(CosegValueError, match="empty"):
        module(feats, emb, text[:0])
    with pytest.raises(CosegValueError, match="at least 1"):
        ClipInteraction(C, D, top_k=0)
    with pytest.raises(CosegValueError, match="must divide"):
        ClipInteraction(C, 15, heads=4)


def test_coarse_decoder_is_scaled_cosine_with_patch_tokens() -> None:
    torch.manual_seed(0)
    dec = CoarseMaskDecoder(D)
    emb, patches = torch.randn(2, 3, D), torch.randn(2, 3, D, 4, 5)
    out = dec(emb, patches)
    assert out.shape == (2, 3, 1, 4, 5)
    # at initialisation W is the identity: logits = 10 * cos(h, t) + 0
    expected = 10 * torch.cosine_similarity(emb[..., None, None], patches, dim=2)
    torch.testing.assert_close(out[:, :, 0], expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in dec.parameters())
    with pytest.raises(CosegShapeError):
        dec(emb, patches[:, :, :, 0])
    with pytest.raises(CosegShapeError):
        dec(emb[:, :2], patches)
