"""Softmax-GradCAM and the set's class against plain per-image autograd through open_clip's own tower.

The references run open_clip's visual tower the ordinary way (``visual(x)``, every block
with grad, ``need_weights=False``), keep the last block's ``ln_1`` output with a forward hook
and ``retain_grad``, and differentiate one image's softmax probability at a time; the
module under test runs all blocks but the last without grad, asks for attention weights,
and takes one backward for the whole batch.

The references scale each CAM as CLIP-ES's bundled GradCAM does (twice,
:func:`tests.zeroshot._support.clip_es_gradcam_scaling`) and, off the tower's own grid, give
the tower its positional embedding resized as CLIP-ES resizes it (bilinear,
:func:`tests.zeroshot._support.clip_es_positional_embedding`): both transcribed from CLIP-ES's
code as loops, never its code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cosegkit.zeroshot import ZeroShotCoseg
from cosegkit.zeroshot.towers import interpolate_positional_embedding, vit_pass
from tests._support import CLASSNAMES
from tests.zeroshot._support import (
    DEEP_VIT,
    DEEP_VIT_CONFIG,
    bicubic_positional_embedding,
    build_clip,
    clip_es_gradcam_scaling,
    clip_es_positional_embedding,
    normalise,
    positional_embedding,
    vit_config,
)

TOL = dict(atol=1e-5, rtol=1e-5)
BACKGROUND = ("grass", "sky", "road", "wall", "water")


def bank_of(zs: ZeroShotCoseg) -> torch.Tensor:
    return torch.cat([zs.foreground_bank, zs.background_bank])


def reference_vit_cam(
    clip, zs: ZeroShotCoseg, image: torch.Tensor, target: int, score: str = "patch_mean", scaling: str = "twice"
):
    """One image ``(3, H, W)`` (sides multiples of the patch): its CAM scaled as CLIP-ES's GradCAM, and raw."""
    visual = clip.model.visual
    kept = {}

    def keep(module, args, output):
        output.retain_grad()
        kept["ln_1"] = output

    handle = visual.transformer.resblocks[-1].ln_1.register_forward_hook(keep)
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        with torch.enable_grad():
            x = normalise(clip, image[None]).requires_grad_(True)  # so the graph reaches ln_1
            pooled, tokens = visual(x)  # pooled is projected; tokens are ln_post's patch tokens
            patch_mean = tokens.mean(dim=1) @ visual.proj
            emb = F.normalize(patch_mean if score == "patch_mean" else pooled, dim=-1)
            probs = (clip.model.logit_scale.exp() * emb @ bank_of(zs).T).softmax(dim=-1)
            probs[0, target].backward()
    finally:
        handle.remove()
        visual.output_tokens = previous
    act = kept["ln_1"][0, 1:].detach()  # (l, c), class token dropped
    grad = kept["ln_1"].grad[0, 1:]
    weights = grad.mean(dim=0)  # GradCAM: the gradient averaged over the tokens
    gh, gw = image.shape[-2] // visual.patch_size[0], image.shape[-1] // visual.patch_size[1]
    raw = (act @ weights).view(gh, gw)  # the weighted channel sum; CLIP-ES's GradCAM applies the ReLU
    return clip_es_gradcam_scaling(raw, scaling), F.relu(raw)


def reference_sigma(clip, zs: ZeroShotCoseg, images: torch.Tensor, valid: torch.Tensor | None = None):
    """sigma ``(B, P)`` from open_clip's own ``encode_image`` at the CLIP's native size."""
    b, n = images.shape[:2]
    pooled = clip.model.encode_image(normalise(clip, images.flatten(0, 1)))
    sim = (F.normalize(pooled, dim=-1) @ zs.foreground_bank.T).view(b, n, -1)
    if valid is not None:
        sim = sim * valid[..., None]
    return sim.sum(dim=1)


def check_cams_against_reference(clip, zs, images, out, targets, score="patch_mean", scaling="twice", min_peak=1e-4):
    b, n = images.shape[:2]
    for i in range(b):
        for j in range(n):
            cam, raw = reference_vit_cam(clip, zs, images[i, j], int(targets[i]), score, scaling)
            assert raw.max() > min_peak, "degenerate reference CAM; pick another seed"
            torch.testing.assert_close(out.cams[i, j], cam, **TOL)


