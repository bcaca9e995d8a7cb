"""Deployed inference: onnxruntime on the exported ONNX file against eager PyTorch, side by side.

    python benchmarks/export_bench.py                              # resnet50 + ViT-B/16, N = 5, 224 px
    python benchmarks/export_bench.py --quick                      # resnet18 + the tiny CLIP, N = 3, 64 px
    python benchmarks/export_bench.py --set-size 8 --image-size 320 --json export.json

Builds LCCo with random weights (nothing downloaded; the head scaled so that the probabilities
spread over (0, 1) instead of all lying near 0.5, so that a difference would show), exports it with
:func:`cosegkit.export.export_onnx` to a temporary folder, then times one forward of a set
in eager PyTorch (``torch.inference_mode``, :meth:`LCCo.predict`) and in an onnxruntime CPU
session, interleaved call by call (one warm-up each, then ``--repeats`` rounds), and prints
the medians, the largest difference between the two outputs and the export's time and size.
Needs the export extra (``pip install "cosegkit[export]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="resnet18 + the tiny CLIP, N = 3, 64 px")
    parser.add_argument("--encoder", help="smp encoder (default resnet50; resnet18 with --quick)")
    parser.add_argument("--clip-model", help="open_clip model (default ViT-B-16; the tiny CLIP with --quick)")
    parser.add_argument("--set-size", type=int, help="N (default 5; 3 with --quick)")
    parser.add_argument("--image-size", type=int, help="S (default 224; 64 with --quick)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: torch's)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    import torch

    from cosegkit import LCCo
    from cosegkit.export import export_onnx, onnx_session, run_onnx
    from cosegkit.testing import TINY_CLIP, register_tiny_clips

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    encoder = args.encoder or ("resnet18" if args.quick else "resnet50")
    clip_model = args.clip_model or (TINY_CLIP if args.quick else "ViT-B-16")
    n = args.set_size or (3 if args.quick else 5)
    size = args.image_size or (64 if args.quick else 224)
    register_tiny_clips()
    torch.manual_seed(0)
    model = LCCo(encoder_name=encoder, encoder_weights=None, clip_model=clip_model, clip_pretrained=None).eval()
    with torch.no_grad():  # random weights give probabilities all near 0.5; spread them so that a difference shows
        model.head.weight.mul_(40.0)
        model.head.bias.zero_()
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "threads": threads}  # fmt: skip
    import onnxruntime

    machine["onnxruntime"] = onnxruntime.__version__
    print(f"machine: {machine}")
    print(f"encoder {encoder}, CLIP {clip_model} (random weights), one set of N = {n} at {size} px\n")
    images = torch.rand(1, n, 3, size, size, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(model, Path(tmp) / "lcco.onnx", set_size=n, image_size=size)
        session = onnx_session(report.path, threads=threads)
        array = images.numpy()
        calls = {"eager PyTorch": lambda: model.predict(images), "onnxruntime": lambda: run_onnx(session, array)}
        outputs = {name: call() for name, call in calls.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    diff = float((torch.from_numpy(outputs["onnxruntime"]) - outputs["eager PyTorch"]).abs().max())
    spread = float(outputs["eager PyTorch"].std())
    eager = statistics.median(times["eager PyTorch"])
    print(f"export: {report.seconds:.1f} s, {report.size_mib:.0f} MiB; max |onnxruntime - eager| on a new set: "
          f"{diff:.2e} (on the export's own check: {report.max_abs_diff:.2e}; probabilities' std {spread:.3f})\n")  # fmt: skip
    print("| runtime | median s | min s | max s | images/s | x eager |")
    print("| --- | --: | --: | --: | --: | --: |")
    rows = {}
    for name, t in times.items():
        med = statistics.median(t)
        rows[name] = {"median_s": med, "min_s": min(t), "max_s": max(t), "images_per_s": n / med, "ratio": med / eager}
        print(f"| {name} | {med:.3f} | {min(t):.3f} | {max(t):.3f} | {n / med:.2f} | {med / eager:.3f} |")
    if args.json:
        record = {"machine": machine, "encoder": encoder, "clip_model": clip_model, "N": n, "size": size,
                  "export_s": report.seconds, "size_mib": report.size_mib, "max_abs_diff": diff, "probs_std": spread,
                  "repeats": args.repeats, "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
