"""Quickstart: build LCCo, co-segment a synthetic image set, compute the training loss.

Runs offline on a CPU with random weights by default. Every image of a set shows the same
coloured disc (the common object, at a different place and size each time) and a distractor
square on a textured background.

    python examples/quickstart.py                      # the paper's architecture, random weights
    python examples/quickstart.py --small              # a tiny encoder: a few seconds
    python examples/quickstart.py --encoder-weights imagenet --clip-pretrained openai  # with internet
    python examples/quickstart.py --save-figure quickstart.png                         # needs matplotlib
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from cosegkit import LCCo, LCCoLoss


def none_or_str(value: str) -> str | None:
    return None if value.lower() == "none" else value


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_sets(
    sets: int, set_size: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, N, 3, H, W)`` in [0, 1] and masks ``(B, N, 1, H, W)`` of the common disc."""
    b, n = sets, set_size
    # textured background: smooth colour blobs plus fine noise
    blobs = F.interpolate(torch.rand(b * n, 3, 6, 6, generator=generator), size=(size, size), mode="bicubic")
    images = (0.7 * blobs + 0.3 * torch.rand(b * n, 3, size, size, generator=generator)).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b * n, 1, 1, generator=generator)

    # the common object: an orange disc, different position and radius in every image
    radius = uniform(0.12, 0.25)
    cy, cx = uniform(0.25, 0.75), uniform(0.25, 0.75)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).float()[:, None]
    # the distractor: a square of a random colour, drawn below the disc
    half = uniform(0.06, 0.15)
    sy, sx = uniform(0.15, 0.85), uniform(0.15, 0.85)
    square = (((yy - sy).abs() <= half) & ((xx - sx).abs() <= half)).float()[:, None]
    square_colour = torch.rand(b * n, 3, 1, 1, generator=generator)
    images = images * (1 - square) + square_colour * square
    orange = torch.tensor([1.0, 0.55, 0.1]).view(1, 3, 1, 1)
    images = images * (1 - disc) + orange * disc
    return images.unflatten(0, (b, n)), disc.unflatten(0, (b, n))


def save_figure(path: str, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor) -> None:
    """A grid of the first set: images, ground truth, predicted probability."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed; skipping the figure {path} (pip install matplotlib)")
        return
    n = images.shape[1]
    fig, axes = plt.subplots(3, n, figsize=(2 * n, 6), squeeze=False)
    rows = [
        ("image", images[0].permute(0, 2, 3, 1), None),
        ("ground truth", masks[0, :, 0], "gray"),
        ("prediction", probs[0, :, 0], "viridis"),
    ]
    for r, (title, data, cmap) in enumerate(rows):
        for i in range(n):
            axes[r, i].imshow(data[i].cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
            axes[r, i].set_axis_off()
        axes[r, 0].set_title(title, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"figure written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet50", help="smp encoder name, or 'tu-<timm name>'")
    parser.add_argument(
        "--encoder-weights",
        type=none_or_str,
        default=None,
        help="'none' (random), an smp tag such as 'imagenet', or a local weights file",
    )
    parser.add_argument("--clip-model", default="ViT-B-16", help="open_clip architecture name")
    parser.add_argument(
        "--clip-pretrained",
        type=none_or_str,
        default=None,
        help="'none' (random), an open_clip tag such as 'openai', or a local weights file",
    )
    parser.add_argument("--sets", type=int, default=1, help="image sets in the batch (B)")
    parser.add_argument("--set-size", type=int, default=5, help="images per set (N)")
    parser.add_argument("--image-size", type=int, default=224, help="height and width of the images")
    parser.add_argument(
        "--small",
        action="store_true",
        help="tiny timm encoder, narrow decoder, ViT-B-32 CLIP, 64 px images (overrides --encoder, --clip-model, --image-size): fast on a CPU",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save-figure", metavar="PATH", help="write a PNG of images / ground truth / prediction")
    args = parser.parse_args()

    extra = {}
    if args.small:
        args.encoder, args.clip_model, args.image_size = "tu-test_convnext", "ViT-B-32", 64
        extra = {"decoder_channels": (32, 32, 16, 16), "heads": 4}
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    start = time.perf_counter()
    model = LCCo(
        encoder_name=args.encoder,
        encoder_weights=args.encoder_weights,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        **extra,
    ).to(device)
    text_bank = model.clip.text_bank  # computed on first use: count it in the build time
    build_s = time.perf_counter() - start

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.clip.model.parameters())
    print(
        f"LCCo: encoder {args.encoder} (weights: {args.encoder_weights}), "
        f"CLIP {args.clip_model} (weights: {args.clip_pretrained}), text bank {tuple(text_bank.shape)}"
    )
    print(f"parameters: {trainable:,} trainable, {frozen:,} in the frozen CLIP")

    generator = torch.Generator().manual_seed(args.seed)
    images, masks = synthetic_sets(args.sets, args.set_size, args.image_size, generator)
    images, masks = images.to(device), masks.to(device)
    print(f"images {tuple(images.shape)}, masks {tuple(masks.shape)}")

    start = time.perf_counter()
    probs = model.predict(images)  # eval mode, no gradients
    sync(device)
    forward_s = time.perf_counter() - start
    print(f"predict -> probabilities {tuple(probs.shape)} in [{probs.min():.3f}, {probs.max():.3f}]")

    model.train()
    criterion = LCCoLoss()
    start = time.perf_counter()
    output = model(images, masks=masks)  # masks= also gives the ground-truth class of eq. (12)
    losses = criterion(output, masks)
    losses.total.backward()
    sync(device)
    train_s = time.perf_counter() - start

    print("LCCoOutput:")
    for field in dataclasses.fields(output):
        value = getattr(output, field.name)
        print(f"  {field.name:14s} {'None' if value is None else tuple(value.shape)}")
    names = model.clip.classnames
    print(
        f"common class (eq. 6): {[names[i] for i in output.common_class.tolist()]}, "
        f"ground-truth class: {[names[i] for i in output.class_targets.tolist()]}"
        + (" (random CLIP weights: arbitrary)" if args.clip_pretrained is None else "")
    )
    print("loss terms:")
    for name, value in losses._asdict().items():
        print(f"  {name:14s} {'None' if value is None else f'{value.item():.4f}'}")
    print(
        f"wall time: build {build_s:.2f} s, forward (predict) {forward_s:.2f} s, "
        f"forward + loss + backward {train_s:.2f} s on {device}"
    )

    if args.save_figure:
        save_figure(args.save_figure, images, masks, probs)


if __name__ == "__main__":
    main()