@pytest.mark.parametrize("score", ["patch_mean", "pooled"])
def test_vit_cams_match_per_image_autograd(deep_vit, score: str) -> None:
    zs = ZeroShotCoseg(deep_vit, background=BACKGROUND, refine=False, score=score)
    images = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = zs(images)
    assert out.cams.shape == (2, 3, 4, 4)
    check_cams_against_reference(deep_vit, zs, images, out, out.common_class, score)
    torch.testing.assert_close(out.refined, out.cams)  # refine=False: no CAA
    full = F.interpolate(out.cams.flatten(0, 1)[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.probs, full.view(2, 3, 1, 32, 32), **TOL)


def test_given_class_path(deep_vit) -> None:
    images = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    zs = ZeroShotCoseg(deep_vit, background=BACKGROUND, refine=False, class_name="dog")
    dog = CLASSNAMES.index("dog")
    out = zs(images)
    assert out.common_class.tolist() == [dog, dog]
    check_cams_against_reference(deep_vit, zs, images, out, [dog, dog])
    # sigma is still reported, and a per-call class overrides the module's
    torch.testing.assert_close(out.class_scores, reference_sigma(deep_vit, zs, images), **TOL)
    car = CLASSNAMES.index("car")
    other = zs(images, class_name="car")
    assert other.common_class.tolist() == [car, car]
    check_cams_against_reference(deep_vit, zs, images, other, [car, car])
    assert not torch.allclose(other.cams, out.cams, atol=1e-3)  # the class matters
    plain = ZeroShotCoseg(deep_vit, background=BACKGROUND, refine=False)
    torch.testing.assert_close(plain(images, class_name="car").cams, other.cams)


@pytest.mark.parametrize("fixture", ["deep_vit", "tiny_vit"])
def test_common_class_is_argmax_of_summed_cosine(fixture: str, request) -> None:
    clip = request.getfixturevalue(fixture)
    assert clip.model.visual.pool_type == "tok"
    zs = ZeroShotCoseg(clip, background=BACKGROUND)
    images = torch.rand(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    valid = torch.tensor([[True] * 4, [True, False, True, False], [False, False, False, True]])
    out = zs(images, valid)
    sigma = reference_sigma(clip, zs, images, valid)
    torch.testing.assert_close(out.class_scores, sigma, **TOL)
    assert out.common_class.tolist() == sigma.argmax(dim=-1).tolist()
    # FrozenClip's own encoder gives the same pooled embeddings at the native size
    emb = clip.encode_images(images)
    torch.testing.assert_close(out.class_scores, ((emb @ zs.foreground_bank.T) * valid[..., None]).sum(1), **TOL)


def test_avg_pooled_vit_sigma_uses_its_own_pooling(register_config) -> None:
    clip = build_clip(register_config("coseg-test-zeroshot-avg", vit_config(layers=2, pool_type="avg")))
    zs = ZeroShotCoseg(clip, background=BACKGROUND, refine=False)
    images = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    out = zs(images)
    torch.testing.assert_close(out.class_scores, reference_sigma(clip, zs, images), **TOL)
    check_cams_against_reference(clip, zs, images, out, out.common_class)
    # with average pooling the pooled embedding is the patch mean: both scores agree
    pooled = ZeroShotCoseg(clip, background=BACKGROUND, refine=False, score="pooled")(images)
    torch.testing.assert_close(pooled.cams, out.cams, **TOL)


def test_native_size_uses_the_positional_embedding_unchanged(deep_vit) -> None:
    visual = deep_vit.model.visual
    pos = visual.positional_embedding
    assert interpolate_positional_embedding(pos, visual.grid_size, visual.grid_size) is pos
    x = normalise(deep_vit, torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    tp = vit_pass(visual, x, attention_blocks=2)
    torch.testing.assert_close(tp.pooled.detach(), deep_vit.model.encode_image(x), **TOL)
    torch.testing.assert_close(tp.pooled.detach(), visual(x), **TOL)
    assert tp.grid == (4, 4)
    assert tp.leaf.shape == (3, 1 + 16, 48) and tp.leaf.requires_grad
    assert tp.attention.shape == (3, 16, 16)


def test_non_square_size_not_a_multiple_of_the_patch(deep_vit) -> None:
    zs = ZeroShotCoseg(deep_vit, background=BACKGROUND)
    images = torch.rand(2, 3, 3, 37, 53, generator=torch.Generator().manual_seed(6))
    assert zs.input_size(37, 53) == (40, 56)  # each side rounded up to a multiple of 8
    out = zs(images)
    assert out.cams.shape == (2, 3, 5, 7) and out.refined.shape == (2, 3, 5, 7)
    assert out.probs.shape == (2, 3, 1, 37, 53)
    assert bool(((out.probs >= 0) & (out.probs <= 1)).all())


@pytest.mark.parametrize("grid", [(5, 7), (7, 5), (6, 6), (3, 2), (2, 9), (1, 1)])
def test_positional_embedding_is_resized_as_clip_es_resizes_it(deep_vit, grid) -> None:
    """Guards against: the bicubic resize (up to 0.1 from CLIP-ES's bilinear one here), and a wrong
    ``align_corners`` or axis order, up and down from the tower's 4 x 4 grid."""
    visual = deep_vit.model.visual
    pos = visual.positional_embedding
    expected = clip_es_positional_embedding(visual, grid)
    ours = interpolate_positional_embedding(pos, visual.grid_size, grid)
    assert ours.shape == (1 + grid[0] * grid[1], 48)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(interpolate_positional_embedding(pos, (4, 4), grid, mode="bilinear"), expected)
    bicubic = interpolate_positional_embedding(pos, visual.grid_size, grid, mode="bicubic")
    torch.testing.assert_close(bicubic, bicubic_positional_embedding(visual, grid))
    assert (bicubic - expected).abs().max() > 1e-2  # the two readings differ: the check above can fail


def test_interpolated_positional_embedding_matches_a_resized_tower(deep_vit) -> None:
    """At 40 x 56 px (a 5 x 7 grid) the pass equals open_clip's tower given CLIP-ES's bilinearly resized embedding."""
    visual = deep_vit.model.visual
    zs = ZeroShotCoseg(deep_vit, background=BACKGROUND, refine=False)
    assert (zs.pos_interpolation, zs.cam_scaling) == ("bilinear", "twice")  # CLIP-ES's, by default
    images = torch.rand(1, 3, 3, 40, 56, generator=torch.Generator().manual_seed(7))
    out = zs(images)
    assert out.cams.shape == (1, 3, 5, 7) and out.probs.shape == (1, 3, 1, 40, 56)
    with positional_embedding(visual, clip_es_positional_embedding(visual, (5, 7))):
        check_cams_against_reference(deep_vit, zs, images, out, out.common_class)
    with positional_embedding(visual, bicubic_positional_embedding(visual, (5, 7))):
        bicubic = [reference_vit_cam(deep_vit, zs, images[0, j], int(out.common_class[0]))[0] for j in range(3)]
    assert (torch.stack(bicubic) - out.cams[0]).abs().max() > 1e-3  # the embedding's reading shows in the CAMs
    # the other settings: cosegkit's earlier bicubic embedding and single scaling
    other = ZeroShotCoseg(
        deep_vit, background=BACKGROUND, refine=False, pos_interpolation="bicubic", cam_scaling="once"
    )
    out = other(images)
    with positional_embedding(visual, bicubic_positional_embedding(visual, (5, 7))):
        check_cams_against_reference(deep_vit, other, images, out, out.common_class, scaling="once")
    assert visual.positional_embedding.shape == (17, 48)  # restored
    # the set's class is scored as LCCo's distillation scores it: the CLIP at its own 32 px
    native = F.interpolate(images[0], size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(out.class_scores, reference_sigma(deep_vit, zs, native[None]), **TOL)
    assert out.common_class.tolist() == reference_sigma(deep_vit, zs, native[None]).argmax(-1).tolist()


def test_weak_cams_are_scaled_twice_as_clip_es_scales_them(register_config) -> None:
    """Guards against: a single min-max scaling. A CLIP that barely separates its classes (logit
    scale 0.003 instead of 100) gives CAMs whose spread is near 1e-6, comparable to the scaling's
    1e-7; scaled once their peak is about 0.9, scaled twice (CLIP-ES) 1."""
    clip = build_clip(register_config(DEEP_VIT, DEEP_VIT_CONFIG))
    with torch.no_grad():
        clip.model.logit_scale.fill_(math.log(0.003))
    visual = clip.model.visual
    images = torch.rand(2, 2, 3, 40, 40, generator=torch.Generator().manual_seed(10))
    zs = ZeroShotCoseg(clip, background=BACKGROUND, refine=False)
    out = zs(images)
    with positional_embedding(visual, clip_es_positional_embedding(visual, (5, 5))):
        check_cams_against_reference(clip, zs, images, out, out.common_class, min_peak=1e-7)
        once = [
            reference_vit_cam(clip, zs, images[i, j], int(out.common_class[i]), scaling="once")[0]
            for i in range(2)
            for j in range(2)
        ]
    peaks = out.cams.flatten(2).amax(dim=-1)
    torch.testing.assert_close(peaks, torch.ones(2, 2), atol=1e-6, rtol=0)
    assert max(float(cam.max()) for cam in once) < 0.99  # weak: one scaling leaves the peak visibly below 1
    single = ZeroShotCoseg(clip, background=BACKGROUND, refine=False, cam_scaling="once")(images)
    torch.testing.assert_close(single.cams.flatten(0, 1), torch.stack(once), **TOL)
    # both scalings leave each map's shape: they differ by a factor per map
    single_peaks = single.cams.flatten(2).amax(dim=-1)[..., None, None]
    torch.testing.assert_close(out.cams * single_peaks, single.cams, **TOL)


def test_image_size_resizes_before_the_tower(deep_vit) -> None:
    images = torch.rand(1, 2, 3, 20, 30, generator=torch.Generator().manual_seed(8))
    zs = ZeroShotCoseg(deep_vit, background=BACKGROUND, refine=False, image_size=32)
    out = zs(images)
    assert out.cams.shape == (1, 2, 4, 4) and out.probs.shape == (1, 2, 1, 20, 30)
    x = F.interpolate(images[0], size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    check_cams_against_reference(deep_vit, zs, x[None], out, out.common_class)


# ---------------------------------------------------------------------------- ResNet


def reference_rn_cam(clip, zs, image: torch.Tensor, target: int) -> torch.Tensor:
    visual = clip.model.visual
    kept = {}

    def keep(module, args, output):
        output.retain_grad()
        kept["layer4"] = output

    handle = visual.layer4.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = normalise(clip, image[None]).requires_grad_(True)
            emb = F.normalize(visual(x), dim=-1)  # ModifiedResNet: the attention pool's output
            probs = (clip.model.logit_scale.exp() * emb @ bank_of(zs).T).softmax(dim=-1)
            probs[0, target].backward()
    finally:
        handle.remove()
    act, grad = kept["layer4"][0].detach(), kept["layer4"].grad[0]  # (c, h, w)
    weights = grad.mean(dim=(1, 2))
    return clip_es_gradcam_scaling((weights[:, None, None] * act).sum(dim=0))


def test_resnet_tower(tiny_rn) -> None:
    zs = ZeroShotCoseg(tiny_rn, background=BACKGROUND)  # refine=True, but a ResNet has no CAA
    assert zs.tower == "resnet"
    images = torch.rand(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    out = zs(images)
    assert out.cams.shape == (2, 2, 2, 2)  # 64 px / stride 32
    assert out.probs.shape == (2, 2, 1, 64, 64)
    assert torch.equal(out.refined, out.cams)
    torch.testing.assert_close(out.class_scores, reference_sigma(tiny_rn, zs, images), **TOL)
    for i in range(2):
        for j in range(2):
            cam = reference_rn_cam(tiny_rn, zs, images[i, j], int(out.common_class[i]))
            torch.testing.assert_close(out.cams[i, j], cam, **TOL)


def test_resnet_takes_its_own_input_size_by_default(tiny_rn) -> None:
    zs = ZeroShotCoseg(tiny_rn, background=BACKGROUND)
    assert zs.input_size(50, 70) == (64, 64)
    out = zs(torch.rand(1, 2, 3, 50, 70))
    assert out.cams.shape == (1, 2, 2, 2) and out.probs.shape == (1, 2, 1, 50, 70)


def test_resnet_at_a_larger_size_pools_with_a_resized_positional_embedding(tiny_rn) -> None:
    """An explicit size runs the ResNet on a larger grid, its attention pool's embedding resized as a ViT's."""
    import copy

    from cosegkit.zeroshot.towers import interpolate_positional_embedding, resnet_pass

    zs = ZeroShotCoseg(tiny_rn, background=BACKGROUND, image_size=(96, 120))
    assert zs.input_size(50, 70) == (96, 128)  # rounded up to the stride, 32
    out = zs(torch.rand(1, 2, 3, 50, 70))
    assert out.cams.shape == (1, 2, 3, 4) and out.probs.shape == (1, 2, 1, 50, 70)
    # the reference: open_clip's own pool, its parameter replaced by the resized embedding
    visual = tiny_rn.model.visual
    x = torch.randn(2, 3, 96, 128)
    for mode in ("bilinear", "bicubic"):
        pool = copy.deepcopy(visual.attnpool)
        side = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
        pool.positional_embedding = torch.nn.Parameter(
            interpolate_positional_embedding(pool.positional_embedding.data, (side, side), (3, 4), mode)
        )
        with torch.no_grad():
            y = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
            expected = pool(y)
        torch.testing.assert_close(resnet_pass(visual, x, mode).pooled.detach(), expected, **TOL)
    assert not torch.allclose(resnet_pass(visual, x, "bilinear").pooled, resnet_pass(visual, x, "bicubic").pooled)


def test_resnet_at_a_larger_size_uses_the_chosen_interpolation(tiny_rn, monkeypatch) -> None:
    """``pos_interpolation`` reaches the ResNet's tower pass (its attention pool's embedding is resized with it)."""
    from cosegkit.zeroshot import coseg, towers

    modes = []

    def recording(visual, x, *args, **kwargs):
        modes.append((tuple(x.shape[-2:]), *args, *kwargs.values()))
        return towers.resnet_pass(visual, x, *args, **kwargs)

    monkeypatch.setattr(coseg, "resnet_pass", recording)
    images = torch.rand(1, 2, 3, 50, 70, generator=torch.Generator().manual_seed(4))
    for mode in ("bicubic", "bilinear"):
        ZeroShotCoseg(tiny_rn, background=BACKGROUND, image_size=(96, 120), pos_interpolation=mode)(images)
    assert modes == [((96, 128), "bicubic"), ((96, 128), "bilinear")]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_attention_pool_on_a_non_square_grid_is_open_clips_pool_with_the_resized_embedding(mode) -> None:
    """Rows are h, columns w: a 3 x 5 grid's embedding is the 2 x 2 one resized to (3, 5), not (5, 3).

    A pool of unit-scale features, where the positional embedding moves the output by far more
    than the tolerance (the tiny random ResNet's ``layer4`` features are too small for that).
    """
    import copy

    from open_clip.modified_resnet import AttentionPool2d

    from cosegkit.zeroshot.towers import attention_pool, interpolate_positional_embedding

    torch.manual_seed(0)
    pool = AttentionPool2d(spacial_dim=2, embed_dim=16, num_heads=2, output_dim=8).eval()
    x = torch.randn(3, 16, 3, 5)
    resized = copy.deepcopy(pool)
    resized.positional_embedding = torch.nn.Parameter(
        interpolate_positional_embedding(pool.positional_embedding.data, (2, 2), (3, 5), mode)
    )
    with torch.no_grad():
        expected = resized(x)
        torch.testing.assert_close(attention_pool(pool, x, mode), expected, **TOL)
        transposed = copy.deepcopy(pool)
        transposed.positional_embedding = torch.nn.Parameter(
            interpolate_positional_embedding(pool.positional_embedding.data, (2, 2), (5, 3), mode)
        )
        assert (transposed(x) - expected).abs().max() > 100 * TOL["atol"]  # the test can tell the orders apart


def test_resnet_sizes_round_up_to_its_stride_of_32(tiny_rn) -> None:
    """Not to 16: an 80 px request runs at 96 (a 3-cell side), not at 80 (a 2.5-cell one)."""
    zs = ZeroShotCoseg(tiny_rn, background=BACKGROUND, image_size=(80, 48))
    assert zs.input_size(10, 10) == (96, 64)


def test_resnet_cams_of_a_given_class_match_per_image_autograd(tiny_rn) -> None:
    """The tiny random ResNet's own choice of class gives all-zero CAMs; a given class gives CAMs to compare."""
    zs = ZeroShotCoseg(tiny_rn, background=BACKGROUND)
    images = torch.rand(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    out = zs(images, class_name="cat")
    assert (out.cams.flatten(1) > 0).any(dim=1).all()  # every image's CAM has signal: the check is not vacuous
    for i in range(2):
        for j in range(2):
            cam = reference_rn_cam(tiny_rn, zs, images[i, j], zs.class_index("cat"))
            torch.testing.assert_close(out.cams[i, j], cam, **TOL)
