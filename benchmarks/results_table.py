"""One results table on both worlds: every model, the same budget per world, several seeds.

Rows (``ROWS``; adding a model is one entry): the single-image Baseline, LCCo (cosegkit's
default readings), LCCo-paper (eq. 2, 5, 7, 8 as printed), zero-shot (the frozen CLIP alone,
CLIP-ES), LCCo trained on zero-shot pseudo masks of its own CLIP (no ground truth), and a
ceiling, the class oracle: LCCo told each set's true class (the regularization's class forced to
the truth), trained the same way; the peer UFO (:class:`cosegkit.UFO`) on the same encoder
and budget, at a width whose training step costs LCCo's and at UFO's own widths.

Worlds (``cosegkit.demo.DEMO_WORLDS``): ``synthetic``, the demo's coloured shapes, and
``pascal``, the composite world of real PASCAL-VOC object cut-outs split by photo
(``--root``); on ``pascal`` every model is also scored on the held-out real photos themselves,
as sets of one class. Each world pre-trains its small CLIP once (cached) and trains every row
with that world's budget (:func:`cosegkit.demo.demo_train_config`).

Everything runs with one torch thread (the CLIPs' pre-training too), so the numbers do not
depend on the machine's core count. Every (world, row, seed) is a run folder under ``--out``; a
finished one keeps its scores in ``scores.json`` and is not run again, an interrupted one
continues from its last checkpoint. ``<out>/<world>/budget.json`` records the budget the runs
were started with, and another budget in the same ``--out`` is refused.
Runs go ``--jobs`` at a time (one per core by default). All seeds of a world are scored on the
same held-out sets, so the spread over seeds measures training, not which sets were drawn.

    python benchmarks/results_table.py --root ../shared/data/pascal_voc_coseg           # both worlds, 3 seeds
    python benchmarks/results_table.py --worlds pascal --rows Baseline LCCo --seeds 1 --root ...
    python benchmarks/results_table.py --quick --root ...                                # a pipeline check
    python benchmarks/results_table.py --worlds synthetic --rows Baseline LCCo --steps 400 --lr 2e-3 --out runs/t400

``--steps`` and ``--lr`` change the budget of every trained row (the warm-up stays ``steps // 20``;
a row's own learning rate, UFO-512's, is kept).

Prints the table and writes ``<out>/table.md``, ``<out>/table.json`` and, for the real photos,
``<out>/figure-pascal.png`` (image / truth / Baseline / LCCo / zero-shot on held-out photo sets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_OFF = {"use_correspondence": False, "use_interaction": False, "use_regularization": False}


@dataclasses.dataclass(frozen=True)
class Row:
    """A model of the table: TrainConfig settings over the world's LCCo config, or the zero-shot model."""

    settings: dict = dataclasses.field(default_factory=dict)
    zero_shot: bool = False
    what: str = ""
    clip_seed: bool = False  # zero-shot on the CLIP pre-trained with the run's seed (one run per seed)
    segclip: dict | None = None  # SegCLIP zero-shot: SegClipCoseg settings over the world's SegCLIP of the seed


