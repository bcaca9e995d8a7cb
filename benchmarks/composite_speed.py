"""Time the composite world: images generated per second on one CPU thread, real cut-outs.

    python benchmarks/composite_speed.py --root ../shared/data/pascal_voc_coseg --reader pascal_voc
    python benchmarks/composite_speed.py --root DATA --reader folder --sizes 64 128 --repeats 9

Loading the photos (once, at construction) is timed apart. Each size then gets a warm-up set
and ``--repeats`` timed runs of ``--sets`` sets each; the table shows the median images per
second (and the slowest and fastest run).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from synthetic_speed import images_per_second  # the same timing loop (benchmarks/ is on the path)

from cosegkit.data.composite import CompositeWorld
from cosegkit.data.readers import get_reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--reader", default="pascal_voc", help="reader name (see cosegkit.data.READERS)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes S (S x S)")
    parser.add_argument("--set-size", type=int, default=5, help="images per set")
    parser.add_argument("--sets", type=int, default=20, help="sets per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per size (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--objects", type=int, nargs=2, default=[2, 3], help="objects per image (low high)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()} ({platform.platform()})")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"torch threads: {torch.get_num_threads()}; set size {args.set_size}; objects per image {args.objects}")
    groups = get_reader(args.reader)(args.root)
    print(f"{args.reader} at {args.root}: {len(groups)} groups, {sum(len(g) for g in groups)} photos")
    print()
    print(f"{'size':>5} {'load s':>7} {'images/s (median)':>18} {'min':>8} {'max':>8} {'ms/image':>9}")
    for size in args.sizes:
        start = time.perf_counter()
        world = CompositeWorld(groups, image_size=size, objects_per_image=tuple(args.objects))
        load = time.perf_counter() - start
        rates = images_per_second(world, args.set_size, args.sets, args.repeats)
        median = statistics.median(rates)
        print(f"{size:>5} {load:>7.1f} {median:>18.0f} {min(rates):>8.0f} {max(rates):>8.0f} {1000 / median:>9.2f}")


if __name__ == "__main__":
    main()
