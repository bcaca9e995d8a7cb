"""Tests of the torchmetrics classes: accumulation, reset, merging and a real 2-process sync."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics import MetricCollection

from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.metrics import CosegJaccard, CosegMetrics, CosegPrecision, precision_jaccard, reduce_scores


def _data(seed: int = 0, b: int = 6, n: int = 4, size: int = 12):
    """Predictions, ground truth at twice the size, padding, and group ids with repeats."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, n, 1, 3, 3, generator=g) * 4
    pred = torch.sigmoid(torch.nn.functional.interpolate(coarse.flatten(0, 1), size=(size, size), mode="bilinear"))
    pred = pred.unflatten(0, (b, n))
    target = (torch.rand(b, n, 1, 2 * size, 2 * size, generator=g) < 0.4).float()
    target[..., :size, :size] = 1.0
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, 2:] = False
    valid[4, 1:] = False
    groups = torch.tensor([3, 3, 0, 7, 0, 3])[:b]  # groups spread over the batch
    return pred, target, valid, groups


def _expected(pred, target, valid, groups, *, reduction="images", size=8, **kwargs):
    p, j = precision_jaccard(pred, target, valid=valid, size=size, **kwargs)
    return (
        reduce_scores(p, groups, reduction=reduction).item(),
        reduce_scores(j, groups, reduction=reduction).item(),
    )


CLASSES = {"metrics": CosegMetrics, "precision": CosegPrecision, "jaccard": CosegJaccard}


def _as_pair(name: str, value) -> tuple[float | None, float | None]:
    if name == "metrics":
        return value["P"].item(), value["J"].item()
    if name == "precision":
        return value.item(), None
    return None, value.item()


def _check(name, value, expected):
    got = _as_pair(name, value)
    for g, e in zip(got, expected, strict=True):
        if g is not None:
            assert g == pytest.approx(e, abs=1e-6)


# ---------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("reduction", ["images", "groups"])
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_three_batches_equal_one_call(name, reduction):
    pred, target, valid, groups = _data()
    expected = _expected(pred, target, valid, groups, reduction=reduction, preset="ufo")
    assert expected[0] != expected[1]

    metric = CLASSES[name](preset="ufo", size=8, reduction=reduction)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        metric.update(pred[sl], target[sl], valid[sl], groups[sl])
    _check(name, metric.compute(), expected)

    whole = CLASSES[name](preset="ufo", size=8, reduction=reduction)
    whole.update(pred, target, valid, groups)
    _check(name, whole.compute(), expected)


def test_group_reduction_differs_from_image_mean_and_uses_per_image_ids():
    pred, target, valid, groups = _data()
    by_images = CosegMetrics(size=8)
    by_groups = CosegMetrics(size=8, reduction="groups")
    by_images.update(pred, target, valid, groups)
    by_groups.update(pred, target, valid, groups)
    assert by_images.compute()["J"].item() != pytest.approx(by_groups.compute()["J"].item(), abs=1e-4)
    # the same ids given per image
    per_image = CosegMetrics(size=8, reduction="groups")
    per_image.update(pred, target, valid, groups[:, None].expand(-1, pred.shape[1]))
    assert per_image.compute()["J"].item() == pytest.approx(by_groups.compute()["J"].item(), abs=1e-7)


def test_reset():
    pred, target, valid, groups = _data()
    for reduction in ("images", "groups"):
        metric = CosegMetrics(size=8, reduction=reduction)
        metric.update(pred, target, valid, groups)
        before = metric.compute()
        metric.update(torch.full_like(pred, 0.05), target, valid, groups)  # a worse batch
        assert metric.compute()["J"].item() < before["J"].item()
        metric.reset()
        metric.update(pred, target, valid, groups)
        after = metric.compute()
        assert after["P"].item() == pytest.approx(before["P"].item(), abs=1e-7)
        assert after["J"].item() == pytest.approx(before["J"].item(), abs=1e-7)


def test_forward_gives_the_batch_value_and_accumulates():
    pred, target, valid, _ = _data()
    metric = CosegJaccard(size=8)
    first = metric(pred[:3], target[:3], valid[:3])
    assert first.item() == pytest.approx(_expected(pred[:3], target[:3], valid[:3], None)[1], abs=1e-6)
    metric(pred[3:], target[3:], valid[3:])
    assert metric.compute().item() == pytest.approx(_expected(pred, target, valid, None)[1], abs=1e-6)


