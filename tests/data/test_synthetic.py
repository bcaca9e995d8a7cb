"""Tests of the synthetic co-segmentation world: determinism, content, balance, dataset, files."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from cosegkit.data.synthetic import (
    COLOURS,
    SHAPES,
    TEXTURES,
    ObjectClass,
    SyntheticCosegDataset,
    SyntheticWorld,
    write_folder_dataset,
)
from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

seeds = st.integers(0, 2**32 - 1)


def _assert_same_sets(a, b) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.masks, b.masks)
    assert torch.equal(a.class_maps, b.class_maps)
    assert a.target == b.target
    assert a.captions == b.captions
    assert a.present_classes == b.present_classes
    assert a.visible_fractions == b.visible_fractions


def _parse_caption(caption: str) -> list[str]:
    """The object names of a caption ``"a x, a y and an z"``, in caption order."""
    phrases = re.split(r", | and ", caption)
    names = []
    for phrase in phrases:
        article, _, name = phrase.partition(" ")
        assert article == ("an" if name[:1] in "aeiou" else "a"), caption
        names.append(name)
    return names


# ---------------------------------------------------------------------------- the world


def test_vocabulary_and_class_names():
    world = SyntheticWorld(num_classes=40, image_size=32, seed=3)
    assert len(world.classes) == 40
    names = world.class_names
    assert len(set(names)) == 40
    for cls, name in zip(world.classes, names, strict=True):
        assert isinstance(cls, ObjectClass)
        assert cls.shape in SHAPES and cls.colour in COLOURS and cls.texture in TEXTURES
        assert name == f"{cls.colour} {cls.texture} {cls.shape}"
    full = SyntheticWorld(num_classes=len(SHAPES) * len(COLOURS) * len(TEXTURES), image_size=32)
    assert len(set(full.class_names)) == 320


def test_world_classes_are_deterministic_by_seed():
    assert SyntheticWorld(num_classes=12, seed=5).classes == SyntheticWorld(num_classes=12, seed=5).classes
    assert SyntheticWorld(num_classes=12, seed=5).classes != SyntheticWorld(num_classes=12, seed=6).classes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 4, "objects_per_image": (2, 4)}, "more than the most objects"),
        ({"num_classes": 321}, "at most 320"),
        ({"num_classes": 0}, "num_classes"),
        ({"image_size": 8}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"objects_per_image": (3, 2)}, "objects_per_image"),
        ({"objects_per_image": (0, 2)}, "objects_per_image"),
        ({"objects_per_image": "two"}, "objects_per_image"),
        ({"object_size": (0.3, 0.2)}, "object_size"),
        ({"object_size": (0.1, 0.6)}, "object_size"),
        ({"image_size": 16, "object_size": 0.1}, "under 2 px"),
        ({"min_visible": 0.0}, "min_visible"),
        ({"min_visible": 1.5}, "min_visible"),
        ({"max_tries": 0}, "max_tries"),
        ({"seed": -1}, "seed"),
    ],
)
def test_world_rejects_bad_arguments(kwargs, match):
    with pytest.raises(CosegValueError, match=match):
        SyntheticWorld(**kwargs)


def test_sampling_rejects_bad_arguments():
    world = SyntheticWorld(num_classes=6, image_size=32)
    with pytest.raises(CosegValueError, match="set_size"):
        world.sample_set(0, seed=0)
    with pytest.raises(CosegValueError, match="target"):
        world.sample_set(2, seed=0, target=6)
    with pytest.raises(CosegValueError, match="target"):
        world.sample_set(2, seed=0, target=-1)
    with pytest.raises(CosegValueError, match="not both"):
        world.sample_set(2, seed=0, generator=np.random.default_rng(0))
    with pytest.raises(CosegValueError, match="seed"):
        world.sample_set(2, seed=-3)
    with pytest.raises(CosegValueError, match="seed"):
        world.sample_set(2, seed="0")  # type: ignore[arg-type]
    with pytest.raises(CosegValueError, match="generator"):
        world.sample_set(2, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):  # the family is rooted in ValueError
        world.sample_batch(0, 2, seed=0)


# ---------------------------------------------------------------------------- determinism


@given(seed=seeds, n=st.integers(1, 3))
def test_same_seed_gives_the_same_set(seed, n):
    world = SyntheticWorld(num_classes=8, image_size=32)
    _assert_same_sets(world.sample_set(n, seed=seed), world.sample_set(n, seed=seed))
    _assert_same_sets(world.sample_set(n, seed=seed), world.sample_set(n, generator=np.random.default_rng(seed)))


@given(a=seeds, b=seeds)
def test_different_seeds_give_different_sets(a, b):
    world = SyntheticWorld(num_classes=8, image_size=32)
    x, y = world.sample_set(2, seed=a), world.sample_set(2, seed=b)
    # a tie of float images (and of their grain noise) from different seeds is astronomically unlikely
    assert torch.equal(x.images, y.images) == (a == b)


def test_unseeded_sampling_follows_torch_seeds():
    world = SyntheticWorld(num_classes=8, image_size=32)
    torch.manual_seed(4)
    a = world.sample_set(2)
    torch.manual_seed(4)
    _assert_same_sets(a, world.sample_set(2))
    assert not torch.equal(a.images, world.sample_set(2).images)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    _assert_same_sets(world.sample_set(2, generator=g1), world.sample_set(2, generator=g2))


# ---------------------------------------------------------------------------- content


@given(
    seed=seeds,
    size=st.integers(24, 72),
    n=st.integers(1, 4),
    k=st.tuples(st.integers(1, 4), st.integers(0, 2)).map(lambda t: (t[0], t[0] + t[1])),
)
def test_shapes_ranges_and_masks(seed, size, n, k):
    world = SyntheticWorld(num_classes=k[1] + 3, image_size=size, objects_per_image=k, seed=seed % 7)
    s = world.sample_set(n, seed=seed)
    assert s.images.shape == (n, 3, size, size) and s.images.dtype == torch.float32
    assert s.masks.shape == (n, 1, size, size) and s.masks.dtype == torch.float32
    assert s.class_maps.shape == (n, 1, size, size) and s.class_maps.dtype == torch.int64
    assert len(s) == len(s.captions) == len(s.present_classes) == len(s.visible_fractions) == n
    assert s.images.min() >= 0.0 and s.images.max() <= 1.0
    assert set(s.masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s.masks, (s.class_maps == s.target).float())  # the mask is the target's visible pixels
    assert s.target_name == world.classes[s.target].name
    for i, (present, fractions) in enumerate(zip(s.present_classes, s.visible_fractions, strict=True)):
        assert k[0] <= len(present) <= k[1]
        assert len(set(present)) == len(present)  # distinct classes in one image
        assert s.target in present
        assert s.masks[i].sum() > 0
        assert min(fractions) >= world.min_visible  # every object, target or not
        assert fractions[-1] == 1.0  # nothing is drawn over the top object
        on_map = set(s.class_maps[i].unique().tolist()) - {-1}
        assert on_map == set(present)  # every object shows, nothing else does
        assert sorted(_parse_caption(s.captions[i])) == sorted(world.classes[c].name for c in present)


def test_forced_target_and_full_visibility():
    world = SyntheticWorld(num_classes=6, image_size=48, objects_per_image=(3, 4), min_visible=1.0, max_tries=1)
    for seed in range(20):
        s = world.sample_set(3, seed=seed, target=seed % 6)
        assert s.target == seed % 6
        # with min_visible = 1 nothing may overlap: the grid fallback must take over
        assert all(f == 1.0 for fractions in s.visible_fractions for f in fractions)


def test_objects_do_overlap():
    world = SyntheticWorld(num_classes=10, image_size=64, objects_per_image=4)
    fractions = [f for seed in range(30) for fs in world.sample_set(2, seed=seed).visible_fractions for f in fs]
    assert min(fractions) < 0.9  # occlusion happens (and is bounded by min_visible, tested above)


def test_backgrounds_are_textured_not_flat():
    world = SyntheticWorld(num_classes=6, image_size=64, objects_per_image=2)
    s = world.sample_set(30, seed=0)
    # a 4x4 box blur removes most of the 0.02 grain; what varies after it is the background's texture
    smooth = torch.nn.functional.avg_pool2d(s.images, 4)
    background = torch.nn.functional.max_pool2d((s.class_maps >= 0).float(), 4) == 0
    spread = [smooth[i][:, background[i, 0]].std(dim=1).max().item() for i in range(len(s))]
    assert np.median(spread) > 0.015


# ---------------------------------------------------------------------------- balance


@pytest.fixture(scope="module")
def sample():
    """4000 independent single-image sets of a 10-class world: the statistical tests' data."""
    world = SyntheticWorld(num_classes=10, image_size=32, objects_per_image=(2, 4), seed=1)
    sets = [world.sample_set(1, seed=(11, i)) for i in range(4000)]
    return world, sets


