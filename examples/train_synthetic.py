"""The steps of ``cosegkit demo`` as a short script: synthetic world, small CLIP, LCCo vs Baseline.

    python examples/train_synthetic.py                    # about 10 minutes on a 2-core CPU
    python examples/train_synthetic.py --steps 20 --clip-steps 20 --eval-sets 8   # a minute

1. A synthetic world where each set's common object hides among distractors.
2. A small CLIP, pre-trained contrastively on the world's captions (cached once).
3. LCCo (all three modules) and the single-image Baseline, the same budget each.
4. P and J on held-out sets.
"""

from __future__ import annotations

import argparse
import dataclasses

from cosegkit.engine.pretrain import SYNTHETIC_CLIP, SYNTHETIC_TEMPLATES, ClipPretrainConfig, pretrain_synthetic_clip
from cosegkit.engine import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument("--clip-steps", type=int, default=300, help="CLIP pre-training steps")
    parser.add_argument("--eval-sets", type=int, default=60, help="held-out sets")
    parser.add_argument("--out", default="runs/synthetic", help="run folders go here")
    args = parser.parse_args()

    # 1-2: the world and a CLIP that knows it (its vocabulary: the world's class names)
    clip_config = ClipPretrainConfig(num_classes=16, image_size=64, objects_per_image=(2, 3), steps=args.clip_steps)
    clip_weights = pretrain_synthetic_clip(clip_config)
    print(f"CLIP weights: {clip_weights} (prompts: {SYNTHETIC_TEMPLATES[0]!r} for each class)")

    # 3: LCCo, then the same config with the three modules off
    lcco = TrainConfig(
        dataset="synthetic",
        world_classes=16,
        world_objects=(2, 3),
        image_size=64,
        set_size=4,
        batch_size=4,
        encoder="resnet18",
        encoder_weights=None,  # no download; "imagenet" where the internet is reachable
        encoder_depth=3,
        decoder_channels=[64, 48, 32],
        clip_model=SYNTHETIC_CLIP,
        clip_pretrained=str(clip_weights),
        top_k=3,
        heads=4,
        steps=args.steps,
        lr=1e-3,
        warmup=max(1, args.steps // 20),
        checkpoint_every=max(1, args.steps // 4),
        extra={"eval_sets": args.eval_sets},
    )
    baseline = dataclasses.replace(lcco, use_correspondence=False, use_interaction=False, use_regularization=False)

    # 4: each run evaluates on held-out sets at its end
    rows = {}
    for name, config in (("Baseline", baseline), ("LCCo", lcco)):
        result = train(config, f"{args.out}/{name.lower()}")
        rows[name] = result.evaluation
    print(f"\n{'model':<10} {'P (%)':>7} {'J (%)':>7}   ({rows['LCCo'].images} held-out images)")
    for name, ev in rows.items():
        print(f"{name:<10} {100 * ev.P:7.2f} {100 * ev.J:7.2f}")


if __name__ == "__main__":
    main()