def test_collection_shares_one_state():
    pred, target, valid, _ = _data()
    collection = MetricCollection({"P": CosegPrecision(size=8), "J": CosegJaccard(size=8)})
    collection.update(pred[:3], target[:3], valid[:3])
    collection.update(pred[3:], target[3:], valid[3:])
    both = CosegMetrics(size=8)
    both.update(pred, target, valid)
    out, ref = collection.compute(), both.compute()
    assert out["P"].item() == pytest.approx(ref["P"].item(), abs=1e-7)
    assert out["J"].item() == pytest.approx(ref["J"].item(), abs=1e-7)
    assert len(collection.compute_groups) == 1  # the masks are scored once per batch


def test_logits_and_options_reach_the_functional():
    pred, target, valid, _ = _data()
    logits = torch.logit(pred.clamp(1e-4, 1 - 1e-4))
    metric = CosegMetrics(size=None, from_logits=True, threshold=0.3, antialias=False)
    metric.update(logits, target, valid)
    expected = _expected(logits, target, valid, None, size=None, from_logits=True, threshold=0.3, antialias=False)
    assert (metric.compute()["P"].item(), metric.compute()["J"].item()) == pytest.approx(expected, abs=1e-6)


def test_states_are_float64_sums_and_set_dtype_keeps_group_ids():
    pred, target, valid, groups = _data()
    metric = CosegMetrics(size=8)
    metric.update(pred, target, valid)
    assert metric.p_sum.dtype == torch.float64 and metric.count.item() == int(valid.sum())
    grouped = CosegMetrics(size=8, reduction="groups").set_dtype(torch.float32)
    grouped.update(pred, target, valid, groups)
    expected = _expected(pred, target, valid, groups, reduction="groups")
    assert grouped.compute()["J"].item() == pytest.approx(expected[1], abs=1e-6)


def test_compute_before_update_is_nan():
    for reduction in ("images", "groups"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchmetrics warns that nothing was updated
            out = CosegMetrics(reduction=reduction).compute()
        assert math.isnan(out["P"].item()) and math.isnan(out["J"].item())


# ---------------------------------------------------------------------------- errors


def test_errors():
    pred, target, valid, groups = _data()
    with pytest.raises(KeyError, match="'fixed', 'ssnm', 'ufo'"):
        CosegMetrics(preset="gcoNet")
    with pytest.raises(CosegValueError, match="'images' or 'groups'"):
        CosegPrecision(reduction="classes")
    with pytest.raises(CosegValueError, match="positive"):
        CosegJaccard(size=-1)
    with pytest.raises(CosegValueError, match="groups="):
        CosegMetrics(reduction="groups").update(pred, target, valid)
    with pytest.raises(CosegShapeError, match=r"\(6,\).*got \(5,\)"):
        CosegMetrics(reduction="groups").update(pred, target, valid, groups[:5])
    with pytest.raises(CosegShapeError, match=r"got \(5,\)"):  # checked even when unused
        CosegMetrics().update(pred, target, valid, groups[:5])
    with pytest.raises(CosegValueError, match="from_logits"):
        CosegMetrics().update(pred * 4 - 2, target)
    with pytest.raises(CosegShapeError):
        CosegMetrics().update(pred, target[:, :2])


# ---------------------------------------------------------------------------- processes


@pytest.mark.parametrize("reduction", ["images", "groups"])
def test_merged_states_equal_one_process(reduction):
    # two "processes" each see part of the data, with group 3 split between them
    pred, target, valid, groups = _data()
    expected = _expected(pred, target, valid, groups, reduction=reduction)
    left, right = CosegMetrics(size=8, reduction=reduction), CosegMetrics(size=8, reduction=reduction)
    left.update(pred[:2], target[:2], valid[:2], groups[:2])
    right.update(pred[2:], target[2:], valid[2:], groups[2:])
    left.merge_state(right)
    out = left.compute()
    assert (out["P"].item(), out["J"].item()) == pytest.approx(expected, abs=1e-6)


def _sync_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pred, target, valid, groups = _data()
        shard = slice(0, 4) if rank == 0 else slice(4, 6)  # uneven: 4 sets and 2 sets
        results = {}
        for reduction in ("images", "groups"):
            metric = CosegMetrics(size=8, reduction=reduction)
            metric.update(pred[shard], target[shard], valid[shard], groups[shard])
            out = metric.compute()  # syncs over the process group
            results[reduction] = (out["P"].item(), out["J"].item())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_sync_equals_one_process(tmp_path):
    """A real process group of two (gloo, CPU): each rank scores a shard, compute() syncs."""
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    pred, target, valid, groups = _data()
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for reduction in ("images", "groups"):
            expected = _expected(pred, target, valid, groups, reduction=reduction)
            assert results[reduction] == pytest.approx(expected, abs=1e-6)
