"""Train LCCo with eq. (12)'s target per set and cached, on the demo's world written as a folder.

    python examples/class_targets.py --threads 1                 # 3 seeds x 2 readings, 600 steps each
    python examples/class_targets.py --seeds 0 --steps 3 --images-per-group 6 --clip-steps 3 --eval-sets 2

The demo's world (16 classes, 64 px) written as a folder of ``--images-per-group`` images per
class with their masks, so that images recur as in any dataset; the demo's LCCo training
config with the trainer's augmentation on, once with ``class_targets="per-set"`` (the masked,
augmented images through CLIP at every step) and once with ``"cached"`` (each image's masked,
un-augmented view embedded once, :mod:`cosegkit.engine.class_targets`). Each run is scored on
held-out synthetic sets drawn with its seed (``eval_seed = seed + 1``, the same sets for both
readings). Prints P and J (mean and spread over the seeds), J per seed and the training time,
and writes ``<out>/results.json``. Finished runs are reused and interrupted ones continue.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from cosegkit.engine.pretrain import ClipPretrainConfig, pretrain_synthetic_clip
from cosegkit.data.synthetic import write_folder_dataset
from cosegkit.demo import demo_train_config
from cosegkit.engine import build_eval_sets, evaluate, find_checkpoints, train
from cosegkit.models.lcco import LCCo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--readings", nargs="+", default=["per-set", "cached"], choices=("per-set", "cached"))
    parser.add_argument("--steps", type=int, default=600, help="training steps (the demo's 600)")
    parser.add_argument("--clip-steps", type=int, default=600, help="CLIP pre-training steps (the demo's 600)")
    parser.add_argument("--images-per-group", type=int, default=100, help="images written per class (default 100)")
    parser.add_argument("--eval-sets", type=int, default=60, help="held-out sets per seed (the demo's 60)")
    parser.add_argument("--threads", type=int, help="torch threads (the documented runs: 1)")
    parser.add_argument("--out", default="runs/class-targets", help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    clip_path = str(pretrain_synthetic_clip(ClipPretrainConfig(num_classes=16, steps=args.clip_steps)))
    data = out / "data"
    if not (data / "images").is_dir():
        write_folder_dataset(demo_train_config(clip_path, args.steps).world(), data, args.images_per_group)
    results = []
    for seed in args.seeds:
        base = demo_train_config(clip_path, steps=args.steps, seed=seed, eval_sets=args.eval_sets)
        held_out = build_eval_sets(base, sets=args.eval_sets)
        for reading in args.readings:
            config = dataclasses.replace(
                base, dataset="folder", root=str(data), class_targets=reading, augment=True, extra={}
            )
            run = out / f"{reading}-seed{seed}"
            done = run / "model" / "config.json"
            tic = time.perf_counter()
            if not done.is_file():
                train(config, run, resume=bool(find_checkpoints(run / "checkpoints")), progress=not args.no_progress)
            seconds = time.perf_counter() - tic
            score = evaluate(LCCo.from_pretrained(run / "model"), held_out, preset=base.eval_preset)
            results.append({"reading": reading, "seed": seed, "P": score.P, "J": score.J, "train_s": seconds})
            print(f"{reading:<8} seed {seed}: P {100 * score.P:.2f}  J {100 * score.J:.2f}  ({seconds:.0f} s)")

    print("\n| target | P (%) | J (%) | J per seed | training s |")
    print("| --- | --: | --: | --- | --- |")
    for reading in args.readings:
        rows = [r for r in results if r["reading"] == reading]

        def spread(values: list[float]) -> str:
            mean = statistics.mean(values)
            return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"

        p, j = [100 * r["P"] for r in rows], [100 * r["J"] for r in rows]
        per_seed = ", ".join(f"{v:.2f}" for v in j)
        seconds = ", ".join(str(round(r["train_s"])) for r in rows)
        print(f"| {reading} | {spread(p)} | {spread(j)} | {per_seed} | {seconds} |")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