ROWS: dict[str, Row] = {
    "Baseline": Row(_OFF, what="single image: all three modules off"),
    "LCCo": Row({}, what="all three modules, cosegkit's default readings"),
    "LCCo-paper": Row({"variant": "paper"}, what="all three modules, eq. 2, 5, 7 and 8 as printed"),
    "Zero-shot": Row(zero_shot=True, what="the frozen CLIP alone (CLIP-ES), no training, no masks"),
    "Zero-shot, CLIP per seed": Row(
        zero_shot=True,
        clip_seed=True,
        what="CLIP-ES on a CLIP pre-trained with each seed (seed 0 is the Zero-shot row's): the spread of the "
        "SegCLIP rows' pre-training, at the same budget",
    ),
    "SegCLIP zero-shot": Row(
        segclip={},
        what="SegCLIP pre-trained with each seed from the same captions, steps and batch as the CLIP (contrastive, "
        "superpixel and reconstruction losses; no masks), each image's groups read by the set's class",
    ),
    "SegCLIP zero-shot, shared centres": Row(
        segclip={"grouping": "set"},
        what="the same SegCLIP models, one grouping over all images of a set",
    ),
    "LCCo, pseudo masks": Row(
        {"pseudo_masks": "zero-shot", "pseudo_pool": 400},
        what="LCCo trained on the zero-shot row's masks of 400 generated sets (its own CLIP, no ground truth)",
    ),
    "Class oracle": Row({"class_oracle": True}, what="ceiling: LCCo told each set's true class"),
    "UFO": Row(
        {"model": "ufo", "encoder_depth": 5, "ufo_dim": 128},
        what="the peer UFO (group transformer, intra-MLP, class head, its own loss) at width 128, where a "
        "training step costs LCCo's, on the same encoder read at strides 4-32",
    ),
    "UFO-512": Row(
        {"model": "ufo", "encoder_depth": 5, "ufo_dim": 512, "lr": 3e-4},
        what="UFO at its own widths (512), at the learning rate that trained it best on a dev seed (3e-4)",
    ),
}

#: the evaluation seed shared by every seed's run of a world (the demo's held-out sets)
EVAL_SEED = 1


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def _scores(ev) -> dict:
    return {"P": ev.P, "J": ev.J, "images": ev.images}


def check_budget(folder: Path, budget: dict) -> None:
    """Refuse ``budget`` if ``folder/budget.json`` records another one.

    The runs in ``folder`` are reused (finished) or resumed with their own config (interrupted),
    so a different budget there would be reported over numbers trained at the old one.
    """
    recorded = folder / "budget.json"
    if recorded.is_file() and (old := json.loads(recorded.read_text())) != budget:
        raise ValueError(f"{folder} holds runs at the budget {old}, not {budget}: pass another --out for this budget")


def record_budget(folder: Path, budget: dict) -> None:
    """Write ``budget`` to ``folder/budget.json`` (what :func:`check_budget` compares with)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "budget.json").write_text(json.dumps(budget, indent=2))


def run_one(world: str, root: str | None, label: str, seed: int, budget: dict, clip_path: str, out: str) -> dict:
    """Train (or resume) one row of one world for one seed, or score the zero-shot model; its scores."""
    import torch

    torch.set_num_threads(1)
    from cosegkit.demo import demo_train_config, demo_zero_shot, demo_zero_shot_settings
    from cosegkit.engine import evaluate, find_checkpoints, train
    from cosegkit.engine.config import build_eval_sets, build_photo_eval_sets

    folder = Path(out)
    done = folder / "scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    row = ROWS[label]
    config = demo_train_config(
        clip_path, budget["steps"], seed, budget["eval_sets"], world=world, root=root, lr=budget["lr"]
    )
    config = dataclasses.replace(config, **row.settings)
    config.extra["eval_seed"] = EVAL_SEED
    if config.pseudo_masks:  # labelled exactly as the zero-shot row segments; no more sets than training draws
        config.extra["zero_shot"] = demo_zero_shot_settings(world)
        config = dataclasses.replace(config, pseudo_pool=min(config.pseudo_pool, config.steps * config.batch_size))
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if row.segclip is not None:
        scores = _segclip_scores(world, root, row, seed, budget, config)
    elif row.zero_shot:
        from cosegkit.demo import demo_clip, prepare_world_clip

        if row.clip_seed:
            clip_path = str(prepare_world_clip(world, root=root, clip_steps=budget["clip_steps"], seed=seed)[0])
        clip = demo_clip(world, clip_path, root=root)
        model = demo_zero_shot(clip, world=world)
        scores = {"sets": _scores(evaluate(model, build_eval_sets(config), batch_size=4))}
        if config.dataset == "composite":
            scores["photos"] = _scores(evaluate(model, build_photo_eval_sets(config), batch_size=1))
    else:
        resume = bool(find_checkpoints(folder / "checkpoints"))
        result = train(None if resume else config, folder, resume=resume, progress=False)
        scores = {"sets": _scores(result.evaluation)}
        if getattr(result, "photo_evaluation", None) is not None:
            scores["photos"] = _scores(result.photo_evaluation)
    scores["seconds"] = round(time.perf_counter() - start, 1)
    done.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def _segclip_scores(world: str, root: str | None, row: Row, seed: int, budget: dict, config) -> dict:
    """SegCLIP zero-shot: pre-train (or load) the world's SegCLIP of ``seed``; P, J and group diagnostics."""
    from cosegkit.demo import demo_segclip_zero_shot, prepare_world_segclip
    from cosegkit.diagnostics import segclip_group_diagnostics
    from cosegkit.engine import evaluate
    from cosegkit.engine.config import build_eval_sets, build_photo_eval_sets
    from cosegkit.models import SegClip

    folder, accuracy = prepare_world_segclip(world, root=root, steps=budget["clip_steps"], seed=seed)
    zs = demo_segclip_zero_shot(SegClip.from_pretrained(folder), world, root=root, **row.segclip)
    sets = build_eval_sets(config)
    names = (config.held_out_world() if config.dataset == "composite" else config.world()).class_names
    scores = {
        "sets": _scores(evaluate(zs, sets, batch_size=4)),
        "groups": segclip_group_diagnostics(zs, sets, class_names=names),
        "segclip": {"folder": str(folder), **accuracy},
    }
    if config.dataset == "composite":
        photos = build_photo_eval_sets(config)
        scores["photos"] = _scores(evaluate(zs, photos, batch_size=1))
        scores["photo_groups"] = segclip_group_diagnostics(zs, photos, class_names=[g.name for g in photos.groups])
    return scores


