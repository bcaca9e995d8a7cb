"""cosegkit.diagnostics and examples/diagnose.py: set sensitivity, gradient norms, class choices."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cosegkit import LCCoLoss
from cosegkit.diagnostics import class_accuracy, diagnose_run, format_report, gradient_norms, set_sensitivity
from cosegkit.engine import TrainConfig, train
from tests._support import tiny_lcco
from tests.engine.test_trainer import TINY
from tests.test_examples import run


def test_sensitivity_is_zero_without_the_set_and_rises_through_the_modules() -> None:
    images, others = torch.rand(2, 3, 3, 40, 48), torch.rand(2, 3, 3, 40, 48)
    baseline = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False).eval()
    assert set_sensitivity(baseline, images, others) == {"masks": 0.0}
    isfc = tiny_lcco(use_interaction=False, use_regularization=False).eval()
    sens = set_sensitivity(isfc, images, others)
    assert set(sens) == {"correspondence.in", "correspondence.out", "masks"}
    assert sens["correspondence.in"] == 0.0 and sens["correspondence.out"] > 1e-4 and sens["masks"] > 0
    # swapping nothing changes nothing
    assert all(v == 0.0 for v in set_sensitivity(isfc, images, images).values())
    with pytest.raises(ValueError, match="N >= 2"):
        set_sensitivity(isfc, images[:, :1], others[:, :1])


def test_gradient_norms_name_every_part_and_leave_no_gradient_behind() -> None:
    model = tiny_lcco().eval()
    masks = (torch.rand(1, 3, 1, 40, 48) > 0.5).float()
    norms = gradient_norms(model, torch.rand(1, 3, 3, 40, 48), masks)
    parts = {"encoder", "center", "correspondence", "blocks", "interaction", "coarse", "regularization", "head"}
    assert {k.split("/")[1] for k in norms if k.startswith("grad/")} == parts
    assert {"loss/total", "loss/iou", "loss/coarse", "loss/classification"} <= set(norms)
    assert all(v >= 0 for v in norms.values()) and norms["grad/head"] > 0
    assert not model.training and all(p.grad is None for p in model.parameters())


class StubModel(nn.Module):
    """Fixed outputs, so that i*, the eq. (12) target and CLIP's own choice can differ."""

    def __init__(self, emb: torch.Tensor, text: torch.Tensor, common: torch.Tensor, targets: torch.Tensor) -> None:
        super().__init__()
        self._out = SimpleNamespace(
            class_targets=targets, common_class=common, topk_indices=None, coarse_masks=None, similarity=emb @ text.T
        )

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> SimpleNamespace:
        return self._out


def test_class_accuracy_sigma_sums_the_set_and_falls_back_to_eq12() -> None:
    emb = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]]])  # image 0 says class 0, the set says 1
    model = StubModel(emb, torch.eye(3), common=torch.tensor([0]), targets=torch.tensor([1]))
    images, masks = torch.rand(1, 3, 3, 8, 8), torch.ones(1, 3, 1, 8, 8)
    assert class_accuracy(model, images, masks, torch.tensor([1])) == {"istar": 0.0, "sigma": 1.0, "eq12": 1.0}
    assert class_accuracy(model, images, masks) == {"istar": 0.0, "sigma": 1.0}  # against eq. (12)'s target


def test_class_accuracy_of_a_real_model_and_its_coarse_mask() -> None:
    model = tiny_lcco().eval()
    images, masks = torch.rand(2, 3, 3, 40, 48), torch.ones(2, 3, 1, 40, 48)
    out = model(images, masks=masks)
    acc = class_accuracy(model, images, masks, out.common_class)  # "true" classes = the model's own i*
    assert acc["istar"] == 1.0 and set(acc) == {"istar", "topk", "sigma", "eq12", "coarse_J"}
    assert 0.0 <= acc["coarse_J"] <= 1.0