def test_targets_are_uniform_over_classes(sample):
    world, sets = sample
    counts = np.bincount([s.target for s in sets], minlength=world.num_classes)
    expected = len(sets) / world.num_classes
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 27.88 is the 99.9% quantile of chi-square with 9 degrees of freedom: an unbiased sampler
    # exceeds it once in a thousand seeds; one class never drawn would alone add ~ 400
    assert chi2 < 27.88, counts


def test_each_class_is_target_as_often_as_a_distractor_slot(sample):
    world, sets = sample
    # per image and class c: x = [c is the target] - [c is a distractor] / (K - 1). Under the
    # claim E[x] = 0 for every c (a class fills the target slot as often as any one distractor
    # slot), and sum_c (sum_i x)^2 / sum_i x^2 is about chi-square with <= 10 degrees of freedom
    x = np.zeros((len(sets), world.num_classes))
    for i, s in enumerate(sets):
        present = s.present_classes[0]
        for c in present:
            x[i, c] = 1.0 if c == s.target else -1.0 / (len(present) - 1)
    stat = (x.sum(0) ** 2 / (x**2).sum(0)).sum()
    assert stat < 29.59, x.sum(0)  # 99.9% quantile of chi-square(10)


def _assert_same_mean(a, b, what: str) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    # 4.5 standard errors: a false alarm about once in 150 000 draws of the data
    assert abs(a.mean() - b.mean()) < 4.5 * se + 1e-9, f"{what}: target {a.mean():.4f} vs distractors {b.mean():.4f}"


