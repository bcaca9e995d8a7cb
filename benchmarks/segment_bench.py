"""``cosegkit segment`` on a photo collection: peak memory against the number of photos, and throughput.

    python benchmarks/segment_bench.py                  # 40 and 400 JPEGs of 2048 x 1536, LCCo r50 + ViT-B-16
    python benchmarks/segment_bench.py --quick          # 8 and 24 small JPEGs, the tiny test model: seconds

The photos are generated in a temporary folder (``--folder`` keeps and reuses them): smooth
random colour fields with noise, saved as JPEG (quality 90), so they decode like photos. Printed:

- **peak memory**, one fresh subprocess per row: the process's peak resident set
  (``ru_maxrss`` of ``RUSAGE_SELF``), its resident set once the model is built, and the peak of
  its data-loader workers' private memory together (``Private_Clean + Private_Dirty`` of
  ``/proc/<pid>/smaps_rollup``, sampled every 20 ms: a forked worker shares the model's pages
  with the process, so its resident set would count them again), for each photo count; and
  the same process running the bare forward on one random set instead, for reference.
  Streamed, the peak must not grow with the number of photos.
- **throughput**, in one process: :func:`~cosegkit.engine.segment.segment_files` on the
  smallest collection (read, resize, forward, masks written at 3 MP) against the bare model
  forward on ready tensors of the same sets (same set sizes, same image size), alternated
  ``--repeats`` times; the median images/s of each and their ratio.

The model is LCCo with a ResNet-50 encoder and a ViT-B-16 CLIP, random weights (the paper's
sizes; ``--clip-model`` chooses another open_clip architecture), or with ``--quick`` the tiny
test model. Threads: ``OMP_NUM_THREADS`` (``torch.get_num_threads()`` is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of ``width`` x ``height``: smooth random colours plus noise (reused if present)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:04d}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        own = np.random.default_rng([seed, i])  # photo i's content whatever was generated before
        coarse = Image.fromarray(own.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC
        )
        shift = int(own.integers(0, width))
        pixels = np.asarray(coarse, dtype=np.float32) + np.roll(noise, shift, axis=1)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return paths


def build_model(args: argparse.Namespace):
    import torch

    if args.quick:
        from cosegkit.testing import tiny_model

        return tiny_model()
    from cosegkit import LCCo
    from cosegkit.testing import _quiet_random_clip

    torch.manual_seed(0)
    with _quiet_random_clip():
        model = LCCo(encoder_name=args.encoder, encoder_weights=None, clip_model=args.clip_model, clip_pretrained=None)
    return model.eval()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def private_mb(pid: int) -> float:
    """A process's private memory (USS): what it holds that no other process shares."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # it has just exited
        return 0.0
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
    return sum(int(fields.get(k, "0 kB").split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024


class WorkerSampler(threading.Thread):
    """Samples the summed private memory of this process's descendants every 20 ms; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, sum(private_mb(pid) for pid in descendants(os.getpid())))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (workers may be children of a fork server, not of this process)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                new = {int(p) for p in children.read_text().split()} - found
            except OSError:  # the process has just exited
                continue
            found |= new
            todo += new
    return found


def child_memory(args: argparse.Namespace) -> None:
    """One row of the memory table: segment the folder's photos (or run the bare forward), print JSON."""
    import torch

    from cosegkit.engine.segment import collect_images, segment_files

    model = build_model(args)
    after_model = rss_mb()
    sampler = WorkerSampler()
    sampler.start()
    start = time.perf_counter()
    if args.child_folder == "bare":
        with torch.inference_mode():
            model(torch.rand(1, args.set_size, 3, args.image_size, args.image_size))
        photos = 0
    else:
        files = collect_images([args.child_folder])
        with tempfile.TemporaryDirectory() as out:
            written, _ = segment_files(
                model, files, out, set_size=args.set_size, image_size=args.image_size, workers=args.workers
            )
        photos = len(written)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(photos=photos, peak_mb=own, model_mb=after_model, worker_peak_mb=sampler.peak, s=seconds)))


