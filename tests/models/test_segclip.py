"""SegCLIP's model: shapes, assignments, sets sharing centres, gradients, persistence, loading errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cosegkit import CosegValueError, WeightsUnavailableError
from cosegkit.errors import CosegShapeError
from cosegkit.models import SegClip, SegClipConfig
from cosegkit.models.segclip import (
    segclip_config_from_state_dict,
    segclip_state_dict_to_cosegkit,
    straight_through_assignment,
)

TINY = SegClipConfig(
    embed_dim=16,
    image_size=32,
    patch_size=8,
    width=32,
    layers=3,
    first_stage_layer=2,
    num_groups=4,
    cross_layers=2,
    context_length=12,
    text_width=32,
    text_layers=2,
    head_width=16,
    decoder_heads=4,
)


def tiny(seed: int = 0, **changes) -> SegClip:
    torch.manual_seed(seed)
    config = SegClipConfig(**{**TINY.__dict__, **changes})
    model = SegClip(config)
    with torch.no_grad():  # spread every LayerNorm and bias so nothing rests at an identity
        for name, p in model.named_parameters():
            if name.endswith(("weight", "bias")) and p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def model() -> SegClip:
    return tiny().eval()


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(8, 56), w=st.integers(8, 56), seed=st.integers(0, 99))
def test_any_image_size(model: SegClip, b: int, h: int, w: int, seed: int) -> None:
    with torch.no_grad():
        out = model.encode_image(images(b, 3, h, w, seed=seed))
    gh, gw = h // 8, w // 8
    assert out.embedding.shape == (b, 16) and out.groups.shape == (b, 4, 16)
    assert out.soft.shape == out.hard.shape == out.logits.shape == (b, 4, gh, gw)
    assert torch.allclose(out.soft.sum(1), torch.ones(b, gh, gw), atol=1e-5)
    assert torch.equal(out.hard.sum(1), torch.ones(b, gh, gw)) and set(out.hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.hard.argmax(1), out.soft.argmax(1))  # eval: the argmax of the softmax, no noise


def test_image_embedding_is_the_max_over_groups_after_the_late_blocks(model: SegClip) -> None:
    x = images(2, 3, 32, 32)
    with torch.no_grad():
        out = model.encode_image(x)
        tokens, _, _ = model._first_stage(x)
        groups = model.visual.grouping(tokens)[0]
        for block in model.visual.group_blocks:
            groups = block(groups)
        expected = model.visual.project(groups.max(dim=1).values)
    assert torch.allclose(out.embedding, expected, atol=1e-6)


def test_class_token_enters_no_block(model: SegClip) -> None:
    """SegCLIP sets the class token aside before the first block: changing it changes nothing."""
    x = images(1, 3, 32, 32)
    with torch.no_grad():
        before = model.encode_image(x).embedding
        model.visual.class_embedding.add_(1.0)
        after = model.encode_image(x).embedding
        model.visual.class_embedding.sub_(1.0)
    assert torch.equal(before, after)


def test_positions_at_the_trained_grid_are_the_parameter_and_interpolated_elsewhere(model: SegClip) -> None:
    assert model.visual.positions(4, 4) is model.visual.positional_embedding
    other = model.visual.positions(6, 3)
    assert other.shape == (1 + 18, 32)
    assert torch.equal(other[0], model.visual.positional_embedding[0])


def test_images_of_a_batch_do_not_see_each_other(model: SegClip) -> None:
    x = images(3, 3, 32, 32)
    with torch.no_grad():
        together = model.encode_image(x)
        alone = model.encode_image(x[1:2])
    assert torch.allclose(together.groups[1:2], alone.groups, atol=1e-5)
    assert torch.allclose(together.soft[1:2], alone.soft, atol=1e-6)


def test_a_set_of_one_image_groups_as_the_image_alone(model: SegClip) -> None:
    x = images(2, 3, 32, 32)
    with torch.no_grad():
        single = model.encode_image(x)
        shared = model.encode_set(x[:, None])
    assert torch.allclose(shared.embedding, single.embedding, atol=1e-5)
    assert torch.allclose(shared.soft[:, 0], single.soft, atol=1e-6)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(2, 4), seed=st.integers(0, 99))
def test_set_grouping_is_permutation_invariant(model: SegClip, n: int, seed: int) -> None:
    x = images(1, n, 3, 32, 32, seed=seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model.encode_set(x)
        permuted = model.encode_set(x[:, perm])
    assert torch.allclose(permuted.embedding, out.embedding, atol=1e-5)
    assert torch.allclose(permuted.groups, out.groups, atol=1e-5)
    assert torch.allclose(permuted.soft, out.soft[:, perm], atol=1e-5)


def test_set_centres_see_every_image(model: SegClip) -> None:
    """Shared centres: one image's assignment changes when another image of the set does."""
    x = images(1, 3, 3, 32, 32)
    y = x.clone()
    y[0, 2] = images(3, 32, 32, seed=5)
    with torch.no_grad():
        a, b = model.encode_set(x), model.encode_set(y)
    assert (a.logits[0, 0] - b.logits[0, 0]).abs().max() > 1e-4


