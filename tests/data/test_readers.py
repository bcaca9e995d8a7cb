"""Dataset readers: one fixture tree per layout, the error paths, and the real PASCAL-VOC set."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosegkit.data.io import image_size, load_group_item
from cosegkit.data.readers import (
    MSRC_COLOURS,
    READERS,
    get_reader,
    read_coco,
    read_folder,
    read_icoseg,
    read_internet,
    read_msrc,
    read_pascal_voc,
    read_processed,
)
from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

H, W = 6, 8

PASCAL_ROOT = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pascal_voc_coseg").resolve()
PASCAL_COUNTS = {
    "Aero": 66,
    "Bicycle": 43,
    "Bird": 77,
    "Boat": 54,
    "Bottle": 44,
    "Bus": 47,
    "Car": 63,
    "Cat": 75,
    "Chair": 48,
    "Dog": 76,
    "Mbike": 56,
    "Monitor": 47,
    "Person": 115,
    "Plant": 41,
}
COCO_SKIP_REASON = "pycocotools is not installed (pip install 'cosegkit[coco]')"


def _image(path: Path, size: tuple[int, int] = (W, H), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _mask(path: Path, foreground: int, size: tuple[int, int] = (W, H)) -> Path:
    """A 0/255 mask whose first ``foreground`` pixels (row-major) are foreground."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros(size[0] * size[1], np.uint8)
    values[:foreground] = 255
    Image.fromarray(values.reshape(size[1], size[0])).save(path)
    return path


def _mask_sums(group: Group) -> list[int]:
    sums = []
    for i in range(len(group)):
        image, mask = load_group_item(group, i)
        assert image.shape == (3, H, W) and mask.shape == (1, H, W)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        sums.append(int(mask.sum()))
    return sums


# ------------------------------------------------------------------------------------ PASCAL VOC


def _pascal_tree(root: Path) -> Path:
    """Aero (img_10, img_2, img_3), Mbike (img_5), Widget (img_7); mask of img_k has k pixels."""
    for cls, stems in {"Aero": (10, 2, 3), "Mbike": (5,), "Widget": (7,)}.items():
        for k in stems:
            _image(root / "Pascal_10" / cls / f"img_{k}.jpg", seed=k)
            _mask(root / "eval_pascal_10" / cls / f"img_{k}.png", k)
    _mask(root / "eval_pascal_10" / "Aero" / "img_99.png", 1)  # a mask without image: ignored
    (root / "Pascal_10" / "Aero" / "Thumbs.db").write_bytes(b"\0")  # not an image: ignored
    (root / "Pascal_10" / "Aero" / "._img_2.jpg").write_bytes(b"\0")  # macOS resource fork: ignored
    return root


def test_pascal_groups_names_pairing_and_masks(tmp_path: Path) -> None:
    groups = read_pascal_voc(_pascal_tree(tmp_path))
    assert [g.name for g in groups] == ["Aero", "Mbike", "Widget"]
    assert [g.class_name for g in groups] == ["airplane", "motorcycle", "widget"]
    aero = groups[0]
    assert [p.name for p in aero.images] == ["img_10.jpg", "img_2.jpg", "img_3.jpg"]  # sorted by name
    assert [p.name for p in aero.masks] == ["img_10.png", "img_2.png", "img_3.png"]
    assert all(p.parent == tmp_path / "eval_pascal_10" / "Aero" for p in aero.masks)
    assert _mask_sums(aero) == [10, 2, 3]  # each image got the mask of its stem
    assert _mask_sums(groups[1]) == [5]


def test_pascal_image_without_mask_names_it(tmp_path: Path) -> None:
    root = _pascal_tree(tmp_path)
    _image(root / "Pascal_10" / "Mbike" / "img_6.jpg")
    with pytest.raises(DataError, match=r"img_6\.jpg") as info:
        read_pascal_voc(root)
    assert "eval_pascal_10" in str(info.value) and "Mbike" in str(info.value)
    with pytest.warns(UserWarning, match=r"img_6\.jpg"):
        groups = read_pascal_voc(root, missing_masks="skip")
    assert [p.name for p in groups[1].images] == ["img_5.jpg"]


def test_pascal_missing_mask_folder_is_named(tmp_path: Path) -> None:
    root = _pascal_tree(tmp_path)
    _image(root / "Pascal_10" / "Sofa" / "img_1.jpg")
    with pytest.raises(DataError, match=r"img_1\.jpg.*does not exist"):
        read_pascal_voc(root)


