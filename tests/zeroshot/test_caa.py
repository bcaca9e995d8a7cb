"""CAA against a literal loop transcription of CLIP-ES's refinement, and the attention the tower reads.

The reference follows CLIP-ES's ``main`` loop for one map at a time in plain Python: a
breadth-first search for the 8-connected regions above the box threshold (CLIP-ES's
``scoremap2bbox`` with ``multi_contour_eval=True``: the CAM's 8-bit copy ``int(255 x)`` in
float32, kept where it exceeds ``int(threshold * max)``, ``cv2.threshold``'s
``THRESH_BINARY``; or, for ``precision="float"``, ``cam > threshold * max``), a box over each
region's full extent,
the column/row normalisation loop, symmetrisation, one squaring, the column-wise box mask,
``trans @ cam`` and pytorch-grad-cam's min-max scaling. It differs from CLIP-ES's code in one
deliberate point: CLIP-ES clips ``x1 = min(x + w, width - 1)`` and then slices
``[x0:x1]``, which drops the last column (row) of a box touching the right (bottom) border;
here, as in cosegkit, a box always covers its region.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.zeroshot import ZeroShotCoseg
from cosegkit.zeroshot.caa import BOX_PRECISIONS, affinity, box_mask, caa_refine, connected_components, minmax_scale
from cosegkit.zeroshot.towers import vit_pass
from tests.zeroshot._support import clip_es_positional_embedding, normalise, positional_embedding

TOL = dict(atol=1e-5, rtol=1e-5)
NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

# ---------------------------------------------------------------------------- the reference


def reference_regions(mask: list[list[bool]]) -> list[list[tuple[int, int]]]:
    """8-connected regions of a boolean grid, by breadth-first search."""
    h, w = len(mask), len(mask[0])
    seen = [[False] * w for _ in range(h)]
    regions = []
    for r in range(h):
        for c in range(w):
            if not mask[r][c] or seen[r][c]:
                continue
            seen[r][c] = True
            queue, region = deque([(r, c)]), []
            while queue:
                y, x = queue.popleft()
                region.append((y, x))
                for dy, dx in NEIGHBOURS:
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy][xx] and not seen[yy][xx]:
                        seen[yy][xx] = True
                        queue.append((yy, xx))
            regions.append(region)
    return regions


def reference_threshold(cam: torch.Tensor, threshold: float, precision: str = "uint8") -> list[list[bool]]:
    """The pixels of one map ``(h, w)`` above the box threshold; nothing when the map is 0 everywhere."""
    if precision == "uint8":  # scoremap2bbox: (scoremap * 255).astype(np.uint8), then cv2.threshold
        scoremap = cam.numpy().astype(np.float32)
        image = [[int(np.float32(v) * np.float32(255)) for v in row] for row in scoremap]  # truncated
        thresh = int(threshold * max(max(row) for row in image))
        return [[v > thresh for v in row] for row in image]  # THRESH_BINARY: maxval where src > thresh
    peak = cam.max()
    limit = threshold * peak  # the same float32 product the module compares against
    return [[bool(cam[r, c] > limit) and bool(peak > 0) for c in range(cam.shape[1])] for r in range(cam.shape[0])]


def reference_box_mask(cam: torch.Tensor, threshold: float, precision: str = "uint8") -> list[list[float]]:
    h, w = cam.shape
    box = [[0.0] * w for _ in range(h)]
    for region in reference_regions(reference_threshold(cam, threshold, precision)):
        ys, xs = [y for y, _ in region], [x for _, x in region]
        for r in range(min(ys), max(ys) + 1):
            for c in range(min(xs), max(xs) + 1):
                box[r][c] = 1.0
    return box


def reference_affinity(attn: torch.Tensor) -> list[list[float]]:
    """CLIP-ES: divide by column sums, then row sums, (once and then twice more); symmetrise; square."""
    a = attn.double().tolist()
    n = len(a)

    def by_columns(a):
        sums = [sum(a[i][j] for i in range(n)) for j in range(n)]
        return [[a[i][j] / sums[j] for j in range(n)] for i in range(n)]

    def by_rows(a):
        return [[a[i][j] / sum(a[i]) for j in range(n)] for i in range(n)]

    a = by_rows(by_columns(a))
    for _ in range(2):
        a = by_rows(by_columns(a))
    a = [[(a[i][j] + a[j][i]) / 2 for j in range(n)] for i in range(n)]
    for _ in range(1):
        a = [[sum(a[i][k] * a[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
    return a


def reference_minmax(values: list[float]) -> list[float]:
    """pytorch-grad-cam's ``scale_cam_image``: ``x - min``, then ``/ (1e-7 + max)``."""
    low = min(values)
    shifted = [v - low for v in values]
    top = max(shifted)
    return [v / (1e-7 + top) for v in shifted]


