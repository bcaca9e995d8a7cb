"""Eq. (12)'s target from cached per-image embeddings: equal to the per-set form, computed once, kept, keyed."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch

from cosegkit.data import Group, TrainSets, collate_sets
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.engine import TrainConfig, train
from cosegkit.engine.class_targets import ClassTargetCache, cache_key, data_fingerprint
from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.losses import set_class_targets
from tests._support import make_tiny_clip, tiny_lcco
from tests.engine.test_trainer import TINY


def fake_loader(group, index):
    g = torch.Generator().manual_seed(1000 * len(group.name) + index)
    image = torch.rand(3, 40, 36, generator=g)
    mask = (torch.rand(1, 40, 36, generator=g) > 0.6).float()
    return image, mask


def fake_groups(sizes=(6, 2)):
    return [
        Group(f"g{k}", tuple(f"{k}_{i}.jpg" for i in range(n)), tuple(f"{k}_{i}.png" for i in range(n)))
        for k, n in enumerate(sizes)
    ]


def batch_of(sets, items):
    batch = collate_sets([sets[i] for i in items])
    return batch["group"], batch["indices"], batch["valid"], batch


class CountingClip:
    """Counts the images the wrapped CLIP's image tower sees."""

    def __init__(self, clip):
        self.clip, self.images = clip, 0
        self._encode = clip.encode_checked

    def __enter__(self):
        def counted(images, **kw):
            self.images += images.shape[0] * images.shape[1]
            return self._encode(images, **kw)

        self._patch = mock.patch.object(self.clip, "encode_checked", side_effect=counted)
        self._patch.start()
        return self

    def __exit__(self, *exc):
        self._patch.stop()


def test_without_augmentation_the_cached_target_is_the_per_set_target() -> None:
    clip = make_tiny_clip()
    sets = TrainSets(fake_groups(), set_size=4, image_size=32, length=24, augment=None, loader=fake_loader)
    cache = ClassTargetCache(clip, sets)
    groups, indices, valid, batch = batch_of(sets, range(24))
    cached = cache.targets(groups, indices, valid)
    per_set = set_class_targets(clip, batch["images"], batch["masks"], valid)
    assert torch.equal(cached, per_set)
    emb = cache.embeddings(groups, indices, valid)
    reference = clip.encode_images(batch["images"] * batch["masks"])
    assert torch.allclose(emb[valid], reference[valid], atol=1e-5)
    assert (emb[~valid] == 0).all() and (~valid).any()  # the group of 2 is padded


def test_the_set_class_sums_sigma_over_the_valid_images() -> None:
    from types import SimpleNamespace

    votes = SimpleNamespace(text_bank=torch.eye(3), embed_dim=3)  # sigma of a one-hot embedding is one vote
    sets = TrainSets(fake_groups((4,)), set_size=4, image_size=32, length=1, loader=fake_loader)
    cache = ClassTargetCache(votes, sets)
    cache._append([(0, 0), (0, 1), (0, 2), (0, 3)], torch.eye(3)[[1, 0, 0, 2]])  # images of classes 1, 0, 0, 2
    groups = torch.tensor([0, 0, 0])
    indices = torch.tensor([[0, 1, 2, 3], [0, 3, 1, 2], [1, 3, 2, 0]])
    valid = torch.tensor([[True, True, True, True], [True, False, False, False], [False, True, False, False]])
    assert cache.targets(groups, indices, valid).tolist() == [0, 1, 2]  # the majority; image 0 alone; image 3 alone
    assert cache.computed == 0  # everything came from the table


def test_the_unaugmented_pair_is_the_item_without_augmentation() -> None:
    augmented = TrainSets(fake_groups(), set_size=3, image_size=32, length=6, loader=fake_loader)
    plain = TrainSets(fake_groups(), set_size=3, image_size=32, length=6, augment=None, loader=fake_loader)
    for k in range(6):
        item = plain[k]
        for j, ok in enumerate(item["valid"]):
            if ok:
                image, mask = augmented.unaugmented(int(item["group"]), int(item["indices"][j]))
                assert torch.equal(image, item["images"][j]) and torch.equal(mask, item["masks"][j])
    assert not torch.equal(augmented[0]["images"], plain[0]["images"])  # the augmentation is on


def test_each_image_is_embedded_once_and_a_hit_makes_no_clip_call() -> None:
    clip = make_tiny_clip()
    sets = TrainSets(fake_groups(), set_size=3, image_size=32, length=40, loader=fake_loader)
    cache = ClassTargetCache(clip, sets)
    with CountingClip(clip) as counter:
        for start in range(0, 40, 4):
            groups, indices, valid, _ = batch_of(sets, range(start, start + 4))
            cache.targets(groups, indices, valid)
    assert counter.images == cache.computed == len(cache) == 8  # 6 + 2 images, whatever the sets drew
    with CountingClip(clip) as counter:
        groups, indices, valid, _ = batch_of(sets, range(4))
        cache.targets(groups, indices, valid)
    assert counter.images == 0


