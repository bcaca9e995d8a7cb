"""Pseudo masks on generated worlds: a fixed pool of generated sets, labelled once by the run's CLIP."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from types import SimpleNamespace

import pytest
import torch

from cosegkit.clip import FrozenClip
from cosegkit.data.composite import CompositeWorld
from cosegkit.engine import TrainConfig, find_checkpoints, train
from cosegkit.engine import pseudo as pseudo_module
from cosegkit.engine.config import SyntheticTrainSets, build_train_sets
from cosegkit.engine.pseudo import (
    PseudoPool,
    PseudoWorldSets,
    prepare_pseudo_pool,
    pseudo_targets,
    zero_shot_settings,
)
from cosegkit.errors import CosegValueError
from cosegkit.testing import register_tiny_clips
from cosegkit.zeroshot import ZeroShotCoseg
from tests.engine.test_trainer import TINY, weights

PSEUDO = dict(TINY, pseudo_masks="zero-shot", pseudo_background=["grass", "sky"])


def config_of(**kwargs) -> TrainConfig:
    return TrainConfig(**{**PSEUDO, **kwargs})


def clip_for(world, seed: int = 0) -> FrozenClip:
    register_tiny_clips()
    torch.manual_seed(seed)
    return FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=world.class_names)


@pytest.fixture
def zs_calls(monkeypatch) -> list[int]:
    """The set size of every ZeroShotCoseg forward call."""
    calls: list[int] = []
    original = ZeroShotCoseg.forward

    def counted(self, images, valid=None, *, class_name=None):
        calls.append(images.shape[1])
        return original(self, images, valid, class_name=class_name)

    monkeypatch.setattr(ZeroShotCoseg, "forward", counted)
    return calls


class ImagesOnly:
    """A world whose sets show their images and nothing else: reading a mask or a target fails."""

    def __init__(self, world) -> None:
        self.world = world
        self.class_names = world.class_names
        self.image_size = world.image_size

    def fingerprint(self) -> str:
        return self.world.fingerprint()

    def sample_set(self, set_size, *, seed):
        return SimpleNamespace(images=self.world.sample_set(set_size, seed=seed).images)


def tiny_composite(shift: int = 0) -> CompositeWorld:
    """Four classes of two photos each: a coloured blob on a noisy background."""
    gen = torch.Generator().manual_seed(0)
    images, masks, names = [], [], []
    for c, name in enumerate(["cow", "dog", "cat", "bus"]):
        for _ in range(2):
            image = torch.rand(3, 24, 20, generator=gen) * 0.3
            mask = torch.zeros(1, 24, 20)
            mask[:, 4:20, 3:17] = 1
            image[(c + shift) % 3] += mask[0] * 0.6
            images.append(image.clamp(0, 1))
            masks.append(mask)
            names.append(name)
    return CompositeWorld.from_arrays(images, masks, names, image_size=32, objects_per_image=2)


# ---------------------------------------------------------------------------------------------
# config and command line


def test_pseudo_masks_are_allowed_on_a_generated_world_and_the_pool_is_checked() -> None:
    assert config_of().pseudo_pool is None and config_of(pseudo_pool=7).pseudo_pool == 7
    for bad in (0, -3, 2.5, True):
        with pytest.raises(CosegValueError, match=r"pseudo_pool must be a positive integer.*\(--pseudo-pool\)"):
            config_of(pseudo_pool=bad)
    with pytest.raises(CosegValueError, match=r"--pseudo-pool.*dataset 'folder' trains on its own images") as err:
        TrainConfig(dataset="folder", root="photos", pseudo_masks="zero-shot", pseudo_pool=10)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(CosegValueError, match=r"--pseudo-pool.*--pseudo-masks zero-shot"):
        TrainConfig(**{**TINY, "pseudo_pool": 10})
    with pytest.raises(CosegValueError, match=r"--class-oracle.*--pseudo-masks.*one or the other"):
        config_of(class_oracle=True)
    config = config_of(pseudo_pool=9)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in config.to_dict().items() if k != "pseudo_pool"}  # a config.json from before
    assert TrainConfig.from_dict(old).pseudo_pool is None


def test_cli_pseudo_pool_flag(tmp_path, capsys) -> None:
    from cosegkit.cli import _config_from_args, build_parser, main
    from tests.engine.test_trainer import TINY_ARGS

    parsed = _config_from_args(
        build_parser().parse_args(["train", "--pseudo-masks", "zero-shot", "--pseudo-pool", "12"])
    )
    assert (parsed.dataset, parsed.pseudo_masks, parsed.pseudo_pool) == ("synthetic", "zero-shot", 12)
    assert _config_from_args(build_parser().parse_args(["train"])).pseudo_pool is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--pseudo-pool", "0"])
    capsys.readouterr()
    folder = ["train", "--dataset", "folder", "--root", str(tmp_path), "--pseudo-masks", "zero-shot",
              "--pseudo-pool", "4", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(folder) == 2
    err = capsys.readouterr().err.strip()
    assert "--pseudo-pool" in err and len(err.splitlines()) == 1

    # a synthetic run on pseudo masks from the command line: a pool of 3 sets for 2 steps of 2
    run = tmp_path / "cli"
    argv = ["train", *TINY_ARGS, "--pseudo-masks", "zero-shot", "--pseudo-background", "grass", "sky",
            "--pseudo-pool", "3", "--steps", "2", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["pseudo_pool"] == 3
    (cache,) = (run / "pseudo_masks").iterdir()
    classes = json.loads((cache / "classes.json").read_text())
    assert classes["sets"] == 3 and len(classes["per_set"]) == 3 and sum(classes["chosen"].values()) == 3
    assert json.loads((run / "eval.json").read_text())["images"] == 12  # scored on held-out ground truth


# ---------------------------------------------------------------------------------------------
# the pool's labels


@pytest.mark.parametrize("rule", ["adaptive", "fixed"])
def test_pool_labels_equal_a_direct_zero_shot_call(tmp_path, rule) -> None:
    extra = {"zero_shot": {"box_threshold": 0.5, "image_size": 48}}
    config = config_of(pseudo_rule=rule, pseudo_low=0.3, pseudo_high=0.5, pseudo_pool=4, extra=extra)
    world = config.world()
    clip = clip_for(world)
    pool = prepare_pseudo_pool(config, world, clip, tmp_path / "pseudo_masks")
    sets = build_train_sets(config, length=8, pseudo_masks=pool)
    assert isinstance(sets, PseudoWorldSets)
    zs = ZeroShotCoseg(clip, classnames=world.class_names, **zero_shot_settings(config))
    assert zs.image_size == 48 and zs.box_threshold == 0.5 and zs.background == ("grass", "sky")
    key = json.loads((pool.folder / "key.json").read_text())
    assert key["prompts"]["classnames"] == world.class_names and key["sets"]["world_fingerprint"] == world.fingerprint()
    for i in range(4):
        images = world.sample_set(config.set_size, seed=(config.seed, i)).images
        out = zs(images[None])
        stored = out.probs[0, :, 0].clamp(0, 1).mul(255).round() / 255  # the cache keeps round(255 p)
        assert torch.equal(pool.probs(i), stored)
        assert pool.classes[i]["index"] == int(out.common_class[0])  # the zero-shot model's own choice
        assert pool.classes[i]["class"] == world.class_names[pool.classes[i]["index"]]
        expected = [pseudo_targets(p, 0.3, 0.5, rule=rule, margin=config.pseudo_margin) for p in stored]
        for item in (sets[i], sets[i + 4]):  # item i + 4 is set i again
            assert torch.equal(item["images"], images)
            assert torch.equal(item["masks"][:, 0], torch.stack([t for t, _ in expected]))
            assert torch.equal(item["weights"][:, 0], torch.stack([w for _, w in expected]))
            assert int(item["group"]) == i and bool(item["valid"].all())


def test_no_ground_truth_reaches_the_pool_or_the_items(tmp_path) -> None:
    """The world's sets with their masks and target removed give the same pool and items."""
    config = config_of(pseudo_pool=3)
    world = config.world()
    clip = clip_for(world)
    blind = prepare_pseudo_pool(config, ImagesOnly(world), clip, tmp_path / "blind")
    seeing = prepare_pseudo_pool(config, world, clip, tmp_path / "seeing")
    assert blind.key == seeing.key and blind.classes == seeing.classes
    blind_sets = build_train_sets(config, length=3, pseudo_masks=blind)
    seeing_sets = build_train_sets(config, length=3, pseudo_masks=seeing)
    for i in range(3):
        a, b = blind_sets[i], seeing_sets[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert int(a["group"]) == i and "target" not in a  # the pool index, not the target class


def test_training_reads_no_ground_truth(tmp_path, monkeypatch) -> None:
    """A run whose world hides its masks and targets trains exactly as one whose world shows them."""
    import cosegkit.engine.trainer as trainer
    from cosegkit.losses import lcco

    seen = []
    original_loss = lcco.LCCoLoss.forward

    def spy(self, output, masks, class_targets=None, *, weight=None):
        seen.append((masks.clone(), weight))
        return original_loss(self, output, masks, class_targets, weight=weight)

    monkeypatch.setattr(lcco.LCCoLoss, "forward", spy)
    monkeypatch.setattr(trainer, "_can_evaluate", lambda config, dist: False)  # the evaluation reads truth
    config = config_of(steps=3, checkpoint_every=3)
    train(config, tmp_path / "seeing", progress=False)
    original_world = TrainConfig.world
    monkeypatch.setattr(TrainConfig, "world", lambda self: ImagesOnly(original_world(self)))
    train(config, tmp_path / "blind", progress=False)
    a, b = weights(tmp_path / "seeing"), weights(tmp_path / "blind")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(seen) == 6 and all(w is not None and w.shape == m.shape for m, w in seen)
    pool = next((tmp_path / "blind" / "pseudo_masks").iterdir())
    assert json.loads((pool / "classes.json").read_text())["sets"] == 6  # steps x batch_size


# ---------------------------------------------------------------------------------------------
# cache, resume, determinism


def test_the_pool_is_cached_and_reused_on_resume(tmp_path, zs_calls, caplog) -> None:
    config = config_of(steps=3, checkpoint_every=1)
    run = tmp_path / "run"
    train(config, run, progress=False)
    assert len(zs_calls) == 6 and set(zs_calls) == {config.set_size}  # one pass per set of the pool
    whole = weights(run)
    (cache,) = (run / "pseudo_masks").iterdir()
    files = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    assert list(files) == ["sets_00000000.safetensors"]

    # kill the last step: the resumed run computes no map and ends where the whole run ended
    find_checkpoints(run / "checkpoints")[-1].unlink()
    shutil.rmtree(run / "model")
    with caplog.at_level(logging.INFO, logger="cosegkit.engine.pseudo"):
        train(None, run, resume=True, progress=False)
    assert len(zs_calls) == 6 and "reused the cached maps of 6 generated set(s)" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")} == files
    resumed = weights(run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_what_defines_the_pool_is_in_its_key(tmp_path, zs_calls, monkeypatch) -> None:
    monkeypatch.setattr(pseudo_module, "POOL_FILE_SETS", 4)
    config = config_of()
    world = config.world()
    clip = clip_for(world)
    root = tmp_path / "pseudo_masks"
    first = prepare_pseudo_pool(config, world, clip, root, size=6)
    assert first.computed == list(range(6)) and sorted(p.name for p in first.folder.glob("*.safetensors")) == [
        "sets_00000000.safetensors",
        "sets_00000004.safetensors",
    ]
    # a larger pool keeps the whole files of the smaller one: sets 0-3 are not computed again
    assert prepare_pseudo_pool(config, world, clip, root, size=10).computed == list(range(4, 10))
    assert prepare_pseudo_pool(config, world, clip, root, size=10).computed == []
    # a damaged file is computed again, and only it
    (first.folder / "sets_00000004.safetensors").write_bytes(b"truncated")
    assert prepare_pseudo_pool(config, world, clip, root, size=10).computed == [4, 5, 6, 7]
    # the thresholds are applied when loading: the same key
    assert prepare_pseudo_pool(config_of(pseudo_rule="fixed"), world, clip, root, size=10).key == first.key
    calls = len(zs_calls)
    others = {
        "seed": config_of(seed=1),
        "set size": config_of(set_size=2),
        "world": config_of(world_seed=5),
        "prompts": config_of(pseudo_background=["grass", "road"]),
        "zero-shot settings": config_of(extra={"zero_shot": {"box_threshold": 0.6}}),
    }
    keys = {first.key}
    for what, other in others.items():
        pool = prepare_pseudo_pool(other, other.world(), clip_for(other.world()), root, size=2)
        assert pool.computed == [0, 1], what
        keys.add(pool.key)
    assert len(keys) == len(others) + 1 and len(zs_calls) == calls + 2 * len(others)
    other_clip = prepare_pseudo_pool(config, world, clip_for(world, seed=1), root, size=2)
    assert other_clip.key not in keys and other_clip.computed == [0, 1]


def test_items_are_deterministic_and_the_ground_truth_runs_sets(tmp_path) -> None:
    config = config_of(pseudo_pool=5)
    world = config.world()
    pool = prepare_pseudo_pool(config, world, clip_for(world), tmp_path / "a")
    again = prepare_pseudo_pool(config, config.world(), clip_for(world), tmp_path / "b")
    sets, other = build_train_sets(config, 12, pseudo_masks=pool), build_train_sets(config, 12, pseudo_masks=again)
    truth = SyntheticTrainSets(world, config.set_size, 12, seed=config.seed)  # the items of a run on the world's masks
    for i in (0, 3, 4, 5, 11):
        a, b = sets[i], other[i]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(a["images"], truth[i % 5]["images"])
    assert not torch.equal(sets[5]["images"], truth[5]["images"])  # item 5 is set 0 again, not a new set
    copied = pickle.loads(pickle.dumps(sets))  # as data-loader workers receive the sets
    assert all(torch.equal(copied[7][k], sets[7][k]) for k in sets[7])
    with pytest.raises(IndexError):
        sets[12]
    with pytest.raises(CosegValueError, match="prepare_pseudo_pool"):
        build_train_sets(config, 4)
    with pytest.raises(CosegValueError, match="sets of 2"):
        build_train_sets(config_of(set_size=2), 4, pseudo_masks=pool)


# ---------------------------------------------------------------------------------------------
# a world of real object cut-outs


def test_a_composite_world_pool(tmp_path) -> None:
    world = tiny_composite()
    config = config_of(pseudo_pool=3, extra={"zero_shot": {"synonyms": {}}})
    clip = clip_for(world)
    pool = prepare_pseudo_pool(config, ImagesOnly(world), clip, tmp_path / "pseudo_masks")
    key = json.loads((pool.folder / "key.json").read_text())
    assert key["prompts"]["classnames"] == ["cow", "dog", "cat", "bus"]
    assert key["sets"]["world_fingerprint"] == world.fingerprint()
    zs = ZeroShotCoseg(clip, classnames=world.class_names, **zero_shot_settings(config))
    sets = PseudoWorldSets(pool, 3, config.pseudo_low, config.pseudo_high, rule="adaptive", margin=0.1)
    for i in range(3):
        images = world.sample_set(config.set_size, seed=(config.seed, i)).images
        out = zs(images[None])
        stored = out.probs[0, :, 0].clamp(0, 1).mul(255).round() / 255
        assert torch.equal(pool.probs(i), stored) and pool.classes[i]["index"] == int(out.common_class[0])
        item = sets[i]
        assert torch.equal(item["images"], images)
        expected = torch.stack([pseudo_targets(p, 0, 1, rule="adaptive", margin=0.1)[0] for p in stored])
        assert torch.equal(item["masks"][:, 0], expected)
    # another world of the same classes and settings but other pixels: another key
    recoloured = tiny_composite(shift=1)
    assert prepare_pseudo_pool(config, recoloured, clip, tmp_path / "pseudo_masks", size=1).key != pool.key


def test_pool_probs_refuse_a_set_outside_the_pool(tmp_path) -> None:
    config = config_of(pseudo_pool=2)
    pool = prepare_pseudo_pool(config, config.world(), clip_for(config.world()), tmp_path)
    assert isinstance(pool, PseudoPool) and pool.probs(1).shape == (config.set_size, 32, 32)
    with pytest.raises(IndexError, match="out of range for a pool of 2"):
        pool.probs(2)


@pytest.mark.slow
def test_ddp_shares_out_the_pool(tmp_path) -> None:
    import subprocess
    import sys

    from tests.engine.test_trainer import TINY_ARGS, cli_env

    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "cosegkit", "train", *TINY_ARGS, "--pseudo-masks", "zero-shot", "--pseudo-background", "grass", "sky",
        "--pseudo-pool", "70", "--steps", "2", "--out", str(run),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "ddp.json").read_text())
    assert report["world"] == 2 and report["checksums"][0] == report["checksums"][1]
    (cache,) = (run / "pseudo_masks").iterdir()
    assert sorted(p.name for p in cache.glob("*.safetensors")) == [
        "sets_00000000.safetensors",  # rank 0's file
        "sets_00000064.safetensors",  # rank 1's
    ]
    classes = json.loads((cache / "classes.json").read_text())
    assert classes["sets"] == 70 and len(classes["per_set"]) == 70
    # one process alone finds the same pool in the cache
    from cosegkit.engine import build_model

    config = TrainConfig.load(run / "config.json")
    clip = build_model(config).clip  # the run's CLIP
    pool = prepare_pseudo_pool(config, config.world(), clip, run / "pseudo_masks")
    assert pool.folder == cache and pool.computed == [] and pool.classes == classes["per_set"]