def test_gradient_norms_are_l2_norms() -> None:
    model = tiny_lcco(use_interaction=False, use_regularization=False)
    images, masks = torch.rand(1, 3, 3, 40, 48), (torch.rand(1, 3, 1, 40, 48) > 0.5).float()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    norms = gradient_norms(model, images, masks)
    model.load_state_dict(state)  # undo the batch-norm statistics step
    model.train()
    LCCoLoss()(model(images, masks=masks), masks).total.backward()
    for part in ("head", "correspondence"):
        g = torch.cat([p.grad.flatten() for p in getattr(model, part).parameters()])
        assert norms[f"grad/{part}"] == pytest.approx(float(g.norm()), rel=1e-4)


@pytest.mark.slow
def test_diagnose_a_run_folder(tmp_path) -> None:
    train(TrainConfig(**TINY, steps=2, checkpoint_every=1, keep_checkpoints=2), tmp_path / "run", progress=False)
    report = diagnose_run(tmp_path / "run", sets=2)
    assert list(report["stages"]) == ["init", "step_00000001", "step_00000002", "final"]
    final = report["stages"]["final"]
    assert {"sensitivity", "gradients", "classes"} == set(final)
    assert {"istar", "topk", "sigma", "eq12", "coarse_J"} == set(final["classes"])
    assert [r["step"] for r in report["logged"]] == [1, 2]
    text = format_report(report)
    assert "sensitivity" in text and "| final |" in text and "acc/istar" in text
    out = run("diagnose.py", str(tmp_path / "run"), "--sets", "2", "--json", "d.json", cwd=tmp_path)
    assert "| init |" in out and "| final |" in out
    assert json.loads((tmp_path / "d.json").read_text())["stages"]["final"]["classes"]["istar"] >= 0


class _HalvesSegClip(torch.nn.Module):
    """A stand-in SegClipCoseg: group 0 holds the left half, group 1 the right; group 1 has the class."""

    classnames = ("cat", "dog")

    def forward(self, images, valid, class_name=None):
        from cosegkit.zeroshot import SegClipCosegOutput

        b, n = images.shape[:2]
        probs = torch.zeros(b, n, 1, *images.shape[-2:])
        if class_name is None:  # its own class, 'dog': the left half, the object, by luck
            probs[..., : images.shape[-1] // 2] = 1.0
        else:  # told 'cat': the right half
            probs[..., images.shape[-1] // 2 :] = 1.0
        assignment = torch.zeros(b, n, 3, 4, 4)
        assignment[..., 0, :, :2] = 1.0
        assignment[..., 1, :, 2:] = 1.0
        affinity = torch.tensor([0.1, 0.8, 0.0]).expand(b, n, 3)
        return SegClipCosegOutput(
            probs=probs,
            common_class=torch.ones(b, dtype=torch.long),
            class_scores=torch.zeros(b, 2),
            assignment=assignment,
            affinity=affinity,
            valid=valid,
        )


def test_segclip_group_diagnostics_on_known_groups() -> None:
    from cosegkit.diagnostics import segclip_group_diagnostics

    masks = torch.zeros(3, 1, 16, 16)
    masks[..., :8] = 1.0  # the object is the left half: group 0, exactly
    masks[2, ..., :4] = 0.0  # the third image's object is the left quarter: half of group 0
    item = {"images": torch.rand(3, 3, 16, 16), "masks": masks, "valid": torch.tensor([True, True, True]),
            "group": torch.tensor(0)}  # fmt: skip
    report = segclip_group_diagnostics(_HalvesSegClip(), [item], class_names=["cat", "dog"])
    assert report["groups_used"] == pytest.approx(2.0)
    assert report["target_share"] == pytest.approx(1.0)
    assert report["target_purity"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert report["oracle_J"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-6)
    assert report["picked_is_main"] == 0.0  # the class's group (1) is the background half
    assert report["class_top1"] == 0.0  # the set is 'cat', the texts named 'dog'
    assert report["own_J"] == pytest.approx((1 + 1 + 0.5) / 3) and report["told_J"] == pytest.approx(0.0)
    padded = dict(item, valid=torch.tensor([True, True, False]))
    assert segclip_group_diagnostics(_HalvesSegClip(), [padded])["target_purity"] == pytest.approx(1.0)
