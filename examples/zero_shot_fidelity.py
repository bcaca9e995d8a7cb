"""What three numerical details of CLIP-ES's code change in the zero-shot masks, on the demo's world.

    python examples/zero_shot_fidelity.py                          # the demo's CLIP, its 60 held-out sets, 160 px
    python examples/zero_shot_fidelity.py --clip-steps 2 --sets 2 --sizes 96   # a quick check

:class:`~cosegkit.zeroshot.ZeroShotCoseg` follows CLIP-ES's code by default in all three:

- ``pos_interpolation``: off the CLIP's own patch grid, the positional embedding is resized
  bilinearly (CLIP-ES's ``upsample_pos_emb``); ``"bicubic"`` was cosegkit's earlier reading.
- ``cam_scaling``: the GradCAM map is min-max scaled twice (CLIP-ES's bundled GradCAM runs
  ``scale_cam_image`` per target layer and again after averaging the layers); ``"once"`` was
  cosegkit's earlier reading.
- ``box_precision``: CAA's box threshold is applied to the CAM's 8-bit copy (CLIP-ES's
  ``scoremap2bbox``: ``int(255 x) > int(0.4 * max)``); ``"float"`` (the CAM itself) was
  cosegkit's earlier reading.

Prints, for the demo's small CLIP (cached, trained on first use with the demo's settings):

1. how far the two resized embeddings are apart at each CLIP input size, against the
   embedding's own entries;
2. how far below 1 a singly scaled CAM's peak falls (the doubly scaled one's is 1);
3. P and J (presets ``ssnm``, ``ufo``, ``fixed``) of every combination, with and without CAA,
   on the demo's held-out sets, and the mean absolute change of the maps against CLIP-ES's
   combination (the box threshold on the 8-bit copy);
4. the same for the box threshold on floats, with CLIP-ES's other two details: how many
   images get another box mask, and P, J and the mean change of the maps.
"""

from __future__ import annotations

import argparse
import itertools
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
from cosegkit.demo import ZERO_SHOT_SIZE, DemoBudget, demo_train_config
from cosegkit.engine.config import build_eval_sets
from cosegkit.metrics import precision_jaccard, reduce_scores
from cosegkit.zeroshot import ZeroShotCoseg
from cosegkit.zeroshot.caa import box_mask
from cosegkit.zeroshot.towers import interpolate_positional_embedding

PRESETS = ("ssnm", "ufo", "fixed")