def test_a_composite_run_trains_on_its_pool_and_reads_no_ground_truth(tmp_path, monkeypatch) -> None:
    """``--dataset composite``: the pool of the world of the training photos, labelled without its truth."""
    import cosegkit.engine.trainer as trainer
    from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset

    root = tmp_path / "photos"
    write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, objects_per_image=2, seed=3), root, 6)
    settings = {k: v for k, v in PSEUDO.items() if k not in ("dataset", "world_classes")}
    config = TrainConfig(**{**settings, "dataset": "composite", "root": str(root), "reader": "folder", "steps": 2})
    monkeypatch.setattr(trainer, "_can_evaluate", lambda config, dist: False)  # the evaluation reads truth
    train(config, tmp_path / "seeing", progress=False)
    original_world = TrainConfig.world
    monkeypatch.setattr(TrainConfig, "world", lambda self: ImagesOnly(original_world(self)))
    train(config, tmp_path / "blind", progress=False)
    a, b = weights(tmp_path / "seeing"), weights(tmp_path / "blind")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (cache,) = (tmp_path / "blind" / "pseudo_masks").iterdir()
    key = json.loads((cache / "key.json").read_text())
    world = original_world(config)  # the world of the training photos
    assert key["sets"]["world_fingerprint"] == world.fingerprint()
    assert key["prompts"]["classnames"] == world.class_names
    assert json.loads((cache / "classes.json").read_text())["sets"] == 4  # steps x batch_size
