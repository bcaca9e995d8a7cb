"""Speed and memory of LCCo against its Baseline, per module, and against a naive correspondence loop.

    python benchmarks/lcco_bench.py --quick                  # resnet18 + a small CLIP, about a minute
    python benchmarks/lcco_bench.py                          # resnet50 + ViT-B/16 at 224 and 320 px
    python benchmarks/lcco_bench.py --device cuda --dtype bf16 --json bench-cuda.json
    python benchmarks/lcco_bench.py --options                # + channels_last, torch.compile, bf16 autocast

What is measured (random weights, nothing downloaded):

- ``model``: forward time (``torch.inference_mode``) and peak memory of the full LCCo and of the
  Baseline, for every image size and set size ``N`` (``B = 1``). The Baseline is the same
  encoder and decoder with the three modules off *plus the same CLIP image pass* (dense tokens
  included), i.e. the unavoidable work; ``ratio`` is LCCo / Baseline. The peer UFO
  (:class:`cosegkit.UFO`, UFO's widths unless ``--ufo-dim``) runs on the same encoder
  at the same sizes; ``UFO/LCCo`` is its time over LCCo's.
- ``train``: one training step (forward, loss, backward, AdamW step) at ``B = 2`` sets of
  ``N = 5``: the Baseline plus one CLIP pass of the same images, LCCo with eq. (12)'s target
  per set (the masked images through CLIP every step), LCCo with the cached target
  (:mod:`cosegkit.engine.class_targets`, warm as in every epoch after the first) and UFO with
  its own loss, with images trained per second; the calls are interleaved so that the
  machine's noise spreads over all four.
- ``modules``: each set-aware module alone on the feature shapes LCCo gives it (ISFC at
  stride 32, interaction at 16, regularization at 8, the decoder's default widths).
- ``isfc-loop``: the vectorised ImageSetCorrespondence against a per-pair Python loop of the
  same maths on the same weights (kept here only, for this comparison).

Timing: one warm-up call, then ``--repeats`` timed calls (``time.perf_counter``, with
``torch.cuda.synchronize`` around each on a GPU); the table gives the median and the fastest
and slowest call. Memory on the CPU is the process's resident set size (``/proc/self/statm``),
sampled every millisecond by a thread during each call: ``peak`` is the highest RSS seen,
``extra`` that peak minus the RSS before the call (the call's own working memory). On CUDA it
is ``torch.cuda.max_memory_allocated`` after a reset. The machine, versions and thread count
are printed with the table and written to the JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; falls back to the high-water mark)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory during a block: CUDA allocator statistics, or a thread sampling the RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self.extra = device, 0, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        self.before = rss_bytes()
        self.peak = self.before
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_bytes())
                time.sleep(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.before


def measure(fn: Callable[[], Any], device: torch.device, repeats: int) -> dict[str, float]:
    """Median, fastest and slowest seconds of ``repeats`` calls after one warm-up, and peak memory."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "peak_mib": mem.peak / 2**20,
        "extra_mib": mem.extra / 2**20,
        "repeats": repeats,
    }


