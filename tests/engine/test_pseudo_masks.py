"""Training without masks: zero-shot pseudo masks, their cache, and a trainer that reads no ground truth."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from cosegkit.clip import FrozenClip
from cosegkit.data import Group, TrainSets
from cosegkit.data.sampling import Augmentation
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.data.types import DataError
from cosegkit.engine import TrainConfig, find_checkpoints, train
from cosegkit.engine.config import build_train_sets, labelled_eval_groups, train_groups
from cosegkit.engine.pseudo import (
    PseudoMaskLoader,
    PseudoTrainSets,
    build_zero_shot,
    prepare_pseudo_masks,
    pseudo_targets,
)
from cosegkit.errors import CosegValueError
from cosegkit.zeroshot import ZeroShotCoseg
from cosegkit.zeroshot.coseg import ZeroShotOutput
from cosegkit.zeroshot.groups import segment_group
from tests.engine.test_trainer import TINY, weights

PSEUDO = dict(TINY, dataset="folder", pseudo_masks="zero-shot", pseudo_background=["grass", "sky"], extra={})


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The same images three ways: with true masks, without masks, with deliberately wrong masks."""
    base = tmp_path_factory.mktemp("pseudo")
    world = SyntheticWorld(num_classes=5, image_size=32, seed=3)
    write_folder_dataset(world, base / "labelled", images_per_group=4)
    shutil.copytree(base / "labelled" / "images", base / "bare" / "images")
    shutil.copytree(base / "labelled", base / "wrong")
    for mask in (base / "wrong" / "masks").rglob("*.png"):  # the inverse of the truth
        Image.eval(Image.open(mask), lambda v: 255 - v).save(mask)
    return {"labelled": base / "labelled", "bare": base / "bare", "wrong": base / "wrong"}


def group_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "images").iterdir())


def config_for(root: Path, **kwargs) -> TrainConfig:
    return TrainConfig(**{**PSEUDO, "root": str(root), **kwargs})


@pytest.fixture
def zs_calls(monkeypatch) -> list[dict]:
    """Every ZeroShotCoseg forward call: its set size and class_name."""
    calls: list[dict] = []
    original = ZeroShotCoseg.forward

    def counted(self, images, valid=None, *, class_name=None):
        calls.append({"n": images.shape[1], "class_name": class_name})
        return original(self, images, valid, class_name=class_name)

    monkeypatch.setattr(ZeroShotCoseg, "forward", counted)
    return calls


def tiny_clip(seed: int = 0) -> FrozenClip:
    torch.manual_seed(seed)
    return FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "car", "boat"])


# ---------------------------------------------------------------------------------------------
# config and reading


def test_config_checks_the_pseudo_settings() -> None:
    with pytest.raises(CosegValueError, match="pseudo_masks must be"):
        TrainConfig(dataset="folder", root="x", pseudo_masks="clip-es")
    with pytest.raises(CosegValueError, match="pseudo_low <= pseudo_high"):
        TrainConfig(dataset="folder", root="x", pseudo_masks="zero-shot", pseudo_low=0.7, pseudo_high=0.6)
    with pytest.raises(CosegValueError, match="exactly one"):
        TrainConfig(dataset="folder", root="x", pseudo_masks="zero-shot", pseudo_templates=["a photo"])
    with pytest.raises(CosegValueError, match="pseudo_rule must be"):
        TrainConfig(dataset="folder", root="x", pseudo_masks="zero-shot", pseudo_rule="otsu")
    with pytest.raises(CosegValueError, match=r"pseudo_margin must be in \[0, 1\)"):
        TrainConfig(dataset="folder", root="x", pseudo_masks="zero-shot", pseudo_rule="adaptive", pseudo_margin=-0.1)
    config = TrainConfig(dataset="folder", root="x", pseudo_masks="zero-shot", pseudo_templates=["a {} here"])
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in config.to_dict().items() if not k.startswith("pseudo")}  # a config.json from before
    assert TrainConfig.from_dict(old).pseudo_masks is None


