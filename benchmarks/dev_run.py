"""One short run of a results-table world on a development seed, to choose a setting without the table's sets.

The world's budget and CLIP (:func:`cosegkit.demo.demo_train_config`), with ``--set`` overriding
TrainConfig fields, trained with seed ``--seed`` and scored on ``--eval-sets`` held-out sets drawn
with that seed too (the table uses seeds 0-2 and evaluation seed 1). Prints the IoU term of the
loss along training, the last steps' class accuracy (UFO's ``acc/class``) and the held-out P and J.

    python benchmarks/dev_run.py --world synthetic --steps 200 --set model=ufo ufo_dim=512 lr=3e-4 encoder_depth=5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def parse_setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=("synthetic", "pascal"), default="synthetic")
    parser.add_argument("--root", default=None, help="the PASCAL-VOC co-segmentation folder (world 'pascal')")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7, help="training and evaluation seed (default 7)")
    parser.add_argument("--eval-sets", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="TrainConfig overrides")
    parser.add_argument("--out", default="runs/dev")
    parser.add_argument("--quick", action="store_true", help="a CLIP of a few steps (a pipeline check)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from cosegkit.demo import demo_train_config, prepare_world_clip
    from cosegkit.engine import train

    path, _ = prepare_world_clip(args.world, root=args.root, quick=args.quick, eval_sets=2 if args.quick else 60)
    config = demo_train_config(str(path), args.steps, args.seed, args.eval_sets, world=args.world, root=args.root)
    settings = dict(parse_setting(s) for s in args.set)
    config = dataclasses.replace(config, **settings, checkpoint_every=10**6, log_every=10)
    config.extra["eval_seed"] = args.seed
    tag = "-".join(f"{k}={v}" for k, v in settings.items()) or "default"
    run = Path(args.out) / args.world / tag
    start = time.perf_counter()
    result = train(config, run, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iou = [round(line["iou"], 3) for line in lines[:: max(1, len(lines) // 6)]]
    acc = [line[k] for line in lines[-5:] for k in ("acc/class", "acc/istar") if k in line]
    print(
        f"{args.world} {tag}: iou loss {iou}, class accuracy (last 5 logs) "
        f"{sum(acc) / len(acc) if acc else float('nan'):.2f}, held-out P {100 * result.evaluation.P:.2f} "
        f"J {100 * result.evaluation.J:.2f}, {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
