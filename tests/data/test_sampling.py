"""Image-set sampling: sizes, determinism, padding, chunking, and image/mask alignment."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.data import Augmentation, DataError, EvalSets, Group, TrainSets, collate_sets, eval_chunks
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
    assert eval_chunks(11, 5, "interleaved") == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert eval_chunks(4, 5, wrap=True) == [[0, 1, 2, 3, 0]]
    with pytest.raises(CosegValueError):
        eval_chunks(0, 5)
    with pytest.raises(CosegValueError):
        eval_chunks(5, 2, "random")  # type: ignore[arg-type]


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
