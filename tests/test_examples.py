"""The example scripts run end to end on tiny budgets (they double as smoke tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.test_trainer import cli_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args: str, cwd: Path, env_extra: dict | None = None) -> str:
    env = dict(cli_env(), **(env_extra or {}))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_plug_into_unet(tmp_path) -> None:
    out = run("plug_into_unet.py", "--steps", "2", cwd=tmp_path)
    assert "step 2: iou loss" in out and "masks: (2, 4, 1, 64, 64) class probabilities: (2, 8)" in out


def test_plug_into_unet_modules_reach_the_masks(tiny_clip) -> None:
    """The example's placement passes SetAwareNetwork's gradient check, each module getting a gradient."""
    import importlib.util

    import segmentation_models_pytorch as smp

    spec = importlib.util.spec_from_file_location("plug_into_unet", EXAMPLES / "plug_into_unet.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    unet = smp.Unet("resnet18", encoder_weights=None, classes=1, decoder_channels=(64, 48, 32, 16, 16))
    model = example.set_aware_unet(unet, tiny_clip)  # runs the check
    assert model.points == [-1, "decoder.blocks.0", "decoder.blocks.1"]
    assert all(norm > 0 for norm in model.check_gradients().modules.values())


@pytest.mark.slow
def test_train_synthetic(tmp_path) -> None:
    out = run(
        "train_synthetic.py", "--steps", "2", "--clip-steps", "2", "--eval-sets", "2", "--out", "runs",
        cwd=tmp_path, env_extra={"COSEGKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert "Baseline" in out and "LCCo" in out
    assert (tmp_path / "runs" / "lcco" / "eval.json").is_file()


@pytest.mark.slow
def test_ablation_writes_eight_rows(tmp_path) -> None:
    out = run(
        "ablation.py", "--steps", "1", "--seeds", "2", "--eval-sets", "1", "--clip-steps", "2", "--out", "abl",
        cwd=tmp_path, env_extra={"COSEGKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    table_rows = [line for line in out.splitlines() if line.startswith("|") and "±" in line]
    assert len(table_rows) == 8 and all(line.count("±") == 2 for line in table_rows)
    rows = json.loads((tmp_path / "abl" / "table.json").read_text())["rows"]
    assert rows[0]["row"] == "Baseline" and rows[-1]["row"] == "ISFC + CLIP Inter. + CLIP Reg."
    assert len(rows) == 8 and all(row["settings"]["variant"] == "default" and len(row["seeds"]) == 2 for row in rows)
    config = json.loads((tmp_path / "abl" / "ISFC+CLIP_Inter+CLIP_Reg" / "seed1" / "config.json").read_text())
    assert config["variant"] == "default" and config["seed"] == 1 and config["steps"] == 1
    assert config["extra"]["eval_seed"] == 1  # every seed on the demo's held-out sets


@pytest.mark.slow
def test_grouping_table_has_readout_columns(tmp_path) -> None:
    out = run(
        "ablation.py", "--table", "grouping", "--steps", "1", "--seeds", "1", "--eval-sets", "1",
        "--clip-steps", "2", "--out", "abl", cwd=tmp_path, env_extra={"COSEGKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    table_rows = [line for line in out.splitlines() if line.startswith("|") and "±" in line]
    assert len(table_rows) == 11
    with_readout = [line for line in table_rows if line.count("±") == 5]
    assert len(with_readout) == 9 and all("Grouping" in line for line in with_readout)
    rows = {row["row"]: row for row in json.loads((tmp_path / "abl" / "table.json").read_text())["rows"]}
    seed = rows["Grouping + superpixel loss"]["seeds"][0]
    assert all(0 <= seed[f"readout_{m}_J"] <= 1 for m in ("score", "coverage", "clip"))
    assert 1 <= seed["diag_groups_used"] <= 8 and 0 <= seed["diag_oracle_J"] <= 1
    assert "| model | groups_used | full_coverage |" in out
    run_dir = tmp_path / "abl" / "Grouping+superpixel_loss" / "seed0"
    assert (run_dir / "readout.json").is_file() and any((run_dir / "superpixels").iterdir())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["use_grouping"] and config["superpixel_weight"] == 1.0
    assert "readout_clip_J" not in rows["Baseline"]["seeds"][0]
    level = json.loads((tmp_path / "abl" / "Grouping_level_3" / "seed0" / "config.json").read_text())
    assert level["grouping_level"] == 3
    no_loss = json.loads((tmp_path / "abl" / "Grouping_no_grouping_mask_loss" / "seed0" / "config.json").read_text())
    assert no_loss["grouping_weight"] == 0.0


def test_readings_table_takes_each_reading_in_and_out() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", EXAMPLES / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    from cosegkit.models import VARIANTS

    rows = dict(ablation.reading_rows())
    printed = {**VARIANTS["paper"], "unit_scale": False, "class_prior": 0.0}
    changed = [k for k in ablation.READINGS if printed[k] != VARIANTS["default"][k]]
    assert rows["literal"] == printed and rows["default"] == VARIANTS["default"]
    assert rows["paper"] == VARIANTS["paper"] and len(changed) == 5
    assert len(rows) == 3 + 2 * (len(changed) + 1)
    pair = rows["literal + class_pool + class_prior"]
    assert [k for k in pair if pair[k] != printed[k]] == ["class_pool", "class_prior"]
    for key in changed:
        plus, minus = rows[f"literal + {key}"], rows[f"default - {key}"]
        assert [k for k in plus if plus[k] != printed[k]] == [key]
        assert [k for k in minus if minus[k] != VARIANTS["default"][k]] == [key]


def test_benchmark_harness_runs_and_records_json(tmp_path) -> None:
    script = EXAMPLES.parent / "benchmarks" / "lcco_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--encoder", "resnet18", "--clip-model", "coseg-test-tiny", "--sizes", "64",
         "--set-sizes", "1", "3", "--repeats", "1", "--ufo-dim", "32", "--json", str(tmp_path / "bench.json")],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["size"], r["N"]) for r in record["model"]] == [(64, 1), (64, 3)]
    assert all(r["lcco"]["median_s"] > 0 and r["baseline"]["peak_mib"] > 0 for r in record["model"])
    assert all(r["ufo"]["median_s"] > 0 and r["ufo"]["peak_mib"] > 0 for r in record["model"])
    assert record["ufo_dim"] == 32
    assert all(r["same_output"] for r in record["isfc_loop"])
    assert record["text_bank_computations"] == 1
    (train,) = record["train"]
    names = ("Baseline + CLIP pass", "LCCo, per-set target", "LCCo, cached target", "UFO")
    assert all(train[n]["median_s"] > 0 and train[n]["images_per_s"] > 0 for n in names)
    assert train["Baseline + CLIP pass"]["ratio"] == 1.0 and train["cache_embedded"] == 2 * 5
    assert "images/s" in done.stdout


def test_export_benchmark_runs_and_records_json(tmp_path) -> None:
    script = EXAMPLES.parent / "benchmarks" / "export_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--encoder", "resnet18", "--image-size", "32", "--repeats", "1",
         "--json", str(tmp_path / "export.json")],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "export.json").read_text())
    assert set(record["rows"]) == {"eager PyTorch", "onnxruntime"} and record["rows"]["eager PyTorch"]["ratio"] == 1.0
    assert record["max_abs_diff"] < 1e-4 and record["probs_std"] > 0.01 and record["size_mib"] > 0
    assert "| onnxruntime |" in done.stdout


def test_eq12_agreement_benchmark_runs_and_records_json(tmp_path) -> None:
    script = EXAMPLES.parent / "benchmarks" / "eq12_target_agreement.py"
    done = subprocess.run(
        [sys.executable, str(script), "--sets", "6", "--clip-steps", "2", "--images-per-group", "5", "--draws", "2",
         "--passless", "--data", str(tmp_path / "data"), "--json", str(tmp_path / "agree.json")],
        env={**cli_env(), "COSEGKIT_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    numbers = json.loads((tmp_path / "agree.json").read_text())
    assert numbers["sets"] == 6 and len(list((tmp_path / "data" / "images").iterdir())) == 16
    plain, augmented = numbers["no_augmentation"], numbers["augmentation"]
    assert plain["cached_equals_per_set"] == 1.0  # without augmentation the cache is the per-set computation
    assert all(0 <= v <= 1 for v in augmented.values())
    assert {"per_set_again_equals_per_set", "most_frequent_equals_per_set"} <= set(augmented)
    passless = {"unmasked", "pooled_tokens", "masked_cls_1", "masked_cls_2", "masked_cls_3"}
    assert {f"{k}_equals_per_set" for k in passless} <= set(plain)
    assert "| trainer's augmentation | cached: per image, un-augmented |" in done.stdout


SHARED_PASCAL = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pascal_voc_coseg").resolve()


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_PASCAL.is_dir(), reason=f"needs the PASCAL-VOC co-segmentation folder at {SHARED_PASCAL}"
)
def test_train_paper_smoke_on_a_voc_segmentation_split(tmp_path) -> None:
    """The reproduction script's whole path: VOC 2012 training groups, PASCAL co-seg test."""
    import numpy as np
    from PIL import Image

    from cosegkit.data import VOC_CLASSES, voc_colour

    voc = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(2 * len(VOC_CLASSES)):  # two images of each class: the reader wants all 20
        label = np.zeros((48, 64), np.uint8)
        label[8:40, 8 + i : 40 + i] = i % len(VOC_CLASSES) + 1
        mask = Image.fromarray(label)
        mask.putpalette([c for k in range(256) for c in voc_colour(k)])
        mask.save(voc / "SegmentationClass" / f"2008_{i:06d}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"2008_{i:06d}.jpg"
        )
        ids.append(f"2008_{i:06d}")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")

    out = run(
        "train_paper.py", "--smoke", "--train", f"voc_segmentation={voc}", "--test", f"pascal_voc={SHARED_PASCAL}",
        "--out", "run", cwd=tmp_path,
    )  # fmt: skip
    assert "paper P / J (trained on voc_segmentation)" in out
    assert "96.1 / 75.9" in out  # the paper's PASCAL cell, printed beside the measured one
    scores = json.loads((tmp_path / "run" / "test.json").read_text())
    assert scores["pascal_voc"]["images"] == 109  # Aero 66 + Bicycle 43: the smoke run's two groups
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "voc_segmentation"


