"""cosegkit plot: the curves of run folders in one PNG, its panels and lines, and its one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from cosegkit import CosegValueError
from cosegkit.cli import main
from cosegkit.plot import plot_runs, read_run


def write_run(folder: Path, steps: int = 6, *, rate: float = 0.8, validation: bool = True, final: bool = True) -> Path:
    folder.mkdir(parents=True)
    lines = [
        {"step": s, "lr": 1e-4 * (1 - s / (steps + 1)), "seconds": 0.1 * s, "total": 2 * rate**s, "iou": rate**s,
         "acc/istar": min(1.0, 0.1 * s)}
        for s in range(1, steps + 1)
    ]  # fmt: skip
    (folder / "config.json").write_text("{}\n")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if validation:
        checks = [{"step": s, "P": 0.5 + 0.05 * s, "J": 0.1 * s, "images": 12, "seconds": 0.2} for s in (2, 4, 6)]
        (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in checks))
    if final:
        (folder / "eval.json").write_text(json.dumps({"P": 0.9, "J": 0.7, "images": 12, "preset": "ssnm"}))
    return folder


def panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes}


def test_one_panel_per_quantity_and_one_line_per_run(tmp_path) -> None:
    a = write_run(tmp_path / "lr-1e-4")
    b = write_run(tmp_path / "lr-3e-4", rate=0.6, validation=False, final=False)
    fig = plot_runs([a, b], tmp_path / "curves.png")
    by_title = panels(fig)
    assert list(by_title) == [
        "loss: total", "loss: iou", "learning rate", "acc/istar (class choice)", "held-out P", "held-out J"
    ]  # fmt: skip
    for title in ("loss: total", "loss: iou", "learning rate", "acc/istar (class choice)"):
        assert [line.get_label() for line in by_title[title].lines] == ["lr-1e-4", "lr-3e-4"]
    total = by_title["loss: total"].lines[1]
    assert list(total.get_xdata()) == [1, 2, 3, 4, 5, 6]
    assert list(total.get_ydata()) == pytest.approx([2 * 0.6**s for s in range(1, 7)])
    j = by_title["held-out J"]
    assert [line.get_label() for line in j.lines] == ["lr-1e-4"]  # the only run with validation.jsonl
    assert list(j.lines[0].get_xdata()) == [2, 4, 6] and list(j.lines[0].get_ydata()) == pytest.approx([0.2, 0.4, 0.6])
    stars = j.collections  # eval.json: one star at the run's last step
    assert len(stars) == 1 and stars[0].get_offsets().tolist() == [[6.0, 0.7]]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["lr-1e-4", "lr-3e-4", "end-of-run evaluation (eval.json)"]
    with Image.open(tmp_path / "curves.png") as png:
        assert png.format == "PNG" and png.width > 1000 and png.height > 600


def test_metrics_choose_and_order_the_panels(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    fig = plot_runs([run], metrics=["J", "total"], columns=1)
    assert [ax.get_title() for ax in fig.axes] == ["held-out J", "loss: total"]
    with pytest.raises(CosegValueError, match=r"no run logged \['accuracy'\] \(--metrics\); the runs have \['total'"):
        plot_runs([run], metrics=["accuracy"])


def test_a_step_logged_twice_counts_once_and_same_names_get_their_parents(tmp_path) -> None:
    a = write_run(tmp_path / "seed0" / "run", steps=3)
    with (a / "metrics.jsonl").open("a") as f:  # a run resumed from step 2: steps 3 logged again
        f.write(json.dumps({"step": 3, "lr": 0.0, "total": 9.0}) + "\n")
    b = write_run(tmp_path / "seed1" / "run", steps=3)
    assert read_run(a).curves["total"] == ([1, 2, 3], [pytest.approx(1.6), pytest.approx(1.28), 9.0])
    fig = plot_runs([a, b])
    assert [line.get_label() for line in fig.axes[0].lines] == ["seed0/run", "seed1/run"]


def test_an_eval_json_alone_gives_p_and_j_panels(tmp_path) -> None:
    run = write_run(tmp_path / "run", validation=False)
    by_title = panels(plot_runs([run]))
    j = by_title["held-out J"]
    assert len(j.lines) == 0 and j.collections[0].get_offsets().tolist() == [[6.0, 0.7]]


def test_the_command_writes_the_png(tmp_path, capsys) -> None:
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", rate=0.5)
    out = tmp_path / "curves.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--metrics", "total", "J"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 2 panels, 2 run(s)"
    with Image.open(out) as png:
        assert png.format == "PNG"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root, "is not a run folder (no metrics.jsonl): pass folders written by 'cosegkit train --out"),
        (lambda root: root / "missing", "is not a run folder (no metrics.jsonl)"),
    ],
)
def test_a_folder_that_is_not_a_run_gives_one_line(make, message, tmp_path, capsys) -> None:
    good = write_run(tmp_path / "good")
    assert main(["plot", str(good), str(make(tmp_path)), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()


def test_a_broken_line_and_an_unknown_metric_give_one_line(tmp_path, capsys) -> None:
    run = write_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write("{not json\n")
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.jsonl' line 7 is not a JSON record" in err, err


def test_without_matplotlib_the_fix_is_named(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    run = write_run(tmp_path / "run")
    assert main(["plot", str(run), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "cosegkit[plot]"' in err, err


def test_a_real_run_plots_its_training_and_validation(tmp_path) -> None:
    from cosegkit.engine import TrainConfig, train
    from tests.engine.test_trainer import TINY

    run = tmp_path / "run"
    train(TrainConfig(**TINY, steps=2, eval_every=1), run, progress=False)
    by_title = panels(plot_runs([run]))
    assert {"loss: total", "loss: classification", "learning rate", "acc/istar (class choice)", "held-out J"} <= set(
        by_title
    )
    assert list(by_title["held-out J"].lines[0].get_xdata()) == [1, 2]


def test_the_line_a_running_run_is_writing_is_left_out(tmp_path) -> None:
    run = write_run(tmp_path / "run", steps=3)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lr": 0.0, "tot')  # no newline yet
    assert read_run(run).curves["total"][0] == [1, 2, 3]
    with (run / "metrics.jsonl").open("a") as f:
        f.write('al": 1.0}\n')
    assert read_run(run).curves["total"][0] == [1, 2, 3, 4]
