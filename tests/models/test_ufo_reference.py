"""The functional transcription of UFO's image model that the UFO tests compare against."""

from __future__ import annotations

import pytest
import torch

from tests.models.ufo_reference import ufo_forward, ufo_keys_and_shapes, ufo_state_dict

SHARED_DECODER = ("concat4", "concat3", "concat2")


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    """A narrow (head width 64) random UFO with 10 classes, for fast checks."""
    return ufo_state_dict(seed=0, num_classes=10, dim=64)


def _images(count: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_state_dict_has_ufo_keys_and_shapes() -> None:
    state = ufo_state_dict()
    expected = ufo_keys_and_shapes()
    assert len(state) == len(expected) == 231
    assert list(state) == ["module." + key for key, _ in expected]
    for key, shape in expected:
        assert tuple(state["module." + key].shape) == shape, key
    assert state["module.base.0.weight"].shape == (64, 3, 3, 3)
    assert state["module.base.41.running_var"].shape == (512,)
    assert state["module.base.41.num_batches_tracked"].dtype == torch.long
    assert state["module.concat4.4.weight"].shape == (512, 512, 4, 4)  # ConvTranspose2d: (in, out, k, k)
    assert state["module.mask.1.weight"].shape == (2, 2, 8, 8)
    assert state["module.sp2.0.weight"].shape == (32, 4096, 1, 1)
    assert state["module.cls_m.0.weight"].shape == (512, 1024)
    assert state["module.cls.0.weight"].shape == (78, 512)
    assert state["module.transformer_2.layers.3.1.fn.fn.net.0.weight"].shape == (782, 512)
    assert state["module.transformer_1.layers.0.0.fn.fn.to_qkv.weight"].shape == (1536, 512)
    assert "module.transformer_1.layers.0.0.fn.fn.to_qkv.bias" not in state
    variances = [value for key, value in state.items() if key.endswith("running_var")]
    assert len(variances) == 13 and all(bool((v > 0).all()) for v in variances)


def test_prefix_and_seed() -> None:
    bare = ufo_state_dict(seed=3, dim=64, prefix="")
    prefixed = ufo_state_dict(seed=3, dim=64)
    assert all(torch.equal(bare[key], prefixed["module." + key]) for key in bare)
    other = ufo_state_dict(seed=4, dim=64)
    assert not torch.equal(other["module.base.0.weight"], prefixed["module.base.0.weight"])


def test_shared_decoder_modules_hold_the_same_tensors() -> None:
    state = ufo_state_dict(dim=64)
    for suffix in ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"):
        first = state[f"module.concat4.{suffix}"]
        for name in SHARED_DECODER[1:]:
            assert state[f"module.{name}.{suffix}"] is first
    assert not torch.equal(state["module.concat1.0.weight"], state["module.concat4.0.weight"])


def test_forward_shapes_and_ranges_small(small_state: dict[str, torch.Tensor]) -> None:
    images = _images(6, 96)
    cls_pred, mask_pred = ufo_forward(small_state, images, group_size=3)
    assert cls_pred.shape == (2, 10)
    assert mask_pred.shape == (6, 96, 96)
    for probabilities in (cls_pred, mask_pred):
        assert torch.isfinite(probabilities).all()
        assert bool((probabilities >= 0).all()) and bool((probabilities <= 1).all())


def test_forward_reads_state_with_or_without_prefix(small_state: dict[str, torch.Tensor]) -> None:
    images = _images(3, 64)
    bare = {key.removeprefix("module."): value for key, value in small_state.items()}
    for got, expected in zip(ufo_forward(bare, images, 3), ufo_forward(small_state, images, 3), strict=True):
        assert torch.equal(got, expected)


def test_groups_do_not_see_each_other_but_images_of_a_group_do(small_state: dict[str, torch.Tensor]) -> None:
    images = _images(6, 128)
    cls_pred, mask_pred = ufo_forward(small_state, images, group_size=3)
    changed = images.clone()
    changed[4] = _images(1, 128, seed=7)[0]  # an image of the second group
    cls_changed, mask_changed = ufo_forward(small_state, changed, group_size=3)
    torch.testing.assert_close(cls_changed[0], cls_pred[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mask_changed[:3], mask_pred[:3], rtol=0, atol=1e-6)
    assert (cls_changed[1] - cls_pred[1]).abs().max() > 1e-4
    # the group transformer and the class vector carry image 4 into images 3 and 5
    assert (mask_changed[3] - mask_pred[3]).abs().max() > 1e-4
    assert (mask_changed[5] - mask_pred[5]).abs().max() > 1e-4


def test_class_branch_reads_gram_vectors_as_their_view_does(small_state: dict[str, torch.Tensor]) -> None:
    """UFO's ``.view(b, 4096, n, 1)`` mixes images and channels: its class output depends on image order.

    Were the per-image Gram vectors transposed instead, the set-level class prediction would not
    change when the images of a group are permuted.
    """
    images = _images(3, 128)
    cls_pred, mask_pred = ufo_forward(small_state, images, group_size=3)
    order = torch.tensor([2, 0, 1])
    cls_permuted, mask_permuted = ufo_forward(small_state, images[order], group_size=3)
    assert (cls_permuted - cls_pred).abs().max() > 1e-4
    # the per-image masks are not a permutation of the original ones either, for the same reason
    assert (mask_permuted - mask_pred[order]).abs().max() > 1e-4


def test_forward_at_ufo_sizes() -> None:
    """224 x 224, groups of 5, UFO's widths: the shapes UFO's test.py reads, probabilities spread."""
    state = ufo_state_dict(seed=0)
    images = _images(10, 224)
    cls_pred, mask_pred = ufo_forward(state, images, group_size=5)
    assert cls_pred.shape == (2, 78)
    assert mask_pred.shape == (10, 224, 224)
    assert bool((mask_pred >= 0).all()) and bool((mask_pred <= 1).all())
    assert bool((cls_pred > 0).all()) and bool((cls_pred < 1).all())
    # a numerically meaningful comparison point: neither constant nor saturated
    assert cls_pred.std() > 0.02
    assert mask_pred.std() > 0.1
    assert ((mask_pred > 0.05) & (mask_pred < 0.95)).float().mean() > 0.5


def test_ufo_base_is_smp_vgg16_bn_with_its_pools() -> None:
    """UFO's ``base.{i}`` keys are smp's ``vgg16_bn`` ``features.{i}``; UFO's levels follow smp's pools.

    smp returns each VGG stage before its max-pool (strides 1 to 16) and pool5 last; UFO keeps
    pool2..pool5, i.e. smp's stride-2, 4 and 8 features max-pooled, and smp's last feature.
    """
    import segmentation_models_pytorch as smp
    import torch.nn.functional as F

    from tests.models.ufo_reference import _strip, _vgg_taps

    state = _strip(ufo_state_dict(seed=0, dim=64))
    encoder = smp.encoders.get_encoder("vgg16_bn", weights=None).eval()
    encoder.load_state_dict(
        {"features." + k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")}
    )
    images = _images(2, 64)
    with torch.no_grad():
        features = encoder(images)
    taps = _vgg_taps(state, images)
    expected = [F.max_pool2d(features[1], 2), F.max_pool2d(features[2], 2), F.max_pool2d(features[3], 2), features[5]]
    assert [tuple(t.shape[1:]) for t in taps] == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    for tap, feature in zip(taps, expected, strict=True):
        torch.testing.assert_close(tap, feature, rtol=0, atol=1e-5)
