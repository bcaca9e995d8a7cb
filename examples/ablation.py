"""The paper's Table 2 in miniature, and what each of cosegkit's readings of the modules buys.

Two tables, each row trained with the demo's settings (the synthetic world, 600 steps of 4
sets of 4 images) for ``--seeds`` seeds, P and J on held-out sets as mean and standard
deviation over the seeds:

- ``--table modules`` (default): Table 2's eight rows (Baseline, each module alone, each pair,
  all three) with the modules of ``--variant`` (``default``, or ``paper`` for the printed
  equations);
- ``--table readings``: the printed equations at their most literal, each of the default
  variant's readings added to them alone, the ``paper`` variant, the default, and the default
  with each reading taken back (see the equations page); the Baseline is the modules table's
  first row;
- ``--table grouping``: the set-level grouping layer (:class:`cosegkit.SetGrouping`): the
  Baseline; the grouping alone at decoder level 1 (the default), 2 and 3, with the superpixel
  loss, with the distortion loss (at levels 1 and 3), and without the grouping mask loss; the three modules; and the three modules with the
  grouping; for every row with the grouping, also the J of its
  read-outs (:class:`cosegkit.GroupingReadout`: the group of highest learned score, of highest
  coverage, and the group that agrees best with CLIP's class), masks from the grouping alone,
  scored on the same sets.

Every run is scored on the same held-out sets, the demo's, so the spread over seeds measures
training (initialisation and data order), not which sets were drawn. Runs go two at a time
(one per core) by default; every run is a normal run folder, so an
interrupted ablation continues where it stopped.

    python examples/ablation.py                                  # Table 2, default modules, 3 seeds
    python examples/ablation.py --variant paper                  # Table 2 with the printed equations
    python examples/ablation.py --table readings --seeds 1
    python examples/ablation.py --table grouping --clip-steps 600    # the grouping layer, the demo's CLIP
    python examples/ablation.py --steps 5 --seeds 1 --eval-sets 4 --clip-steps 5   # smoke test

Prints the table and writes it as Markdown (``<out>/table.md``) and JSON (``<out>/table.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MODULE_ROWS = [(c, i, r) for c, i, r in itertools.product([False, True], repeat=3)]
MODULE_ROWS.sort(key=lambda row: (sum(row), [not x for x in row]))  # Baseline, singles, pairs, all: Table 2's order

READINGS = ("correspondence_residual", "residual", "unit_scale", "class_pool", "class_prior")
#: what the readings table adds to the paper alone and takes back from the default alone; the
#: two halves of the eq. (7) reading also go together
READING_GROUPS: tuple[tuple[str, ...], ...] = (*((key,) for key in READINGS), ("class_pool", "class_prior"))


def reading_rows() -> list[tuple[str, dict]]:
    """(label, settings) for the readings table.

    The printed equations at their most literal (``"literal"``: the ``"paper"`` variant with
    raw CLIP vectors and a plain MLP_3), each of the default variant's readings added to them
    alone, the ``"paper"`` variant, the default, and the default with each reading taken back.
    """
    from cosegkit.models import VARIANTS
    from cosegkit.models.lcco import LEGACY_SETTINGS

    default = VARIANTS["default"]
    printed = {**VARIANTS["paper"], **{k: v for k, v in LEGACY_SETTINGS.items() if k in READINGS}}
    groups = [g for g in READING_GROUPS if any(printed[k] != default[k] for k in g)]
    rows = [("literal", dict(printed))]
    rows += [(f"literal + {' + '.join(g)}", {**printed, **{k: default[k] for k in g}}) for g in groups]
    rows.append(("paper", dict(VARIANTS["paper"])))
    rows.append(("default", dict(default)))
    rows += [(f"default - {' - '.join(g)}", {**default, **{k: printed[k] for k in g}}) for g in groups]
    return rows


def module_rows(variant: str) -> list[tuple[str, dict]]:
    rows = []
    for c, i, r in MODULE_ROWS:
        parts = [label for on, label in zip((c, i, r), ("ISFC", "CLIP Inter.", "CLIP Reg."), strict=True) if on]
        label = " + ".join(parts) if parts else "Baseline"
        rows.append(
            (label, {"use_correspondence": c, "use_interaction": i, "use_regularization": r, "variant": variant})
        )
    return rows


def grouping_rows() -> list[tuple[str, dict]]:
    """(label, settings) for the grouping table; every grouping setting is spelled out."""
    off = {"use_correspondence": False, "use_interaction": False, "use_regularization": False, "variant": "default"}
    on = {**off, "use_correspondence": True, "use_interaction": True, "use_regularization": True}
    level1 = {"use_grouping": True, "grouping_level": 1, "grouping_weight": 1.0, "distortion_weight": 0.0}
    level3 = {**level1, "grouping_level": 3, "distortion_weight": 1.0}
    return [
        ("Baseline", off),
        ("Grouping", {**off, **level1}),
        ("Grouping, level 2", {**off, **level1, "grouping_level": 2}),
        ("Grouping, level 3", {**off, **level1, "grouping_level": 3}),
        ("Grouping + superpixel loss", {**off, **level1, "superpixel_weight": 1.0}),
        ("Grouping + distortion loss", {**off, **level1, "distortion_weight": 1.0}),
        ("Grouping, level 3 + distortion loss", {**off, **level3}),
        ("Grouping, no grouping mask loss", {**off, **level1, "grouping_weight": 0.0}),
        ("ISFC + CLIP Inter. + CLIP Reg.", on),
        ("ISFC + CLIP Inter. + CLIP Reg. + Grouping", {**on, **level1}),
        ("ISFC + CLIP Inter. + CLIP Reg. + Grouping, level 3 + distortion loss", {**on, **level3}),
    ]


def readout_scores(run: Path, clip_path: str) -> dict:
    """The grouping read-outs' P and J and the grouping diagnostics of a finished run (cached in readout.json).

    On the run's held-out sets: the three read-outs of :class:`cosegkit.GroupingReadout`, and
    :func:`cosegkit.diagnostics.grouping_diagnostics` (``diag_*`` keys).
    """
    cached = run / "readout.json"
    scores = json.loads(cached.read_text()) if cached.is_file() else {}
    wanted = [f"readout_{m}_J" for m in ("score", "coverage", "clip")] + ["diag_oracle_J"]
    if all(key in scores for key in wanted):
        return scores
    from cosegkit import FrozenClip, GroupingReadout, LCCo
    from cosegkit.engine.pretrain import register_synthetic_clip
    from cosegkit.diagnostics import grouping_diagnostics
    from cosegkit.engine import TrainConfig, build_eval_sets, evaluate

    config = TrainConfig.load(run / "config.json")
    model = LCCo.from_pretrained(run / "model").eval()
    sets = build_eval_sets(config, config.eval_classes)
    register_synthetic_clip()
    classnames, templates = config.vocabulary()
    clip = FrozenClip.from_name(config.clip_model, pretrained=clip_path, classnames=classnames, templates=templates)
    for method in ("score", "coverage", "clip"):
        if f"readout_{method}_J" not in scores:
            result = evaluate(GroupingReadout(model, method, clip=clip), sets)
            scores[f"readout_{method}_P"], scores[f"readout_{method}_J"] = result.P, result.J
    scores.update({f"diag_{k}": v for k, v in grouping_diagnostics(model, sets).items()})
    cached.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def run_one(clip_path: str, steps: int, seed: int, eval_sets: int, settings: dict, out: str) -> dict:
    """Train one row for one seed (resuming if the run folder has checkpoints); its held-out scores."""
    import dataclasses

    import torch

    torch.set_num_threads(1)
    from cosegkit.demo import demo_train_config
    from cosegkit.engine import find_checkpoints, train

    config = dataclasses.replace(demo_train_config(clip_path, steps, seed, eval_sets), **settings)
    config.extra["eval_seed"] = 1  # every seed on the demo's held-out sets: the spread is the training's
    resume = bool(find_checkpoints(Path(out) / "checkpoints"))
    start = time.perf_counter()
    result = train(None if resume else config, out, resume=resume, progress=False)
    ev = result.evaluation
    scores = {"P": ev.P, "J": ev.J, "seconds": time.perf_counter() - start}
    if settings.get("use_grouping"):
        scores.update(readout_scores(Path(out), clip_path))
    return scores


def folder_name(label: str) -> str:
    return label.replace(" + ", "+").replace(" - ", "-").replace(",", "").replace(" ", "_").replace(".", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=("modules", "readings", "grouping"), default="modules", help="which table")
    parser.add_argument("--variant", choices=("default", "paper"), default="default", help="modules table: readings")
    parser.add_argument("--steps", type=int, default=600, help="training steps per run (default 600, the demo's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row (default 3)")
    parser.add_argument("--eval-sets", type=int, default=60, help="held-out sets per run (default 60)")
    parser.add_argument("--clip-steps", type=int, default=300, help="CLIP pre-training steps (cached)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once")
    parser.add_argument("--out", default=None, help="run folders and the table (default runs/ablation-<table>)")
    args = parser.parse_args()

    from cosegkit.engine.pretrain import ClipPretrainConfig, pretrain_synthetic_clip

    clip_path = str(pretrain_synthetic_clip(ClipPretrainConfig(num_classes=16, steps=args.clip_steps)))
    rows = {"modules": lambda: module_rows(args.variant), "readings": reading_rows, "grouping": grouping_rows}[
        args.table
    ]()
    default_out = f"runs/ablation-{args.table}" + (f"-{args.variant}" if args.table == "modules" else "")
    out = Path(args.out or default_out)
    jobs = {}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for label, settings in rows:
            for seed in range(args.seeds):
                folder = out / folder_name(label) / f"seed{seed}"
                jobs[(label, seed)] = pool.submit(
                    run_one, clip_path, args.steps, seed, args.eval_sets, settings, str(folder)
                )
        results = {key: job.result() for key, job in jobs.items()}
    wall = time.perf_counter() - start

    def stat(label: str, key: str) -> tuple[float, float]:
        values = [100 * results[(label, s)][key] for s in range(args.seeds) if key in results[(label, s)]]
        if not values:
            return math.nan, math.nan
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.mean(values), spread

    if args.table == "modules":
        header = "| ISFC | CLIP Inter. | CLIP Reg. | P (%) | J (%) |\n| :-: | :-: | :-: | --: | --: |"
    elif args.table == "grouping":
        header = (
            "| model | P (%) | J (%) | read-out J: score (%) | coverage (%) | CLIP class (%) |\n"
            "| --- | --: | --: | --: | --: | --: |"
        )
    else:
        header = "| model | P (%) | J (%) |\n| --- | --: | --: |"
    lines = [header]
    table = []
    for label, settings in rows:
        (p, dp), (j, dj) = stat(label, "P"), stat(label, "J")
        if args.table == "modules":
            flags = (settings["use_correspondence"], settings["use_interaction"], settings["use_regularization"])
            lines.append(
                f"| {' | '.join('x' if on else ' ' for on in flags)} | {p:.2f} ± {dp:.2f} | {j:.2f} ± {dj:.2f} |"
            )
        elif args.table == "grouping":
            cells = []
            for method in ("score", "coverage", "clip"):
                m, dm = stat(label, f"readout_{method}_J")
                cells.append("" if math.isnan(m) else f"{m:.2f} ± {dm:.2f}")
            lines.append(f"| {label} | {p:.2f} ± {dp:.2f} | {j:.2f} ± {dj:.2f} | {' | '.join(cells)} |")
        else:
            lines.append(f"| {label} | {p:.2f} ± {dp:.2f} | {j:.2f} ± {dj:.2f} |")
        per_seed = [{k: v for k, v in results[(label, s)].items() if k != "seconds"} for s in range(args.seeds)]
        table.append({"row": label, "settings": settings, "P": p, "P_std": dp, "J": j, "J_std": dj, "seeds": per_seed})
    what = {
        "modules": f"modules of the {args.variant!r} variant",
        "readings": "readings of the modules",
        "grouping": "the grouping layer",
    }[args.table]
    note = (
        f"\nSynthetic world (16 classes, 64 px, sets of 4), {what}, {args.steps} steps per run, "
        f"{args.seeds} seeds, {args.eval_sets} held-out sets of 4 per run, P/J preset 'ssnm'; mean ± standard "
        f"deviation over seeds. Wall time {wall / 60:.1f} min with {args.jobs} runs at once."
    )
    if args.table == "grouping":
        keys = ("groups_used", "full_coverage", "target_share", "target_purity", "oracle_J", "score_is_main")
        lines += [
            "",
            "Grouping diagnostics (cosegkit.diagnostics.grouping_diagnostics), means over seeds:",
            "",
            "| model | " + " | ".join(keys) + " |",
            "| --- | " + " | ".join("--:" for _ in keys) + " |",
        ]
        for label, settings in rows:
            if settings.get("use_grouping"):
                cells = []
                for key in keys:
                    values = [results[(label, s)][f"diag_{key}"] for s in range(args.seeds)]
                    cells.append(f"{statistics.mean(values):.2f}")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n" + note + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    payload = {"table": args.table, "rows": table, "steps": args.steps, "seeds": args.seeds}
    (out / "table.json").write_text(json.dumps(payload, indent=2))
    print(text)


if __name__ == "__main__":
    main()