def test_the_target_follows_the_vocabulary_without_recomputing() -> None:
    clip = make_tiny_clip()
    sets = TrainSets(fake_groups(), set_size=4, image_size=32, length=16, augment=None, loader=fake_loader)
    cache = ClassTargetCache(clip, sets)
    groups, indices, valid, batch = batch_of(sets, range(16))
    before = cache.targets(groups, indices, valid)
    names = list(clip.classnames)
    clip.set_vocabulary(names[::-1])  # the same classes, reversed
    computed = cache.computed
    after = cache.targets(groups, indices, valid)
    assert cache.computed == computed
    assert torch.equal(after, len(names) - 1 - before)
    assert torch.equal(after, set_class_targets(clip, batch["images"], batch["masks"], valid))


def test_the_cache_is_saved_and_read_back_and_ranks_merge(tmp_path) -> None:
    clip = make_tiny_clip()
    sets = TrainSets(fake_groups(), set_size=3, image_size=32, length=12, loader=fake_loader)
    first = ClassTargetCache(clip, sets, tmp_path / "c", description={"what": "test"}, rank=0)
    groups, indices, valid, _ = batch_of(sets, range(6))
    targets = first.targets(groups, indices, valid)
    assert first.save() == tmp_path / "c" / "rank0.pt"
    assert first.save() is None  # nothing new
    assert json.loads((tmp_path / "c" / "key.json").read_text()) == {"what": "test"}
    other = ClassTargetCache(clip, sets, tmp_path / "c", rank=1)
    g2, i2, v2, _ = batch_of(sets, range(6, 12))
    with CountingClip(clip) as counter:
        assert torch.equal(other.targets(groups, indices, valid), targets)
    assert counter.images == 0
    other.targets(g2, i2, v2)
    other.save()
    merged = ClassTargetCache(clip, sets, tmp_path / "c", rank=0)
    assert len(merged) == len(other) and merged.computed == 0
    assert torch.equal(merged.embeddings(g2, i2, v2), other.embeddings(g2, i2, v2))


def test_an_unreadable_cache_file_is_recomputed(tmp_path) -> None:
    clip = make_tiny_clip()
    sets = TrainSets(fake_groups(), set_size=3, image_size=32, length=4, loader=fake_loader)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "rank0.pt").write_bytes(b"not a torch file")
    cache = ClassTargetCache(clip, sets, tmp_path / "c")
    groups, indices, valid, _ = batch_of(sets, range(4))
    cache.targets(groups, indices, valid)
    assert cache.computed == len(cache) > 0
    cache.save()
    assert len(ClassTargetCache(clip, sets, tmp_path / "c")) == len(cache)


def test_sets_without_unaugmented_images_are_refused_with_what_to_do() -> None:
    with pytest.raises(CosegValueError, match="class_targets='per-set'"):
        ClassTargetCache(make_tiny_clip(), [1, 2, 3])


def test_the_key_changes_with_the_clip_the_data_the_size_and_the_mask_source(tmp_path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"1")
    groups = [Group("cats", (image,), (image,))]
    config = TrainConfig(dataset="folder", root=str(tmp_path), image_size=32, clip_model="coseg-test-tiny")
    clip = make_tiny_clip()
    key, description = cache_key(config, clip, groups)
    assert description["masks"] == {"source": "ground truth"}
    assert cache_key(config, clip, groups)[0] == key  # deterministic
    torch.manual_seed(7)
    other_clip = make_tiny_clip()
    with torch.no_grad():
        next(other_clip.model.visual.parameters()).add_(1.0)
    assert cache_key(config, other_clip, groups)[0] != key
    config.image_size = 48
    assert cache_key(config, clip, groups)[0] != key
    config.image_size = 32
    store = mock.Mock(key="abc")
    pseudo = TrainConfig(dataset="folder", root=str(tmp_path), image_size=32, pseudo_masks="zero-shot")
    pseudo_key = cache_key(pseudo, clip, groups, store)[0]
    pseudo.pseudo_margin = 0.2
    assert cache_key(pseudo, clip, groups, store)[0] != pseudo_key
    before = data_fingerprint(groups)
    image.write_bytes(b"22")
    assert data_fingerprint(groups) != before
    assert cache_key(config, clip, groups)[0] != key
    assert data_fingerprint([Group("dogs", (image,), (image,))]) != data_fingerprint(groups)


