"""The GPU tables in one command: forward and training in fp32, bf16 autocast and torch.compile, and DDP on NCCL.

    python benchmarks/gpu.py --out bench-gpu              # on a machine with CUDA
    python benchmarks/gpu.py --out bench-gpu --quick      # resnet18 + ViT-B-32, minutes
    python benchmarks/gpu.py --dry-run                    # print the commands, run nothing

Each table is a run of ``benchmarks/lcco_bench.py`` (forward of a set and a training step, LCCo
against its Baseline plus one CLIP pass; see that script for what is measured) on
``--device cuda``:

- ``fp32``: ``--dtype fp32``;
- ``bf16``: ``--dtype bf16`` (autocast around the forward and the loss);
- ``compile``: ``--options`` (adds channels_last, ``torch.compile`` and bf16 rows).

With two or more GPUs it then trains a tiny model for 3 steps with ``torchrun
--nproc-per-node 2 -m cosegkit train --device cuda`` (NCCL) and checks, as the Gloo test of the
test suite does on the CPU, that both ranks end with the same weights (``ddp.json``). Each
table's JSON and log go to ``--out``; ``summary.json`` lists what ran and its exit status.
Without CUDA it stops with a message (nothing in the test suite depends on this script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TINY_TRAIN = [
    "--dataset", "synthetic", "--world-classes", "6", "--image-size", "64", "--set-size", "3",
    "--batch-size", "2", "--encoder", "resnet18", "--encoder-weights", "none", "--encoder-depth", "3",
    "--decoder-channels", "64", "48", "32", "--clip-model", "ViT-B-32", "--clip-pretrained", "none",
    "--heads", "4", "--top-k", "2", "--steps", "3", "--eval-sets", "4", "--eval-set-size", "3",
    "--device", "cuda", "--no-progress",
]  # fmt: skip


def commands(out: Path, quick: bool, gpus: int) -> list[tuple[str, list[str]]]:
    """(name, argv) of every step, in order.

    Example:
        >>> from pathlib import Path
        >>> [name for name, _ in commands(Path("bench"), quick=True, gpus=2)]
        ['fp32', 'bf16', 'compile', 'ddp-nccl']
        >>> [name for name, _ in commands(Path("bench"), quick=False, gpus=1)]  # one GPU: no DDP
        ['fp32', 'bf16', 'compile']
        >>> commands(Path("bench"), quick=True, gpus=1)[1][1][-6:]
        ['--device', 'cuda', '--dtype', 'bf16', '--json', 'bench/bf16.json']
    """
    bench = [sys.executable, str(HERE / "lcco_bench.py"), *(["--quick"] if quick else [])]
    steps = [
        (
            "fp32",
            [
                *bench,
                "--parts",
                "model",
                "train",
                "--device",
                "cuda",
                "--dtype",
                "fp32",
                "--json",
                str(out / "fp32.json"),
            ],
        ),
        (
            "bf16",
            [
                *bench,
                "--parts",
                "model",
                "train",
                "--device",
                "cuda",
                "--dtype",
                "bf16",
                "--json",
                str(out / "bf16.json"),
            ],
        ),
        (
            "compile",
            [
                *bench,
                "--parts",
                "model",
                "--options",
                "--device",
                "cuda",
                "--set-sizes",
                "5",
                "--json",
                str(out / "compile.json"),
            ],
        ),
    ]
    if gpus >= 2:
        run = str(out / "ddp-run")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        steps.append(("ddp-nccl", [*torchrun, "-m", "cosegkit", "train", *TINY_TRAIN, "--out", run]))
    return steps


def check_ddp(run: Path) -> str:
    """``"ok"`` when both ranks' weights agree (``ddp.json``), else what went wrong."""
    report = run / "ddp.json"
    if not report.is_file():
        return f"no {report}"
    data = json.loads(report.read_text())
    sums = data.get("checksums", [])
    return "ok" if len(sums) == 2 and sums[0] == sums[1] else f"ranks differ: {sums}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-gpu", help="folder for the tables' JSON and logs (default bench-gpu)")
    parser.add_argument("--quick", action="store_true", help="resnet18 + ViT-B-32 at 224 px (lcco_bench --quick)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    out = Path(args.out)

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    steps = commands(out, args.quick, max(gpus, 2) if args.dry_run else gpus)
    if args.dry_run:
        for name, cmd in steps:
            print(f"{name}: {' '.join(cmd)}")
        return 0
    if gpus == 0:
        print("no CUDA device here: run benchmarks/gpu.py on a machine with a GPU", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    summary = {"gpus": gpus, "device": torch.cuda.get_device_name(0), "steps": {}}
    for name, cmd in steps:
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        with (out / f"{name}.log").open("w") as log:
            done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            log.write(done.stdout)
        print(done.stdout[-4000:])
        status = {"returncode": done.returncode}
        if name == "ddp-nccl" and done.returncode == 0:
            status["replicas"] = check_ddp(out / "ddp-run")
        summary["steps"][name] = status
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    failed = [n for n, s in summary["steps"].items() if s["returncode"] != 0 or s.get("replicas", "ok") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
