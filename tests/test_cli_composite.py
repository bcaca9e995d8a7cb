"""The command line on the composite world: train, evaluate, segment and pretrain-clip on a tiny folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosegkit.cli import main
from cosegkit.data.composite import split_photos
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.engine import TrainConfig
from cosegkit.engine.config import composite_groups
from tests.test_cli import MODEL_ARGS, sizes_seen

CLASSES = 5


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of masked photos: 5 classes of 6."""
    root = tmp_path_factory.mktemp("photos")
    write_folder_dataset(SyntheticWorld(num_classes=CLASSES, image_size=32, objects_per_image=2, seed=3), root, 6)
    return root


def data_args(root) -> list[str]:
    return [
        "--dataset",
        "composite",
        "--root",
        str(root),
        "--reader",
        "folder",
        "--image-size",
        "32",
        "--set-size",
        "3",
    ]


@pytest.fixture(scope="module")
def composite_run(photos, tmp_path_factory):
    """A tiny model trained two steps on the composite world of ``photos`` through the CLI."""
    run = tmp_path_factory.mktemp("composite") / "run"
    argv = ["train", *data_args(photos), *MODEL_ARGS, "--world-objects", "2", "3", "--held-out", "0.3"]
    assert main([*argv, "--split-seed", "1", "--steps", "2", "--eval-sets", "2", "--out", str(run)]) == 0
    return run


def test_train_writes_both_evaluations_and_stores_the_split(composite_run, photos, capsys) -> None:
    config = TrainConfig.load(composite_run / "config.json")
    assert (config.dataset, config.reader, config.root, config.held_out, config.split_seed) == (
        "composite", "folder", str(photos), 0.3, 1
    )  # fmt: skip
    assert config.world_objects == (2, 3) and config.extra["eval_sets"] == 2
    scores = json.loads((composite_run / "eval_photos.json").read_text())
    assert scores["images"] == CLASSES * 2 and len(scores["per_group"]) == CLASSES
    assert json.loads((composite_run / "eval.json").read_text())["images"] == 2 * 3


