"""The UFO peer: shapes, padded groups, batch independence, gradients, VGG taps, persistence, loading errors."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cosegkit import CosegValueError, LCCo, WeightsUnavailableError
from cosegkit.models import UFO, load_model, read_model_config
from cosegkit.models.ufo import nearest_neighbours, ufo_state_dict_to_cosegkit


def tiny_ufo(**kwargs) -> UFO:
    torch.manual_seed(0)
    settings_ = {"encoder_name": "resnet18", "encoder_weights": None, "num_classes": 5, "dim": 16, "mlp_dim": 24}
    return UFO(**{**settings_, **kwargs})


@pytest.fixture(scope="module")
def model() -> UFO:
    return tiny_ufo().eval()


def rand_images(b: int, n: int, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=10)
@given(b=st.integers(1, 2), n=st.integers(1, 6), h=st.integers(8, 100), w=st.integers(8, 100), seed=st.integers(0, 99))
def test_any_group_and_image_size(model: UFO, b: int, n: int, h: int, w: int, seed: int) -> None:
    with torch.no_grad():
        out = model(rand_images(b, n, h, w, seed))
    assert out.masks.shape == (b, n, 1, h, w)
    assert out.class_logits.shape == (b, 5) and out.class_probs.shape == (b, 5)
    assert torch.isfinite(out.masks).all() and torch.isfinite(out.class_logits).all()
    assert torch.allclose(out.class_probs, out.class_logits.sigmoid())
    assert out.valid.shape == (b, n) and out.valid.all()


@settings(max_examples=10)
@given(n=st.integers(1, 4), pad=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_padded_images_change_nothing_for_the_valid_ones(model: UFO, n: int, pad: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, n, 3, 64, 64, generator=g)
    where = torch.randperm(n + pad, generator=g)
    padded = torch.empty(1, n + pad, 3, 64, 64)
    real, fake = where[:n].sort().values, where[n:]
    padded[0, real] = images[0]
    padded[0, fake] = torch.rand(pad, 3, 64, 64, generator=g) * 0.9  # anything at all
    valid = torch.zeros(1, n + pad, dtype=torch.bool)
    valid[0, real] = True
    with torch.no_grad():
        alone = model(images)
        mixed = model(padded, valid=valid)
    assert torch.allclose(mixed.masks[0, real], alone.masks[0], atol=1e-5)
    assert torch.allclose(mixed.class_logits, alone.class_logits, atol=1e-5)


def test_groups_in_a_batch_do_not_see_each_other(model: UFO) -> None:
    images = rand_images(2, 3, seed=1)
    other = images.clone()
    other[1] = rand_images(1, 3, seed=2)[0]
    with torch.no_grad():
        a, b = model(images), model(other)
    assert torch.allclose(a.masks[0], b.masks[0], atol=1e-6)
    assert torch.allclose(a.class_logits[0], b.class_logits[0], atol=1e-6)
    assert not torch.allclose(a.masks[1], b.masks[1], atol=1e-4)


def test_the_group_shapes_every_mask(model: UFO) -> None:
    """An image's mask depends on the other images of its group (transformers and class vector)."""
    images = rand_images(1, 3, seed=3)
    other, own = images.clone(), images.clone()
    other[0, 2] = own[0, 0] = rand_images(1, 1, seed=4)[0, 0]
    with torch.no_grad():
        a, b, c = model(images), model(other), model(own)
    cross = (a.masks[0, 0] - b.masks[0, 0]).abs().max()  # image 0's mask when image 2 changes
    self_ = (a.masks[0, 0] - c.masks[0, 0]).abs().max()  # ... when image 0 itself changes
    assert cross > 5e-4 * self_ > 0  # small at a random init (measured 1.5e-3), exactly 0 without group layers


def test_the_class_vector_follows_the_image_order_as_ufo_reads_it(model: UFO) -> None:
    """UFO's class branch reinterprets the group's concatenated Gram vectors as one matrix
    (``x.view(bs, g, -1, 1)``), so reordering the images changes the class scores; kept as in UFO.
    A single image or identical images are order-free."""
    images = rand_images(1, 4, seed=5)
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a, b = model(images), model(images[:, order])
        same = model(images[:, :1].expand(-1, 4, -1, -1, -1))
        same_permuted = model(images[:, :1].expand(-1, 4, -1, -1, -1)[:, order])
    assert not torch.allclose(a.class_logits, b.class_logits, atol=1e-6)
    assert torch.allclose(same.class_logits, same_permuted.class_logits)


def test_every_parameter_receives_gradient() -> None:
    model = tiny_ufo().train()
    out = model(rand_images(2, 3, seed=6))
    (out.masks.sigmoid().mean() + out.class_logits.sigmoid().mean()).backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert dead == []


