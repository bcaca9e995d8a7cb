"""The small CLIP pre-trained on the synthetic world: caching, loading, registration."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from cosegkit.clip import FrozenClip
from cosegkit.engine.pretrain import (
    SYNTHETIC_CLIP,
    SYNTHETIC_TEMPLATES,
    ClipPretrainConfig,
    pretrain_synthetic_clip,
    register_synthetic_clip,
    zero_shot_accuracy,
)
from cosegkit.errors import CosegValueError


def test_pretraining_is_cached_by_its_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    config = ClipPretrainConfig(num_classes=5, steps=2, batch_size=8)
    calls = []
    path = pretrain_synthetic_clip(config, progress=lambda s, n, loss: calls.append((s, n)))
    assert calls == [(1, 2), (2, 2)] and path.is_file() and path.with_suffix(".json").is_file()
    stamp = path.stat().st_mtime_ns
    assert pretrain_synthetic_clip(config, progress=lambda *a: calls.append(a)) == path  # reused, not retrained
    assert len(calls) == 2 and path.stat().st_mtime_ns == stamp
    other = pretrain_synthetic_clip(ClipPretrainConfig(num_classes=5, steps=3, batch_size=8))
    assert other != path  # other settings, other file

    register_synthetic_clip()
    world = config.world()
    clip = FrozenClip.from_name(
        SYNTHETIC_CLIP, pretrained=str(path), classnames=world.class_names, templates=SYNTHETIC_TEMPLATES
    )
    scores = zero_shot_accuracy(clip, world, sets=3, set_size=2)
    assert 0 <= scores["set_top1"] <= scores["set_top5"] <= 1 and scores["chance"] == pytest.approx(1 / 5)
    clip.set_vocabulary(list(reversed(world.class_names)))
    with pytest.raises(CosegValueError, match="vocabulary"):
        zero_shot_accuracy(clip, world)
    with pytest.raises(CosegValueError):
        pretrain_synthetic_clip(ClipPretrainConfig(steps=0))


def test_a_clip_pretrained_with_another_thread_count_is_not_reused(tmp_path, monkeypatch) -> None:
    """The weights depend on the thread count by float rounding, so each count has its own cached file."""
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    config = ClipPretrainConfig(num_classes=5, steps=2, batch_size=8)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pretrain_synthetic_clip(config)
        torch.set_num_threads(2)
        two = pretrain_synthetic_clip(config)
        torch.set_num_threads(1)
        again = pretrain_synthetic_clip(config)
    finally:
        torch.set_num_threads(previous)
    assert one != two and again == one
    assert one.name.endswith("-threads1.safetensors") and two.name.endswith("-threads2.safetensors")
    assert json.loads(one.with_suffix(".json").read_text())["threads"] == 1


def test_registering_from_many_processes_at_once(tmp_path) -> None:
    """Processes that start together (torchrun, a process pool) never read a half-written config."""
    code = "from cosegkit.engine.pretrain import register_synthetic_clip as r; r()"
    env = dict(os.environ, COSEGKIT_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in range(6)]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert [p.name for p in (tmp_path / "open_clip_configs").iterdir()] == [f"{SYNTHETIC_CLIP}.json"]


def test_cached_files_get_the_usual_mode(tmp_path) -> None:
    """0o666 minus the umask, as open() gives (tempfile.mkstemp and safetensors' save_file give 0o600)."""
    code = (
        "import os; os.umask(0o027)\n"
        "from cosegkit.engine.pretrain import ClipPretrainConfig, pretrain_synthetic_clip, register_synthetic_clip\n"
        "register_synthetic_clip(); pretrain_synthetic_clip(ClipPretrainConfig(num_classes=5, steps=1, batch_size=2))"
    )
    env = dict(os.environ, COSEGKIT_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    names = sorted(p.suffix for p in files)
    assert names == [".json", ".json", ".safetensors"], files  # the architecture, the weights and their notes
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in files} == dict.fromkeys(files, 0o640)


def test_the_clip_package_imports_neither_data_nor_engine() -> None:
    """Pre-training lives in the engine; nothing in ``cosegkit.clip`` imports data or training at import time."""
    import ast
    from pathlib import Path

    import cosegkit.clip

    offenders = []
    for path in Path(cosegkit.clip.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only: a lazy import in a function is fine
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("cosegkit.data", "cosegkit.engine"))]
    assert not offenders


def test_the_old_module_path_warns_and_forwards() -> None:
    import importlib

    from cosegkit.engine import pretrain

    old = importlib.import_module("cosegkit.clip.pretrain")
    with pytest.warns(DeprecationWarning, match="cosegkit.engine.pretrain"):
        assert old.pretrain_synthetic_clip is pretrain.pretrain_synthetic_clip
    with pytest.warns(DeprecationWarning), pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