def naive_isfc(module: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """ImageSetCorrespondence for one set ``(1, N, C, h, w)``, pair by pair in Python (N >= 2)."""
    from einops import rearrange

    _, n, _, h, w = features.shape
    x = features[0]
    out = []
    for i in range(n):
        updated = []
        for j in range(n):
            if j == i:
                continue
            qi = rearrange(module.to_q(rearrange(x[i], "c h w -> (h w) c")), "l (g e) -> g l e", g=module.heads)
            kv = module.to_kv(rearrange(x[j], "c h w -> (h w) c"))
            k, v = rearrange(kv, "l (two g e) -> two g l e", two=2, g=module.heads)
            msg = module.to_out(rearrange(F.scaled_dot_product_attention(qi, k, v), "g l e -> l (g e)"))
            msg = rearrange(msg, "(h w) c -> c h w", h=h, w=w)
            updated.append(x[i] + module.ffn(torch.cat([x[i], msg])[None])[0])  # eq. (1)
        stacked = torch.stack(updated)
        alpha = (stacked / module.temperature).softmax(dim=0)
        fused = module.conv((alpha * stacked).sum(0)[None])[0]  # eq. (2)
        out.append(x[i] + fused if module.residual else fused)
    return torch.stack(out)[None]


def build(encoder: str, clip_model: str, device: torch.device, *, modules: bool) -> torch.nn.Module:
    from cosegkit import LCCo
    from cosegkit.testing import register_tiny_clips

    register_tiny_clips()
    torch.manual_seed(0)
    model = LCCo(
        encoder_name=encoder,
        encoder_weights=None,
        clip_model=clip_model,
        clip_pretrained=None,
        use_correspondence=modules,
        use_interaction=modules,
        use_regularization=modules,
    )
    return model.to(device).eval()


def build_ufo(encoder: str, device: torch.device, dim: int) -> torch.nn.Module:
    from cosegkit.models import UFO

    torch.manual_seed(0)
    return UFO(encoder_name=encoder, encoder_weights=None, dim=dim).to(device).eval()


def fmt_row(cells: list[Any], widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="resnet18 + a small CLIP, 224 px, N <= 8")
    parser.add_argument("--encoder", help="smp encoder (default resnet50; resnet18 with --quick)")
    parser.add_argument("--clip-model", help="open_clip model (default ViT-B-16; ViT-B-32 with --quick)")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sizes (default 224 320; 224 with --quick)")
    parser.add_argument("--set-sizes", type=int, nargs="+", help="N values (default 1 2 5 8 16 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast everywhere")
    parser.add_argument("--options", action="store_true", help="also channels_last, torch.compile, bf16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--ufo-dim", type=int, default=512, help="UFO's width per level (default UFO's 512)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["model", "train", "modules", "loop"],
        help="model train modules loop (default all)",
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    encoder = args.encoder or ("resnet18" if args.quick else "resnet50")
    clip_model = args.clip_model or ("ViT-B-32" if args.quick else "ViT-B-16")
    sizes = args.sizes or ([224] if args.quick else [224, 320])
    set_sizes = args.set_sizes or ([1, 2, 5, 8] if args.quick else [1, 2, 5, 8, 16, 32])
    autocast = args.dtype == "bf16"
    machine = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
    }
    print(f"machine: {machine}")
    print(f"encoder {encoder}, CLIP {clip_model} (random weights); median of {args.repeats} calls after a warm-up\n")

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    full = build(encoder, clip_model, device, modules=True)
    base = build(encoder, clip_model, device, modules=False)
    ufo = build_ufo(encoder, device, args.ufo_dim)
    clip = full.clip
    _ = clip.text_bank  # computed once per model, here, before any timing
    results: dict[str, Any] = {
        "machine": machine, "encoder": encoder, "clip_model": clip_model, "ufo_dim": args.ufo_dim, "model": []
    }  # fmt: skip

    if "model" in args.parts:
        model_table(args, full, base, ufo, clip, sizes, set_sizes, device, amp, results)
    if "train" in args.parts:
        train_table(args, full, base, ufo, clip, sizes, device, amp, results)
    if "modules" in args.parts or "loop" in args.parts:
        module_tables(args, full, clip, sizes, set_sizes, device, results)
    finish(args, full, clip, encoder, clip_model, sizes, device, results)


def model_table(args, full, base, ufo, clip, sizes, set_sizes, device, amp, results) -> None:
    print("model forward (inference_mode), B = 1")
    widths = [5, 4, 12, 12, 7, 12, 12, 10, 9, 8, 9]
    header = ["size", "N", "LCCo s", "Baseline s", "ratio", "LCCo MiB", "Base MiB", "ISFC %", "UFO s", "UFO/LCCo",
              "UFO MiB"]  # fmt: skip
    print(fmt_row(header, widths))
    for size in sizes:
        for n in set_sizes:
            images = torch.rand(1, n, 3, size, size, device=device)

            @torch.inference_mode()
            def run_full(images=images):
                with amp():
                    return full(images)

            @torch.inference_mode()
            def run_base(images=images):
                with amp():
                    base(images)
                    return clip.encode_images(images, dense=True)  # the same CLIP pass LCCo makes

            @torch.inference_mode()
            def run_ufo(images=images):
                with amp():
                    return ufo(images)

            f = measure(run_full, device, args.repeats)
            b = measure(run_base, device, args.repeats)
            u = measure(run_ufo, device, args.repeats)
            # the correspondence module alone on this forward's F^1
            channels = full.config["decoder_channels"][0]
            side = -(-size // full.output_stride)
            feats = torch.randn(1, n, channels, side, side, device=device)

            @torch.inference_mode()
            def run_isfc(feats=feats):
                with amp():
                    return full.correspondence(feats)

            share = measure(run_isfc, device, args.repeats)["median_s"] / f["median_s"]
            ratio = f["median_s"] / b["median_s"]
            results["model"].append(
                {"size": size, "N": n, "lcco": f, "baseline": b, "ratio": ratio, "isfc_share": share, "ufo": u}
            )
            print(
                fmt_row(
                    [
                        size,
                        n,
                        f"{f['median_s']:.3f}",
                        f"{b['median_s']:.3f}",
                        f"{ratio:.3f}",
                        f"{f['peak_mib']:.0f}",
                        f"{b['peak_mib']:.0f}",
                        f"{100 * share:.1f}",
                        f"{u['median_s']:.3f}",
                        f"{u['median_s'] / f['median_s']:.2f}",
                        f"{u['peak_mib']:.0f}",
                    ],
                    widths,
                )
            )
        print()


class _FixedSets:
    """The benchmark's fixed training sets as a dataset with un-augmented images, for the eq. (12) cache."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.masks = images.cpu(), masks.cpu()

    def unaugmented(self, group: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[group, index], self.masks[group, index]


def measure_side_by_side(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, dict]:
    """:func:`measure` for several calls in turn: one warm-up each, then ``repeats`` rounds of one call each.

    Interleaving spreads the machine's slow and fast moments over all the calls alike.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
        sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with PeakMemory(device) as mem:
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
            peaks[name].append(mem.peak / 2**20)
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "peak_mib": max(peaks[name]),
            "repeats": repeats,
        }
        for name, t in times.items()
    }


