"""Speed of zero-shot co-segmentation against one plain CLIP forward of the same set.

    python benchmarks/zeroshot_speed.py                       # ViT-B-16, one set of 5 images at 224 px
    python benchmarks/zeroshot_speed.py --threads 1 --repeats 9
    python benchmarks/zeroshot_speed.py --device cuda --size 448

What is measured (random weights, nothing downloaded; the CLIP is built with
``FrozenClip.from_name(model, pretrained=None, classnames=DEFAULT_VOCABULARY)``):

- ``clip forward``: ``clip.encode_images(images)``, one pass of the set through the frozen
  image tower (``torch.no_grad``), the unavoidable work.
- ``zero-shot + CAA``: ``ZeroShotCoseg(clip)(images)``: the same pass with the last block
  under autograd and the attention weights of the last 8 blocks kept, the set's class,
  one backward to the last block's ``ln_1``, GradCAM, CAA and the upsampling to the input.
- ``zero-shot, no CAA``: the same with ``refine=False``.

``ratio`` is each median over the CLIP forward's. The project's target: ``zero-shot + CAA`` at
most 3x the CLIP forward. The prompt banks are encoded once, when the modules are built,
before any timing.

Timing: one warm-up call of each, then ``--repeats`` rounds, each calling the three in
turn (interleaved, so that a slow spell of a shared machine hits all of them alike);
``time.perf_counter``, with ``torch.cuda.synchronize`` around each call on a GPU. The table
gives the median, the fastest and the slowest call.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def fmt_row(cells: list[Any], widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-model", default="ViT-B-16", help="open_clip model (default ViT-B-16)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--set-size", type=int, default=5, help="images in the set (default 5)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from cosegkit.clip import DEFAULT_VOCABULARY, FrozenClip
    from cosegkit.zeroshot import ZeroShotCoseg

    torch.manual_seed(0)
    clip = FrozenClip.from_name(args.clip_model, pretrained=None, classnames=DEFAULT_VOCABULARY, device=device)
    with_caa = ZeroShotCoseg(clip)
    without_caa = ZeroShotCoseg(clip, refine=False)
    images = torch.rand(1, args.set_size, 3, args.size, args.size, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    calls: dict[str, Callable[[], Any]] = {
        "clip forward": lambda: clip.encode_images(images),
        "zero-shot + CAA": lambda: with_caa(images),
        "zero-shot, no CAA": lambda: without_caa(images),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    sync()
    for _ in range(args.repeats):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)

    machine = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    grid = with_caa.input_size(args.size, args.size)
    print(f"machine: {machine}")
    print(
        f"CLIP {args.clip_model} (random weights), {len(clip.classnames)} classes + "
        f"{len(with_caa.background)} background words; one set of {args.set_size} images at "
        f"{args.size} px (CLIP input {grid[0]}x{grid[1]}); median of {args.repeats} interleaved rounds "
        f"after a warm-up\n"
    )
    widths = [18, 10, 10, 10, 7]
    print(fmt_row(["", "median ms", "min ms", "max ms", "ratio"], widths))
    base = statistics.median(times["clip forward"])
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(
            fmt_row(
                [
                    name,
                    f"{1e3 * medians[name]:.1f}",
                    f"{1e3 * min(values):.1f}",
                    f"{1e3 * max(values):.1f}",
                    f"{medians[name] / base:.2f}",
                ],
                widths,
            )
        )
    ratio = medians["zero-shot + CAA"] / base
    verdict = "met" if ratio <= 3.0 else "missed"
    print(f"\ntarget: zero-shot + CAA at most 3x the CLIP forward: {verdict} ({ratio:.2f}x)")
    caa = medians["zero-shot + CAA"] - medians["zero-shot, no CAA"]
    print(f"CAA alone (difference of the medians): {1e3 * caa:.1f} ms")


if __name__ == "__main__":
    main()
