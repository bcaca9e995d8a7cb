"""The gradient each set-aware module gets, plugged into smp models: the encoder-wrapper recipe
that docs/plugging.rst used to give, against SetAwareNetwork's own gradient check.

Both run the same modules (same weights) on the same random set (1 set of 2 images,
--size px, seed 0) in eval mode, and differentiate the same randomly weighted sum of the
masks once. The old recipe refines the three deepest encoder features whether the decoder
reads them or not; SetAwareNetwork measures the same gradients and refuses a module that gets 0.

    python benchmarks/plug_gradients.py
    python benchmarks/plug_gradients.py --archs FPN DeepLabV3Plus Unet --encoder resnet34
"""

from __future__ import annotations

import argparse
import copy

import segmentation_models_pytorch as smp
import torch
from einops import rearrange
from torch import nn

from cosegkit import ClipInteraction, ClipRegularization, FrozenClip, ImageSetCorrespondence, SetAwareNetwork
from cosegkit.testing import TINY_CLIP, register_tiny_clips


class OldSetAwareEncoder(nn.Module):
    """The wrapper docs/plugging.rst gave before SetAwareNetwork (its code, unchanged in substance)."""

    def __init__(self, encoder: nn.Module, clip: FrozenClip, set_size: int, modules: dict[int, nn.Module]) -> None:
        super().__init__()
        self.encoder, self.clip, self.set_size = encoder, clip, set_size
        self.isfc, self.interaction, self.regularization = modules[-1], modules[-2], modules[-3]
        self.out_channels, self.output_stride = encoder.out_channels, encoder.output_stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        sets = lambda t: rearrange(t, "(b n) c h w -> b n c h w", n=self.set_size)  # noqa: E731
        flat = lambda t: rearrange(t, "b n c h w -> (b n) c h w")  # noqa: E731
        emb, text = self.clip.encode_images(sets(x)), self.clip.text_bank
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        features = list(self.encoder((x - mean) / std))
        features[-1] = flat(self.isfc(sets(features[-1])))
        inter = self.interaction(sets(features[-2]), emb, text)
        features[-2] = flat(inter.features)
        reg = self.regularization(sets(features[-3]), inter.similarity, text)
        features[-3] = flat(reg.features)
        return features


def old_recipe_norms(net: nn.Module, clip: FrozenClip, modules: dict[int, nn.Module], size: int) -> list[float]:
    """Gradient norms of the three modules under the old recipe, with the check's input and loss."""
    net.encoder = OldSetAwareEncoder(net.encoder, clip, 2, modules)
    net.eval()
    generator = torch.Generator().manual_seed(0)  # the same draws as SetAwareNetwork.check_gradients
    images = torch.rand(1, 2, 3, size, size, generator=generator)
    masks = net(rearrange(images, "b n c h w -> (b n) c h w"))
    masks = rearrange(masks, "(b n) ... -> b n ...", b=1)
    loss = (masks * torch.randn(masks.shape, generator=generator)).sum()
    order = [modules[-1], modules[-2], modules[-3]]
    params = [list(m.parameters()) for m in order]
    grads = torch.autograd.grad(loss, [p for group in params for p in group], allow_unused=True)
    norms, at = [], 0
    for group in params:
        parts = [0.0 if g is None else float(g.norm()) ** 2 for g in grads[at : at + len(group)]]
        norms.append(sum(parts) ** 0.5)
        at += len(group)
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["FPN", "DeepLabV3Plus"], help="smp architectures")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=128, help="probe image side (the check's default)")
    args = parser.parse_args()

    register_tiny_clips()
    torch.manual_seed(0)  # the tiny CLIP's random weights too
    clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog", "car", "bird"])
    print(f"{'architecture':<14} {'module':<24} {'old recipe':>12} {'SetAwareNetwork':>16}")
    for arch in args.archs:
        torch.manual_seed(0)
        net = getattr(smp, arch)(args.encoder, encoder_weights=None, classes=1)
        c, d = net.encoder.out_channels, clip.embed_dim
        modules = {
            -1: ImageSetCorrespondence(c[-1], heads=2),
            -2: ClipInteraction(c[-2], d, top_k=3, heads=2),
            -3: ClipRegularization(c[-3], d, clip.num_prompts),
        }
        twin_net, twin_modules = copy.deepcopy(net), copy.deepcopy(modules)
        report = SetAwareNetwork(twin_net, twin_modules, clip=clip, check=False).check_gradients(args.size)
        old = old_recipe_norms(net, clip, modules, args.size)
        for (label, new), before in zip(report.modules.items(), old):
            print(f"{arch:<14} {label.split(' at ')[0]:<24} {before:>12.4g} {new:>16.4g}")
        read = [f"{f} (stride {report.strides[f]})" for f, norm in report.features.items() if norm > 0]
        print(f"{arch:<14} encoder features the decoder reads: {', '.join(read)}")


if __name__ == "__main__":
    main()
