"""Tests of P and J against hand counts and a transcription of the SSNM/UFO evaluation code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torchvision import transforms

from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.metrics import PRESETS, ThresholdPreset, get_preset, precision_jaccard, reduce_scores

seeds = st.integers(0, 2**31 - 1)
presets = st.sampled_from(sorted(PRESETS))


def _map(rows: list[list[float]]) -> torch.Tensor:
    """One 2-D map as a (1, 1, 1, H, W) batch."""
    return torch.tensor(rows, dtype=torch.float32)[None, None, None]


# ---------------------------------------------------------------------------- the reference
# SSNM (cj4L/SSNM-Coseg) and UFO (suyukun666/UFO), tools.py and val.py, transcribed: numpy on
# float32 arrays, the ground truth read as 8-bit 'L', resized by torchvision on the PIL image.


def _generate_binary_map(pred: np.ndarray, th: float) -> np.ndarray:
    # tools.py, generate_binary_map(pred, 'mean+std', th)
    threshold = np.mean(pred) + np.std(pred)
    if threshold > th:
        threshold = th
    binary_map = pred > threshold
    return binary_map.astype(np.float32)


def _calc_precision_and_jaccard(pred: np.ndarray, gt: np.ndarray, th: float) -> tuple[float, float]:
    # tools.py, calc_precision_and_jaccard(pred, gt, th); th=0.8 in SSNM, 0.5 in UFO
    bin_pred = _generate_binary_map(pred, th)
    tp = (bin_pred == gt).sum()
    precision = tp / (pred.size)
    i = (bin_pred * gt).sum()
    u = bin_pred.sum() + gt.sum() - i
    jaccard = i / (u + 1e-10)
    return precision, jaccard


def _calc_fixed(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    # the same formulas with the fixed 0.5 threshold of the "fixed" preset
    bin_pred = (pred > 0.5).astype(np.float32)
    tp = (bin_pred == gt).sum()
    i = (bin_pred * gt).sum()
    u = bin_pred.sum() + gt.sum() - i
    return tp / pred.size, i / (u + 1e-10)


def _reference_gt(gt_u8: np.ndarray, img_size: int) -> np.ndarray:
    # val.py: gt_transform = Compose([Resize((img_size, img_size)), ToTensor()]) on .convert('L')
    gt_transform = transforms.Compose([transforms.Resize((img_size, img_size)), transforms.ToTensor()])
    gt_ = gt_transform(Image.fromarray(gt_u8).convert("L"))
    gt_[gt_ > 0.5] = 1
    gt_[gt_ <= 0.5] = 0
    return gt_[0].numpy()


def _reference(pred: np.ndarray, gt_u8: np.ndarray, preset: str) -> tuple[float, float]:
    """P and J of one image: ``pred`` float32 at the evaluation size, ``gt_u8`` any size."""
    gt = _reference_gt(gt_u8, pred.shape[0])
    if preset == "fixed":
        return _calc_fixed(pred, gt)
    return _calc_precision_and_jaccard(pred, gt, th={"ssnm": 0.8, "ufo": 0.5}[preset])


def _random_prediction(shape: tuple[int, ...], kind: str) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(shape)
    logits = torch.randn(shape) * 3
    if kind == "blob":  # smooth maps, as a network gives
        h, w = shape[-2:]
        coarse = torch.randn(*shape[:-2], 3, 3) * 4
        logits = F.interpolate(coarse.flatten(0, -3)[:, None], size=(h, w), mode="bilinear")[:, 0]
        logits = logits.reshape(shape) + torch.randn(shape) * 0.5
    probs = torch.sigmoid(logits)
    if kind == "png":  # read back from 8-bit files: values k / 255, ties with the 0.8 cap (204 / 255)
        probs = torch.round(probs * 255) / 255
    return probs


# ---------------------------------------------------------------------------- hand counts


def test_hand_counted_fixed_threshold():
    gt = _map([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    pred = _map([[0.9, 0.2, 0.7, 0.0], [0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 0.51], [0.0, 0.0, 0.0, 0.5]])
    # > 0.5: (0,0) (0,2) (1,0) (1,1) (2,3); (3,3) = 0.5 is not above the threshold
    # TP (0,0) (1,0) (1,1) = 3, FP (0,2) (2,3) = 2, FN (0,1) = 1, TN = 16 - 6 = 10
    p, j = precision_jaccard(pred, gt, preset="fixed", size=None)
    assert p.shape == j.shape == (1, 1)
    assert p.item() == pytest.approx(13 / 16)
    assert j.item() == pytest.approx(3 / 6)
    # threshold= overrides the preset: at 0.45 the 0.5 pixel turns on (FP 3): P 12/16, J 3/7
    p, j = precision_jaccard(pred, gt, preset="ssnm", threshold=0.45, size=None)
    assert (p.item(), j.item()) == pytest.approx((12 / 16, 3 / 7))


def test_hand_counted_adaptive_threshold():
    gt = _map([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    pred = 0.1 + 0.8 * gt
    pred[..., 0, :2] = 0.1  # two object pixels missed
    # six pixels at 0.9, ten at 0.1: mean 0.4, population std sqrt(0.15) = 0.387, t = 0.787
    # binary = the six 0.9 pixels: TP 6, FN 2, FP 0, TN 8
    for preset in ("ssnm", "fixed"):  # 0.787 < 0.8 and 0.5 both split 0.9 from 0.1
        p, j = precision_jaccard(pred, gt, preset=preset, size=None)
        assert (p.item(), j.item()) == pytest.approx((14 / 16, 6 / 8))


def test_population_std_as_numpy():
    # four pixels at 1.0, one at 0.75, eleven at 0: mean 0.296875,
    # t = mean + std = 0.7407 with the population std (np.std), 0.7553 with the unbiased one:
    # the 0.75 pixel is foreground under the protocol, background under torch.std's default
    pred = _map([[1.0, 1.0, 1.0, 1.0], [0.75, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    x = pred.flatten().double().numpy()
    assert x.mean() + x.std() < 0.75 < x.mean() + x.std(ddof=1)
    gt = (pred > 0).float()  # the five non-zero pixels
    p, j = precision_jaccard(pred, gt, size=None)
    assert (p.item(), j.item()) == (1.0, 1.0)  # unbiased: P 15/16, J 4/5


def test_comparison_is_strict_at_the_cap():
    # mean + std = 0.61 + ... > 0.5, so the UFO threshold is the cap 0.5 itself: a pixel of
    # exactly 0.5 stays background (pred > t), pixels above it are foreground
    pred = _map([[0.5, 0.9, 0.9, 0.9], [0.5, 0.9, 0.9, 0.9]])
    gt = _map([[0, 1, 1, 1], [0, 1, 1, 1]])
    p, j = precision_jaccard(pred, gt, preset="ufo", size=None)
    assert (p.item(), j.item()) == (1.0, 1.0)


def test_presets_differ_between_half_and_cap():
    gt = _map([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    pred = _map([[0.9] * 4, [0.6] * 4, [0.1] * 4, [0.1] * 4])
    x = pred.flatten().double().numpy()
    t = x.mean() + x.std()
    assert 0.6 < t < 0.8  # 0.767: SSNM keeps t, UFO caps it at 0.5
    p, j = precision_jaccard(pred, gt, preset="ssnm", size=None)
    assert (p.item(), j.item()) == pytest.approx((12 / 16, 4 / 8))  # only the 0.9 row
    for preset in ("ufo", "fixed"):
        p, j = precision_jaccard(pred, gt, preset=preset, size=None)
        assert (p.item(), j.item()) == (1.0, 1.0)  # both rows
    p, j = precision_jaccard(pred, gt, preset="fixed", cap=0.8, size=None)  # cap= makes it adaptive
    assert (p.item(), j.item()) == pytest.approx((12 / 16, 4 / 8))


def test_both_empty_scores_j_zero_and_p_one():
    gt = torch.zeros(1, 3, 1, 4, 4)
    pred = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.3), torch.rand(4, 4) * 0.4])[None, :, None]
    # a constant map equals its own threshold (std 0), so nothing is foreground;
    # the third map's threshold (< 0.5 for ufo/fixed) does mark pixels: not both empty
    for preset in PRESETS:
        p, j = precision_jaccard(pred[:, :2], gt[:, :2], preset=preset, size=None)
        assert p.tolist() == [[1.0, 1.0]]
        assert j.tolist() == [[0.0, 0.0]]
    p, j = precision_jaccard(pred, gt, preset="ssnm", size=None)
    assert j[0, 2].item() == 0.0 and p[0, 2].item() < 1.0  # false positives: P drops, J stays 0


@given(
    b=st.integers(1, 2),
    n=st.integers(1, 3),
    h=st.integers(2, 12),
    w=st.integers(2, 12),
    seed=seeds,
    preset=presets,
    fill=st.floats(0.05, 1.0),
)
def test_perfect_prediction_scores_one(b, n, h, w, seed, preset, fill):
    torch.manual_seed(seed)
    gt = (torch.rand(b, n, 1, h, w) < fill).float()
    gt[..., 0, 0] = 1  # never empty
    for pred in (gt, 0.05 + 0.9 * gt):
        p, j = precision_jaccard(pred, gt, preset=preset, size=None)
        assert torch.equal(p, torch.ones(b, n))
        assert torch.equal(j, torch.ones(b, n))


def test_uncapped_threshold_of_a_half_full_binary_map_is_its_maximum():
    # without a cap, mean + std of a 0/1 map that is at least half foreground is >= 1, so a
    # perfect binary prediction comes out empty: the cap is what makes such maps work
    gt = _map([[1, 1], [0, 0]])
    assert precision_jaccard(gt, gt, cap=math.inf, size=None)[1].item() == 0.0
    assert precision_jaccard(gt, gt, cap=0.8, size=None)[1].item() == 1.0


# ---------------------------------------------------------------------------- the reference code


@given(
    b=st.integers(1, 2),
    n=st.integers(1, 3),
    s=st.integers(3, 16),
    seed=seeds,
    preset=presets,
    kind=st.sampled_from(["uniform", "logits", "blob", "png"]),
    binary_gt=st.booleans(),
)
def test_equals_ssnm_ufo_code_at_evaluation_size(b, n, s, seed, preset, kind, binary_gt):
    # square evaluation size, ground truth given at it: the reference resizes nothing
    torch.manual_seed(seed)
    pred = _random_prediction((b, n, 1, s, s), kind)
    if binary_gt:
        gt_u8 = (torch.rand(b, n, 1, s, s) < 0.4).to(torch.uint8) * 255
    else:  # soft 8-bit masks, as the Internet set's JPEG masks are
        gt_u8 = torch.randint(0, 256, (b, n, 1, s, s), dtype=torch.uint8)
    target = gt_u8.float() / 255
    p, j = precision_jaccard(pred, target, preset=preset, size=s)
    for bi in range(b):
        for ni in range(n):
            ref_p, ref_j = _reference(pred[bi, ni, 0].numpy(), gt_u8[bi, ni, 0].numpy(), preset)
            assert p[bi, ni].item() == pytest.approx(float(ref_p), abs=1e-6)
            assert j[bi, ni].item() == pytest.approx(float(ref_j), abs=1e-6)


def _gt_agreement(antialias: bool | None, cases: int = 40) -> tuple[int, int]:
    """Pixels where the binarised, resized ground truth disagrees with the reference's PIL path."""
    g = torch.Generator().manual_seed(1)
    disagree = total = 0
    for c in range(cases):
        h, w = (int(v) for v in torch.randint(8, 80, (2,), generator=g))
        s = int(torch.randint(4, 40, (1,), generator=g))
        if c % 2:  # noise: every resized pixel mixes object and background
            gt = torch.rand(h, w, generator=g) < 0.5
        else:  # blobs
            gt = F.interpolate(torch.rand(1, 1, 4, 4, generator=g), size=(h, w), mode="bilinear")[0, 0] > 0.5
        gt_u8 = gt.numpy().astype(np.uint8) * 255
        ref = torch.from_numpy(_reference_gt(gt_u8, s))
        # the reference's binary ground truth as a perfect prediction: P is the agreement
        kwargs = {} if antialias is None else {"antialias": antialias}
        p, _ = precision_jaccard(ref[None, None, None], gt.float()[None, None, None], preset="fixed", size=s, **kwargs)
        disagree += round((1 - p.item()) * s * s)
        total += s * s
    return disagree, total