def embedding_gaps(clip: FrozenClip, sizes: list[int]) -> None:
    visual = clip.model.visual
    pos = visual.positional_embedding.detach()
    patches = pos[1:]
    rms = float(patches.pow(2).mean().sqrt())
    print(
        f"1. positional embedding ({tuple(visual.grid_size)} grid; its patch rows: max |entry| "
        f"{float(patches.abs().max()):.3f}, rms {rms:.3f})"
    )
    print(f"{'CLIP input':>10}  {'grid':>7}  {'max |bilinear - bicubic|':>24}  {'rms of the gap':>14}")
    for size in sizes:
        grid = (size // visual.patch_size[0], size // visual.patch_size[1])
        bilinear = interpolate_positional_embedding(pos, visual.grid_size, grid, "bilinear")
        bicubic = interpolate_positional_embedding(pos, visual.grid_size, grid, "bicubic")
        gap = (bilinear - bicubic)[1:]
        print(
            f"{size:>8}px  {grid[0]:>3}x{grid[1]:<3}  {float(gap.abs().max()):>24.4f}  "
            f"{float(gap.pow(2).mean().sqrt()):>14.4f}"
        )


@torch.no_grad()
def run(zs: ZeroShotCoseg, sets) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[float, float]]]:
    """Every set's maps ``(S, N, 1, H, W)``, CAMs ``(S, N, h, w)`` and P, J per preset."""
    probs, cams = [], []
    scores: dict[str, tuple[list, list]] = {p: ([], []) for p in PRESETS}
    for i in range(len(sets)):
        item = sets[i]
        out = zs(item["images"][None])
        probs.append(out.probs[0])
        cams.append(out.cams[0])
        for preset in PRESETS:
            p, j = precision_jaccard(out.probs, item["masks"][None], preset=preset)
            scores[preset][0].append(p.flatten())
            scores[preset][1].append(j.flatten())
    pj = {k: (float(reduce_scores(torch.cat(p))), float(reduce_scores(torch.cat(j)))) for k, (p, j) in scores.items()}
    return torch.stack(probs), torch.stack(cams), pj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-steps", type=int, default=DemoBudget().clip_steps, help="the CLIP's training steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[ZERO_SHOT_SIZE], help="CLIP input sides")
    parser.add_argument("--sets", type=int, default=DemoBudget().eval_sets, help="held-out sets of 4 images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--box-only", action="store_true", help="only part 4, the box threshold's precision")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clip_config = ClipPretrainConfig(
        num_classes=16, world_seed=0, objects_per_image=(2, 3), image_size=64, steps=args.clip_steps
    )
    path = pretrain_synthetic_clip(clip_config)
    register_synthetic_clip()
    names = clip_config.world().class_names
    clip = FrozenClip.from_name(SYNTHETIC_CLIP, pretrained=str(path), classnames=names, templates=SYNTHETIC_TEMPLATES)
    sets = build_eval_sets(demo_train_config(path, steps=1, eval_sets=args.sets), sets=args.sets)
    print(f"CLIP {path.name} ({args.clip_steps} steps); {len(sets)} of the demo's held-out sets of 4 images")
    embedding_gaps(clip, args.sizes)

    for size in [] if args.box_only else args.sizes:
        print(f"\nCLIP input {size} px")
        presets = "  ".join(f"{p:>13}" for p in PRESETS)
        print(f"{'pos emb':>8}  {'CAM scaled':>10}  {'CAA':>3}  {presets}  mean |d map|")
        print(f"{'':>8}  {'':>10}  {'':>3}  " + "  ".join(f"{'P (%)  J (%)':>13}" for _ in PRESETS))
        for caa in (True, False):
            reference = None
            for pos, scaling in itertools.product(("bilinear", "bicubic"), ("twice", "once")):
                start = time.perf_counter()
                zs = ZeroShotCoseg(
                    clip, templates=SYNTHETIC_TEMPLATES, synonyms={}, image_size=size, refine=caa,
                    cam_scaling=scaling, pos_interpolation=pos,
                )  # fmt: skip
                probs, cams, pj = run(zs, sets)
                if reference is None:  # CLIP-ES's combination comes first
                    reference = probs
                if scaling == "once" and caa:  # the CAM before CAA is the same with and without it
                    peaks = cams.flatten(2).amax(dim=-1).flatten()
                    live = peaks[peaks > 0]  # a map that the ReLU zeroes is 0 with either scaling
                    others = "none"
                    if len(live):
                        shares = [100 * float((live < t).float().mean()) for t in (0.999, 0.99, 0.95)]
                        below = " / ".join(f"{v:.1f}%" for v in shares)
                        others = (
                            f"min {float(live.min()):.4f}, median {float(live.median()):.6f}, "
                            f"below 0.999 / 0.99 / 0.95: {below}"
                        )
                    print(
                        f"   singly scaled CAMs ({pos}): {len(peaks) - len(live)} of {len(peaks)} are 0 "
                        f"everywhere; the others' peaks: {others}"
                    )
                cells = "  ".join(f"{100 * pj[p][0]:6.2f} {100 * pj[p][1]:6.2f}" for p in PRESETS)
                gap = float((probs - reference).abs().mean())
                print(
                    f"{pos:>8}  {scaling:>10}  {'yes' if caa else 'no':>3}  {cells}  {gap:.2e}"
                    f"  ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )


    for size in args.sizes:
        box_precisions(clip, sets, size)


def box_precisions(clip: FrozenClip, sets, size: int) -> None:
    """Part 4: CAA's box threshold on the CAM's 8-bit copy (CLIP-ES) against floats, at one CLIP input size."""
    print(f"\n4. CAA's box threshold, CLIP input {size} px (bilinear embedding, CAM scaled twice)")
    presets = "  ".join(f"{p:>13}" for p in PRESETS)
    print(f"{'box on':>8}  {presets}  mean |d map|  boxes changed")
    reference = cams = None
    for precision in ("uint8", "float"):
        start = time.perf_counter()
        zs = ZeroShotCoseg(clip, templates=SYNTHETIC_TEMPLATES, synonyms={}, image_size=size, box_precision=precision)
        probs, cams, pj = run(zs, sets)
        if reference is None:
            reference = probs
        flat = cams.flatten(0, 1)  # (S * N, h, w), the same CAMs under either precision
        changed = (box_mask(flat, zs.box_threshold, "uint8") != box_mask(flat, zs.box_threshold, "float"))
        images = int(changed.flatten(1).any(dim=1).sum())
        cells = "  ".join(f"{100 * pj[p][0]:6.2f} {100 * pj[p][1]:6.2f}" for p in PRESETS)
        gap = float((probs - reference).abs().mean())
        print(
            f"{precision:>8}  {cells}  {gap:.2e}      {images} of {len(flat)} images, "
            f"{int(changed.sum())} patches  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
