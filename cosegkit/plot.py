"""Training curves of one or several runs in one PNG, from their run folders (``cosegkit plot``).

Reads each run's ``metrics.jsonl`` (loss terms, learning rate, class-choice accuracies),
``validation.jsonl`` (P and J of ``--eval-every``) and ``eval.json`` (the end-of-run P and J,
drawn as a star at the run's last step). One panel per quantity, one line per run, labelled
with the run folder's name. Needs matplotlib (the optional extra ``cosegkit[plot]``), not
TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cosegkit.errors import CosegValueError

__all__ = ["RunCurves", "plot_runs", "read_run"]

_NOT_CURVES = ("step", "seconds")


class RunCurves:
    """The curves of one run folder: ``{quantity: (steps, values)}``, and its end-of-run evaluation.

    Quantities: the keys of ``metrics.jsonl`` (loss terms such as ``total``, ``lr``,
    ``acc/istar``), and ``P`` and ``J`` from ``validation.jsonl``. A step logged twice (a run
    resumed from a checkpoint before it) counts once, its last line; an unfinished last line
    (a running run writing it) is left out.

    Attributes:
        path: the run folder.
        curves: ``{quantity: (steps, values)}``, steps increasing.
        final: ``{"P": ..., "J": ..., "step": ...}`` from ``eval.json`` (its step is the run's
            last), or ``None``.

    Example:
        >>> from pathlib import Path
        >>> from cosegkit.plot import RunCurves
        >>> curves = RunCurves(Path("runs/a"), {"total": ([1, 2], [2.0, 1.5])}, {"P": 0.9, "J": 0.7, "step": 2})
        >>> curves.curves["total"][1][-1], curves.final["J"]
        (1.5, 0.7)
    """

    def __init__(
        self, path: str | os.PathLike[str], curves: dict[str, tuple[list[int], list[float]]], final: dict | None
    ) -> None:
        self.path, self.curves, self.final = Path(path), curves, final


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    lines = text.splitlines()
    records: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[int(record["step"])] = record
        except (ValueError, KeyError, TypeError) as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # the line a running run is writing
            raise CosegValueError(f"{str(path)!r} line {number} is not a JSON record with a step ({err})") from None
    return [records[step] for step in sorted(records)]


def read_run(path: str | os.PathLike[str]) -> RunCurves:
    """Read a run folder's curves (:class:`RunCurves`).

    Raises:
        CosegValueError: ``path`` is not a run folder (no ``metrics.jsonl``), or a line is broken.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from cosegkit.plot import read_run
        >>> run = Path(tempfile.mkdtemp())
        >>> lines = [{"step": 1, "lr": 1e-4, "total": 2.0}, {"step": 2, "lr": 5e-5, "total": 1.5}]
        >>> _ = (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in lines))
        >>> read_run(run).curves
        {'lr': ([1, 2], [0.0001, 5e-05]), 'total': ([1, 2], [2.0, 1.5])}
        >>> read_run(run / "missing")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: '.../missing' is not a run folder (no metrics.jsonl): ...
    """
    run = Path(path)
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise CosegValueError(
            f"{str(run)!r} is not a run folder (no metrics.jsonl): pass folders written by 'cosegkit train --out RUN'"
        )
    curves: dict[str, tuple[list[int], list[float]]] = {}

    def add(records: list[dict[str, Any]], keys: Sequence[str] | None = None) -> None:
        for record in records:
            for key, value in record.items():
                if key in _NOT_CURVES or (keys is not None and key not in keys) or not isinstance(value, (int, float)):
                    continue
                steps, values = curves.setdefault(key, ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))

    add(_lines(metrics))
    if (run / "validation.jsonl").is_file():
        add(_lines(run / "validation.jsonl"), keys=("P", "J"))
    final = None
    if (run / "eval.json").is_file():
        result = json.loads((run / "eval.json").read_text())
        last = max((steps[-1] for steps, _ in curves.values()), default=0)
        final = {"P": float(result["P"]), "J": float(result["J"]), "step": last}
    return RunCurves(run, curves, final)


def _order(names: set[str]) -> list[str]:
    """Loss terms first (``total`` leading), then ``lr``, the accuracies, and P and J."""

    def rank(name: str) -> tuple[int, str]:
        if name == "total":
            return (0, "")
        if name == "lr":
            return (2, "")
        if name.startswith("acc/"):
            return (3, name)
        if name in ("P", "J"):
            return (4, "0" if name == "P" else "1")
        return (1, name)

    return sorted(names, key=rank)


_TITLES = {"lr": "learning rate", "P": "held-out P", "J": "held-out J", "total": "loss: total"}


def _labels(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell them apart."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(x) for x in parts) + 1):
        labels = ["/".join(x[-depth:]) for x in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def plot_runs(
    runs: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    columns: int = 3,
):
    """Draw the curves of ``runs`` (run folders), one panel per quantity and one line per run.

    Args:
        runs: run folders written by :func:`~cosegkit.engine.train`.
        path: write the figure here as a PNG (and return it as well); ``None`` only returns it.
        metrics: the quantities to draw, in order (``"total"``, ``"iou"``, ``"lr"``,
            ``"acc/istar"``, ``"P"``, ``"J"``...); default: every one any run logged, the
            loss terms first, then the learning rate, the accuracies, and P and J.
        columns: panels per row.

    Returns:
        The matplotlib ``Figure``: ``fig.axes`` holds one panel per quantity,
        each with one line per run that logged it (the P and J panels also a star per run
        that has an ``eval.json``, its end-of-run score).

    Raises:
        CosegValueError: a folder is not a run, a quantity is not in any run, matplotlib is
            missing, or ``runs`` is empty.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from cosegkit.plot import plot_runs
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name, rate in (("fast", 0.5), ("slow", 0.9)):
        ...     run = folder / name
        ...     run.mkdir()
        ...     lines = [{"step": s, "lr": 1e-4, "total": rate**s} for s in range(1, 6)]
        ...     _ = (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in lines))
        >>> fig = plot_runs([folder / "fast", folder / "slow"], folder / "curves.png")
        >>> [ax.get_title() for ax in fig.axes], [len(ax.lines) for ax in fig.axes]
        (['loss: total', 'learning rate'], [2, 2])
        >>> [line.get_label() for line in fig.axes[0].lines], (folder / "curves.png").is_file()
        (['fast', 'slow'], True)
    """
    if not runs:
        raise CosegValueError("plot needs at least one run folder")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise CosegValueError(f'plotting needs matplotlib ({err}): pip install "cosegkit[plot]"') from None
    read = [read_run(run) for run in runs]
    found = set().union(*(r.curves for r in read)) | ({"P", "J"} if any(r.final for r in read) else set())
    if metrics is None:
        names = _order(found)
    else:
        missing = [m for m in metrics if m not in found]
        if missing:
            raise CosegValueError(f"no run logged {missing} (--metrics); the runs have {_order(found)}")
        names = list(dict.fromkeys(metrics))
    if not names:
        raise CosegValueError(f"the runs {[str(r.path) for r in read]} have no logged step yet")
    columns = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / columns)
    fig = Figure(figsize=(4.6 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    labels = _labels([r.path for r in read])
    colours = [f"C{i % 10}" for i in range(len(read))]
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, columns, k + 1)
        for run, label, colour in zip(read, labels, colours, strict=True):
            if name in run.curves:
                steps, values = run.curves[name]
                ax.plot(
                    steps, values, color=colour, label=label, linewidth=1.4, marker="." if len(steps) < 30 else None
                )
            if name in ("P", "J") and run.final is not None:
                ax.scatter([run.final["step"]], [run.final[name]], color=colour, marker="*", s=90, zorder=3)
        ax.set_title(_TITLES.get(name, f"{name} (class choice)" if name.startswith("acc/") else f"loss: {name}"))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    handles, names_ = fig.axes[0].get_legend_handles_labels()
    for ax in fig.axes[1:]:  # every run, once, also when the first panel lacks one
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in names_:
                handles.append(handle)
                names_.append(label)
    if any(r.final is not None for r in read) and any(n in ("P", "J") for n in names):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.4", marker="*", markersize=10, linestyle="none"))
        names_.append("end-of-run evaluation (eval.json)")
    fig.legend(handles, names_, loc="outside upper center", ncols=min(len(names_), 4), frameon=False)
    if path is not None:
        fig.savefig(Path(path), dpi=110)
    return fig
