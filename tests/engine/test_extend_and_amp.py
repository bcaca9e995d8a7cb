"""Extending a finished run (--resume --steps N) and fp16 mixed precision with a gradient scaler."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch

from cosegkit.engine import TrainConfig, TrainingDiverged, build_train_sets, find_checkpoints, load_checkpoint, train
from cosegkit.engine import trainer as trainer_module
from cosegkit.engine.trainer import StepBatches, planned_steps
from cosegkit.errors import CosegValueError
from tests.engine.test_trainer import TINY, assert_resume_is_exact, weights


def base_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "steps": 4, "checkpoint_every": 2, **overrides})


def record_lrs(monkeypatch) -> list[float]:
    """The learning rate each optimizer step is taken with (the non-encoder group's)."""
    lrs: list[float] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[1]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return lrs


def test_extending_a_finished_run_follows_the_longer_plan_and_records_it(tmp_path, monkeypatch) -> None:
    config = base_config()
    run = tmp_path / "run"
    train(config, run, progress=False)
    first = weights(run)
    lrs = record_lrs(monkeypatch)
    result = train(dataclasses.replace(config, steps=8), run, resume=True, progress=False)
    assert result.steps == 8 and math.isfinite(result.last_loss)
    saved = json.loads((run / "config.json").read_text())
    assert saved["steps"] == 8
    assert saved["extensions"] == [{"step": 4, "from_steps": 4, "to_steps": 8}]
    # steps 4..7 (0-based) at the cosine of an 8-step run: lr * (1 + cos(pi s / 8)) / 2, from 0.5 lr
    expected = [config.lr * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(4, 8)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(0.5 * config.lr)  # not the finished run's 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert any(not torch.equal(first[k], weights(run)[k]) for k in first)  # it trained on
    assert [p.name for p in find_checkpoints(run / "checkpoints")][-1] == "step_00000008.pt"


def test_a_stopped_and_resumed_extension_equals_an_uninterrupted_one(tmp_path) -> None:
    config = base_config()
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    for run in (whole, broken):
        train(config, run, progress=False)
        train(dataclasses.replace(config, steps=8), run, resume=True, progress=False)
    # stop the second one after step 6: its later checkpoint and final model are gone, as after a kill
    (broken / "checkpoints" / "step_00000008.pt").unlink()
    shutil.rmtree(broken / "model")
    result = train(None, broken, resume=True, progress=False)  # its own config.json: the extended plan
    assert result.steps == 8
    a, b = weights(whole), weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same extension given again is a plain resume, nothing to do
    again = train(dataclasses.replace(config, steps=8), broken, resume=True, progress=False)
    assert math.isnan(again.last_loss)
    assert json.loads((broken / "config.json").read_text())["extensions"] == [
        {"step": 4, "from_steps": 4, "to_steps": 8}
    ]


def test_an_extension_of_an_extension_keeps_the_earlier_plans() -> None:
    config = TrainConfig(
        steps=12,
        warmup=2,
        extensions=[{"step": 4, "from_steps": 4, "to_steps": 8}, {"step": 6, "from_steps": 8, "to_steps": 12}],
    )
    assert [planned_steps(config, s) for s in range(12)] == [4] * 4 + [8] * 2 + [12] * 6
    factor = trainer_module._lr_lambda(config)
    assert factor(0) == 0.5 and factor(1) == 1.0  # warm-up as planned
    assert factor(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))  # the 8-step plan
    assert factor(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))  # the 12-step plan
    with pytest.raises(CosegValueError, match="does not follow the run"):
        dataclasses.replace(config, extensions=[{"step": 5, "from_steps": 4, "to_steps": 8}])


def test_new_steps_get_new_sets_and_old_steps_keep_theirs() -> None:
    config = base_config()
    short = build_train_sets(config, length=4 * 2)
    long = build_train_sets(dataclasses.replace(config, steps=8), length=8 * 2)
    old = [i for batch in StepBatches(0, 4, 2) for i in batch]
    new = [i for batch in StepBatches(4, 8, 2) for i in batch]
    assert set(old).isdisjoint(new)
    assert all(torch.equal(short[i]["images"], long[i]["images"]) for i in old)
    seen = [long[i]["images"] for i in old]
    assert not any(torch.equal(long[i]["images"], s) for i in new for s in seen)


def test_a_shorter_run_or_another_setting_is_refused(tmp_path) -> None:
    config = base_config()
    run = tmp_path / "run"
    train(config, run, progress=False)
    with pytest.raises(CosegValueError, match=r"--steps 3 is fewer than the run's 4 steps.*resume without --steps"):
        train(dataclasses.replace(config, steps=3), run, resume=True, progress=False)
    train(dataclasses.replace(config, steps=6), run, resume=True, progress=False)
    with pytest.raises(CosegValueError, match=r"--steps 5 is fewer than the run's 6 steps"):
        train(dataclasses.replace(config, steps=5), run, resume=True, progress=False)  # the saved extensions differ
    with pytest.raises(CosegValueError, match=r"these settings differ: \['lr'\].*only --steps may grow"):
        train(dataclasses.replace(config, steps=8, lr=1e-2), run, resume=True, progress=False)
    with pytest.raises(CosegValueError, match="a new run starts without any"):
        train(dataclasses.replace(config, steps=8, extensions=[{"step": 4, "from_steps": 4, "to_steps": 8}]),
              tmp_path / "new", progress=False)  # fmt: skip
    assert json.loads((run / "config.json").read_text())["extensions"] == [{"step": 4, "from_steps": 4, "to_steps": 6}]