def test_padded_images_change_nothing_and_hold_no_assignment(model: SegClip) -> None:
    x = images(1, 2, 3, 32, 32)
    padded = torch.cat([x, images(1, 1, 3, 32, 32, seed=9)], dim=1)
    valid = torch.tensor([[True, True, False]])
    with torch.no_grad():
        plain = model.encode_set(x)
        out = model.encode_set(padded, valid)
    assert torch.allclose(out.embedding, plain.embedding, atol=1e-5)
    assert torch.allclose(out.soft[:, :2], plain.soft, atol=1e-5)
    assert torch.equal(out.soft[:, 2], torch.zeros_like(out.soft[:, 2]))
    assert torch.equal(out.hard[:, 2], torch.zeros_like(out.hard[:, 2]))
    with pytest.raises(CosegValueError, match="at least one valid image"):
        model.encode_set(padded, torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(CosegShapeError, match="valid must be"):
        model.encode_set(padded, torch.ones(1, 2, dtype=torch.bool))


def test_text_reads_the_end_token_and_looks_only_backwards(model: SegClip) -> None:
    tokens = torch.zeros(2, 12, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[:, 1:4] = torch.tensor([320, 1929, 269])
    tokens[:, 4] = 49407
    changed = tokens.clone()
    changed[1, 7] = 555  # after the end token: causal attention never sees it
    with torch.no_grad():
        a, b = model.encode_text(tokens), model.encode_text(changed)
        shorter = model.encode_text(tokens[:, :6])
    assert a.shape == (2, 16)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, shorter, atol=1e-5)
    with pytest.raises(CosegShapeError, match="context length 12"):
        model.encode_text(torch.zeros(1, 13, dtype=torch.long))


def test_training_assignment_is_noisy_hard_and_passes_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 50, requires_grad=True)
    hard = straight_through_assignment(logits, dim=0, training=True)
    assert torch.equal(hard.detach().sum(0), torch.ones(50))
    eval_hard = straight_through_assignment(logits, dim=0, training=False)
    assert not torch.equal(hard.detach().argmax(0), eval_hard.detach().argmax(0))  # Gumbel noise moved some tokens
    (hard * torch.randn(4, 50)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_every_parameter_learns_from_the_contrastive_and_reconstruction_losses() -> None:
    model = tiny().train()
    x = images(4, 3, 32, 32)
    tokens = torch.randint(1, 1000, (4, 12))
    tokens[:, 6] = 49407
    img = torch.nn.functional.normalize(model.encode_image(x).embedding, dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    labels = torch.arange(4)
    loss = torch.nn.functional.cross_entropy(logits, labels) + model.reconstruction_loss(x)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    # SegCLIP's class token enters no block (its image embedding is the groups' maximum): the one
    # parameter without gradient, kept so that SegCLIP's weights load
    assert dead == ["visual.class_embedding"]
    assert not model.mae_decoder.decoder_pos_embed.requires_grad  # fixed sine-cosine positions, as MAE's


def test_reconstruction_loss_scores_only_removed_patches() -> None:
    model = tiny().eval()
    x = images(2, 3, 32, 32)
    noise = torch.rand(2, 17, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model.reconstruction_loss(x, noise=noise)
        again = model.reconstruction_loss(x, noise=noise)
        other = model.reconstruction_loss(x, noise=torch.rand(2, 17, generator=torch.Generator().manual_seed(1)))
    assert math.isfinite(float(loss)) and float(loss) > 0
    assert torch.equal(loss, again) and not torch.equal(loss, other)
    with pytest.raises(CosegShapeError, match="resize the images to 32"):
        model.reconstruction_loss(images(1, 3, 40, 40))
    with pytest.raises(CosegValueError, match="no MAE decoder"):
        tiny(mae_decoder=False).reconstruction_loss(x)


def test_sincos_positions_are_mae_s() -> None:
    """MAE's 2-D table: the first half of the channels encodes the row, the second the column."""
    from cosegkit.models.segclip import _sincos_2d

    table = _sincos_2d(8, 3)
    assert table.shape == (10, 8) and torch.equal(table[0], torch.zeros(8))
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    row, col = 2, 1  # token 1 + 2 * 3 + 1
    expected = torch.cat([(row * omega).sin(), (row * omega).cos(), (col * omega).sin(), (col * omega).cos()]).float()
    assert torch.allclose(table[1 + row * 3 + col], expected, atol=1e-6)


def test_save_and_load_round_trip(tmp_path, model: SegClip) -> None:
    folder = model.save_pretrained(tmp_path / "segclip")
    loaded = SegClip.from_pretrained(folder).eval()
    x = images(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x).groups, model.encode_image(x).groups)
    with pytest.raises(WeightsUnavailableError, match="from_segclip_checkpoint"):
        SegClip.from_pretrained(tmp_path)


def test_config_is_checked() -> None:
    with pytest.raises(CosegValueError, match="first_stage_layer"):
        SegClipConfig(layers=4, first_stage_layer=5)
    with pytest.raises(CosegValueError, match="multiple of patch_size"):
        SegClipConfig(image_size=100)
    with pytest.raises(CosegValueError, match="head_width"):
        SegClipConfig(width=100)
    with pytest.raises(CosegValueError, match="num_groups"):
        SegClipConfig(num_groups=0)


def test_foreign_state_dicts_are_refused(tmp_path) -> None:
    with pytest.raises(WeightsUnavailableError, match="neither clip"):
        segclip_state_dict_to_cosegkit({"encoder.weight": torch.ones(1)})
    with pytest.raises(WeightsUnavailableError, match=r"lacks 'visual\.conv1\.weight'"):
        segclip_config_from_state_dict({})
    path = tmp_path / "x.bin"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsUnavailableError, match="could not read SegCLIP checkpoint"):
        SegClip.from_segclip_checkpoint(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(WeightsUnavailableError, match="not a state dict"):
        SegClip.from_segclip_checkpoint(path)


def test_one_pass_of_the_first_blocks_gives_both_groupings(model: SegClip) -> None:
    x = images(2, 3, 3, 32, 32)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        alone, shared = model.encode_image_and_set(x, valid)
        expected_alone, expected_shared = model.encode_image(x.flatten(0, 1)), model.encode_set(x, valid)
    for got, expected in ((alone, expected_alone), (shared, expected_shared)):
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b)