@pytest.mark.slow
def test_train_without_masks(tmp_path) -> None:
    out = run(
        "train_without_masks.py", "--images-per-group", "4", "--steps", "2", "--clip-steps", "2",
        "--eval-sets", "2", "--out", "wm", "--no-progress",
        cwd=tmp_path, env_extra={"COSEGKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert "Zero-shot" in out and "LCCo on pseudo masks" in out
    assert not (tmp_path / "wm" / "data" / "masks").exists()
    results = json.loads((tmp_path / "wm" / "results.json").read_text())
    assert results["groups"] == 16 and all(results[k]["images"] == 8 for k in ("Zero-shot", "LCCo on pseudo masks"))
    config = json.loads((tmp_path / "wm" / "lcco-pseudo" / "config.json").read_text())
    assert config["pseudo_masks"] == "zero-shot" and config["dataset"] == "folder"
    assert config["extra"]["zero_shot"] == {"image_size": 160}  # the demo's zero-shot model


@pytest.mark.slow
def test_class_targets_example_trains_both_readings(tmp_path) -> None:
    out = run(
        "class_targets.py", "--seeds", "0", "--steps", "2", "--clip-steps", "2", "--images-per-group", "6",
        "--eval-sets", "2", "--out", "ct", "--no-progress",
        cwd=tmp_path, env_extra={"COSEGKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert "| per-set |" in out and "| cached |" in out
    results = json.loads((tmp_path / "ct" / "results.json").read_text())
    assert [(r["reading"], r["seed"]) for r in results] == [("per-set", 0), ("cached", 0)]
    assert (tmp_path / "ct" / "cached-seed0" / "class_targets").is_dir()
    assert not (tmp_path / "ct" / "per-set-seed0" / "class_targets").exists()
    config = json.loads((tmp_path / "ct" / "cached-seed0" / "config.json").read_text())
    assert config["augment"] is True and config["dataset"] == "folder"


@pytest.mark.slow
def test_zero_shot_synthetic_prints_a_row_per_setting(tmp_path) -> None:
    out = run(
        "zero_shot_synthetic.py", "--clip-steps", "2", "--sizes", "32", "64", "--sets", "2",
        cwd=tmp_path, env_extra={"COSEGKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.strip().endswith(tuple("0123456789"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("32px", "yes", "CLIP"), ("64px", "yes", "CLIP"), ("32px", "no", "CLIP"), ("64px", "no", "CLIP"),
        ("32px", "yes", "given"), ("64px", "yes", "given"),
    ]  # fmt: skip
    assert all(r[5] == "100%" for r in rows if r[2] == "given")  # the true class, given, is always named


@pytest.mark.slow
def test_zero_shot_fidelity_prints_every_combination(tmp_path) -> None:
    out = run(
        "zero_shot_fidelity.py", "--clip-steps", "2", "--sizes", "48", "--sets", "2",
        cwd=tmp_path, env_extra={"COSEGKIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert any(line.split()[:2] == ["48px", "6x6"] for line in out.splitlines())  # the CLIP's own grid is 8 x 8
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("bilinear", "bicubic"))]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (pos, scaling, caa) for caa in ("yes", "no") for pos in ("bilinear", "bicubic") for scaling in ("twice", "once")
    ]
    assert rows[0][9] == "0.00e+00"  # CLIP-ES's combination is the reference of the map changes
    assert out.count("singly scaled CAMs") == 2
    boxes = [line.split() for line in out.splitlines() if line.strip().startswith(("uint8", "float"))]
    assert [r[0] for r in boxes] == ["uint8", "float"] and boxes[0][7] == "0.00e+00"  # CLIP-ES's 8-bit copy first
    assert "4. CAA's box threshold" in out and all("images," in " ".join(r) for r in boxes)


def test_gpu_benchmark_driver_lists_its_tables_and_refuses_without_cuda(monkeypatch, capsys) -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_bench", EXAMPLES.parent / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    assert gpu.main(["--dry-run", "--out", "b"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["fp32", "bf16", "compile", "ddp-nccl"]
    assert "--dtype bf16" in lines[1] and "--options" in lines[2] and "--nproc-per-node 2" in lines[3]
    assert "--device cuda" in lines[3] and all("--device cuda" in line for line in lines)
    assert [n for n, _ in gpu.commands(Path("b"), quick=False, gpus=1)] == ["fp32", "bf16", "compile"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", "b"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_results_table_resumes_its_finished_runs(tmp_path) -> None:
    """Every (world, row, seed) is a run folder; a finished one is read back, not run again."""
    env = dict(cli_env(), COSEGKIT_CACHE=str(tmp_path / "cache"))
    argv = [sys.executable, str(BENCHMARKS / "results_table.py"), "--worlds", "synthetic", "--quick", "--seeds", "2",
            "--rows", "Baseline", "Zero-shot", "Class oracle", "LCCo, pseudo masks", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    runs = {row["row"]: row["runs"] for row in table["rows"]}
    assert set(runs) == {"Baseline", "Zero-shot", "Class oracle", "LCCo, pseudo masks"}
    assert len(runs["Baseline"]) == len(runs["Class oracle"]) == 2 and len(runs["Zero-shot"]) == 1  # deterministic
    assert "| Class oracle |" in (tmp_path / "out" / "table.md").read_text()
    oracle = json.loads((tmp_path / "out" / "synthetic" / "class-oracle" / "seed1" / "config.json").read_text())
    assert oracle["class_oracle"] is True and oracle["seed"] == 1 and oracle["extra"]["eval_seed"] == 1
    pseudo = json.loads((tmp_path / "out" / "synthetic" / "lcco-pseudo-masks" / "seed0" / "config.json").read_text())
    assert pseudo["pseudo_masks"] == "zero-shot" and pseudo["extra"]["zero_shot"] == {"synonyms": {}, "image_size": 160}
    finished = tmp_path / "out" / "synthetic" / "baseline" / "seed0" / "scores.json"
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("scores.json")}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing ran again
    assert json.loads(finished.read_text()) == runs["Baseline"][0]
    done = subprocess.run([*argv, "--steps", "5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "pass another --out" in done.stderr  # not the old runs under a new budget
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_results_table_refuses_another_budget_in_the_same_out(tmp_path, monkeypatch) -> None:
    """Finished runs are reused and interrupted ones resume their own config, so a new budget needs a new --out."""
    table = _results_table(monkeypatch)
    budget = {"clip_steps": 600, "steps": 600, "eval_sets": 60, "lr": 1e-3}
    table.check_budget(tmp_path / "synthetic", budget)  # nothing recorded yet
    table.record_budget(tmp_path / "synthetic", budget)
    table.check_budget(tmp_path / "synthetic", dict(budget))
    for change in ({"steps": 400}, {"lr": 2e-3}):
        with pytest.raises(ValueError, match="pass another --out"):
            table.check_budget(tmp_path / "synthetic", {**budget, **change})


def _results_table(monkeypatch):
    """benchmarks/results_table.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", BENCHMARKS / "results_table.py")
    table = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "results_table", table)  # its dataclasses look their module up
    spec.loader.exec_module(table)
    return table


@pytest.mark.parametrize(("steps", "pool"), [(3, 12), (600, 400)])
def test_results_table_pseudo_row_labels_no_more_sets_than_training_draws(tmp_path, monkeypatch, steps, pool) -> None:
    """The pseudo-mask row's pool is 400 sets, or fewer when the run draws fewer (steps x batch size)."""
    import cosegkit.engine

    table = _results_table(monkeypatch)
    trained = []

    class Stop(Exception):
        pass

    def train(config, *args, **kwargs):
        trained.append(config)
        raise Stop

    monkeypatch.setattr(cosegkit.engine, "train", train)
    budget = {"steps": steps, "eval_sets": 2, "clip_steps": 1, "lr": 1e-3}
    with pytest.raises(Stop):
        table.run_one("synthetic", None, "LCCo, pseudo masks", 1, budget, "clip.safetensors", str(tmp_path / "run"))
    (config,) = trained
    assert (config.steps, config.batch_size, config.pseudo_masks, config.pseudo_pool) == (steps, 4, "zero-shot", pool)
    assert config.extra["zero_shot"] == {"synonyms": {}, "image_size": 160} and config.extra["eval_seed"] == 1


def test_results_table_zero_shot_row_on_real_photos_runs_at_the_worlds_size_and_scores_the_photos(
    tmp_path, monkeypatch
) -> None:
    """On ``pascal`` the zero-shot row uses that world's settings (128 px) and is scored on the sets and the photos."""
    import types

    import cosegkit.demo
    import cosegkit.engine
    import cosegkit.engine.config

    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path / "cache"))
    table = _results_table(monkeypatch)
    clip = cosegkit.demo.demo_clip("synthetic", None)  # any small CLIP: nothing is read from the photos
    scored = []

    def evaluate(model, sets, **kwargs):
        scored.append((model.image_size, sets))
        return types.SimpleNamespace(P=0.5, J=0.25, images=4)

    monkeypatch.setattr(cosegkit.demo, "demo_clip", lambda *args, **kwargs: clip)
    monkeypatch.setattr(cosegkit.engine.config, "build_eval_sets", lambda config: "sets")
    monkeypatch.setattr(cosegkit.engine.config, "build_photo_eval_sets", lambda config: "photos")
    monkeypatch.setattr(cosegkit.engine, "evaluate", evaluate)
    budget = {"steps": 3, "eval_sets": 2, "clip_steps": 1, "lr": 1e-3}
    scores = table.run_one("pascal", "photos", "Zero-shot", 0, budget, "clip.safetensors", str(tmp_path / "run"))
    assert scored == [(128, "sets"), (128, "photos")]
    assert scores["sets"] == scores["photos"] == {"P": 0.5, "J": 0.25, "images": 4}


def test_results_table_segclip_row_pretrains_the_seed_s_segclip_and_reports_its_groups(tmp_path, monkeypatch) -> None:
    """The SegCLIP row pre-trains a SegCLIP per seed at the world's CLIP budget, scores it and diagnoses its groups."""
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path / "cache"))
    table = _results_table(monkeypatch)
    budget = {"steps": 3, "eval_sets": 2, "clip_steps": 2, "lr": 1e-3}
    scores = table.run_one(
        "synthetic", None, "SegCLIP zero-shot, shared centres", 1, budget, "unused", str(tmp_path / "r")
    )
    assert 0 <= scores["sets"]["J"] <= 1 and scores["sets"]["images"] == 8
    assert {"groups_used", "oracle_J", "target_purity", "class_top1", "told_J"} <= set(scores["groups"])
    record = json.loads((Path(scores["segclip"]["folder"]) / "pretrain.json").read_text())
    assert (record["recipe"]["seed"], record["recipe"]["steps"], record["recipe"]["batch_size"]) == (1, 2, 128)
    assert json.loads((tmp_path / "r" / "scores.json").read_text()) == scores


def test_results_table_clip_per_seed_row_uses_the_seed_s_clip(tmp_path, monkeypatch) -> None:
    import types

    import cosegkit.demo
    import cosegkit.engine

    table = _results_table(monkeypatch)
    seeds = []

    def prepare(world, **kwargs):
        seeds.append(kwargs["seed"])
        return Path("clip-of-the-seed.safetensors"), {}

    monkeypatch.setattr(cosegkit.demo, "prepare_world_clip", prepare)
    monkeypatch.setattr(cosegkit.demo, "demo_clip", lambda world, path, root=None: path)
    monkeypatch.setattr(cosegkit.demo, "demo_zero_shot", lambda clip, world: clip)
    used = []

    def evaluate(model, sets, **kwargs):
        used.append(model)
        return types.SimpleNamespace(P=1.0, J=0.5, images=1)

    monkeypatch.setattr(cosegkit.engine, "evaluate", evaluate)
    budget = {"steps": 3, "eval_sets": 2, "clip_steps": 1, "lr": 1e-3}
    table.run_one("synthetic", None, "Zero-shot, CLIP per seed", 2, budget, "seed0.safetensors", str(tmp_path / "r"))
    assert seeds == [2] and used == ["clip-of-the-seed.safetensors"]  # not the seed-0 CLIP the table passes
