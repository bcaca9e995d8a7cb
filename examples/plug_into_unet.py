"""Add set-awareness to a plain segmentation-models-pytorch Unet, without the LCCo class.

The three cosegkit modules work on feature *sets* ``(B, N, C, h, w)``. An smp ``Unet`` works on
single images ``(B*N, 3, H, W)``. So this example runs the Unet's own encoder and decoder
blocks, and between them folds the batch into sets with einops and applies:

- ``ImageSetCorrespondence`` to the encoder's deepest features (after the decoder's center),
- ``ClipInteraction`` to the output of the first decoder block,
- ``ClipRegularization`` to the output of the second decoder block,

each sized from the Unet's own channel counts. It trains for a few steps on synthetic sets
and prints the losses, so it runs anywhere in seconds:

    python examples/plug_into_unet.py
    python examples/plug_into_unet.py --encoder resnet34 --steps 20
"""

from __future__ import annotations

import argparse

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit import ClipInteraction, ClipRegularization, FrozenClip, ImageSetCorrespondence, iou_loss
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.losses import classification_loss
from cosegkit.losses.classification import masked_images, targets_from_embeddings
from cosegkit.testing import TINY_CLIP, register_tiny_clips


class SetAwareUnet(nn.Module):
    """An smp Unet whose decoder is refined by the three set-aware modules."""

    def __init__(self, unet: smp.Unet, clip: FrozenClip, heads: int = 4, top_k: int = 3) -> None:
        super().__init__()
        self.unet, self.clip = unet, clip
        decoder_channels = [block.conv2[0].out_channels for block in unet.decoder.blocks]
        center_channels = unet.encoder.out_channels[-1]  # smp's Unet center is Identity by default
        self.isfc = ImageSetCorrespondence(center_channels, heads=heads)
        self.interaction = ClipInteraction(decoder_channels[0], clip.embed_dim, top_k=top_k, heads=heads)
        self.regularization = ClipRegularization(decoder_channels[1], clip.embed_dim, clip.num_prompts)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        as_set = lambda t: rearrange(t, "(b n) c h w -> b n c h w", b=b)  # noqa: E731
        flat = lambda t: rearrange(t, "b n c h w -> (b n) c h w")  # noqa: E731

        emb = self.clip.encode_images(images)  # (B, N, D): one CLIP pass per image
        text = self.clip.text_bank  # (P, D): computed once, cached
        x = rearrange(images, "b n c h w -> (b n) c h w")
        features = self.unet.encoder((x - 0.45) / 0.225)
        shapes = [f.shape[-2:] for f in features][::-1]
        skips = features[1:][::-1]
        f = self.unet.decoder.center(skips[0])
        f = flat(self.isfc(as_set(f)))  # set-aware: eq. (1)-(2)
        out: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.unet.decoder.blocks):
            skip = skips[i + 1] if i + 1 < len(skips) else None
            f = block(f, *shapes[i + 1], skip_connection=skip)
            if i == 0:
                inter = self.interaction(as_set(f), emb, text)  # eq. (3)-(5)
                f, similarity = flat(inter.features), inter.similarity
            elif i == 1:
                reg = self.regularization(as_set(f), similarity, text)  # eq. (6)-(8)
                f, out["class_probs"] = flat(reg.features), reg.class_probs
        logits = self.unet.segmentation_head(f)
        out["masks"] = as_set(F.interpolate(logits, size=images.shape[-2:], mode="bilinear"))
        if masks is not None:  # the set's class from the masked images (eq. 12's target)
            out["class_targets"] = targets_from_embeddings(self.clip.encode_images(masked_images(images, masks)), text)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18", help="any smp encoder (default resnet18)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    torch.manual_seed(0)
    register_tiny_clips()
    world = SyntheticWorld(num_classes=8, image_size=args.size, seed=0)
    clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=world.class_names)  # or "ViT-B-16", "openai"
    unet = smp.Unet(args.encoder, encoder_weights=None, classes=1, decoder_channels=(64, 48, 32, 16, 16))
    model = SetAwareUnet(unet, clip)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # the frozen CLIP is not a parameter
    for step in range(args.steps):
        images, masks, _ = world.sample_batch(2, 4, seed=(0, step))  # 2 sets of 4 images
        out = model(images, masks)
        l_iou = iou_loss(out["masks"], masks)
        l_cls = classification_loss(out["class_probs"], out["class_targets"])
        loss = l_iou + l_cls
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step + 1}: iou loss {l_iou.item():.4f}  classification loss {l_cls.item():.4f}")
    print("masks:", tuple(out["masks"].shape), "class probabilities:", tuple(out["class_probs"].shape))


if __name__ == "__main__":
    main()
