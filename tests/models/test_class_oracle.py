"""The class oracle: a given class replaces the regularization's own choice i* (eq. 6-8)."""

from __future__ import annotations

import json

import pytest
import torch

from cosegkit import ClipRegularization, CosegShapeError, CosegValueError, LCCo
from cosegkit.losses.classification import classification_loss
from cosegkit.models.lcco import refuse_class_oracle
from tests._support import CLASSNAMES, tiny_lcco

P = len(CLASSNAMES)


def rand_images(b: int, n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def layer_inputs(b: int = 3, n: int = 4, c: int = 16, d: int = 8, p: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, 5, 5, generator=g), torch.randn(b, n, p, generator=g), torch.randn(p, d, generator=g)


def other_than(choice: torch.Tensor, p: int) -> torch.Tensor:
    """A class per set that is not the given one."""
    return (choice + 1 + torch.arange(len(choice)) % (p - 1)) % p


# ---------------------------------------------------------------- the layer
def test_the_given_class_is_the_text_embedding_that_regularises() -> None:
    torch.manual_seed(0)
    reg = ClipRegularization(16, clip_dim=8, num_prompts=6).eval()
    features, similarity, text = layer_inputs()
    own = reg(features, similarity, text)
    forced_class = other_than(own.common_class, 6)
    forced = reg(features, similarity, text, common_class=forced_class)
    assert forced.common_class.tolist() == forced_class.tolist()
    assert torch.equal(forced.class_probs, own.class_probs)  # v is still the module's own
    for i, c in enumerate(forced_class.tolist()):
        # a bank whose every row is the forced class's: whatever i* the module picks, h_txt is that row
        only_c = text[c].expand_as(text)
        expected = reg(features[i : i + 1], similarity[i : i + 1], only_c).features
        assert torch.allclose(forced.features[i : i + 1], expected, atol=1e-6)
    assert not torch.allclose(forced.features, own.features)  # a wrong argmax changes the features


def test_forcing_the_modules_own_choice_changes_nothing() -> None:
    torch.manual_seed(0)
    reg = ClipRegularization(16, clip_dim=8, num_prompts=6).eval()
    features, similarity, text = layer_inputs(seed=1)
    own = reg(features, similarity, text)
    same = reg(features, similarity, text, common_class=own.common_class.clone())
    for a, b in zip(own, same, strict=True):
        assert torch.equal(a, b)


def test_the_classification_loss_still_trains_mlp3_under_the_oracle() -> None:
    torch.manual_seed(0)
    reg = ClipRegularization(16, clip_dim=8, num_prompts=6)
    features, similarity, text = layer_inputs()
    out = reg(features, similarity, text, common_class=torch.tensor([0, 1, 2]))
    classification_loss(out.class_probs, torch.tensor([3, 4, 5])).backward()
    grads = [p.grad for p in reg.mlp3.parameters()]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize(
    "common_class, error, words",
    [
        (torch.tensor([[0], [1], [2]]), CosegShapeError, "one prompt index per set, got (3, 1)"),
        (torch.tensor([0, 1]), CosegShapeError, "expected common_class of shape (3,)"),
        (torch.tensor([0.0, 1.0, 2.0]), CosegValueError, "common_class.long()"),
        (torch.tensor([True, False, True]), CosegValueError, "integer prompt indices"),
        (torch.tensor([0, 6, 1]), CosegValueError, "indices in [0, 6)"),
        (torch.tensor([0, -1, 1]), CosegValueError, "indices in [0, 6)"),
        ([0, 1, 2], CosegValueError, "torch.tensor(indices)"),
    ],
)
def test_a_bad_common_class_says_what_it_got_and_what_to_do(common_class, error, words) -> None:
    reg = ClipRegularization(16, clip_dim=8, num_prompts=6)
    features, similarity, text = layer_inputs()
    with pytest.raises(error, match="common_class") as info:
        reg(features, similarity, text, common_class=common_class)
    assert words in str(info.value)


# ---------------------------------------------------------------- LCCo
@pytest.fixture(scope="module")
def model() -> LCCo:
    return tiny_lcco().eval()


def test_none_is_the_models_own_choice_bit_for_bit(model: LCCo) -> None:
    images = rand_images(2, 3)
    with torch.no_grad():
        before = model(images)
        with_none = model(images, common_class=None)
        own_given = model(images, common_class=before.common_class.clone())
    for out in (with_none, own_given):
        assert torch.equal(out.masks, before.masks)
        assert torch.equal(out.class_probs, before.class_probs)
        assert torch.equal(out.common_class, before.common_class)
        assert torch.equal(out.coarse_masks, before.coarse_masks)


def test_the_given_class_reaches_the_regularization_and_changes_the_masks(model: LCCo) -> None:
    images = rand_images(2, 3, seed=1)
    seen = []
    hook = model.regularization.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(out.common_class.clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            own = model(images)
            forced_class = other_than(own.common_class, P)
            forced = model(images, common_class=forced_class)
    finally:
        hook.remove()
    assert seen[1].tolist() == forced_class.tolist() != own.common_class.tolist()
    assert forced.common_class.tolist() == forced_class.tolist()
    assert torch.equal(forced.class_probs, own.class_probs)  # the classification is computed as before
    assert not torch.allclose(forced.masks, own.masks)  # a wrong argmax, corrected, gives other masks


def test_each_set_gets_its_own_class(model: LCCo) -> None:
    images = rand_images(2, 3, seed=2)
    classes = torch.tensor([5, 1])
    with torch.no_grad():
        both = model(images, common_class=classes).masks
        first = model(images[:1], common_class=classes[:1]).masks
        second = model(images[1:], common_class=classes[1:]).masks
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-5)


def test_predict_passes_the_class_through(model: LCCo) -> None:
    images = rand_images(1, 3, seed=3)
    with torch.no_grad():
        classes = other_than(model(images).common_class, P)
        expected = model(images, common_class=classes).masks.sigmoid()
    assert torch.equal(model.predict(images, common_class=classes), expected)
    assert not torch.equal(model.predict(images), expected)


def test_lcco_checks_the_shape_and_range(model: LCCo) -> None:
    images = rand_images(2, 3)
    with pytest.raises(CosegShapeError, match=r"expected common_class of shape \(2,\)"):
        model(images, common_class=torch.tensor([1]))
    with pytest.raises(CosegValueError, match=rf"\[0, {P}\)"):
        model(images, common_class=torch.tensor([1, P]))


def test_common_class_without_the_regularization_module_is_refused() -> None:
    baseline = tiny_lcco(use_regularization=False).eval()
    with pytest.raises(CosegValueError, match=r"use_regularization=False.*without common_class"):
        baseline(rand_images(1, 2), common_class=torch.tensor([0]))


# ---------------------------------------------------------------- a class-oracle model
def test_a_class_oracle_needs_the_class_at_every_forward() -> None:
    oracle = tiny_lcco(class_oracle=True).eval()
    images = rand_images(1, 3)
    with pytest.raises(CosegValueError, match=r"class oracle.*pass common_class.*model\.class_oracle = False"):
        oracle(images)
    with pytest.raises(CosegValueError, match="class oracle"):
        oracle.predict(images)
    assert oracle(images, common_class=torch.tensor([2])).common_class.tolist() == [2]
    oracle.class_oracle = False  # lets it choose its class itself
    assert oracle(images).masks.shape == (1, 3, 1, 32, 32)


def test_a_class_oracle_needs_the_regularization_module() -> None:
    with pytest.raises(CosegValueError, match="use_regularization=True"):
        tiny_lcco(use_regularization=False, class_oracle=True)
    model = tiny_lcco(use_regularization=False)
    with pytest.raises(CosegValueError, match="use_regularization=True"):
        model.class_oracle = True
    with pytest.raises(CosegValueError, match="True or False"):
        tiny_lcco(class_oracle="yes")


def test_the_saved_config_keeps_the_oracle(tmp_path) -> None:
    oracle = tiny_lcco(class_oracle=True)
    oracle.save_pretrained(tmp_path / "oracle")
    assert json.loads((tmp_path / "oracle" / "config.json").read_text())["model"]["class_oracle"] is True
    loaded = LCCo.from_pretrained(tmp_path / "oracle")
    assert loaded.class_oracle
    with pytest.raises(CosegValueError, match="class oracle"):
        loaded.eval()(rand_images(1, 2))

    tiny_lcco().save_pretrained(tmp_path / "plain")
    assert LCCo.from_pretrained(tmp_path / "plain").class_oracle is False
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    del config["model"]["class_oracle"]  # a model saved before the setting existed
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    assert LCCo.from_pretrained(tmp_path / "plain").class_oracle is False


def test_segmenting_and_exporting_refuse_a_class_oracle(tmp_path) -> None:
    from PIL import Image

    from cosegkit.engine.segment import segment_files
    from cosegkit.export import export_onnx, export_program

    oracle = tiny_lcco(class_oracle=True).eval()
    refuse_class_oracle(tiny_lcco().eval(), "segment new images")  # a model that finds its class passes
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(CosegValueError, match=r"class oracle .*cannot segment new images"):
        segment_files(oracle, [tmp_path / "a.png"], tmp_path / "masks", workers=0)
    assert not (tmp_path / "masks").exists()  # refused before anything is written
    with pytest.raises(CosegValueError, match=r"class oracle .*cannot export"):
        export_program(oracle, set_size=2, image_size=32)
    with pytest.raises(CosegValueError, match=r"class oracle .*cannot export"):
        export_onnx(oracle, tmp_path / "oracle.onnx", set_size=2, image_size=32)
    assert not (tmp_path / "oracle.onnx").exists()
