"""Floating-point work of LCCo's training and evaluation, and the GPU hours it implies.

    python benchmarks/train_flops.py                      # the paper's set-up: resnet50 + ViT-B/16, 224 px
    python benchmarks/train_flops.py --steps 40000 --batch-size 8 --mfu 0.3
    python benchmarks/train_flops.py --quick              # resnet18 + a small CLIP (seconds)

What is counted: ``torch.utils.flop_counter.FlopCounterMode`` (with attention run in its plain
matmul form, which the counter sees; the fused kernels it would otherwise miss) runs one training step (forward, the LCCo
loss, backward; random weights, nothing downloaded) on ONE set of ``N`` images, with eq. (12)'s
target computed per set (the masked images through CLIP) and cached (given to the model, as
``class_targets="cached"`` does once every image is embedded), and one evaluation forward, and counts the FLOPs of every matrix multiply and convolution (2 per
multiply-add; element-wise work is not counted, so these are lower bounds). Work is linear in the
number of sets, so a step of ``--batch-size`` sets costs that many times the counted set; the
optimizer update is element-wise and not counted.

What is estimated, not measured: hours = FLOPs / (peak x ``--mfu``). The peaks are the vendors'
dense bf16 tensor-core figures; ``--mfu`` (model FLOPs utilisation) is an assumption, by default
0.3, typical of convolutional and ViT-B training at 224 px in bf16. The table states the
assumption next to every figure; measure a real step with ``benchmarks/lcco_bench.py --device
cuda`` to replace it.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Dense bf16 tensor-core peak, TFLOP/s (no sparsity), from the vendors' data sheets.
GPUS = {"RTX 3090": 71.0, "A100": 312.0, "H100 SXM": 989.0}


def count(fn) -> int:
    # nn.MultiheadAttention's fused inference path and the fused attention kernels are not
    # counted by FlopCounterMode: count the same maths through its plain matmul form.
    torch.backends.mha.set_fastpath_enabled(False)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="resnet18 + a small CLIP")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--set-size", type=int, default=5, help="images per set N (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="sets per step (default 8)")
    parser.add_argument("--steps", type=int, default=40000, help="optimizer steps per run (default 40000)")
    parser.add_argument("--mfu", type=float, default=0.3, help="assumed fraction of peak reached (default 0.3)")
    parser.add_argument(
        "--class-targets",
        choices=("cached", "per-set"),
        default="cached",
        help="eq. 12's target in the totals: cached (the default; no masked images through CLIP once "
        "every image is cached) or per-set (the masked images through CLIP every step)",
    )
    args = parser.parse_args()
    if not 0 < args.mfu <= 1:
        parser.error(f"--mfu must be in (0, 1], got {args.mfu}")

    from cosegkit import LCCo, LCCoLoss
    from cosegkit.testing import register_tiny_clips

    register_tiny_clips()
    torch.manual_seed(0)
    encoder, clip = ("resnet18", "ViT-B-32") if args.quick else ("resnet50", "ViT-B-16")
    model = LCCo(encoder_name=encoder, encoder_weights=None, clip_model=clip, clip_pretrained=None)
    criterion = LCCoLoss()
    n, s = args.set_size, args.image_size
    images = torch.rand(1, n, 3, s, s)
    masks = (torch.rand(1, n, 1, s, s) > 0.5).float()

    def train_step(given: dict) -> None:
        model.train()
        loss = criterion(model(images, **given), masks).total
        loss.backward()

    def eval_forward() -> None:
        model.eval()
        with torch.no_grad():
            model(images)

    from cosegkit.losses import set_class_targets

    targets = set_class_targets(model.clip, images, masks)  # what the cache holds, computed outside the count
    per_set_train_both = {
        "per-set": count(lambda: train_step({"masks": masks})),
        "cached": count(lambda: train_step({"class_targets": targets})),
    }
    per_set_train = per_set_train_both[args.class_targets]
    per_set_eval = count(eval_forward)
    per_step = per_set_train * args.batch_size
    total = per_step * args.steps

    print(f"{encoder} + CLIP {clip}, {s} px, sets of N = {n}")
    print(
        f"  one training set (forward, loss, backward), eq. 12's target per set: {per_set_train_both['per-set'] / 1e9:.1f} GFLOP"
    )
    print(
        f"  one training set, eq. 12's target cached:                          {per_set_train_both['cached'] / 1e9:.1f} GFLOP"
    )
    print(f"  one evaluation set (forward):                                      {per_set_eval / 1e9:.1f} GFLOP")
    print(f"  totals below with the target {args.class_targets} (--class-targets)")
    print(
        f"  one step of {args.batch_size} sets: {per_step / 1e12:.2f} TFLOP; "
        f"{args.steps} steps: {total / 1e15:.1f} PFLOP"
    )
    eval_flops = 1000 / n * per_set_eval
    print(f"  evaluating 1,000 test images in sets of {n}: {eval_flops / 1e12:.1f} TFLOP")
    print()
    print(f"estimated GPU hours for one training run, at {args.mfu:.0%} of the dense bf16 peak (an assumption)")
    print(f"  {'GPU':<10} {'peak TFLOP/s':>12} {'hours':>8}")
    for name, peak in GPUS.items():
        hours = total / (peak * 1e12 * args.mfu) / 3600
        print(f"  {name:<10} {peak:>12.0f} {hours:>8.1f}")


if __name__ == "__main__":
    main()
