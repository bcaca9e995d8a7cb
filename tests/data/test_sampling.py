"""Image-set sampling: sizes, determinism, padding, chunking, and image/mask alignment."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.data import Augmentation, DataError, EvalSets, Group, TrainSets, collate_sets, eval_chunks, interleave
from cosegkit.errors import CosegValueError


def pattern(seed: int, h: int = 48, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose mask is drawn from its own pixels: bright blobs in channel 0."""
    g = torch.Generator().manual_seed(seed)
    blobs = torch.nn.functional.interpolate(torch.rand(1, 1, 6, 8, generator=g), size=(h, w), mode="bilinear")[0]
    mask = (blobs > 0.55).float()
    image = 0.4 * torch.rand(3, h, w, generator=g)
    image[0] = torch.where(mask[0] > 0, torch.tensor(1.0), torch.tensor(0.0))
    return image, mask


def make_groups(sizes: dict[str, int]) -> list[Group]:
    return [
        Group(name, tuple(f"{name}/{i}.jpg" for i in range(n)), tuple(f"{name}/{i}.png" for i in range(n)))
        for name, n in sizes.items()
    ]


def pattern_loader(group: Group, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pattern(hash(group.name) % 1000 * 100 + index)


def test_train_items_have_the_set_shapes_and_distinct_images_of_one_group() -> None:
    ds = TrainSets(make_groups({"a": 9, "b": 12}), set_size=5, image_size=32, loader=pattern_loader, length=20)
    for i in range(20):
        item = ds[i]
        assert item["images"].shape == (5, 3, 32, 32) and item["masks"].shape == (5, 1, 32, 32)
        assert item["valid"].all()
        assert len(set(item["indices"].tolist())) == 5  # distinct images
        assert item["images"].min() >= 0 and item["images"].max() <= 1
        assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}


def test_small_groups_are_padded_not_duplicated() -> None:
    ds = TrainSets(make_groups({"tiny": 3}), set_size=5, image_size=16, loader=pattern_loader, length=2)
    item = ds[0]
    assert item["valid"].tolist() == [True, True, True, False, False]
    assert sorted(item["indices"][:3].tolist()) == [0, 1, 2] and item["indices"][3:].tolist() == [-1, -1]


def test_items_are_deterministic_and_epochs_differ() -> None:
    groups = make_groups({"a": 10, "b": 10})
    one = TrainSets(groups, set_size=4, image_size=16, loader=pattern_loader, seed=3)
    two = TrainSets(groups, set_size=4, image_size=16, loader=pattern_loader, seed=3)
    assert torch.equal(one[1]["images"], two[1]["images"])  # same seed, same item
    _ = two[0]  # access order does not matter
    assert torch.equal(one[2]["images"], two[2]["images"])
    before = one[1]["images"].clone()
    one.set_epoch(1)
    assert not torch.equal(one[1]["images"], before)


def test_group_balance() -> None:
    groups = make_groups({"big": 90, "small": 10})
    draws = lambda balance: [  # noqa: E731
        TrainSets(
            groups,
            2,
            8,
            loader=lambda g, i: (torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)),
            length=400,
            augment=None,
            balance=balance,
        )[i]["group"].item()
        for i in range(400)
    ]
    by_groups, by_images = draws("groups"), draws("images")
    assert 0.4 < sum(by_groups) / 400 < 0.6  # 'small' (index 1) about half the time
    assert sum(by_images) / 400 < 0.2  # in proportion to 10 / 100


@given(seed=st.integers(0, 10_000))
def test_augmentation_keeps_masks_on_their_pixels(seed: int) -> None:
    image, mask = pattern(seed)
    geometric = Augmentation(brightness=0, contrast=0, saturation=0, hue=0, scale=(0.3, 1.0))
    out_image, out_mask = geometric(image, mask, 40, torch.Generator().manual_seed(seed))
    assert out_image.shape == (3, 40, 40) and out_mask.shape == (1, 40, 40)
    from_pixels = (out_image[0] > 0.5).float()
    agreement = (from_pixels == out_mask[0]).float().mean()
    assert agreement > 0.97, agreement  # only pixels on the blob borders may differ by interpolation