def test_target_and_distractors_are_exchangeable_in_an_image(sample):
    world, sets = sample
    area = {"target": [], "other": []}
    depth = {"target": [], "other": []}
    visible = {"target": [], "other": []}
    for s in sets:
        present, fractions = s.present_classes[0], s.visible_fractions[0]
        counts = torch.bincount(s.class_maps.flatten() + 1, minlength=world.num_classes + 1)[1:]
        for j, c in enumerate(present):
            role = "target" if c == s.target else "other"
            area[role].append(counts[c].item())
            depth[role].append(j / (len(present) - 1))
            visible[role].append(fractions[j])
    _assert_same_mean(area["target"], area["other"], "visible area")
    _assert_same_mean(depth["target"], depth["other"], "relative draw depth")
    _assert_same_mean(visible["target"], visible["other"], "visible fraction")


def test_single_image_heuristics_are_at_chance(sample):
    world, sets = sample
    rng = np.random.default_rng(0)
    chance = np.mean([1 / len(s.present_classes[0]) for s in sets])
    hits = Counter()
    for s in sets:
        present = s.present_classes[0]
        counts = torch.bincount(s.class_maps.flatten() + 1, minlength=world.num_classes + 1)[1:]
        tie_break = rng.random(len(present)) * 1e-6
        guesses = {
            "top object": present[-1],
            "bottom object": present[0],
            "largest visible area": present[int(np.argmax([counts[c].item() for c in present] + tie_break))],
            "least occluded": present[int(np.argmax(np.array(s.visible_fractions[0]) + tie_break))],
            "first in caption": world.class_names.index(_parse_caption(s.captions[0])[0]),
            "last in caption": world.class_names.index(_parse_caption(s.captions[0])[-1]),
        }
        hits.update(rule for rule, guess in guesses.items() if guess == s.target)
    # accuracy's standard error is sqrt(p (1 - p) / 4000) ~ 0.0075: 0.035 is ~4.7 of them
    for rule in guesses:
        assert abs(hits[rule] / len(sets) - chance) < 0.035, (rule, hits[rule] / len(sets), chance)