def test_pascal_empty_group_is_reported(tmp_path: Path) -> None:
    root = _pascal_tree(tmp_path)
    (root / "Pascal_10" / "Empty").mkdir()
    (root / "Pascal_10" / "Hollow").mkdir()
    (root / "Pascal_10" / "Hollow" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"2 group\(s\).*Empty, Hollow"):
        read_pascal_voc(root)
    with pytest.warns(UserWarning, match=r"Empty, Hollow"):
        groups = read_pascal_voc(root, on_empty="warn")
    assert [g.name for g in groups] == ["Aero", "Mbike", "Widget"]


def test_pascal_group_emptied_by_skipping_is_reported(tmp_path: Path) -> None:
    root = _pascal_tree(tmp_path)
    _image(root / "Pascal_10" / "Sofa" / "img_1.jpg")
    with pytest.warns(UserWarning, match="img_1"), pytest.raises(DataError, match="Sofa"):
        read_pascal_voc(root, missing_masks="skip")


def test_pascal_missing_root_shows_the_expected_tree(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"(?s)Pascal_10.*does not exist.*eval_pascal_10/<Class>/img_XXXX\.png"):
        read_pascal_voc(tmp_path / "nowhere")
    (tmp_path / "Pascal_10").mkdir()
    with pytest.raises(DataError, match="no group"):
        read_pascal_voc(tmp_path)


def test_bad_option_values(tmp_path: Path) -> None:
    root = _pascal_tree(tmp_path)
    with pytest.raises(CosegValueError, match="missing_masks"):
        read_pascal_voc(root, missing_masks="ignore")
    with pytest.raises(CosegValueError, match="on_empty"):
        read_pascal_voc(root, on_empty="skip")


def test_two_masks_of_one_stem_are_ambiguous(tmp_path: Path) -> None:
    root = _pascal_tree(tmp_path)
    _mask(root / "eval_pascal_10" / "Mbike" / "img_5.bmp", 1)
    with pytest.raises(DataError, match=r"img_5\.bmp.*img_5\.png|img_5\.png.*img_5\.bmp"):
        read_pascal_voc(root)


def test_unreadable_image_and_wrong_mask_size_surface_at_load(tmp_path: Path) -> None:
    root = _pascal_tree(tmp_path)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "Pascal_10" / "Mbike" / "img_5.jpg").write_bytes(buffer.getvalue()[:300])
    _mask(root / "eval_pascal_10" / "Widget" / "img_7.png", 7, size=(W, H + 2))
    groups = {g.name: g for g in read_pascal_voc(root)}
    with pytest.raises(DataError, match=r"Mbike.img_5\.jpg"):
        load_group_item(groups["Mbike"], 0)
    with pytest.raises(DataError, match=rf"img_7\.png is {W}x{H + 2}.*img_7\.jpg is {W}x{H}"):
        load_group_item(groups["Widget"], 0)


# ------------------------------------------------------------------------------------ iCoseg


def _icoseg_tree(root: Path) -> Path:
    for group, stems in {"002 Kite": ("b", "a"), "001 Alaskan Brown Bear": ("x",), "010_Elephants": ("e",)}.items():
        for n, stem in enumerate(stems, start=1):
            _image(root / "dataset_public" / "images" / group / f"{stem}.jpg")
            _mask(root / "dataset_public" / "ground_truth" / group / f"{stem}.png", n)
    return root


def test_icoseg_names_and_class_names(tmp_path: Path) -> None:
    groups = read_icoseg(_icoseg_tree(tmp_path))
    assert [g.name for g in groups] == ["001 Alaskan Brown Bear", "002 Kite", "010_Elephants"]
    assert [g.class_name for g in groups] == ["alaskan brown bear", "kite", "elephants"]
    kite = groups[1]
    assert [p.name for p in kite.images] == ["a.jpg", "b.jpg"]
    assert _mask_sums(kite) == [2, 1]  # a.png has 2 pixels, b.png 1
    # dataset_public itself as root
    assert [g.name for g in read_icoseg(tmp_path / "dataset_public")] == [g.name for g in groups]


def test_icoseg_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"(?s)dataset_public.*ground_truth"):
        read_icoseg(tmp_path)


