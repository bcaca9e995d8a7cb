"""ZeroShotCoseg's set properties: order, padding, batching, ranges, grad modes, a frozen CLIP."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.zeroshot import ZeroShotCoseg, ZeroShotOutput

TOL = dict(atol=1e-5, rtol=1e-5)
BACKGROUND = ("grass", "sky", "road", "wall")
FIELDS = ("probs", "cams", "refined")


@pytest.fixture(scope="module")
def zs(sharp_vit) -> ZeroShotCoseg:
    """CAA on, over the two last blocks of the 3-layer ViT with peaked attention."""
    return ZeroShotCoseg(sharp_vit, background=BACKGROUND, attention_blocks=2)


@pytest.fixture(scope="module")
def zs_rn(tiny_rn) -> ZeroShotCoseg:
    return ZeroShotCoseg(tiny_rn, background=BACKGROUND)


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def assert_same_output(a: ZeroShotOutput, b: ZeroShotOutput) -> None:
    for name in FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **TOL)
    assert a.common_class.tolist() == b.common_class.tolist()
    torch.testing.assert_close(a.class_scores, b.class_scores, **TOL)
    assert torch.equal(a.valid, b.valid)


@given(data=st.data(), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_permuting_a_sets_images_permutes_its_outputs(zs, data, n: int, seed: int) -> None:
    perm = data.draw(st.permutations(range(n)))
    images = rand(2, n, 3, 32, 24, seed=seed)
    out = zs(images)
    shuffled = images.clone()
    shuffled[0] = images[0, perm]  # the first set only; the second set is untouched
    moved = zs(shuffled)
    for name in FIELDS:
        torch.testing.assert_close(getattr(moved, name)[0], getattr(out, name)[0, perm], **TOL)
        torch.testing.assert_close(getattr(moved, name)[1], getattr(out, name)[1], **TOL)
    assert moved.common_class.tolist() == out.common_class.tolist()
    torch.testing.assert_close(moved.class_scores, out.class_scores, **TOL)


@given(
    data=st.data(),
    real=st.integers(1, 3),
    pads=st.integers(1, 3),
    fill=st.sampled_from(["random", "zeros", "ones", "copies"]),
    seed=st.integers(0, 2**16),
)
def test_padding_changes_nothing_for_the_real_images(zs, data, real: int, pads: int, fill: str, seed: int) -> None:
    n = real + pads
    slots = sorted(data.draw(st.permutations(range(n)))[:real])  # where the real images sit
    images = rand(1, real, 3, 32, 32, seed=seed)
    filler = {
        "random": rand(1, pads, 3, 32, 32, seed=seed + 1),
        "zeros": torch.zeros(1, pads, 3, 32, 32),
        "ones": torch.ones(1, pads, 3, 32, 32),
        "copies": images[:, :1].expand(1, pads, -1, -1, -1),
    }[fill]
    padded = torch.empty(1, n, 3, 32, 32)
    valid = torch.zeros(1, n, dtype=torch.bool)
    valid[0, slots] = True
    padded[valid] = images[0]
    padded[~valid] = filler[0]
    alone, out = zs(images), zs(padded, valid)
    for name in FIELDS:
        torch.testing.assert_close(getattr(out, name)[valid], getattr(alone, name)[0], **TOL)
        assert torch.equal(getattr(out, name)[~valid], torch.zeros_like(getattr(out, name)[~valid]))  # exactly 0
    assert out.common_class.tolist() == alone.common_class.tolist()
    torch.testing.assert_close(out.class_scores, alone.class_scores, **TOL)
    assert torch.equal(out.valid, valid)


@pytest.mark.parametrize("tower", ["vit", "resnet"])
@given(n=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_batching_sets_equals_running_them_apart(zs, zs_rn, tower: str, n: int, seed: int) -> None:
    model, side = (zs, 32) if tower == "vit" else (zs_rn, 64)
    first, second = rand(1, n, 3, side, side, seed=seed), rand(1, n, 3, side, side, seed=seed + 1)
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, 0] = n == 1  # a padded image in the second set when it has more than one
    together = model(torch.cat([first, second]), valid)
    apart = [model(first, valid[:1]), model(second, valid[1:])]
    for i, alone in enumerate(apart):
        for name in FIELDS:
            torch.testing.assert_close(getattr(together, name)[i], getattr(alone, name)[0], **TOL)
        assert together.common_class[i] == alone.common_class[0]
        torch.testing.assert_close(together.class_scores[i], alone.class_scores[0], **TOL)


def test_sets_with_different_classes_in_one_batch(zs) -> None:
    """One backward serves the batch: each set's CAMs are its own class's, even when the classes differ."""
    gamma = torch.linspace(0.2, 5.0, 8).view(8, 1, 1, 1, 1)  # darker and darker noise: other classes
    images = rand(8, 2, 3, 32, 32, seed=11) ** gamma
    out = zs(images)
    assert len(set(out.common_class.tolist())) > 2, "pick images whose sets' classes differ"
    for i in range(8):
        alone = zs(images[i : i + 1], class_name=zs.classnames[int(out.common_class[i])])
        torch.testing.assert_close(out.cams[i], alone.cams[0], **TOL)
        torch.testing.assert_close(out.probs[i], alone.probs[0], **TOL)


@given(
    b=st.integers(1, 2),
    n=st.integers(1, 3),
    h=st.integers(5, 48),
    w=st.integers(5, 48),
    refine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_outputs_are_in_range_and_shaped(zs, b: int, n: int, h: int, w: int, refine: bool, seed: int) -> None:
    images = rand(b, n, 3, h, w, seed=seed)
    zs.refine = refine
    try:
        out, predicted = zs(images), zs.predict(images)
    finally:
        zs.refine = True
    gh, gw = -(-h // 8), -(-w // 8)
    assert out.probs.shape == (b, n, 1, h, w) and out.probs.dtype == torch.float32
    assert out.cams.shape == out.refined.shape == (b, n, gh, gw)
    assert out.common_class.shape == (b,) and out.common_class.dtype == torch.long
    assert out.class_scores.shape == (b, len(zs.classnames))
    for name in FIELDS:
        t = getattr(out, name)
        assert bool(((t >= 0) & (t <= 1)).all()), name
        assert not t.requires_grad
    assert not out.class_scores.requires_grad
    assert torch.equal(predicted, out.probs)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "enable_grad"])
def test_runs_under_every_grad_mode(zs, mode: str) -> None:
    images = rand(2, 3, 3, 32, 32, seed=5)
    expected = zs(images)
    with getattr(torch, mode)():
        out = zs(images)
    assert_same_output(out, expected)
    for name in FIELDS:
        assert not getattr(out, name).requires_grad


def test_built_and_called_inside_inference_mode(sharp_vit) -> None:
    images = rand(1, 2, 3, 32, 32, seed=6)
    with torch.inference_mode():
        zs = ZeroShotCoseg(sharp_vit, background=BACKGROUND, attention_blocks=2)
        inside = zs(images)
    outside = zs(images)  # the text banks were made in inference mode; the gradient still flows
    assert_same_output(inside, outside)


@pytest.mark.parametrize("fixture", ["zs", "zs_rn"])
def test_the_clip_stays_frozen(fixture: str, request) -> None:
    model = request.getfixturevalue(fixture)
    side = 64 if model.tower == "resnet" else 32
    images = rand(1, 2, 3, side, side, seed=7).requires_grad_(True)  # even a caller's graph gets nothing
    before = {k: v.clone() for k, v in model.clip.clip_state_dict().items()}
    model.train()
    try:
        out = model(images)
    finally:
        model.eval()
    params = list(model.clip.model.parameters())
    assert params and all(p.grad is None and not p.requires_grad for p in params)
    assert list(model.parameters()) == []  # nothing for an optimizer
    assert not model.clip.model.training  # FrozenClip keeps its CLIP in eval mode
    assert images.grad is None and not out.probs.requires_grad
    after = model.clip.clip_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert_same_output(out, model(images.detach()))  # train mode changed nothing


def test_the_text_banks_are_buffers_not_state(zs) -> None:
    assert zs.foreground_bank.shape == (len(zs.classnames), 32)
    assert zs.background_bank.shape == (len(BACKGROUND), 32)
    torch.testing.assert_close(zs.foreground_bank.norm(dim=-1), torch.ones(len(zs.classnames)))
    assert "foreground_bank" not in zs.state_dict()
