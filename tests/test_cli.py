"""The cosegkit command: help texts, one-line errors, train -> evaluate -> segment, the quick demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cosegkit.cli import main
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from tests.engine.test_trainer import TINY_ARGS, cli_env

MODEL_ARGS = TINY_ARGS[TINY_ARGS.index("--encoder") :]  # the model and run flags, without the synthetic data flags


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["evaluate"], ["segment"], ["export"]])
def test_every_help_has_examples(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "cosegkit" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "pascal_voc"], "needs its folder"),
        (["train", "--resume"], "--resume needs the run folder"),
        (["train", "--epochs", "2"], "give --steps, not --epochs"),
        (["train", "--superpixel-weight", "1"], "turn the layer on"),
        (["evaluate", "--model", "/nonexistent", "--data", "synthetic"], "(no config.json); pass --model"),
        (["segment", "--model", "/nonexistent", "/no/such/*.jpg", "--out", "x"], "neither a file"),
        (["train", "--classes", "cat"], "the synthetic world trains on all its classes"),
        (["train", "--eval-classes", "cat"], "select groups of a dataset on disk"),
        (["train", "--device", "gpu", "--steps", "1", "--out", "/nonexistent/run"], "(--device on the command line)"),
        (["export", "--model", "/nonexistent", "--out", "m.pt2"], "(no config.json); pass --model"),
        (["train", "--workers", "-1"], "workers must be a non-negative integer"),
        (["train", "--image-size", "8"], "at least 16 px, got image_size=8 (--image-size)"),
    ],
)
def test_bad_arguments_give_one_line(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_segment_with_a_folder_that_holds_no_model_names_the_flag(tmp_path, capsys) -> None:
    from PIL import Image

    Image.new("RGB", (16, 12)).save(tmp_path / "a.png")
    assert main(["segment", "--model", str(tmp_path / "nothing"), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "(no config.json); pass --model" in err and len(err.splitlines()) == 1


def test_train_into_a_file_or_resuming_an_empty_folder_gives_one_line(tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "empty").mkdir()
    for argv, message in (
        (["train", "--out", str(tmp_path / "afile"), "--steps", "1"], "is a file"),
        (["train", "--out", str(tmp_path / "empty"), "--resume"], "not a run folder"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_segment_into_a_file_gives_one_line(tmp_path, capsys) -> None:
    from PIL import Image

    from tests._support import tiny_lcco

    model = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False)
    folder = model.save_pretrained(tmp_path / "model")
    Image.new("RGB", (40, 32)).save(tmp_path / "a.png")
    (tmp_path / "afile").write_text("")
    argv = ["segment", "--model", str(folder), str(tmp_path / "a.png"), "--out", str(tmp_path / "afile")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file; pass a folder as --out" in err and len(err.splitlines()) == 1


def test_demo_into_a_file_and_evaluate_json_into_a_folder_give_one_line(tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("")
    assert main(["demo", "--quick", "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file; pass a folder as --out" in err and len(err.splitlines()) == 1
    from tests._support import tiny_lcco

    folder = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False).save_pretrained(
        tmp_path / "model"
    )
    argv = ["evaluate", "--model", str(folder), "--data", f"folder={tmp_path}", "--json", str(tmp_path)]
    assert main(argv) == 2  # refused before any evaluation runs
    err = capsys.readouterr().err.strip()
    assert "is a folder; pass a file name" in err and len(err.splitlines()) == 1


def test_cuda_without_a_cuda_device_gives_one_line(tmp_path, capsys, monkeypatch) -> None:
    from cosegkit.engine.distributed import _pick_device
    from cosegkit.errors import CosegValueError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", *TINY_ARGS, "--device", "cuda", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA device is available here" in err and "--device cpu" in err and len(err.splitlines()) == 1
    with pytest.raises(CosegValueError, match="'cuda:1': no CUDA device"):
        _pick_device("cuda:1", 0)
    assert _pick_device("auto", 0) == torch.device("cpu")


def test_evaluating_images_without_masks_is_refused_before_the_model_loads(tmp_path, capsys) -> None:
    from cosegkit.data import EvalSets, read_folder
    from cosegkit.data.types import DataError
    from cosegkit.engine import evaluate
    from tests._support import tiny_lcco

    world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=(2, 2))
    write_folder_dataset(world, tmp_path / "data", 3)
    import shutil

    shutil.rmtree(tmp_path / "data" / "masks")
    argv = ["evaluate", "--model", str(tmp_path / "no-model"), "--data", f"folder={tmp_path / 'data'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "P and J need ground-truth masks" in err and "cosegkit segment" in err and len(err.splitlines()) == 1
    groups = read_folder(tmp_path / "data", masks=False)
    model = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False)
    with pytest.raises(DataError, match=r"P and J need ground-truth masks, and the groups \['"):
        evaluate(model, EvalSets(groups, 3, 32), group_names=[g.name for g in groups])


def test_an_encoder_depth_the_encoder_lacks_gives_one_line(tmp_path, capsys) -> None:
    argv = [a for a in TINY_ARGS if a != "--no-progress"]
    assert main(["train", *argv, "--encoder-depth", "9", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "encoder_depth=9 (--encoder-depth)" in err and len(err.splitlines()) == 1


def test_resume_refuses_other_settings_and_says_when_nothing_is_left(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--steps", "2", "--eval-sets", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "5", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "drop --lr " in err and "--steps N, larger than its steps, extends it" in err and "a new --out" in err
    assert len(err.splitlines()) == 1
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "all 2 steps were already done; nothing was trained" in capsys.readouterr().out


def test_variant_flags_reach_the_config() -> None:
    from cosegkit.cli import _config_from_args, build_parser

    def config(*flags: str):
        return _config_from_args(build_parser().parse_args(["train", *flags]))

    default = config()
    assert default.variant == "default" and default.residual is None and default.class_pool is None
    paper = config("--variant", "paper", "--residual", "--no-unit-scale", "--class-pool", "mean", "--class-prior", "2")
    assert (paper.variant, paper.residual, paper.unit_scale, paper.class_pool, paper.class_prior) == (
        "paper",
        True,
        False,
        "mean",
        2.0,
    )
    assert config("--no-correspondence-residual").correspondence_residual is False


def test_grouping_flags_reach_the_config() -> None:
    from cosegkit.cli import _config_from_args, build_parser

    def config(*flags: str):
        return _config_from_args(build_parser().parse_args(["train", *flags]))

    plain = config()
    assert not plain.use_grouping and plain.superpixel_weight == 0.0 and plain.grouping_weight == 1.0
    grouped = config(
        "--grouping", "--grouping-level", "2", "--num-groups", "5", "--grouping-weight", "0.5",
        "--superpixel-weight", "2", "--superpixels", "slic", "--distortion-weight", "0.5",
    )  # fmt: skip
    assert (grouped.use_grouping, grouped.grouping_level, grouped.num_groups, grouped.grouping_weight) == (
        True,
        2,
        5,
        0.5,
    )
    assert grouped.superpixel_weight == 2.0 and grouped.superpixel_method == "slic"
    assert grouped.distortion_weight == 0.5 and plain.distortion_weight == 0.0


def test_a_cli_trained_model_keeps_its_grouping_layers_and_activation(tmp_path, capsys) -> None:
    """--grouping-layers and --grouping-activation reach the run's config, the model and its config.json."""
    from cosegkit.engine.config import TrainConfig
    from cosegkit.layers._blocks import QuickGELU
    from cosegkit.models.lcco import LCCo

    run = tmp_path / "run"
    flags = ["--grouping", "--grouping-layers", "1", "--grouping-activation", "quick_gelu", "--steps", "1"]
    assert main(["train", *TINY_ARGS, *flags, "--eval-sets", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    saved = json.loads((run / "model" / "config.json").read_text())["model"]
    assert (saved["grouping_layers"], saved["grouping_activation"]) == (1, "quick_gelu")
    run_config = TrainConfig.load(run / "config.json")
    assert (run_config.grouping_layers, run_config.grouping_activation) == (1, "quick_gelu")
    grouping = LCCo.from_pretrained(run).grouping
    assert len(grouping.blocks) == 1 and grouping.activation == "quick_gelu"
    assert any(isinstance(m, QuickGELU) for m in grouping.modules())
    older = {k: v for k, v in run_config.to_dict().items() if k not in ("grouping_layers", "grouping_activation")}
    assert (TrainConfig.from_dict(older).grouping_layers, TrainConfig.from_dict(older).grouping_activation) == (
        2,
        "gelu",
    )  # a run folder written before the settings existed reads as what it trained with
    for bad, flag in (({"grouping_layers": 0}, "--grouping-layers"), ({"grouping_activation": "relu"}, "quick_gelu")):
        with pytest.raises(ValueError, match=flag):
            TrainConfig(**bad)


def test_python_dash_m_runs_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cosegkit", "--version"], capture_output=True, text=True, env=cli_env()
    )
    assert done.returncode == 0 and done.stdout.startswith("cosegkit ")


@pytest.mark.slow
def test_train_evaluate_segment_on_a_generated_folder(tmp_path, capsys) -> None:
    world = SyntheticWorld(num_classes=5, image_size=32, seed=3)
    groups = write_folder_dataset(world, tmp_path / "data", images_per_group=4)
    names = [g.name for g in groups]
    run = tmp_path / "run"
    argv = ["train", "--dataset", "folder", "--root", str(tmp_path / "data"), "--classes", *names[:3],
            "--eval-classes", *names[3:], "--image-size", "32", "--set-size", "3", "--batch-size", "2",
            *MODEL_ARGS, "--steps", "2", "--out", str(run)]  # fmt: skip
    assert main([*argv[:-4], "--epochs", "1", "--encoder-lr", "1e-4", "--out", str(run)]) == 0
    assert "held-out evaluation" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["steps"] == 2  # ceil(1 * 12 images / (3 * 2))
    assert set(json.loads((run / "eval.json").read_text())["per_group"]) == set(names[3:])

    scores = tmp_path / "scores.json"
    argv = ["evaluate", "--model", str(run), "--data", f"folder={tmp_path / 'data'}", "--classes", *names[3:],
            "--image-size", "32", "--set-size", "3", "--per-group", "--json", str(scores), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "folder" in out and names[3] in out
    assert json.loads(scores.read_text())["folder"]["images"] == 8
    assert main(["evaluate", "--model", str(run), "--data", "folder"]) == 2  # no folder given

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (50, 30), (33, 33)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    masks = tmp_path / "masks"
    argv = ["segment", "--model", str(run / "model"), str(photos), "--out", str(masks), "--image-size", "32"]
    assert main(argv) == 2
    assert "broken.png" in capsys.readouterr().err and not masks.exists()  # refused before writing anything
    assert main([*argv, "--skip-bad", "--overlay", "--set-size", "2"]) == 0
    assert "skipped 1" in capsys.readouterr().out
    for i, (h, w) in enumerate([(40, 60), (50, 30), (33, 33)]):
        mask = np.array(Image.open(masks / f"p{i}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(masks / f"p{i}_overlay.png").size == (w, h)


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Baseline" in out and "LCCo" in out and "measure nothing" in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {"clip", "LCCo", "LCCo-paper", "Baseline"} <= set(results)
    assert all({"P", "J"} <= set(results[name]) for name in ("Baseline", "LCCo", "LCCo-paper"))
    assert json.loads((tmp_path / "demo" / "lcco" / "config.json").read_text())["variant"] == "default"
    assert json.loads((tmp_path / "demo" / "lcco-paper" / "config.json").read_text())["variant"] == "paper"
    assert (tmp_path / "demo" / "baseline" / "model").is_dir() and (tmp_path / "demo" / "lcco" / "model").is_dir()
    assert Image.open(tmp_path / "demo" / "figure.png").size[0] > 100
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0  # finished runs reused
    assert "continuing the run" in capsys.readouterr().out
    # a run folder from a demo with other settings (here: an older demo whose lcco/ held the
    # paper's modules) is moved aside and trained afresh, never resumed as the default model
    config_file = tmp_path / "demo" / "lcco" / "config.json"
    stale = json.loads(config_file.read_text())
    del stale["variant"]
    config_file.write_text(json.dumps(stale))
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    assert "moved it to" in capsys.readouterr().out
    assert (tmp_path / "demo" / "lcco.old-1" / "config.json").is_file()
    assert json.loads(config_file.read_text())["variant"] == "default"


def test_a_corrupt_model_folder_is_refused_in_one_line(tmp_path, capsys) -> None:
    from tests._support import tiny_lcco

    folder = tiny_lcco().save_pretrained(tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    write_folder_dataset(SyntheticWorld(num_classes=3, image_size=32, objects_per_image=(2, 2)), tmp_path / "data", 2)
    argv = ["evaluate", "--model", str(folder), "--data", f"folder={tmp_path / 'data'}", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors" in err and "not a complete safetensors file" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def run_at_64(tmp_path_factory):
    """A tiny model trained one step at --image-size 64 (set size 3)."""
    from cosegkit.engine import TrainConfig, train
    from tests.engine.test_trainer import TINY

    run = tmp_path_factory.mktemp("trained-at-64") / "run"
    train(TrainConfig(**{**TINY, "image_size": 64}, steps=1), run, progress=False)
    return run


def sizes_seen(monkeypatch) -> list:
    """The (H, W) of every batch that goes through LCCo.forward from now on."""
    from cosegkit.models.lcco import LCCo

    seen = []
    forward = LCCo.forward

    def spy(self, images, *args, **kwargs):
        seen.append(tuple(images.shape[-2:]))
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(LCCo, "forward", spy)
    return seen


def without_stored_sizes(model_folder):
    """Drop image_size and set_size from a model folder's config.json, as cosegkit wrote it before storing them."""
    config_file = model_folder / "config.json"
    config = json.loads(config_file.read_text())
    del config["model"]["image_size"], config["model"]["set_size"]
    config_file.write_text(json.dumps(config))
    return model_folder


def test_evaluate_runs_a_model_at_the_size_it_was_trained_at(run_at_64, tmp_path, monkeypatch, capsys) -> None:
    import shutil

    world = SyntheticWorld(num_classes=3, image_size=48, objects_per_image=(2, 2), seed=2)
    write_folder_dataset(world, tmp_path / "data", 2)
    data = ["--data", f"folder={tmp_path / 'data'}", "--set-size", "2", "--device", "cpu"]
    seen = sizes_seen(monkeypatch)
    assert main(["evaluate", "--model", str(run_at_64), *data]) == 0
    assert set(seen) == {(64, 64)} and "stores no image size" not in capsys.readouterr().err
    seen.clear()
    assert main(["evaluate", "--model", str(run_at_64), *data, "--image-size", "40"]) == 0  # told otherwise
    assert set(seen) == {(40, 40)}
    seen.clear()
    assert main(["evaluate", "--model", str(run_at_64 / "model"), "--data", "synthetic", "--device", "cpu"]) == 0
    assert set(seen) == {(64, 64)}  # the run's synthetic world, drawn at the model's size
    seen.clear()
    synthetic = ["--data", "synthetic", "--device", "cpu", "--image-size", "40"]
    assert main(["evaluate", "--model", str(run_at_64 / "model"), *synthetic]) == 0
    assert set(seen) == {(40, 40)}  # the run's synthetic world, drawn at the size asked for

    # a model saved before the size was stored, outside a run folder: 224, with a one-line notice
    older = without_stored_sizes(Path(shutil.copytree(run_at_64 / "model", tmp_path / "older")))
    capsys.readouterr()
    seen.clear()
    assert main(["evaluate", "--model", str(older), *data]) == 0
    notice = f"{older / 'config.json'} stores no image size (saved by an older cosegkit): using 224; pass --image-size to choose"
    assert [line for line in capsys.readouterr().err.splitlines() if "image size" in line] == [notice]
    assert set(seen) == {(224, 224)}
    # the same older model inside its run folder: the run's config.json has the size
    old_run = Path(shutil.copytree(run_at_64, tmp_path / "old-run"))
    without_stored_sizes(old_run / "model")
    seen.clear()
    assert main(["evaluate", "--model", str(old_run), *data]) == 0
    assert set(seen) == {(64, 64)} and "stores no image size" not in capsys.readouterr().err


def test_evaluate_and_train_check_every_mask_size_and_take_the_reader_flags(tmp_path, capsys) -> None:
    world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=(2, 2), seed=2)
    groups = write_folder_dataset(world, tmp_path / "data", 3)
    Image.open(groups[1].masks[2]).resize((20, 32)).save(groups[1].masks[2])
    evaluate = ["evaluate", "--model", str(tmp_path / "no-model"), "--data", f"folder={tmp_path / 'data'}"]
    assert main(evaluate) == 2  # refused before the model folder is even looked at
    err = capsys.readouterr().err.strip()
    assert f"{groups[1].masks[2]} is 20x32 but" in err and "--classes" in err and len(err.splitlines()) == 1
    assert main([*evaluate, "--classes", groups[0].name, groups[2].name]) == 2
    assert "is not a model folder" in capsys.readouterr().err  # the data passed

    groups[0].masks[0].unlink()
    (tmp_path / "data" / "images" / "empty").mkdir()
    for argv in (evaluate, ["train", "--dataset", "folder", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "r")]):
        assert main(argv) == 2
        assert "--missing-masks skip" in capsys.readouterr().err
        with pytest.warns(UserWarning, match="--missing-masks skip"):
            assert main([*argv, "--missing-masks", "skip"]) == 2
        assert "--on-empty warn" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        assert main([*evaluate, "--missing-masks", "skip", "--on-empty", "warn", "--classes", groups[0].name]) == 2
    assert "is not a model folder" in capsys.readouterr().err  # read with both flags: on to the model


@pytest.mark.parametrize(
    "spec,hint",
    [
        ("data/mine", "folder=data/mine"),
        ("./photos", "folder=./photos"),
        ("icoseg", "icoseg=PATH"),
        ("mine", "LAYOUT=PATH"),
    ],
)
def test_a_data_entry_without_a_layout_gets_the_right_suggestion(spec, hint, capsys) -> None:
    assert main(["evaluate", "--model", "m", "--data", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and len(err.splitlines()) == 1
    if "/" in spec:
        assert f"{spec}=PATH" not in err  # a folder is not a layout name


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--lambda1", "-1"], "--lambda1"),
        (["--grouping-weight", "-0.5"], "--grouping-weight"),
        (["--lr", "0"], "--lr"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--warmup", "-3"], "--warmup"),
        (["--class-prior", "-1"], "--class-prior"),
        (["--dataset", "folder", "--root", "x", "--pseudo-masks", "zero-shot", "--pseudo-low", "0.9"], "--pseudo-low"),
        (["--dataset", "folder", "--root", "x", "--pseudo-masks", "zero-shot", "--pseudo-margin", "2"], "--pseudo-margin"),
        (["--dataset", "folder", "--root", "x", "--pseudo-masks", "zero-shot", "--pseudo-templates", "a photo"],
         "--pseudo-templates"),
        (["--dataset", "folder", "--root", "x", "--pseudo-masks", "zero-shot", "--pseudo-background", " "],
         "--pseudo-background"),
        (["--pseudo-pool", "5"], "--pseudo-pool"),  # without --pseudo-masks
        (["--dataset", "folder", "--root", "x", "--pseudo-masks", "zero-shot", "--pseudo-pool", "5"], "--pseudo-pool"),
    ],
)
def test_train_setting_errors_name_the_flag(flags, named, tmp_path, capsys) -> None:
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _model_args(**replace: str | list[str]) -> list[str]:
    """TINY_ARGS with some flags' values replaced."""
    args = list(TINY_ARGS)
    for flag, value in replace.items():
        flag = "--" + flag.replace("_", "-")
        i = args.index(flag)
        n = 4 if flag == "--decoder-channels" else 1
        args[i + 1 : i + 1 + n] = [value] if isinstance(value, str) else value
    return args


@pytest.mark.parametrize(
    "replace,extra,named",
    [
        ({"top_k": "7"}, [], ["top_k=7", "--top-k", "--world-classes"]),  # the world's 6 class names
        ({"heads": "3"}, [], ["heads=3", "--heads", "choose heads from [1, 2, 4, 8, 16]"]),
        ({"decoder_channels": ["16", "16", "16"]}, [], ["--decoder-channels"]),
        ({}, ["--encoder-depth", "2"], ["--encoder-depth"]),
        ({"encoder_weights": "/nonexistent/encoder.safetensors"}, [], ["does not exist", "--encoder-weights"]),
        ({"clip_pretrained": "/nonexistent/clip.safetensors"}, [], ["does not exist", "--clip-pretrained"]),
        ({"clip_model": "no-such-clip"}, [], ["unknown open_clip model", "--clip-model"]),
    ],
)
def test_model_errors_of_train_name_the_flag(replace, extra, named, tmp_path, capsys) -> None:
    """LCCo's and the CLIP's errors that a train flag causes end in one line naming that flag."""
    assert main(["train", *_model_args(**replace), *extra, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(n in err for n in named), err


def test_evaluate_coco_needs_the_image_folder(tmp_path, capsys) -> None:
    """--data coco=INSTANCES_JSON without the image folder: one line naming --coco-images, not a TypeError."""
    (tmp_path / "instances.json").write_text("{}")
    argv = ["evaluate", "--model", str(tmp_path), "--data", f"coco={tmp_path / 'instances.json'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--coco-images FOLDER" in err, err
    assert main([*argv, "--coco-images", str(tmp_path / "nowhere")]) == 2  # now the reader's own error, in one line
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 12 and "TypeError" not in err and "--coco-images" not in err, err


SHARED_PASCAL = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pascal_voc_coseg").resolve()


def test_pascal_demo_without_its_folder_names_the_flag(capsys) -> None:
    assert main(["demo", "--world", "pascal", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--root PATH" in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_PASCAL.is_dir(), reason=f"needs the PASCAL-VOC co-segmentation folder at {SHARED_PASCAL}")
def test_quick_pascal_demo_runs_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    """``demo --world pascal``: real photos split by photo, scored on held-out composite sets and held-out photos."""
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    out_dir = tmp_path / "demo"
    argv = ["demo", "--world", "pascal", "--root", str(SHARED_PASCAL), "--quick", "--out", str(out_dir), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "real photographs" in out and "J photos" in out and "measure nothing" in out
    results = json.loads((out_dir / "results.json").read_text())
    assert results["world"] == "pascal" and {"set_top1", "image_top1", "image_chance"} <= set(results["clip"])
    for name in ("Baseline", "LCCo", "LCCo-paper", "Zero-shot"):
        assert {"P", "J", "photos"} <= set(results[name]), name
        assert results[name]["photos"]["images"] == results["Baseline"]["photos"]["images"] > 0
    config = json.loads((out_dir / "lcco" / "config.json").read_text())
    assert (config["dataset"], config["reader"], config["clip_model"]) == ("composite", "pascal_voc", "coseg-composite-clip")
    assert (out_dir / "lcco" / "eval_photos.json").is_file()
    assert Image.open(out_dir / "figure.png").size[0] > 100
