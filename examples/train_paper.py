"""The paper's protocol: train on PASCAL-VOC or COCO groups, test on MSRC, Internet, iCoseg, PASCAL.

ResNet-50 (ImageNet weights) and CLIP ViT-B/16 (OpenAI weights), image sets of 5 at 224 px,
P and J under the SSNM protocol. ``examples/README.md`` gives the exact commands, where to get
the datasets, and the paper's Table 1 numbers to compare with.

    python examples/train_paper.py --train voc_segmentation=data/VOCdevkit/VOC2012 \\
        --test msrc=data/MSRC icoseg=data/icoseg internet=data/internet pascal_voc=data/pascal_voc_coseg \\
        --out runs/paper-pascal

    python examples/train_paper.py --smoke     # random weights, a tiny budget, ../shared/data: a few minutes

``--smoke`` checks the whole path offline: it trains the paper's architecture with random
weights for a few steps on the PASCAL-VOC folder found at ``../shared/data/pascal_voc_coseg``
(or ``--train``) and evaluates on whichever ``--test`` folders exist; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cosegkit.engine import TrainConfig, evaluate, train

PAPER_TABLE_1 = {  # LCCo's own rows of Table 1: (P, J) in %, by training data
    "voc_segmentation": {
        "msrc": (97.0, 88.4),
        "internet": (95.4, 82.1),
        "icoseg": (97.8, 91.7),
        "pascal_voc": (96.1, 75.9),
    },
    "coco": {"msrc": (97.9, 89.8), "internet": (97.6, 87.5), "icoseg": (98.3, 92.9), "pascal_voc": (97.1, 76.4)},
}
SHARED_PASCAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pascal_voc_coseg"


def parse_pair(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. msrc=data/MSRC), got {spec!r}")
    return name, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--train",
        type=parse_pair,
        help="voc_segmentation=VOC2012_FOLDER (the paper's PASCAL training fold) or coco=INSTANCES_JSON; "
        "any reader=PATH works, e.g. pascal_voc=PATH for the co-segmentation set itself (its test images)",
    )
    parser.add_argument("--coco-images", help="with --train coco=...: the image folder")
    parser.add_argument("--test", type=parse_pair, nargs="*", default=[], help="NAME=PATH test datasets")
    parser.add_argument("--steps", type=int, default=40000, help="optimizer steps (default 40000)")
    parser.add_argument("--batch-size", type=int, default=8, help="sets per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument(
        "--amp", nargs="?", const="bf16", choices=("bf16", "fp16"), help="mixed precision on a CUDA GPU (default bf16)"
    )
    parser.add_argument("--smoke", action="store_true", help="random weights and a tiny budget, offline")
    args = parser.parse_args()

    if args.train is None:
        if not args.smoke:
            parser.error("--train NAME=PATH is required (or --smoke)")
        args.train = ("pascal_voc", str(SHARED_PASCAL))
        args.test = args.test or [("pascal_voc", str(SHARED_PASCAL))]
    dataset, root = args.train
    config = TrainConfig(
        dataset=dataset,
        root=root,
        coco_images=args.coco_images,
        image_size=224,
        set_size=5,
        batch_size=args.batch_size,
        encoder="resnet50",
        encoder_weights="imagenet",
        clip_model="ViT-B-16",
        clip_pretrained="openai",
        top_k=5,
        steps=args.steps,
        lr=args.lr,
        warmup=1000,
        checkpoint_every=1000,
        amp=args.amp,
    )
    if args.smoke:
        config.encoder_weights = config.clip_pretrained = None
        config.steps, config.batch_size, config.image_size, config.warmup, config.checkpoint_every = 2, 1, 96, 0, 2
        config.log_every = 1
    run = Path(args.out)
    resume = (run / "checkpoints").is_dir()
    train(None if resume else config, run, resume=resume, progress=True)

    from cosegkit.data.readers import get_reader
    from cosegkit.data.sampling import EvalSets

    model = _load(run)
    paper = PAPER_TABLE_1.get(dataset, {})
    rows = {}
    header = (
        f"paper P / J (trained on {dataset})"
        if paper
        else f"(the paper trains on voc_segmentation or coco, not {dataset})"
    )
    print(f"\n{'test set':<12} {'images':>6} {'P (%)':>7} {'J (%)':>7}   {header}")
    for name, path in args.test:
        if not Path(path).exists():
            print(f"{name:<12} skipped: {path} does not exist")
            continue
        groups = get_reader(name)(path)
        if args.smoke:
            groups = groups[:2]  # two groups are enough to check the path
        sets = EvalSets(groups, 5, 224 if not args.smoke else config.image_size)
        ev = evaluate(model, sets, preset="ssnm", group_names=[g.name for g in groups])
        rows[name] = ev.to_dict()
        reference = "{:.1f} / {:.1f}".format(*paper[name]) if name in paper else ""
        print(f"{name:<12} {ev.images:>6} {100 * ev.P:7.2f} {100 * ev.J:7.2f}   {reference}")
    (run / "test.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.smoke:
        print("(--smoke: random weights and two steps; these numbers measure nothing)")


def _load(run: Path):
    from cosegkit import LCCo

    return LCCo.from_pretrained(run / "model")


if __name__ == "__main__":
    main()
