"""Pseudo-mask details: the adaptive rule's ties at the threshold, every zero-shot setting in the
cache key, and the loader's rule, margin and resizing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cosegkit.clip import FrozenClip
from cosegkit.engine import TrainConfig
from cosegkit.engine.pseudo import PseudoMaskLoader, build_zero_shot, cache_key, pseudo_targets
from cosegkit.metrics import thresholds

# ssnm's threshold of this map is 2 x its mean = 0.5 exactly; 0.25 and 0.75 are 0.5 -/+ 0.25, exact in binary
TIED = torch.tensor([[0.0, 0.0, 0.0, 0.25], [0.25, 0.25, 0.5, 0.75]])


def test_the_adaptive_rule_counts_a_pixel_at_the_threshold_as_object() -> None:
    """Guards against: ``probs > t + margin`` (or ``probs < t - margin``) in place of the documented ``>=`` (``<=``)."""
    assert float(thresholds(TIED, "ssnm")) == 0.5
    target, weight = pseudo_targets(TIED, 0.25, 0.55, rule="adaptive")  # margin 0: object where p >= 0.5
    assert target.tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    assert bool((weight == 1).all())
    target, weight = pseudo_targets(TIED, 0.25, 0.55, rule="adaptive", margin=0.25)  # object p >= 0.75, bg p <= 0.25
    assert target.tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    assert weight.tolist() == [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]]


# ---------------------------------------------------------------------------------------------
# the cache key


@pytest.fixture(scope="module")
def clip() -> FrozenClip:
    torch.manual_seed(0)
    return FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])


def _config(**zero_shot) -> TrainConfig:
    return TrainConfig(
        dataset="folder",
        root="photos",
        image_size=32,
        pseudo_masks="zero-shot",
        clip_model="coseg-test-tiny",
        clip_pretrained=None,
        pseudo_background=["grass", "sky"],
        extra={"zero_shot": zero_shot} if zero_shot else {},
    )


@pytest.mark.parametrize(
    "setting",
    [
        {"synonyms": {"cat": ["kitty", "kitten"]}},  # another foreground bank
        {"synonyms": {}},
        {"attention_blocks": 1},
        {"refine": False},
        {"score": "pooled"},
        {"box_threshold": 0.6},
        {"cam_scaling": "once"},
        {"pos_interpolation": "bicubic"},
        {"box_precision": "float"},
    ],
    ids=lambda s: next(iter(s)),
)
def test_every_zero_shot_setting_is_in_the_cache_key(clip, setting) -> None:
    """Guards against: the key without the synonyms, ``attention_blocks`` or ``refine`` (stale maps reused)."""
    base, _ = cache_key(_config(), build_zero_shot(_config(), clip))
    changed = _config(**setting)
    key, _ = cache_key(changed, build_zero_shot(changed, clip))
    assert key != base, setting


def test_the_zero_shot_input_size_is_in_the_cache_key(clip) -> None:
    """Guards against: ``image_size`` under ``extra["zero_shot"]`` changes the maps but not the key."""
    base, _ = cache_key(_config(), build_zero_shot(_config(), clip))
    changed = _config(image_size=64)
    key, _ = cache_key(changed, build_zero_shot(changed, clip))
    assert key != base


def test_the_zero_shot_defaults_scale_twice_and_resize_bilinearly(clip) -> None:
    """Guards against: a flipped default in ``zero_shot_settings`` or ``ZeroShotCoseg``.

    The cache-key test above sees a flipped default only where the flip lands on the value it tries.

    CLIP-ES scales its CAMs twice and resizes the positional embedding bilinearly; both the
    pseudo masks of a run and a ``ZeroShotCoseg`` built by hand do the same unless told otherwise.
    """
    from cosegkit.zeroshot import ZeroShotCoseg

    config = TrainConfig(dataset="folder", root="photos", pseudo_masks="zero-shot")
    for zs in (build_zero_shot(config, clip), ZeroShotCoseg(clip)):
        assert (zs.cam_scaling, zs.pos_interpolation) == ("twice", "bilinear")


# ---------------------------------------------------------------------------------------------
# the loader


class _Store:
    def __init__(self, maps: dict[int, torch.Tensor]) -> None:
        self.maps = maps

    def probs(self, group: str, index: int) -> torch.Tensor:
        return self.maps[index]


class _Group:
    name = "g"


def _image(size):
    return lambda group, index: torch.rand(3, *size, generator=torch.Generator().manual_seed(index))


@pytest.mark.parametrize("rule, margin", [("adaptive", 0.1), ("adaptive", 0.0), ("fixed", 0.0)])
def test_the_loader_applies_its_rule_and_margin(rule: str, margin: float) -> None:
    """Guards against: the loader calls ``pseudo_targets`` without ``rule=`` and ``margin=`` (always the fixed rule)."""
    g = torch.Generator().manual_seed(1)
    maps = {i: torch.rand(12, 12, generator=g) ** 2 for i in range(3)}
    loader = PseudoMaskLoader(_Store(maps), low=0.3, high=0.6, image=_image((12, 12)), rule=rule, margin=margin)
    for i in range(3):
        image, mask = loader(_Group(), i)
        target, weight = pseudo_targets(maps[i], 0.3, 0.6, rule=rule, margin=margin)
        assert image.shape == (3, 12, 12) and mask.shape == (2, 12, 12)
        assert torch.equal(mask[0], target) and torch.equal(mask[1], weight)
    if rule == "adaptive":  # the rules disagree on these maps: the test tells them apart
        fixed = pseudo_targets(maps[0], 0.3, 0.6)
        assert not torch.equal(torch.stack(fixed), loader(_Group(), 0)[1])


def test_the_loader_resizes_the_stored_map_bilinearly_before_thresholding() -> None:
    """Guards against: the stored ``S x S`` map resized with ``nearest`` (blocky labels) instead of bilinear."""
    g = torch.Generator().manual_seed(2)
    maps = {0: torch.rand(8, 8, generator=g)}
    loader = PseudoMaskLoader(_Store(maps), low=0.3, high=0.6, image=_image((20, 12)), rule="fixed")
    image, mask = loader(_Group(), 0)
    assert image.shape == (3, 20, 12) and mask.shape == (2, 20, 12)
    resized = F.interpolate(maps[0][None, None], size=(20, 12), mode="bilinear", align_corners=False)[0, 0]
    target, weight = pseudo_targets(resized, 0.3, 0.6)
    assert torch.equal(mask[0], target) and torch.equal(mask[1], weight)