def reference_refine(
    cam: torch.Tensor, attn: torch.Tensor, threshold: float, scale: bool = True, precision: str = "uint8"
) -> torch.Tensor:
    """CLIP-ES's refinement of one map ``(h, w)`` with patch attention ``(h*w, h*w)`` (``scale``: min-max scaled)."""
    h, w = cam.shape
    box = [v for row in reference_box_mask(cam, threshold, precision) for v in row]  # aff_mask.view(1, h * w)
    trans = reference_affinity(attn)
    n = h * w
    trans = [[trans[i][j] * box[j] for j in range(n)] for i in range(n)]  # column j times box[j]
    flat = [float(v) for v in cam.flatten().tolist()]  # cam_to_refine.view(-1, 1)
    refined = [sum(trans[i][j] * flat[j] for j in range(n)) for i in range(n)]
    return torch.tensor(reference_minmax(refined) if scale else refined, dtype=torch.float64).view(h, w)


def random_attention(m: int, l: int, g: torch.Generator, sharpness: float = 3.0) -> torch.Tensor:
    """Row-stochastic attention ``(m, l, l)`` like a softmax of scaled dot products."""
    return (sharpness * torch.randn(m, l, l, generator=g)).softmax(dim=-1)


def random_cam(m: int, h: int, w: int, g: torch.Generator, density: float, levels: int) -> torch.Tensor:
    """Min-max scaled maps with zeros (so that there are several regions) and, with ``levels``, plateaus."""
    cam = torch.rand(m, h, w, generator=g)
    if levels:
        cam = (cam * levels).round() / levels
    cam = cam * (torch.rand(m, h, w, generator=g) < density)
    return minmax_scale(cam)


grids = dict(
    m=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    threshold=st.floats(0.0, 0.95),
    density=st.floats(0.1, 1.0),
    levels=st.sampled_from([0, 2, 4]),
    seed=st.integers(0, 2**16),
)

# ---------------------------------------------------------------------------- properties


