"""Superpixels in the data pipeline: methods, the content-keyed cache, the set wrapper."""

from __future__ import annotations

import pytest
import torch

from cosegkit.data.superpixels import SuperpixelCache, SuperpixelSets, superpixel_labels
from cosegkit.errors import CosegValueError


def two_colours() -> torch.Tensor:
    image = torch.zeros(3, 24, 24)
    image[2, :, 12:] = 1.0
    return image


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_methods_separate_two_colours(method: str) -> None:
    labels = superpixel_labels(two_colours(), method)
    assert labels.shape == (24, 24) and labels.dtype == torch.int32
    left, right = set(labels[:, :10].unique().tolist()), set(labels[:, 14:].unique().tolist())
    assert left.isdisjoint(right)


def test_cache_reads_back_and_keys_on_content_and_setting(tmp_path) -> None:
    cache = SuperpixelCache(tmp_path, "felzenszwalb")
    image = torch.rand(3, 16, 16)
    first = cache.labels(image)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    (path,) = tmp_path.glob("*.npz")
    mtime = path.stat().st_mtime_ns
    torch.testing.assert_close(cache.labels(image), first)
    assert path.stat().st_mtime_ns == mtime  # read, not written again
    cache.labels(torch.rand(3, 16, 16))
    SuperpixelCache(tmp_path, "felzenszwalb", scale=10.0).labels(image)
    SuperpixelCache(tmp_path, "slic").labels(image)
    assert len(list(tmp_path.glob("*.npz"))) == 4  # another image, another setting: new files


def test_cache_recomputes_an_unreadable_file(tmp_path) -> None:
    cache = SuperpixelCache(tmp_path)
    image = two_colours()
    expected = cache.labels(image)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(b"truncated")
    torch.testing.assert_close(cache.labels(image), expected)


def test_set_wrapper_adds_aligned_labels_and_zeros_for_padding(tmp_path) -> None:
    images = torch.stack([two_colours(), two_colours().flip(-1), torch.zeros(3, 24, 24)])
    item = {"images": images, "valid": torch.tensor([True, True, False]), "masks": torch.zeros(3, 1, 24, 24)}
    sets = SuperpixelSets([item], SuperpixelCache(tmp_path))
    out = sets[0]
    assert out["superpixels"].shape == (3, 24, 24)
    torch.testing.assert_close(out["superpixels"][0], superpixel_labels(images[0]))
    torch.testing.assert_close(out["superpixels"][1], superpixel_labels(images[1]))
    assert out["superpixels"][2].abs().sum() == 0 and len(sets) == 1


def test_bad_settings() -> None:
    with pytest.raises(CosegValueError, match="unknown superpixel method 'quickshift'"):
        SuperpixelCache(None, "quickshift")
    with pytest.raises(CosegValueError, match="unknown parameters"):
        superpixel_labels(two_colours(), "slic", scale=3)
    with pytest.raises(CosegValueError, match=r"\(3, H, W\)"):
        superpixel_labels(torch.zeros(1, 8, 8))