class _MultiHotWorld:
    """A world whose image ``k`` carries a multi-hot vector of its classes in its first pixel row."""

    def __init__(self, num_classes: int, presents: list[list[list[int]]], targets: list[int]) -> None:
        self.class_names = [f"c{i}" for i in range(num_classes)]
        self.presents, self.targets = presents, targets

    def fingerprint(self) -> str:
        return "multi-hot"

    def sample_set(self, set_size: int, *, seed):
        import types

        import torch

        i = seed[-1]
        images = torch.zeros(set_size, 3, 8, 8)
        for k, present in enumerate(self.presents[i]):
            images[k, 0, 0, present] = 1.0
        return types.SimpleNamespace(images=images, target=self.targets[i], present_classes=self.presents[i])


class _ReadsFirstRow:
    """A CLIP stand-in: an image's embedding is its first pixel row, the class prompts the unit vectors."""

    def __init__(self, num_classes: int, wrong: bool = False) -> None:
        import torch

        self.classnames = [f"c{i}" for i in range(num_classes)]
        self.text_bank = torch.eye(num_classes)
        self.wrong = wrong

    def encode_images(self, images):
        rows = images[:, :, 0, 0, : len(self.classnames)]
        return 1 - rows if self.wrong else rows


def test_zero_shot_accuracy_counts_sets_and_images() -> None:
    presents = [[[0, 1], [0, 2], [3, 0]], [[2, 4], [4, 1], [0, 4]]]
    world = _MultiHotWorld(5, presents, targets=[0, 4])
    right = zero_shot_accuracy(_ReadsFirstRow(5), world, sets=2, set_size=3)
    assert right["set_top1"] == 1.0 and right["image_top1"] == 1.0
    assert right["chance"] == pytest.approx(1 / 5) and right["image_chance"] == pytest.approx(2 / 5)
    wrong = zero_shot_accuracy(_ReadsFirstRow(5, wrong=True), world, sets=2, set_size=3)
    assert wrong["set_top1"] == 0.0 and wrong["image_top1"] == 0.0


def test_composite_pretraining_is_keyed_by_the_worlds_content(tmp_path, monkeypatch) -> None:
    import json

    import torch

    from cosegkit.data.composite import CompositeWorld
    from cosegkit.engine.pretrain import COMPOSITE_CLIP, ClipRecipe, pretrain_clip, register_composite_clip

    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    masks = [torch.ones(16, 16)] * 8
    names = ["cat", "dog", "cow", "bus"] * 2
    world = CompositeWorld.from_arrays(images, masks, names, image_size=32, objects_per_image=2)
    recipe = ClipRecipe(COMPOSITE_CLIP, steps=1, batch_size=4)
    path = pretrain_clip(world, recipe)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["world"]["fingerprint"] == world.fingerprint() and meta["recipe"]["architecture"] == COMPOSITE_CLIP
    assert meta["world"]["classes"] == ["cat", "dog", "cow", "bus"]
    same = CompositeWorld.from_arrays(images, masks, names, image_size=32, objects_per_image=2)
    assert pretrain_clip(same, recipe) == path
    other_pixels = CompositeWorld.from_arrays(images[::-1], masks, names, image_size=32, objects_per_image=2)
    assert pretrain_clip(other_pixels, recipe) != path
    register_composite_clip()
    clip = FrozenClip.from_name(COMPOSITE_CLIP, pretrained=str(path), classnames=world.class_names,
                                templates=SYNTHETIC_TEMPLATES)
    assert type(clip.model.visual).__name__ == "ModifiedResNet"
    with pytest.raises(CosegValueError, match="captioned world"):
        pretrain_clip(object(), recipe)
    with pytest.raises(CosegValueError, match="architecture"):
        ClipRecipe("ViT-B-16")


def test_the_recipe_key_changes_with_every_setting_and_the_world() -> None:
    """Any field of the recipe, or another world, names another cache file; equal recipes share one."""
    from dataclasses import replace

    from cosegkit.data.synthetic import SyntheticWorld
    from cosegkit.engine.pretrain import COMPOSITE_CLIP, ClipRecipe

    world = SyntheticWorld(num_classes=5, image_size=32)
    recipe = ClipRecipe(steps=2, batch_size=4)
    key = recipe.key(world)
    changed = {
        "architecture": replace(recipe, architecture=COMPOSITE_CLIP),
        "steps": replace(recipe, steps=3),
        "batch_size": replace(recipe, batch_size=8),
        "lr": replace(recipe, lr=1e-3),
        "weight_decay": replace(recipe, weight_decay=0.0),
        "seed": replace(recipe, seed=1),
    }
    keys = {name: r.key(world) for name, r in changed.items()}
    assert [name for name, k in keys.items() if k == key] == [] and len(set(keys.values())) == len(keys)
    assert replace(recipe).key(SyntheticWorld(num_classes=5, image_size=32)) == key
    assert recipe.key(SyntheticWorld(num_classes=5, image_size=32, seed=1)) != key


