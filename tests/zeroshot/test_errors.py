"""Clear errors from ZeroShotCoseg: what was received, and what to do."""

from __future__ import annotations

import contextlib
import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cosegkit.errors import CosegError, CosegShapeError, CosegValueError
from cosegkit.zeroshot import ZeroShotCoseg, encode_prompts, prompt_texts
from tests.zeroshot._support import build_clip, vit_config

BACKGROUND = ("grass", "sky")


@contextlib.contextmanager
def raises(error: type[Exception], *patterns: str):
    """``pytest.raises`` that also checks that every pattern (a regex, any case) is in the message."""
    with pytest.raises(error) as info:
        yield info
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message, flags=re.IGNORECASE), f"{pattern!r} not in: {message}"


# ---------------------------------------------------------------------------- towers


@pytest.mark.parametrize(
    ("name", "vision", "patterns"),
    [
        ("coseg-test-zeroshot-attnpool", {"attentional_pool": True}, ["attentional pooler", "supports"]),
        ("coseg-test-zeroshot-custom", {"block_type": "custom"}, ["CustomResidualAttentionBlock", "attention"]),
        ("coseg-test-zeroshot-nopool", {"pool_type": "none"}, ["'none'", "token or average pooling"]),
    ],
)
def test_open_clip_vits_without_reachable_attention_or_pooling(register_config, name, vision, patterns) -> None:
    clip = build_clip(register_config(name, vit_config(**vision)))
    with raises(CosegValueError, *patterns, "ModifiedResNet"):
        ZeroShotCoseg(clip, background=BACKGROUND)


def test_a_tower_that_is_not_open_clips() -> None:
    fake = SimpleNamespace(model=SimpleNamespace(visual=nn.Linear(4, 4)), classnames=("cat",))
    with raises(CosegValueError, r"type Linear", "VisionTransformer", "ModifiedResNet"):
        ZeroShotCoseg(fake)


# ---------------------------------------------------------------------------- vocabulary and prompts


def test_an_empty_vocabulary(tiny_vit) -> None:
    with raises(CosegValueError, "empty", "class name"):
        ZeroShotCoseg(tiny_vit, classnames=[], background=BACKGROUND)


def test_a_single_string_vocabulary(tiny_vit) -> None:
    with raises(CosegValueError, "single string", "'dog'", r"\['dog'\]"):
        ZeroShotCoseg(tiny_vit, classnames="dog", background=BACKGROUND)


def test_bad_class_names(tiny_vit) -> None:
    with raises(CosegValueError, "non-empty strings", r"\[' '\]"):
        ZeroShotCoseg(tiny_vit, classnames=["cat", " "], background=BACKGROUND)


def test_an_empty_background(tiny_vit) -> None:
    with raises(CosegValueError, "background list is empty", "BACKGROUND_WORDS"):
        ZeroShotCoseg(tiny_vit, background=[])


def test_a_single_string_background(tiny_vit) -> None:
    with raises(CosegValueError, "single string", "'sky'"):
        ZeroShotCoseg(tiny_vit, background="sky")


def test_background_words_that_are_all_foreground_classes(tiny_vit) -> None:
    with raises(CosegValueError, "also a foreground class", "'cat'", "'dog'", "BACKGROUND_WORDS|not class names"):
        ZeroShotCoseg(tiny_vit, background=["cat", "dog"])
    # one foreground word among real background words is only left out
    zs = ZeroShotCoseg(tiny_vit, background=["cat", "sky"])
    assert zs.background == ("sky",) and zs.background_bank.shape[0] == 1


@pytest.mark.parametrize("where", ["init", "call"])
def test_an_unknown_class_name_lists_near_matches(tiny_vit, where: str) -> None:
    assert "dog" in tiny_vit.classnames
    with raises(CosegValueError, "unknown class name 'dgo'", "near matches: 'dog'"):
        if where == "init":
            ZeroShotCoseg(tiny_vit, background=BACKGROUND, class_name="dgo")
        else:
            ZeroShotCoseg(tiny_vit, background=BACKGROUND)(torch.rand(1, 2, 3, 32, 32), class_name="dgo")


def test_an_unknown_class_name_without_near_matches(tiny_vit) -> None:
    with raises(CosegValueError, "'zzzzzz'", "vocabulary starts", "'cat'"):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, class_name="zzzzzz")


