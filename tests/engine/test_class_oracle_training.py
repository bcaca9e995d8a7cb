"""The class oracle in training, evaluation, the saved run and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cosegkit import CosegValueError, LCCo
from cosegkit.cli import main
from cosegkit.engine import TrainConfig, build_eval_sets, build_model, build_train_sets, evaluate, train
from cosegkit.engine.trainer import StepBatches, _class_choices
from tests.engine.test_trainer import TINY, TINY_ARGS

STEPS = 2


class ForwardSpy:
    """Records each LCCo forward pass: train or eval mode, and the common_class it was given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[bool, torch.Tensor | None]] = []
        original = LCCo.forward

        def forward(model, images, *args, common_class=None, **kwargs):
            given = None if common_class is None else common_class.detach().cpu().clone()
            self.calls.append((model.training, given))
            return original(model, images, *args, common_class=common_class, **kwargs)

        monkeypatch.setattr(LCCo, "forward", forward)

    def given(self, training: bool) -> list[torch.Tensor | None]:
        return [c for mode, c in self.calls if mode == training]


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory) -> tuple[TrainConfig, Path, ForwardSpy]:
    config = TrainConfig(**TINY, steps=STEPS, class_oracle=True)
    run = tmp_path_factory.mktemp("oracle") / "run"
    with pytest.MonkeyPatch.context() as mp:
        spy = ForwardSpy(mp)
        train(config, run, progress=False)
    return config, run, spy


def expected_groups(config: TrainConfig) -> list[list[int]]:
    sets = build_train_sets(config, length=config.steps * config.batch_size)
    return [[int(sets[i]["group"]) for i in batch] for batch in StepBatches(0, config.steps, config.batch_size)]


# ---------------------------------------------------------------- the config
def test_the_config_round_trips_and_builds_an_oracle() -> None:
    config = TrainConfig(**TINY, steps=1, class_oracle=True)
    assert TrainConfig.from_dict(config.to_dict()).class_oracle is True
    older = config.to_dict()
    del older["class_oracle"]  # a run written before the setting existed
    assert TrainConfig.from_dict(older).class_oracle is False
    assert TrainConfig(**TINY).class_oracle is False
    assert build_model(config).class_oracle is True


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(dataset="folder", root="photos"), "numbered in reading order"),
        (dict(dataset="pascal_voc", root="voc"), "dataset 'pascal_voc'"),
        (dict(use_regularization=False), "drop --no-regularization"),
        (dict(class_oracle="yes"), "True or False"),
    ],
)
def test_the_config_refuses_the_oracle_where_it_means_nothing(settings, words) -> None:
    base = dict(TINY, class_oracle=True)
    base.update(settings)
    with pytest.raises(CosegValueError, match="--class-oracle") as info:
        TrainConfig(**base)
    assert words in str(info.value)


# ---------------------------------------------------------------- training
def test_training_gives_each_set_its_true_class(oracle_run) -> None:
    config, _, spy = oracle_run
    given = spy.given(training=True)
    assert len(given) == STEPS and all(c is not None for c in given)
    assert [c.tolist() for c in given] == expected_groups(config)


def test_the_final_evaluation_gives_each_set_its_true_class(oracle_run) -> None:
    config, run, spy = oracle_run
    given = spy.given(training=False)
    sets = build_eval_sets(config)
    assert [c.tolist() for c in given] == [[int(sets[i]["group"])] for i in range(len(sets))]
    assert json.loads((run / "eval.json").read_text())["images"] == len(sets) * config.eval_set_size


def test_the_saved_run_is_an_oracle(oracle_run) -> None:
    _, run, _ = oracle_run
    assert json.loads((run / "config.json").read_text())["class_oracle"] is True
    assert json.loads((run / "model" / "config.json").read_text())["model"]["class_oracle"] is True
    assert LCCo.from_pretrained(run).class_oracle is True


def test_without_the_oracle_no_class_is_given(tmp_path, monkeypatch) -> None:
    spy = ForwardSpy(monkeypatch)
    train(TrainConfig(**TINY, steps=1), tmp_path / "run", progress=False)
    assert spy.calls and all(c is None for _, c in spy.calls)


