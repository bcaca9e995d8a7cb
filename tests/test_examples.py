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
    assert "step 2: iou loss" in out and "masks: (2, 4, 1, 64, 64)" in out


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
    assert len(rows) == 8


@pytest.mark.slow
def test_benchmark_harness_runs_and_records_json(tmp_path) -> None:
    script = EXAMPLES.parent / "benchmarks" / "lcco_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--encoder", "resnet18", "--clip-model", "coseg-test-tiny", "--sizes", "64",
         "--set-sizes", "1", "3", "--repeats", "1", "--json", str(tmp_path / "bench.json")],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["size"], r["N"]) for r in record["model"]] == [(64, 1), (64, 3)]
    assert all(r["lcco"]["median_s"] > 0 and r["baseline"]["peak_mib"] > 0 for r in record["model"])
    assert all(r["same_output"] for r in record["isfc_loop"])
    assert record["text_bank_computations"] == 1