# ------------------------------------------------------------------ mixed precision


def test_amp_reads_old_configs_and_names_its_choices() -> None:
    assert TrainConfig(amp=True).amp == "bf16" and TrainConfig(amp=False).amp is None
    data = TrainConfig().to_dict()
    assert TrainConfig.from_dict({**data, "amp": True}).amp == "bf16"  # a config.json written before fp16
    assert TrainConfig.from_dict({**data, "amp": False}).amp is None
    assert TrainConfig(amp="fp16").amp == "fp16"
    with pytest.raises(CosegValueError, match=r"amp must be None, 'bf16' or 'fp16', got 'fp32' \(--amp"):
        TrainConfig(amp="fp32")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_the_cpu_is_refused_not_ignored(tmp_path, amp) -> None:
    with pytest.raises(CosegValueError, match=rf"--amp {amp} is mixed precision on a CUDA GPU.*device is cpu"):
        train(base_config(amp=amp), tmp_path / "run", progress=False)
    assert not find_checkpoints(tmp_path / "run" / "checkpoints")


@pytest.fixture
def amp_on_cpu(monkeypatch):
    """Let --amp run on the CPU (CPU autocast and a CPU GradScaler), to exercise the scaler's bookkeeping."""
    monkeypatch.setattr(trainer_module, "_AMP_DEVICES", ("cuda", "cpu"))


def test_fp16_checkpoints_hold_the_scaler_and_resume_exactly(tmp_path, amp_on_cpu) -> None:
    # a kill after step 4: the later checkpoint and the final model are gone
    broken = assert_resume_is_exact(base_config(amp="fp16", steps=6), tmp_path, "step_00000006.pt")
    whole = tmp_path / "whole"
    state = load_checkpoint(whole / "checkpoints" / "step_00000002.pt")
    assert set(state["scaler"]) >= {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    final = load_checkpoint(whole / "checkpoints" / "step_00000006.pt")["scaler"]
    assert load_checkpoint(broken / "checkpoints" / "step_00000006.pt")["scaler"] == final


def test_a_resume_restores_the_scale_it_saved(tmp_path, amp_on_cpu, monkeypatch) -> None:
    config = base_config(amp="fp16")
    run = tmp_path / "run"
    train(config, run, progress=False)
    path = run / "checkpoints" / "step_00000002.pt"
    state = load_checkpoint(path)
    state["scaler"]["scale"] = 1024.0  # as if overflows had halved it
    (run / "checkpoints" / "step_00000004.pt").unlink()
    from cosegkit.engine.checkpoint import save_checkpoint

    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "step")}, run / "checkpoints", 2)
    scales = []
    original = torch.amp.GradScaler.update

    def update(self, *args, **kwargs):
        scales.append(self.get_scale())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "update", update)
    train(None, run, resume=True, progress=False)
    assert scales == [1024.0, 1024.0]  # the saved scale, not a fresh 65536


def test_fp16_overflow_is_skipped_by_the_scaler_not_called_divergence(tmp_path, amp_on_cpu, monkeypatch) -> None:
    original = trainer_module._mixed_precision

    def huge_scale(config, device):
        dtype, scaler = original(config, device)
        scaler._init_scale = 2.0**60  # every fp16 gradient overflows at first
        return dtype, scaler

    monkeypatch.setattr(trainer_module, "_mixed_precision", huge_scale)
    run = tmp_path / "run"
    result = train(base_config(amp="fp16"), run, progress=False)
    assert math.isfinite(result.last_loss)
    scaler = load_checkpoint(run / "checkpoints" / "step_00000004.pt")["scaler"]
    assert scaler["scale"] == 2.0**56  # four overflowing steps skipped, the scale halved each time


def test_a_non_finite_fp16_loss_is_still_divergence(tmp_path, amp_on_cpu, monkeypatch) -> None:
    from cosegkit.losses import lcco

    original = lcco.LCCoLoss.forward
    calls = {"n": 0}

    def poisoned(self, output, masks, class_targets=None):
        calls["n"] += 1
        out = original(self, output, masks, class_targets)
        return out._replace(total=out.total * float("inf")) if calls["n"] == 3 else out

    monkeypatch.setattr(lcco.LCCoLoss, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="step 3"):
        train(base_config(amp="fp16", steps=6), tmp_path / "run", progress=False)


def test_a_run_with_random_forward_passes_resumes_exactly(tmp_path) -> None:
    """The grouping layer draws Gumbel noise every step: the RNG must be where it was, step for step."""
    assert_resume_is_exact(base_config(use_grouping=True, num_groups=4), tmp_path)


@pytest.mark.slow
def test_an_extension_under_torchrun_keeps_the_processes_equal(tmp_path) -> None:
    import subprocess
    import sys

    from tests.engine.test_trainer import TINY_ARGS, cli_env

    run = tmp_path / "ddp"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cosegkit",
    ]
    first = [*torchrun, "train", *TINY_ARGS, "--steps", "2", "--out", str(run)]
    done = subprocess.run(first, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    extend = [*torchrun, "train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]
    done = subprocess.run(extend, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["extensions"] == [{"step": 2, "from_steps": 2, "to_steps": 4}]
    report = json.loads((run / "ddp.json").read_text())
    assert report["checksums"][0] == report["checksums"][1]
    assert [p.name for p in find_checkpoints(run / "checkpoints")][-1] == "step_00000004.pt"