def test_vgg_is_read_after_each_pooling_as_ufo_taps_it() -> None:
    model = UFO(encoder_name="vgg16_bn", encoder_weights=None, num_classes=3, dim=8, mlp_dim=8).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        levels = model._levels(x)
        features = model.encoder.features
        reference, taps = [], {13, 23, 33, 43}  # UFO's extract: pool2 .. pool5
        y = x
        for i, layer in enumerate(features):
            y = layer(y)
            if i in taps:
                reference.append(y)
    assert [tuple(f.shape[1:]) for f in levels] == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    for got, want in zip(levels, reference, strict=True):
        assert torch.equal(got, want)
    assert [m[0].in_channels for m in model.lateral] == [128, 256, 512, 512]


def test_other_encoders_are_read_at_strides_4_to_32() -> None:
    model = tiny_ufo(encoder_name="resnet18")
    shapes = [tuple(f.shape[-2:]) for f in model._levels(torch.rand(1, 3, 64, 64))]
    assert shapes == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_nearest_neighbours_leave_the_point_itself_out() -> None:
    points = torch.randn(2, 20, 6)
    idx = nearest_neighbours(points, 4)
    assert idx.shape == (2, 20, 4)
    assert not (idx == torch.arange(20)[None, :, None]).any()
    distance = torch.cdist(points, points) + torch.eye(20) * 1e9
    want = distance.topk(4, largest=False).indices
    assert torch.equal(idx.sort(-1).values, want.sort(-1).values)


def test_a_grid_with_fewer_positions_than_neighbours_still_works() -> None:
    idx = nearest_neighbours(torch.randn(1, 3, 4), 4)
    assert idx.shape == (1, 3, 3)


def test_save_and_load_round_trip(tmp_path, model: UFO) -> None:
    m = tiny_ufo(classnames=["a", "b", "c"], image_size=64, set_size=3).eval()
    folder = m.save_pretrained(tmp_path / "ufo")
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "ufo"
    images = rand_images(1, 3, seed=7)
    for loaded in (UFO.from_pretrained(folder), load_model(folder), load_model(tmp_path / "ufo")):
        assert isinstance(loaded, UFO)
        assert (loaded.classnames, loaded.image_size, loaded.set_size) == (["a", "b", "c"], 64, 3)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(images).masks, m(images).masks)
    assert read_model_config(folder)["image_size"] == 64


def test_a_run_folder_loads_its_model(tmp_path) -> None:
    tiny_ufo().save_pretrained(tmp_path / "run" / "model")
    assert isinstance(load_model(tmp_path / "run"), UFO)


def test_lcco_refuses_a_ufo_folder_and_names_the_loader(tmp_path, model: UFO) -> None:
    folder = model.save_pretrained(tmp_path / "ufo")
    with pytest.raises(WeightsUnavailableError, match="load_model"):
        LCCo.from_pretrained(folder)


def test_ufo_refuses_an_lcco_folder(tmp_path) -> None:
    lcco = LCCo(encoder_name="resnet18", encoder_weights=None, decoder_channels=(16, 16, 8, 8, 8),
                use_correspondence=False, use_interaction=False, use_regularization=False)  # fmt: skip
    folder = lcco.save_pretrained(tmp_path / "lcco")
    with pytest.raises(WeightsUnavailableError, match="load_model"):
        UFO.from_pretrained(folder)
    assert isinstance(load_model(folder), LCCo)


def test_common_class_is_refused(model: UFO) -> None:
    with pytest.raises(CosegValueError, match="class-oracle"):
        model(rand_images(1, 2), common_class=torch.tensor([0]))


def test_lcco_keywords_are_ignored(model: UFO) -> None:
    images = rand_images(1, 2, seed=8)
    with torch.no_grad():
        assert torch.equal(model(images, masks=torch.ones(1, 2, 1, 64, 64)).masks, model(images).masks)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0}, "dim"),
        ({"heads": 3, "dim": 16}, "divisible"),
        ({"classnames": []}, "empty"),
        ({"gram_channels": (4,)}, "gram_channels"),
        ({"image_size": 0}, "image_size"),
        ({"set_size": -1}, "set_size"),
    ],
)
def test_bad_settings_are_refused(kwargs, match) -> None:
    with pytest.raises(CosegValueError, match=match):
        tiny_ufo(**kwargs)


def test_predict_gives_probabilities_in_eval_mode() -> None:
    m = tiny_ufo().train()
    probs = m.predict(rand_images(1, 2))
    assert not m.training and probs.min() >= 0 and probs.max() <= 1


def test_foreign_keys_are_refused() -> None:
    with pytest.raises(WeightsUnavailableError, match="belongs to no module"):
        ufo_state_dict_to_cosegkit({"module.flow_encoder.0.weight": torch.zeros(1)})


def test_unshared_concat_blocks_are_refused() -> None:
    state = {"concat4.0.weight": torch.zeros(2), "concat3.0.weight": torch.ones(2), "concat2.0.weight": torch.zeros(2)}
    with pytest.raises(WeightsUnavailableError, match="one module"):
        ufo_state_dict_to_cosegkit(state)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path) -> None:
    bad = tmp_path / "image_best.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="could not read UFO checkpoint"):
        UFO.from_ufo_checkpoint(bad)