@given(seed=st.integers(0, 10_000))
def test_colour_jitter_changes_the_image_not_the_mask(seed: int) -> None:
    image, mask = pattern(seed)
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    plain = Augmentation(brightness=0, contrast=0, saturation=0, hue=0)(image, mask, 32, g1)
    jitter = Augmentation(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)(image, mask, 32, g2)
    assert torch.equal(plain[1], jitter[1])  # the same geometry draws come first
    assert not torch.allclose(plain[0], jitter[0])


def test_eval_chunks() -> None:
    assert eval_chunks(7, None) == [list(range(7))]
    assert eval_chunks(7, 10) == [list(range(7))]
    assert eval_chunks(10, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert eval_chunks(11, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10]]
    # UFO's test.py: order 0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, then consecutive chunks of 5
    assert eval_chunks(11, 5, "interleaved") == [[0, 3, 6, 9, 1], [4, 7, 10, 2, 5], [8]]
    assert eval_chunks(11, 5, "interleaved", wrap=True) == [[0, 3, 6, 9, 1], [4, 7, 10, 2, 5], [8, 0, 3, 6, 9]]
    assert eval_chunks(12, 5, wrap=True) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 0, 1, 2]]
    assert eval_chunks(4, 5, wrap=True) == [[0, 1, 2, 3, 0]]
    assert eval_chunks(2, 5, wrap=True) == [[0, 1, 0, 1, 0]]
    assert interleave(12, 5) == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
    with pytest.raises(CosegValueError):
        eval_chunks(0, 5)
    with pytest.raises(CosegValueError):
        eval_chunks(5, 2, "random")  # type: ignore[arg-type]
    with pytest.raises(CosegValueError, match="set_size"):
        eval_chunks(5, 0)


def ufo_test_py_groups(names: list[str], group_size: int) -> list[list[str]]:
    """A literal transcription of the grouping in UFO's ``test.py`` (list slicing for tensors)."""
    image_path = sorted(names)
    idx = []
    block_size = (len(image_path) + group_size - 1) // group_size
    for ii in range(block_size):
        cur = ii
        while cur < len(image_path):
            idx.append(cur)
            cur += block_size
    image_path = [image_path[idx[ii]] for ii in range(len(image_path))]
    groups = []
    divided, rested = len(image_path) // group_size, len(image_path) % group_size
    for k in range(divided):
        groups.append(image_path[k * group_size : (k + 1) * group_size])
    if rested != 0:
        groups.append(image_path[-rested:] + image_path[: group_size - rested])
    return groups


@given(length=st.integers(3, 80), set_size=st.integers(1, 12))
def test_interleaved_wrap_matches_ufo_test_py(length: int, set_size: int) -> None:
    names = [f"img_{i:04d}.jpg" for i in range(length)]
    ours = [[names[i] for i in chunk] for chunk in eval_chunks(length, set_size, "interleaved", wrap=True)]
    if set_size < length:
        assert ours == ufo_test_py_groups(names, set_size)
    else:  # UFO slices a short list there; we cycle to fill the set
        assert ours[0][:length] == names and len(ours[0]) == set_size


@given(length=st.integers(1, 60), set_size=st.integers(1, 12), chunking=st.sampled_from(["contiguous", "interleaved"]))
def test_wrapped_sets_are_full_and_score_every_image_once(length: int, set_size: int, chunking: str) -> None:
    fake = lambda g, i: (torch.rand(3, 4, 4), torch.ones(1, 4, 4))  # noqa: E731
    group = Group("g", tuple(f"{i}" for i in range(length)), tuple(f"{i}" for i in range(length)))
    ds = EvalSets([group], set_size=set_size, image_size=4, chunking=chunking, wrap=True, loader=fake)  # type: ignore[arg-type]
    scored: list[int] = []
    for k in range(len(ds)):
        item = ds[k]
        assert len(item["indices"]) == set_size and item["valid"].all()
        scored += item["indices"][item["score"]].tolist()
    assert sorted(scored) == list(range(length))


