"""The training loop: run folder, resume after a kill equals an uninterrupted run, NaN stop, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cosegkit.engine import TrainConfig, TrainingDiverged, find_checkpoints, train
from cosegkit.engine.trainer import StepBatches

TINY = dict(
    dataset="synthetic",
    world_classes=6,
    image_size=32,
    set_size=3,
    batch_size=2,
    encoder="tu-test_convnext",
    encoder_weights=None,
    decoder_channels=[16, 16, 16, 16],
    clip_model="coseg-test-tiny",
    clip_pretrained=None,
    heads=2,
    top_k=2,
    lr=1e-3,
    log_every=1,
    eval_set_size=3,
    device="cpu",
    extra={"eval_sets": 4},
)

TINY_ARGS = [
    "--dataset", "synthetic", "--world-classes", "6", "--image-size", "32", "--set-size", "3",
    "--batch-size", "2", "--encoder", "tu-test_convnext", "--encoder-weights", "none",
    "--decoder-channels", "16", "16", "16", "16", "--clip-model", "coseg-test-tiny",
    "--clip-pretrained", "none", "--heads", "2", "--top-k", "2", "--lr", "1e-3", "--log-every", "1",
    "--eval-set-size", "3", "--eval-sets", "4", "--device", "cpu", "--no-progress",
]  # fmt: skip


def cli_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_resume_is_exact(config: TrainConfig, tmp_path: Path, checkpoint: str = "step_00000004.pt") -> Path:
    """Train ``config`` twice; the second run loses ``checkpoint`` and its model, as a run killed
    after the checkpoint before would, and is resumed: both must end with the same weights.
    Returns the resumed run's folder."""
    import shutil

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(config, whole, progress=False)
    train(config, broken, progress=False)
    (broken / "checkpoints" / checkpoint).unlink()
    shutil.rmtree(broken / "model")
    train(None, broken, resume=True, progress=False)
    a, b = weights(whole), weights(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)
    return broken


def test_step_batches_depend_on_the_step_only() -> None:
    full = list(StepBatches(0, 5, 2, rank=1, world=2))
    assert full[3] == [14, 15]  # (3 * 2 + 1) * 2
    assert list(StepBatches(3, 5, 2, rank=1, world=2)) == full[3:]


def test_class_choices_score_against_the_eq12_target() -> None:
    from types import SimpleNamespace

    import torch.nn.functional as F

    from cosegkit.engine.trainer import _class_choices

    common = torch.tensor([1, 0, 3])
    out = SimpleNamespace(
        class_targets=torch.tensor([1, 2, 3]),
        common_class=common,
        class_probs=F.one_hot(common, 6).float(),
        topk_indices=torch.tensor([[0, 1], [2, 5], [4, 5]]),
    )
    assert _class_choices(out) == pytest.approx({"acc/istar": 2 / 3, "acc/topk": 2 / 3})
    assert _class_choices(SimpleNamespace(class_targets=None)) == {}