def test_training_refuses_a_vocabulary_out_of_class_order(tmp_path, monkeypatch) -> None:
    config = TrainConfig(**TINY, steps=1, class_oracle=True)
    classnames, templates = config.vocabulary()
    monkeypatch.setattr(TrainConfig, "vocabulary", lambda self: (classnames[::-1], templates))
    with pytest.raises(CosegValueError, match="vocabulary must be the world's class names in class order"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_logged_istar_is_the_modules_own_choice() -> None:
    from types import SimpleNamespace

    probs = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]])  # own choices 1 and 0
    out = SimpleNamespace(
        class_targets=torch.tensor([1, 2]),
        common_class=torch.tensor([2, 2]),  # the classes the oracle gave
        class_probs=probs,
        topk_indices=None,
    )
    assert _class_choices(out) == {"acc/istar": 0.5}


# ---------------------------------------------------------------- evaluate()
def test_evaluate_gives_each_set_its_group(oracle_run, monkeypatch) -> None:
    config, run, _ = oracle_run
    model = LCCo.from_pretrained(run)
    sets = build_eval_sets(config, sets=3)
    names = config.world().class_names
    spy = ForwardSpy(monkeypatch)
    result = evaluate(model, sets, batch_size=2, group_names=names, class_oracle=True)
    assert result.images == 3 * config.eval_set_size
    groups = [int(sets[i]["group"]) for i in range(3)]
    assert [c.tolist() for _, c in spy.calls] == [groups[:2], groups[2:]]


def test_evaluate_without_the_classes_refuses_an_oracle(oracle_run) -> None:
    config, run, _ = oracle_run
    with pytest.raises(CosegValueError, match=r"class oracle.*class_oracle=True"):
        evaluate(LCCo.from_pretrained(run), build_eval_sets(config, sets=1))


def test_evaluate_refuses_the_oracle_where_groups_are_not_the_vocabulary(oracle_run) -> None:
    config, run, _ = oracle_run
    model, sets = LCCo.from_pretrained(run), build_eval_sets(config, sets=1)
    with pytest.raises(CosegValueError, match="not the model's vocabulary"):
        evaluate(model, sets, group_names=["Cat", "Dog", "Bus"], class_oracle=True)
    baseline = build_model(TrainConfig(**dict(TINY, use_regularization=False)))
    with pytest.raises(CosegValueError, match="has none; evaluate it with class_oracle=False"):
        evaluate(baseline, sets, class_oracle=True)


# ---------------------------------------------------------------- the command line
def test_cli_train_flag_reaches_the_config(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    argv = ["train", *TINY_ARGS, "--eval-sets", "1", "--steps", "1", "--class-oracle", "--out", str(run)]
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["class_oracle"] is True
    assert "class_oracle" not in capsys.readouterr().err


def test_cli_train_refuses_the_oracle_on_a_reader_in_one_line(tmp_path, capsys) -> None:
    argv = ["train", "--dataset", "folder", "--root", str(tmp_path), "--class-oracle", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--class-oracle" in err and "reading order" in err


def test_cli_evaluate_gives_an_oracle_its_classes(oracle_run, capsys, monkeypatch) -> None:
    _, run, _ = oracle_run
    spy = ForwardSpy(monkeypatch)
    assert main(["evaluate", "--model", str(run), "--data", "synthetic", "--set-size", "3", "--device", "cpu"]) == 0
    assert "class oracle" in capsys.readouterr().out
    assert spy.calls and all(c is not None for _, c in spy.calls)


def test_cli_evaluate_refuses_an_oracle_on_reader_data_in_one_line(oracle_run, tmp_path, capsys) -> None:
    from PIL import Image

    _, run, _ = oracle_run
    for folder in ("images", "masks"):
        (tmp_path / "data" / folder / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "images" / "cats" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "data" / "masks" / "cats" / "a.png")
    argv = ["evaluate", "--model", str(run), "--data", f"folder={tmp_path / 'data'}", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "class oracle" in err and "--data synthetic" in err


def test_cli_segment_and_export_refuse_an_oracle_in_one_line(oracle_run, tmp_path, capsys) -> None:
    from PIL import Image

    _, run, _ = oracle_run
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    argv = ["segment", "--model", str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / "masks"), "--workers", "0"]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "class oracle" in err and "cannot segment new images" in err
    assert not (tmp_path / "masks").exists()
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "oracle.pt2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "class oracle" in err and "cannot export" in err
    assert not (tmp_path / "oracle.pt2").exists()
