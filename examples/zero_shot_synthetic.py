"""Zero-shot co-segmentation on the demo's synthetic world: what each setting does.

    python examples/zero_shot_synthetic.py                  # the demo's held-out sets
    python examples/zero_shot_synthetic.py --eval-seed 99   # other sets, to choose settings on
    python examples/zero_shot_synthetic.py --sizes 64 160 --clip-steps 3 --sets 4   # a quick check

Scores :class:`~cosegkit.zeroshot.ZeroShotCoseg` on the demo's small CLIP (cached, trained on
first use with the demo's settings) at several CLIP input sizes, with and without CAA, and
with the set's true class given instead of CLIP's choice, on held-out sets of the demo's
world (``build_eval_sets`` of the demo's config; ``--eval-seed`` draws other sets). Prints a
table of P, J and how often the set's class was named right.
"""

from __future__ import annotations

import argparse
import time

import torch

from cosegkit.clip.frozen import FrozenClip
from cosegkit.engine.pretrain import (
    SYNTHETIC_CLIP,
    SYNTHETIC_TEMPLATES,
    ClipPretrainConfig,
    pretrain_synthetic_clip,
    register_synthetic_clip,
)
from cosegkit.demo import DemoBudget, demo_train_config
from cosegkit.engine.config import build_eval_sets
from cosegkit.metrics import precision_jaccard, reduce_scores
from cosegkit.zeroshot import ZeroShotCoseg


def score(zs: ZeroShotCoseg, sets, names: list[str], oracle: bool) -> tuple[float, float, float]:
    """P, J (over images) and the fraction of sets whose class was named right."""
    p_all, j_all, named = [], [], 0
    for i in range(len(sets)):
        item = sets[i]
        target = int(item["group"])
        out = zs(item["images"][None], class_name=names[target] if oracle else None)
        named += int(out.common_class.item() == target)
        p, j = precision_jaccard(out.probs, item["masks"][None], preset="ssnm")
        p_all.append(p.flatten())
        j_all.append(j.flatten())
    return float(reduce_scores(torch.cat(p_all))), float(reduce_scores(torch.cat(j_all))), named / len(sets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-steps", type=int, default=DemoBudget().clip_steps, help="the CLIP's training steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160, 192], help="CLIP input sides")
    parser.add_argument("--sets", type=int, default=DemoBudget().eval_sets, help="held-out sets of 4 images")
    parser.add_argument("--eval-seed", type=int, default=None, help="draw other sets than the demo's held-out ones")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clip_config = ClipPretrainConfig(
        num_classes=16, world_seed=0, objects_per_image=(2, 3), image_size=64, steps=args.clip_steps
    )
    path = pretrain_synthetic_clip(clip_config)
    register_synthetic_clip()
    names = clip_config.world().class_names
    clip = FrozenClip.from_name(SYNTHETIC_CLIP, pretrained=str(path), classnames=names, templates=SYNTHETIC_TEMPLATES)
    config = demo_train_config(path, steps=1, eval_sets=args.sets)
    if args.eval_seed is not None:
        config.extra["eval_seed"] = args.eval_seed
    sets = build_eval_sets(config, sets=args.sets)
    which = "the demo's held-out sets" if args.eval_seed is None else f"sets of eval seed {args.eval_seed}"
    print(f"CLIP {path.name} ({args.clip_steps} steps); {len(sets)} sets of 4 images, {which}; preset ssnm")
    print(f"{'CLIP input':>10}  {'CAA':>3}  {'class':>9}  {'P (%)':>6}  {'J (%)':>6}  {'named':>6}  {'s':>5}")
    rows = [(size, True, False) for size in args.sizes]
    rows += [(size, False, False) for size in args.sizes] + [(size, True, True) for size in args.sizes]
    for size, caa, oracle in rows:
        start = time.perf_counter()
        zs = ZeroShotCoseg(clip, templates=SYNTHETIC_TEMPLATES, synonyms={}, image_size=size, refine=caa)
        p, j, named = score(zs, sets, names, oracle)
        print(
            f"{size:>8}px  {'yes' if caa else 'no':>3}  {'given' if oracle else 'CLIP':>9}  {100 * p:6.2f}  "
            f"{100 * j:6.2f}  {100 * named:5.0f}%  {time.perf_counter() - start:5.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
