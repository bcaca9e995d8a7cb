"""How often a cached eq. (12) target would equal the per-set one, on the demo's synthetic world.

    python benchmarks/eq12_target_agreement.py                   # 400 training sets, the demo's CLIP
    python benchmarks/eq12_target_agreement.py --sets 50 --clip-steps 20

Eq. (12)'s target is the set's class from CLIP's embeddings of its masked images (the argmax
of sigma summed over the set, :func:`cosegkit.losses.targets_from_embeddings`); training
computes it every step with a second CLIP pass. A cached reading computes it once per training
group (here: per target class, from sigma summed over all that class's sets). This prints how
often the per-group class equals the per-set class over the first ``--sets`` training sets of
the demo's config, and how often each names the set's true class.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=400, help="training sets to measure (default 400)")
    parser.add_argument("--clip-steps", type=int, default=600, help="CLIP pre-training steps (default 600, the demo's)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    import torch

    from cosegkit.clip import FrozenClip
    from cosegkit.clip.pretrain import ClipPretrainConfig, pretrain_synthetic_clip, register_synthetic_clip
    from cosegkit.demo import demo_train_config
    from cosegkit.engine.config import build_train_sets
    from cosegkit.layers import clip_similarity
    from cosegkit.losses import masked_images

    clip_path = str(pretrain_synthetic_clip(ClipPretrainConfig(num_classes=16, steps=args.clip_steps)))
    config = demo_train_config(clip_path, steps=600)
    register_synthetic_clip()
    classnames, templates = config.vocabulary()
    clip = FrozenClip.from_name(config.clip_model, pretrained=clip_path, classnames=classnames, templates=templates)
    sets = build_train_sets(config, length=args.sets)
    sigmas, truth = [], []
    with torch.no_grad():
        for i in range(args.sets):
            item = sets[i]
            emb = clip.encode_images(masked_images(item["images"][None], item["masks"][None]))
            sigmas.append(clip_similarity(emb, clip.text_bank)[0].sum(dim=0))  # (P,): summed over the set
            truth.append(int(item["group"]))
    per_set = torch.stack(sigmas).argmax(dim=1)
    truth_t = torch.tensor(truth)
    by_group: dict[int, torch.Tensor] = {}
    for g, sigma in zip(truth, sigmas, strict=True):
        by_group[g] = by_group.get(g, 0) + sigma
    per_group = torch.tensor([int(by_group[g].argmax()) for g in truth])
    numbers = {
        "sets": args.sets,
        "clip_steps": args.clip_steps,
        "per_group_equals_per_set": float((per_group == per_set).float().mean()),
        "per_set_is_true_class": float((per_set == truth_t).float().mean()),
        "per_group_is_true_class": float((per_group == truth_t).float().mean()),
    }
    print(f"{args.sets} training sets of the demo's config, its CLIP pre-trained {args.clip_steps} steps:")
    print(f"  per-group class == per-set class: {100 * numbers['per_group_equals_per_set']:.1f}%")
    print(f"  per-set class is the true class:  {100 * numbers['per_set_is_true_class']:.1f}%")
    print(f"  per-group class is the true class: {100 * numbers['per_group_is_true_class']:.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers, f, indent=2)


if __name__ == "__main__":
    main()