def _train_calls(full, base, ufo, clip, criterion, cache, images, masks, amp) -> dict[str, Callable[[], None]]:
    """The four training steps of the table, on the same images and masks."""
    from cosegkit.losses import UFOLoss

    b, n = images.shape[:2]
    valid = torch.ones(b, n, dtype=torch.bool)
    group_ids, indices = torch.arange(b), torch.arange(n).expand(b, n)
    optimizers = {
        name: torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
        for name, model in (("full", full), ("base", base), ("ufo", ufo))
    }
    ufo_loss, classes = UFOLoss(), torch.zeros(b, dtype=torch.long, device=images.device)

    def step(model, opt, given, with_clip=False):
        model.train()
        with amp():
            out = model(images, **given)
            if with_clip:
                clip.encode_images(images, dense=True)
        loss = ufo_loss(out, masks, classes).total if model is ufo else criterion(out, masks).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {
        "Baseline + CLIP pass": lambda: step(base, optimizers["base"], {"masks": masks}, with_clip=True),
        "LCCo, per-set target": lambda: step(full, optimizers["full"], {"masks": masks}),
        "LCCo, cached target": lambda: step(
            full, optimizers["full"], {"class_targets": cache.targets(group_ids, indices, valid)}
        ),
        "UFO": lambda: step(ufo, optimizers["ufo"], {}),
    }


def train_table(args, full, base, ufo, clip, sizes, device, amp, results) -> None:
    """One training step, B = 2 sets of N = 5: LCCo with eq. (12)'s target per set and cached, the Baseline, UFO."""
    from cosegkit import LCCoLoss
    from cosegkit.engine.class_targets import ClassTargetCache

    criterion = LCCoLoss()
    b, n = 2, 5
    print(
        f"training step (forward, loss, backward, AdamW), B = {b}, N = {n}; calls interleaved, median of {args.repeats}"
    )
    print("  Baseline: the modules off, plus one CLIP pass of the same images (dense tokens included)")
    print("  LCCo, per-set target: the masked images through CLIP every step (class_targets='per-set')")
    print("  LCCo, cached target: each image's masked embedding from the cache (class_targets='cached'; ")
    print("    filled on the warm-up step, as in every epoch after the first)")
    print(f"  UFO: the peer on the same encoder (width {args.ufo_dim}), its own loss (UFOLoss)")
    widths = [5, 24, 9, 9, 9, 10, 9, 15]
    print(fmt_row(["size", "model", "step s", "min s", "max s", "images/s", "MiB", "x Baseline+CLIP"], widths))
    results["train"] = []
    for size in sizes:
        images = torch.rand(b, n, 3, size, size, device=device)
        masks = (torch.rand(b, n, 1, size, size, device=device) > 0.5).float()
        cache = ClassTargetCache(clip, _FixedSets(images, masks))
        calls = _train_calls(full, base, ufo, clip, criterion, cache, images, masks, amp)
        timed = measure_side_by_side(calls, device, args.repeats)
        full.eval(), base.eval(), ufo.eval()
        reference = timed["Baseline + CLIP pass"]["median_s"]
        row: dict[str, Any] = {"size": size, "B": b, "N": n, "cache_embedded": cache.computed}
        for name, m in timed.items():
            m = {**m, "images_per_s": b * n / m["median_s"], "ratio": m["median_s"] / reference}
            row[name] = m
            print(
                fmt_row(
                    [
                        size,
                        name,
                        f"{m['median_s']:.3f}",
                        f"{m['min_s']:.3f}",
                        f"{m['max_s']:.3f}",
                        f"{m['images_per_s']:.2f}",
                        f"{m['peak_mib']:.0f}",
                        f"{m['ratio']:.3f}",
                    ],
                    widths,
                )
            )
        results["train"].append(row)
        print(f"  (the cache embedded {cache.computed} images, all on the warm-up step)")


