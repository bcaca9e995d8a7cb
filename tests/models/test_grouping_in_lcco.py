"""The grouping layer inside LCCo, its read-outs, and its loss term."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cosegkit import CosegValueError, GroupingReadout, LCCo, LCCoLoss
from cosegkit.layers import clip_readout, coverage_readout, group_mask_logits, score_readout
from tests._support import make_tiny_clip, tiny_lcco


def rand_images(b: int, n: int, h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_every_level_and_its_channels(level: int) -> None:
    m = tiny_lcco(use_grouping=True, grouping_level=level, num_groups=5).eval()
    out = m(rand_images(2, 3))
    channels = m.config["decoder_channels"][level - 1]
    assert out.grouping.features.shape[:3] == (2, 3, channels)
    assert out.grouping.assignment.shape[:3] == (2, 3, 5) and out.grouping.coverage.shape == (2, 5)
    assert out.masks.shape == (2, 3, 1, 32, 40)


def test_off_by_default_and_the_output_field_is_none() -> None:
    m = tiny_lcco().eval()
    assert not m.use_grouping and m.config["use_grouping"] is False
    assert m(rand_images(1, 2)).grouping is None


def test_grouping_alone_makes_the_baseline_set_aware() -> None:
    base = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False).eval()
    grouped = tiny_lcco(
        use_correspondence=False, use_interaction=False, use_regularization=False, use_grouping=True
    ).eval()
    x = rand_images(1, 3)
    y = x.clone()
    y[:, 2] = torch.rand(3, 32, 40)
    torch.testing.assert_close(base(x).masks[:, 0], base(y).masks[:, 0])  # per image
    assert not torch.allclose(grouped(x).masks[:, 0], grouped(y).masks[:, 0])  # sees the set


@settings(deadline=None, max_examples=10)
@given(n=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_permutation_with_grouping(n: int, seed: int) -> None:
    m = tiny_lcco(use_grouping=True).eval()
    x = rand_images(1, n, seed=seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = m(x), m(x[:, perm])
    torch.testing.assert_close(b.masks, a.masks[:, perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.grouping.coverage, a.grouping.coverage, atol=1e-5, rtol=1e-4)


def test_padding_with_grouping() -> None:
    m = tiny_lcco(use_grouping=True).eval()
    x = rand_images(1, 2)
    padded = torch.cat([x, rand_images(1, 2, seed=5)], dim=1)
    out = m(padded, torch.tensor([[True, True, False, False]]))
    torch.testing.assert_close(out.masks[:, :2], m(x).masks, atol=1e-4, rtol=1e-4)


def test_round_trip_keeps_the_grouping(tmp_path) -> None:
    m = tiny_lcco(use_grouping=True, grouping_level=2, num_groups=3).eval()
    with torch.no_grad():
        m.grouping.centres.add_(torch.randn_like(m.grouping.centres))
    loaded = LCCo.from_pretrained(m.save_pretrained(tmp_path / "ckpt")).eval()
    assert loaded.use_grouping and loaded.grouping_level == 2 and loaded.grouping.num_groups == 3
    x = rand_images(1, 3)
    assert torch.equal(m(x).masks, loaded(x).masks)


def test_the_grouping_activation_is_saved_and_an_older_config_reads_as_gelu(tmp_path) -> None:
    import json

    m = tiny_lcco(use_grouping=True, num_groups=3, grouping_activation="quick_gelu").eval()
    assert m.grouping.activation == "quick_gelu" and m.config["grouping_activation"] == "quick_gelu"
    with torch.no_grad():
        m.grouping.centres.add_(torch.randn_like(m.grouping.centres))
    path = m.save_pretrained(tmp_path / "quick")
    loaded = LCCo.from_pretrained(path).eval()
    assert loaded.grouping.activation == "quick_gelu"
    x = rand_images(1, 3)
    assert torch.equal(m(x).masks, loaded(x).masks)
    assert tiny_lcco(use_grouping=True).grouping.activation == "gelu"  # the default

    config = json.loads((path / "config.json").read_text())
    del config["model"]["grouping_activation"]  # what an older cosegkit wrote
    (path / "config.json").write_text(json.dumps(config))
    older = LCCo.from_pretrained(path).eval()
    assert older.grouping.activation == "gelu" and older.config["grouping_activation"] == "gelu"
    assert not torch.equal(older(x).masks, m(x).masks)  # the same weights through GELU
    with pytest.raises(CosegValueError, match="activation must be one of"):
        tiny_lcco(use_grouping=True, grouping_activation="relu")


def test_a_checkpoint_without_grouping_settings_loads_without_the_layer(tmp_path) -> None:
    import json

    path = tiny_lcco().save_pretrained(tmp_path / "old")
    config = json.loads((path / "config.json").read_text())
    for key in ("use_grouping", "grouping_level", "num_groups", "grouping_layers"):
        config["model"].pop(key)
    (path / "config.json").write_text(json.dumps(config))
    assert not LCCo.from_pretrained(path).use_grouping


def test_bad_level() -> None:
    with pytest.raises(CosegValueError, match="grouping_level must be 1, 2 or 3"):
        tiny_lcco(use_grouping=True, grouping_level=4)


# ------------------------------------------------------------------ loss
def test_superpixel_term_in_the_total_and_gradients_reach_the_centres() -> None:
    m = tiny_lcco(use_grouping=True, grouping_level=3).train()  # stride 8: a 4 x 5 token grid
    x = rand_images(2, 2)
    masks = (torch.rand(2, 2, 1, 32, 40) > 0.5).float()
    sp = torch.zeros(2, 2, 32, 40, dtype=torch.long)
    sp[..., 20:] = 1  # two superpixels per image, each over several tokens
    out = m(x, masks=masks)
    plain = LCCoLoss(grouping_weight=0.0)(out, masks)
    with_sp = LCCoLoss(superpixel_weight=2.0, grouping_weight=0.0)(out, masks, superpixels=sp)
    assert plain.superpixel is None and with_sp.superpixel is not None and plain.grouping is None
    torch.testing.assert_close(with_sp.total, plain.total + 2.0 * with_sp.superpixel)
    m.zero_grad()
    with_sp.superpixel.backward(retain_graph=True)
    assert m.grouping.centres.grad.abs().sum() > 0
    m.zero_grad()
    plain.total.backward()  # the mask loss alone also trains the grouping, through its features
    assert m.grouping.centres.grad.abs().sum() > 0 and m.grouping.to_k.weight.grad.abs().sum() > 0


def test_grouping_mask_term_is_eq_11_on_the_groups_scores() -> None:
    from cosegkit.losses import coarse_segmentation_loss

    m = tiny_lcco(use_grouping=True, grouping_level=3).train()
    masks = (torch.rand(2, 2, 1, 32, 40) > 0.5).float()
    out = m(rand_images(2, 2), masks=masks)
    losses, plain = LCCoLoss(grouping_weight=0.5)(out, masks), LCCoLoss(grouping_weight=0.0)(out, masks)
    expected = coarse_segmentation_loss(group_mask_logits(out.grouping.assignment, out.grouping.scores), masks)
    torch.testing.assert_close(losses.grouping, expected)
    torch.testing.assert_close(losses.total, plain.total + 0.5 * expected)
    ones = torch.ones(1, 2, 1, 32, 40)
    assert LCCoLoss()(tiny_lcco().eval()(rand_images(1, 2), masks=ones), ones).grouping is None


def test_distortion_term() -> None:
    m = tiny_lcco(use_grouping=True).train()
    masks = (torch.rand(2, 2, 1, 32, 40) > 0.5).float()
    out = m(rand_images(2, 2), masks=masks)
    plain, with_d = LCCoLoss()(out, masks), LCCoLoss(distortion_weight=3.0)(out, masks)
    assert plain.distortion is None
    torch.testing.assert_close(with_d.distortion, out.grouping.distortion.mean())
    torch.testing.assert_close(with_d.total, plain.total + 3.0 * with_d.distortion)


def test_superpixel_term_needs_the_labels() -> None:
    m = tiny_lcco(use_grouping=True).train()
    masks = torch.ones(1, 2, 1, 32, 40)
    with pytest.raises(CosegValueError, match="superpixels="):
        LCCoLoss(superpixel_weight=1.0)(m(rand_images(1, 2), masks=masks), masks)
    with pytest.raises(CosegValueError, match="non-negative"):
        LCCoLoss(superpixel_weight=-1.0)


# ------------------------------------------------------------------ read-outs
def test_coverage_readout_prefers_full_coverage_then_the_smaller_group() -> None:
    a = torch.zeros(1, 3, 3, 2, 2)
    a[0, :, 0] = 1.0  # group 0: background in all three images
    a[0, :, 0, 0, 0], a[0, :, 1, 0, 0] = 0.0, 1.0  # group 1: one token in every image
    a[0, 0, 0, 1, 1], a[0, 0, 2, 1, 1] = 0.0, 1.0  # group 2: image 0 only
    masks, chosen = coverage_readout(a)
    assert chosen.tolist() == [1]
    torch.testing.assert_close(masks[0, :, 0], a[0, :, 1])
    # padding: with image 0 marked padding, group 2 covers nothing and group 1 still wins
    assert coverage_readout(a, torch.tensor([[False, True, True]]))[1].tolist() == [1]


def test_score_readout_takes_the_best_scored_group_that_owns_tokens() -> None:
    a = torch.zeros(1, 2, 3, 1, 2)
    a[0, 0, 0], a[0, 1, 1] = 1.0, 1.0  # group 0 in image 0, group 1 in image 1, group 2 nowhere
    scores = torch.tensor([[1.0, 3.0, 9.0]])
    assert score_readout(a, scores)[1].tolist() == [1]
    assert score_readout(a, scores, torch.tensor([[True, False]]))[1].tolist() == [0]  # image 1 is padding


def test_clip_readout_follows_the_class_and_skips_empty_groups() -> None:
    a = torch.zeros(1, 2, 3, 2, 2)
    a[0, :, 0, 0], a[0, :, 1, 1] = 1.0, 1.0  # groups 0 and 1 split every image; group 2 is empty
    tokens = torch.zeros(1, 2, 3, 4, 4)
    tokens[0, :, 0, :2], tokens[0, :, 1, 2:] = 1.0, 1.0  # CLIP's top half along axis 0, bottom along 1
    assert clip_readout(a, tokens, torch.tensor([[1.0, 0.0, 0.0]]))[1].tolist() == [0]
    assert clip_readout(a, tokens, torch.tensor([[0.0, 1.0, 0.0]]))[1].tolist() == [1]
    assert clip_readout(a, tokens, torch.tensor([[0.0, 0.0, 1.0]]))[1].tolist() != [2]  # empty: never chosen


def test_grouping_readout_on_a_model() -> None:
    m = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False, use_grouping=True)
    x = rand_images(2, 3, 40, 44)
    out = GroupingReadout(m).eval()(x)
    assert out.probs.shape == (2, 3, 1, 40, 44) and out.set_class is None
    owner = out.grouping.assignment.argmax(dim=2)  # (b, n, h, w): each token's group
    for b in range(2):
        owning = set(owner[b].unique().tolist())
        best = max(owning, key=lambda g: float(out.grouping.scores[b, g].detach()))
        assert int(out.chosen[b]) == best
    assert GroupingReadout(m, "coverage").eval()(x).probs.shape == (2, 3, 1, 40, 44)
    assert float(out.probs.min()) >= 0 and float(out.probs.max()) <= 1
    clip_out = GroupingReadout(m, "clip", clip=make_tiny_clip()).eval()(x)
    assert clip_out.set_class.shape == (2,) and clip_out.probs.shape == (2, 3, 1, 40, 44)
    full = tiny_lcco(use_grouping=True).eval()
    own = GroupingReadout(full, "clip").eval()(x)
    assert torch.equal(own.set_class, full(x).common_class)  # the model's own i*


def test_grouping_readout_errors() -> None:
    with pytest.raises(CosegValueError, match="use_grouping=True"):
        GroupingReadout(tiny_lcco())
    grouped = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False, use_grouping=True)
    with pytest.raises(CosegValueError, match="needs a CLIP"):
        GroupingReadout(grouped, "clip")
    with pytest.raises(CosegValueError, match="unknown read-out"):
        GroupingReadout(grouped, "area")


def test_evaluate_scores_a_readout() -> None:
    """evaluate() takes a GroupingReadout like a model; its J is that of the chosen groups."""
    from cosegkit.engine import TrainConfig, build_eval_sets, evaluate
    from cosegkit.metrics import precision_jaccard

    m = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False, use_grouping=True)
    readout = GroupingReadout(m).eval()
    sets = build_eval_sets(TrainConfig(world_classes=4, image_size=32, set_size=2, eval_set_size=2), sets=2)
    result = evaluate(readout, sets)
    assert result.images == 4
    with torch.no_grad():
        js = [
            precision_jaccard(readout(s["images"][None]).probs, s["masks"][None], size=(32, 32))[1].flatten()
            for s in sets
        ]
    assert pytest.approx(float(torch.cat(js).double().mean()), abs=1e-6) == result.J
