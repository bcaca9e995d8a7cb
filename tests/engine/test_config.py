"""TrainConfig: the module variant and its settings, and configs written before variants existed."""

from __future__ import annotations

import json
import warnings

import pytest

from cosegkit.engine import TrainConfig, build_model
from tests.engine.test_trainer import TINY


def test_the_variant_and_its_overrides_reach_the_model() -> None:
    paper = build_model(TrainConfig(**TINY, variant="paper"))
    assert paper.regularization.class_pool == "max" and not paper.interaction.residual
    assert not paper.correspondence.residual and paper.regularization.class_prior == 3.0
    default = build_model(TrainConfig(**TINY))
    assert default.regularization.class_pool == "mean" and default.interaction.residual
    assert default.correspondence.residual and default.interaction.unit_scale
    mixed = build_model(TrainConfig(**TINY, variant="paper", residual=True, class_prior=2.0))
    assert mixed.interaction.residual and mixed.regularization.residual and mixed.regularization.class_prior == 2.0
    assert mixed.regularization.class_pool == "max" and not mixed.correspondence.residual
    with pytest.raises(KeyError, match="unknown LCCo variant"):
        TrainConfig(**TINY, variant="literal")


def test_a_config_from_before_variants_is_the_paper(tmp_path) -> None:
    data = TrainConfig(**TINY).to_dict()
    for key in ("variant", "correspondence_residual", "unit_scale", "class_pool", "class_prior"):
        del data[key]
    data["residual"] = True  # an old run with --residual
    (tmp_path / "config.json").write_text(json.dumps(data))
    old = TrainConfig.load(tmp_path / "config.json")
    assert old.variant == "paper" and old.residual is True
    assert (old.unit_scale, old.class_pool, old.class_prior, old.correspondence_residual) == (False, "max", 0.0, False)
    model = build_model(old)
    assert model.interaction.residual and model.regularization.class_pool == "max"
    assert model.regularization.class_prior == 0.0 and not model.interaction.unit_scale
    assert TrainConfig.from_dict(TrainConfig(**TINY).to_dict()).variant == "default"


def test_every_override_reaches_the_model_through_the_config() -> None:
    m = build_model(TrainConfig(**TINY, class_pool="max", unit_scale=False, correspondence_residual=False))
    assert m.regularization.class_pool == "max"
    assert not m.interaction.unit_scale and not m.regularization.unit_scale
    assert not m.correspondence.residual and m.interaction.residual


def test_missing_masks_and_empty_groups_name_the_python_argument_and_the_flag(tmp_path) -> None:
    from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
    from cosegkit.data.types import DataError
    from cosegkit.engine.config import train_groups

    groups = write_folder_dataset(SyntheticWorld(num_classes=3, image_size=32, objects_per_image=(2, 2), seed=1), tmp_path, images_per_group=3)
    groups[0].masks[0].unlink()
    (tmp_path / "images" / "empty group").mkdir()
    config = dict(dataset="folder", root=str(tmp_path))
    with pytest.raises(DataError, match=r"missing_masks='skip'.*--missing-masks skip"):
        train_groups(TrainConfig(**config))
    with pytest.raises(DataError, match=r"on_empty='warn'.*--on-empty warn"), pytest.warns(UserWarning, match="left out"):
        train_groups(TrainConfig(**config, missing_masks="skip"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = train_groups(TrainConfig(**config, missing_masks="skip", on_empty="warn"))
    said = " | ".join(str(w.message) for w in caught)
    assert "left out (missing_masks='skip', --missing-masks skip)" in said and "left out (on_empty='warn'" in said
    assert [len(g) for g in read] == [2, 3, 3]
    with pytest.raises(ValueError, match=r"missing_masks must be one of \['error', 'skip'\], got 'ignore' \(--missing-masks\)"):
        TrainConfig(**config, missing_masks="ignore")


def test_a_mask_with_width_and_height_swapped_is_refused(tmp_path) -> None:
    """Sizes are compared as (width, height): a 6x8 mask of an 8x6 image is wrong, not the same pixels."""
    from PIL import Image

    from cosegkit.data.types import DataError, Group
    from cosegkit.engine.config import check_mask_sizes

    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg")
    Image.new("L", (6, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "b.jpg")
    Image.new("L", (8, 6)).save(tmp_path / "b.png")
    images, masks = (tmp_path / "a.jpg", tmp_path / "b.jpg"), (tmp_path / "a.png", tmp_path / "b.png")
    with pytest.raises(DataError) as info:
        check_mask_sizes([Group("cats", images, masks)])
    message = str(info.value)
    assert f"{masks[0]} is 6x8 but {images[0]} is 8x6" in message and "1 mask(s) of 2" in message
    check_mask_sizes([Group("cats", images[1:], masks[1:])])  # the right size passes