def test_a_maskless_folder_needs_pseudo_masks(folders, tmp_path) -> None:
    with pytest.raises(DataError, match=r"have none.*--pseudo-masks zero-shot"):
        train_groups(TrainConfig(**{**TINY, "dataset": "folder", "root": str(folders["bare"]), "extra": {}}))
    partial = tmp_path / "partial"  # masks/ for some groups only
    shutil.copytree(folders["labelled"], partial)
    shutil.rmtree(partial / "masks" / group_names(partial)[0])
    with pytest.raises(DataError, match=r"no mask.*--pseudo-masks zero-shot"):
        train_groups(TrainConfig(**{**TINY, "dataset": "folder", "root": str(partial), "extra": {}}))
    for root in (folders["bare"], partial, folders["wrong"]):
        groups = train_groups(config_for(root))
        assert [g.name for g in groups] == group_names(root) and all(g.masks is None for g in groups)
    # the held-out evaluation takes the masks it finds
    groups, unlabelled = labelled_eval_groups(config_for(partial), group_names(partial)[:2])
    assert [g.name for g in groups] == group_names(partial)[1:2] and unlabelled == group_names(partial)[:1]
    assert labelled_eval_groups(config_for(folders["bare"]), group_names(partial)[:2])[0] == []


# ---------------------------------------------------------------------------------------------
# the group's class


def _fake_forward(self, images, valid=None, *, class_name=None):
    """Dark images prefer class 0 a little, bright ones class 1 a lot; the maps tell the class used."""
    b, n = images.shape[:2]
    bright = images.mean(dim=(2, 3, 4)) > 0.5  # (b, n)
    per_image = torch.zeros(b, n, len(self.classnames))
    per_image[..., 0] = (~bright).float()
    per_image[..., 1] = 10.0 * bright.float()
    scores = per_image.sum(dim=1)
    common = scores.argmax(dim=-1) if class_name is None else torch.full((b,), self.class_index(class_name))
    probs = (0.1 * (common.float() + 1)).view(b, 1, 1, 1, 1).expand(b, n, 1, *images.shape[-2:])
    grid = torch.zeros(b, n, 2, 2)
    return ZeroShotOutput(probs, common, scores, grid, grid, torch.ones(b, n, dtype=torch.bool))


def test_the_class_is_decided_from_the_whole_group(monkeypatch) -> None:
    calls = []

    def fake(self, images, valid=None, *, class_name=None):
        calls.append(class_name)
        return _fake_forward(self, images, valid, class_name=class_name)

    monkeypatch.setattr(ZeroShotCoseg, "forward", fake)
    zs = ZeroShotCoseg(tiny_clip(), background=["sky"])
    # chunks of 4: the first chunk alone says class 0 (cat), the second class 1; the group says class 1 (dog)
    images = [torch.full((3, 8, 8), 0.2)] * 6 + [torch.full((3, 8, 8), 0.8)] * 2
    group = segment_group(zs, images, chunk_size=4)
    assert group.class_name == "dog" and group.class_scores[:2].tolist() == [6.0, 20.0]
    assert calls == [None, None, "dog"]  # the first chunk ran again with the group's class
    assert group.rerun == 4 and torch.allclose(group.probs, torch.full_like(group.probs, 0.2))  # all dog's maps