def test_ground_truth_resize_matches_pil():
    disagree, total = _gt_agreement(antialias=None)  # the default
    assert disagree <= 0.003 * total  # pixels within ~1/255 of 0.5, where the filters' last bits differ
    plain, _ = _gt_agreement(antialias=False)
    assert plain > 0.03 * total  # without antialiasing, shrinking does not match PIL


def test_ground_truth_tie_at_half_counts_as_object():
    # a 2x2 mask half object shrinks to exactly 0.5; PIL rounds 127.5 up to 128 > 127.5, object
    gt = _map([[1, 1], [0, 0]])
    assert _reference_gt(np.array([[255, 255], [0, 0]], dtype=np.uint8), 1).item() == 1.0
    p, j = precision_jaccard(torch.ones(1, 1, 1, 1, 1), gt, preset="fixed", size=1)
    assert (p.item(), j.item()) == (1.0, 1.0)


@given(
    h=st.integers(4, 20),
    w=st.integers(4, 20),
    gh=st.integers(4, 20),
    gw=st.integers(4, 20),
    s=st.integers(3, 16),
    seed=seeds,
    preset=presets,
    antialias=st.booleans(),
)
def test_resizes_both_maps_bilinearly(h, w, gh, gw, s, seed, preset, antialias):
    torch.manual_seed(seed)
    pred = _random_prediction((1, 2, 1, h, w), "blob")
    gt = (torch.rand(1, 2, 1, gh, gw) < 0.5).float()
    p, j = precision_jaccard(pred, gt, preset=preset, size=(s, s + 1), antialias=antialias)

    def resize(x):
        return F.interpolate(x[0], size=(s, s + 1), mode="bilinear", align_corners=False, antialias=antialias)

    pred_s, gt_s = resize(pred)[:, 0].numpy(), (resize(gt)[:, 0] >= 0.5).float().numpy()
    for i in range(2):
        if preset == "fixed":
            ref = _calc_fixed(pred_s[i], gt_s[i])
        else:
            ref = _calc_precision_and_jaccard(pred_s[i], gt_s[i], PRESETS[preset].cap)
        assert (p[0, i].item(), j[0, i].item()) == pytest.approx(tuple(map(float, ref)), abs=1e-6)