@given(**grids)
def test_connected_components_match_bfs(m, h, w, threshold, density, levels, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = random_cam(m, h, w, g, density, levels) > threshold
    labels = connected_components(mask)
    for k in range(m):
        grid = mask[k].tolist()
        expected = torch.zeros(h, w, dtype=torch.long)
        for region in reference_regions(grid):
            label = max(y * w + x for y, x in region) + 1  # the documented region id
            for y, x in region:
                expected[y, x] = label
        assert torch.equal(labels[k], expected), (grid, labels[k].tolist())


@given(**grids, precision=st.sampled_from(BOX_PRECISIONS))
def test_box_mask_matches_reference(m, h, w, threshold, density, levels, seed, precision) -> None:
    g = torch.Generator().manual_seed(seed)
    cam = random_cam(m, h, w, g, density, levels)
    # also maps whose maximum is not 1: above 1 for floats, below it for the 8-bit copy (whose values are in [0, 1])
    raw = cam * ((0.5 if precision == "float" else 0.01) + torch.rand(m, 1, 1, generator=g))
    for maps in (cam, raw.clamp(max=1) if precision == "uint8" else raw):
        boxes = box_mask(maps, threshold, precision)
        assert boxes.shape == (m, h, w) and boxes.dtype == torch.float32
        for k in range(m):
            assert boxes[k].tolist() == reference_box_mask(maps[k], threshold, precision)


@given(m=st.integers(1, 3), l=st.integers(1, 49), sharpness=st.floats(0.5, 4.0), seed=st.integers(0, 2**16))
def test_affinity_matches_reference(m, l, sharpness, seed) -> None:
    attn = random_attention(m, l, torch.Generator().manual_seed(seed), sharpness)
    out = affinity(attn)
    assert out.shape == (m, l, l)
    for k in range(m):
        expected = torch.tensor(reference_affinity(attn[k]), dtype=torch.float64)
        torch.testing.assert_close(out[k].double(), expected, **TOL)
    torch.testing.assert_close(out, out.transpose(-1, -2), **TOL)  # a symmetric matrix, squared


@given(**grids, precision=st.sampled_from(BOX_PRECISIONS))
def test_caa_refine_matches_reference(m, h, w, threshold, density, levels, seed, precision) -> None:
    g = torch.Generator().manual_seed(seed)
    cam = random_cam(m, h, w, g, density, levels)
    attn = random_attention(m, h * w, g)
    out = caa_refine(cam, attn, threshold, precision)
    assert out.shape == (m, h, w)
    assert bool(((out >= 0) & (out <= 1)).all())
    for k in range(m):
        expected = reference_refine(cam[k], attn[k], threshold, precision=precision)
        torch.testing.assert_close(out[k].double(), expected, **TOL)


# ---------------------------------------------------------------------------- edge cases


def test_all_zero_cam_gives_an_empty_mask_and_a_zero_map() -> None:
    cam = torch.zeros(2, 3, 4)
    attn = random_attention(2, 12, torch.Generator().manual_seed(0))
    assert not box_mask(cam).any()
    assert not connected_components(cam > 0).any()
    out = caa_refine(cam, attn)
    assert torch.equal(out, torch.zeros(2, 3, 4))
    torch.testing.assert_close(out[0].double(), reference_refine(cam[0], attn[0], 0.4))


def test_one_pixel_grid() -> None:
    for value in (0.0, 1.0):
        cam, attn = torch.full((1, 1, 1), value), torch.ones(1, 1, 1)
        assert box_mask(cam).tolist() == [[[value]]]
        assert caa_refine(cam, attn).tolist() == [[[0.0]]]  # min-max of one value is 0


def test_one_pixel_regions_are_their_own_boxes() -> None:
    cam = torch.zeros(1, 5, 5)
    for y, x in [(0, 0), (0, 4), (2, 2), (4, 0), (4, 4)]:  # isolated: no two are 8-neighbours
        cam[0, y, x] = 1.0
    assert torch.equal(box_mask(cam), cam)
    labels = connected_components(cam > 0)
    assert sorted(labels.unique().tolist()) == [0, 1, 5, 13, 21, 25]
    attn = random_attention(1, 25, torch.Generator().manual_seed(1))
    torch.testing.assert_close(caa_refine(cam, attn)[0].double(), reference_refine(cam[0], attn[0], 0.4), **TOL)


def test_regions_touching_the_border_keep_their_last_row_and_column() -> None:
    cam = torch.zeros(1, 4, 5)
    cam[0, 2, 3] = cam[0, 3, 4] = 1.0  # a diagonal pair in the bottom-right corner: one region
    cam[0, 0, 0] = 0.8  # and one pixel in the top-left corner
    expected = [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert box_mask(cam).long()[0].tolist() == expected
    assert reference_box_mask(cam[0], 0.4) == [[float(v) for v in row] for row in expected]


def test_a_box_covers_the_regions_full_extent() -> None:
    cam = torch.zeros(1, 5, 6)
    cam[0, 1, 1:5] = 1.0  # an L: a row and a column below its right end
    cam[0, 2:4, 4] = 0.9
    out = box_mask(cam)[0]
    assert out[1:4, 1:5].all() and out.sum() == 12  # the 3 x 4 rectangle, not only the 6 pixels


def test_threshold_is_strict_and_relative_to_the_maximum() -> None:
    for cam, precision in (([2.0, 1.0, 0.0, 0.5], "float"), ([1.0, 0.5, 0.0, 0.25], "uint8")):
        cam = torch.tensor([[cam]])
        assert box_mask(cam, 0.5, precision).tolist() == [[[1.0, 0.0, 0.0, 0.0]]]  # 1.0 is not > 0.5 * 2.0
        assert box_mask(cam, 0.2, precision).tolist() == [[[1.0, 1.0, 0.0, 1.0]]]  # 0.5 > 0.4: a second region
        assert box_mask(cam, 0.0, precision).tolist() == [[[1.0, 1.0, 0.0, 1.0]]]  # 0 is not > 0: still two
        assert box_mask(cam * 0.5, 0.5, precision).tolist() == [[[1.0, 0.0, 0.0, 0.0]]]  # relative to the max


def test_the_8_bit_copy_decides_near_the_threshold_as_clip_es() -> None:
    """CLIP-ES's scoremap2bbox compares int(255 x) with int(threshold * max); floats compare x with threshold * max."""
    near = torch.tensor([[[1.0, 0.0, 0.4011, 0.0, 0.405]]])  # 102.3 and 103.3 of 255; int(0.4 * 255) = 102
    assert box_mask(near).tolist() == [[[1.0, 0.0, 0.0, 0.0, 1.0]]]  # 102 is not above 102
    assert box_mask(near, precision="float").tolist() == [[[1.0, 0.0, 1.0, 0.0, 1.0]]]
    weak = torch.tensor([[[0.003, 0.0, 0.002]]])  # a peak under 1/255: the 8-bit copy is 0 everywhere
    assert not box_mask(weak).any() and box_mask(weak, precision="float").tolist() == [[[1.0, 0.0, 1.0]]]
    for precision in BOX_PRECISIONS:
        assert reference_box_mask(near[0], 0.4, precision) == box_mask(near, precision=precision).tolist()[0]
    attn = random_attention(1, 5, torch.Generator().manual_seed(0))
    assert not torch.equal(caa_refine(near, attn), caa_refine(near, attn, precision="float"))
    with pytest.raises(ValueError, match="box_precision"):
        box_mask(near, precision="uint16")


def test_docstring_examples_hold() -> None:
    mask = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]], dtype=torch.bool)
    assert connected_components(mask).tolist() == [[[2, 2, 0, 0], [0, 0, 0, 11], [0, 0, 11, 0]]]
    assert torch.allclose(minmax_scale(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])), torch.tensor([[[0, 0.5], [0.25, 1]]]))