# ------------------------------------------------------------------------------------ MSRC


def _pascal_bit_colour(label: int) -> tuple[int, int, int]:
    """PASCAL VOC's colour-map rule: label bits interleaved into the high bits of R, G, B."""
    r = g = b = 0
    for j in range(8):
        r |= ((label >> 0) & 1) << (7 - j)
        g |= ((label >> 1) & 1) << (7 - j)
        b |= ((label >> 2) & 1) << (7 - j)
        label >>= 3
    return r, g, b


def test_msrc_colour_table_follows_msrc_label_ids() -> None:
    ids = dict.fromkeys(MSRC_COLOURS)
    names = list(MSRC_COLOURS)
    for i, name in enumerate(names[:18], start=1):  # building .. chair: ids 1-18
        ids[name] = i
    for i, name in enumerate(names[18:], start=21):  # road, cat, dog, body, boat: ids 21-25
        ids[name] = i
    assert {n: _pascal_bit_colour(i) for n, i in ids.items()} == MSRC_COLOURS
    assert len(MSRC_COLOURS) == 23 and len(set(MSRC_COLOURS.values())) == 23
    assert (0, 0, 0) not in MSRC_COLOURS.values()  # void
    assert MSRC_COLOURS["cat"] == (0, 192, 128) and MSRC_COLOURS["dog"] == (128, 192, 128)


def _msrc_tree(root: Path) -> Path:
    """1_1: cow (6 px) + sheep (8 px); 1_2: sheep (4 px); 2_1: aeroplane (12 px) + one cow pixel."""
    cow, sheep, plane = MSRC_COLOURS["cow"], MSRC_COLOURS["sheep"], MSRC_COLOURS["aeroplane"]
    maps = {}
    gt = np.zeros((H, W, 3), np.uint8)
    gt[2:4, 3:6] = cow
    gt[5, :] = sheep
    maps["1_1_s"] = gt
    gt = np.zeros((H, W, 3), np.uint8)
    gt[0, :4] = sheep
    gt[1:, :] = MSRC_COLOURS["grass"]
    maps["1_2_s"] = gt
    gt = np.zeros((H, W, 3), np.uint8)
    gt[0:2, 0:6] = plane
    gt[5, 7] = cow
    maps["2_1_s"] = gt
    for stem, colours in maps.items():
        _image(root / "Images" / f"{stem}.bmp")
        (root / "GroundTruth").mkdir(parents=True, exist_ok=True)
        Image.fromarray(colours).save(root / "GroundTruth" / f"{stem}_GT.bmp")
    return root


def test_msrc_groups_by_colour(tmp_path: Path) -> None:
    groups = read_msrc(_msrc_tree(tmp_path), classes=("sheep", "cow", "plane"))
    assert [g.name for g in groups] == ["cow", "plane", "sheep"]
    assert [g.class_name for g in groups] == ["cow", "airplane", "sheep"]
    cow, plane, sheep = groups
    assert [p.stem for p in cow.images] == ["1_1_s", "2_1_s"]  # two classes in 1_1: it joins both groups
    assert [p.stem for p in sheep.images] == ["1_1_s", "1_2_s"]
    assert [p.name for p in plane.masks] == ["2_1_s_GT.bmp"]
    assert cow.meta["mask_colour"] == MSRC_COLOURS["cow"] and plane.meta["mask_colour"] == MSRC_COLOURS["aeroplane"]
    assert _mask_sums(cow) == [6, 1]
    assert _mask_sums(sheep) == [8, 4]
    assert _mask_sums(plane) == [12]


def test_msrc_min_fraction(tmp_path: Path) -> None:
    root = _msrc_tree(tmp_path)
    groups = read_msrc(root, classes=("cow",), min_fraction=0.05)  # 1 of 48 pixels is not enough
    assert [p.stem for p in groups[0].images] == ["1_1_s"]
    with pytest.raises(CosegValueError, match="min_fraction"):
        read_msrc(root, classes=("cow",), min_fraction=1.0)


