"""UFO through the same commands as LCCo: train, evaluate, segment, export, save/load, and its refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cosegkit import UFO, CosegValueError, load_model
from cosegkit.cli import main
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.engine import TrainConfig, build_model, find_checkpoints, train
from cosegkit.engine.config import training_class_names

UFO_ARGS = [
    "--model", "ufo", "--ufo-dim", "16", "--encoder", "resnet18", "--encoder-weights", "none",
    "--image-size", "32", "--set-size", "3", "--batch-size", "2", "--lr", "1e-3", "--log-every", "1",
    "--eval-set-size", "3", "--eval-sets", "4", "--device", "cpu", "--no-progress",
]  # fmt: skip


def ufo_config(**kwargs) -> TrainConfig:
    settings = {"model": "ufo", "ufo_dim": 16, "encoder": "resnet18", "encoder_weights": None, "world_classes": 6,
                "image_size": 32, "set_size": 3, "batch_size": 2, "steps": 3, "lr": 1e-3, "log_every": 1,
                "eval_set_size": 3, "extra": {"eval_sets": 4}, "device": "cpu"}  # fmt: skip
    return TrainConfig(**{**settings, **kwargs})


def test_build_model_gives_ufo_with_a_head_per_training_class() -> None:
    config = ufo_config()
    model = build_model(config)
    assert isinstance(model, UFO)
    assert model.classnames == training_class_names(config) and model.classifier.out_features == 6
    assert (model.image_size, model.set_size, model.config["dim"]) == (32, 3, 16)
    again = build_model(config)  # the seed fixes the initialisation
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_training_moves_every_parameter_and_saves_a_ufo(tmp_path) -> None:
    config = ufo_config()
    start = build_model(config).state_dict()
    result = train(config, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    assert isinstance(model, UFO)
    frozen = [name for name, value in model.state_dict().items()
              if value.is_floating_point() and "running" not in name and torch.equal(value, start[name])]  # fmt: skip
    assert frozen == []  # every weight trained: the loss reaches the class head, both transformers, the intra-MLP
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"total", "mask", "classification", "smooth", "iou", "acc/class"} <= set(records[-1])
    assert result.evaluation is not None and result.evaluation.images == 4 * 3
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["architecture"] == "ufo"


def test_a_resumed_ufo_run_ends_where_an_uninterrupted_one_does(tmp_path) -> None:
    whole = train(ufo_config(steps=4, checkpoint_every=2), tmp_path / "whole", progress=False)
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")  # the same run, as if stopped after step 2
    *_, last = find_checkpoints(tmp_path / "cut" / "checkpoints")
    last.unlink()
    shutil.rmtree(tmp_path / "cut" / "model")
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    assert resumed.last_loss == pytest.approx(whole.last_loss, rel=1e-5)
    a, b = load_model(tmp_path / "whole").state_dict(), load_model(tmp_path / "cut").state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        ({"class_oracle": True}, "--class-oracle"),
        ({"pseudo_masks": "zero-shot"}, "--pseudo-masks"),
        ({"use_grouping": True}, "--grouping"),
        ({"encoder_depth": 3}, "--encoder-depth 5"),
        ({"ufo_dim": 10}, "--ufo-dim"),
        ({"model": "segformer"}, "--model"),
        ({"use_interaction": False}, "--no-interaction"),
        ({"variant": "paper"}, "--variant"),
        ({"class_pool": "mean"}, "--class-pool"),
        ({"lambda2": 0.5}, "--lambda2"),
    ],
)
def test_settings_ufo_cannot_take_are_refused_naming_the_flag(settings, flag) -> None:
    with pytest.raises(CosegValueError, match=flag):
        ufo_config(**settings)


def test_cli_train_evaluate_segment_export_a_ufo(tmp_path, capsys) -> None:
    world = SyntheticWorld(num_classes=5, image_size=32, seed=3)
    groups = write_folder_dataset(world, tmp_path / "data", images_per_group=4)
    names = [g.name for g in groups]
    run = tmp_path / "run"
    argv = ["train", "--dataset", "folder", "--root", str(tmp_path / "data"), "--classes", *names[:3],
            "--eval-classes", *names[3:], *UFO_ARGS, "--steps", "2", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    assert "held-out evaluation" in capsys.readouterr().out
    model = load_model(run)
    assert isinstance(model, UFO) and model.classnames == names[:3]  # one class per training group

    scores = tmp_path / "scores.json"
    argv = ["evaluate", "--model", str(run), "--data", f"folder={tmp_path / 'data'}", "--classes", *names[3:],
            "--set-size", "3", "--json", str(scores), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(scores.read_text())["folder"]["images"] == 8

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (50, 30), (33, 33)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    assert main(["segment", "--model", str(run), str(photos), "--out", str(tmp_path / "masks")]) == 0
    for i, (h, w) in enumerate([(40, 60), (50, 30), (33, 33)]):
        assert np.array(Image.open(tmp_path / "masks" / f"p{i}.png")).shape == (h, w)

    assert main(["export", "--model", str(run), "--out", str(tmp_path / "ufo.pt2"), "--set-size", "2"]) == 0
    program = torch.export.load(str(tmp_path / "ufo.pt2"))
    images = torch.rand(1, 2, 3, 32, 32)
    assert torch.allclose(program.module()(images), model.predict(images), atol=1e-5)


def test_cli_train_refuses_lcco_flags_with_ufo_in_one_line(tmp_path, capsys) -> None:
    argv = [
        "train",
        "--dataset",
        "synthetic",
        *UFO_ARGS,
        "--class-oracle",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--class-oracle" in err and "--model lcco" in err and len(err.splitlines()) == 1


def test_the_peer_diagnosis_scores_sets_singles_class_and_resolution(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.engine.test_trainer import cli_env

    result = train(ufo_config(steps=2), tmp_path / "run", progress=False)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_diagnosis.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "--json", str(tmp_path / "d.json")],
                          env=cli_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "d.json").read_text())
    assert row["model"] == "UFO" and row["J_sets"] == pytest.approx(result.evaluation.J, abs=1e-6)
    assert 0 <= row["J_alone"] <= 1 and 0 <= row["class_accuracy"] <= 1 and 0 < row["J_stride4_ceiling"] <= 1
    assert row["logit_spread_over_sets"] >= 0 and row["logit_spread_over_classes"] >= 0
    assert "stride-4 ceiling" in done.stdout


def test_a_dev_run_trains_and_scores_on_its_own_seed(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.engine.test_trainer import cli_env

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "dev_run.py"
    argv = [sys.executable, str(script), "--quick", "--steps", "2", "--eval-sets", "2", "--seed", "5", "--out", str(tmp_path),
            "--set", "model=ufo", "ufo_dim=16", "encoder_depth=5", "image_size=32"]  # fmt: skip
    env = dict(cli_env(), COSEGKIT_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "synthetic" / "model=ufo-ufo_dim=16-encoder_depth=5-image_size=32"
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["ufo_dim"], config["seed"], config["extra"]["eval_seed"]) == ("ufo", 16, 5, 5)
    assert "held-out P" in done.stdout


def test_a_ufo_exports_to_onnx_and_onnxruntime_agrees(tmp_path) -> None:
    from cosegkit.export import export_onnx

    model = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=3, dim=16).eval()
    report = export_onnx(model, tmp_path / "ufo.onnx", set_size=2, image_size=64)
    assert report.input_shape == (1, 2, 3, 64, 64) and report.max_abs_diff < 1e-4


def test_the_peer_diagnosis_scores_the_held_out_photos_padded_and_wrapped(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.engine.test_trainer import cli_env

    world = SyntheticWorld(num_classes=5, image_size=32, objects_per_image=2, seed=3)
    write_folder_dataset(world, tmp_path / "photos", 7)  # per class: 2 held out, cut into sets of 3 (one short)
    config = ufo_config(dataset="composite", root=str(tmp_path / "photos"), reader="folder", world_classes=16,
                        world_objects=(2, 2), steps=2)  # fmt: skip
    result = train(config, tmp_path / "run", progress=False)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_diagnosis.py"
    argv = [sys.executable, str(script), str(tmp_path / "run"), "--photos", "--json", str(tmp_path / "d.json")]
    done = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "d.json").read_text())
    assert row["J_photos"] == pytest.approx(result.photo_evaluation.J, abs=1e-6)  # the table's photo score
    assert row["images_photos"] == row["images_photos_wrapped"] == result.photo_evaluation.images  # each once
    assert 0 <= row["J_photos_wrapped"] <= 1 and "wrapped" in done.stdout