# ---------------------------------------------------------------------------- the tower's attention


def reference_attention(clip, x: torch.Tensor, blocks: int) -> torch.Tensor:
    """Heads-averaged softmax(q k^T / sqrt(d)) of the last ``blocks`` blocks, from their inputs, patch part."""
    visual = clip.model.visual
    inputs = []
    resblocks = list(visual.transformer.resblocks)
    handles = [b.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for b in resblocks]
    try:
        visual(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = []
    for block, y in list(zip(resblocks, inputs, strict=True))[-blocks:]:
        z = block.ln_1(y)
        mha = block.attn
        q, k, _ = F.linear(z, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        n, t, c = z.shape
        heads = mha.num_heads
        q = q.view(n, t, heads, c // heads).transpose(1, 2)
        k = k.view(n, t, heads, c // heads).transpose(1, 2)
        maps.append((q @ k.transpose(-1, -2) / math.sqrt(c // heads)).softmax(dim=-1).mean(dim=1))
    return torch.stack(maps).mean(dim=0)[:, 1:, 1:]


@pytest.mark.parametrize("blocks", [1, 2, 3, 8])
def test_tower_attention_is_the_last_blocks_average(deep_vit, blocks: int) -> None:
    x = normalise(deep_vit, torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        visual = deep_vit.model.visual
        tp = vit_pass(visual, x, attention_blocks=blocks)
        with positional_embedding(visual, clip_es_positional_embedding(visual, (4, 5))):
            expected = reference_attention(deep_vit, x, min(blocks, 3))
    assert tp.attention.shape == (2, 20, 20)
    torch.testing.assert_close(tp.attention, expected, **TOL)


@pytest.mark.parametrize("precision", BOX_PRECISIONS)
@pytest.mark.parametrize("threshold", [0.4, 0.7])
@pytest.mark.parametrize("fixture", ["deep_vit", "sharp_vit"])
def test_refined_output_is_caa_of_the_cams(fixture: str, threshold: float, precision: str, request) -> None:
    clip = request.getfixturevalue(fixture)
    zs = ZeroShotCoseg(
        clip, background=("grass", "sky", "road"), attention_blocks=2, box_threshold=threshold, box_precision=precision
    )
    images = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = zs(images)
    x = normalise(clip, images.flatten(0, 1))
    with torch.no_grad():
        attn = reference_attention(clip, x, 2)
    cams, refined = out.cams.flatten(0, 1), out.refined.flatten(0, 1)
    for k in range(4):
        # A random CLIP's attention is nearly uniform, and three rounds of normalisation and a
        # squaring make it more so: the map before min-max scaling varies by a fraction of a
        # percent of its mean, and the scaling magnifies caa_refine's float32 rounding by
        # max / spread (see tests.zeroshot._support.sharpen_attention).
        raw = reference_refine(cams[k], attn[k], threshold, scale=False, precision=precision)
        atol = max(1e-5, 1e-5 * float(raw.max() / (raw.max() - raw.min())))
        expected = reference_refine(cams[k], attn[k], threshold, precision=precision)
        torch.testing.assert_close(refined[k].double(), expected, atol=atol, rtol=0)
    full = F.interpolate(refined[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.probs.flatten(0, 1), full.clamp(0, 1), **TOL)
    plain = ZeroShotCoseg(clip, background=("grass", "sky", "road"), refine=False)(images)
    torch.testing.assert_close(plain.cams, out.cams, **TOL)  # CAA changes only the refined maps