def module_tables(args, full, clip, sizes, set_sizes, device, results) -> None:
    """Each module alone on LCCo's shapes at the first size, and the vectorised ISFC against a loop."""
    size = sizes[0]
    c1, c2, c3 = full.config["decoder_channels"][:3]
    s1 = -(-size // full.output_stride)
    d, p = clip.embed_dim, clip.num_prompts
    text = clip.text_bank
    print(f"\nmodules alone at {size} px (F1 {c1}x{s1}x{s1}, F2 {c2}x{2 * s1}x{2 * s1}, F3 {c3}x{4 * s1}x{4 * s1})")
    results["modules"] = []
    for n in sorted({5, set_sizes[-1]}):
        f1 = torch.randn(1, n, c1, s1, s1, device=device)
        f2 = torch.randn(1, n, c2, 2 * s1, 2 * s1, device=device)
        f3 = torch.randn(1, n, c3, 4 * s1, 4 * s1, device=device)
        emb = F.normalize(torch.randn(1, n, d, device=device), dim=-1)
        sim = torch.randn(1, n, p, device=device)
        calls = {
            "ImageSetCorrespondence": lambda f1=f1: full.correspondence(f1),
            "ClipInteraction": lambda f2=f2, emb=emb: full.interaction(f2, emb, text),
            "ClipRegularization": lambda f3=f3, sim=sim: full.regularization(f3, sim, text),
        }
        for name, call in calls.items():
            m = measure(torch.inference_mode()(call), device, args.repeats)
            results["modules"].append({"module": name, "N": n, **m})
            print(f"  N={n:<3} {name:<24} {m['median_s'] * 1e3:9.2f} ms")

    # vectorised ISFC against the per-pair loop
    print("\nImageSetCorrespondence: vectorised vs a per-pair Python loop (same weights, same maths)")
    results["isfc_loop"] = []
    for n in (5, 8):
        f1 = torch.randn(1, n, c1, s1, s1, device=device)
        with torch.inference_mode():
            same = torch.allclose(full.correspondence(f1), naive_isfc(full.correspondence, f1), atol=1e-4)
        vec = measure(torch.inference_mode()(lambda f1=f1: full.correspondence(f1)), device, args.repeats)
        loop = measure(torch.inference_mode()(lambda f1=f1: naive_isfc(full.correspondence, f1)), device, args.repeats)
        speedup = loop["median_s"] / vec["median_s"]
        results["isfc_loop"].append({"N": n, "vectorised": vec, "loop": loop, "speedup": speedup, "same_output": same})
        print(
            f"  N={n}: vectorised {vec['median_s'] * 1e3:.2f} ms, loop {loop['median_s'] * 1e3:.2f} ms, "
            f"speed-up {speedup:.1f}x, outputs equal: {same}"
        )


def finish(args, full, clip, encoder, clip_model, sizes, device, results) -> None:
    print(f"\ntext bank computations: {clip.text_bank_computations} (once per model)")
    results["text_bank_computations"] = clip.text_bank_computations

    if args.options:
        results["options"] = []
        n, size = 5, sizes[0]
        images = torch.rand(1, n, 3, size, size, device=device)
        print(f"\noptions, full LCCo forward at {size} px, N = {n}")
        variants: dict[str, Callable[[], Any]] = {}
        variants["fp32"] = torch.inference_mode()(lambda: full(images))
        cl = build(encoder, clip_model, device, modules=True).to(memory_format=torch.channels_last)
        variants["channels_last"] = torch.inference_mode()(lambda: cl(images))

        @torch.inference_mode()
        def bf16():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return full(images)

        variants["bf16 autocast"] = bf16
        compiled = torch.compile(full)
        variants["torch.compile"] = torch.inference_mode()(lambda: compiled(images))
        for name, call in variants.items():
            m = measure(call, device, args.repeats)
            results["options"].append({"option": name, **m})
            print(f"  {name:<15} {m['median_s']:.3f} s  peak {m['peak_mib']:.0f} MiB")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