def test_train_prints_both_evaluations(photos, tmp_path, capsys) -> None:
    argv = ["train", *data_args(photos), *MODEL_ARGS, "--steps", "1", "--eval-sets", "1", "--world-objects", "2"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "held-out composite sets (ssnm, 3 images)" in out and f"held-out photos (ssnm, {CLASSES * 2} images)" in out
    assert TrainConfig.load(tmp_path / "run" / "config.json").world_objects == (2, 2)


def test_evaluate_scores_the_runs_held_out_sets_and_photos(composite_run, tmp_path, capsys) -> None:
    out_json = tmp_path / "scores.json"
    argv = ["evaluate", "--model", str(composite_run), "--data", "composite", "--device", "cpu"]
    assert main([*argv, "--json", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["composite", "photos"]
    scores = json.loads(out_json.read_text())
    assert sorted(scores) == ["composite", "photos"] and scores["photos"]["images"] == CLASSES * 2
    assert scores["composite"]["images"] == 2 * 5  # the run's 2 held-out sets, of --set-size 5
    assert main([*argv, "--on", "photos", "--set-size", "all", "--per-group", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("photos") and "composite" not in out
    assert sorted(json.loads(out_json.read_text())) == ["photos"]
    assert main([*argv, "--on", "composite", "--json", str(out_json)]) == 0
    assert sorted(json.loads(out_json.read_text())) == ["composite"]


def test_segment_runs_a_composite_model_at_its_training_size(composite_run, photos, tmp_path, monkeypatch) -> None:
    seen = sizes_seen(monkeypatch)
    folder = next((photos / "images").iterdir())
    argv = ["segment", "--model", str(composite_run), str(folder), "--out", str(tmp_path / "masks"), "--device", "cpu"]
    assert main([*argv, "--workers", "0"]) == 0
    assert len(list((tmp_path / "masks").glob("*.png"))) == 6
    assert seen and set(seen) == {(32, 32)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "composite", "--root", "PHOTOS"], "--reader"),
        (["--dataset", "folder", "--root", "PHOTOS", "--reader", "folder"], "--reader"),
        (["--dataset", "composite", "--root", "PHOTOS", "--reader", "folder", "--held-out", "1.5"], "--held-out"),
        (["--dataset", "folder", "--root", "PHOTOS", "--split-seed", "2"], "--split-seed"),
        (["--dataset", "composite", "--root", "PHOTOS", "--reader", "folder", "--world-objects", "3", "2"],
         "--world-objects"),
        (["--dataset", "composite", "--root", "PHOTOS", "--reader", "folder", "--epochs", "1"], "--steps"),
        (["--dataset", "composite", "--reader", "folder"], "--root"),
    ],
)  # fmt: skip
def test_bad_composite_arguments_give_one_line_naming_the_flag(photos, tmp_path, argv, message, capsys) -> None:
    argv = [str(photos) if a == "PHOTOS" else a for a in argv]
    assert main(["train", *argv, *MODEL_ARGS, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_mismatched_composite_arguments(composite_run, tmp_path, capsys) -> None:
    from cosegkit.engine import train
    from tests.engine.test_trainer import TINY

    synthetic = tmp_path / "synthetic"
    train(TrainConfig(**TINY, steps=1), synthetic, progress=False)
    cases = [
        (["--model", str(synthetic), "--data", "composite"], "trained on dataset 'synthetic'"),
        (["--model", str(composite_run), "--data", "synthetic"], "--data composite"),
        (["--model", str(synthetic), "--data", "synthetic", "--on", "photos"], "--on"),
        (["--model", str(composite_run), "--data", "composite", "--classes", "a"], "--classes"),
        (["--zero-shot", "--data", "composite"], "--data composite needs a trained model"),
    ]
    for argv, message in cases:
        assert main(["evaluate", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_pretrain_clip_trains_on_the_training_photos_only(photos, tmp_path, monkeypatch, capsys) -> None:
    import cosegkit.engine.pretrain as pretrain

    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path / "cache"))
    worlds = []
    real = pretrain.pretrain_clip

    def spy(world, recipe, **kwargs):
        worlds.append((world, recipe))
        return real(world, recipe, **kwargs)

    monkeypatch.setattr(pretrain, "pretrain_clip", spy)
    argv = ["pretrain-clip", "--dataset", "composite", "--root", str(photos), "--reader", "folder", "--split-seed", "2"]
    argv += ["--steps", "2", "--batch-size", "4", "--sets", "3", "--no-progress", "--json", str(tmp_path / "clip.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ((world, recipe),) = worlds
    config = TrainConfig(dataset="composite", root=str(photos), reader="folder", split_seed=2)
    train_photos, held = split_photos(composite_groups(config), 0.3, seed=2)
    assert set(world.photos) == train_photos and held.isdisjoint(world.photos)
    assert (recipe.architecture, recipe.steps, recipe.batch_size, recipe.lr) == ("coseg-composite-clip", 2, 4, 2e-3)
    record = json.loads((tmp_path / "clip.json").read_text())
    assert f"weights: {record['weights']}" in out and "held-out sets (3 of 5 images, held-out photos)" in out
    assert "--clip-model coseg-composite-clip --clip-pretrained" in out
    assert record["world"] == world.fingerprint() and 0 <= record["set_top1"] <= 1 and record["chance"] == 1 / CLASSES
    meta = json.loads(Path(record["weights"]).with_suffix(".json").read_text())
    assert meta["recipe"]["steps"] == 2 and meta["world"]["fingerprint"] == world.fingerprint()
    # cached: the second call returns the same file
    assert main(argv) == 0
    assert json.loads((tmp_path / "clip.json").read_text())["weights"] == record["weights"]


def test_pretrain_clip_on_the_synthetic_world(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path / "cache"))
    argv = ["pretrain-clip", "--dataset", "synthetic", "--world-classes", "5", "--image-size", "32", "--steps", "1"]
    assert main([*argv, "--batch-size", "4", "--sets", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "weights: " in out and "coseg-synthetic-clip-" in out and "held-out seeds" in out
    assert len(list((tmp_path / "cache" / "clip").glob("coseg-synthetic-clip-*.safetensors"))) == 1


def test_pretrain_clip_errors_name_the_flag(photos, tmp_path, capsys) -> None:
    for argv, message in [
        (["--dataset", "composite"], "--root"),
        (["--dataset", "composite", "--root", str(photos)], "--reader"),
        (["--root", str(photos), "--reader", "folder", "--held-out", "2"], "--held-out"),
        (["--root", str(photos), "--reader", "folder", "--world-objects", "1", "2", "3"], "--world-objects"),
    ]:
        assert main(["pretrain-clip", *argv, "--steps", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_pretrain_clip_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain-clip", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "cosegkit pretrain-clip --dataset composite" in out
