"""The command line of continuing: --init-from, --resume --steps N, --amp bf16|fp16."""

from __future__ import annotations

import json

import pytest

from cosegkit.cli import _config_from_args, build_parser, main
from tests.engine.test_trainer import TINY_ARGS


def parsed(*flags: str):
    return _config_from_args(build_parser().parse_args(["train", *flags]))


def test_amp_takes_a_precision_and_plain_amp_is_bf16(capsys) -> None:
    assert parsed().amp is None
    assert parsed("--amp").amp == "bf16"  # as before fp16 existed
    assert parsed("--amp", "bf16").amp == "bf16"
    assert parsed("--amp", "fp16").amp == "fp16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--amp", "fp32"])
    assert "invalid choice: 'fp32'" in capsys.readouterr().err


def test_amp_on_the_cpu_is_one_line_of_refusal(tmp_path, capsys) -> None:
    assert main(["train", *TINY_ARGS, "--steps", "1", "--amp", "fp16", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--amp fp16 is mixed precision on a CUDA GPU" in err and "drop --amp" in err
    assert len(err.splitlines()) == 1


def test_resume_with_more_steps_extends_and_fewer_or_other_settings_are_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY_ARGS, "--steps", "2", "--eval-sets", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--steps 1 is fewer than the run's 2 steps" in err and len(err.splitlines()) == 1
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert "steps 4, last loss" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 4 and config["extensions"] == [{"step": 2, "from_steps": 2, "to_steps": 4}]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--no-progress"]) == 0
    assert "all 4 steps were already done" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-progress"]) == 2  # once extended
    assert "--steps 3 is fewer than the run's 4 steps" in capsys.readouterr().err


def test_init_from_fine_tunes_and_is_not_a_resume_flag(tmp_path, capsys) -> None:
    source = tmp_path / "source"
    assert main(["train", *TINY_ARGS, "--steps", "2", "--eval-sets", "1", "--out", str(source)]) == 0
    tuned = tmp_path / "tuned"
    argv = ["--dataset", "synthetic", "--world-classes", "5", "--world-seed", "4", "--image-size", "32",
            "--set-size", "2", "--steps", "2", "--eval-sets", "1", "--eval-set-size", "2", "--device", "cpu",
            "--no-progress", "--init-from", str(source)]  # fmt: skip
    capsys.readouterr()
    assert main(["train", *argv, "--out", str(tuned)]) == 0
    captured = capsys.readouterr()
    assert "steps 2, last loss" in captured.out
    assert "text bank is rebuilt" in captured.err and "regularization.mlp3" in captured.err
    config = json.loads((tuned / "config.json").read_text())
    assert config["init_from"] == str(source) and config["clip_model"] == "coseg-test-tiny" and config["heads"] == 2
    assert main(["train", "--out", str(tuned), "--resume", "--init-from", str(source)]) == 2
    assert "drop --init-from" in capsys.readouterr().err
    assert main(["train", *argv, "--encoder", "resnet18", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--encoder resnet18 (the source's encoder: tu-test_convnext)" in err and len(err.splitlines()) == 1
    missing = ["train", *argv[:-1], str(tmp_path / "missing"), "--out", str(tmp_path / "x")]
    assert main(missing) == 2
    assert "--init-from" in capsys.readouterr().err
