"""read_voc_segmentation: VOC 2012 segmentation splits grouped by class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosegkit.data import VOC_CLASSES, get_reader, load_group_item, read_voc_segmentation, voc_colour
from cosegkit.data.types import DataError
from cosegkit.engine.config import DATASETS
from cosegkit.errors import CosegValueError

HORSE, PERSON, DOG = (VOC_CLASSES.index(c) + 1 for c in ("horse", "person", "dog"))
VOID = 255
PALETTE = [c for k in range(256) for c in voc_colour(k)]


def write_voc(root: Path, labels: dict[str, np.ndarray], splits: dict[str, list[str]], *, rgb: bool = False) -> Path:
    """A VOC2012 folder: one image and one palette (or RGB) mask per id."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for image_id, label in labels.items():
        Image.new("RGB", label.shape[::-1], (90, 120, 30)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        mask = Image.fromarray(label.astype(np.uint8))
        mask.putpalette(PALETTE)
        if rgb:
            mask = mask.convert("RGB")
        mask.save(voc / "SegmentationClass" / f"{image_id}.png")
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def labels_of(*regions: tuple[int, slice, slice], shape=(10, 12)) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for label, rows, cols in regions:
        out[rows, cols] = label
    return out


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    labels = {
        "a": labels_of(
            (HORSE, slice(0, 6), slice(0, 6)), (PERSON, slice(0, 2), slice(0, 2)), (VOID, slice(6, 7), slice(None))
        ),
        "b": labels_of((DOG, slice(2, 8), slice(2, 10))),
        "c": labels_of((PERSON, slice(0, 1), slice(0, 1)), (DOG, slice(5, 10), slice(0, 12))),
        "d": labels_of((HORSE, slice(0, 10), slice(0, 12))),
    }
    return write_voc(tmp_path, labels, {"train": ["a", "b", "c"], "val": ["d"]})


def test_groups_by_class_with_each_class_alone_as_foreground(voc: Path) -> None:
    groups = read_voc_segmentation(voc, classes=("dog", "horse", "person"))
    assert [(g.name, g.class_name, [p.stem for p in g.images]) for g in groups] == [
        ("dog", "dog", ["b", "c"]),
        ("horse", "horse", ["a"]),
        ("person", "person", ["a", "c"]),
    ]
    horse = load_group_item(groups[1], 0)[1][0]
    expected = np.zeros((10, 12), np.float32)
    expected[0:6, 0:6] = 1
    expected[0:2, 0:2] = 0  # the person in front of the horse
    assert np.array_equal(horse.numpy(), expected)  # void (row 6) and other classes are background
    person = load_group_item(groups[2], 0)[1]
    assert person.sum().item() == 4


def test_splits_and_the_vocdevkit_parent(voc: Path) -> None:
    groups = read_voc_segmentation(voc.parent, split="val", classes=("horse",))
    assert [(g.name, [p.stem for p in g.images]) for g in groups] == [("horse", ["d"])]


def test_min_fraction_drops_small_instances(voc: Path) -> None:
    groups = read_voc_segmentation(voc, classes=("dog", "person"), min_fraction=0.02)
    person = next(g for g in groups if g.name == "person")
    assert [p.stem for p in person.images] == ["a"]  # 4 of 120 pixels stay, 1 of 120 goes


def test_rgb_masks_read_like_palette_masks(tmp_path: Path) -> None:
    label = labels_of((HORSE, slice(0, 6), slice(0, 6)), (VOID, slice(6, 7), slice(None)))
    voc = write_voc(tmp_path, {"a": label}, {"train": ["a"]}, rgb=True)
    (group,) = read_voc_segmentation(voc, classes=("horse",))
    assert load_group_item(group, 0)[1].sum().item() == 36


def test_every_class_absent_is_an_error_unless_warned(voc: Path) -> None:
    with pytest.raises(DataError, match="have no images: aeroplane"):
        read_voc_segmentation(voc)
    with pytest.warns(UserWarning, match="left out"):
        groups = read_voc_segmentation(voc, on_empty="warn")
    assert [g.name for g in groups] == ["dog", "horse", "person"]


def test_errors_name_what_is_missing(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no split list .*test\.txt; the splits there are \['train', 'val'\]"):
        read_voc_segmentation(voc, split="test")
    with pytest.raises(DataError, match="expected this layout"):
        read_voc_segmentation(tmp_path / "nowhere")
    (voc / "ImageSets/Segmentation/train.txt").write_text("a\nzz\n")
    with pytest.raises(DataError, match=r"lists 'zz' but .*zz\.jpg does not exist"):
        read_voc_segmentation(voc, classes=("horse",))
    (voc / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (voc / "SegmentationClass/b.png").unlink()
    with pytest.raises(DataError, match=r"have no mask: .*b\.jpg"):
        read_voc_segmentation(voc, classes=("horse",))
    with pytest.warns(UserWarning, match="left out"):
        groups = read_voc_segmentation(voc, classes=("horse",), missing_masks="skip")
    assert [p.stem for p in groups[0].images] == ["a"]


def test_bad_arguments(voc: Path) -> None:
    with pytest.raises(CosegValueError, match="unknown VOC classes \\['horses'\\]"):
        read_voc_segmentation(voc, classes=("horses",))
    with pytest.raises(CosegValueError, match="min_fraction"):
        read_voc_segmentation(voc, min_fraction=1.0)
    with pytest.raises(CosegValueError, match="classes is empty"):
        read_voc_segmentation(voc, classes=())


def test_voc_palette() -> None:
    assert voc_colour(0) == (0, 0, 0)
    assert [voc_colour(k) for k in (1, 2, 3, 12, 20)] == [
        (128, 0, 0),
        (0, 128, 0),
        (128, 128, 0),
        (64, 0, 128),
        (0, 64, 128),
    ]
    assert len({voc_colour(k) for k in range(256)}) == 256


def test_reachable_by_name_from_the_command_line() -> None:
    assert get_reader("voc_segmentation") is read_voc_segmentation
    assert "voc_segmentation" in DATASETS
