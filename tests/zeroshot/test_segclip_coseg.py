"""SegClipCoseg: SegCLIP's read-out of its groups by the set's class, per image or over a set."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cosegkit.errors import CosegValueError
from cosegkit.models import SegClip, SegClipConfig
from cosegkit.zeroshot import SegClipCoseg, group_affinity

CONFIG = SegClipConfig(
    embed_dim=16,
    image_size=32,
    patch_size=8,
    width=32,
    layers=3,
    first_stage_layer=2,
    num_groups=4,
    context_length=16,
    text_width=32,
    text_layers=1,
    head_width=16,
    mae_decoder=False,
)
NAMES = ("cat", "dog", "car", "bus", "cow", "sheep", "boat")


@pytest.fixture(scope="module")
def model() -> SegClip:
    torch.manual_seed(0)
    model = SegClip(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
        model.visual.grouping.semantic_center.mul_(50)  # distinct centres: several groups hold patches
    return model.eval()


@pytest.fixture(scope="module")
def zs(model: SegClip) -> SegClipCoseg:
    return SegClipCoseg(model, NAMES)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_shapes_ranges_and_padding(zs: SegClipCoseg) -> None:
    x = rand(2, 3, 3, 40, 48)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    out = zs(x, valid)
    assert out.probs.shape == (2, 3, 1, 40, 48) and out.assignment.shape == (2, 3, 4, 4, 4)
    assert out.affinity.shape == (2, 3, 4) and out.class_scores.shape == (2, len(NAMES))
    assert bool(((out.probs >= 0) & (out.probs <= 1)).all())
    assert torch.equal(out.probs[1, 2], torch.zeros_like(out.probs[1, 2]))
    assert torch.equal(out.common_class, out.class_scores.argmax(-1))


def test_a_padded_image_changes_no_other_output(zs: SegClipCoseg) -> None:
    x = rand(1, 2, 3, 32, 32)
    padded = torch.cat([x, rand(1, 1, 3, 32, 32, seed=3)], dim=1)
    valid = torch.tensor([[True, True, False]])
    for grouping in ("image", "set"):
        zs.grouping = grouping
        a, b = zs(x), zs(padded, valid)
        torch.testing.assert_close(b.probs[:, :2], a.probs)
        torch.testing.assert_close(b.class_scores, a.class_scores)
    zs.grouping = "image"


def test_the_hard_read_out_paints_each_pixel_with_one_group_s_affinity(zs: SegClipCoseg) -> None:
    out = zs(rand(1, 2, 3, 32, 32))
    for k in range(2):
        values = set(out.probs[0, k].flatten().tolist())
        assert values <= set(out.affinity[0, k].tolist())
        assert len(values) >= 2  # several groups hold patches of the image


def test_the_soft_read_out_weighs_every_group_by_its_share(model: SegClip) -> None:
    soft = SegClipCoseg(model, NAMES, readout="soft")
    x = rand(1, 2, 3, 32, 32)
    out = soft(x)  # at the model's own size, so the assignment needs no resizing at a 32 px input
    up = torch.nn.functional.interpolate(out.assignment[0], size=(32, 32), mode="bilinear", align_corners=False)
    expected = torch.einsum("nghw,ng->nhw", up, out.affinity[0])
    torch.testing.assert_close(out.probs[0, :, 0], expected)


def test_the_set_s_class_comes_from_the_set_or_the_caller(zs: SegClipCoseg) -> None:
    x = rand(2, 3, 3, 32, 32)
    out = zs(x)
    per_image = torch.stack([zs(x[:, k : k + 1]).class_scores for k in range(3)]).sum(0)
    torch.testing.assert_close(out.class_scores, per_image)
    assert zs(x, class_name="cow").common_class.tolist() == [4, 4]
    with pytest.raises(CosegValueError, match="unknown class name 'cwo'"):
        zs(x, class_name="cwo")


@settings(max_examples=5, deadline=None)
@given(n=st.integers(2, 4), seed=st.integers(0, 999))
def test_permuting_a_set_permutes_its_masks(zs: SegClipCoseg, n: int, seed: int) -> None:
    x = rand(1, n, 3, 32, 32, seed=seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for grouping in ("image", "set"):
        zs.grouping = grouping
        a, b = zs(x), zs(x[:, perm])
        torch.testing.assert_close(b.probs, a.probs[:, perm], atol=1e-5, rtol=1e-5)
        assert a.common_class.tolist() == b.common_class.tolist()
    zs.grouping = "image"


def test_shared_centres_group_the_set_together(model: SegClip) -> None:
    """With grouping='set' an image's masks depend on the other images; per image they do not."""
    x = rand(1, 3, 3, 32, 32)
    y = x.clone()
    y[0, 2] = rand(3, 32, 32, seed=11)
    per_image = SegClipCoseg(model, NAMES, class_name="dog")
    shared = SegClipCoseg(model, NAMES, class_name="dog", grouping="set")
    torch.testing.assert_close(per_image(x).probs[0, :2], per_image(y).probs[0, :2])
    assert (shared(x).assignment[0, :2] - shared(y).assignment[0, :2]).abs().max() > 1e-4


def test_group_affinity_keeps_the_set_s_class_and_the_image_s_top_k() -> None:
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    groups, image = torch.randn(2, 3, 8), torch.randn(2, 8)
    full = group_affinity(groups, image, text, 2.0, top_k=None)
    top2 = group_affinity(groups, image, text, 2.0, top_k=2)
    ranked = (image @ text.T).argsort(dim=-1, descending=True)
    for b in range(2):
        outside = ranked[b, 2:]
        assert torch.equal(top2[b][:, outside], torch.zeros(3, 4))
    forced = ranked[:, -1]
    kept = group_affinity(groups, image, text, 2.0, top_k=2, keep=forced)
    assert (kept[torch.arange(2), :, forced] > 0).all()
    pre = (torch.tensor(2.0).exp() * torch.nn.functional.normalize(groups, dim=-1) @ text.T).softmax(-1)
    torch.testing.assert_close(full, pre * pre)


def test_bad_settings_are_refused(model: SegClip) -> None:
    with pytest.raises(CosegValueError, match="grouping must be one of"):
        SegClipCoseg(model, NAMES, grouping="sets")
    with pytest.raises(CosegValueError, match="readout must be one of"):
        SegClipCoseg(model, NAMES, readout="argmax")
    with pytest.raises(CosegValueError, match="top_k"):
        SegClipCoseg(model, NAMES, top_k=0)
    with pytest.raises(CosegValueError, match="single string"):
        SegClipCoseg(model, "cat")
    with pytest.raises(CosegValueError, match="from_segclip_checkpoint"):
        SegClipCoseg(torch.nn.Linear(2, 2), NAMES)
    with pytest.raises(CosegValueError, match="unknown class name"):
        SegClipCoseg(model, NAMES, class_name="horse")