def test_segment_group_equals_one_pass_over_the_group() -> None:
    zs = ZeroShotCoseg(tiny_clip(), background=["grass", "sky"])
    images = list(torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    whole = zs(torch.stack(images)[None])
    for chunk in (1, 2, 5):
        group = segment_group(zs, images, chunk_size=chunk)
        assert group.class_index == int(whole.common_class[0])
        assert torch.allclose(group.probs, whole.probs[0], atol=1e-5)
        assert torch.allclose(group.class_scores.float(), whole.class_scores[0], atol=1e-4)
    stored = segment_group(zs, images, chunk_size=2, dtype=torch.uint8).probs
    assert stored.dtype == torch.uint8 and (stored.float() / 255 - whole.probs[0]).abs().max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------------------------
# the cache


def test_the_cache_is_written_once_reused_and_invalidated(folders, tmp_path, zs_calls) -> None:
    config = config_for(folders["bare"])
    groups = train_groups(config)
    clip = tiny_clip()
    cache = tmp_path / "pseudo_masks"
    store = prepare_pseudo_masks(config, groups, clip, cache)
    first = len(zs_calls)
    assert first >= len(groups) and sorted(store.computed) == sorted(g.name for g in groups)
    folder = cache / store.key
    files = sorted(p.name for p in folder.iterdir())
    assert "key.json" in files and "classes.json" in files and len(files) == len(groups) + 2
    classes = json.loads((folder / "classes.json").read_text())
    assert set(classes) == {g.name for g in groups}
    assert all(c["class"] in clip.classnames and c["images"] == 4 for c in classes.values())
    description = json.loads((folder / "key.json").read_text())
    assert description["image_size"] == 32 and description["prompts"]["background"] == ["grass", "sky"]

    # the stored maps are the zero-shot maps of the group's class, at the training size
    zs = build_zero_shot(config, clip)
    group = groups[0]
    expected = segment_group(zs, [store_image(group, i) for i in range(len(group))]).probs[:, 0]
    got = torch.stack([store.probs(group.name, i) for i in range(len(group))])
    assert got.shape == (4, 32, 32) and (got - expected).abs().max() <= 0.5 / 255 + 1e-6

    # the same settings again: nothing computed
    zs_calls.clear()
    again = prepare_pseudo_masks(config, groups, clip, cache)
    assert zs_calls == [] and again.computed == [] and again.key == store.key
    # thresholds are applied when loading: the same maps, other labels
    looser = prepare_pseudo_masks(dataclasses.replace(config, pseudo_low=0.05, pseudo_high=0.95), groups, clip, cache)
    assert zs_calls == [] and looser.key == store.key

    # the CLIP, the prompts, the zero-shot settings or the image size: computed afresh under another key
    torch.manual_seed(0)  # the same weights as tiny_clip(), another vocabulary
    other_vocabulary = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog", "bus"])
    changes = {
        "another CLIP": (config, tiny_clip(seed=1)),
        "another weights tag": (dataclasses.replace(config, clip_pretrained="my-weights"), clip),
        "templates": (dataclasses.replace(config, pseudo_templates=["a photo of a {}."]), clip),
        "background": (dataclasses.replace(config, pseudo_background=["grass", "sky", "road"]), clip),
        "box threshold": (dataclasses.replace(config, extra={"zero_shot": {"box_threshold": 0.6}}), clip),
        "vocabulary": (config, other_vocabulary),
        "image size": (dataclasses.replace(config, image_size=24), clip),
    }
    keys = {store.key}
    for what, (changed, changed_clip) in changes.items():
        zs_calls.clear()
        other = prepare_pseudo_masks(changed, groups, changed_clip, cache)
        assert len(zs_calls) >= len(groups) and len(other.computed) == len(groups), what
        assert other.key not in keys, what
        keys.add(other.key)
    assert (cache / store.key / "classes.json").is_file()  # the first cache is still there

    # a group whose images changed is recomputed, the others are not
    renamed = dataclasses.replace(groups[0], images=groups[0].images[:3])
    zs_calls.clear()
    partly = prepare_pseudo_masks(config, [renamed, *groups[1:]], clip, cache)
    assert partly.computed == [renamed.name] and sum(c["n"] for c in zs_calls) >= 3


def store_image(group: Group, index: int) -> torch.Tensor:
    from cosegkit.data.io import load_image
    from cosegkit.data.sampling import _resize_pair

    return _resize_pair(load_image(group.images[index]), None, 32)[0]


def test_pseudo_labels_follow_the_augmentation_like_a_mask() -> None:
    """The label and its weight are transformed exactly as a ground-truth mask would be."""
    g = torch.Generator().manual_seed(0)
    maps = {i: torch.rand(8, 8, generator=g) for i in range(3)}
    image = lambda group, index: torch.rand(3, 20, 28, generator=torch.Generator().manual_seed(index))  # noqa: E731
    store = type("Store", (), {"probs": lambda self, group, index: maps[index]})()
    pseudo = PseudoMaskLoader(store, low=0.3, high=0.6, image=image)

    def as_mask(channel: int):
        return lambda group, index: (image(group, index), pseudo(group, index)[1][channel : channel + 1])

    groups = [Group("g", ("a", "b", "c"), None)]
    kwargs = dict(set_size=4, image_size=16, length=3, augment=Augmentation(), seed=7, require_masks=False)
    sets = PseudoTrainSets(TrainSets(groups, loader=pseudo, **kwargs))
    labels = TrainSets(groups, loader=as_mask(0), **kwargs)
    confident = TrainSets(groups, loader=as_mask(1), **kwargs)
    for i in range(3):
        item = sets[i]
        assert torch.equal(item["masks"], labels[i]["masks"]) and torch.equal(item["weights"], confident[i]["masks"])
        assert torch.equal(item["images"], labels[i]["images"])
        assert item["masks"].shape == (4, 1, 16, 16) and not item["weights"][3].any()  # padding weighs 0
        assert torch.all(item["weights"][item["masks"] == 1] == 1)  # object pixels are confident
    target, weight = pseudo_targets(maps[0], 0.3, 0.6)
    assert torch.equal(target, (maps[0] >= 0.6).float())
    assert torch.equal(weight, ((maps[0] >= 0.6) | (maps[0] <= 0.3)).float())


def test_build_train_sets_needs_the_store(folders) -> None:
    with pytest.raises(CosegValueError, match="prepare_pseudo_masks"):
        build_train_sets(config_for(folders["bare"]), length=2)


# ---------------------------------------------------------------------------------------------
# the trainer


def test_training_never_reads_a_ground_truth_mask(folders, tmp_path, monkeypatch) -> None:
    """Wrong masks in the folder give exactly the training of no masks; no mask file is opened."""
    import cosegkit.data.io as io

    def refuse(*args, **kwargs):
        raise AssertionError("a ground-truth mask was read during training")

    monkeypatch.setattr(io, "load_mask", refuse)
    monkeypatch.setattr(io, "load_pair", refuse)
    monkeypatch.setattr(io, "coco_mask", refuse)
    runs = {}
    for name in ("bare", "wrong"):
        config = config_for(folders[name], steps=3, checkpoint_every=3)
        result = train(config, tmp_path / name, progress=False)
        assert result.evaluation is None and not (tmp_path / name / "eval.json").exists()
        runs[name] = tmp_path / name
    a, b = weights(runs["bare"]), weights(runs["wrong"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x) for x in (runs["bare"] / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (runs["wrong"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["total"] for r in la] == [r["total"] for r in lb]

    # the true masks do not change it either
    monkeypatch.undo()
    train(config_for(folders["labelled"], steps=3, checkpoint_every=3), tmp_path / "labelled", progress=False)
    c = weights(tmp_path / "labelled")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_the_pseudo_labels_reach_the_loss(folders, tmp_path, monkeypatch) -> None:
    from cosegkit.losses import lcco

    seen = []
    original = lcco.LCCoLoss.forward

    def spy(self, output, masks, class_targets=None, *, weight=None):
        seen.append((masks.clone(), None if weight is None else weight.clone(), output.class_targets))
        return original(self, output, masks, class_targets, weight=weight)

    monkeypatch.setattr(lcco.LCCoLoss, "forward", spy)
    config = config_for(folders["bare"], steps=2, checkpoint_every=2, pseudo_low=0.3, pseudo_high=0.5)
    train(config, tmp_path / "run", progress=False)
    assert len(seen) == 2
    for masks, weight, targets in seen:
        assert weight is not None and weight.shape == masks.shape
        assert set(masks.unique().tolist()) <= {0.0, 1.0} and set(weight.unique().tolist()) <= {0.0, 1.0}
        assert torch.all(weight[masks == 1] == 1)  # object pixels are confident
        assert targets is not None  # eq. (12) from the binary pseudo masks


def test_cli_trains_on_images_only_and_resume_reuses_the_cache(folders, tmp_path, capsys, zs_calls) -> None:
    from cosegkit.cli import _config_from_args, build_parser, main
    from tests.test_cli import MODEL_ARGS

    root = folders["bare"]
    names = group_names(root)
    data = ["--dataset", "folder", "--root", str(root), "--classes", *names[:3], "--image-size", "32",
            "--set-size", "3", "--batch-size", "2"]  # fmt: skip
    run = tmp_path / "run"
    # without --pseudo-masks: a one-line error that suggests them
    assert main(["train", *data, *MODEL_ARGS, "--steps", "2", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--pseudo-masks zero-shot" in err and len(err.splitlines()) == 1

    argv = ["train", "--pseudo-masks", "zero-shot", "--pseudo-background", "grass", "sky", *data, *MODEL_ARGS,
            "--eval-classes", *names[3:], "--steps", "2", "--checkpoint-every", "1", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "-> class" in captured.err and "skipping the held-out evaluation" in captured.err
    assert "held-out evaluation" not in captured.out and not (run / "eval.json").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["pseudo_masks"] == "zero-shot" and config["pseudo_background"] == ["grass", "sky"]
    (cache,) = (run / "pseudo_masks").iterdir()
    assert set(json.loads((cache / "classes.json").read_text())) == set(names[:3])
    computed = len(zs_calls)
    assert computed >= 3

    # kill the last step: resume redoes it from the cache, and ends where the whole run ended
    whole = weights(run)
    find_checkpoints(run / "checkpoints")[-1].unlink()
    shutil.rmtree(run / "model")
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert len(zs_calls) == computed and "reused the cached maps" in capsys.readouterr().err
    resumed = weights(run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)

    # the flags reach the config
    flags = ["train", *data, "--pseudo-masks", "zero-shot", "--pseudo-low", "0.2", "--pseudo-high", "0.7",
             "--pseudo-templates", "a photo of a {}.", "a {}"]  # fmt: skip
    parsed = _config_from_args(build_parser().parse_args(flags))
    assert (parsed.pseudo_masks, parsed.pseudo_low, parsed.pseudo_high) == ("zero-shot", 0.2, 0.7)
    assert parsed.pseudo_templates == ["a photo of a {}.", "a {}"] and parsed.pseudo_background is None
    assert (parsed.pseudo_rule, parsed.pseudo_margin) == ("adaptive", 0.1)
    parsed = _config_from_args(build_parser().parse_args([*flags, "--pseudo-rule", "fixed", "--pseudo-margin", "0"]))
    assert (parsed.pseudo_rule, parsed.pseudo_margin) == ("fixed", 0.0)


def test_the_adaptive_rule_labels_by_each_maps_own_threshold() -> None:
    from cosegkit.engine.pseudo import pseudo_targets
    from cosegkit.metrics import thresholds

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        probs = torch.rand(9, 11, generator=gen) ** 3
        t = float(thresholds(probs, "ssnm"))
        target, weight = pseudo_targets(probs, 0.25, 0.55, rule="adaptive")
        assert torch.equal(target, (probs >= t).float()) and bool((weight == 1).all())
        target, weight = pseudo_targets(probs, 0.25, 0.55, rule="adaptive", margin=0.1)
        assert torch.equal(target, (probs >= t + 0.1).float())
        assert torch.equal(weight, ((probs >= t + 0.1) | (probs <= t - 0.1)).float())
    with pytest.raises(CosegValueError, match="unknown pseudo-mask rule"):
        pseudo_targets(probs, 0.25, 0.55, rule="otsu")


def test_a_model_without_clip_modules_trains_on_the_configs_clip(folders, tmp_path) -> None:
    off = dict(use_correspondence=False, use_interaction=False, use_regularization=False)
    result = train(config_for(folders["bare"], steps=1, checkpoint_every=1, **off), tmp_path / "base", progress=False)
    (cache,) = (result.run_dir / "pseudo_masks").iterdir()
    assert json.loads((cache / "key.json").read_text())["clip"]["model"] == "coseg-test-tiny"
    assert len(json.loads((cache / "classes.json").read_text())) == len(group_names(folders["bare"]))


@pytest.mark.slow
def test_ddp_shares_out_the_pseudo_masks(folders, tmp_path) -> None:
    import subprocess
    import sys

    from tests.engine.test_trainer import cli_env
    from tests.test_cli import MODEL_ARGS

    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "cosegkit", "train", "--pseudo-masks", "zero-shot", "--pseudo-background", "grass", "sky",
        "--dataset", "folder", "--root", str(folders["bare"]), "--image-size", "32", "--set-size", "3",
        "--batch-size", "2", *MODEL_ARGS, "--steps", "2", "--out", str(run),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "ddp.json").read_text())
    assert report["world"] == 2 and report["checksums"][0] == report["checksums"][1]
    (cache,) = (run / "pseudo_masks").iterdir()
    classes = json.loads((cache / "classes.json").read_text())
    assert set(classes) == set(group_names(folders["bare"])) and all(c["class"] for c in classes.values())
    assert len(list(cache.glob("*.safetensors"))) == len(classes)