@given(length=st.integers(1, 60), set_size=st.integers(1, 12), chunking=st.sampled_from(["contiguous", "interleaved"]))
def test_chunks_cover_every_image_exactly_once(length: int, set_size: int, chunking: str) -> None:
    chunks = eval_chunks(length, set_size, chunking)  # type: ignore[arg-type]
    flat = sorted(i for c in chunks for i in c)
    assert flat == list(range(length))
    assert all(1 <= len(c) <= set_size for c in chunks)


def test_eval_sets_and_collate_pad_the_last_set() -> None:
    ds = EvalSets(make_groups({"a": 7, "b": 2}), set_size=5, image_size=24, loader=pattern_loader)
    assert len(ds) == 3 and ds.set_size == 5
    batch = collate_sets([ds[i] for i in range(3)])
    assert batch["images"].shape == (3, 5, 3, 24, 24)
    assert batch["valid"].sum(1).tolist() == [5, 2, 2]
    assert batch["indices"][1].tolist() == [5, 6, -1, -1, -1]
    assert batch["group"].tolist() == [0, 0, 1]
    assert batch["sizes"][0, 0].tolist() == [48, 64]
    assert not batch["images"][1, 2:].any()  # padding is zeros
    assert torch.equal(batch["score"], batch["valid"])  # no wrap: every run image is scored once


def test_eval_masks_follow_the_protocols_resize() -> None:
    """Bilinear (antialiased) soft masks: thresholded at 0.5 they equal the protocol's ground truth."""
    from cosegkit.metrics.functional import precision_jaccard

    soft = EvalSets(make_groups({"a": 3}), image_size=20, loader=pattern_loader, original_masks=True)[0]
    hard = EvalSets(make_groups({"a": 3}), image_size=20, loader=pattern_loader, masks="nearest")[0]
    assert set(hard["masks"].unique().tolist()) <= {0.0, 1.0}
    assert ((soft["masks"] > 0) & (soft["masks"] < 1)).any()  # soft along the borders
    originals = torch.stack(soft["original_masks"])  # (3, 1, 48, 64), binary
    assert originals.shape == (3, 1, 48, 64) and set(originals.unique().tolist()) <= {0.0, 1.0}
    expected = torch.nn.functional.interpolate(originals, size=(20, 20), mode="bilinear", antialias=True) >= 0.5
    assert torch.equal(soft["masks"] >= 0.5, expected)
    # scoring the original-size masks at 20 px equals scoring the soft ones (same resize inside)
    pred = torch.rand(1, 3, 1, 20, 20)
    p_soft, j_soft = precision_jaccard(pred, soft["masks"][None], size=20)
    p_orig, j_orig = precision_jaccard(pred, originals[None], size=20)
    assert torch.equal(p_soft, p_orig) and torch.equal(j_soft, j_orig)
    batch = collate_sets([soft, soft])
    assert len(batch["original_masks"]) == 2 and len(batch["original_masks"][0]) == 3
    with pytest.raises(CosegValueError, match="masks must be"):
        EvalSets(make_groups({"a": 3}), loader=pattern_loader, masks="area")  # type: ignore[arg-type]


def test_errors() -> None:
    with pytest.raises(DataError, match="no groups"):
        TrainSets([], 5, 32, loader=pattern_loader)
    with pytest.raises(DataError, match="without images"):
        EvalSets([Group("empty", (), ())], loader=pattern_loader)
    with pytest.raises(DataError, match="needs masks"):
        TrainSets([Group("u", ("a.jpg",), None)], 2, 8, loader=pattern_loader)
    with pytest.raises(DataError, match="needs masks"):  # metadata alone is no mask
        TrainSets([Group("u", ("a.jpg",), None, meta={"source": "x"})], 2, 8, loader=pattern_loader)
    TrainSets([Group("coco", ("a.jpg",), None, meta={"segmentations": ((),)})], 2, 8, loader=pattern_loader)
    with pytest.raises(CosegValueError):
        TrainSets(make_groups({"a": 3}), 0, 8, loader=pattern_loader)
    with pytest.raises(IndexError):
        TrainSets(make_groups({"a": 3}), 2, 8, loader=pattern_loader, length=1)[1]
