"""Training on the composite world of real photographs: the split by photo, the config, the run."""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch

from cosegkit.data.composite import CompositeWorld, split_photos
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.data.types import DataError
from cosegkit.engine import TrainConfig, build_eval_sets, build_model, build_photo_eval_sets, build_train_sets, train
from cosegkit.engine import config as config_module
from cosegkit.engine.config import SyntheticTrainSets, composite_groups, steps_for_epochs, train_groups
from cosegkit.engine.pretrain import COMPOSITE_CLIP, SYNTHETIC_CLIP
from cosegkit.errors import CosegValueError
from tests.engine.test_trainer import TINY

CLASSES = 5
PHOTOS = 6  # per class: 2 held out (round(0.3 * 6)), 4 for training


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of masked photos: 5 classes of 6 (written from the synthetic world)."""
    root = tmp_path_factory.mktemp("photos")
    world = SyntheticWorld(num_classes=CLASSES, image_size=32, objects_per_image=2, seed=3)
    write_folder_dataset(world, root, PHOTOS)
    return root


def composite(folder, **kwargs) -> TrainConfig:
    settings = {k: v for k, v in TINY.items() if k not in ("dataset", "world_classes")}
    settings.update(dataset="composite", root=str(folder), reader="folder")
    settings.update(kwargs)
    return TrainConfig(**settings)


def held_out_photos(config: TrainConfig) -> frozenset[str]:
    return split_photos(composite_groups(config), config.held_out, seed=config.split_seed)[1]


def test_no_held_out_photo_reaches_a_training_set(photos) -> None:
    config = composite(photos)
    train_photos, held = split_photos(composite_groups(config), 0.3, seed=0)
    assert len(held) == CLASSES * 2 and len(train_photos) == CLASSES * 4
    world, held_world = config.world(), config.held_out_world()
    assert set(world.photos) == train_photos and set(held_world.photos) == held
    sets = build_train_sets(config, length=30)
    seen = set()
    for i in range(len(sets)):
        item = sets[i]
        s = world.sample_set(config.set_size, seed=(config.seed, i))  # the item's record
        assert torch.equal(item["images"], s.images)
        seen |= {p for image in s.source_photos for p in image} | set(s.background_photos)
    assert seen and seen.isdisjoint(held)
    assert len(seen) > len(train_photos) // 2  # the training sets do draw from many photos
    # the held-out sets come from the held-out photos only, the photo sets are exactly them
    for i in range(4):
        s = held_world.sample_set(config.eval_set_size, seed=(config.seed + 1, i))
        assert {p for image in s.source_photos for p in image} | set(s.background_photos) <= held
    photo_sets = build_photo_eval_sets(config)
    assert {str(p) for g in photo_sets.groups for p in g.images} == held


def test_another_split_seed_or_share_holds_out_other_photos(photos) -> None:
    base = composite(photos)
    other = composite(photos, split_seed=1)
    more = composite(photos, held_out=0.5)
    assert held_out_photos(base) != held_out_photos(other)
    assert len(held_out_photos(more)) == CLASSES * 3
    assert set(other.world().photos).isdisjoint(held_out_photos(other))
    assert set(more.world().photos).isdisjoint(held_out_photos(more))


def test_composite_config_round_trips_and_old_configs_read_as_before(photos, tmp_path) -> None:
    config = composite(photos, held_out=0.4, split_seed=2, world_objects=(2, 2), classes=None)
    data = config.to_dict()
    assert (data["reader"], data["held_out"], data["split_seed"], data["world_objects"]) == ("folder", 0.4, 2, [2, 2])
    assert TrainConfig.from_dict(data) == config
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    old = TrainConfig(**TINY).to_dict()
    for key in ("reader", "held_out", "split_seed"):
        del old[key]
    (tmp_path / "old.json").write_text(json.dumps(old))
    again = TrainConfig.load(tmp_path / "old.json")
    assert again == TrainConfig(**TINY) and (again.reader, again.held_out, again.split_seed) == (None, 0.3, 0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reader": None}, r"reader \(--reader\)"),
        ({"reader": "composite"}, r"reader must be one of .*--reader"),
        ({"reader": "synthetic"}, r"reader must be one of .*--reader"),
        ({"held_out": 0.0}, r"--held-out"),
        ({"held_out": 1.0}, r"--held-out"),
        ({"split_seed": -1}, r"--split-seed"),
        ({"eval_classes": ["a"]}, r"--eval-classes"),
        ({"pseudo_masks": "zero-shot", "pseudo_pool": 0}, r"--pseudo-pool"),
        ({"image_size": 8}, r"composite world draws images of at least 16 px.*--image-size"),
        ({"root": None}, r"--root"),
    ],
)
def test_bad_composite_settings_name_the_flag(photos, settings, message) -> None:
    with pytest.raises(CosegValueError, match=message) as info:
        composite(photos, **settings)
    assert len(str(info.value).splitlines()) == 1


def test_the_composite_settings_belong_to_the_composite_dataset(photos) -> None:
    with pytest.raises(CosegValueError, match=r"--reader.*--dataset composite"):
        TrainConfig(dataset="folder", root=str(photos), reader="folder")
    with pytest.raises(CosegValueError, match=r"--held-out, --split-seed"):
        TrainConfig(dataset="folder", root=str(photos), held_out=0.5)
    with pytest.raises(CosegValueError, match=r"--held-out, --split-seed"):
        TrainConfig(**TINY, split_seed=3)
    config = composite(photos)
    with pytest.raises(CosegValueError, match="endless"):
        steps_for_epochs(config, 1)
    with pytest.raises(CosegValueError, match="no training groups"):
        train_groups(config)
    with pytest.raises(CosegValueError, match="composite dataset"):
        build_photo_eval_sets(TrainConfig(**TINY))


def test_worlds_that_cannot_be_built_name_the_flags(photos, tmp_path) -> None:
    names = sorted(p.name for p in (photos / "images").iterdir())
    with pytest.raises(CosegValueError, match=r"more than the most objects per image.*\(--world-objects, --classes"):
        composite(photos, classes=names[:3]).world()  # 3 classes, up to 3 objects per image
    few = tmp_path / "few"
    write_folder_dataset(SyntheticWorld(num_classes=CLASSES, image_size=32, objects_per_image=2), few, 1)
    with pytest.raises(CosegValueError, match=r"a split needs at least 2.*\(--classes\)"):
        composite(few).world()


def test_classes_select_the_readers_groups(photos) -> None:
    names = sorted(p.name for p in (photos / "images").iterdir())
    config = composite(photos, classes=names[:4], world_objects=(2, 2))
    assert sorted(config.world().class_names) == names[:4]
    assert sorted(g.name for g in build_photo_eval_sets(config).groups) == names[:4]
    with pytest.raises(DataError, match=r"classes \(--classes\) \['nothing'\] are not groups"):
        composite(photos, classes=["nothing"]).world()


def test_worlds_are_built_once_per_settings_and_files(photos, monkeypatch) -> None:
    built = []

    class Counting(CompositeWorld):
        def __init__(self, *args, **kwargs):
            built.append(kwargs["photos"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(config_module, "CompositeWorld", Counting)
    monkeypatch.setattr(config_module, "_WORLDS", collections.OrderedDict())
    config = composite(photos)
    world = config.world()
    assert TrainConfig.from_dict(config.to_dict()).world() is world
    build_train_sets(config, 4)[0]
    build_eval_sets(config, sets=2)[0]
    build_photo_eval_sets(config)[0]
    build_model(config)  # its vocabulary
    assert len(built) == 2  # the training world and the held-out one, once each
    assert composite(photos, world_seed=1).world() is not world
    assert composite(photos, image_size=64).world() is not world
    assert len(built) == 4
    mask = next((photos / "masks").rglob("*.png"))
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a file changed on disk: built again
    assert config.world() is not world


def test_vocabulary_is_the_worlds_classes_so_a_sets_group_is_its_class(photos) -> None:
    config = composite(photos)
    names, templates = config.vocabulary()
    assert names == config.world().class_names and templates is None  # a CLIP of real captions: its own templates
    assert config.held_out_world().class_names == names
    for clip in (COMPOSITE_CLIP, SYNTHETIC_CLIP):
        assert composite(photos, clip_model=clip).vocabulary() == (names, ["a {}"])
    sets = build_train_sets(config, length=6)
    for i in range(len(sets)):
        s = config.world().sample_set(config.set_size, seed=(config.seed, i))
        assert names[int(sets[i]["group"])] == s.target_name
    held = build_eval_sets(config, sets=4)
    for i in range(len(held)):
        s = config.held_out_world().sample_set(config.eval_set_size, seed=(config.seed + 1, i))
        assert names[int(held[i]["group"])] == s.target_name


def test_training_and_held_out_sets_are_generated_without_augmentation(photos) -> None:
    config = composite(photos, augment=True)
    sets = build_train_sets(config, length=3)
    assert isinstance(sets, SyntheticTrainSets) and sets.world is config.world()
    assert sorted(sets[0]) == ["group", "images", "indices", "masks", "score", "valid"]
    assert sets[0]["images"].shape == (3, 3, 32, 32) and bool(sets[0]["valid"].all())
    held = build_eval_sets(config, sets=3)
    assert held.world is config.held_out_world() and held.seed == config.seed + 1
    config.extra["eval_seed"] = 7
    assert build_eval_sets(config, sets=3).seed == 7


def test_photo_sets_are_the_held_out_photos_one_group_per_class(photos) -> None:
    config = composite(photos, eval_set_size=None)
    sets = build_photo_eval_sets(config)
    assert [g.name for g in sets.groups] == config.world().class_names
    assert len(sets) == CLASSES and all(len(g) == 2 and g.masks is not None for g in sets.groups)
    item = sets[0]
    assert item["images"].shape == (2, 3, 32, 32) and item["masks"].shape == (2, 1, 32, 32)


def test_build_model_registers_the_composite_clip(photos, tmp_path, monkeypatch) -> None:
    import open_clip.factory

    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    monkeypatch.delitem(open_clip.factory._MODEL_CONFIGS, COMPOSITE_CLIP, raising=False)
    model = build_model(composite(photos, clip_model=COMPOSITE_CLIP))
    assert type(model.clip.model.visual).__name__ == "ModifiedResNet"
    assert list(model.clip.classnames) == composite(photos).world().class_names


def test_a_composite_run_scores_held_out_sets_and_held_out_photos(photos, tmp_path) -> None:
    config = composite(photos, steps=2, extra={"eval_sets": 2})
    result = train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert {"eval.json", "eval_photos.json", "model", "config.json"} <= {p.name for p in run.iterdir()}
    assert not (run / "class_targets").exists()  # eq. (12)'s target per set: no image recurs
    assert result.evaluation.images == 2 * config.eval_set_size
    assert result.photo_evaluation.images == CLASSES * 2
    photos_json = json.loads((run / "eval_photos.json").read_text())
    assert photos_json == result.photo_evaluation.to_dict()
    assert sorted(photos_json["per_group"]) == sorted(config.world().class_names)
    assert json.loads((run / "eval.json").read_text()) == result.evaluation.to_dict()
    assert TrainConfig.load(run / "config.json") == config
    from cosegkit.diagnostics import diagnose_run

    report = diagnose_run(run, sets=1, checkpoints=False)  # a set's group is its class: eq. (12) is scored too
    assert "eq12" in report["stages"]["final"]["classes"]
    synthetic = train(TrainConfig(**TINY, steps=1), tmp_path / "synthetic", progress=False)
    assert synthetic.photo_evaluation is None and not (tmp_path / "synthetic" / "eval_photos.json").exists()


def test_a_class_oracle_is_given_each_photo_sets_class_too(photos, tmp_path, monkeypatch) -> None:
    """Both final evaluations of an oracle run (held-out sets, held-out photos) give it each set's true class."""
    from cosegkit.engine import trainer

    calls = []

    def recording(model, sets, *args, **kwargs):
        calls.append((type(sets).__name__, kwargs.get("class_oracle")))
        return evaluate(model, sets, *args, **kwargs)

    evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", recording)
    result = train(
        composite(photos, steps=1, class_oracle=True, extra={"eval_sets": 2}), tmp_path / "run", progress=False
    )
    assert result.photo_evaluation is not None and len(calls) == 2
    assert [oracle for _, oracle in calls] == [True, True], calls


def test_a_class_whose_held_out_photos_have_empty_masks_is_refused(photos, tmp_path) -> None:
    """Held-out sets must be able to draw every class the training world knows; else the error names the flags."""
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    config = composite(root)
    held = held_out_photos(config)
    victim = sorted(p.name for p in (root / "images").iterdir())[0]
    blanked = 0
    for image in (root / "images" / victim).iterdir():
        if str(image) in held:
            mask = next((root / "masks" / victim).glob(image.stem + ".*"))
            Image.fromarray(np.zeros(Image.open(mask).size[::-1], dtype=np.uint8)).save(mask)
            blanked += 1
    assert blanked == 2
    assert victim in config.world().class_names
    remedy = r"the held-out photos: .*every class needs masked photos in both parts \(--held-out, --split-seed\)"
    with pytest.warns(UserWarning, match="empty mask"), pytest.raises(DataError, match=remedy):
        config.held_out_world()
