"""cosegkit's UFO against a transcription of UFO's forward, loaded from files in UFO's checkpoint format."""

from __future__ import annotations

import pytest
import torch

from cosegkit import WeightsUnavailableError
from cosegkit.models import UFO, load_model
from tests.models.ufo_reference import ufo_forward, ufo_state_dict

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def ufo_input(images: torch.Tensor) -> torch.Tensor:
    """What UFO's network receives: the group's images stacked and ImageNet-normalised (test.py)."""
    return (images.flatten(0, 1) - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[dict[str, torch.Tensor], str]:
    state = ufo_state_dict(seed=0)  # UFO's keys: DataParallel's "module." prefix, concat4/3/2 shared
    path = tmp_path_factory.mktemp("ufo") / "image_best.pth"
    torch.save(state, path)
    return state, str(path)


def test_equal_to_ufo_forward_at_its_sizes(checkpoint) -> None:
    state, path = checkpoint
    model = UFO.from_ufo_checkpoint(path).eval()
    assert (model.image_size, model.set_size, model.classifier.out_features) == (224, 5, 78)
    images = torch.rand(2, 5, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls_pred, mask_pred = ufo_forward(state, ufo_input(images), group_size=5)
        out = model(images)
    assert mask_pred.std() > 0.05 and cls_pred.std() > 0.01  # a comparison of non-trivial outputs
    probs = out.masks.sigmoid()
    assert probs.shape == (2, 5, 1, 224, 224)
    assert (probs.flatten(0, 2) - mask_pred).abs().max() < 1e-5
    assert (out.class_probs - cls_pred).abs().max() < 1e-5


@pytest.mark.parametrize("group, size", [(3, 128), (1, 96)])
def test_equal_to_ufo_forward_at_other_group_and_image_sizes(checkpoint, group: int, size: int) -> None:
    """UFO fixes 5 and 224; its logic with the group and the grid generalised is what cosegkit computes."""
    state, path = checkpoint
    model = UFO.from_ufo_checkpoint(path).eval()
    images = torch.rand(2, group, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cls_pred, mask_pred = ufo_forward(state, ufo_input(images), group_size=group)
        out = model(images)
    assert (out.masks.sigmoid().flatten(0, 2) - mask_pred).abs().max() < 1e-5
    assert (out.class_probs - cls_pred).abs().max() < 1e-5


def test_a_checkpoint_without_the_dataparallel_prefix_loads_the_same(checkpoint, tmp_path) -> None:
    state, path = checkpoint
    plain = tmp_path / "plain.pth"
    torch.save({k.removeprefix("module."): v for k, v in state.items()}, plain)
    a, b = UFO.from_ufo_checkpoint(path), UFO.from_ufo_checkpoint(plain)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_a_loaded_checkpoint_saves_and_reloads_exactly(checkpoint, tmp_path) -> None:
    _, path = checkpoint
    model = UFO.from_ufo_checkpoint(path, classnames=[f"class {i}" for i in range(78)]).eval()
    again = load_model(model.save_pretrained(tmp_path / "ufo")).eval()
    images = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(images).masks, model(images).masks)
    assert again.classnames == model.classnames and again.image_size == 224


def test_a_narrower_checkpoint_loads_at_its_width(tmp_path) -> None:
    path = tmp_path / "narrow.pth"
    torch.save(ufo_state_dict(seed=1, num_classes=7, dim=64), path)
    model = UFO.from_ufo_checkpoint(path)
    assert model.config["dim"] == 64 and model.classifier.out_features == 7


def test_a_truncated_checkpoint_is_refused(checkpoint, tmp_path) -> None:
    state, _ = checkpoint
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if "mask" not in k}, partial)
    with pytest.raises(WeightsUnavailableError, match="missing"):
        UFO.from_ufo_checkpoint(partial)


def test_wrong_number_of_classnames_is_refused(checkpoint) -> None:
    _, path = checkpoint
    with pytest.raises(ValueError, match="78 classes"):
        UFO.from_ufo_checkpoint(path, classnames=["cat", "dog"])


@pytest.fixture(scope="module")
def coupled(tmp_path_factory) -> UFO:
    """A narrow UFO-format model whose images visibly shape each other's masks (a random init barely does)."""
    path = tmp_path_factory.mktemp("narrow") / "narrow.pth"
    torch.save(ufo_state_dict(seed=0, num_classes=5, dim=64), path)
    return UFO.from_ufo_checkpoint(path).eval()


@pytest.mark.parametrize("where", [[0, 2], [1, 3], [0, 1]])
def test_padded_images_change_nothing_where_images_shape_each_other(coupled: UFO, where: list[int]) -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(1, 2, 3, 96, 96, generator=g)
    padded = torch.rand(1, 4, 3, 96, 96, generator=g)  # two padded images of any content
    padded[0, where] = images[0]
    valid = torch.zeros(1, 4, dtype=torch.bool)
    valid[0, where] = True
    with torch.no_grad():
        alone, mixed = coupled(images), coupled(padded, valid=valid)
        counted = coupled(padded)  # the same images, the padding counted as real
    assert (counted.masks[0, where] - alone.masks[0]).abs().max() > 1e-3  # so the check below can fail
    assert (mixed.masks[0, where] - alone.masks[0]).abs().max() < 1e-5
    assert (mixed.class_logits - alone.class_logits).abs().max() < 1e-5


def test_the_order_of_a_group_matters_as_in_ufo(checkpoint) -> None:
    """UFO's ``.view`` over the group's Gram vectors makes its outputs depend on the image order;
    measured here at 224 px, a group of 5 reordered [4, 2, 0, 3, 1]: class probabilities move by
    3.3e-3, mask probabilities by 3.1e-2 (the equations page cites these)."""
    _, path = checkpoint
    model = UFO.from_ufo_checkpoint(path).eval()
    images = torch.rand(1, 5, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    order = torch.tensor([4, 2, 0, 3, 1])
    with torch.no_grad():
        a, b = model(images), model(images[:, order])
    assert (a.class_probs - b.class_probs).abs().max() > 1e-3
    assert (a.masks.sigmoid()[:, order] - b.masks.sigmoid()).abs().max() > 1e-2
