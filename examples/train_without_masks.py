"""Train LCCo on groups of images that have no masks: CLIP's zero-shot pseudo masks instead.

    python examples/train_without_masks.py              # the demo's budget: 600 steps, minutes on a CPU
    python examples/train_without_masks.py --images-per-group 8 --steps 3 --clip-steps 3 --eval-sets 4

1. The demo's synthetic world (16 classes, 2-3 objects per image, 64 px) written as a folder of
   images, one group per class, and *no masks*: ``<out>/data/images/<class>/*.png``.
2. The demo's small CLIP, pre-trained on the world's captions (cached, shared with the demo).
3. ``cosegkit train --pseudo-masks zero-shot`` with the demo's training config: before the
   first step the CLIP segments every image zero-shot (CLIP-ES: softmax-GradCAM and CAA, the
   class of a group decided from all its images); pixels between the thresholds are ignored.
4. P and J on the demo's held-out synthetic sets (true masks, never seen in training) for the
   zero-shot model itself and for LCCo trained on its pseudo masks; and how many groups the
   zero-shot model named right (the folder names are the true classes).

Prints the table and writes ``<out>/results.json``. The run folder is a normal one: run the
script again and an interrupted training continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from cosegkit.clip.frozen import FrozenClip
from cosegkit.engine.pretrain import SYNTHETIC_CLIP, SYNTHETIC_TEMPLATES, ClipPretrainConfig, pretrain_synthetic_clip
from cosegkit.data.synthetic import write_folder_dataset
from cosegkit.demo import ZERO_SHOT_SIZE, DemoBudget, demo_train_config
from cosegkit.engine import build_eval_sets, evaluate, find_checkpoints, train
from cosegkit.engine.pseudo import build_zero_shot
from cosegkit.models.lcco import LCCo

DATA_SEED = 1000  # the folder's images: other draws than the held-out sets (seed + 1) and the training sets


def write_images_only(world, root: Path, images_per_group: int) -> None:
    """The world as a folder of images, one group per class, without masks (reused if already there)."""
    images = root / "images"
    expected = {cls.name for cls in world.classes}
    if images.is_dir():
        groups = {p.name: len(list(p.glob("*.png"))) for p in images.iterdir() if p.is_dir()}
        if set(groups) == expected and set(groups.values()) == {images_per_group}:
            return
        shutil.rmtree(root)
    write_folder_dataset(world, root, images_per_group, seed=DATA_SEED)
    shutil.rmtree(root / "masks")  # what this example is about: no masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-group", type=int, default=100, help="images of each of the 16 groups")
    parser.add_argument("--steps", type=int, default=600, help="training steps (the demo's 600)")
    parser.add_argument(
        "--clip-steps", type=int, default=DemoBudget().clip_steps, help="CLIP pre-training steps (default: the demo's)"
    )
    parser.add_argument(
        "--augment", action="store_true", help="flip, scale-crop and colour jitter (the demo's synthetic sets have none)"
    )
    parser.add_argument(
        "--pseudo-rule", choices=("fixed", "adaptive"), default="adaptive", help="pseudo-label rule (default adaptive)"
    )
    parser.add_argument("--pseudo-margin", type=float, default=0.1, help="adaptive rule: ignored band half-width")
    parser.add_argument("--pseudo-low", type=float, default=0.25, help="background where the map is <= this")
    parser.add_argument("--pseudo-high", type=float, default=0.55, help="object where the map is >= this")
    parser.add_argument(
        "--class-targets",
        choices=("cached", "per-set"),
        default="cached",
        help="eq. 12's target: once per image (the default) or per set every step",
    )
    parser.add_argument("--eval-sets", type=int, default=60, help="held-out sets (the demo's 60)")
    parser.add_argument("--out", default="runs/without-masks", help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine_log = logging.getLogger("cosegkit.engine")  # the trainer's notes: each group's zero-shot class
    engine_log.addHandler(logging.StreamHandler())
    engine_log.setLevel(logging.INFO)
    engine_log.propagate = False  # open_clip's logging.info() gives the root logger a handler of its own
    wall = time.perf_counter()

    # 1-2: the demo's CLIP (cached) and the demo's world, as images without masks
    clip_config = ClipPretrainConfig(
        num_classes=16, world_seed=0, objects_per_image=(2, 3), image_size=64, steps=args.clip_steps
    )
    clip_path = pretrain_synthetic_clip(clip_config)
    demo = demo_train_config(clip_path, args.steps, eval_sets=args.eval_sets)
    world = demo.world()
    data = out / "data"
    write_images_only(world, data, args.images_per_group)
    print(f"{len(world.classes)} groups of {args.images_per_group} images, no masks: {data / 'images'}")

    # 3: the demo's training config on the folder, with zero-shot pseudo masks
    config = dataclasses.replace(
        demo,
        dataset="folder",
        root=str(data),
        pseudo_masks="zero-shot",
        augment=args.augment,
        class_targets=args.class_targets,
        pseudo_rule=args.pseudo_rule,
        pseudo_margin=args.pseudo_margin,
        pseudo_low=args.pseudo_low,
        pseudo_high=args.pseudo_high,
        extra={"zero_shot": {"image_size": ZERO_SHOT_SIZE}},  # the demo's zero-shot model
    )
    run = out / "lcco-pseudo"
    resume = bool(find_checkpoints(run / "checkpoints"))
    if resume:
        print(f"continuing the run in {run}")
    start = time.perf_counter()
    train(config, run, resume=resume, progress=not args.no_progress)
    train_seconds = time.perf_counter() - start

    # 4: both models on the demo's held-out sets
    held_out = build_eval_sets(demo, sets=args.eval_sets)
    names = world.class_names
    clip = FrozenClip.from_name(SYNTHETIC_CLIP, pretrained=str(clip_path), classnames=names, templates=SYNTHETIC_TEMPLATES)
    zero_shot = build_zero_shot(config, clip)  # the pseudo masks' own settings
    rows = {
        "Zero-shot": evaluate(zero_shot, held_out, preset=demo.eval_preset, group_names=names),
        "LCCo on pseudo masks": evaluate(
            LCCo.from_pretrained(run / "model"), held_out, preset=demo.eval_preset, group_names=names
        ),
    }
    (classes_file,) = (run / "pseudo_masks").glob("*/classes.json")
    classes = json.loads(classes_file.read_text())
    named = sum(c["class"] == group for group, c in classes.items())

    images = rows["LCCo on pseudo masks"].images
    print(f"\nheld-out synthetic sets: {images} images, P/J protocol {demo.eval_preset!r}")
    print(f"{'model':<22} {'P (%)':>7} {'J (%)':>7}")
    for name, ev in rows.items():
        print(f"{name:<22} {100 * ev.P:7.2f} {100 * ev.J:7.2f}")
    print(f"the zero-shot class of {named} of the {len(classes)} training groups is their true class")
    results = {
        **{name: ev.to_dict() for name, ev in rows.items()},
        "groups_named_right": named,
        "groups": len(classes),
        "images_per_group": args.images_per_group,
        "steps": args.steps,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
