"""Watching a run: TensorBoard event files, validation during training, the best model, exact resumes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cosegkit import UFO, CosegValueError, LCCo, load_model
from cosegkit.cli import main
from cosegkit.engine import EvalResult, TrainConfig, TrainingInterrupted, find_checkpoints, load_checkpoint, train
from cosegkit.engine import trainer as trainer_module
from cosegkit.engine import watch as watch_module
from tests.engine.test_trainer import TINY, TINY_ARGS

LOSS_TAGS = {"loss/total", "loss/iou", "loss/coarse", "loss/classification"}


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def validation_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]


def fixed_scores(monkeypatch, scores: list[float], stop_after: int | None = None) -> list[int]:
    """Make the validation return ``scores`` in turn (J; P = J / 2); SIGTERM after call ``stop_after``."""
    calls: list[int] = []

    def fake(model, dataset, **kwargs):
        calls.append(len(dataset))
        model.eval()
        if stop_after is not None and len(calls) == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer stops after this step, checkpointed
        j = scores[len(calls) - 1]
        return EvalResult(P=j / 2, J=j, images=3 * len(dataset), preset=kwargs["preset"])

    monkeypatch.setattr(watch_module, "evaluate", fake)
    return calls


def test_tensorboard_holds_the_losses_lr_accuracies_validation_and_masks(tmp_path) -> None:
    run = tmp_path / "run"
    train(TrainConfig(**TINY, steps=4, eval_every=2, log=["tensorboard"]), run, progress=False)
    board = events(run)
    scalars = set(board.Tags()["scalars"])
    assert {*LOSS_TAGS, "lr", "acc/istar", "acc/topk", "validation/P", "validation/J"} <= scalars
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in board.Scalars("loss/total")] == [r["step"] for r in records] == [1, 2, 3, 4]
    assert [e.value for e in board.Scalars("lr")] == pytest.approx([r["lr"] for r in records])
    assert [e.value for e in board.Scalars("acc/istar")] == pytest.approx([r["acc/istar"] for r in records])
    lines = validation_lines(run)
    assert [e.step for e in board.Scalars("validation/J")] == [line["step"] for line in lines] == [2, 4]
    assert [e.value for e in board.Scalars("validation/J")] == pytest.approx([line["J"] for line in lines])
    assert board.Tags()["images"] == ["validation/masks"]
    images = board.Images("validation/masks")
    tile = watch_module.GRID_TILE + 2
    assert [i.step for i in images] == [2, 4]
    # 3 of the 4 held-out sets, a row each of images, ground truth and predicted masks; 3 images per set
    assert (images[0].height, images[0].width) == (9 * tile + 2, 3 * tile + 2)
    assert set(records[0]) - {"step", "seconds"} == {"lr", "acc/istar", "acc/topk", "total", "iou", "coarse",
                                                       "classification"}  # fmt: skip  # metrics.jsonl as it was


def test_tensorboard_without_eval_every_logs_the_training_only(tmp_path) -> None:
    run = tmp_path / "run"
    train(TrainConfig(**TINY, steps=2, log=["tensorboard"]), run, progress=False)
    board = events(run)
    assert set(board.Tags()["scalars"]) >= LOSS_TAGS and "validation/J" not in board.Tags()["scalars"]
    assert board.Tags()["images"] == [] and not (run / "validation.jsonl").exists() and not (run / "best").exists()


def test_without_tensorboard_log_tensorboard_is_refused_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(trainer_module, "build_model", no_model)
    with pytest.raises(CosegValueError, match=r'pip install "cosegkit\[tensorboard\]", or drop --log tensorboard'):
        train(TrainConfig(**TINY, steps=1, log=["tensorboard"]), tmp_path / "run", progress=False)
    code = main(["train", *TINY_ARGS, "--steps", "1", "--log", "tensorboard", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and 'pip install "cosegkit[tensorboard]"' in err, err
    assert not (tmp_path / "run").exists()


def test_validation_lines_and_the_best_model_are_the_best_steps(tmp_path, monkeypatch) -> None:
    calls = fixed_scores(monkeypatch, [0.2, 0.5, 0.3, 0.4])  # the last: resuming best/
    run = tmp_path / "run"
    config = TrainConfig(**TINY, steps=6, checkpoint_every=2, eval_every=2)
    train(config, run, progress=False)
    assert calls == [4, 4, 4]  # every held-out set, as at the end (extra["eval_sets"] = 4)
    assert [(line["step"], line["J"], line["images"]) for line in validation_lines(run)] == [
        (2, 0.2, 12),
        (4, 0.5, 12),
        (6, 0.3, 12),
    ]
    assert json.loads((run / "best" / "best.json").read_text()) == {
        "step": 4, "P": 0.25, "J": 0.5, "images": 12, "preset": "ssnm"
    }  # fmt: skip
    step4 = load_checkpoint(run / "checkpoints" / "step_00000004.pt")["model"]
    best = LCCo.from_pretrained(run / "best" / "model").state_dict()
    assert all(torch.equal(best[k], step4[k]) for k in step4)
    assert [p.name for p in find_checkpoints(run / "best" / "checkpoints")] == ["step_00000004.pt"]
    saved = load_checkpoint(run / "best" / "checkpoints" / "step_00000004.pt")
    assert all(torch.equal(saved["model"][k], step4[k]) for k in step4)
    assert TrainConfig.load(run / "best" / "config.json") == config
    last = weights(run / "model")
    assert any(not torch.equal(last[k], v) for k, v in weights(run / "best" / "model").items())  # not the last model
    assert not (run / "best.partial").exists()

    # best/ is a run folder of its own: --resume continues it from step 4 to the run's own last weights
    resumed = train(None, run / "best", resume=True, progress=False)
    assert resumed.steps == 6
    continued = weights(run / "best" / "model")
    assert all(torch.equal(continued[k], last[k]) for k in last)


def test_validation_sets_scores_a_spread_of_the_held_out_sets(tmp_path, monkeypatch) -> None:
    calls = fixed_scores(monkeypatch, [0.1, 0.2])
    train(TrainConfig(**TINY, steps=4, eval_every=2, validation_sets=2), tmp_path / "run", progress=False)
    assert calls == [2, 2]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["images"] == 4 * 3  # the end: all of them


def test_real_validation_scores_equal_a_separate_evaluation_of_the_checkpoint(tmp_path) -> None:
    from cosegkit.engine import build_eval_sets, evaluate

    run = tmp_path / "run"
    config = TrainConfig(**TINY, steps=2, checkpoint_every=1, eval_every=1)
    train(config, run, progress=False)
    lines = validation_lines(run)
    assert [line["step"] for line in lines] == [1, 2] and all(line["seconds"] >= 0 for line in lines)
    model = LCCo.from_pretrained(run / "model")
    again = evaluate(model, build_eval_sets(config), group_names=config.world().class_names)
    assert (lines[-1]["P"], lines[-1]["J"], lines[-1]["images"]) == pytest.approx((again.P, again.J, again.images))


def test_validation_leaves_training_exact_and_a_resumed_run_keeps_its_best(tmp_path, monkeypatch) -> None:
    plain = train(TrainConfig(**TINY, steps=6, checkpoint_every=2), tmp_path / "plain", progress=False)
    reference = weights(plain.run_dir / "model")

    watched = tmp_path / "watched"
    config = TrainConfig(**TINY, steps=6, checkpoint_every=2, eval_every=2, log=["tensorboard"])
    train(config, watched, progress=False)  # validating every 2 steps changes nothing in the training
    assert all(torch.equal(weights(watched / "model")[k], v) for k, v in reference.items())

    fixed_scores(monkeypatch, [0.2, 0.5, 0.3], stop_after=2)  # stopped by SIGTERM right after step 4's validation
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        train(config, stopped, progress=False)
    assert find_checkpoints(stopped / "checkpoints")[-1].name == "step_00000004.pt"
    train(None, stopped, resume=True, progress=False)
    assert all(torch.equal(weights(stopped / "model")[k], v) for k, v in reference.items())
    assert [(line["step"], line["J"]) for line in validation_lines(stopped)] == [(2, 0.2), (4, 0.5), (6, 0.3)]
    assert json.loads((stopped / "best" / "best.json").read_text())["step"] == 4  # 0.3 < the best read back
    assert [e.step for e in events(stopped).Scalars("loss/total")] == [1, 2, 3, 4, 5, 6]


def test_a_crash_between_validation_and_checkpoint_repeats_no_line_or_event(tmp_path, monkeypatch) -> None:
    original = trainer_module.save_checkpoint
    run = tmp_path / "run"

    def crash_at_step_4(state, folder, step, **kwargs):
        if step == 4 and Path(folder) == run / "checkpoints":
            raise RuntimeError("killed")
        return original(state, folder, step, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", crash_at_step_4)
    config = TrainConfig(**TINY, steps=6, checkpoint_every=2, eval_every=2, log=["tensorboard"])
    with pytest.raises(RuntimeError, match="killed"):
        train(config, run, progress=False)
    assert [line["step"] for line in validation_lines(run)] == [2, 4]  # step 4 validated, not checkpointed
    monkeypatch.setattr(trainer_module, "save_checkpoint", original)
    train(None, run, resume=True, progress=False)  # from step 2: steps 3 and 4 again
    assert [line["step"] for line in validation_lines(run)] == [2, 4, 6]
    board = events(run)
    assert [e.step for e in board.Scalars("loss/total")] == [1, 2, 3, 4, 5, 6]  # purged, not shown twice
    assert [e.step for e in board.Scalars("validation/J")] == [2, 4, 6]


def test_ufo_validates_and_keeps_its_best_model(tmp_path) -> None:
    from tests.engine.test_ufo_training import ufo_config

    run = tmp_path / "run"
    train(ufo_config(steps=2, eval_every=1, log=["tensorboard"]), run, progress=False)
    assert [line["step"] for line in validation_lines(run)] == [1, 2]
    assert isinstance(load_model(run / "best" / "model"), UFO)
    board = events(run)
    assert {"loss/total", "loss/mask", "acc/class", "validation/J"} <= set(board.Tags()["scalars"])
    assert board.Tags()["images"] == ["validation/masks"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"dataset": "folder", "root": "photos", "eval_every": 5},
            r"has none: name held-out groups with --eval-classes",
        ),
        ({"validation_sets": 2}, r"set both"),
        ({"eval_every": 0}, r"eval_every must be a positive integer"),
        ({"log": ["wandb"]}, r"unknown logger\(s\) \['wandb'\] \(--log\)"),
        ({"log": "tensorboard"}, r"log must be a list"),
    ],
)
def test_watch_settings_are_checked(settings, message) -> None:
    with pytest.raises(CosegValueError, match=message):
        TrainConfig(**settings)


def test_cli_refuses_eval_every_without_held_out_sets_in_one_line(tmp_path, capsys) -> None:
    code = main(["train", "--dataset", "folder", "--root", str(tmp_path), "--eval-every", "10"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--eval-classes" in err and "--eval-every" in err, err


def test_cli_flags_reach_the_config_and_the_run_says_where_the_best_model_is(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    flags = ["--steps", "2", "--eval-every", "1", "--validation-sets", "2", "--log", "tensorboard"]
    assert main(["train", *TINY_ARGS, *flags, "--out", str(run)]) == 0
    saved = TrainConfig.load(run / "config.json")
    assert (saved.eval_every, saved.validation_sets, saved.log) == (1, 2, ["tensorboard"])
    out = capsys.readouterr().out
    assert "best validation J" in out and str(run / "best" / "model") in out
    assert [line["images"] for line in validation_lines(run)] == [6, 6]


def test_a_validation_draws_nothing_from_the_random_generators_and_leaves_train_mode(tmp_path) -> None:
    from cosegkit.engine import build_model, distributed

    config = TrainConfig(**TINY, steps=2, eval_every=1, log=["tensorboard"])
    model = build_model(config).train()
    dist = distributed.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    watch = watch_module.RunWatch(config, tmp_path, dist, start=0, resume=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    result = watch.validate(model, 1, lambda step, folder, keep: None)
    watch.close()
    assert torch.equal(torch.get_rng_state(), before)  # the data loaders' seeds were drawn, and given back
    assert model.training and result.images == 4 * 3
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 1


@pytest.mark.slow
def test_ddp_validates_on_both_ranks_and_rank_0_writes(tmp_path) -> None:
    """Under torchrun, whose own --log-dir makes --log ambiguous, the flag is spelled --logger."""
    import subprocess

    from tests.engine.test_trainer import cli_env

    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "cosegkit", "train", *TINY_ARGS, "--steps", "2", "--eval-every", "1", "--logger", "tensorboard",
        "--out", str(run),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = validation_lines(run)
    assert [line["step"] for line in lines] == [1, 2] and all(line["images"] == 4 * 3 for line in lines)  # both shards
    assert [e.step for e in events(run).Scalars("validation/J")] == [1, 2]
    assert len(list((run / "tensorboard").iterdir())) == 1  # one event file: rank 0's
    assert json.loads((run / "best" / "best.json").read_text())["step"] in (1, 2)
    ddp = json.loads((run / "ddp.json").read_text())
    assert ddp["checksums"][0] == ddp["checksums"][1]


def test_pseudo_mask_training_whose_held_out_groups_have_no_masks_refuses_eval_every(tmp_path, monkeypatch) -> None:
    import shutil

    from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset

    groups = write_folder_dataset(SyntheticWorld(num_classes=3, image_size=32, objects_per_image=2), tmp_path, 3)
    shutil.rmtree(tmp_path / "masks" / groups[2].name)  # the held-out group has no mask

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(trainer_module, "build_model", no_model)
    settings = {k: v for k, v in TINY.items() if k not in ("dataset", "world_classes", "extra")}
    config = TrainConfig(
        **settings, dataset="folder", root=str(tmp_path), pseudo_masks="zero-shot", steps=2,
        classes=[groups[0].name, groups[1].name], eval_classes=[groups[2].name], eval_every=1,
    )  # fmt: skip
    with pytest.raises(CosegValueError, match=r"none of them has masks: name labelled groups with --eval-classes"):
        train(config, tmp_path / "run", progress=False)


def test_a_config_written_before_watching_existed_reads_with_it_off() -> None:
    data = TrainConfig(**TINY).to_dict()
    for key in ("log", "eval_every", "validation_sets"):
        del data[key]
    config = TrainConfig.from_dict(data)
    assert (config.log, config.eval_every, config.validation_sets) == (None, None, None)


def test_plot_and_train_help_name_the_watching_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--log LOGGER", "--eval-every K", "--validation-sets N", "cosegkit plot"))
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "cosegkit plot runs/" in out


@pytest.mark.slow
def test_killed_and_resumed_with_eval_every_equals_an_unwatched_run(tmp_path) -> None:
    import subprocess
    import time

    from tests.engine.test_trainer import run_cli

    steps = ["--steps", "20", "--checkpoint-every", "3"]
    plain = run_cli([*TINY_ARGS, *steps, "--out", str(tmp_path / "plain")], stdout=subprocess.DEVNULL)
    assert plain.wait(timeout=300) == 0
    watched = ["--eval-every", "2", "--log", "tensorboard"]
    broken = tmp_path / "broken"
    proc = run_cli([*TINY_ARGS, *steps, *watched, "--out", str(broken)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not find_checkpoints(broken / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert not (broken / "model").exists()
    resumed = run_cli(["--out", str(broken), "--resume", "--no-progress"], stdout=subprocess.DEVNULL)
    assert resumed.wait(timeout=300) == 0
    a, b = weights(tmp_path / "plain" / "model"), weights(broken / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [line["step"] for line in validation_lines(broken)] == list(range(2, 21, 2))
    assert [e.step for e in events(broken).Scalars("loss/total")] == list(range(1, 21))


def test_composite_and_folder_runs_validate_on_their_end_of_run_sets(tmp_path, monkeypatch) -> None:
    from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset

    groups = write_folder_dataset(
        SyntheticWorld(num_classes=4, image_size=32, objects_per_image=2, seed=3), tmp_path, 6
    )
    settings = {k: v for k, v in TINY.items() if k not in ("dataset", "world_classes", "extra")}
    composite = TrainConfig(
        **settings, dataset="composite", root=str(tmp_path), reader="folder", steps=2, eval_every=2,
        extra={"eval_sets": 4},
    )  # fmt: skip
    train(composite, tmp_path / "composite", progress=False)
    end = json.loads((tmp_path / "composite" / "eval.json").read_text())  # the held-out composite sets
    assert [(line["step"], line["J"], line["images"]) for line in validation_lines(tmp_path / "composite")] == [
        (2, pytest.approx(end["J"]), end["images"])
    ]
    folder = TrainConfig(
        **settings, dataset="folder", root=str(tmp_path), steps=2, eval_every=1,
        classes=[g.name for g in groups[:3]], eval_classes=[groups[3].name],
    )  # fmt: skip
    train(folder, tmp_path / "folder", progress=False)
    end = json.loads((tmp_path / "folder" / "eval.json").read_text())  # the --eval-classes groups
    lines = validation_lines(tmp_path / "folder")
    assert [line["step"] for line in lines] == [1, 2]
    assert (lines[-1]["J"], lines[-1]["images"]) == (pytest.approx(end["J"]), end["images"])