def test_msrc_absent_class_unknown_class_missing_gt(tmp_path: Path) -> None:
    root = _msrc_tree(tmp_path)
    with pytest.raises(DataError, match=r"dog"):
        read_msrc(root, classes=("cow", "dog"))
    with pytest.warns(UserWarning, match="dog"):
        assert [g.name for g in read_msrc(root, classes=("cow", "dog"), on_empty="warn")] == ["cow"]
    with pytest.raises(CosegValueError, match=r"'unicorn'.*cow"):
        read_msrc(root, classes=("unicorn",))
    _image(root / "Images" / "3_1_s.bmp")
    with pytest.raises(DataError, match=r"3_1_s\.bmp.*_GT"):
        read_msrc(root)
    with pytest.raises(DataError, match=r"(?s)Images.*GroundTruth/<k>_<m>_s_GT\.bmp"):
        read_msrc(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ Internet


def _internet_tree(root: Path) -> Path:
    for folder, stems in {"Airplane100": ("0002", "0001"), "Car100": ("0001",), "Airplane": ("0003",)}.items():
        for n, stem in enumerate(stems):
            _image(root / "Data" / folder / f"{stem}.jpg")
            _mask(root / "Data" / folder / "GroundTruth" / f"{stem}.png", n)  # the first mask is empty
    return root


def test_internet_subsets_and_empty_masks(tmp_path: Path) -> None:
    root = _internet_tree(tmp_path)
    groups = read_internet(root)
    assert [(g.name, g.class_name, len(g)) for g in groups] == [("Airplane100", "airplane", 2), ("Car100", "car", 1)]
    assert [p.name for p in groups[0].images] == ["0001.jpg", "0002.jpg"]
    assert _mask_sums(groups[0]) == [1, 0]  # an image without the object has an empty mask: fine
    assert [g.name for g in read_internet(root, subset="full")] == ["Airplane"]
    assert [g.name for g in read_internet(root, subset="all")] == ["Airplane", "Airplane100", "Car100"]
    assert [g.name for g in read_internet(root / "Data")] == ["Airplane100", "Car100"]  # Data as root


def test_internet_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"(?s)Data.*Airplane100/GroundTruth"):
        read_internet(tmp_path)
    _image(tmp_path / "Data" / "Horse" / "a.jpg")
    with pytest.raises(DataError, match=r"subset='100'.*Horse"):
        read_internet(tmp_path)
    with pytest.raises(DataError, match=r"a\.jpg.*GroundTruth"):
        read_internet(tmp_path, subset="full")
    with pytest.raises(CosegValueError, match="subset"):
        read_internet(tmp_path, subset="half")


# ------------------------------------------------------------------------------------ processed


def _processed_tree(root: Path) -> Path:
    base = root / "iCoseg8"
    _image(base / "image" / "bear" / "1.jpg")
    _mask(base / "groundtruth" / "bear" / "1.png", 3)
    _image(base / "image" / "bear" / "2.jpg")
    _mask(base / "groundtruth" / "bear" / "2.bmp", 5)
    big = (64, 48)  # JPEG masks need room for their noise to be noise
    _image(base / "image" / "Kite_Panda" / "3.jpg", size=big)
    values = np.zeros((48, 64), np.uint8)
    values[10:30, 20:50] = 255
    (base / "groundtruth" / "Kite_Panda").mkdir(parents=True)
    Image.fromarray(values).save(base / "groundtruth" / "Kite_Panda" / "3.jpg", quality=70)
    return root


def test_processed_layout_with_mixed_mask_formats(tmp_path: Path) -> None:
    root = _processed_tree(tmp_path)
    groups = read_processed(root / "iCoseg8")
    assert [(g.name, g.class_name) for g in groups] == [("Kite_Panda", "kite panda"), ("bear", "bear")]
    assert [p.suffix for p in groups[1].masks] == [".png", ".bmp"]
    assert _mask_sums(groups[1]) == [3, 5]
    _, mask = load_group_item(groups[0], 0)
    assert mask.shape == (1, 48, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(int(mask.sum()) - 20 * 30) <= 6  # the JPEG mask binarises to nearly its box
    assert [g.name for g in read_processed(root, dataset="iCoseg8")] == ["Kite_Panda", "bear"]
    with pytest.raises(DataError, match=r"(?s)MSRC7.image.*groundtruth/<class>"):
        read_processed(root, dataset="MSRC7")


# ------------------------------------------------------------------------------------ folder


def test_folder_with_and_without_masks(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "cats" / "b.png")
    _image(tmp_path / "images" / "cats" / "a.jpg")
    _image(tmp_path / "images" / "dogs" / "c.webp")
    groups = read_folder(tmp_path)
    assert [(g.name, g.class_name, len(g), g.masks) for g in groups] == [
        ("cats", "cats", 2, None),
        ("dogs", "dogs", 1, None),
    ]
    assert [p.name for p in groups[0].images] == ["a.jpg", "b.png"]
    image, mask = load_group_item(groups[1], 0)
    assert image.shape == (3, H, W) and mask is None

    _mask(tmp_path / "masks" / "cats" / "a.png", 2)
    _mask(tmp_path / "masks" / "cats" / "b.png", 4)
    with pytest.raises(DataError, match=r"c\.webp.*masks.dogs"):  # masks/ exists: every image needs one
        read_folder(tmp_path)
    _mask(tmp_path / "masks" / "dogs" / "c.png", 1)
    groups = read_folder(tmp_path)
    assert [_mask_sums(g) for g in groups] == [[2, 4], [1]]


def test_folder_loose_images_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"(?s)images.*does not exist.*images/<group>"):
        read_folder(tmp_path)
    _image(tmp_path / "images" / "x.jpg")
    with pytest.raises(DataError, match=r"directly in .*images.*own folder"):
        read_folder(tmp_path)