def test_lcco_takes_given_targets_and_sends_no_masked_image_through_clip() -> None:
    model = tiny_lcco().train()
    images = torch.rand(2, 3, 3, 32, 32)
    masks = (torch.rand(2, 3, 1, 32, 32) > 0.5).float()
    with CountingClip(model.clip) as counter:
        out = model(images, masks=masks)
    assert counter.images == 2 * 2 * 3  # the images and the masked images
    given = torch.tensor([1, 4])
    with CountingClip(model.clip) as counter:
        out = model(images, masks=masks, class_targets=given)
    assert counter.images == 2 * 3 and torch.equal(out.class_targets, given)
    with pytest.raises(CosegShapeError, match=r"class_targets of shape \(2,\)"):
        model(images, class_targets=torch.tensor([1, 2, 3]))
    off = tiny_lcco(use_regularization=False)
    assert off(images, class_targets=given).class_targets is None  # no module, no target


def folder_config(root: Path, **kwargs) -> TrainConfig:
    settings = {**TINY, "dataset": "folder", "root": str(root), "extra": {}}
    settings.update(kwargs)
    return TrainConfig(**settings)


def drawn_images(config: TrainConfig, first: int, last: int) -> set[tuple[int, int]]:
    """The (group, image) pairs the training sets of steps ``first .. last - 1`` hold."""
    from cosegkit.engine.config import build_train_sets

    sets = build_train_sets(config, length=config.steps * config.batch_size)
    drawn = set()
    for item in range(first * config.batch_size, last * config.batch_size):
        entry = sets[item]
        drawn |= {(int(entry["group"]), int(i)) for i, ok in zip(entry["indices"], entry["valid"], strict=True) if ok}
    return drawn


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_folder_dataset(SyntheticWorld(num_classes=3, image_size=32, objects_per_image=(2, 2)), root, 4)
    return root


def test_a_cached_run_embeds_each_image_once_keeps_the_cache_and_resumes_on_it(tmp_path, folder_data) -> None:
    config = folder_config(folder_data, steps=4, checkpoint_every=2)
    run = tmp_path / "run"
    calls = []
    real = ClassTargetCache._embed

    def counted(self, keys):
        calls.append(len(keys))
        return real(self, keys)

    with mock.patch.object(ClassTargetCache, "_embed", counted):
        train(config, run, progress=False)
    drawn = drawn_images(config, 0, 4)
    assert sum(calls) == len(drawn) < 4 * 2 * 3  # each drawn image once, not once per set holding it
    folders = list((run / "class_targets").iterdir())
    assert len(folders) == 1 and (folders[0] / "rank0.pt").is_file()
    saved = torch.load(folders[0] / "rank0.pt", weights_only=True)
    assert {tuple(k) for k in saved["keys"].tolist()} == drawn and saved["embeddings"].shape[0] == len(drawn)
    assert json.loads((folders[0] / "key.json").read_text())["image_size"] == 32
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("classification" in r for r in records)
    # a longer run resumed from it reads the embeddings back: only images not seen yet are embedded
    longer = folder_config(folder_data, steps=8, checkpoint_every=2)
    longer.save(run / "config.json")
    calls.clear()
    with mock.patch.object(ClassTargetCache, "_embed", counted):
        train(longer, run, resume=True, progress=False)
    assert sum(calls) == len(drawn_images(longer, 4, 8) - drawn)


def test_per_set_and_synthetic_runs_keep_no_cache(tmp_path, folder_data) -> None:
    train(folder_config(folder_data, steps=2, class_targets="per-set"), tmp_path / "per-set", progress=False)
    assert not (tmp_path / "per-set" / "class_targets").exists()
    train(TrainConfig(**TINY, steps=2), tmp_path / "synthetic", progress=False)
    assert not (tmp_path / "synthetic" / "class_targets").exists()
    assert json.loads((tmp_path / "synthetic" / "config.json").read_text())["class_targets"] == "cached"


def test_the_config_checks_the_reading_and_old_configs_keep_the_per_set_form() -> None:
    with pytest.raises(CosegValueError, match=r"class_targets must be one of \['cached', 'per-set'\]"):
        TrainConfig(class_targets="per-group")
    data = TrainConfig().to_dict()
    del data["class_targets"]
    assert TrainConfig.from_dict(data).class_targets == "per-set"
    assert TrainConfig().class_targets == "cached"


def test_cli_flag_reaches_the_config(tmp_path) -> None:
    from cosegkit.cli import build_parser

    args = build_parser().parse_args(["train", "--class-targets", "per-set", "--out", str(tmp_path)])
    assert args.class_targets == "per-set"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--class-targets", "per-group", "--out", str(tmp_path)])