def test_pretraining_uses_the_recipes_weight_decay(tmp_path, monkeypatch) -> None:
    """The same data and seed with another weight decay give other weights."""
    import torch
    from safetensors.torch import load_file

    from cosegkit.data.synthetic import SyntheticWorld
    from cosegkit.engine.pretrain import ClipRecipe, pretrain_clip

    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1)
    weights = [
        load_file(pretrain_clip(world, ClipRecipe(steps=1, batch_size=2, weight_decay=wd), cache=False))
        for wd in (0.0, 0.0, 0.5)
    ]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])  # deterministic
    assert not torch.equal(weights[0]["text_projection"], weights[2]["text_projection"])


class _ScoredWorld:
    """A world whose image ``k`` of set ``i`` carries its class scores ``scores[i][k]`` in its first pixel row."""

    def __init__(self, scores: list[list[list[float]]], targets: list[int]) -> None:
        self.class_names = [f"c{i}" for i in range(len(scores[0][0]))]
        self.scores, self.targets = scores, targets

    def fingerprint(self) -> str:
        return "scored"

    def sample_set(self, set_size: int, *, seed):
        import types

        import torch

        i = seed[-1]
        images = torch.zeros(set_size, 3, 8, 8)
        images[:, 0, 0, : len(self.class_names)] = torch.tensor(self.scores[i])
        present = [[self.targets[i]] for _ in range(set_size)]
        return types.SimpleNamespace(images=images, target=self.targets[i], present_classes=present)


def test_zero_shot_accuracy_top5_counts_the_first_five_of_the_summed_ranking() -> None:
    # 7 classes; target 0. Set 0: class 0's summed score ranks 5th (top-5 hit, top-1 miss);
    # set 1: it ranks 6th (a miss); set 2: it ranks 1st.
    fifth = [[0.0, 9, 8, 7, 6, 0, 0], [5.0, 9, 8, 7, 6, 0, 0]]  # sums 5, 18, 16, 14, 12, 0, 0
    sixth = [[0.0, 9, 8, 7, 6, 5, 0], [1.0, 9, 8, 7, 6, 5, 0]]  # sums 1, 18, 16, 14, 12, 10, 0
    first = [[9.0, 1, 0, 0, 0, 0, 0], [9.0, 0, 1, 0, 0, 0, 0]]
    world = _ScoredWorld([fifth, sixth, first], targets=[0, 0, 0])
    scores = zero_shot_accuracy(_ReadsFirstRow(7), world, sets=3, set_size=2)
    assert scores["set_top1"] == pytest.approx(1 / 3) and scores["set_top5"] == pytest.approx(2 / 3)


def test_the_synthetic_fingerprint_changes_with_every_setting() -> None:
    from cosegkit.data.synthetic import SyntheticWorld

    base = dict(num_classes=5, image_size=32, objects_per_image=(1, 2), seed=0)
    fingerprint = SyntheticWorld(**base).fingerprint()
    changes = {
        "num_classes": 6,
        "image_size": 48,
        "objects_per_image": (1, 3),
        "seed": 1,
        "object_size": (0.1, 0.2),
        "min_visible": 0.4,
        "max_tries": 10,
    }
    same = [k for k, v in changes.items() if SyntheticWorld(**{**base, k: v}).fingerprint() == fingerprint]
    assert same == [] and SyntheticWorld(**base).fingerprint() == fingerprint


def test_the_composite_fingerprint_changes_with_every_setting_and_the_labels() -> None:
    import torch

    from cosegkit.data.composite import CompositeWorld

    images = [torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    masks = [torch.ones(12, 12)] * 8
    names = ["cat", "dog", "cow", "bus"] * 2
    base = dict(image_size=32, objects_per_image=2)

    def fingerprint(labels=names, **kwargs) -> str:
        return CompositeWorld.from_arrays(images, masks, labels, **{**base, **kwargs}).fingerprint()

    reference = fingerprint()
    changes = {
        "image_size": 48,
        "objects_per_image": (1, 2),
        "seed": 1,
        "object_size": (0.3, 0.6),
        "min_visible": 0.4,
        "max_tries": 10,
        "jitter": 0.1,
    }
    same = [k for k, v in changes.items() if fingerprint(**{k: v}) == reference]
    assert same == [] and fingerprint() == reference
    # the same pixels under other labels (two photos' classes exchanged) generate other captions and targets
    relabelled = ["dog", "cat", "cow", "bus", "cat", "dog", "cow", "bus"]
    assert fingerprint(relabelled) != reference


def test_pretraining_warms_up_from_the_first_step_then_follows_a_cosine(tmp_path, monkeypatch) -> None:
    """The learning rate of each step: ``lr * (s + 1) / warmup`` for the first ``steps // 20``, then a cosine to 0."""
    import math

    import torch

    from cosegkit.data.synthetic import SyntheticWorld
    from cosegkit.engine.pretrain import ClipRecipe, pretrain_clip

    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    rates = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1)
    pretrain_clip(world, ClipRecipe(steps=40, batch_size=2, lr=1e-3), cache=False)  # a warm-up of 2 steps
    expected = [1e-3 * 0.5, 1e-3] + [1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 38)) for s in range(2, 40)]
    assert rates == pytest.approx(expected, rel=1e-4)  # the schedule computes the cosine in float32