def test_size_none_evaluates_at_the_ground_truth_resolution():
    gt = torch.zeros(1, 1, 1, 8, 8)
    gt[..., :4, :] = 1
    pred = 0.1 + 0.8 * F.interpolate(gt[0], size=(4, 4), mode="nearest")[None]  # a 4x4 prediction
    p, j = precision_jaccard(pred, gt, size=None, preset="fixed")
    assert (p.item(), j.item()) == (1.0, 1.0)
    # at 2x2 the same masks still agree
    assert precision_jaccard(pred, gt, size=2, preset="fixed")[1].item() == 1.0


# ---------------------------------------------------------------------------- inputs


@given(seed=seeds, preset=presets, scale=st.floats(0.5, 10.0))
def test_logits_equal_their_sigmoid(seed, preset, scale):
    torch.manual_seed(seed)
    logits = torch.randn(2, 3, 1, 9, 7) * scale
    gt = (torch.rand(2, 3, 1, 9, 7) < 0.5).float()
    a = precision_jaccard(logits, gt, preset=preset, from_logits=True, size=None)
    b = precision_jaccard(logits.sigmoid(), gt, preset=preset, size=None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_dtypes():
    torch.manual_seed(0)
    pred = torch.rand(1, 2, 1, 8, 8)
    gt = torch.rand(1, 2, 1, 8, 8) < 0.5
    p32, j32 = precision_jaccard(pred, gt.float(), size=None)
    p_bool, j_bool = precision_jaccard(pred, gt, size=None)  # bool ground truth
    p_int, _ = precision_jaccard(pred, gt.long(), size=None)  # 0/1 integers
    assert torch.equal(p32, p_bool) and torch.equal(j32, j_bool) and torch.equal(p32, p_int)
    p64, j64 = precision_jaccard(pred.double(), gt, size=None)
    assert p64.dtype == j64.dtype == torch.float64
    assert torch.allclose(p64.float(), p32) and torch.allclose(j64.float(), j32)
    half = pred.half()
    p16, j16 = precision_jaccard(half, gt, size=None)
    assert p16.dtype == j16.dtype == torch.float32  # computed in float32
    p_ref, j_ref = precision_jaccard(half.float(), gt, size=None)
    assert torch.equal(p16, p_ref) and torch.equal(j16, j_ref)


def test_no_gradient_and_no_error_on_graph_inputs():
    pred = torch.rand(1, 2, 1, 6, 6, requires_grad=True)
    p, j = precision_jaccard(pred, torch.ones(1, 2, 1, 6, 6), size=None)
    assert not p.requires_grad and not j.requires_grad


@given(n=st.integers(2, 5), seed=seeds, preset=presets)
def test_permuting_images_permutes_scores(n, seed, preset):
    torch.manual_seed(seed)
    pred = _random_prediction((2, n, 1, 7, 7), "blob")
    gt = (torch.rand(2, n, 1, 7, 7) < 0.5).float()
    perm = torch.randperm(n)
    p, j = precision_jaccard(pred, gt, preset=preset, size=None)
    pp, jp = precision_jaccard(pred[:, perm], gt[:, perm], preset=preset, size=None)
    assert torch.equal(pp, p[:, perm]) and torch.equal(jp, j[:, perm])
    # each image is scored alone: its set and batch mates do not matter
    p0, j0 = precision_jaccard(pred[1:, :1], gt[1:, :1], preset=preset, size=None)
    assert torch.equal(p0, p[1:, :1]) and torch.equal(j0, j[1:, :1])


# ---------------------------------------------------------------------------- valid and reduction


def test_padded_images_do_not_count():
    torch.manual_seed(0)
    pred = _random_prediction((2, 3, 1, 8, 8), "blob")
    gt = (torch.rand(2, 3, 1, 8, 8) < 0.5).float()
    valid = torch.tensor([[True, True, True], [True, False, False]])
    p, j = precision_jaccard(pred, gt, valid=valid, size=None)
    assert torch.isnan(p[~valid]).all() and torch.isnan(j[~valid]).all()
    full_p, full_j = precision_jaccard(pred, gt, size=None)
    assert torch.equal(p[valid], full_p[valid]) and torch.equal(j[valid], full_j[valid])
    expected = (full_p[0].sum() + full_p[1, 0]) / 4  # the four real images
    assert reduce_scores(p).item() == pytest.approx(expected.item())
    # whatever the padding holds
    pred2, gt2 = pred.clone(), gt.clone()
    pred2[1, 1:] = torch.rand(2, 1, 8, 8)
    gt2[1, 1:] = 1 - gt2[1, 1:]
    p2, _ = precision_jaccard(pred2, gt2, valid=valid, size=None)
    assert reduce_scores(p2).item() == reduce_scores(p).item()


def test_group_reduction_is_the_mean_of_group_means():
    scores = torch.tensor([[0.2, 0.4, 0.9], [0.6, math.nan, math.nan], [1.0, 0.0, 0.5]])
    per_set = torch.tensor([5, 5, 2])  # sets 0 and 1 are one group of four images
    # group 5: (0.2 + 0.4 + 0.9 + 0.6) / 4 = 0.525; group 2: (1.0 + 0.0 + 0.5) / 3 = 0.5
    assert reduce_scores(scores, per_set, reduction="groups").item() == pytest.approx((0.525 + 0.5) / 2)
    assert reduce_scores(scores).item() == pytest.approx((2.1 + 1.5) / 7)  # all seven images
    per_image = torch.tensor([[0, 0, 1], [1, 9, 9], [1, 1, 1]])  # ids per image; padding ignored
    # group 0: 0.3; group 1: (0.9 + 0.6 + 1.0 + 0.0 + 0.5) / 5 = 0.6
    assert reduce_scores(scores, per_image, reduction="groups").item() == pytest.approx(0.45)


@given(m=st.integers(1, 30), k=st.integers(1, 6), seed=seeds)
def test_group_reduction_against_a_loop(m, k, seed):
    torch.manual_seed(seed)
    scores = torch.rand(m, dtype=torch.float64)
    ids = torch.randint(-3, k, (m,))
    means = [scores[ids == g].mean().item() for g in sorted(set(ids.tolist()))]
    assert reduce_scores(scores, ids, reduction="groups").item() == pytest.approx(float(np.mean(means)))


def test_reduction_of_nothing_is_nan():
    assert math.isnan(reduce_scores(torch.tensor([math.nan])).item())
    assert math.isnan(reduce_scores(torch.tensor([math.nan]), torch.tensor([1]), reduction="groups").item())


# ---------------------------------------------------------------------------- presets and errors


def test_presets():
    assert get_preset("ssnm") == ThresholdPreset(cap=0.8)
    assert get_preset("ufo") == ThresholdPreset(cap=0.5)
    assert get_preset("fixed") == ThresholdPreset(threshold=0.5)
    with pytest.raises(KeyError, match=r"'fixed', 'ssnm', 'ufo'"):
        get_preset("gicd")
    with pytest.raises(KeyError, match="ssnm"):
        precision_jaccard(torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 1, 4, 4), preset="SSNM")
    with pytest.raises(CosegValueError, match="exactly one"):
        ThresholdPreset()
    with pytest.raises(CosegValueError, match="exactly one"):
        ThresholdPreset(threshold=0.5, cap=0.8)