# ------------------------------------------------------------------------------------ COCO


def _coco_tree(root: Path) -> tuple[Path, Path]:
    """cat: img1 (boxes of 12 and 4 px overlapping in 2), img2 (8 px); dog: img1 (9 px),
    img3 (8 px box and a 4 px crowd RLE); zebra: no instance."""
    images = root / "train"
    for i, name in enumerate(("c.jpg", "a.jpg", "b.jpg"), start=1):
        _image(images / name, seed=i)

    def box(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    annotations = [
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": box(0, 0, 4, 3), "area": 12.0, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": box(2, 1, 6, 2), "area": 4.0, "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 2, "segmentation": box(5, 3, 8, 6), "area": 9.0, "iscrowd": 0},
        {"id": 21, "image_id": 2, "category_id": 1, "segmentation": box(1, 1, 3, 5), "area": 8.0, "iscrowd": 0},
        {"id": 31, "image_id": 3, "category_id": 2, "segmentation": box(0, 0, 8, 1), "area": 8.0, "iscrowd": 0},
        {  # column-major runs: skip 13, 2 on (rows 1-2 of column 2), skip 4, 2 on (rows 1-2 of column 3)
            "id": 32,
            "image_id": 3,
            "category_id": 2,
            "segmentation": {"size": [H, W], "counts": [13, 2, 4, 2, 27]},
            "area": 4.0,
            "iscrowd": 1,
        },
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "c.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 3, "file_name": "b.jpg", "height": H, "width": W},
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "zebra"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, images


def test_coco_groups_and_union_masks(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools.mask", reason=COCO_SKIP_REASON)
    annotations, images = _coco_tree(tmp_path)
    with pytest.raises(DataError, match="zebra"):  # a category without instances is an empty group
        read_coco(annotations, images)
    with pytest.warns(UserWarning, match="zebra"):
        groups = read_coco(annotations, images, on_empty="warn")
    assert [(g.name, g.class_name, g.masks) for g in groups] == [("cat", "cat", None), ("dog", "dog", None)]
    cat, dog = groups
    assert [p.name for p in cat.images] == ["a.jpg", "c.jpg"]  # sorted by file name
    assert cat.meta["category_id"] == 1 and cat.meta["annotations"] == annotations
    assert cat.meta["image_ids"] == (2, 1) and cat.meta["annotation_ids"] == ((21,), (11, 12))
    assert _mask_sums(cat) == [8, 12 + 4 - 2]
    assert [p.name for p in dog.images] == ["b.jpg", "c.jpg"]
    assert _mask_sums(dog) == [8 + 4, 9]
    _, crowd = load_group_item(dog, 0)
    assert crowd[0, 1:3, 2:4].sum() == 4 and crowd[0, 0].sum() == W
    no_crowd = read_coco(annotations, images, categories=["dog"], include_crowd=False)
    assert _mask_sums(no_crowd[0]) == [8, 9]
    assert [g.name for g in read_coco(annotations, images, categories=[2, "cat"])] == ["cat", "dog"]


def test_coco_filters(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools.mask", reason=COCO_SKIP_REASON)
    annotations, images = _coco_tree(tmp_path)
    keep = dict(categories=["cat", "dog"])
    groups = read_coco(annotations, images, min_area=8.5, **keep)  # instances of area > 8.5 only
    assert [(g.name, [p.name for p in g.images]) for g in groups] == [("cat", ["c.jpg"]), ("dog", ["c.jpg"])]
    assert _mask_sums(groups[0]) == [14]  # the mask still holds the small instance of the image
    groups = read_coco(annotations, images, min_area=10, **keep)
    assert [(g.name, len(g)) for g in groups] == [("cat", 1)]
    assert [len(g) for g in read_coco(annotations, images, min_images=2, **keep)] == [2, 2]
    groups = read_coco(annotations, images, min_area=7.5, min_images=2, **keep)
    assert [(g.name, len(g)) for g in groups] == [("cat", 2), ("dog", 2)]
    with pytest.raises(DataError, match=r"2 or more images.*area > 8"):  # each has one image of area > 8
        read_coco(annotations, images, min_area=8, min_images=2, **keep)
    with pytest.raises(DataError, match=r"100 or more images.*area > 4000"):
        read_coco(annotations, images, ssnm_filter=True, **keep)
    with pytest.raises(CosegValueError, match="ssnm_filter"):
        read_coco(annotations, images, ssnm_filter=True, min_area=5)


def test_coco_errors(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("pycocotools.mask", reason=COCO_SKIP_REASON)
    annotations, images = _coco_tree(tmp_path)
    with pytest.raises(CosegValueError, match="'horse'"):
        read_coco(annotations, images, categories=["horse"])
    with pytest.raises(DataError, match=r"missing\.json"):
        read_coco(tmp_path / "missing.json", images)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match=r"broken\.json"):
        read_coco(tmp_path / "broken.json", images)
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO instances file"):
        read_coco(tmp_path / "other.json", images)
    with pytest.raises(DataError, match=r"(?s)nowhere.*file_name"):
        read_coco(annotations, tmp_path / "nowhere")
    (images / "a.jpg").unlink()
    with pytest.raises(DataError, match=r"1 image file.*a\.jpg"):
        read_coco(annotations, images, categories=["cat"])
    _image(images / "a.jpg", size=(W + 2, H))
    cat = read_coco(annotations, images, categories=["cat"])[0]
    with pytest.raises(DataError, match=rf"a\.jpg is {W + 2}x{H}.*instances\.json gives it {W}x{H}"):
        load_group_item(cat, 0)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r'pip install "cosegkit\[coco\]"'):
        read_coco(annotations, images)


# ------------------------------------------------------------------------------------ factory


def test_readers_factory() -> None:
    assert set(READERS) == {
        "pascal_voc",
        "icoseg",
        "msrc",
        "internet",
        "processed",
        "coco",
        "voc_segmentation",
        "folder",
    }
    assert get_reader("msrc") is read_msrc and get_reader("folder") is read_folder
    with pytest.raises(KeyError, match=r"'voc'.*coco.*pascal_voc"):
        get_reader("voc")


# ------------------------------------------------------------------------------------ real data


@pytest.mark.skipif(
    not (PASCAL_ROOT / "Pascal_10").is_dir(),
    reason=f"the PASCAL-VOC co-segmentation data is not at {PASCAL_ROOT} (present in CI, not on users' machines)",
)
def test_pascal_voc_real_data() -> None:
    groups = read_pascal_voc(PASCAL_ROOT)
    assert {g.name: len(g) for g in groups} == PASCAL_COUNTS
    assert sum(len(g) for g in groups) == 852
    names = {g.name: g.class_name for g in groups}
    assert names["Mbike"] == "motorcycle" and names["Aero"] == "airplane"
    assert names["Monitor"] == "tv" and names["Plant"] == "potted plant" and names["Person"] == "person"
    for group in groups:
        assert all(i.stem == m.stem for i, m in zip(group.images, group.masks, strict=True))
        for image_path, mask_path in zip(group.images, group.masks, strict=True):  # headers only: fast
            assert image_size(image_path) == image_size(mask_path), (image_path, mask_path)
        for index in (0, len(group) // 2, len(group) - 1):
            image, mask = load_group_item(group, index)
            assert image.shape[0] == 3 and image.shape[1:] == mask.shape[1:]
            assert set(mask.unique().tolist()) == {0.0, 1.0}