def throughput(args: argparse.Namespace, files: list[Path]) -> dict[str, float]:
    """Median images/s of the streamed segment and of the bare forward on the same sets, alternated."""
    import torch

    from cosegkit.engine.segment import plan_sets, segment_files

    model = build_model(args)
    sets = plan_sets(files, args.set_size)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.rand(1, len(s), 3, args.image_size, args.image_size, generator=generator) for s in sets]
    with torch.inference_mode():
        model(inputs[0])  # warm-up
    bare, streamed = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            for x in inputs:
                model(x)
        bare.append(len(files) / (time.perf_counter() - start))
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            segment_files(model, files, out, set_size=args.set_size, image_size=args.image_size, workers=args.workers)
            streamed.append(len(files) / (time.perf_counter() - start))
    return dict(
        bare=statistics.median(bare), streamed=statistics.median(streamed), sets=len(sets), runs=[bare, streamed]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, nargs="+", help="collection sizes (default 40 400; --quick 8 24)")
    parser.add_argument("--size", default=None, help="photo WIDTHxHEIGHT (default 2048x1536; --quick 640x480)")
    parser.add_argument("--encoder", default="resnet50", help="smp encoder (default resnet50)")
    parser.add_argument("--clip-model", default="ViT-B-16", help="open_clip architecture (default ViT-B-16)")
    parser.add_argument("--set-size", type=int, default=5, help="images per set (default 5)")
    parser.add_argument("--image-size", type=int, default=None, help="network side (default 224; --quick 64)")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers (default: segment's)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of bare and streamed (default 2)")
    parser.add_argument("--folder", help="write (or reuse) the photos here (default: a temporary folder)")
    parser.add_argument("--skip-memory", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="memory only")
    parser.add_argument("--quick", action="store_true", help="the tiny test model on small photos: a smoke test")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.photos = args.photos or ([8, 24] if args.quick else [40, 400])
    args.size = args.size or ("640x480" if args.quick else "2048x1536")
    args.image_size = args.image_size or (64 if args.quick else 224)
    if args.child_folder:
        child_memory(args)
        return

    import torch

    from cosegkit.engine.segment import default_workers

    width, height = (int(v) for v in args.size.lower().split("x"))
    workers = default_workers() if args.workers is None else args.workers
    model_name = "tiny test model" if args.quick else f"LCCo {args.encoder} + {args.clip_model} (random weights)"
    print(
        f"model: {model_name}; photos {width}x{height} JPEG; set size {args.set_size}; image size "
        f"{args.image_size}; {workers} workers; torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.folder or scratch)
        every = make_photos(root / "all", max(args.photos), width, height)
        folders = {}
        for count in args.photos:
            folder = root / f"photos_{count}"
            folder.mkdir(exist_ok=True)
            for path in every[:count]:
                if not (folder / path.name).exists():
                    os.link(path, folder / path.name)
            folders[count] = folder
        results: dict[str, object] = {"model": model_name, "workers": workers}
        if not args.skip_memory:
            print("\npeak memory (one fresh process per row)")
            print(f"{'photos':>12}  {'peak RSS':>10}  {'after model':>11}  {'workers USS':>11}  {'time':>8}")
            rows = []
            for folder in ["bare", *folders.values()]:
                argv = [sys.executable, __file__, "--child-folder", str(folder), "--set-size", str(args.set_size),
                        "--image-size", str(args.image_size), "--encoder", args.encoder,
                        "--clip-model", args.clip_model]  # fmt: skip
                argv += ["--workers", str(workers)] + (["--quick"] if args.quick else [])
                done = subprocess.run(argv, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                label = "bare forward" if folder == "bare" else str(row["photos"])
                print(
                    f"{label:>12}  {row['peak_mb']:>7.0f} MB  {row['model_mb']:>8.0f} MB  "
                    f"{row['worker_peak_mb']:>8.0f} MB  {row['s']:>6.1f} s"
                )
            results["memory"] = rows
        if not args.skip_throughput:
            smallest = min(folders)
            files = sorted(folders[smallest].iterdir())
            speed = throughput(args, files)
            ratio = speed["streamed"] / speed["bare"]
            print(f"\nthroughput on {smallest} photos, {speed['sets']} sets, median of {args.repeats} (images/s)")
            print(f"{'bare forward':>14}  {'segment':>8}  {'ratio':>6}")
            print(f"{speed['bare']:>14.3f}  {speed['streamed']:>8.3f}  {ratio:>6.3f}")
            bare, streamed = speed["runs"]
            print("each run, in order: " + ", ".join(f"{b:.3f} / {s:.3f}" for b, s in zip(bare, streamed, strict=True)))
            results["throughput"] = {**speed, "ratio": ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
