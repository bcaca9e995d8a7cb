"""Loading images and masks: mode conversions, the binarisation rule, errors that name files."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cosegkit.data.io import (
    IMAGE_EXTENSIONS,
    check_pair,
    coco_mask,
    image_size,
    is_image_file,
    load_group_item,
    load_image,
    load_mask,
    load_pair,
)
from cosegkit.data.types import DataError, Group

H, W = 6, 8

VOC_PALETTE = [0, 0, 0] * 256  # PASCAL VOC's colours for the indices used here
VOC_PALETTE[3:6] = (128, 0, 0)  # 1 aeroplane
VOC_PALETTE[45:48] = (192, 128, 128)  # 15 person
VOC_PALETTE[765:768] = (224, 224, 192)  # 255 void / border


def _rgb_pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _box(value: int = 255, dtype=np.uint8) -> np.ndarray:
    """An (H, W) mask: a 2 x 3 box of ``value`` at rows 2-3, columns 3-5, zero elsewhere."""
    array = np.zeros((H, W), dtype=dtype)
    array[2:4, 3:6] = value
    return array


BOX = _box(1).astype(np.float32)


def _disc(size: int = 64, radius: float = 20.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= radius**2).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return (a & b).sum() / (a | b).sum()


# ------------------------------------------------------------------------------------ images


def test_load_image_rgb_exact_values(tmp_path: Path) -> None:
    pixels = _rgb_pixels()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_repeats_over_channels(tmp_path: Path, mode: str) -> None:
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W) * 5
    source = Image.fromarray(grey)
    if mode == "1":
        source = Image.fromarray(_box() > 0)
        grey = _box()
    source.save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == mode
    image = load_image(tmp_path / "g.png")
    expected = torch.from_numpy(grey).float() / 255
    for c in range(3):
        torch.testing.assert_close(image[c], expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale_scales_by_65535(tmp_path: Path, suffix: str) -> None:
    values = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    Image.fromarray(values).save(tmp_path / f"g16{suffix}")
    assert Image.open(tmp_path / f"g16{suffix}").mode.startswith("I;16")
    image = load_image(tmp_path / f"g16{suffix}")
    torch.testing.assert_close(image[1], torch.from_numpy(values.astype(np.float32) / 65535))
    assert image.max() > 0.99  # not clipped at 255 / 65535 as PIL's convert("L") would


def test_32bit_int_and_float_images(tmp_path: Path) -> None:
    Image.fromarray(np.full((H, W), 65535 // 2, np.int32)).save(tmp_path / "i.tif")
    Image.fromarray(np.full((H, W), 0.25, np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I" and Image.open(tmp_path / "f.tif").mode == "F"
    torch.testing.assert_close(load_image(tmp_path / "i.tif"), torch.full((3, H, W), 32767 / 65535))
    torch.testing.assert_close(load_image(tmp_path / "f.tif"), torch.full((3, H, W), 0.25))


def test_palette_with_transparency_loads_palette_colours(tmp_path: Path) -> None:
    index = _box(1)
    palette = Image.fromarray(index, mode="L").convert("P")
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    opened = Image.open(tmp_path / "p.png")
    assert opened.mode == "P" and "transparency" in opened.info
    image = load_image(tmp_path / "p.png")
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)  # transparent: colour kept
    torch.testing.assert_close(image[:, 2, 3], torch.tensor([200, 100, 50]) / 255.0)


def test_rgba_and_la_drop_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[...] = (200, 100, 50, 0)  # fully transparent: the colour is kept, not blackened
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    torch.testing.assert_close(load_image(tmp_path / "a.png")[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    Image.new("LA", (W, H), (77, 0)).save(tmp_path / "la.png")
    torch.testing.assert_close(load_image(tmp_path / "la.png"), torch.full((3, H, W), 77 / 255))


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk_converts_to_rgb(tmp_path: Path, suffix: str) -> None:
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(tmp_path / f"c{suffix}")  # pure red in CMYK
    assert Image.open(tmp_path / f"c{suffix}").mode == "CMYK"
    image = load_image(tmp_path / f"c{suffix}")
    torch.testing.assert_close(image[:, 3, 3], torch.tensor([1.0, 0.0, 0.0]), atol=0.03, rtol=0)


def test_ycbcr_converts_to_rgb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ycbcr = Image.new("RGB", (W, H), (10, 200, 30)).convert("YCbCr")
    ycbcr.save(tmp_path / "y.tif")
    if Image.open(tmp_path / "y.tif").mode != "YCbCr":
        # Pillow < 13 (which Gradio, in the test extra, pins) opens its own YCbCr TIFF as RGB and
        # cannot decode it: hand load_image the YCbCr image itself, as Pillow >= 13 reads it
        monkeypatch.setattr("cosegkit.data.io._open", lambda path, what, *, exif_transpose: ycbcr)
    torch.testing.assert_close(
        load_image(tmp_path / "y.tif")[:, 0, 0], torch.tensor([10, 200, 30]) / 255, atol=0.02, rtol=0
    )


def _exif_rotated_jpeg(path: Path, orientation: int = 6) -> None:
    pixels = np.zeros((H, W), np.uint8)
    pixels[: H // 2] = 255  # top half white
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=100)


def test_exif_orientation_is_applied_and_can_be_disabled(tmp_path: Path) -> None:
    _exif_rotated_jpeg(tmp_path / "r.jpg")  # 6: rotate 90 degrees clockwise to display
    image = load_image(tmp_path / "r.jpg")
    assert image.shape == (3, W, H)
    # the white top half is now the right half
    assert image[:, :, -(H // 2) :].mean() > 0.9 and image[:, :, : H // 2].mean() < 0.1
    assert load_image(tmp_path / "r.jpg", exif_transpose=False).shape == (3, H, W)
    assert image_size(tmp_path / "r.jpg") == (H, W)
    assert image_size(tmp_path / "r.jpg", exif_transpose=False) == (W, H)


# ------------------------------------------------------------------------------------ bad files


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated"):
        load_image(path)
    with pytest.raises(DataError, match=r"cut\.jpg"):
        load_mask(path)


def test_not_an_image_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(DataError, match=r"notes\.jpg") as info:
        load_image(tmp_path / "notes.jpg")
    assert isinstance(info.value, ValueError)
    with pytest.raises(DataError, match=r"not found.*absent\.png"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(DataError, match=r"absent\.png"):
        image_size(tmp_path / "absent.png")


def test_is_image_file() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_EXTENSIONS
    assert is_image_file("x/A.JPEG") and is_image_file("b.WebP") and is_image_file("c.TIFF")
    assert not is_image_file("x/a.txt") and not is_image_file("x/._a.jpg") and not is_image_file("x/a.gif")


# ------------------------------------------------------------------------------------ masks


def _save_and_load(path: Path, array: np.ndarray, **save) -> torch.Tensor:
    Image.fromarray(array).save(path, **save)
    mask = load_mask(path)
    assert mask.shape == (1, *array.shape[:2]) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    return mask[0]


@pytest.mark.parametrize("value", [255, 1])
def test_mask_0_255_and_0_1(tmp_path: Path, value: int) -> None:
    np.testing.assert_array_equal(_save_and_load(tmp_path / "m.png", _box(value)).numpy(), BOX)


def test_mask_grey_values_split_at_half_range(tmp_path: Path) -> None:
    array = np.array([[0, 127, 128, 255]], np.uint8)
    np.testing.assert_array_equal(_save_and_load(tmp_path / "m.png", array).numpy(), [[0, 0, 1, 1]])


def test_mask_mode_1(tmp_path: Path) -> None:
    Image.fromarray(_box() > 0).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "1"
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png")[0].numpy(), BOX)


@pytest.mark.parametrize("value", [65535, 1])
def test_mask_16bit(tmp_path: Path, value: int) -> None:
    np.testing.assert_array_equal(_save_and_load(tmp_path / "m.png", _box(value, np.uint16)).numpy(), BOX)


def test_mask_float(tmp_path: Path) -> None:
    np.testing.assert_array_equal(_save_and_load(tmp_path / "m.tif", _box(1, np.float32)).numpy(), BOX)


def test_palette_mask_drops_the_voc_void_index(tmp_path: Path) -> None:
    index = _box(15)
    index[1, :] = 255  # a void border above the object
    index[5, 0] = 1  # another class counts as foreground too
    mask = Image.fromarray(index, mode="L").convert("P")
    mask.putpalette(VOC_PALETTE)
    mask.save(tmp_path / "voc.png")
    assert Image.open(tmp_path / "voc.png").mode == "P"
    expected = BOX.copy()
    expected[5, 0] = 1
    np.testing.assert_array_equal(load_mask(tmp_path / "voc.png")[0].numpy(), expected)


def test_palette_mask_with_white_255_is_foreground(tmp_path: Path) -> None:
    mask = Image.fromarray(_box(255), mode="L").convert("P")
    mask.putpalette([v for g in range(256) for v in (g, g, g)])  # a grey ramp: 255 is white
    mask.save(tmp_path / "bw.png")
    assert Image.open(tmp_path / "bw.png").mode == "P"
    np.testing.assert_array_equal(load_mask(tmp_path / "bw.png")[0].numpy(), BOX)


def test_rgb_mask_takes_max_over_channels(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[2:4, 3:6] = (255, 0, 0)  # a red object: convert("L") would give 76 and lose it
    np.testing.assert_array_equal(_save_and_load(tmp_path / "m.png", rgb).numpy(), BOX)
    rgba = np.dstack([rgb, np.full((H, W), 255, np.uint8)])
    np.testing.assert_array_equal(_save_and_load(tmp_path / "m4.png", rgba).numpy(), BOX)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_mask_binarises_to_nearly_the_same_disc(tmp_path: Path, mode: str) -> None:
    disc = _disc()
    array = disc * 255 if mode == "L" else np.repeat((disc * 255)[..., None], 3, axis=-1)
    Image.fromarray(array.astype(np.uint8)).save(tmp_path / "disc.jpg", quality=75)
    noisy = np.asarray(Image.open(tmp_path / "disc.jpg"))
    assert len(np.unique(noisy)) > 2  # the file really is lossy
    mask = load_mask(tmp_path / "disc.jpg")[0].numpy()
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert _iou(mask, disc) > 0.95


def test_empty_jpeg_mask_stays_empty(tmp_path: Path) -> None:
    array = np.zeros((32, 32), np.uint8)
    array[::3, ::5] = 6  # faint noise, as lossy compression leaves
    Image.fromarray(array).save(tmp_path / "empty.jpg")
    assert load_mask(tmp_path / "empty.jpg").sum() == 0


def test_colour_mask_selects_one_colour(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[2:4, 3:6] = (0, 0, 128)  # cow
    rgb[0, :] = (0, 128, 128)  # sheep
    rgb[5, :] = (0, 0, 129)  # near cow, but not cow
    Image.fromarray(rgb).save(tmp_path / "gt.bmp")
    np.testing.assert_array_equal(load_mask(tmp_path / "gt.bmp", colour=(0, 0, 128))[0].numpy(), BOX)
    assert load_mask(tmp_path / "gt.bmp", colour=(0, 128, 128)).sum() == W
    assert load_mask(tmp_path / "gt.bmp", colour=(0, 0, 128), tolerance=1).sum() == BOX.sum() + W
    assert load_mask(tmp_path / "gt.bmp", colour=(192, 0, 0)).sum() == 0


def test_colour_mask_in_jpeg_uses_a_tolerance(tmp_path: Path) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    disc = _disc()
    rgb[disc > 0] = (192, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "gt.jpg", quality=90)
    mask = load_mask(tmp_path / "gt.jpg", colour=(192, 0, 0))[0].numpy()
    assert _iou(mask, disc) > 0.9  # chroma subsampling blurs a rim of edge pixels
    exact = load_mask(tmp_path / "gt.jpg", colour=(192, 0, 0), tolerance=0)[0].numpy()
    assert exact.sum() < mask.sum()  # JPEG noise: exact matching loses pixels


# ------------------------------------------------------------------------------------ pairs


def test_load_pair_and_check_pair(tmp_path: Path) -> None:
    Image.fromarray(_rgb_pixels()).save(tmp_path / "a.jpg")
    Image.fromarray(_box()).save(tmp_path / "a.png")
    image, mask = load_pair(tmp_path / "a.jpg", tmp_path / "a.png")
    assert image.shape == (3, H, W) and mask.shape == (1, H, W)
    check_pair(tmp_path / "a.jpg", tmp_path / "a.png")
    assert load_pair(tmp_path / "a.jpg", None)[1] is None


def test_mask_of_another_size_names_both_files_and_sizes(tmp_path: Path) -> None:
    Image.fromarray(_rgb_pixels()).save(tmp_path / "a.jpg")
    Image.new("L", (W + 1, H)).save(tmp_path / "a.png")
    pattern = rf"a\.png.*{W + 1}x{H}.*a\.jpg.*{W}x{H}"
    with pytest.raises(DataError, match=pattern):
        load_pair(tmp_path / "a.jpg", tmp_path / "a.png")
    with pytest.raises(DataError, match=pattern):
        check_pair(tmp_path / "a.jpg", tmp_path / "a.png")


def test_size_error_explains_exif_rotation(tmp_path: Path) -> None:
    _exif_rotated_jpeg(tmp_path / "r.jpg")
    Image.new("L", (W, H)).save(tmp_path / "r.png")  # drawn on the stored pixels
    with pytest.raises(DataError, match="EXIF orientation"):
        load_pair(tmp_path / "r.jpg", tmp_path / "r.png")
    image, mask = load_pair(tmp_path / "r.jpg", tmp_path / "r.png", exif_transpose=False)
    assert image.shape[-2:] == mask.shape[-2:] == (H, W)


def test_load_group_item_plain_colour_and_unlabelled(tmp_path: Path) -> None:
    Image.fromarray(_rgb_pixels()).save(tmp_path / "a.jpg")
    Image.fromarray(_box()).save(tmp_path / "a.png")
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[2:4, 3:6] = (0, 64, 0)
    rgb[0] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "a_GT.bmp")
    plain = Group("g", (tmp_path / "a.jpg",), (tmp_path / "a.png",))
    coloured = Group("bird", (tmp_path / "a.jpg",), (tmp_path / "a_GT.bmp",), meta={"mask_colour": (0, 64, 0)})
    unlabelled = Group("u", (tmp_path / "a.jpg",), None)
    np.testing.assert_array_equal(load_group_item(plain, 0)[1][0].numpy(), BOX)
    np.testing.assert_array_equal(load_group_item(coloured, 0)[1][0].numpy(), BOX)
    image, mask = load_group_item(unlabelled, 0)
    assert image.shape == (3, H, W) and mask is None
    with pytest.raises(IndexError):
        load_group_item(plain, 1)


def test_coco_mask_without_pycocotools_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    group = Group(
        "cat",
        (tmp_path / "a.jpg",),
        None,
        meta={"annotation_ids": ((1,),), "image_sizes": ((H, W),), "segmentations": (([[0, 0, 2, 0, 2, 2]],),)},
    )
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r'pip install "cosegkit\[coco\]"'):
        coco_mask(group, 0)


def test_coco_mask_refuses_non_coco_groups(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="read_coco"):
        coco_mask(Group("g", (tmp_path / "a.jpg",), None), 0)


def test_coco_mask_decodes_polygons_and_rle() -> None:
    pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed (pip install 'cosegkit[coco]')")
    uncompressed = {"size": [H, W], "counts": [7, 2, 4, 2, 33]}  # column-major runs: 2 + 2 pixels
    group = Group(
        "cat",
        (Path("a.jpg"),),
        None,
        meta={
            "annotation_ids": ((1, 2, 3),),
            "image_sizes": ((H, W),),
            "segmentations": (([[0, 0, 4, 0, 4, 3, 0, 3]], [[2, 1, 6, 1, 6, 2, 2, 2]], uncompressed),),
        },
    )
    mask = coco_mask(group, 0)[0].numpy()
    expected = np.zeros((H, W), np.float32)
    expected[0:3, 0:4] = 1  # the first box, 4 x 3
    expected[1:2, 2:6] = 1  # the second, 4 x 1, overlapping the first in 2 pixels
    expected[1:3, 1] = 1  # the RLE: column 1 rows 1-2 (inside the first box) ...
    expected[0:2, 2] = 1  # ... and column 2 rows 0-1 (also inside)
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 12 + 4 - 2


@pytest.mark.parametrize(
    "bad",
    [{"size": [H, W], "counts": [7, 2]}, 5, [["x", "y", "z", 1, 2, 3]]],
    ids=["short-rle", "not-a-segmentation", "polygon-of-strings"],
)
def test_coco_mask_bad_annotation_names_it(tmp_path: Path, bad) -> None:
    pytest.importorskip("pycocotools.mask", reason="pycocotools is not installed (pip install 'cosegkit[coco]')")
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps({}))
    group = Group(
        "cat",
        (tmp_path / "a.jpg",),
        None,
        meta={
            "annotations": annotations,
            "annotation_ids": ((41,),),
            "image_sizes": ((H, W),),
            "segmentations": ((bad,),),
        },
    )
    with pytest.raises(DataError, match=r"annotation 41 of .*instances\.json"):
        coco_mask(group, 0)
