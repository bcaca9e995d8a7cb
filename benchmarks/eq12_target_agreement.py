"""How often each reading of eq. (12)'s target equals the per-set one, on the demo's synthetic world.

    python benchmarks/eq12_target_agreement.py                   # 400 training sets, the demo's CLIP
    python benchmarks/eq12_target_agreement.py --sets 50 --clip-steps 20 --images-per-group 12

Eq. (12)'s target is the set's class from CLIP's embeddings of its masked images (the argmax
of sigma summed over the set, :func:`cosegkit.losses.targets_from_embeddings`). Computed per
set it costs a second CLIP pass every step. The demo's world (16 classes, 64 px, sets of 4,
its CLIP pre-trained ``--clip-steps`` steps) is written as a folder dataset of
``--images-per-group`` images per class, so that images recur as in any dataset, and the
trainer's :class:`~cosegkit.data.TrainSets` draws ``--sets`` training sets from it. Printed:

- ``cached``: the reading :class:`~cosegkit.engine.class_targets.ClassTargetCache` computes
  (each image's masked embedding once, from the un-augmented image), against the per-set target
  on the same sets, without augmentation and with the trainer's augmentation;
- ``per-group``: one class per group, from sigma summed over all the group's un-augmented images;
- with augmentation, the per-set target itself recomputed on another draw of the augmentation of
  the same images, and the most frequent per-set class over ``--draws`` draws: how often any
  class fixed per set (as a cache must be) can equal a per-set target that changes with the
  draw;
- for each, how often it names the set's true class;
- with ``--passless``, readings that need no CLIP pass beyond the one of the images, on the
  sets without augmentation: the images' own class (sigma of the unmasked images), dense CLIP
  patch tokens pooled over the mask, and a class token that attends only to the patches the
  mask touches in the last ``k`` blocks of the ViT (the blocks before are the images' own pass).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=400, help="training sets to measure (default 400)")
    parser.add_argument("--clip-steps", type=int, default=600, help="CLIP pre-training steps (default 600, the demo's)")
    parser.add_argument("--images-per-group", type=int, default=100, help="images written per class (default 100)")
    parser.add_argument("--draws", type=int, default=8, help="augmentation draws per set for the ceiling (default 8)")
    parser.add_argument("--data", help="write (or reuse) the folder dataset here (default: a temporary folder)")
    parser.add_argument("--passless", action="store_true", help="also the readings without a second pass")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    import torch

    from cosegkit.clip import FrozenClip
    from cosegkit.engine.pretrain import ClipPretrainConfig, pretrain_synthetic_clip, register_synthetic_clip
    from cosegkit.data import TrainSets
    from cosegkit.data.readers import get_reader
    from cosegkit.data.sampling import Augmentation, _item_seed
    from cosegkit.data.synthetic import write_folder_dataset
    from cosegkit.demo import demo_train_config
    from cosegkit.engine.class_targets import ClassTargetCache
    from cosegkit.layers import clip_similarity
    from cosegkit.losses import masked_images

    clip_path = str(pretrain_synthetic_clip(ClipPretrainConfig(num_classes=16, steps=args.clip_steps)))
    config = demo_train_config(clip_path, steps=600)
    register_synthetic_clip()
    classnames, templates = config.vocabulary()
    clip = FrozenClip.from_name(config.clip_model, pretrained=clip_path, classnames=classnames, templates=templates)
    text = clip.text_bank
    world = config.world()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data or tmp)
        if not (root / "images").is_dir():
            write_folder_dataset(world, root, args.images_per_group, seed=config.seed)
        groups = get_reader("folder")(root)
        truth_of_group = [world.class_names.index(g.name) for g in groups]

        def sigma(images, masks):  # (N, 3, S, S), (N, 1, S, S) -> (P,): summed over the set
            emb = clip.encode_images(masked_images(images[None], masks[None]))
            return clip_similarity(emb, text)[0].sum(dim=0)

        numbers = {"sets": args.sets, "clip_steps": args.clip_steps, "images_per_group": args.images_per_group}
        rows = []
        plain = TrainSets(groups, config.set_size, config.image_size, length=args.sets, augment=None, seed=config.seed)
        cache = ClassTargetCache(clip, plain)
        group_sigma = {}
        for gi in range(len(groups)):  # per group: sigma summed over all its un-augmented images
            pairs = [plain.unaugmented(gi, i) for i in range(len(groups[gi]))]
            total = 0
            for start in range(0, len(pairs), 32):
                chunk = pairs[start : start + 32]
                total = total + sigma(torch.stack([p[0] for p in chunk]), torch.stack([p[1] for p in chunk]))
            group_sigma[gi] = total
        for name, augment in (("no augmentation", None), ("trainer's augmentation", Augmentation())):
            sets = TrainSets(groups, config.set_size, config.image_size, length=args.sets, augment=augment,
                             seed=config.seed)  # fmt: skip
            per_set, cached, per_group, again, mode, mode_share, truth = [], [], [], [], [], [], []
            with torch.no_grad():
                for i in range(args.sets):
                    item = sets[i]
                    gi = int(item["group"])
                    per_set.append(int(sigma(item["images"], item["masks"]).argmax()))
                    cached.append(int(cache.targets(item["group"][None], item["indices"][None],
                                                    item["valid"][None])[0]))  # fmt: skip
                    per_group.append(int(group_sigma[gi].argmax()))
                    truth.append(truth_of_group[gi])
                    if augment is None:
                        continue
                    chosen = [int(k) for k, ok in zip(item["indices"], item["valid"], strict=True) if ok]
                    raw = [sets.loader(groups[gi], k) for k in chosen]
                    draws = []
                    for d in range(args.draws):
                        g = torch.Generator().manual_seed(_item_seed(config.seed + 1 + d, 0, i))
                        views = [augment(image, mask, config.image_size, g) for image, mask in raw]
                        draws.append(int(sigma(torch.stack([v[0] for v in views]),
                                               torch.stack([v[1] for v in views])).argmax()))  # fmt: skip
                    again.append(draws[0])
                    counts = torch.bincount(torch.tensor(draws), minlength=len(classnames))
                    mode.append(int(counts.argmax()))
                    mode_share.append(float(counts.max()) / args.draws)
            t = {k: torch.tensor(v) for k, v in dict(per_set=per_set, cached=cached, per_group=per_group,
                                                     truth=truth).items()}  # fmt: skip

            def rate(a, b):
                return float((a == b).float().mean())

            entry = {
                "cached_equals_per_set": rate(t["cached"], t["per_set"]),
                "per_group_equals_per_set": rate(t["per_group"], t["per_set"]),
                "per_set_is_true_class": rate(t["per_set"], t["truth"]),
                "cached_is_true_class": rate(t["cached"], t["truth"]),
                "per_group_is_true_class": rate(t["per_group"], t["truth"]),
            }
            if augment is None and args.passless:
                entry.update(passless_agreement(clip, sets, args.sets, t["per_set"], t["truth"]))
            if augment is not None:
                entry["per_set_again_equals_per_set"] = rate(torch.tensor(again), t["per_set"])
                entry["most_frequent_equals_per_set"] = rate(torch.tensor(mode), t["per_set"])
                entry["most_frequent_share"] = sum(mode_share) / len(mode_share)
            numbers["no_augmentation" if augment is None else "augmentation"] = entry
            rows.append((name, entry))

    print(
        f"{args.sets} training sets of the demo's world ({len(groups)} classes x {args.images_per_group} images, "
        f"sets of {config.set_size}), its CLIP pre-trained {args.clip_steps} steps\n"
    )
    print("| training sets | reading | equals the per-set target | names the true class |")
    print("| --- | --- | --: | --: |")
    for name, e in rows:
        print(f"| {name} | per set (the reference) | 100.0% | {100 * e['per_set_is_true_class']:.1f}% |")
        print(f"| {name} | cached: per image, un-augmented | {100 * e['cached_equals_per_set']:.1f}% "
              f"| {100 * e['cached_is_true_class']:.1f}% |")  # fmt: skip
        print(f"| {name} | per group | {100 * e['per_group_equals_per_set']:.1f}% "
              f"| {100 * e['per_group_is_true_class']:.1f}% |")  # fmt: skip
        for key, label in PASSLESS_LABELS.items():
            if f"{key}_equals_per_set" in e:
                print(f"| {name} | {label} | {100 * e[f'{key}_equals_per_set']:.1f}% "
                      f"| {100 * e[f'{key}_is_true_class']:.1f}% |")  # fmt: skip
        if "per_set_again_equals_per_set" in e:
            print(f"| {name} | per set, another augmentation draw | {100 * e['per_set_again_equals_per_set']:.1f}% | |")
            print(f"| {name} | most frequent per-set class of {args.draws} draws | "
                  f"{100 * e['most_frequent_equals_per_set']:.1f}% | |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")


PASSLESS_LABELS = {
    "unmasked": "no pass: the unmasked images' class",
    "pooled_tokens": "no pass: dense tokens pooled over the mask",
    "masked_cls_1": "no pass: class token on the mask's patches, last block",
    "masked_cls_2": "no pass: class token on the mask's patches, last 2 blocks",
    "masked_cls_3": "no pass: class token on the mask's patches, last 3 blocks",
}


def passless_agreement(clip, sets, count, per_set, truth) -> dict[str, float]:
    """Agreement with the per-set target of readings that reuse the images' own CLIP pass (ViT towers)."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange

    from cosegkit.layers import clip_similarity

    visual = clip.model.visual
    if not hasattr(visual, "transformer") or not getattr(visual.transformer, "batch_first", False):
        return {}  # a ViT tower in open_clip's batch-first layout only
    blocks = list(visual.transformer.resblocks)
    heads = blocks[0].attn.num_heads
    text = clip.text_bank
    found: dict[str, list[int]] = {k: [] for k in PASSLESS_LABELS}

    def cls(emb):  # (N, D) -> the set's class
        return int(clip_similarity(F.normalize(emb.float(), dim=-1)[None], text)[0].sum(dim=0).argmax())

    with torch.no_grad():
        for i in range(count):
            item = sets[i]
            x = clip.preprocess(item["images"][None])
            emb, tokens = clip._dense_forward(x)  # the images' own pass
            found["unmasked"].append(cls(emb))
            grid = tokens.shape[-1]
            share = rearrange(
                F.interpolate(item["masks"].float(), size=(grid, grid), mode="area"), "n 1 h w -> n (h w)"
            )
            flat = rearrange(tokens, "n d h w -> n (h w) d")
            pooled = (share[..., None] * flat).sum(1) / share.sum(1, keepdim=True).clamp_min(1e-6)
            found["pooled_tokens"].append(cls(pooled))
            keep = share > 0
            keep[keep.sum(1) == 0] = True
            n, length = keep.shape[0], keep.shape[1] + 1
            embedded = visual._embeds(x)
            for k in range(1, min(3, len(blocks)) + 1):
                h, start = embedded, len(blocks) - k
                for b, block in enumerate(blocks):
                    mask = None
                    if b == start:  # a second class token: it sees itself and the mask's patches; nothing sees it
                        h = torch.cat([h, h[:, :1]], dim=1)
                    if b >= start:
                        mask = torch.zeros(n, length + 1, length + 1)
                        mask[:, :length, length] = float("-inf")
                        allowed = torch.cat(
                            [torch.zeros(n, 1, dtype=torch.bool), keep, torch.ones(n, 1, dtype=torch.bool)], 1
                        )
                        mask[:, length] = torch.where(allowed, 0.0, float("-inf"))
                        mask = mask.repeat_interleave(heads, 0)
                    h = block(h, attn_mask=mask)
                found[f"masked_cls_{k}"].append(cls(visual.ln_post(h[:, -1]) @ visual.proj))
    out = {}
    for key, values in found.items():
        if values:
            v = torch.tensor(values)
            out[f"{key}_equals_per_set"] = float((v == per_set[: len(v)]).float().mean())
            out[f"{key}_is_true_class"] = float((v == truth[: len(v)]).float().mean())
    return out


if __name__ == "__main__":
    main()