def test_the_set_identifies_the_target():
    world = SyntheticWorld(num_classes=10, image_size=32, objects_per_image=(2, 4))
    unique = 0
    for seed in range(300):
        s = world.sample_set(5, seed=seed)
        common = set.intersection(*(set(p) for p in s.present_classes))
        assert s.target in common
        unique += common == {s.target}
    # a distractor shared by all 5 images happens in ~1% of sets (see the module docstring)
    assert unique / 300 > 0.95


# ---------------------------------------------------------------------------- batches and datasets


def test_sample_batch_stacks_the_dataset_items():
    world = SyntheticWorld(num_classes=7, image_size=32)
    images, masks, targets = world.sample_batch(3, 2, seed=5)
    assert images.shape == (3, 2, 3, 32, 32) and masks.shape == (3, 2, 1, 32, 32)
    assert targets.shape == (3,) and targets.dtype == torch.int64
    ds = SyntheticCosegDataset(world, set_size=2, length=3, seed=5)
    for b in range(3):
        assert torch.equal(images[b], ds[b]["images"]) and torch.equal(masks[b], ds[b]["masks"])
        assert targets[b] == ds[b]["target"]
    again = world.sample_batch(3, 2, generator=np.random.default_rng(1))
    assert torch.equal(again.images, world.sample_batch(3, 2, generator=np.random.default_rng(1)).images)


def test_dataset_items_are_reproducible_in_any_order():
    world = SyntheticWorld(num_classes=7, image_size=32)
    ds = SyntheticCosegDataset(world, set_size=3, length=10, seed=2)
    forward = [ds[i] for i in range(10)]
    backward = [ds[i] for i in reversed(range(10))][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"]
    ref = world.sample_set(3, seed=(2, 4))
    assert torch.equal(ds[4]["images"], ref.images) and torch.equal(ds[4]["masks"], ref.masks)
    assert ds[4]["target"].item() == ref.target and ds[4]["captions"] == ref.captions
    assert torch.equal(ds[-1]["images"], forward[9]["images"])
    assert not torch.equal(forward[0]["images"], forward[1]["images"])
    other = SyntheticCosegDataset(world, set_size=3, length=10, seed=3)
    assert not torch.equal(other[0]["images"], forward[0]["images"])
    assert len(ds) == 10
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds[-11]


def test_dataset_is_reproducible_across_loader_workers():
    ds = SyntheticCosegDataset(SyntheticWorld(num_classes=7, image_size=32), set_size=2, length=8, seed=0)
    serial = list(DataLoader(ds, batch_size=3, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=3, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        assert a["images"].shape[1:] == (2, 3, 32, 32)
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["masks"], b["masks"])
        assert torch.equal(a["target"], b["target"]) and a["captions"] == b["captions"]


# ---------------------------------------------------------------------------- folder layout


def test_write_folder_dataset(tmp_path):
    world = SyntheticWorld(num_classes=4, image_size=32, objects_per_image=(2, 3))
    groups = write_folder_dataset(world, tmp_path, images_per_group=3, seed=7)
    assert [g.name for g in groups] == world.class_names
    assert all(isinstance(g, Group) and len(g) == 3 for g in groups)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(world.class_names)
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == sorted(world.class_names)
    for c, group in enumerate(groups):
        ref = world.sample_set(3, seed=(7, c), target=c)
        names = [p.name for p in group.images]
        assert names == ["0000.png", "0001.png", "0002.png"] == sorted(names)
        assert [p.name for p in group.masks] == names
        for i, (image_path, mask_path) in enumerate(zip(group.images, group.masks, strict=True)):
            assert image_path == tmp_path / "images" / world.classes[c].name / names[i]
            mask = np.asarray(Image.open(mask_path))
            assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= {0, 255}
            assert np.array_equal(mask > 127, ref.masks[i, 0].numpy() > 0.5)
            image = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1) / 255
            assert (image - ref.images[i]).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(DataError, match="not empty"):
        write_folder_dataset(world, tmp_path, images_per_group=1)


def test_trailing_zero_seeds_give_the_same_set_as_documented() -> None:
    world = SyntheticWorld(num_classes=6, image_size=32, seed=0)
    item = SyntheticCosegDataset(world, set_size=3, length=2, seed=4)[0]
    plain = world.sample_set(3, seed=4)
    assert torch.equal(item["images"], plain.images)
    assert not torch.equal(SyntheticCosegDataset(world, set_size=3, length=2, seed=4)[1]["images"], plain.images)
