"""The demo's pieces on the real-photo world: its configs, its CLIP's split, the figure's picks and oracle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cosegkit.data.composite import split_photos
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.engine import TrainConfig, train
from cosegkit.engine.config import composite_groups
from tests.engine.test_trainer import TINY


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of masked photos: 5 classes of 6 (written from the synthetic world)."""
    root = tmp_path_factory.mktemp("photos")
    write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, objects_per_image=2, seed=3), root, 6)
    return root


def composite(folder: Path, **kwargs) -> TrainConfig:
    settings = {k: v for k, v in TINY.items() if k not in ("dataset", "world_classes")}
    settings.update(dataset="composite", root=str(folder), reader="folder", steps=1, **kwargs)
    return TrainConfig(**settings)


def test_the_pascal_models_differ_only_in_their_switches() -> None:
    from cosegkit.demo import demo_train_config

    lcco = demo_train_config("clip.safetensors", steps=600, world="pascal", root="photos").to_dict()
    baseline = demo_train_config("clip.safetensors", steps=600, world="pascal", root="photos", modules=False).to_dict()
    paper = demo_train_config("clip.safetensors", steps=600, world="pascal", root="photos", variant="paper").to_dict()
    assert sorted(k for k, v in lcco.items() if baseline[k] != v) == [
        "use_correspondence",
        "use_interaction",
        "use_regularization",
    ]
    assert not any(baseline[k] for k in ("use_correspondence", "use_interaction", "use_regularization"))
    assert [k for k, v in lcco.items() if paper[k] != v] == ["variant"]


def test_the_pascal_clip_trains_on_the_training_photos_and_is_scored_on_the_held_out_ones(photos, monkeypatch) -> None:
    import cosegkit.demo as demo

    config = composite(photos)
    seen = {}

    def pretrain(world, recipe, **kwargs):
        seen["trained"] = world
        return Path("clip.safetensors")

    def accuracy(clip, world, **kwargs):
        seen["scored"] = world
        return {"set_top1": 0.0}

    monkeypatch.setattr(demo, "demo_train_config", lambda *args, **kwargs: config)
    monkeypatch.setattr(demo, "pretrain_clip", pretrain)
    monkeypatch.setattr(demo, "demo_clip", lambda *args, **kwargs: None)
    monkeypatch.setattr(demo, "zero_shot_accuracy", accuracy)
    demo.prepare_world_clip("pascal", root=str(photos), quick=True)
    train_photos, held = split_photos(composite_groups(config), config.held_out, seed=config.split_seed)
    assert set(seen["trained"].photos) == train_photos
    assert set(seen["scored"].photos) == held and held.isdisjoint(train_photos)


def test_the_photo_figure_picks_the_first_set_of_classes_spread_over_the_list() -> None:
    from cosegkit.demo import _photo_picks

    groups = [0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 7, 7]  # 8 classes: every other one, from the first
    sets = [{"group": torch.tensor(g)} for g in groups]
    assert _photo_picks(sets) == [0, 4, 7, 9]
    assert _photo_picks(sets[:4], count=4) == [0, 2]  # fewer classes than wanted: all of them


def test_the_photo_figure_gives_an_oracle_its_sets_classes(photos, tmp_path, monkeypatch) -> None:
    import cosegkit.demo as demo

    train(composite(photos), tmp_path / "lcco", progress=False)
    train(composite(photos, class_oracle=True), tmp_path / "oracle", progress=False)
    drawn = {}
    monkeypatch.setattr(
        demo, "_figure", lambda models, *args, oracle=frozenset(): drawn.update(models=models, oracle=oracle)
    )
    demo.photo_figure({"LCCo": tmp_path / "lcco", "Class oracle": tmp_path / "oracle"}, tmp_path / "figure.png")
    assert list(drawn["models"]) == ["LCCo", "Class oracle"] and drawn["oracle"] == {"Class oracle"}


@pytest.mark.parametrize("world", ["synthetic", "pascal"])
def test_the_demo_trains_every_model_at_its_worlds_budget(world, tmp_path, monkeypatch) -> None:
    """The world's budget reaches all three models' configs (the warm-up follows the steps)."""
    from types import SimpleNamespace

    import cosegkit.demo as demo

    class Stop(Exception):
        pass

    seen = []

    def fake_train(config, run, progress):
        seen.append(config)
        if len(seen) == 3:
            raise Stop
        return {}

    accuracy = dict.fromkeys(("set_top1", "set_top5", "chance", "image_top1", "image_chance"), 0.0)
    monkeypatch.setattr(demo, "prepare_world_clip", lambda *args, **kwargs: (Path("clip.safetensors"), accuracy))
    monkeypatch.setattr(demo, "demo_clip", lambda *args, **kwargs: SimpleNamespace(classnames=["a", "b"]))
    monkeypatch.setattr(demo, "_train_or_resume", fake_train)
    with pytest.raises(Stop):
        demo.run_demo(tmp_path, world=world, root="photos" if world == "pascal" else None, progress=False)
    budget = demo.DEMO_WORLDS[world].budget
    assert [(c.steps, c.lr, c.warmup) for c in seen] == [(budget.steps, 1e-3, budget.steps // 20)] * 3
    assert [c.use_regularization for c in seen] == [False, True, True]
