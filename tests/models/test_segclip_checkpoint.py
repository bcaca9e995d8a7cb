"""A checkpoint in SegCLIP's format loads into cosegkit's SegClip and computes SegCLIP's forward.

The state dicts are written by :func:`tests.clip.segclip_reference.segclip_state_dict` in the
key format ``torch.save`` gives SegCLIP's model (``segclip.bin``), saved to a file and loaded by
:meth:`SegClip.from_segclip_checkpoint`; every output is compared within 1e-5 with the
functional transcription of SegCLIP's code in :mod:`tests.clip.segclip_reference`.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from cosegkit.errors import WeightsUnavailableError
from cosegkit.models import SegClip
from cosegkit.models.segclip import SEGCLIP_MEAN, SEGCLIP_STD
from cosegkit.zeroshot import SegClipCoseg
from tests.clip.segclip_reference import (
    reference_encode_image,
    reference_encode_text,
    reference_mae_loss,
    reference_segment,
    reference_text_embedding,
    segclip_state_dict,
)

TOL = {"atol": 1e-5, "rtol": 0.0}
# SegCLIP's released model: ViT-B/16 at 224 px, groups after block 10 of 12, 8 groups,
# 2 cross-attention blocks, CLIP's 512-wide 12-layer text tower of context 77
RELEASED = {
    "width": 768,
    "patch_size": 16,
    "image_size": 224,
    "first_stage_layer": 10,
    "num_groups": 8,
    "cross_layers": 2,
    "embed_dim": 512,
    "text_width": 512,
    "text_layers": 12,
    "context_length": 77,
}
CLASSES = ("cat", "dog", "car", "bus", "cow", "sheep", "boat")


def load(tmp_path, state: dict, name: str = "segclip.bin") -> SegClip:
    path = tmp_path / name
    torch.save(state, path)
    return SegClip.from_segclip_checkpoint(path).eval()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    state = segclip_state_dict(seed=0)
    return state, load(tmp_path_factory.mktemp("small"), state)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    torch.manual_seed(0)
    state = segclip_state_dict(**RELEASED, seed=1)
    return state, load(tmp_path_factory.mktemp("released"), state)


def normalised(*shape: int, seed: int = 0) -> torch.Tensor:
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    return (x - torch.tensor(SEGCLIP_MEAN).view(3, 1, 1)) / torch.tensor(SEGCLIP_STD).view(3, 1, 1)


def assert_image_equal(model: SegClip, state: dict, images: torch.Tensor) -> None:
    with torch.no_grad():
        ours = model.encode_image(images)
        theirs = reference_encode_image(state, images)
    torch.testing.assert_close(ours.embedding, theirs["image"], **TOL)
    torch.testing.assert_close(ours.groups, theirs["hidden"][:, 1:], **TOL)
    torch.testing.assert_close(ours.soft.flatten(2), theirs["soft"], **TOL)
    assert torch.equal(ours.hard.flatten(2).argmax(1), theirs["hard"].argmax(1))
    assert float(theirs["hidden"].std()) > 0.1 and float(theirs["soft"].amax(1).mean()) < 0.99  # not degenerate


def test_the_released_sizes_are_read_from_the_file(released) -> None:
    _, model = released
    c = model.config
    assert (c.width, c.patch_size, c.image_size, c.layers, c.first_stage_layer) == (768, 16, 224, 12, 10)
    assert (c.num_groups, c.cross_layers, c.embed_dim, c.text_width, c.text_layers) == (8, 2, 512, 512, 12)
    assert (c.context_length, c.heads, c.text_heads, c.mae_decoder, c.decoder_depth) == (77, 12, 8, True, 3)


def test_equal_to_segclip_forward_at_its_sizes(released) -> None:
    state, model = released
    assert_image_equal(model, state, normalised(2, 3, 224, 224))
    tokens = open_clip.tokenize(["a photo of a cat.", "a photo of a sheep grazing on a hill."], context_length=77)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), reference_encode_text(state, tokens), **TOL)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (64, 64), (40, 72)])
def test_equal_to_segclip_image_forward_at_other_sizes(small, h: int, w: int) -> None:
    state, model = small
    assert_image_equal(model, state, normalised(3, 3, h, w, seed=h + w))


def test_equal_to_segclip_text_forward(small) -> None:
    state, model = small
    tokens = open_clip.tokenize(["a cat", "a photo of a big red bus.", "x"], context_length=16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), reference_encode_text(state, tokens), **TOL)
        torch.testing.assert_close(
            model.encode_text(tokens[:, :11]), reference_encode_text(state, tokens[:, :11]), **TOL
        )


def test_equal_to_segclip_reconstruction_loss(small) -> None:
    state, model = small
    images = normalised(3, 3, 32, 32, seed=3)
    noise = torch.rand(3, 17, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.reconstruction_loss(images, noise=noise)
        theirs = reference_mae_loss(state, images, noise)
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("size", [32, 48])
def test_zero_shot_masks_are_segclip_s_read_out_of_the_set_s_class(small, size: int) -> None:
    """The per-image read-out of a class that is among an image's top 5 is SegCLIP's own channel."""
    state, model = small
    zs = SegClipCoseg(model, CLASSES, image_size=size)
    tokens = open_clip.tokenize([f"a photo of a {c}." for c in CLASSES], context_length=16)[:, None]
    text = reference_text_embedding(state, tokens)
    torch.testing.assert_close(zs.text_bank, text, **TOL)
    images = torch.rand(1, 2, 3, size, size, generator=torch.Generator().manual_seed(size))
    checked = 0
    for name in CLASSES:
        out = zs(images, class_name=name)
        c = CLASSES.index(name)
        for k in range(2):
            x = zs.normalise(images[0, k : k + 1])
            theirs = reference_segment(state, x, text, with_bg=False)
            ranks = (torch.nn.functional.normalize(reference_encode_image(state, x)["image"], dim=-1) @ text.T).topk(5)
            if c in ranks.indices[0].tolist():
                torch.testing.assert_close(out.probs[0, k, 0], theirs[c], **TOL)
                checked += 1
            else:  # SegCLIP's top-5 mask leaves the class out; the set's class is kept here
                assert theirs[c].abs().max() == 0 and out.probs[0, k].amax() > 0
    assert checked >= 8


def test_a_data_parallel_prefix_loads_and_the_text_decoder_is_left_out(tmp_path, small) -> None:
    state, model = small
    prefixed = {f"module.{k}": v for k, v in state.items()}
    prefixed["module.seq_mae_decoder.mask_token"] = torch.zeros(1, 1, 16)
    loaded = load(tmp_path, prefixed)
    for (name, a), b in zip(loaded.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_and_foreign_keys_are_refused(tmp_path, small) -> None:
    state, _ = small
    broken = dict(state)
    broken.pop("clip.visual.transformer.semantic_layer2.k_ln.weight")
    with pytest.raises(WeightsUnavailableError, match=r"missing.*k_ln"):
        load(tmp_path, broken)
    foreign = dict(state)
    foreign["clip.visual.extra"] = torch.zeros(1)
    with pytest.raises(WeightsUnavailableError, match=r"unexpected \['visual\.extra'\]"):
        load(tmp_path, foreign)