def _stat(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _plain(values: list[float]) -> str:
    m, s = _stat(values)
    return "" if math.isnan(m) else f"{m:.3f} ± {s:.3f}"


def _cell(values: list[float]) -> str:
    m, s = _stat([100 * v for v in values])
    return "" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", choices=("synthetic", "pascal"), default=["synthetic", "pascal"])
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=list(ROWS),
        default=list(ROWS),
        metavar="ROW",
        help=f"rows to run (default all: {', '.join(ROWS)})",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per trained row (default 3)")
    parser.add_argument("--root", default=None, help="the PASCAL-VOC co-segmentation folder (world 'pascal')")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once")
    parser.add_argument("--quick", action="store_true", help="a tiny budget that checks the pipeline")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the world's budget)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the trained rows (default 1e-3)")
    parser.add_argument("--out", default="runs/results-table", help="run folders and the table")
    args = parser.parse_args()
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr:g}")

    import torch

    torch.set_num_threads(1)  # the CLIPs pre-train with one thread, as every run trains
    from cosegkit.demo import DEMO_WORLDS, prepare_world_clip

    if "pascal" in args.worlds and not args.root:
        parser.error("world 'pascal' needs the PASCAL-VOC co-segmentation folder: pass --root PATH")
    out = Path(args.out)
    results: dict = {}
    clips: dict = {}
    budgets = {}
    for world in args.worlds:  # every world's budget is checked before any work starts
        budget = dataclasses.asdict(DEMO_WORLDS[world].quick if args.quick else DEMO_WORLDS[world].budget)
        budget["lr"] = args.lr
        if args.steps is not None:
            budget["steps"] = args.steps
        try:
            check_budget(out / world, budget)
        except ValueError as error:
            parser.error(str(error))
        budgets[world] = budget
    for world, budget in budgets.items():
        record_budget(out / world, budget)
    start = time.perf_counter()
    for world in args.worlds:
        budget = budgets[world]
        print(f"[{world}] pre-training (or loading) the CLIP: {budget['clip_steps']} steps", flush=True)
        path, accuracy = prepare_world_clip(world, root=args.root, clip_steps=budget["clip_steps"], quick=args.quick)
        clips[world] = {"weights": str(path), **accuracy}
        print(f"[{world}] CLIP: {json.dumps(accuracy)}", flush=True)
        jobs = {}
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for label in args.rows:
                seeds = [0] if ROWS[label].zero_shot and not ROWS[label].clip_seed else range(args.seeds)
                for seed in seeds:
                    folder = out / world / slug(label) / f"seed{seed}"
                    jobs[(label, seed)] = pool.submit(
                        run_one, world, args.root, label, seed, budget, str(path), str(folder)
                    )
            for (label, seed), job in jobs.items():
                results[(world, label, seed)] = job.result()
                print(f"[{world}] {label} seed {seed}: {json.dumps(results[(world, label, seed)])}", flush=True)
        results[(world, "budget")] = budget
    wall = time.perf_counter() - start

    lines, table = [], []
    for world in args.worlds:
        photos = any(
            "photos" in v for k, v in results.items() if k[0] == world and isinstance(v, dict) and k[1] != "budget"
        )
        head = "| model | P (%) | J (%) |" + (" P photos (%) | J photos (%) |" if photos else "")
        lines += [f"**{world}**", "", head, "| --- | --: | --: |" + (" --: | --: |" if photos else "")]
        for label in args.rows:
            runs = [v for k, v in results.items() if k[0] == world and k[1] == label]
            cells = [_cell([r["sets"]["P"] for r in runs]), _cell([r["sets"]["J"] for r in runs])]
            if photos:
                cells += [
                    _cell([r["photos"]["P"] for r in runs if "photos" in r]),
                    _cell([r["photos"]["J"] for r in runs if "photos" in r]),
                ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            table.append({"world": world, "row": label, "settings": ROWS[label].settings, "runs": runs})
        b, c = results[(world, "budget")], clips[world]
        lines += [
            "",
            f"{world}: {b['steps']} training steps per run at learning rate {b['lr']:g}, {b['eval_sets']} held-out "
            f"sets; the CLIP ({b['clip_steps']} steps) names the common class of {100 * c['set_top1']:.0f}% of "
            f"held-out sets (chance {100 * c['chance']:.0f}%), an image's top class is one it holds "
            f"{100 * c['image_top1']:.0f}% of the time (chance {100 * c['image_chance']:.0f}%).",
            "",
        ]
    groups = [(w, label) for w in args.worlds for label in args.rows if ROWS[label].segclip is not None]
    if groups:
        keys = (
            "groups_used",
            "target_share",
            "target_purity",
            "oracle_J",
            "picked_is_main",
            "class_top1",
            "own_J",
            "told_J",
        )
        lines += [
            "SegCLIP's groups on the held-out sets (per image; mean ± sd over seeds):",
            "",
            "| world | row | " + " | ".join(keys) + " |",
            "| --- | --- |" + " --: |" * len(keys),
        ]
        for w, label in groups:
            runs = [v for k, v in results.items() if k[0] == w and k[1] == label]
            for part, tag in (("groups", ""), ("photo_groups", " (photos)")):
                have = [r[part] for r in runs if part in r]
                if have:
                    cells = [_plain([g[k] for g in have if k in g]) for k in keys]
                    lines.append(f"| {w}{tag} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        f"Mean ± standard deviation over seeds (zero-shot: one deterministic run). "
        f"Wall time {wall / 60:.1f} min with {args.jobs} runs at once."
    )
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps({"rows": table, "clips": clips, "seeds": args.seeds}, indent=2))
    print(text)
    if "pascal" in args.worlds and {"Baseline", "LCCo", "Zero-shot"} <= set(args.rows):
        from cosegkit.demo import demo_clip, demo_zero_shot, photo_figure

        zero_shot = demo_zero_shot(demo_clip("pascal", clips["pascal"]["weights"], root=args.root), world="pascal")
        photo_figure(
            {name: out / "pascal" / slug(name) / "seed0" for name in ("Baseline", "LCCo")},
            out / "figure-pascal.png",
            zero_shot=zero_shot,
        )
        print(f"figure: {out / 'figure-pascal.png'}")


if __name__ == "__main__":
    main()