def _pj(pred, target, **kwargs):
    return precision_jaccard(pred, target, **kwargs)


@pytest.mark.parametrize(
    ("pred", "target", "kwargs", "error", "match"),
    [
        (torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4), {}, CosegShapeError, r"unsqueeze\(1\)"),
        (torch.rand(1, 2, 3, 4, 4), torch.ones(1, 2, 3, 4, 4), {}, CosegShapeError, r"\(1, 2, 3, 4, 4\)"),
        (torch.rand(1, 2, 1, 4, 4), torch.ones(1, 3, 1, 4, 4), {}, CosegShapeError, r"\(1, 3, 1, 4, 4\)"),
        (torch.rand(1, 2, 1, 4, 4), torch.ones(1, 2, 4, 4), {}, CosegShapeError, r"unsqueeze\(2\)"),
        (torch.rand(1, 2, 1, 4, 4) * 3, torch.ones(1, 2, 1, 4, 4), {}, CosegValueError, "from_logits=True"),
        (torch.rand(1, 2, 1, 4, 4) - 1, torch.ones(1, 2, 1, 4, 4), {}, CosegValueError, r"\[0, 1\]"),
        (
            torch.full((1, 1, 1, 4, 4), math.nan),
            torch.ones(1, 1, 1, 4, 4),
            {"from_logits": True},
            CosegValueError,
            "NaN",
        ),
        (torch.rand(1, 1, 1, 4, 4), torch.full((1, 1, 1, 4, 4), 255.0), {}, CosegValueError, "/ 255"),
        (torch.rand(1, 1, 1, 4, 4), torch.full((1, 1, 1, 4, 4), 255, dtype=torch.uint8), {}, CosegValueError, "/ 255"),
        (torch.rand(1, 1, 1, 4, 4), torch.full((1, 1, 1, 4, 4), -0.5), {}, CosegValueError, "ground-truth"),
        (torch.randint(0, 2, (1, 1, 1, 4, 4)), torch.ones(1, 1, 1, 4, 4), {}, CosegValueError, "floating-point"),
        (torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 1, 4, 4), {"size": 0}, CosegValueError, "positive"),
        (torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 1, 4, 4), {"size": (4, 4, 4)}, CosegValueError, "size"),
        (
            torch.rand(1, 1, 1, 4, 4),
            torch.ones(1, 1, 1, 4, 4),
            {"threshold": 0.5, "cap": 0.5},
            CosegValueError,
            "not both",
        ),
        (torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 1, 4, 4), {"threshold": 1.5}, CosegValueError, r"\[0, 1\]"),
        (torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 1, 4, 4), {"cap": 0.0}, CosegValueError, "positive"),
        (
            torch.rand(1, 2, 1, 4, 4),
            torch.ones(1, 2, 1, 4, 4),
            {"valid": torch.ones(2, 1, dtype=torch.bool)},
            CosegShapeError,
            r"\(1, 2\)",
        ),
        (
            torch.rand(1, 2, 1, 4, 4),
            torch.ones(1, 2, 1, 4, 4),
            {"valid": torch.zeros(1, 2, dtype=torch.bool)},
            CosegValueError,
            "no image",
        ),
    ],
)
def test_bad_inputs_raise(pred, target, kwargs, error, match):
    with pytest.raises(error, match=match):
        _pj(pred, target, **kwargs)


def test_bad_reductions_raise():
    scores = torch.rand(2, 3)
    with pytest.raises(CosegValueError, match="groups="):
        reduce_scores(scores, reduction="groups")
    with pytest.raises(CosegValueError, match="'images' or 'groups'"):
        reduce_scores(scores, reduction="sets")
    with pytest.raises(CosegShapeError, match=r"\(2, 3\).*\(2,\).*got \(3,\)"):
        reduce_scores(scores, torch.tensor([0, 1, 2]), reduction="groups")
    with pytest.raises(CosegValueError, match="integer group ids"):
        reduce_scores(scores, torch.tensor([0.0, 1.0]), reduction="groups")
    with pytest.raises(CosegValueError, match="floating-point scores"):
        reduce_scores(torch.tensor([1, 0]))