def test_a_run_writes_its_folder(tmp_path) -> None:
    result = train(TrainConfig(**TINY, steps=4, checkpoint_every=2), tmp_path / "run", progress=False)
    run = result.run_dir
    assert json.loads((run / "config.json").read_text())["steps"] == 4
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert {"total", "iou", "coarse", "classification", "lr", "acc/istar", "acc/topk"} <= set(lines[0])
    assert all(0.0 <= r["acc/istar"] <= 1.0 and 0.0 <= r["acc/topk"] <= 1.0 for r in lines)
    assert [p.name for p in find_checkpoints(run / "checkpoints")] == ["step_00000002.pt", "step_00000004.pt"]
    assert (run / "model" / "model.safetensors").is_file()
    ev = json.loads((run / "eval.json").read_text())
    assert ev["images"] == 4 * 3 and 0 <= ev["P"] <= 1 and 0 <= ev["J"] <= 1
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(**TINY, steps=4), run, progress=False)  # never overwrite a run


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    from cosegkit.losses import lcco

    original = lcco.LCCoLoss.forward
    calls = {"n": 0}

    def poisoned(self, output, masks, class_targets=None):
        calls["n"] += 1
        out = original(self, output, masks, class_targets)
        return out._replace(total=out.total * float("nan")) if calls["n"] == 3 else out

    monkeypatch.setattr(lcco.LCCoLoss, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"step 3.*step_00000002\.pt"):
        train(TrainConfig(**TINY, steps=6, checkpoint_every=2), run, progress=False)
    assert [p.name for p in find_checkpoints(run / "checkpoints")] == ["step_00000002.pt"]


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cosegkit", "train", *args], env=cli_env(), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, sig) -> None:
    steps = ["--steps", "30", "--checkpoint-every", "3"]
    whole = run_cli([*TINY_ARGS, *steps, "--out", str(tmp_path / "whole")], stdout=subprocess.DEVNULL)
    assert whole.wait(timeout=300) == 0

    broken = tmp_path / "broken"
    proc = run_cli([*TINY_ARGS, *steps, "--out", str(broken)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not find_checkpoints(broken / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read().decode()
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), stderr
    if sig == signal.SIGTERM:
        assert "Continue with --resume" in stderr
    assert not (broken / "model").exists()  # it really stopped mid-run
    stopped_at = find_checkpoints(broken / "checkpoints")[-1].name
    assert stopped_at != "step_00000030.pt"

    resumed = run_cli(["--out", str(broken), "--resume", "--no-progress"], stdout=subprocess.DEVNULL)
    assert resumed.wait(timeout=300) == 0
    a, b = weights(tmp_path / "whole"), weights(broken)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after resuming from {stopped_at}"
    steps_logged = [json.loads(line)["step"] for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged[-1] == 30


@pytest.mark.slow
def test_ddp_with_gloo_two_processes(tmp_path) -> None:
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "cosegkit", "train", *TINY_ARGS, "--steps", "3", "--out", str(run),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "ddp.json").read_text())
    assert report["world"] == 2
    assert len(report["checksums"]) == 2 and report["checksums"][0] == report["checksums"][1]
    ev = json.loads((run / "eval.json").read_text())
    assert ev["images"] == 4 * 3  # both ranks' shards of the 4 held-out sets, gathered


def test_a_run_with_grouping_and_superpixels_caches_them_and_resumes(tmp_path) -> None:
    config = TrainConfig(**TINY, steps=3, checkpoint_every=2, use_grouping=True, superpixel_weight=1.0)
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("superpixel" in r and "grouping" in r for r in records)
    cached = sorted(p.name for p in (run_dir / "superpixels").glob("*.npz"))
    assert len(cached) == 3 * 2 * 3  # steps x sets x images: one map per training image
    # the same run again reads every map from the cache and ends with the same weights
    again = tmp_path / "again"
    again.mkdir()
    (again / "superpixels").symlink_to(run_dir / "superpixels", target_is_directory=True)
    train(config, again, progress=False)
    assert sorted(p.name for p in (run_dir / "superpixels").glob("*.npz")) == cached
    a, b = (
        load_file(str(run_dir / "model" / "model.safetensors")),
        load_file(str(again / "model" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("grouping.") for k in a)


def test_a_missing_data_folder_fails_before_the_model_is_built(tmp_path, monkeypatch) -> None:
    """The data folder is checked first: offline, fetching ImageNet weights would fail first otherwise."""
    import cosegkit.engine.trainer as trainer
    from cosegkit.data.types import DataError

    def no_model(config):
        raise AssertionError("the model was built before the data folder was checked")

    monkeypatch.setattr(trainer, "build_model", no_model)
    config = TrainConfig(dataset="pascal_voc", root=str(tmp_path / "nonexistent"), encoder_weights="imagenet")
    with pytest.raises(DataError, match="does not exist"):
        train(config, tmp_path / "run", progress=False)


def test_a_file_as_run_folder_and_resuming_a_non_run_say_what_to_do(tmp_path) -> None:
    from cosegkit.errors import CosegValueError

    config = TrainConfig(**TINY, steps=1)
    (tmp_path / "afile").write_text("")
    with pytest.raises(CosegValueError, match="is a file; pass a folder as --out"):
        train(config, tmp_path / "afile", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CosegValueError, match=r"not a run folder \(no config.json\).*start one without --resume"):
        train(None, tmp_path / "empty", resume=True, progress=False)


def test_a_trained_model_remembers_its_image_and_set_size(tmp_path) -> None:
    from cosegkit import LCCo

    run = train(TrainConfig(**{**TINY, "image_size": 64}, steps=1), tmp_path / "run", progress=False).run_dir
    stored = json.loads((run / "model" / "config.json").read_text())["model"]
    assert (stored["image_size"], stored["set_size"]) == (64, 3)
    model = LCCo.from_pretrained(run)  # the run folder: its model/
    assert (model.image_size, model.set_size) == (64, 3)


def _folder_with_a_wrong_size_mask(root: Path, group: int) -> tuple[list, Path]:
    from PIL import Image

    from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset

    groups = write_folder_dataset(SyntheticWorld(num_classes=3, image_size=32, objects_per_image=(2, 2), seed=1), root, images_per_group=4)
    wrong = groups[group].masks[-1]
    Image.open(wrong).resize((40, 32)).save(wrong)
    return groups, wrong


@pytest.mark.parametrize(
    "held_out, pseudo_masks",
    [(False, None), (True, None), (True, "zero-shot")],
    ids=["training", "held-out", "held-out with zero-shot pseudo masks"],
)
def test_a_wrong_size_mask_is_refused_before_the_model_is_built(tmp_path, monkeypatch, held_out, pseudo_masks) -> None:
    """Every pair's size is read from the headers before training: not at the step that samples the mask.

    Held-out masks are checked too, also where training reads pseudo masks instead of its own.
    """
    import cosegkit.engine.trainer as trainer
    from cosegkit.data.types import DataError

    def no_model(config):
        raise AssertionError("the model was built before the mask sizes were checked")

    monkeypatch.setattr(trainer, "build_model", no_model)
    groups, wrong = _folder_with_a_wrong_size_mask(tmp_path / "data", group=2 if held_out else 0)
    names = [g.name for g in groups]
    config = TrainConfig(
        **{**TINY, "dataset": "folder", "root": str(tmp_path / "data")},
        classes=names[:2],
        eval_classes=names[2:] if held_out else None,
        steps=1,
        pseudo_masks=pseudo_masks,
    )
    with pytest.raises(DataError) as info:
        train(config, tmp_path / "run", progress=False)
    message = str(info.value)
    assert f"{wrong} is 40x32 but" in message and "1 mask(s) of" in message and "--classes" in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()