@pytest.mark.parametrize("template", ["a photo", "a {} and a {}", "a {name}"])
def test_a_template_without_exactly_one_placeholder(tiny_vit, template: str) -> None:
    with raises(CosegValueError, r"exactly one '\{\}'", re.escape(repr(template))):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, templates=["a {}.", template])
    with raises(CosegValueError, r"exactly one '\{\}'"):
        prompt_texts(["cat"], [template])


def test_a_single_string_template(tiny_vit) -> None:
    with raises(CosegValueError, "single string", "'a photo of a {}.'"):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, templates="a photo of a {}.")


def test_prompt_helpers_reject_empty_lists(tiny_vit) -> None:
    with raises(CosegValueError, "template list is empty"):
        prompt_texts(["cat"], [])
    with raises(CosegValueError, "name list is empty"):
        encode_prompts(tiny_vit, [], ["a {}."])
    with raises(CosegValueError, "single string 'cat'"):
        prompt_texts("cat", ["a {}."])


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize("blocks", [0, -1])
def test_bad_attention_blocks(tiny_vit, blocks: int) -> None:
    with raises(CosegValueError, "attention_blocks", ">= 1", f"got {blocks}"):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, attention_blocks=blocks)


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5, math.nan])
def test_bad_box_threshold(tiny_vit, threshold: float) -> None:
    with raises(CosegValueError, "box_threshold", re.escape("[0, 1)"), f"got {threshold}"):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, box_threshold=threshold)


@pytest.mark.parametrize("score", ["cls", "mean", ""])
def test_bad_score(tiny_vit, score: str) -> None:
    with raises(CosegValueError, "score", "'patch_mean'", "'pooled'", re.escape(repr(score))):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, score=score)


@pytest.mark.parametrize("scaling", ["thrice", "", "Twice"])
def test_bad_cam_scaling(tiny_vit, scaling: str) -> None:
    with raises(CosegValueError, "cam_scaling", "'twice'", "'once'", re.escape(repr(scaling))):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, cam_scaling=scaling)


@pytest.mark.parametrize("mode", ["nearest", "bicubic-aa", ""])
def test_bad_pos_interpolation(tiny_vit, mode: str) -> None:
    with raises(CosegValueError, "pos_interpolation", "'bilinear'", "'bicubic'", re.escape(repr(mode))):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, pos_interpolation=mode)


@pytest.mark.parametrize("precision", ["uint16", "", "UINT8"])
def test_bad_box_precision(tiny_vit, precision: str) -> None:
    with raises(CosegValueError, "box_precision", "'uint8'", "'float'", re.escape(repr(precision))):
        ZeroShotCoseg(tiny_vit, background=BACKGROUND, box_precision=precision)


# ---------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def zs(tiny_vit) -> ZeroShotCoseg:
    return ZeroShotCoseg(tiny_vit, background=BACKGROUND)


def test_a_4d_batch_suggests_unsqueeze(zs) -> None:
    with raises(CosegShapeError, r"\(B, N, 3, H, W\)", r"\(2, 3, 32, 32\)", r"unsqueeze\(0\)", r"unsqueeze\(1\)"):
        zs(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize(
    ("images", "error", "pattern"),
    [
        (torch.rand(3, 32, 32), CosegShapeError, r"images\[None, None\]"),
        (torch.rand(1, 2, 1, 32, 32), CosegShapeError, "3 RGB channels"),
        (torch.rand(1, 2, 32, 32, 3), CosegShapeError, "permute"),
        (torch.randint(0, 255, (1, 2, 3, 32, 32), dtype=torch.uint8), CosegValueError, "/ 255"),
        (torch.rand(1, 2, 3, 32, 32) * 255, CosegValueError, r"in \[0, 1\]"),
        (torch.full((1, 2, 3, 32, 32), math.nan), CosegValueError, "NaN"),
    ],
)
def test_bad_images(zs, images: torch.Tensor, error: type[Exception], pattern: str) -> None:
    with raises(error, pattern):
        zs(images)


def test_bad_valid_masks(zs) -> None:
    images = torch.rand(2, 3, 3, 32, 32)
    with raises(CosegShapeError, r"\(2, 3\)", r"\(3, 2\)"):
        zs(images, torch.ones(3, 2, dtype=torch.bool))
    with raises(CosegValueError, "no image as real", r"\[1\]"):
        zs(images, torch.tensor([[True, False, False], [False, False, False]]))


def test_every_error_is_a_value_error() -> None:
    assert issubclass(CosegShapeError, CosegError) and issubclass(CosegValueError, CosegError)
    assert issubclass(CosegError, ValueError)
